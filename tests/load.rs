//! Load, through the real binary: many kcache processes at once on the same keys of one
//! backend. No error, no corrupt value, and every value read is one that some `set` wrote.
//!
//! (8 concurrent `kcache migrate` on an empty PostgreSQL database are tested in
//! tests/postgresql.rs, `concurrent_migrates_create_each_object_once`.)

use crate::util::servers::{replies, status};
use crate::util::{BIN, Env};
use serde_json::Value;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKERS: usize = 16;
const LINES: usize = 500;
const KEYS: usize = 50;
/// Every process of a load test must be done by then.
const DEADLINE: Duration = Duration::from_secs(90);

/// The key of line `i` of worker `w`.
fn key_of(w: usize, i: usize) -> usize {
    (i * 7 + w * 3) % KEYS
}

/// What line `i` of worker `w` does: mostly sets, then gets, a ttl and a delete.
fn line_of(w: usize, i: usize) -> String {
    let key = key_of(w, i);
    match i % 10 {
        0..=4 => format!("set k{key} w{w}-{i} 600\n"),
        5..=7 => format!("get k{key}\n"),
        8 => format!("ttl k{key}\n"),
        _ => format!("delete k{key}\n"),
    }
}

/// Checks that `value`, read under key `k<key>`, is one that a `set` of this test wrote there.
#[track_caller]
fn written_by_a_set(value: &Value, key: usize, context: &str) {
    let text = value.as_str().unwrap_or_else(|| panic!("{context}: not a string: {value}"));
    let parsed = text
        .strip_prefix('w')
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(w, i)| Some((w.parse::<usize>().ok()?, i.parse::<usize>().ok()?)));
    let Some((w, i)) = parsed else { panic!("{context}: corrupt value {text:?}") };
    assert!(w < WORKERS && i < LINES && i % 10 <= 4, "{context}: no set wrote {text:?}");
    assert_eq!(key_of(w, i), key, "{context}: {text:?} was written under k{}, not k{key}", key_of(w, i));
}

/// Spawns `count` batches with their input, waits for all (at most [`DEADLINE`]), and returns
/// (exit status, stdout, stderr) of each.
fn run_batches(env: &Env, inputs: Vec<(Vec<&str>, String)>) -> Vec<(i32, String, String)> {
    let children: Vec<(Child, std::thread::JoinHandle<()>)> = inputs
        .into_iter()
        .map(|(args, input)| {
            let mut cmd = env.command();
            cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("spawn kcache batch");
            let mut stdin = child.stdin.take().expect("stdin");
            let feeder = std::thread::spawn(move || {
                let _ = stdin.write_all(input.as_bytes());
            });
            (child, feeder)
        })
        .collect();
    let started = Instant::now();
    let waiters: Vec<_> = children
        .into_iter()
        .map(|(child, feeder)| {
            std::thread::spawn(move || {
                let out = child.wait_with_output().expect("wait");
                let _ = feeder.join();
                (
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
        })
        .collect();
    // A watchdog: a hung process fails the test instead of hanging it.
    while !waiters.iter().all(|w| w.is_finished()) {
        assert!(started.elapsed() < DEADLINE, "kcache processes still running after {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    waiters.into_iter().map(|w| w.join().expect("waiter")).collect()
}

fn sixteen_batches_on_fifty_keys(backend: &str) {
    let Some((env, _db)) = crate::util::rig::backend_env(backend) else { return };
    let inputs = (0..WORKERS)
        .map(|w| {
            let args = if w % 2 == 0 { vec!["batch"] } else { vec!["batch", "--jobs", "4"] };
            (args, (0..LINES).map(|i| line_of(w, i)).collect::<String>())
        })
        .collect();
    for (w, (code, stdout, stderr)) in run_batches(&env, inputs).into_iter().enumerate() {
        let failed: Vec<&str> =
            stdout.lines().filter(|l| !l.contains("\"status\":0") && !l.contains("\"status\":1")).collect();
        assert_eq!(code, 0, "worker {w} ended with {code}:\n{stderr}\n{failed:#?}");
        assert!(stderr.is_empty(), "worker {w} printed on stderr:\n{stderr}");
        let replies = replies(&stdout);
        assert_eq!(replies.len(), LINES, "worker {w}");
        for (i, r) in replies.iter().enumerate() {
            let context = format!("worker {w}, line {}: {}", i + 1, line_of(w, i).trim());
            assert_eq!(r["line"].as_u64(), Some(i as u64 + 1), "{context}");
            let key = key_of(w, i);
            match (i % 10, status(r)) {
                (0..=4, 0) => assert!(r.get("value").is_none(), "{context}: {r}"),
                (5..=7 | 9, 0) => written_by_a_set(&r["value"], key, &context),
                (5..=7 | 9, 1) => assert!(r.get("value").is_none(), "{context}: {r}"),
                (8, 0) => {
                    let left = r["value"].as_i64().unwrap_or_else(|| panic!("{context}: {r}"));
                    // PostgreSQL: a batch group that waited for row locks reads with the `now()`
                    // of its start and may see more than 600 s left; that bug has its own test,
                    // faults::postgresql_a_batch_group_that_waited_for_a_lock_keeps_expiry_exact.
                    // SQLite: `ttl` takes the time before its read, so a write committed in
                    // between shows 600.0001 s, printed 601 (see the part-5 report).
                    let most = match backend {
                        "postgresql" => i64::MAX,
                        "sqlite" => 601,
                        _ => 600,
                    };
                    assert!((1..=most).contains(&left), "{context}: {r}");
                }
                (8, 1) => assert_eq!(r["value"], -2, "{context}"),
                (_, s) => panic!("{context}: status {s}: {r}"),
            }
        }
    }
    // What is left is what some set wrote.
    let input: String = (0..KEYS).map(|k| format!("get k{k}\n")).collect();
    let out = env.run_stdin(&["batch"], Some(input.as_bytes()));
    out.ok();
    for (k, r) in replies(&out.stdout).iter().enumerate() {
        if status(r) == 0 {
            written_by_a_set(&r["value"], k, &format!("k{k} at the end"));
        }
    }
}

#[test]
fn sixteen_batches_on_fifty_keys_sqlite() {
    sixteen_batches_on_fifty_keys("sqlite");
}

#[test]
fn sixteen_batches_on_fifty_keys_postgresql() {
    sixteen_batches_on_fifty_keys("postgresql");
}

#[test]
fn sixteen_batches_on_fifty_keys_memcached() {
    sixteen_batches_on_fifty_keys("memcached");
}

#[test]
fn sixteen_batches_on_fifty_keys_redis() {
    sixteen_batches_on_fifty_keys("redis");
}

/// A shell running `commands` (kcache argument lists) one after the other, with `env`'s
/// hermetic environment; it exits with the first failing status.
fn shell(env: &Env, commands: &[Vec<String>]) -> Command {
    let mut script = String::from("set -u\n");
    for args in commands {
        let quoted: Vec<String> = args.iter().map(|a| crate::util::servers::sq(a)).collect();
        script.push_str(&format!("\"$KCACHE\" {} || exit $?\n", quoted.join(" ")));
    }
    shell_script(env, &script)
}

/// `sh -c script` with `env`'s hermetic environment and `$KCACHE` set to the binary.
fn shell_script(env: &Env, script: &str) -> Command {
    let template = env.command();
    let mut cmd = Command::new("sh");
    cmd.env_clear();
    for (k, v) in template.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.env("KCACHE", BIN).arg("-c").arg(script).current_dir(env.dir.path());
    cmd
}

/// Runs the commands at once; returns (status, stderr) of each, within [`DEADLINE`].
fn run_shells(shells: Vec<Command>) -> Vec<(i32, String)> {
    let started = Instant::now();
    let waiters: Vec<_> = shells
        .into_iter()
        .map(|mut cmd| {
            let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn sh");
            std::thread::spawn(move || {
                let out = child.wait_with_output().expect("wait");
                (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
            })
        })
        .collect();
    while !waiters.iter().all(|w| w.is_finished()) {
        assert!(started.elapsed() < DEADLINE, "kcache processes still running after {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    waiters.into_iter().map(|w| w.join().expect("waiter")).collect()
}

#[test]

fn sqlite_concurrent_first_writes_on_a_fresh_file_never_see_a_locked_database() {
    // The race is narrow (about one round in 30 here): many rounds.
    for round in 0..60 {
        let env = Env::new();
        let runs = (0..16)
            .map(|w| {
                let mut cmd = env.command();
                cmd.args(["set", &format!("k{w}"), "v", "60"]);
                cmd
            })
            .collect();
        for (w, (code, stderr)) in run_shells(runs).into_iter().enumerate() {
            assert_eq!(code, 0, "round {round}, writer {w}: {stderr}");
        }
        assert_eq!(crate::util::rows(&env.default_db()), 16, "round {round}");
    }
}

#[test]
fn sqlite_eight_writers_and_a_flusher_never_see_a_locked_database() {
    let env = Env::new();
    env.run(&["migrate"]).ok();
    let set = |w: usize, i: usize| vec!["set".into(), format!("k{}", i % 10), format!("w{w}-{i}"), "600".into()];
    let mut shells: Vec<Command> =
        (0..8).map(|w| shell(&env, &(0..25).map(|i| set(w, i)).collect::<Vec<_>>())).collect();
    shells.push(shell(&env, &(0..25).map(|_| vec!["flush".to_string()]).collect::<Vec<_>>()));
    // And the same with batches: each writer's sets go in transactions of many rows.
    for w in 0..8 {
        let input: String = (0..300).map(|i| format!("set b{} w{w}-{i} 600\n", i % 10)).collect();
        let file = env.write(&format!("batch{w}.txt"), &input);
        let script =
            format!("\"$KCACHE\" batch < {} > /dev/null", crate::util::servers::sq(&file.display().to_string()));
        shells.push(shell_script(&env, &script));
    }
    for (i, (code, stderr)) in run_shells(shells).into_iter().enumerate() {
        assert_eq!(code, 0, "process {i} ended with {code}:\n{stderr}");
        assert!(!stderr.contains("locked"), "process {i}: {stderr}");
        assert!(stderr.is_empty(), "process {i} printed on stderr:\n{stderr}");
    }
    for stem in ["k", "b"] {
        for k in 0..10 {
            let out = env.run(&["get", &format!("{stem}{k}")]);
            if out.status == 1 {
                continue; // flushed after its last write
            }
            let v = out.ok().stdout.trim().to_string();
            let (w, i) = v.strip_prefix('w').and_then(|r| r.split_once('-')).expect("a writer's value");
            let (w, i): (usize, usize) = (w.parse().expect("worker"), i.parse().expect("line"));
            assert!(w < 8 && i % 10 == k, "{stem}{k} holds {v}");
        }
    }
}

/// `kcache ping` from several processes at once, on one healthy backend.
fn concurrent_pings(env: &Env) {
    let shells = (0..8).map(|_| shell(env, &vec![vec!["ping".to_string()]; 15])).collect();
    for (i, (code, stderr)) in run_shells(shells).into_iter().enumerate() {
        assert_eq!(code, 0, "pinger {i}: a healthy backend failed a ping:\n{stderr}");
    }
}

#[test]
fn concurrent_pings_of_a_healthy_backend_all_succeed() {
    concurrent_pings(&Env::new());
    if let Some(url) = crate::util::rig::server("KCACHE_TEST_REDIS_URL") {
        let prefix = format!("{}:", crate::util::unique("ping"));
        concurrent_pings(
            &Env::new()
                .var("KINTO_CACHE_BACKEND", "redis")
                .var("KINTO_CACHE_URL", &url)
                .var("KINTO_CACHE_PREFIX", &prefix),
        );
    }
}
