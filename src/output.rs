//! Every write to standard output goes through here. A closed pipe (`kcache get k | head -c0`)
//! ends a command that changed nothing quietly with status 0 (`diff`, which has printed a
//! difference by then, quietly with status 1: the caches differ); any other failure to write,
//! and a closed pipe after a command that changed the backend (`delete`, `batch`), is status 5:
//! done, but the output was lost.

use crate::error::{Error, ErrorKind, Result};
use std::io::Write;

/// Writes `bytes` to standard output and flushes.
pub fn write_all(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(failed)
}

/// The error for a failed write to standard output: [`ErrorKind::BrokenPipe`] for a closed
/// pipe, else [`ErrorKind::Unshown`].
pub fn failed(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Error::broken_pipe()
    } else {
        Error::new(ErrorKind::Unshown, anyhow::Error::new(e).context("cannot write to standard output"))
    }
}

/// Writes `text`, then a newline unless `no_newline`.
pub fn print(text: &str, no_newline: bool) -> Result<()> {
    if no_newline {
        write_all(text.as_bytes())
    } else {
        let mut s = String::with_capacity(text.len() + 1);
        s.push_str(text);
        s.push('\n');
        write_all(s.as_bytes())
    }
}
