//! The `kcache` binary: parse the command line, hand over to the library, exit with its status.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match kcache::cli::Cli::try_parse() {
        Ok(cli) => kcache::run(cli),
        Err(e) => kcache::report_clap(&e),
    }
}
