//! The `kcache` binary: parse the command line, hand over to the library, exit with its status.
//!
//! The entry point is C's `main`, not the Rust runtime's: that runtime's start-up finds the main
//! thread's stack guard by reading and parsing `/proc/self/maps`, 0.1 ms of a 1.4 ms one-shot
//! `get` (README, "Performance"). What else it does that kcache relies on is done here: closed
//! standard descriptors are opened on `/dev/null` (else the first file or socket kcache opens
//! would become its standard output), SIGPIPE is ignored (a closed pipe is an `EPIPE` kcache
//! reports, not a signal that kills it; children still start with the default), and standard
//! output is flushed at the end. Arguments and environment work as usual (glibc hands them over).

#![no_main]

use std::ffi::{c_char, c_int};
use std::io::Write;

#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    // SAFETY: fcntl(2), open(2) and signal(2) with valid arguments, before any other thread or
    // descriptor exists.
    unsafe {
        for fd in 0..=2 {
            if libc::fcntl(fd, libc::F_GETFD) == -1 && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) == -1 {
                libc::abort();
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // A panic (there should be none) ends as under the Rust runtime: its message, status 101.
    let status = std::panic::catch_unwind(kcache::main).unwrap_or(101);
    let _ = std::io::stdout().flush();
    c_int::from(status)
}
