//! kcache: a command-line tool for Kinto-style caches.
//!
//! [`run`] is the single exit point of every parsed command line: settings are resolved, the
//! backend is built (no I/O), the command runs, and its outcome becomes the exit status.

pub mod backend;
pub mod batch;
pub mod cli;
mod commands;
pub mod error;
pub mod memo;
pub mod output;
pub mod pattern;
pub mod settings;
pub mod stats;
pub mod transfer;
pub mod ttl;
pub mod value;

use cli::{Cli, Command};
use error::{Error, ErrorKind, Result};
use std::io::Write;
use std::path::Path;
use std::sync::LazyLock;

/// `kcache --version`: the version and the backends compiled in.
pub static LONG_VERSION: LazyLock<String> = LazyLock::new(|| {
    let backends: Vec<String> =
        backend::COMPILED.iter().map(|(name, on)| format!("{}{name}", if *on { '+' } else { '-' })).collect();
    format!("{} (backends: {})", env!("CARGO_PKG_VERSION"), backends.join(" "))
});

/// How a command ended when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Status 0.
    Done,
    /// Status 1: the key does not exist.
    Missing,
    /// Another status, already reported (a batch's highest line status).
    Status(u8),
}

/// Runs a parsed command line and returns its exit status.
pub fn run(cli: Cli) -> u8 {
    let verbose = cli.global.verbose;
    match app(cli) {
        Ok(Outcome::Done) => 0,
        Ok(Outcome::Missing) => 1,
        Ok(Outcome::Status(n)) => n,
        Err(e) if e.kind() == ErrorKind::BrokenPipe => 0,
        Err(e) => {
            let mut err = std::io::stderr().lock();
            for line in e.render(verbose) {
                let _ = writeln!(err, "{line}");
            }
            e.kind().status()
        }
    }
}

/// Parses the process's arguments and runs them: the whole of `main`; the exit status.
pub fn main() -> u8 {
    use clap::CommandFactory;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match cli::parse(&args) {
        // clap checks `conflicts_with` only among options given on the same side of the
        // subcommand; `kcache -q get k -v` must be refused too.
        Ok(cli) if cli.global.verbose && cli.global.quiet => {
            report_clap(&Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "the argument '--verbose' cannot be used with '--quiet'",
            ))
        }
        Ok(cli) => run(cli),
        Err(e) => report_clap(&e),
    }
}

/// Prints clap's own message (help and version on stdout, usage errors on stderr) and returns
/// its status: 0 for help and version, 2 for usage errors.
pub fn report_clap(e: &clap::Error) -> u8 {
    let _ = e.print();
    if e.use_stderr() { 2 } else { 0 }
}

/// Messages for the user on standard error: warnings unless `-q`, notes only with `-v`.
pub struct Log {
    pub verbose: bool,
    pub quiet: bool,
}

impl Log {
    pub fn warn(&self, msg: &str) {
        if !self.quiet {
            eprintln!("kcache: warning: {}", error::redact(msg));
        }
    }
    pub fn note(&self, msg: &str) {
        if self.verbose {
            eprintln!("kcache: {}", error::redact(msg));
        }
    }
}

fn app(cli: Cli) -> Result<Outcome> {
    // Special modes need no config and no backend.
    if let Command::Completions { shell } = &cli.command {
        let mut out = Vec::new();
        clap_complete::generate(*shell, &mut <Cli as clap::CommandFactory>::command(), "kcache", &mut out);
        output::write_all(&out)?;
        return Ok(Outcome::Done);
    }
    let log = Log { verbose: cli.global.verbose, quiet: cli.global.quiet };
    let env = |k: &str| std::env::var(k).ok();
    if let Command::Memo(args) = cli.command {
        // memo reads the settings itself: a cache that cannot be set up must not stop COMMAND.
        return memo::run(args, &cli.global, &env, &log);
    }
    let settings = settings::resolve(&cli.global, &env, &log)?;
    commands::dispatch(cli.command, settings, &env, &log)
}

/// Whether standard input was closed when kcache started (`kcache set k - 60 <&-`): Rust's
/// runtime then opens `/dev/null` read-write in its place, so reading it gives an empty value
/// that must not be stored. A shell's `< /dev/null` opens it read-only, and stays an empty value.
/// Linux only (`/proc`); elsewhere a closed input reads as empty.
fn stdin_was_closed() -> bool {
    const O_ACCMODE: u32 = 0o3;
    const O_RDWR: u32 = 0o2;
    if std::fs::read_link("/proc/self/fd/0").ok().as_deref() != Some(Path::new("/dev/null")) {
        return false;
    }
    let info = std::fs::read_to_string("/proc/self/fdinfo/0").unwrap_or_default();
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
    flags.is_some_and(|f| f & O_ACCMODE == O_RDWR)
}

/// Reads the value argument of `set`: the text itself, or standard input for `-`.
pub fn read_value_arg(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    if stdin_was_closed() {
        return Err(Error::input(
            "standard input is closed; VALUE '-' reads the value from it (give the value itself, or pipe it in)",
        ));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
        .map_err(|e| Error::input(format!("cannot read the value from standard input: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::input(format!(
            "the value on standard input is not valid UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}
