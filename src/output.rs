//! Every write to standard output goes through here, so that a closed pipe
//! (`kcache get k | head -c0`) ends the command quietly with status 0 in one place.

use crate::error::{Error, Result};
use std::io::Write;

/// Writes `bytes` to standard output and flushes.
pub fn write_all(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Error::broken_pipe()
        } else {
            Error::new(crate::error::ErrorKind::Input, anyhow::Error::new(e).context("cannot write to standard output"))
        }
    })
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
