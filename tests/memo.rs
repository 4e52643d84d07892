//! `kcache memo` on every backend: output and status replayed byte for byte, one run at a time
//! across processes, expiry, `--force`, `--discard-failures`, the key's parts, `--stale`, a
//! killed runner, Ctrl-C, failing open, and a shell's 126/127.

use crate::util::rig::backend_env;
use crate::util::{Env, Out, unique};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A shell command that counts its runs in `runs` (one line each) and prints `out`/`err`.
fn counting(runs: &std::path::Path, body: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), format!("echo run >> '{}'; {body}", runs.display())]
}

fn memo(env: &Env, opts: &[&str], ttl: &str, command: &[String]) -> Out {
    let mut args = vec!["memo"];
    args.extend_from_slice(opts);
    args.push(ttl);
    args.push("--");
    args.extend(command.iter().map(String::as_str));
    env.run(&args)
}

fn spawn_memo(env: &Env, opts: &[&str], ttl: &str, command: &[String]) -> Child {
    let mut cmd = env.command();
    cmd.arg("memo").args(opts).arg(ttl).arg("--").args(command);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().expect("spawn kcache memo")
}

fn runs(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

#[track_caller]
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn replays_output_status_and_binary(backend: &str) {
    let Some((env, _db)) = backend_env(backend) else { return };
    let runs_file = env.path("runs");
    // Text on stdout, text on stderr, then bytes that are not UTF-8; status 3.
    let cmd = counting(&runs_file, r"printf 'out é\n'; printf 'err\n' >&2; printf '\000\377\376x'; exit 3");
    let first = memo(&env, &[], "1h", &cmd);
    let second = memo(&env, &[], "1h", &cmd);
    for out in [&first, &second] {
        assert_eq!(out.status, 3, "{out:?}");
        assert_eq!(out.stdout.as_bytes(), "out é\n\u{0}\u{FFFD}\u{FFFD}x".as_bytes(), "lossy view of the bytes");
        assert_eq!(out.stderr, "err\n");
    }
    assert_eq!(runs(&runs_file), 1, "the second call replayed the first run");
    // The exact bytes, through a raw run.
    let raw = env.command().args(["memo", "1h", "--"]).args(&cmd).output().expect("run");
    assert_eq!(raw.stdout, b"out \xc3\xa9\n\x00\xff\xfex");
    assert_eq!(raw.status.code(), Some(3));
    assert_eq!(runs(&runs_file), 1);
    // The stored document reads with get --json (the key from keys).
    if backend != "memcached" && backend != "memory" {
        let keys = env.run(&["keys", "memo:*"]).ok().stdout.clone();
        let key = keys.lines().next().expect("a memo key");
        let doc: serde_json::Value = serde_json::from_str(&env.run(&["get", "--json", key]).ok().stdout).unwrap();
        assert_eq!(doc["status"], 3);
        assert_eq!(doc["stderr"], "err\n");
        assert!(doc["stdout_base64"].is_string(), "{doc}");
    }
}

fn eight_concurrent_callers_run_command_once(backend: &str) {
    let Some((env, _db)) = backend_env(backend) else { return };
    let runs_file = env.path("runs");
    let cmd = counting(&runs_file, "sleep 0.5; echo result; echo note >&2");
    let children: Vec<Child> = (0..8).map(|_| spawn_memo(&env, &[], "1h", &cmd)).collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(out.stdout, b"result\n");
        assert_eq!(out.stderr, b"note\n");
    }
    assert_eq!(runs(&runs_file), 1, "one run for eight callers");
}

fn expiry_force_and_discarded_failures(backend: &str) {
    let Some((env, _db)) = backend_env(backend) else { return };
    let runs_file = env.path("runs");
    let cmd = counting(&runs_file, "echo ok");
    memo(&env, &[], "1", &cmd).ok();
    memo(&env, &[], "1", &cmd).ok();
    assert_eq!(runs(&runs_file), 1);
    std::thread::sleep(Duration::from_millis(1100));
    memo(&env, &[], "1", &cmd).ok();
    assert_eq!(runs(&runs_file), 2, "the result expired with its TTL");
    memo(&env, &["--force"], "1h", &cmd).ok();
    assert_eq!(runs(&runs_file), 3, "--force runs whatever the cache holds");

    let failing = counting(&runs_file, "echo no; exit 1");
    memo(&env, &["--discard-failures"], "1h", &failing).code(1).stdout_is("no\n");
    memo(&env, &["--discard-failures"], "1h", &failing).code(1);
    assert_eq!(runs(&runs_file), 5, "a failure is not stored with --discard-failures");
    memo(&env, &[], "1h", &failing).code(1);
    memo(&env, &[], "1h", &failing).code(1);
    assert_eq!(runs(&runs_file), 6, "without it, a failure is stored");
}

fn each_key_part_gives_its_own_entry(backend: &str) {
    let Some((env, _db)) = backend_env(backend) else { return };
    let runs_file = env.path("runs");
    let cmd = counting(&runs_file, "echo \"$X\"");
    let with_x = |v: &str| env.clone_with("X", v);
    memo(&with_x("1"), &["--env", "X"], "1h", &cmd).stdout_is("1\n");
    memo(&with_x("2"), &["--env", "X"], "1h", &cmd).stdout_is("2\n");
    memo(&with_x("1"), &["--env", "X"], "1h", &cmd).stdout_is("1\n");
    assert_eq!(runs(&runs_file), 2, "--env: one entry per value");
    memo(&with_x("3"), &[], "1h", &cmd).stdout_is("3\n");
    memo(&with_x("4"), &[], "1h", &cmd).stdout_is("3\n");
    assert_eq!(runs(&runs_file), 3, "without --env the variable is not part of the key");

    let a = env.path("a");
    let b = env.path("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let pwd = counting(&runs_file, "pwd");
    let in_dir = |dir: &std::path::Path| {
        let mut c = env.command();
        c.current_dir(dir).args(["memo", "--cwd", "1h", "--"]).args(&pwd);
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    assert_eq!(in_dir(&a).trim(), a.display().to_string());
    assert_eq!(in_dir(&b).trim(), b.display().to_string());
    assert_eq!(in_dir(&a).trim(), a.display().to_string());
    assert_eq!(runs(&runs_file), 5, "--cwd: one entry per directory");

    let key = unique("mine");
    memo(&env, &["--key", &key], "1h", &counting(&runs_file, "echo first")).stdout_is("first\n");
    memo(&env, &["--key", &key], "1h", &counting(&runs_file, "echo second")).stdout_is("first\n");
    assert_eq!(runs(&runs_file), 6, "--key names the entry, whatever the command");
}

fn stale_results_are_served_at_once_and_refreshed_once(backend: &str) {
    let Some((env, _db)) = backend_env(backend) else { return };
    let runs_file = env.path("runs");
    let cmd = counting(&runs_file, "sleep 0.3; wc -l < \"$RUNS\"");
    let env = env.clone_with("RUNS", &runs_file.display().to_string());
    memo(&env, &["--stale", "500ms"], "1h", &cmd).ok().stdout_is("1\n");
    std::thread::sleep(Duration::from_millis(600));
    let started = Instant::now();
    let callers: Vec<Child> = (0..4).map(|_| spawn_memo(&env, &["--stale", "500ms"], "1h", &cmd)).collect();
    for c in callers {
        let out = c.wait_with_output().unwrap();
        assert_eq!(out.stdout, b"1\n", "the stale result, at once");
    }
    assert!(started.elapsed() < Duration::from_millis(1500), "served without waiting: {:?}", started.elapsed());
    wait_for("the refresh", Duration::from_secs(10), || runs(&runs_file) >= 2);
    wait_for("the refreshed result", Duration::from_secs(10), || {
        memo(&env, &["--stale", "1h"], "1h", &cmd).stdout == "2\n"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(runs(&runs_file), 2, "one refresh for four stale callers");
}

fn a_killed_runner_is_taken_over_after_its_lease(backend: &str) {
    let Some((env, _db)) = backend_env(backend) else { return };
    let runs_file = env.path("runs");
    let pid_file = env.path("pid");
    // The first run hangs (and says where it is); the next one answers.
    let body = format!(
        "if [ $(wc -l < '{runs}') -eq 1 ]; then echo $$ > '{pid}'; sleep 60; fi; echo done",
        runs = runs_file.display(),
        pid = pid_file.display()
    );
    let cmd = counting(&runs_file, &body);
    let mut runner = spawn_memo(&env, &["--lease", "1s"], "1h", &cmd);
    wait_for("the runner's command", Duration::from_secs(10), || pid_file.exists());
    let waiter = spawn_memo(&env, &["--lease", "1s", "--wait", "30s"], "1h", &cmd);
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    runner.kill().expect("SIGKILL the runner");
    runner.wait().unwrap();
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid: i32 = pid.trim().parse().expect("the command's pid");
    assert!(pid > 1);
    // SAFETY: kill(2) of the hung command's own pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"done\n", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(killed.elapsed() < Duration::from_secs(5), "taken over after {:?}", killed.elapsed());
    assert_eq!(runs(&runs_file), 2);
}

fn a_waiter_runs_command_itself_after_wait(backend: &str) {
    let Some((env, _db)) = backend_env(backend) else { return };
    let runs_file = env.path("runs");
    // The first run takes 3 s; later ones answer at once.
    let body =
        format!("if [ $(wc -l < '{}') -eq 1 ]; then sleep 3; echo slow; else echo quick; fi", runs_file.display());
    let cmd = counting(&runs_file, &body);
    let runner = spawn_memo(&env, &[], "1h", &cmd);
    wait_for("the runner's command", Duration::from_secs(10), || runs(&runs_file) == 1);
    let started = Instant::now();
    memo(&env, &["--wait", "300ms"], "1h", &cmd).ok().stdout_is("quick\n");
    assert!(started.elapsed() < Duration::from_millis(2500), "ran after {:?}", started.elapsed());
    assert_eq!(runs(&runs_file), 2);
    assert_eq!(runner.wait_with_output().unwrap().stdout, b"slow\n");
}

fn ctrl_c_stops_command_stores_nothing_and_releases_the_lock(backend: &str) {
    let Some((env, _db)) = backend_env(backend) else { return };
    let runs_file = env.path("runs");
    let pid_file = env.path("pid");
    let key = unique("int");
    let body = format!("echo $$ > '{}'; sleep 60; echo late", pid_file.display());
    // In a process group of its own, as a terminal's foreground job: Ctrl-C reaches every
    // process of the group (kcache, the shell, its sleep).
    let mut runner = {
        let mut cmd = env.command();
        cmd.args(["memo", "--key", &key, "1h", "--"]).args(counting(&runs_file, &body));
        as_foreground_job(&mut cmd, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
    };
    wait_for("the command", Duration::from_secs(10), || pid_file.exists());
    let group = runner.id() as i32;
    assert!(group > 1, "a process group of its own");
    // SAFETY: kill(2) of the process group just made, with a valid signal.
    assert_eq!(unsafe { libc::kill(-group, libc::SIGINT) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = runner.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "memo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "ends as Ctrl-C would");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(), "COMMAND was stopped");
    env.run(&["get", &key]).code(1);
    env.run(&["get", &format!("{key}:lock")]).code(1);
}

/// `cmd` in a process group of its own with the default action for SIGINT, SIGTERM and SIGHUP
/// (as a terminal's foreground job has them, whatever the test runner inherited: a background
/// job of a script ignores SIGINT), except `ignored` (as `nohup` leaves SIGHUP).
fn as_foreground_job<'a>(cmd: &'a mut Command, ignored: &'static [i32]) -> &'a mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.process_group(0).pre_exec(move || {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                let action = if ignored.contains(&sig) { libc::SIG_IGN } else { libc::SIG_DFL };
                libc::signal(sig, action);
            }
            Ok(())
        })
    }
}

/// `nohup kcache memo ...`: a hangup stops neither kcache nor COMMAND, whose result is kept.
#[test]
fn a_hangup_ignored_at_start_stays_ignored() {
    let env = Env::new();
    let pid_file = env.path("pid");
    let key = unique("hup");
    let body = format!("echo $$ > '{}'; sleep 1; echo done", pid_file.display());
    let mut cmd = env.command();
    cmd.args(["memo", "--key", &key, "1h", "--", "sh", "-c", &body]);
    let runner = as_foreground_job(&mut cmd, &[libc::SIGHUP]).stdout(Stdio::piped()).spawn().unwrap();
    wait_for("the command", Duration::from_secs(10), || pid_file.exists());
    // SAFETY: kill(2) of the process group just made, with a valid signal.
    assert_eq!(unsafe { libc::kill(-(runner.id() as i32), libc::SIGHUP) }, 0);
    let out = runner.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "not stopped by the hangup");
    assert_eq!(out.stdout, b"done\n");
    memo(&env, &["--key", &key], "1h", &["false".to_string()]).ok().stdout_is("done\n");
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $( mod $name {
            #[test] fn replays_output_status_and_binary() { super::replays_output_status_and_binary(stringify!($name)) }
            #[test] fn eight_concurrent_callers_run_command_once() { super::eight_concurrent_callers_run_command_once(stringify!($name)) }
            #[test] fn expiry_force_and_discarded_failures() { super::expiry_force_and_discarded_failures(stringify!($name)) }
            #[test] fn each_key_part_gives_its_own_entry() { super::each_key_part_gives_its_own_entry(stringify!($name)) }
            #[test] fn stale_results_are_served_at_once_and_refreshed_once() { super::stale_results_are_served_at_once_and_refreshed_once(stringify!($name)) }
            #[test] fn a_killed_runner_is_taken_over_after_its_lease() { super::a_killed_runner_is_taken_over_after_its_lease(stringify!($name)) }
            #[test] fn a_waiter_runs_command_itself_after_wait() { super::a_waiter_runs_command_itself_after_wait(stringify!($name)) }
            #[test] fn ctrl_c_stops_command_stores_nothing_and_releases_the_lock() { super::ctrl_c_stops_command_stores_nothing_and_releases_the_lock(stringify!($name)) }
        } )*
    };
}

on_every_backend!(sqlite, postgresql, memcached, redis, redis_cluster, redis_sentinel);

#[test]
fn two_backends_at_once_do_not_see_each_other() {
    let (Some((a, _)), Some((b, _db))) = (backend_env("sqlite"), backend_env("redis")) else { return };
    let runs_file = a.path("runs");
    let cmd = counting(&runs_file, "sleep 0.3; echo same");
    let children: Vec<Child> =
        (0..4).flat_map(|_| [spawn_memo(&a, &[], "1h", &cmd), spawn_memo(&b, &[], "1h", &cmd)]).collect();
    for c in children {
        assert_eq!(c.wait_with_output().unwrap().stdout, b"same\n");
    }
    assert_eq!(runs(&runs_file), 2, "one run per backend");
}

#[test]
fn a_cache_that_fails_never_fails_the_command() {
    let env = Env::new();
    let runs_file = env.path("runs");
    let cmd = counting(&runs_file, "echo out; echo err >&2; exit 4");
    let port = crate::util::servers::free_port();
    let down = env
        .clone_with("KINTO_CACHE_BACKEND", "redis")
        .clone_with("KINTO_CACHE_URL", &format!("redis://127.0.0.1:{port}/0"));
    let out = memo(&down, &[], "1h", &cmd);
    assert_eq!((out.status, out.stdout.as_str()), (4, "out\n"));
    let warnings: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("kcache: warning:")).collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(warnings[0].contains("runs without the cache"), "{}", out.stderr);
    assert!(out.stderr.starts_with("err\n") || out.stderr.contains("\nerr\n") || out.stderr.ends_with("err\n"));
    let quiet = down.run(&["-q", "memo", "1h", "--", "sh", "-c", "echo q"]);
    assert_eq!((quiet.status, quiet.stdout.as_str(), quiet.stderr.as_str()), (0, "q\n", ""));
    // A config that cannot be read: the command still runs.
    let broken = env.clone_with("KCACHE_CONFIG", "/nonexistent/kcache.toml");
    let out = memo(&broken, &[], "1h", &cmd);
    assert_eq!((out.status, out.stdout.as_str()), (4, "out\n"));
    assert_eq!(runs(&runs_file), 2);
}

#[test]
fn a_result_too_large_to_store_still_passes_through() {
    let Some((env, _)) = backend_env("memcached") else { return };
    // memcached refuses items over 1 MiB (its default item size limit).
    let out = env.command().args(["memo", "1h", "--", "head", "-c", "2000000", "/dev/zero"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout.len(), 2_000_000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("storing the result failed"), "{stderr}");
}

#[test]
fn verbose_says_what_memo_did() {
    let env = Env::new();
    let first = env.run(&["-v", "memo", "--discard-failures", "1h", "--", "sh", "-c", "echo x; exit 2"]);
    first.code(2).stderr_has("kcache: memo: key memo:").stderr_has("status 2; not stored");
    let ok = env.run(&["-v", "memo", "1h", "--", "echo", "y"]);
    ok.ok().stderr_has("status 0; 2 bytes stored");
    env.run(&["-v", "memo", "1h", "--", "echo", "y"]).ok().stdout_is("y\n").stderr_has("a stored result");
    assert!(env.run(&["memo", "1h", "--", "echo", "y"]).stderr.is_empty(), "nothing without -v");
}

#[test]
fn commands_that_cannot_run_get_a_shells_statuses() {
    let env = Env::new();
    let out = env.run(&["memo", "1h", "--", "kcache-no-such-command"]);
    out.code(127).stderr_has("command not found");
    let plain = env.write("plain.txt", "not a program\n");
    let out = env.run(&["memo", "1h", "--", &plain.display().to_string()]);
    out.code(126).stderr_has("permission denied");
    env.run(&["memo", "1h"]).code(2);
    env.run(&["memo", "soon", "--", "true"]).code(2);
}
