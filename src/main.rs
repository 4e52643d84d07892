//! The `kcache` binary: parse the command line, hand over to the library, exit with its status.

fn main() -> std::process::ExitCode {
    kcache::main()
}
