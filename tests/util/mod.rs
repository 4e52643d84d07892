//! The hermetic test harness: every run of the binary gets a cleared environment and its own
//! HOME, XDG_CONFIG_HOME and XDG_CACHE_HOME, so nothing from the developer's shell leaks in, and
//! every run is checked for panics and backtraces.

#![allow(dead_code)]

pub mod rig;
pub mod servers;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_kcache");

/// A fresh home for one test.
pub struct Env {
    /// Shared by the environments made with [`Env::clone_with`].
    pub dir: std::sync::Arc<tempfile::TempDir>,
    pub vars: Vec<(String, String)>,
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Out {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl Out {
    /// Asserts the exit status, printing everything when it is not the expected one.
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.status, expected,
            "kcache {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.stdout, self.stderr
        );
        self
    }
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.code(0)
    }
    #[track_caller]
    pub fn stdout_is(&self, expected: &str) -> &Self {
        assert_eq!(self.stdout, expected, "stdout of kcache {:?}; stderr: {}", self.args, self.stderr);
        self
    }
    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(self.stderr.contains(needle), "stderr of kcache {:?} lacks {needle:?}:\n{}", self.args, self.stderr);
        self
    }
    /// Asserts SPEC's error format: exactly one `kcache: error:` line (plus an optional hint).
    #[track_caller]
    pub fn one_error_line(&self) -> &Self {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.starts_with("kcache: hint:") && !l.starts_with("kcache: warning:"))
            .collect();
        assert_eq!(lines.len(), 1, "expected one error line from kcache {:?}:\n{}", self.args, self.stderr);
        assert!(lines[0].starts_with("kcache: error: "), "{}", self.stderr);
        self
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A name unique within this test run (for prefixes and databases).
pub fn unique(stem: &str) -> String {
    format!("{stem}{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        Env { dir: std::sync::Arc::new(dir), vars: Vec::new() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The default sqlite file of this environment.
    pub fn default_db(&self) -> PathBuf {
        self.path("cache/kcache/cache.sqlite3")
    }

    /// Adds an environment variable to every later run.
    pub fn var(mut self, k: &str, v: &str) -> Env {
        self.vars.push((k.to_string(), v.to_string()));
        self
    }

    /// This environment with one more variable (a later one wins), sharing its folder: the same
    /// home, config and default cache.
    pub fn clone_with(&self, k: &str, v: &str) -> Env {
        let mut vars = self.vars.clone();
        vars.push((k.to_string(), v.to_string()));
        Env { dir: std::sync::Arc::clone(&self.dir), vars }
    }

    /// Writes a file in this environment's folder and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .current_dir(self.dir.path());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_stdin(args, None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        run_command(self.command(), args, stdin)
    }
}

/// Runs `cmd` with `args`, feeding `stdin` from a thread, and checks the run never panicked.
pub fn run_command(mut cmd: Command, args: &[&str], stdin: Option<&[u8]>) -> Out {
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn kcache");
    let feeder = stdin.map(|bytes| {
        let bytes = bytes.to_vec();
        let mut pipe = child.stdin.take().expect("stdin pipe");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let out = child.wait_with_output().expect("wait kcache");
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let o = Out {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!o.stderr.contains(bad), "kcache {args:?} panicked:\n{}", o.stderr);
    }
    o
}

/// Opens an sqlite file for inspection.
pub fn db(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("open sqlite file")
}

/// Row count of the cache table (0 when the file or table does not exist).
pub fn rows(path: &Path) -> i64 {
    if !path.exists() {
        return 0;
    }
    db(path).query_row("SELECT count(*) FROM cache", [], |r| r.get(0)).unwrap_or(0)
}

// ---- small helpers shared by the backend tests ------------------------------------------------

/// A TTL argument, parsed as the command line parses it.
/// The lines of a run's standard output, sorted (for `keys`, which lists in no order).
pub fn sorted_lines(out: &Out) -> Vec<String> {
    sorted(&out.stdout.lines().collect::<Vec<_>>())
}

/// `keys` as owned strings, sorted.
pub fn sorted(keys: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    v.sort();
    v
}

/// Settings from `entries` (name, raw value), as a config file would give them.
pub fn settings(entries: &[(&'static str, kcache::settings::Raw)]) -> kcache::settings::Settings {
    let mut layer = kcache::settings::Layer::default();
    for (k, v) in entries {
        layer.set(k, v.clone(), "test", None);
    }
    kcache::settings::Settings::from_layer(&layer).expect("test settings")
}

/// The comparator of "a group gives exactly what one-by-one gives": the same result (a time
/// left within a second), or an error of the same kind with the same messages and hint (for a
/// refused key, which the generic layer words for the batch, the same cause).
#[track_caller]
pub fn assert_same_result(
    what: &str,
    grouped: &kcache::error::Result<kcache::backend::GroupResult>,
    single: &kcache::error::Result<kcache::backend::GroupResult>,
) {
    use kcache::backend::GroupResult::Remaining as R;
    use kcache::ttl::Remaining::Left;
    match (grouped, single) {
        (Ok(R(Left(a))), Ok(R(Left(b)))) => {
            let diff = if a > b { *a - *b } else { *b - *a };
            assert!(diff < std::time::Duration::from_secs(1), "{what}: {a:?} vs {b:?}");
        }
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}"),
        (Err(a), Err(b)) => {
            assert_eq!(a.kind(), b.kind(), "{what}: {a} vs {b}");
            if a.kind() == kcache::error::ErrorKind::Input {
                assert_eq!(a.chain().last(), b.chain().last(), "{what}");
            } else {
                assert_eq!((a.chain(), a.hint()), (b.chain(), b.hint()), "{what}");
            }
        }
        _ => panic!("{what}: grouped {grouped:?}, one by one {single:?}"),
    }
}

pub fn secs(s: &str) -> kcache::ttl::Ttl {
    s.parse().expect("ttl")
}

/// A string value as Kinto encodes it (a JSON string).
pub fn string(s: &str) -> String {
    kcache::value::encode_string(s)
}

/// The time left of a live entry (panics on a missing one or one without expiry).
#[track_caller]
pub fn left(r: kcache::ttl::Remaining) -> std::time::Duration {
    match r {
        kcache::ttl::Remaining::Left(d) => d,
        other => panic!("expected a remaining TTL, got {other:?}"),
    }
}

/// Percent-encodes everything but unreserved characters (for passwords in URLs).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
