//! `kcache memo`: a command's output, cached once for every host (SPEC "memo").
//!
//! The result of a run is one JSON document under the key, readable by `kcache get --json` and
//! by Kinto: `{"kcache_memo": 1, "created": <unix time>, "status": N, "stdout": "...",
//! "stderr": "..."}`, a stream that is not UTF-8 as `stdout_base64` / `stderr_base64` instead.
//!
//! One run at a time: the runner holds a lock, an entry `<key>:lock` stored only if absent
//! ([`Cache::add`]: `SET NX` on Redis, `add` on memcached, an upsert of an expired row only on
//! PostgreSQL and SQLite), for `--lease` (10 s), renewed every third of it while COMMAND runs.
//! Other callers poll the key (every 20 ms at first, then up to every 250 ms) and print the
//! result when it comes; when the lock is gone without a result (the runner died, or stored
//! nothing), one of them takes the lock and runs COMMAND; after `--wait`, each runs it itself.
//!
//! Fails open: when the cache fails (settings, connection, a refused write), COMMAND runs all
//! the same, its output and status pass through, and one warning says why (none with `-q`).

use crate::backend::{self, Cache};
use crate::cli::{Global, MemoArgs};
use crate::error::{Error, Result};
use crate::ttl::Ttl;
use crate::{Log, Outcome, value};
use base64::Engine;
use serde_json::{Value, json};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set (to anything) in the environment of the background refresher that `--stale` starts.
const REFRESH_VAR: &str = "KCACHE_MEMO_REFRESH";

/// How long COMMAND has to stop after the signal kcache passed on, before it is killed.
const SIGNAL_GRACE: Duration = Duration::from_secs(2);

/// The longest wait for another caller's run by default (`--wait`: the TTL, capped here).
const MAX_DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// What a run left: its exit status (a signal's death as a shell shows it, 128 + the signal)
/// and its two streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub status: u8,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Run {
    /// The document stored for it.
    fn to_doc(&self) -> Value {
        let mut doc = json!({"kcache_memo": 1, "created": backend::unix_now(), "status": self.status});
        for (name, bytes) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            match std::str::from_utf8(bytes) {
                Ok(text) => doc[name] = Value::String(text.to_string()),
                Err(_) => {
                    doc[format!("{name}_base64")] =
                        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
                }
            }
        }
        doc
    }

    /// The result a stored document holds, with when it was made; `None` for anything else
    /// under the key.
    fn from_doc(doc: &Value) -> Option<(Run, f64)> {
        if doc.get("kcache_memo")?.as_u64()? != 1 {
            return None;
        }
        let stream = |name: &str| match (doc.get(name), doc.get(format!("{name}_base64"))) {
            (Some(Value::String(text)), None) => Some(text.as_bytes().to_vec()),
            (None, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
            _ => None,
        };
        let status = u8::try_from(doc.get("status")?.as_u64()?).ok()?;
        let run = Run { status, stdout: stream("stdout")?, stderr: stream("stderr")? };
        Some((run, doc.get("created")?.as_f64()?))
    }

    /// Writes both streams, byte for byte, and gives the exit status.
    fn replay(&self) -> Result<Outcome> {
        crate::output::write_all(&self.stdout)?;
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&self.stderr);
        let _ = err.flush();
        Ok(status(self.status))
    }
}

fn status(n: u8) -> Outcome {
    if n == 0 { Outcome::Done } else { Outcome::Status(n) }
}

/// The key of `args`: `--key`, or `memo:` and a hash of COMMAND's argument vector, the working
/// directory with `--cwd`, and each `--env` variable (name and value, or its absence).
pub fn key_of(args: &MemoArgs, env: &dyn Fn(&str) -> Option<OsString>) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    if let Some(key) = &args.key {
        return Ok(key.clone());
    }
    let mut h = Sha256::new();
    // Each part length-prefixed and tagged: no two different inputs hash the same bytes.
    let mut part = |tag: u8, bytes: &[u8]| {
        h.update([tag]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for arg in &args.command {
        part(b'a', arg.as_bytes());
    }
    if args.cwd {
        let cwd = std::env::current_dir()
            .map_err(|e| Error::input(format!("--cwd: cannot read the working directory: {e}")))?;
        part(b'c', cwd.as_os_str().as_bytes());
    }
    let mut names = args.env.clone();
    names.sort();
    names.dedup();
    for name in &names {
        part(b'n', name.as_bytes());
        match env(name) {
            Some(v) => part(b'v', v.as_bytes()),
            None => part(b'u', b""),
        }
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    Ok(format!("memo:{hex}"))
}

/// The cache, or nothing once it failed (one warning, then COMMAND runs without it).
struct Store<'a> {
    cache: Option<Cache>,
    log: &'a Log,
}

impl Store<'_> {
    /// `f` on the cache; on failure the warning, and `None` from then on.
    fn try_op<T>(&mut self, what: &str, f: impl FnOnce(&mut Cache) -> Result<T>) -> Option<T> {
        let cache = self.cache.as_mut()?;
        match f(cache) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(what, &e);
                None
            }
        }
    }

    fn fail(&mut self, what: &str, e: &Error) {
        let why = e.render(false).join("; ");
        let why = why.trim_start_matches("kcache: error: ");
        self.log.warn(&format!("memo: {what} failed, so COMMAND runs without the cache: {why}"));
        self.cache = None;
    }

    /// The stored result under `key`, if any (a value that is not a result: none).
    fn result(&mut self, key: &str) -> Option<(Run, f64)> {
        let stored = self.try_op("reading the cache", |c| c.get(key))??;
        value::parse_stored(&stored).ok().and_then(|doc| Run::from_doc(&doc))
    }

    fn store(&mut self, key: &str, run: &Run, ttl: Ttl) {
        let Ok(text) = value::encode(&run.to_doc()) else { return };
        self.try_op("storing the result", |c| c.set(key, &text, ttl));
    }
}

/// `kcache memo`: see the module's notes.
pub fn run(args: MemoArgs, global: &Global, env: &dyn Fn(&str) -> Option<String>, log: &Log) -> Result<Outcome> {
    let env_os = |name: &str| std::env::var_os(name);
    let key = key_of(&args, &env_os)?;
    let refresher = env(REFRESH_VAR).is_some();
    let lock_key = format!("{key}:lock");
    let opened = crate::settings::resolve(global, env, log).and_then(|s| backend::open_with(&s, env, 1));
    let mut store = Store { cache: None, log };
    match opened.and_then(|c| c.full_key(&lock_key).map(|_| c)) {
        Ok(cache) => store.cache = Some(cache),
        Err(e) if e.kind() == crate::error::ErrorKind::Input && args.key.is_some() => return Err(e),
        Err(e) => store.fail("opening the cache", &e),
    }

    if refresher {
        // A background refresh: run only if no one else is running it, print nothing.
        let lock = Lock { key: &lock_key, token: lock_token() };
        if store.try_op("taking the lock", |c| c.add(lock.key, &lock.token, args.lease)) == Some(true) {
            run_and_keep(&args, &mut store, &key, Some(&lock), false);
        }
        return Ok(Outcome::Done);
    }

    log.note(&format!("memo: key {key}"));
    if !args.force
        && let Some((run, created)) = store.result(&key)
    {
        let age = (backend::unix_now() - created).max(0.0);
        log.note(&format!("memo: a stored result, {age:.1} s old, status {}", run.status));
        if let Some(stale) = args.stale
            && age > stale.duration().as_secs_f64()
            && store.try_op("reading the lock", |c| c.get(&lock_key)) == Some(None)
        {
            log.note("memo: older than --stale: a refresh starts in the background");
            refresh_in_background();
        }
        return run.replay();
    }

    let lock = Lock { key: &lock_key, token: lock_token() };
    let deadline = Instant::now() + args.wait.map_or(args.ttl.duration().min(MAX_DEFAULT_WAIT), Ttl::duration);
    let mut pause = Duration::from_millis(20);
    loop {
        match store.try_op("taking the lock", |c| c.add(lock.key, &lock.token, args.lease)) {
            Some(true) => {
                // Another runner may have stored its result between our read and our lock.
                if !args.force
                    && let Some((run, _)) = store.result(&key)
                {
                    release(&mut store, &lock);
                    return run.replay();
                }
                return Ok(status(run_and_keep(&args, &mut store, &key, Some(&lock), true)));
            }
            // The cache failed (nothing is stored then), or we waited long enough (or were told
            // not to wait): run, and store what it gives.
            None => return Ok(status(run_and_keep(&args, &mut store, &key, None, true))),
            Some(false) if args.force || Instant::now() >= deadline => {
                return Ok(status(run_and_keep(&args, &mut store, &key, None, true)));
            }
            Some(false) => log.note("memo: another caller runs COMMAND: waiting for its result"),
        }
        // Someone else runs COMMAND: wait for their result (or for their lock to go).
        let until = Instant::now() + Duration::from_millis(250);
        while Instant::now() < until.min(deadline) {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
            if let Some((run, _)) = store.result(&key) {
                return run.replay();
            }
            if store.cache.is_none() || store.try_op("reading the lock", |c| c.get(lock.key)) == Some(None) {
                break;
            }
        }
    }
}

/// The runner's lock: its key, and the token it holds while this caller has it.
struct Lock<'a> {
    key: &'a str,
    token: String,
}

/// Runs COMMAND (see [`run_command`]), stores its result (see [`keep`]) unless it did not run or
/// was stopped, and releases `held` whatever happened: the exit status.
fn run_and_keep(args: &MemoArgs, store: &mut Store<'_>, key: &str, held: Option<&Lock<'_>>, show: bool) -> u8 {
    let ran = run_command(args, store, held.map(|l| l.key), show);
    if let Ok(run) = &ran {
        keep(store, args, key, run);
    }
    if let Some(lock) = held {
        release(store, lock);
    }
    ran.map_or_else(|n| n, |run| run.status)
}

/// Stores `run` unless told not to (`--discard-failures` and a failure, TTL 0).
fn keep(store: &mut Store<'_>, args: &MemoArgs, key: &str, run: &Run) {
    if (args.discard_failures && run.status != 0) || args.ttl.duration().is_zero() {
        store.log.note(&format!("memo: COMMAND ended with status {}; not stored", run.status));
        return;
    }
    store.store(key, run, args.ttl);
    if store.cache.is_some() {
        let bytes = run.stdout.len() + run.stderr.len();
        store.log.note(&format!("memo: COMMAND ended with status {}; {bytes} bytes stored", run.status));
    }
}

fn release(store: &mut Store<'_>, lock: &Lock<'_>) {
    store.try_op("releasing the lock", |c| c.delete_if(lock.key, &lock.token));
}

/// What the lock holds: this host's name, this process and the time (what a person reading
/// the lock would want; unique to this run). Made only when a lock is needed (not on a hit).
fn lock_token() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    value::encode_string(&format!("{host}:{}:{}", std::process::id(), backend::unix_now()))
}

/// Starts this same command line again, detached (its own process group, no terminal input
/// or output), as the refresher (see [`REFRESH_VAR`]); the caller does not wait for it.
fn refresh_in_background() {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    args.next();
    let _ = Command::new(exe)
        .args(args)
        .env(REFRESH_VAR, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

/// Runs COMMAND (directly, no shell), its output passed through as it comes when `show`, and
/// kept; the lock at `lock_key` (when this caller holds one) renewed meanwhile. Ctrl-C, SIGTERM or SIGHUP are passed on to COMMAND: then
/// nothing is stored, the lock is released, and kcache ends as the signal would have ended it.
/// `Err(status)`: COMMAND did not run (127, 126) or was stopped by a signal (128 + it): kcache
/// ends with that status and stores nothing.
fn run_command(
    args: &MemoArgs,
    store: &mut Store<'_>,
    lock_key: Option<&str>,
    show: bool,
) -> std::result::Result<Run, u8> {
    let program = &args.command[0];
    let mut child = match Command::new(program)
        .args(&args.command[1..])
        .stdin(if show { Stdio::inherit() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            // As a shell says it, with its statuses: 127 not found, 126 found but not runnable.
            let name = program.to_string_lossy();
            let (status, why) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, "command not found".to_string()),
                std::io::ErrorKind::PermissionDenied => (126, "permission denied".to_string()),
                _ => (126, e.to_string()),
            };
            if show {
                eprintln!("kcache: memo: {name}: {why}");
            }
            return Err(status);
        }
    };
    let signals: Vec<(i32, Arc<AtomicBool>)> = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        .map(|s| (s, Arc::new(AtomicBool::new(false))))
        .collect();
    let mut registered = Vec::new();
    for (sig, flag) in &signals {
        // A signal ignored when kcache started (`nohup`, a background job of a script) stays
        // ignored, by kcache and by COMMAND, which inherits that.
        if !ignored_at_start(*sig)
            && let Ok(id) = signal_hook::flag::register(*sig, Arc::clone(flag))
        {
            registered.push(id);
        }
    }
    let pump = |from: Box<dyn Read + Send>, to_stdout: bool| {
        std::thread::spawn(move || {
            let mut from = from;
            let mut kept = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            let mut shown = show;
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        kept.extend_from_slice(&buf[..n]);
                        if shown {
                            let ok = if to_stdout {
                                let mut out = std::io::stdout().lock();
                                out.write_all(&buf[..n]).and_then(|()| out.flush())
                            } else {
                                let mut err = std::io::stderr().lock();
                                err.write_all(&buf[..n]).and_then(|()| err.flush())
                            };
                            // A reader gone (`| head`): COMMAND's output is still kept whole.
                            shown = ok.is_ok();
                        }
                    }
                }
            }
            kept
        })
    };
    let out = pump(Box::new(child.stdout.take().expect("piped")), true);
    let err = pump(Box::new(child.stderr.take().expect("piped")), false);

    // The lock renewed every third of the lease while COMMAND runs.
    let done = Arc::new(AtomicBool::new(false));
    let sibling = lock_key.and_then(|k| Some((k.to_string(), store.cache.as_ref()?.sibling_same_prefix().ok()?)));
    let renewer = sibling.map(|(lock_key, mut sibling)| {
        let (done, lease) = (Arc::clone(&done), args.lease);
        std::thread::spawn(move || {
            let mut renewed = Instant::now();
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                if renewed.elapsed() >= lease.duration() / 3 {
                    renewed = Instant::now();
                    let _ = sibling.expire(&lock_key, lease);
                }
            }
        })
    });

    let mut caught: Option<(i32, Instant)> = None;
    let exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(_) => break child.wait().unwrap_or_default(),
        }
        match caught {
            None => {
                if let Some((sig, _)) = signals.iter().find(|(_, f)| f.load(Ordering::SeqCst)) {
                    caught = Some((*sig, Instant::now()));
                    // Passed on: a terminal's Ctrl-C reached COMMAND already, a `kill` of kcache
                    // did not. SAFETY: kill(2) on our own child's pid, with a valid signal.
                    unsafe { libc::kill(child.id() as i32, *sig) };
                }
            }
            // COMMAND has had its chance to stop by itself.
            Some((_, at)) if at.elapsed() > SIGNAL_GRACE => {
                let _ = child.kill();
            }
            Some(_) => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // COMMAND may have ended of the same Ctrl-C before the loop saw kcache's.
    if caught.is_none() {
        caught = signals.iter().find(|(_, f)| f.load(Ordering::SeqCst)).map(|(sig, _)| (*sig, Instant::now()));
    }
    done.store(true, Ordering::SeqCst);
    if let Some(r) = renewer {
        let _ = r.join();
    }
    for id in registered {
        signal_hook::low_level::unregister(id);
    }
    // Stopped: its output is not wanted, and a process COMMAND started may still hold the pipes
    // open (a shell's `sleep` outlives the shell killed after the grace).
    if let Some((sig, _)) = caught {
        return Err(128 + sig as u8);
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    let status = exit.code().map_or_else(|| 128 + exit.signal().unwrap_or(0) as u8, |c| c as u8);
    Ok(Run { status, stdout, stderr })
}

/// Whether `sig`'s disposition is "ignore" (as inherited through exec).
fn ignored_at_start(sig: i32) -> bool {
    // SAFETY: sigaction(2) with a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> MemoArgs {
        use clap::Parser;
        let mut argv = vec!["kcache", "memo"];
        argv.extend(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Memo(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_hash_the_command_and_what_is_asked_for_only() {
        let none = |_: &str| None;
        let k = |a: &[&str]| key_of(&args(a), &none).unwrap();
        assert_eq!(k(&["60", "--", "echo", "a b"]), k(&["--force", "--stale", "1s", "10m", "echo", "a b"]));
        assert_ne!(k(&["60", "echo", "a b"]), k(&["60", "echo", "a", "b"]), "argument boundaries count");
        assert!(k(&["60", "echo"]).starts_with("memo:") && k(&["60", "echo"]).len() == 5 + 32);
        assert_eq!(k(&["--key", "mine", "60", "echo"]), "mine");
        let with = |v: &'static str| move |_: &str| Some(OsString::from(v));
        let e = |a: &[&str], env: &dyn Fn(&str) -> Option<OsString>| key_of(&args(a), env).unwrap();
        assert_ne!(e(&["--env", "X", "60", "echo"], &with("1")), e(&["--env", "X", "60", "echo"], &with("2")));
        assert_ne!(e(&["--env", "X", "60", "echo"], &none), e(&["--env", "X", "60", "echo"], &with("")));
        assert_eq!(e(&["60", "echo"], &with("1")), e(&["60", "echo"], &with("2")), "no --env: not hashed");
        assert_ne!(k(&["--cwd", "60", "echo"]), k(&["60", "echo"]));
    }

    #[test]
    fn results_round_trip_through_their_document_binary_included() {
        for run in [
            Run { status: 0, stdout: b"hello\n".to_vec(), stderr: Vec::new() },
            Run { status: 3, stdout: vec![0, 159, 146, 150, 255], stderr: "é\n".as_bytes().to_vec() },
        ] {
            let text = value::encode(&run.to_doc()).unwrap();
            let doc = value::parse_stored(&text).unwrap();
            let (back, created) = Run::from_doc(&doc).unwrap();
            assert_eq!(back, run);
            assert!((created - backend::unix_now()).abs() < 5.0);
        }
        assert!(Run::from_doc(&json!("a plain value")).is_none());
        assert!(Run::from_doc(&json!({"kcache_memo": 2})).is_none());
    }
}
