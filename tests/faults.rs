//! Faults, through the real binary: servers stopped before a command, killed in the middle of
//! a batch, restarted between the commands of a batch, a pool too small, PostgreSQL statement
//! timeouts, a table dropped under a batch, a read-only role.
//!
//! What a deploy script or a cron job relies on: kcache either did what was asked (status 0 or
//! 1), or says clearly that it did not (status 3: worth retrying; 4: refused), in bounded time,
//! and never reports success for a write that did not happen.
//!
//! Tests that stop a server start their own ([`crate::servers`]); pool_timeout is 1 s, so every
//! failure comes within seconds.

use crate::util::rig::{RigDb, pg_env};
use crate::util::servers::{Batch, OwnMemcached, OwnPostgres, OwnRedis, run_within, signal, sq, status};
use crate::util::{Env, Out};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Slack over pool_timeout (1 s) for one failing command: process start and a loaded machine.
const BOUND: Duration = Duration::from_secs(3);
/// How long a batch may take to answer a phase of a test (normally milliseconds).
const PHASE: Duration = Duration::from_secs(20);
/// A run that has not ended by then is killed and fails the test (it would hang otherwise).
const HANG: Duration = Duration::from_secs(15);

/// A server of the test's own, of one of the networked backends.
enum Own {
    Pg(OwnPostgres),
    Redis(OwnRedis),
    Memcached(OwnMemcached),
}

impl Own {
    /// Starts one (`None`: skipped); PostgreSQL is migrated, Redis keeps every acknowledged
    /// write on disk (`appendfsync always`), so both keep their data across a kill.
    fn start(kind: &str) -> Option<Own> {
        let own = match kind {
            "postgresql" => Own::Pg(OwnPostgres::start()?),
            "redis" => Own::Redis(OwnRedis::start(&["--appendonly", "yes", "--appendfsync", "always"])?),
            "memcached" => Own::Memcached(OwnMemcached::start()?),
            other => panic!("no server for {other}"),
        };
        if let Own::Pg(_) = own {
            own.env("").run(&["migrate"]).ok();
        }
        Some(own)
    }

    /// kcache on this server with `prefix` and pool_timeout 1.
    fn env(&self, prefix: &str) -> Env {
        let env = Env::new().var("KINTO_CACHE_POOL_TIMEOUT", "1").var("KINTO_CACHE_PREFIX", prefix);
        match self {
            Own::Pg(s) => env.var("KINTO_CACHE_BACKEND", "postgresql").var("KINTO_CACHE_URL", &s.url("postgres")),
            Own::Redis(s) => env.var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_URL", &s.url()),
            Own::Memcached(s) => env.var("KINTO_CACHE_BACKEND", "memcached").var("KINTO_CACHE_HOSTS", &s.host()),
        }
    }

    /// `127.0.0.1:PORT`, which every message about this server names.
    fn address(&self) -> String {
        let port = match self {
            Own::Pg(s) => s.port,
            Own::Redis(s) => s.port,
            Own::Memcached(s) => s.port,
        };
        format!("127.0.0.1:{port}")
    }

    /// Whether acknowledged writes survive [`Own::down`] and [`Own::up`].
    fn persistent(&self) -> bool {
        !matches!(self, Own::Memcached(_))
    }

    /// Kills the server (SIGKILL; PostgreSQL: immediate shutdown, as a crash).
    fn down(&mut self) {
        match self {
            Own::Pg(s) => s.crash(),
            Own::Redis(s) => s.kill(),
            Own::Memcached(s) => s.kill(),
        }
    }

    /// Freezes every process of the server (SIGSTOP): it still accepts TCP connections (the
    /// kernel does) but answers nothing. It runs again when the guard is dropped (SIGCONT).
    fn freeze(&self) -> Frozen {
        let pids = match self {
            Own::Pg(s) => s.pids(),
            Own::Redis(s) => s.pids(),
            Own::Memcached(s) => s.pids(),
        };
        assert!(!pids.is_empty(), "no process to freeze");
        signal("-STOP", &pids);
        Frozen(pids)
    }

    /// Starts it again on the same port.
    fn up(&mut self) {
        match self {
            Own::Pg(s) => s.restart(),
            Own::Redis(s) => s.restart(),
            Own::Memcached(s) => s.restart(),
        }
    }
}

/// A frozen server; thawed on drop, whatever the test's outcome.
struct Frozen(Vec<u32>);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

/// Statuses of `replies`.
fn statuses(replies: &[Value]) -> Vec<u64> {
    replies.iter().map(status).collect()
}

/// Asserts that every reply has status `expected`.
#[track_caller]
fn all_status(replies: &[Value], expected: u64, what: &str) {
    for r in replies {
        assert_eq!(status(r), expected, "{what}: {r}");
    }
}

/// Asserts that a status-3 reply says which server could not be reached.
#[track_caller]
fn names_the_server(reply: &Value, address: &str) {
    let error = reply["error"].as_str().unwrap_or_else(|| panic!("a failed line has an error: {reply}"));
    assert!(error.contains(address), "the error does not name {address}: {reply}");
}

/// `set <stem><i> v<i> 600` for i in `range`.
fn sets(stem: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("set {stem}{i} v{i} 600\n")).collect()
}

/// Reads `keys` back with one batch: the value of each, or `None` for a miss.
fn read_back(env: &Env, keys: &[String]) -> Vec<Option<String>> {
    let input: String = keys.iter().map(|k| format!("get {}\n", sq(k))).collect();
    let out = env.run_stdin(&["batch", "--keep-going"], Some(input.as_bytes()));
    out.ok();
    let replies = crate::util::servers::replies(&out.stdout);
    assert_eq!(replies.len(), keys.len(), "{}", out.stdout);
    replies.iter().map(|r| r["value"].as_str().map(str::to_string)).collect()
}

// ---- a server down before the command --------------------------------------------------------

fn down_before_the_command(kind: &str) {
    let Some(mut server) = Own::start(kind) else { return };
    // memcached refuses a prefixed flush before connecting (status 2): no prefix there.
    let prefix = if kind == "memcached" { "" } else { "p:" };
    let env = server.env(prefix);
    env.run(&["set", "k", "before", "600"]).ok();
    env.run(&["set", "k2", "kept", "600"]).ok();
    server.down();
    let address = server.address();
    let commands: &[&[&str]] = &[
        &["get", "k"],
        &["set", "k", "after", "600"],
        &["set", "--json", "j", "[1]", "600"],
        &["ttl", "k"],
        &["expire", "k", "1"],
        &["delete", "k2"],
        &["flush"],
        &["flush", "--all"],
        &["ping"],
        &["purge"],
        &["migrate"],
        &["migrate", "--dry-run"],
    ];
    for args in commands {
        for verbose in [false, true] {
            let mut argv: Vec<&str> = if verbose { vec!["-v"] } else { vec![] };
            argv.extend_from_slice(args);
            let started = Instant::now();
            let out = run_within(&env, &argv, None, HANG);
            let took = started.elapsed();
            assert!(took < BOUND, "kcache {argv:?} took {took:?} with pool_timeout 1");
            if kind != "postgresql" && matches!(args[0], "purge" | "migrate") {
                // Documented: nothing to do on this backend, so nothing is sent and the command
                // did what was asked (README, `purge` and `migrate`).
                out.ok();
                let expected = if args.contains(&"--dry-run") {
                    format!("-- nothing to do: the {kind} backend has no schema\n")
                } else {
                    String::new()
                };
                assert_eq!(out.stdout, expected, "kcache {argv:?}");
                continue;
            }
            out.code(3).stdout_is("");
            assert!(out.stderr.contains(&address), "kcache {argv:?} does not name {address}:\n{}", out.stderr);
            if !verbose {
                out.one_error_line();
            }
        }
    }
    // Nothing was half-done: what was there is still there, unchanged.
    server.up();
    if server.persistent() {
        env.run(&["get", "k"]).ok().stdout_is("before\n");
        env.run(&["get", "k2"]).ok().stdout_is("kept\n");
        env.run(&["get", "j"]).code(1);
        let left: u64 = env.run(&["ttl", "k"]).ok().stdout.trim().parse().expect("seconds");
        assert!(left > 590, "expire did not change the TTL: {left}");
    }
}

#[test]
fn postgresql_down_before_every_command_is_status_3_in_seconds() {
    down_before_the_command("postgresql");
}

#[test]
fn redis_down_before_every_command_is_status_3_in_seconds() {
    down_before_the_command("redis");
}

#[test]
fn memcached_down_before_every_command_is_status_3_in_seconds() {
    down_before_the_command("memcached");
}

// ---- a server killed in the middle of a batch ------------------------------------------------

fn killed_mid_batch(kind: &str) {
    let Some(mut server) = Own::start(kind) else { return };
    let env = server.env("kill:");
    let address = server.address();

    // 1. Between two lines: what was answered 0 is stored (checked before the kill, for
    //    memcached forgets everything when it dies); what comes after the kill fails with 3.
    let mut batch = Batch::spawn(&env, &["batch", "--keep-going"]);
    batch.send(&sets("a", 0..100));
    all_status(&batch.read(100, PHASE), 0, "before the kill");
    let keys: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
    let values = read_back(&env, &keys);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "a{i} was reported stored");
    }
    server.down();
    let started = Instant::now();
    let mut after = sets("a", 100..200);
    after.push_str("get a0\nttl a1\ndelete a2\nexpire a3 60\nping\nflush --all\n");
    let failing = 106;
    batch.send(&after);
    let replies = batch.read(failing, PHASE);
    for r in &replies {
        assert_eq!(status(r), 3, "a line after the kill: {r}");
        names_the_server(r, &address);
    }
    assert!(started.elapsed() < BOUND, "{failing} failing lines took {:?}", started.elapsed());
    let end = batch.finish(PHASE);
    assert_eq!(end.status, 3, "{end:?}");
    assert!(end.replies.is_empty(), "{end:?}");
    server.up();
    if server.persistent() {
        let keys: Vec<String> = (0..200).map(|i| format!("a{i}")).collect();
        for (i, v) in read_back(&env, &keys).iter().enumerate() {
            let expected = (i < 100).then(|| format!("v{i}"));
            assert_eq!(v, &expected, "a{i}: reported {}", if i < 100 { "stored" } else { "failed" });
        }
    }

    // 2. In the middle of the stream: lines keep coming while the server dies. Every line gets
    //    an answer, 0 or 3; once a line failed, no later one succeeds; and every line answered 0
    //    is stored (memcached forgets everything when killed: there, no line after the kill
    //    is answered 0).
    let total = 1500;
    let mut batch = Batch::spawn(&env, &["batch", "--keep-going"]);
    let mut stdin_text = Vec::new();
    for chunk in (0..total).collect::<Vec<_>>().chunks(20) {
        stdin_text.push(sets("m", chunk[0]..chunk[chunk.len() - 1] + 1));
    }
    let feeder = {
        // Throttled, so that the stream lasts well beyond the kill.
        let mut stdin = batch.take_stdin();
        std::thread::spawn(move || {
            use std::io::Write;
            for chunk in stdin_text {
                if stdin.write_all(chunk.as_bytes()).and_then(|()| stdin.flush()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut replies = batch.read(300, PHASE);
    server.down();
    let end = batch.finish(Duration::from_secs(60));
    feeder.join().expect("feeder");
    replies.extend(end.replies);
    assert_eq!(replies.len(), total, "every line is answered (--keep-going); stderr:\n{}", end.stderr);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["line"].as_u64(), Some(i as u64 + 1), "input order");
    }
    let codes = statuses(&replies);
    let first_failure = codes.iter().position(|s| *s != 0).expect("the kill came before the end of the stream");
    assert!(first_failure >= 300, "{first_failure}");
    for (i, r) in replies.iter().enumerate().skip(first_failure) {
        assert_eq!(status(r), 3, "line {} after the first failure (line {}): {r}", i + 1, first_failure + 1);
        names_the_server(r, &address);
    }
    assert_eq!(end.status, 3);
    server.up();
    if server.persistent() {
        let keys: Vec<String> = (0..first_failure).map(|i| format!("m{i}")).collect();
        for (i, v) in read_back(&env, &keys).iter().enumerate() {
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "line {} was answered 0", i + 1);
        }
    }
}

#[test]
fn postgresql_killed_mid_batch_never_reports_a_lost_write() {
    killed_mid_batch("postgresql");
}

#[test]
fn redis_killed_mid_batch_never_reports_a_lost_write() {
    killed_mid_batch("redis");
}

#[test]
fn memcached_killed_mid_batch_never_reports_a_lost_write() {
    killed_mid_batch("memcached");
}

// ---- a server restarted between the commands of a batch with --jobs ---------------------------

/// Sends `set <stem><i> v<i> 600` for `range` and returns the replies; records the lines
/// answered 0 in `stored`.
fn set_lines(batch: &mut Batch, stem: &str, range: std::ops::Range<usize>, stored: &mut Vec<String>) -> Vec<Value> {
    batch.send(&sets(stem, range.clone()));
    let replies = batch.read(range.len(), PHASE);
    for (i, r) in range.zip(&replies) {
        if status(r) == 0 {
            stored.push(format!("{stem}{i}"));
        }
    }
    replies
}

/// Sends one line at a time until one succeeds: the batch got its connections back. Every line
/// before it failed with 3. Returns how long that took.
fn until_reconnected(batch: &mut Batch, stored: &mut Vec<String>) -> Duration {
    let started = Instant::now();
    for i in 0.. {
        let reply = set_lines(batch, "probe", i..i + 1, stored).remove(0);
        match status(&reply) {
            0 => return started.elapsed(),
            3 => {}
            _ => panic!("while reconnecting: {reply}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no connection 10 s after the restart: {reply}");
        std::thread::sleep(Duration::from_millis(50));
    }
    unreachable!()
}

fn restarted_between_commands(kind: &str) {
    let Some(mut server) = Own::start(kind) else { return };
    let env = server.env("rs:");
    let address = server.address();
    let mut batch = Batch::spawn(&env, &["batch", "--keep-going", "--jobs", "4"]);
    let mut stored = Vec::new();
    all_status(&set_lines(&mut batch, "r", 0..200, &mut stored), 0, "before the restart");

    // Restarted while the batch's connections sit idle: they are stale now. Lines fail with 3
    // or succeed; within pool_timeout (plus slack) they succeed again, every one of them.
    server.down();
    server.up();
    let took = until_reconnected(&mut batch, &mut stored);
    assert!(took < BOUND, "reconnected {took:?} after the restart");
    all_status(&set_lines(&mut batch, "r", 200..400, &mut stored), 0, "the connections are re-established");

    // Down for a while, lines keep coming: they fail with 3 in bounded time; then back.
    server.down();
    let started = Instant::now();
    let replies = set_lines(&mut batch, "r", 400..500, &mut stored);
    for r in &replies {
        assert_eq!(status(r), 3, "while the server is down: {r}");
        names_the_server(r, &address);
    }
    assert!(started.elapsed() < BOUND, "100 lines refused in {:?}", started.elapsed());
    server.up();
    let took = until_reconnected(&mut batch, &mut stored);
    assert!(took < BOUND, "reconnected {took:?} after the outage");
    all_status(&set_lines(&mut batch, "r", 500..700, &mut stored), 0, "back after the outage");
    let end = batch.finish(PHASE);
    assert_eq!(end.status, 3, "the batch ends with the worst status it saw: {end:?}");

    if server.persistent() {
        for (key, v) in stored.iter().zip(read_back(&env, &stored)) {
            let i = key.trim_start_matches(|c: char| c.is_alphabetic());
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "{key} was answered 0");
        }
    }
}

#[test]
fn postgresql_restarted_between_commands_with_jobs_reconnects() {
    restarted_between_commands("postgresql");
}

#[test]
fn redis_restarted_between_commands_with_jobs_reconnects() {
    restarted_between_commands("redis");
}

#[test]
fn memcached_restarted_between_commands_with_jobs_reconnects() {
    restarted_between_commands("memcached");
}

// ---- PostgreSQL: pool, timeouts, schema, privileges --------------------------------------------

/// Waits until a session of database `db` other than ours waits for a lock.
fn wait_for_lock_waiter(client: &mut postgres::Client, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' \
                 AND pid <> pg_backend_pid()",
                &[&db],
            )
            .expect("pg_stat_activity")
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no kcache session came to wait for the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn postgresql_pool_exhausted_with_max_backlog_0_fails_at_once_through_batch_jobs() {
    // The library-level test is tests/postgresql.rs, max_backlog_fails_the_next_waiter_at_once.
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let env = db
        .env()
        .var("KINTO_CACHE_POOL_SIZE", "1")
        .var("KINTO_CACHE_MAX_OVERFLOW", "0")
        .var("KINTO_CACHE_MAX_BACKLOG", "0");
    // Another session holds the table: the first command takes the one connection and waits.
    let mut locker = db.session();
    let mut tx = locker.transaction().expect("begin");
    tx.batch_execute("LOCK TABLE cache IN ACCESS EXCLUSIVE MODE").expect("lock");
    let mut batch = Batch::spawn(&env, &["batch", "--keep-going", "--jobs", "2"]);
    batch.send("get held\n");
    let name = db.name.clone();
    wait_for_lock_waiter(db.sql(), &name);
    // Every other worker asks the pool now: no connection, no room in the backlog.
    let keys: Vec<String> = (0..8).map(|i| format!("other{i}")).collect();
    let started = Instant::now();
    batch.send(&keys.iter().map(|k| format!("get {k}\n")).collect::<String>());
    std::thread::sleep(Duration::from_millis(300));
    tx.commit().expect("commit");
    let end = batch.finish(PHASE);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let replies = end.replies;
    assert_eq!(replies.len(), 9, "{replies:?}");
    assert_eq!(status(&replies[0]), 1, "the command holding the connection ran: {}", replies[0]);
    let mut exhausted = 0;
    for r in &replies[1..] {
        match status(r) {
            // On the first command's worker: it waited its turn, then ran.
            1 => {}
            3 => {
                let e = r["error"].as_str().expect("error");
                assert!(e.contains("exhausted") && e.contains("max_backlog"), "the message says why: {e}");
                exhausted += 1;
            }
            other => panic!("status {other}: {r}"),
        }
    }
    // With the pool's timeout at 10 s, a waiter would have got the connection once the lock
    // went, 300 ms later: a status 3 here means it failed at once.
    assert!(exhausted > 0, "no command met the exhausted pool: {replies:?}");
    assert_eq!(end.status, 3);
}

#[test]
fn postgresql_statement_timeout_behind_a_lock_is_status_3() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let role = db.role(None);
    let name = db.name.clone();
    db.sql()
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON cache TO {role}; \
             ALTER ROLE {role} IN DATABASE {name} SET statement_timeout = '300ms'"
        ))
        .expect("role");
    let plain = pg_env(&db.url(), "5");
    plain.run(&["set", "k", "v", "600"]).ok();
    let mut locker = db.session();
    let mut tx = locker.transaction().expect("begin");
    tx.batch_execute("LOCK TABLE cache IN ACCESS EXCLUSIVE MODE").expect("lock");
    let envs = [
        ("options in the URL", pg_env(&db.url_as(None, "options=-c%20statement_timeout%3D300"), "5")),
        ("ALTER ROLE ... SET statement_timeout", pg_env(&db.url_as(Some(&role), ""), "5")),
    ];
    for (how, env) in &envs {
        for args in [
            &["get", "k"][..],
            &["set", "k", "w", "600"],
            &["ttl", "k"],
            &["expire", "k", "5"],
            &["delete", "k"],
            &["--prefix", "p:", "flush"],
            &["flush"],
            &["purge"],
            &["ping"],
        ] {
            let started = Instant::now();
            let out = run_within(env, args, None, HANG);
            assert!(started.elapsed() < BOUND, "{how}: kcache {args:?} took {:?}", started.elapsed());
            out.code(3).stdout_is("").one_error_line();
            assert!(out.stderr.contains("timeout"), "{how}: the message says why:\n{}", out.stderr);
        }
        let started = Instant::now();
        let input = b"get k\nset k w 600\nset k2 v 600\nttl k\n";
        let out = run_within(env, &["batch", "--keep-going"], Some(input), HANG);
        out.code(3);
        assert!(started.elapsed() < Duration::from_secs(5), "{how}: batch took {:?}", started.elapsed());
        let replies = crate::util::servers::replies(&out.stdout);
        assert_eq!(statuses(&replies), [3, 3, 3, 3], "{how}: {}", out.stdout);
    }
    tx.commit().expect("commit");
    // Nothing happened: the value, its TTL, no new key.
    plain.run(&["get", "k"]).ok().stdout_is("v\n");
    plain.run(&["get", "k2"]).code(1);
    let left: u64 = plain.run(&["ttl", "k"]).ok().stdout.trim().parse().expect("seconds");
    assert!(left > 590, "{left}");
}

/// Without `--keep-going`, a batch whose connection cannot be had (refused, or a wrong
/// password) reports the first line and stops: the lines after it, read in the same group, were
/// not attempted and are not reported. With `--keep-going`, every line is.
#[test]
fn a_batch_that_cannot_connect_reports_only_the_first_line() {
    let port = crate::util::servers::free_port();
    let mut cases = vec![
        ("postgresql", "KINTO_CACHE_URL", format!("postgresql://u@127.0.0.1:{port}/db"), 3),
        ("redis", "KINTO_CACHE_URL", format!("redis://127.0.0.1:{port}/0"), 3),
        ("memcached", "KINTO_CACHE_HOSTS", format!("127.0.0.1:{port}"), 3),
    ];
    let redis = OwnRedis::start(&["--requirepass", "right-password-1"]);
    if let Some(r) = &redis {
        cases.push(("redis", "KINTO_CACHE_URL", format!("redis://:wrong-password@127.0.0.1:{}/0", r.port), 4));
    }
    for (backend, var, target, code) in cases {
        let env = Env::new().var("KINTO_CACHE_BACKEND", backend).var(var, &target).var("KINTO_CACHE_POOL_TIMEOUT", "2");
        let input = b"get a\nset b c 60\nget c\n";
        let out = run_within(&env, &["batch"], Some(input), PHASE);
        out.code(code);
        let replies = crate::util::servers::replies(&out.stdout);
        assert_eq!(statuses(&replies), vec![code as u64], "{backend} {target}: {}", out.stdout);
        assert_eq!(replies[0]["line"], 1, "{}", out.stdout);
        let out = run_within(&env, &["batch", "--keep-going"], Some(input), PHASE);
        out.code(code);
        assert_eq!(statuses(&crate::util::servers::replies(&out.stdout)), vec![code as u64; 3], "{}", out.stdout);
    }
}

#[test]
fn a_batch_against_a_dead_server_answers_every_line_at_once() {
    let port = crate::util::servers::free_port();
    for (backend, var, target) in [
        ("postgresql", "KINTO_CACHE_URL", format!("postgresql://u@127.0.0.1:{port}/db")),
        ("redis", "KINTO_CACHE_URL", format!("redis://127.0.0.1:{port}/0")),
        ("memcached", "KINTO_CACHE_HOSTS", format!("127.0.0.1:{port}")),
    ] {
        let env = Env::new().var("KINTO_CACHE_BACKEND", backend).var(var, &target).var("KINTO_CACHE_POOL_TIMEOUT", "4");
        let mut batch = Batch::spawn(&env, &["batch", "--keep-going"]);
        for i in 0..6 {
            // One line at a time, as a coprocess sends them: each is refused at once.
            let started = Instant::now();
            batch.send(&format!("get k{i}\n"));
            let reply = batch.read(1, PHASE).remove(0);
            let took = started.elapsed();
            assert_eq!(status(&reply), 3, "{backend}: {reply}");
            assert!(took < Duration::from_secs(1), "{backend}: line {} took {took:?} to be refused", i + 1);
        }
        batch.finish(PHASE);
    }
}

#[test]
fn postgresql_a_lock_wait_is_bounded_by_pool_timeout() {
    let Some(db) = RigDb::create() else { return };
    db.migrate();
    let env = pg_env(&db.url(), "1");
    let mut locker = db.session();
    let holder = std::thread::spawn(move || {
        let mut tx = locker.transaction().expect("begin");
        tx.batch_execute("LOCK TABLE cache IN ACCESS EXCLUSIVE MODE").expect("lock");
        std::thread::sleep(Duration::from_secs(6));
        tx.commit().expect("commit");
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = run_within(&env, &["get", "k"], None, HANG);
    let took = started.elapsed();
    holder.join().expect("holder");
    assert!(took < BOUND, "kcache get waited {took:?} behind a lock with pool_timeout 1 (status {})", out.status);
    out.code(3).one_error_line();
}

#[test]

fn postgresql_a_batch_group_that_waited_for_a_lock_keeps_expiry_exact() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let env = db.env();
    env.run(&["set", "a", "v", "600"]).ok();
    let mut batch = Batch::spawn(&env, &["batch", "--keep-going"]);
    batch.send("get warm-up\n");
    assert_eq!(status(&batch.read(1, PHASE)[0]), 1);
    // Another session holds the row of `a`: the group's first statement waits for it.
    let mut locker = db.session();
    let mut tx = locker.transaction().expect("begin");
    tx.batch_execute("SELECT 1 FROM cache WHERE key = 'a' FOR UPDATE").expect("row lock");
    env.run(&["set", "short", "v", "1.5"]).ok();
    batch.send("set a w 600\nget short\nttl later\n");
    let name = db.name.clone();
    wait_for_lock_waiter(db.sql(), &name);
    // Meanwhile `short` expires, and another client writes `later` for 60 s (as Kinto does: a
    // kcache `set` would purge `short` on its way).
    std::thread::sleep(Duration::from_millis(2500));
    db.sql().batch_execute("INSERT INTO cache VALUES ('later', '\"v\"', sec2ttl(60))").expect("insert");
    tx.commit().expect("commit");
    let replies = batch.read(3, PHASE);
    batch.finish(PHASE);
    assert_eq!(status(&replies[0]), 0, "{}", replies[0]);
    assert_eq!(status(&replies[1]), 1, "`short` expired a second before it was read, yet: {}", replies[1]);
    let left = replies[2]["value"].as_i64().expect("ttl");
    assert!(left <= 60, "`later` was set for 60 s, yet ttl says {left}");
}

#[test]
fn postgresql_table_dropped_under_a_running_batch_is_status_4_with_the_migrate_hint() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let env = pg_env(&db.url(), "1");
    for jobs in ["1", "3"] {
        env.run(&["migrate"]).ok();
        let mut batch = Batch::spawn(&env, &["batch", "--keep-going", "--jobs", jobs]);
        batch.send(&sets("d", 0..50));
        all_status(&batch.read(50, PHASE), 0, "before the drop");
        db.sql().batch_execute("DROP TABLE cache").expect("drop table");
        batch.send(&format!("{}get d1\nttl d2\ndelete d3\nexpire d4 60\npurge\n", sets("d", 50..100)));
        let replies = batch.read(55, PHASE);
        for r in &replies {
            assert_eq!(status(r), 4, "jobs {jobs}: {r}");
            assert_eq!(r["hint"], "run 'kcache migrate' first", "jobs {jobs}: {r}");
        }
        let end = batch.finish(PHASE);
        assert_eq!(end.status, 4, "{end:?}");
    }
}

#[test]
fn postgresql_read_only_role_reads_and_refuses_writes_with_status_4() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let role = db.role(None);
    db.sql()
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON cache TO {role}; \
             ALTER ROLE {role} SET default_transaction_read_only = on"
        ))
        .expect("role");
    let admin = pg_env(&db.url(), "5");
    admin.run(&["set", "k", "v", "600"]).ok();
    let env = pg_env(&db.url_as(Some(&role), ""), "1");
    env.run(&["get", "k"]).ok().stdout_is("v\n");
    env.run(&["get", "nope"]).code(1);
    env.run(&["ttl", "nope"]).code(1);
    let left: u64 = env.run(&["ttl", "k"]).ok().stdout.trim().parse().expect("seconds");
    assert!(left > 590);
    env.run(&["migrate"]).ok();
    env.run(&["migrate", "--dry-run"]).ok().stdout_is("-- the schema is up to date\n");
    for args in [
        &["set", "k", "w", "600"][..],
        &["set", "new", "w", "600"],
        &["expire", "k", "5"],
        &["delete", "k"],
        &["flush"],
        &["--prefix", "k", "flush"],
        &["purge"],
        &["ping"],
    ] {
        let out: Out = env.run(args);
        out.code(4).stdout_is("").one_error_line();
        assert!(out.stderr.contains("read-only"), "the message says why:\n{}", out.stderr);
    }
    // A batch: reads answered, writes refused, each on its own line, in one group.
    let out = env.run_stdin(
        &["batch", "--keep-going"],
        Some(b"get k\nset k w 600\nttl k\ndelete k\nget k\nexpire k 9\nget nope\nset x y 60\n"),
    );
    out.code(4);
    let replies = crate::util::servers::replies(&out.stdout);
    assert_eq!(statuses(&replies), [0, 4, 0, 4, 0, 4, 1, 4], "{}", out.stdout);
    assert_eq!(replies[0]["value"], "v");
    assert_eq!(replies[4]["value"], "v");
    admin.run(&["get", "k"]).ok().stdout_is("v\n");
    admin.run(&["get", "x"]).code(1);
}

// ---- a batch that stops reports what it ran --------------------------------------------------

/// Asserts that a batch stopped at line 1 and that its line 2, `set after 1 60`, did not run
/// unreported: either it has a reply, or the key is not there.
#[track_caller]
fn nothing_ran_unreported(out: &Out, after_is_stored: bool) {
    let replies = crate::util::servers::replies(&out.stdout);
    assert!(status(&replies[0]) >= 2, "{}", out.stdout);
    let reported = replies.iter().any(|r| r["line"] == 2);
    assert!(
        reported || !after_is_stored,
        "line 2 (set after 1 60) ran, but the batch stopped at line 1 and never said so:\n{}",
        out.stdout
    );
}

#[test]
fn a_stopped_batch_never_runs_a_command_it_does_not_report_redis() {
    let Some(url) = crate::util::rig::server("KCACHE_TEST_REDIS_URL") else { return };
    let prefix = format!("{}:", crate::util::unique("stop"));
    let env =
        Env::new().var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_URL", &url).var("KINTO_CACHE_PREFIX", &prefix);
    let mut conn = crate::util::servers::redis_client(&url);
    let _: () = redis::cmd("HSET").arg(format!("{prefix}h")).arg("f").arg("v").query(&mut conn).expect("hset");
    let out = env.run_stdin(&["batch"], Some(b"get h\nset after 1 60\n"));
    out.code(4);
    let stored: Option<String> = redis::cmd("GET").arg(format!("{prefix}after")).query(&mut conn).expect("get");
    nothing_ran_unreported(&out, stored.is_some());
}

#[test]
fn a_stopped_batch_never_runs_a_command_it_does_not_report_memcached() {
    let Some(server) = OwnMemcached::start() else { return };
    let env = Env::new().var("KINTO_CACHE_BACKEND", "memcached").var("KINTO_CACHE_HOSTS", &server.host());
    let big = "x".repeat(1024 * 1024 + 100);
    let out = env.run_stdin(&["batch"], Some(format!("set big {big} 60\nset after 1 60\n").as_bytes()));
    out.code(4);
    let stored = server.raw("get after\r\n").len() > 1;
    nothing_ran_unreported(&out, stored);
}

#[test]
fn a_stopped_batch_never_runs_a_command_it_does_not_report_postgresql() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let env = pg_env(&db.url_as(None, "options=-c%20statement_timeout%3D300"), "5");
    env.run(&["set", "h", "v", "600"]).ok();
    // A row lock: `set h` waits for it and times out; `set after` does not need it.
    let mut locker = db.session();
    let mut tx = locker.transaction().expect("begin");
    tx.batch_execute("SELECT * FROM cache WHERE key = 'h' FOR UPDATE").expect("row lock");
    let out = run_within(&env, &["batch"], Some(b"set h w 60\nset after 1 60\n"), HANG);
    tx.commit().expect("commit");
    out.code(3);
    let stored: i64 = db.sql().query_one("SELECT count(*) FROM cache WHERE key = 'after'", &[]).expect("count").get(0);
    nothing_ran_unreported(&out, stored > 0);
}

// ---- a server that stops answering -----------------------------------------------------------

/// How long a command may wait for a server that stopped answering, with pool_timeout 1 s, as
/// the README says: PostgreSQL pool_timeout + 5 s; Redis its command timeout, 10 s; memcached
/// pool_timeout. Plus [`BOUND`]'s slack for a loaded machine.
fn hung_bound(kind: &str) -> Duration {
    let wait = match kind {
        "postgresql" => 6,
        "redis" => 10,
        _ => 1,
    };
    Duration::from_secs(wait) + BOUND
}

/// A server frozen with SIGSTOP (it accepts connections, answers nothing): a batch whose
/// connection is open, then a one-shot command, each end with status 3 naming the server within
/// the bound, and nothing after the failed line runs. Thawed, the server answers again.
fn frozen_server(kind: &str) {
    let Some(server) = Own::start(kind) else { return };
    let env = server.env("hung:");
    let address = server.address();
    let bound = hung_bound(kind);
    env.run(&["set", "k", "v", "600"]).ok();

    let mut batch = Batch::spawn(&env, &["batch"]);
    batch.send("set a 1 600\nget a\n");
    all_status(&batch.read(2, PHASE), 0, "before the freeze");
    let frozen = server.freeze();
    let started = Instant::now();
    batch.send("get k\nset b 2 600\n");
    let end = batch.finish(bound + BOUND);
    let took = started.elapsed();
    // Both lines went out together (one group): each is reported, as not done.
    assert_eq!(end.status, 3, "{end:?}");
    assert!(!end.replies.is_empty(), "{end:?}");
    all_status(&end.replies, 3, "after the freeze");
    names_the_server(&end.replies[0], &address);
    assert!(took < bound, "the batch took {took:?} (bound {bound:?})");

    let started = Instant::now();
    let out = run_within(&env, &["get", "k"], None, bound + BOUND);
    let took = started.elapsed();
    out.code(3).stderr_has(&address).one_error_line();
    assert!(took < bound, "get took {took:?} (bound {bound:?})");

    drop(frozen);
    env.run(&["get", "k"]).ok().stdout_is("v\n");
}

#[test]
fn postgresql_frozen_server_is_status_3_within_the_reply_timeout() {
    frozen_server("postgresql");
}

#[test]
fn redis_frozen_server_is_status_3_within_the_command_timeout() {
    frozen_server("redis");
}

#[test]
fn memcached_frozen_server_is_status_3_within_pool_timeout() {
    frozen_server("memcached");
}

/// A TCP proxy to PostgreSQL on `upstream` that forwards both ways until the server has said
/// ReadyForQuery once (the start-up exchange is over), then forwards nothing more and keeps the
/// sockets open: a server, or a network, that stops answering after the connection was made.
/// Serves `connections` connections, each until its client closes. Returns its port.
fn stalling_proxy(upstream: u16, connections: usize) -> u16 {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for client in listener.incoming().take(connections) {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
            let stalled = Arc::new(AtomicBool::new(false));
            let (mut client_r, mut server_w) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            let flag = Arc::clone(&stalled);
            // Client to server, until the stall; after it, read and drop (the client never blocks).
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = client_r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !flag.load(Ordering::SeqCst) && server_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server_w.shutdown(std::net::Shutdown::Both);
            });
            // Server to client, up to and including the first ReadyForQuery ('Z', length 5).
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = server.read(&mut buf) {
                    if n == 0 || client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    if buf[..n].windows(5).any(|w| w == b"Z\0\0\0\x05") {
                        stalled.store(true, Ordering::SeqCst);
                        break;
                    }
                }
                // Keep the client's socket open: the other thread ends when the client closes.
                std::thread::sleep(Duration::from_secs(60));
            });
        }
    });
    port
}

/// The connection is made, then nothing answers (the stalling proxy): a one-shot command and a
/// batch give status 3 naming the host within pool_timeout + 5 s, instead of waiting forever.
#[test]
fn postgresql_a_server_that_stops_answering_after_connecting_is_status_3() {
    let Some(db) = RigDb::create() else { return };
    db.migrate();
    let port = stalling_proxy(db.server.port, 2);
    let userinfo = format!("{}:{}", db.server.user, sq_url(&db.server.password));
    // In clear, so that the proxy sees the server's ReadyForQuery.
    let url = format!("postgresql://{userinfo}@127.0.0.1:{port}/{}?sslmode=disable", db.name);
    let env = pg_env(&url, "1");
    let address = format!("127.0.0.1:{port}");
    let bound = hung_bound("postgresql");

    let started = Instant::now();
    let out = run_within(&env, &["get", "k"], None, bound + BOUND);
    let took = started.elapsed();
    out.code(3).stderr_has(&address).stderr_has("stopped answering").one_error_line();
    assert!(took < bound, "get took {took:?} (bound {bound:?})");

    let started = Instant::now();
    let out = run_within(&env, &["batch"], Some(b"set a 1 60\nget a\n"), bound + BOUND);
    let took = started.elapsed();
    out.code(3);
    // Both lines went out in one group: each is reported, as not done.
    let replies = crate::util::servers::replies(&out.stdout);
    assert_eq!(statuses(&replies), vec![3, 3], "{}", out.stdout);
    names_the_server(&replies[0], &address);
    assert!(took < bound, "the batch took {took:?} (bound {bound:?})");
}

/// Percent-encodes everything but letters and digits (a password in a URL).
fn sq_url(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}
