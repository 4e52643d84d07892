//! The postgresql backend through the real binary, against the server `scripts/test` starts
//! (TLS from a throwaway CA, connections logged to `KCACHE_TEST_PG_LOG`).
//!
//! Every test creates a database of its own ([`RigDb`], `kc_<pid>_<n>`) and drops it when it
//! ends, so the tests run in parallel and never touch anything they did not create. Roles a test
//! creates are dropped with its database.
//!
//! Speed: a SCRAM login costs ~65 ms of CPU in a debug build, on both sides. So the tests' own
//! sessions and most kcache runs use the rig's unix socket (trust); the tests about TCP,
//! passwords, TLS and connection counts use TCP with the password.

use crate::util::rig::{RigDb, RigPostgres, pg_env};
use crate::util::{Env, Out, sorted, sorted_lines, unique};
use std::path::PathBuf;
use std::time::{Duration, Instant};

// ---- fixtures --------------------------------------------------------------------------------

/// The server log, or `None` (skipped, loudly) outside CI.
fn server_log() -> Option<PathBuf> {
    crate::util::rig::server("KCACHE_TEST_PG_LOG").map(PathBuf::from)
}

/// The `connection authorized` lines of the server log for database `db`.
fn authorized(log: &PathBuf, db: &str) -> Vec<String> {
    let bytes = std::fs::read(log).unwrap_or_else(|e| panic!("cannot read {}: {e}", log.display()));
    let token = format!("database={db}");
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.contains("connection authorized:") && l.split_whitespace().any(|w| w == token))
        .map(str::to_string)
        .collect()
}

/// Runs `run` and returns the `connection authorized` lines it caused for database `db`. The
/// server logs that line before the client can send a query, so it is there when `run` ends;
/// tests wait a moment once at their end for connections a process might open in the background.
fn connections_of(log: &PathBuf, db: &str, run: impl FnOnce()) -> Vec<String> {
    let before = authorized(log, db).len();
    run();
    authorized(log, db).split_off(before)
}

/// Lets a connection opened in the background reach the log.
fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}

/// Asserts that `secret` appears nowhere in what a run printed.
#[track_caller]
fn no_secret(out: &Out, secret: &str) {
    assert!(
        !out.stdout.contains(secret) && !out.stderr.contains(secret),
        "kcache {:?} printed a password:\n--- stdout\n{}\n--- stderr\n{}",
        out.args,
        out.stdout,
        out.stderr
    );
}

/// Asserts the status is one of `statuses`.
#[track_caller]
fn code_in(out: &Out, statuses: &[i32]) {
    assert!(
        statuses.contains(&out.status),
        "kcache {:?}: status {} not in {statuses:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.args,
        out.status,
        out.stdout,
        out.stderr
    );
}

/// The whole seconds `ttl` printed.
#[track_caller]
fn seconds_left(out: &Out) -> i64 {
    out.ok();
    out.stdout.trim().parse().unwrap_or_else(|_| panic!("ttl printed {:?}", out.stdout))
}

/// How much a TTL may have run down between a write and a read: kcache runs are separate
/// processes, and a loaded CI machine may take seconds between two of them.
const SLACK: i64 = 5;

/// Asserts `ttl` printed `set` seconds, less at most [`SLACK`] (never more: it rounds up).
#[track_caller]
fn assert_left(out: &Out, set: i64) {
    let left = seconds_left(out);
    assert!((set - SLACK..=set).contains(&left), "kcache {:?}: printed {left} for a TTL of {set}", out.args);
}

/// Kinto 26.5's `schema.sql`, verbatim (reference §2.1).
const KINTO_SCHEMA_SQL: &str = r#"--
-- Automated script, we do not need NOTICE and WARNING
--
SET client_min_messages TO ERROR;

CREATE TABLE IF NOT EXISTS cache (
    key VARCHAR(256) PRIMARY KEY,
    value TEXT NOT NULL,
    ttl TIMESTAMP DEFAULT NULL
);

CREATE INDEX IF NOT EXISTS idx_cache_ttl ON cache(ttl);


CREATE OR REPLACE FUNCTION sec2ttl(seconds FLOAT)
RETURNS TIMESTAMP AS $$
BEGIN
    IF seconds IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN now() + (seconds || ' SECOND')::INTERVAL;
END;
$$ LANGUAGE plpgsql;
"#;

/// The recorded Kinto data (tests/data/kinto/postgresql.json).
fn kinto_recording() -> serde_json::Value {
    serde_json::from_str(include_str!("data/kinto/postgresql.json")).expect("postgresql.json")
}

/// Collapses runs of whitespace, to compare SQL bodies.
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---- migrate ---------------------------------------------------------------------------------

#[test]
fn migrate_creates_kintos_three_objects_and_then_is_up_to_date() {
    let Some(mut db) = RigDb::create() else { return };
    let env = db.env();

    let dry = env.run(&["migrate", "--dry-run"]);
    dry.ok();
    for needle in ["CREATE TABLE", "CREATE INDEX", "CREATE OR REPLACE FUNCTION"] {
        assert!(dry.stdout.contains(needle), "dry-run on an empty database lacks {needle}:\n{}", dry.stdout);
    }
    assert_eq!(db.objects("public"), (0, 0, 0), "--dry-run changed nothing");

    let ran = env.run(&["-v", "migrate"]);
    ran.ok().stdout_is("");
    for needle in ["CREATE TABLE", "CREATE INDEX", "FUNCTION"] {
        assert!(ran.stderr.contains(needle), "-v migrate does not say it ran {needle}:\n{}", ran.stderr);
    }
    assert_eq!(db.objects("public"), (1, 1, 1));

    // Exactly Kinto's columns (recorded from Kinto 26.5).
    let recorded = kinto_recording();
    let rows = db
        .sql()
        .query(
            "SELECT column_name::text, data_type::text, character_maximum_length, column_default::text, \
                    is_nullable::text \
             FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'cache' \
             ORDER BY ordinal_position",
            &[],
        )
        .expect("columns");
    let columns: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.get::<_, String>(0),
                "data_type": r.get::<_, String>(1),
                "character_maximum_length": r.get::<_, Option<i32>>(2),
                "column_default": r.get::<_, Option<String>>(3),
                "is_nullable": r.get::<_, String>(4),
            })
        })
        .collect();
    assert_eq!(serde_json::Value::Array(columns), recorded["table_columns"]);
    let pk: String = db
        .sql()
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'public.cache'::regclass AND contype = 'p'",
            &[],
        )
        .expect("primary key")
        .get(0);
    assert_eq!(pk, "PRIMARY KEY (key)");
    let index: String =
        db.sql().query_one("SELECT pg_get_indexdef('public.idx_cache_ttl'::regclass)", &[]).expect("index").get(0);
    assert!(index.ends_with("USING btree (ttl)"), "{index}");
    let function: String = db
        .sql()
        .query_one("SELECT pg_get_functiondef('public.sec2ttl(double precision)'::regprocedure)", &[])
        .expect("function")
        .get(0);
    let kinto_function = recorded["sec2ttl_definition"].as_str().expect("sec2ttl_definition");
    assert_eq!(squeeze(&function), squeeze(kinto_function));

    // Idempotent: nothing more to do, and said so.
    let again = env.run(&["-v", "migrate"]);
    again.ok().stdout_is("");
    assert!(again.stderr.contains("up to date"), "{}", again.stderr);
    assert!(!again.stderr.contains("CREATE"), "a second migrate ran something:\n{}", again.stderr);
    env.run(&["migrate", "--dry-run"]).ok().stdout_is("-- the schema is up to date\n");
    assert_eq!(db.objects("public"), (1, 1, 1));

    env.run(&["set", "k", "v", "60"]).ok();
    env.run(&["get", "k"]).ok().stdout_is("v\n");
}

#[test]
fn migrate_accepts_a_schema_kinto_or_a_dba_created() {
    for (what, sql) in
        [("Kinto's schema.sql", KINTO_SCHEMA_SQL), ("the repository's schema.sql", include_str!("../schema.sql"))]
    {
        let Some(mut db) = RigDb::create() else { return };
        db.sql().batch_execute(sql).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        db.reconnect();
        db.sql().batch_execute("INSERT INTO cache VALUES ('kinto:k', '\"from kinto\"', sec2ttl(60))").expect("row");
        let env = db.env();
        env.run(&["migrate", "--dry-run"]).ok().stdout_is("-- the schema is up to date\n");
        let out = env.run(&["-v", "migrate"]);
        out.ok();
        assert!(out.stderr.contains("up to date") && !out.stderr.contains("CREATE"), "{what}:\n{}", out.stderr);
        assert_eq!(db.objects("public"), (1, 1, 1), "{what}");
        env.run(&["--prefix", "kinto:", "get", "k"]).ok().stdout_is("from kinto\n");
    }
}

#[test]
fn migrate_completes_a_partial_schema() {
    let Some(mut db) = RigDb::create() else { return };
    db.sql()
        .batch_execute(
            "CREATE TABLE cache (key VARCHAR(256) PRIMARY KEY, value TEXT NOT NULL, ttl TIMESTAMP DEFAULT NULL)",
        )
        .expect("table");
    db.sql().batch_execute("INSERT INTO cache VALUES ('kept', '\"still here\"', NULL)").expect("row");
    let env = db.env();
    let dry = env.run(&["migrate", "--dry-run"]);
    dry.ok();
    assert!(!dry.stdout.contains("CREATE TABLE"), "the table exists:\n{}", dry.stdout);
    assert!(dry.stdout.contains("CREATE INDEX") && dry.stdout.contains("FUNCTION"), "{}", dry.stdout);
    let out = env.run(&["-v", "migrate"]);
    out.ok();
    assert!(!out.stderr.contains("CREATE TABLE"), "{}", out.stderr);
    assert!(out.stderr.contains("CREATE INDEX") && out.stderr.contains("FUNCTION"), "{}", out.stderr);
    assert_eq!(db.objects("public"), (1, 1, 1));
    env.run(&["get", "kept"]).ok().stdout_is("still here\n");

    // Only the function missing: only the function is created.
    db.sql().batch_execute("DROP FUNCTION sec2ttl(FLOAT)").expect("drop function");
    let dry = env.run(&["migrate", "--dry-run"]);
    dry.ok();
    assert!(dry.stdout.contains("FUNCTION") && !dry.stdout.contains("CREATE TABLE"), "{}", dry.stdout);
    assert!(!dry.stdout.contains("CREATE INDEX"), "{}", dry.stdout);
    env.run(&["migrate"]).ok();
    assert_eq!(db.objects("public"), (1, 1, 1));
}

#[test]
fn migrate_looks_in_the_connections_own_schema() {
    let Some(mut db) = RigDb::create() else { return };
    // Kinto checks information_schema.tables for a `cache` of any schema and is fooled.
    db.sql()
        .batch_execute(
            "CREATE SCHEMA other; CREATE TABLE other.cache (x int); \
             CREATE INDEX idx_cache_ttl ON other.cache (x); \
             CREATE FUNCTION other.sec2ttl(seconds FLOAT) RETURNS TIMESTAMP AS 'SELECT now()::timestamp' LANGUAGE sql",
        )
        .expect("stray schema");
    let env = db.env();
    let dry = env.run(&["migrate", "--dry-run"]);
    dry.ok();
    assert!(dry.stdout.contains("CREATE TABLE"), "fooled by other.cache:\n{}", dry.stdout);
    env.run(&["migrate"]).ok();
    assert_eq!(db.objects("public"), (1, 1, 1));
    assert_eq!(db.objects("other"), (1, 1, 1), "other.* untouched");
    env.run(&["set", "k", "v", "60"]).ok();
    env.run(&["get", "k"]).ok().stdout_is("v\n");

    // A database whose search_path starts with another schema: migrate creates there.
    let Some(mut db) = RigDb::create() else { return };
    let name = db.name.clone();
    db.sql()
        .batch_execute(&format!("CREATE SCHEMA app; ALTER DATABASE {name} SET search_path = app, public"))
        .expect("search_path");
    db.migrate();
    assert_eq!(db.objects("app"), (1, 1, 1));
    assert_eq!(db.objects("public"), (0, 0, 0), "nothing in public");
    db.env().run(&["set", "k", "in app", "60"]).ok();
    let n: i64 = db.sql().query_one("SELECT count(*) FROM app.cache", &[]).expect("count").get(0);
    assert_eq!(n, 1);
}

#[test]
fn concurrent_migrates_create_each_object_once() {
    let Some(mut db) = RigDb::create() else { return };
    let env = db.env();
    let outs: Vec<Out> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| env.run(&["migrate"]))).collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for out in &outs {
        out.ok();
    }
    assert_eq!(db.objects("public"), (1, 1, 1));
    env.run(&["migrate", "--dry-run"]).ok().stdout_is("-- the schema is up to date\n");
}

#[test]
fn migrate_without_the_create_privilege_is_refused_with_status_4() {
    let Some(mut db) = RigDb::create() else { return };
    let password = format!("pw-{}", unique("nocreate"));
    let role = db.role(Some(&password));
    // PostgreSQL 15 gives PUBLIC no CREATE on schema public; older servers do: take it away.
    db.sql().batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC").expect("revoke");
    let url = db.server.url(&format!("{role}:{password}"), &db.name, "");
    let env = pg_env(&url, "10");

    let out = env.run(&["migrate"]);
    out.code(4).one_error_line();
    let lower = out.stderr.to_lowercase();
    assert!(lower.contains("permission") || lower.contains("privilege"), "{}", out.stderr);
    assert!(out.stderr.contains("CREATE"), "the message names the missing privilege:\n{}", out.stderr);
    no_secret(&out, &password);
    assert_eq!(db.objects("public"), (0, 0, 0), "nothing half-created");
    no_secret(&env.run(&["-v", "migrate"]), &password);

    let dry = env.run(&["migrate", "--dry-run"]);
    dry.ok();
    assert!(dry.stdout.contains("CREATE TABLE"), "{}", dry.stdout);
    assert_eq!(db.objects("public"), (0, 0, 0));
}

// ---- TTLs ------------------------------------------------------------------------------------

#[test]
fn ttls_follow_the_sessions_time_zone_as_kinto_does() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let name = db.name.clone();
    db.sql().batch_execute(&format!("ALTER DATABASE {name} SET timezone = 'America/New_York'")).expect("tz");
    db.reconnect();
    let zone: String = db.sql().query_one("SHOW timezone", &[]).expect("tz").get(0);
    assert_eq!(zone, "America/New_York");
    let env = db.env();

    env.run(&["set", "k", "v", "3600"]).ok();
    assert_left(&env.run(&["ttl", "k"]), 3600);
    env.run(&["get", "k"]).ok().stdout_is("v\n");
    // The stored timestamp is New York local time, as sec2ttl() writes it in this database.
    let offset: f64 = db
        .sql()
        .query_one(
            "SELECT EXTRACT(EPOCH FROM ttl - (now() AT TIME ZONE 'America/New_York'))::float8 FROM cache WHERE key = 'k'",
            &[],
        )
        .expect("ttl")
        .get(0);
    assert!((3600.0 - SLACK as f64..=3600.0).contains(&offset), "ttl is not New York time + 3600 s: {offset}");

    // Rows written the Kinto way from a New York session are read consistently.
    db.sql().batch_execute("INSERT INTO cache VALUES ('kinto:ny', '\"from sec2ttl\"', sec2ttl(120))").expect("row");
    assert_left(&env.run(&["--prefix", "kinto:", "ttl", "ny"]), 120);
    env.run(&["--prefix", "kinto:", "get", "ny"]).ok().stdout_is("from sec2ttl\n");
    let recorded = kinto_recording();
    let row = &recorded["rows_other_session_timezone"][0];
    assert_eq!(row["session_timezone"], "America/New_York");
    let full_key = row["full_key"].as_str().expect("full_key");
    let value = row["value"].as_str().expect("value");
    let secs: f64 = row["ttl_minus_now_epoch_seconds"].as_str().expect("secs").parse().expect("number");
    db.sql()
        .execute(
            "INSERT INTO cache VALUES ($1, $2, (now() AT TIME ZONE 'America/New_York') + make_interval(secs => $3))",
            &[&full_key, &value, &secs],
        )
        .expect("recorded row");
    let key = row["key"].as_str().expect("key");
    assert_left(&env.run(&["--prefix", "kinto:", "ttl", key]), 3600);
    env.run(&["--prefix", "kinto:", "get", key]).ok().stdout_is("from new york\n");
}

#[test]
fn ttls_are_whole_durations_and_expiry_is_exact() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let env = db.env();
    // Up to 100 years: sec2ttl() gets a number PostgreSQL prints without an exponent.
    for (ttl, expected) in
        [("61", 61), ("3600", 3600), ("40d", 3_456_000), ("3456000", 3_456_000), ("36500d", 3_153_600_000)]
    {
        env.run(&["set", "k", "v", ttl]).ok();
        assert_left(&env.run(&["ttl", "k"]), expected);
    }
    let ms: u64 = env.run(&["ttl", "--ms", "k"]).ok().stdout.trim().parse().expect("ms");
    assert!((3_153_600_000_000 - 1000 * SLACK as u64..=3_153_600_000_000).contains(&ms), "{ms}");

    // Sub-second: visible, then gone on time; the row stays until purge (get never writes).
    env.run(&["set", "short", "v", "0.25"]).ok();
    let start = Instant::now();
    let out = env.run(&["ttl", "--ms", "short"]);
    if start.elapsed() < Duration::from_millis(200) {
        let ms: u64 = out.ok().stdout.trim().parse().expect("ms");
        assert!(ms <= 250, "{ms}");
    }
    std::thread::sleep(Duration::from_millis(350));
    env.run(&["get", "short"]).code(1).stdout_is("");
    env.run(&["ttl", "short"]).code(1).stdout_is("-2\n");
    assert_eq!(db.count("key = 'short'"), 1, "get and ttl never write");
    env.run(&["expire", "short", "60"]).code(1);
    env.run(&["get", "short"]).code(1);
    assert_eq!(db.count("key = 'short' AND ttl < now()"), 1, "expire never brings an entry back");
    env.run(&["delete", "short"]).code(1).stdout_is("");

    // Under sec2ttl()'s 0.1 ms (PostgreSQL would print 5e-05 and fail to parse it): stored,
    // already gone.
    env.run(&["set", "tiny", "v", "0.00005"]).ok();
    env.run(&["get", "tiny"]).code(1);

    // A NULL ttl (Kinto's set(ttl=None)) is an entry without expiry.
    db.sql().batch_execute("INSERT INTO cache VALUES ('forever', '\"no expiry\"', NULL)").expect("row");
    env.run(&["ttl", "forever"]).ok().stdout_is("-1\n");
    env.run(&["get", "forever"]).ok().stdout_is("no expiry\n");
    env.run(&["expire", "forever", "60"]).ok();
    assert_left(&env.run(&["ttl", "forever"]), 60);
    env.run(&["delete", "forever"]).ok().stdout_is("no expiry\n");
}

#[test]
fn set_purges_a_bounded_batch_and_purge_removes_every_expired_row() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    db.sql()
        .batch_execute(
            "INSERT INTO cache SELECT 'dead' || i, '\"x\"', localtimestamp - interval '1 hour' FROM generate_series(1, 150) i; \
             INSERT INTO cache SELECT 'live' || i, '\"x\"', localtimestamp + interval '1 hour' FROM generate_series(1, 5) i; \
             INSERT INTO cache VALUES ('forever', '\"x\"', NULL)",
        )
        .expect("rows");
    let env = db.env();
    env.run(&["set", "new", "v", "60"]).ok();
    assert_eq!(db.count("ttl < now()"), 50, "set removes 100 expired rows");
    assert_eq!(db.count("ttl > now() OR ttl IS NULL"), 7, "and nothing live");
    env.run(&["get", "dead1"]).code(1);
    let out = env.run(&["-v", "purge"]);
    out.ok().stdout_is("");
    assert_eq!(db.count("ttl < now()"), 0);
    assert_eq!(db.count("true"), 7, "purge keeps live rows and rows without expiry");
    env.run(&["get", "forever"]).ok().stdout_is("x\n");
}

#[test]
fn reads_work_on_a_read_only_database() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let env = db.env();
    env.run(&["set", "k", "v", "60"]).ok();
    env.run(&["set", "gone", "v", "0.05"]).ok();
    std::thread::sleep(Duration::from_millis(100));
    let name = db.name.clone();
    db.sql().batch_execute(&format!("ALTER DATABASE {name} SET default_transaction_read_only = on")).expect("ro");
    // Kinto's get() purges the table and fails here; kcache's reads never write.
    env.run(&["get", "k"]).ok().stdout_is("v\n");
    env.run(&["get", "gone"]).code(1);
    env.run(&["ttl", "gone"]).code(1);
    assert_left(&env.run(&["ttl", "k"]), 60);
    let out = env.run(&["set", "k", "w", "60"]);
    out.code(4).one_error_line();
}

// ---- credentials and TLS ---------------------------------------------------------------------

#[test]
fn passwords_come_from_the_url_pgpassword_and_pgpass_and_are_never_printed() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let password = format!("S3cret:{}@/%", unique("pw"));
    let role = db.role(Some(&password));
    db.sql().batch_execute(&format!("GRANT SELECT, INSERT, UPDATE, DELETE ON cache TO {role}")).expect("grant");
    let (host, port, name) = (db.server.host.clone(), db.server.port, db.name.clone());
    let bare = db.server.url(&role, &name, "");

    // Percent-encoded in the URL.
    let encoded = password.replace('%', "%25").replace(':', "%3A").replace('@', "%40").replace('/', "%2F");
    let out = pg_env(&db.server.url(&format!("{role}:{encoded}"), &name, ""), "10").run(&["-v", "ping"]);
    out.ok().stdout_is("ok\n");
    no_secret(&out, &password);
    no_secret(&out, &encoded);

    // PGPASSWORD.
    let out = pg_env(&bare, "10").var("PGPASSWORD", &password).run(&["-v", "ping"]);
    out.ok().stdout_is("ok\n");
    no_secret(&out, &password);

    // ~/.pgpass, mode 0600, with a comment, a non-matching line and an escaped password.
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    let pgpass = format!("# kcache test\notherhost:*:*:*:nope\n{host}:{port}:{name}:{role}:{escaped}\n");
    let env = pg_env(&bare, "10");
    let file = env.write(".pgpass", &pgpass);
    set_mode(&file, 0o600);
    let out = env.run(&["-v", "ping"]);
    out.ok().stdout_is("ok\n");
    no_secret(&out, &password);
    // Wildcards.
    let env = pg_env(&bare, "10");
    set_mode(&env.write(".pgpass", &format!("*:*:*:{role}:{escaped}\n")), 0o600);
    env.run(&["ping"]).ok().stdout_is("ok\n");
    // PGPASSFILE.
    let env = pg_env(&bare, "10");
    let elsewhere = env.write("secrets/pass", &format!("{host}:{port}:*:{role}:{escaped}\n"));
    set_mode(&elsewhere, 0o600);
    env.var("PGPASSFILE", &elsewhere.display().to_string()).run(&["ping"]).ok().stdout_is("ok\n");

    // A .pgpass readable by others is ignored, as libpq does.
    let env = pg_env(&bare, "10");
    set_mode(&env.write(".pgpass", &pgpass), 0o644);
    let out = env.run(&["-v", "ping"]);
    code_in(&out, &[3, 4]);
    no_secret(&out, &password);
    let out = env.run(&["ping"]);
    out.code(4).one_error_line();

    // A wrong password: refused, and printed nowhere, not even with -v.
    let wrong = format!("Wr0ng-{}", unique("pw"));
    let out = pg_env(&db.server.url(&format!("{role}:{wrong}"), &name, ""), "10").run(&["-v", "ping"]);
    code_in(&out, &[3, 4]);
    no_secret(&out, &wrong);
    no_secret(&out, &password);
    let out = pg_env(&bare, "10").var("PGPASSWORD", &wrong).run(&["-v", "get", "k"]);
    code_in(&out, &[3, 4]);
    no_secret(&out, &wrong);
    let out = pg_env(&bare, "10").var("PGPASSWORD", &wrong).run(&["get", "k"]);
    code_in(&out, &[3, 4]);
    out.one_error_line();
    no_secret(&out, &wrong);
}

#[test]
fn no_password_for_a_server_that_wants_one_is_status_4_with_a_hint() {
    let Some(mut db) = RigDb::create() else { return };
    let role = db.role(Some("unused-password"));
    // Not worth retrying: the server refuses until someone gives a password.
    let out = pg_env(&db.server.url(&role, &db.name, ""), "10").run(&["ping"]);
    out.code(4).one_error_line();
    let hint = out.stderr.lines().find(|l| l.starts_with("kcache: hint: ")).unwrap_or_default();
    assert!(hint.contains("password"), "no hint about the password:\n{}", out.stderr);
}

#[test]
fn a_role_with_only_kintos_runtime_privileges_can_do_all_but_create() {
    let Some(mut db) = RigDb::create() else { return };
    let Some(log) = server_log() else { return };
    db.migrate();
    let password = format!("pw-{}", unique("dml"));
    let role = db.role(Some(&password));
    // What Kinto's runtime needs (reference §2.2): DML on the table, EXECUTE on sec2ttl (PUBLIC).
    db.sql()
        .batch_execute(&format!(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT SELECT, INSERT, UPDATE, DELETE ON cache TO {role}"
        ))
        .expect("grant");
    let env = pg_env(&db.server.url(&format!("{role}:{password}"), &db.name, ""), "10");
    // A deploy script runs migrate every time: up to date is not an error.
    env.run(&["migrate"]).ok();
    env.run(&["migrate", "--dry-run"]).ok().stdout_is("-- the schema is up to date\n");
    env.run(&["set", "k", "v", "60"]).ok();
    env.run(&["get", "k"]).ok().stdout_is("v\n");
    assert_left(&env.run(&["ttl", "k"]), 60);
    env.run(&["expire", "k", "120"]).ok();
    env.run(&["ping"]).ok().stdout_is("ok\n");
    env.run(&["purge"]).ok();
    env.run(&["--prefix", "x", "flush"]).ok();
    env.run(&["get", "k"]).ok();
    // No TRUNCATE privilege: flush falls back to DELETE, on the same one connection.
    db.sql();
    let lines = connections_of(&log, &db.name, || {
        env.run(&["flush"]).ok();
    });
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(db.count("true"), 0);
    env.run(&["set", "k", "v", "60"]).ok();
    env.run(&["delete", "k"]).ok().stdout_is("v\n");
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn sslmodes_behave_as_in_libpq() {
    let Some(db) = RigDb::create() else { return };
    let Some(log) = server_log() else { return };
    let Some(ca) = crate::util::rig::server("KCACHE_TEST_PG_CA") else { return };
    db.migrate();
    let userinfo = format!("{}:{}", db.server.user, db.server.password);
    let on_localhost = |query: &str| format!("postgresql://{userinfo}@localhost:{}/{}{query}", db.server.port, db.name);
    // Connects to 127.0.0.1 (hostaddr) and checks the certificate against another name.
    let other_name = |mode: &str| {
        format!(
            "postgresql://{userinfo}@not-the-name.example:{}/{}?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}",
            db.server.port, db.name
        )
    };
    let ssl_of = |url: &str| -> (Out, Vec<String>) {
        let mut out = None;
        let lines = connections_of(&log, &db.name, || out = Some(pg_env(url, "10").run(&["ping"])));
        (out.expect("ran"), lines)
    };
    let cases = [
        ("sslmode=require on 127.0.0.1", db.server.url(&userinfo, &db.name, "?sslmode=require"), true),
        ("default (prefer)", db.tcp_url(), true),
        ("sslmode=disable", db.server.url(&userinfo, &db.name, "?sslmode=disable"), false),
        (
            "verify-ca with the CA",
            db.server.url(&userinfo, &db.name, &format!("?sslmode=verify-ca&sslrootcert={ca}")),
            true,
        ),
        ("verify-full with the CA on localhost", on_localhost(&format!("?sslmode=verify-full&sslrootcert={ca}")), true),
        (
            "verify-full on 127.0.0.1 (an IP address SAN)",
            db.server.url(&userinfo, &db.name, &format!("?sslmode=verify-full&sslrootcert={ca}")),
            true,
        ),
        (
            "SCRAM-SHA-256-PLUS: channel binding with the server certificate's hash",
            db.server.url(&userinfo, &db.name, "?sslmode=require&channel_binding=require"),
            true,
        ),
        ("verify-ca under a name the certificate does not hold", other_name("verify-ca"), true),
    ];
    for (what, url, tls) in &cases {
        let (out, lines) = ssl_of(url);
        out.ok().stdout_is("ok\n");
        assert_eq!(lines.len(), 1, "{what}: {lines:#?}");
        assert_eq!(lines[0].contains("SSL enabled"), *tls, "{what}: {}", lines[0]);
    }
    // PGSSLMODE, when the URL says nothing.
    let mut out = None;
    let lines = connections_of(&log, &db.name, || {
        out = Some(pg_env(&db.tcp_url(), "10").var("PGSSLMODE", "disable").run(&["ping"]));
    });
    out.expect("ran").ok();
    assert!(lines.len() == 1 && !lines[0].contains("SSL enabled"), "PGSSLMODE=disable: {lines:#?}");

    // verify-full checks the name: refused before anything is sent over the connection.
    let (out, lines) = ssl_of(&other_name("verify-full"));
    out.code(4).one_error_line().stderr_has("not valid for name").stderr_has("kcache: hint:");
    no_secret(&out, &db.server.password);
    assert!(lines.is_empty(), "{lines:#?}");
    // verify-full with the system's roots: they do not know our CA.
    for url in [on_localhost("?sslmode=verify-full&sslrootcert=system"), on_localhost("?sslrootcert=system")] {
        let (out, lines) = ssl_of(&url);
        out.code(4).one_error_line().stderr_has("invalid peer certificate").stderr_has("kcache: hint:");
        no_secret(&out, &db.server.password);
        assert!(lines.is_empty(), "{lines:#?}");
    }
    // verify-ca/verify-full without sslrootcert: libpq's ~/.postgresql/root.crt, which must exist.
    for mode in ["verify-ca", "verify-full"] {
        let url = on_localhost(&format!("?sslmode={mode}"));
        let (out, lines) = ssl_of(&url);
        out.code(2).one_error_line();
        assert!(out.stderr.contains("root.crt"), "{}", out.stderr);
        assert!(lines.is_empty(), "nothing is sent: {lines:#?}");
        let env = pg_env(&url, "10");
        let pem = std::fs::read_to_string(&ca).expect("CA file");
        env.write(".postgresql/root.crt", &pem);
        env.run(&["ping"]).ok().stdout_is("ok\n");
    }
    // sslmode=require with a root certificate verifies the chain, as libpq does.
    let env = pg_env(&on_localhost("?sslmode=require"), "10");
    env.write(".postgresql/root.crt", &std::fs::read_to_string(&ca).expect("CA file"));
    env.run(&["ping"]).ok().stdout_is("ok\n");
    // ... so a root certificate of another CA makes it fail (any CA of the system's bundle).
    if let Some(other) = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
        .ok()
        .and_then(|bundle| bundle.split_inclusive("-----END CERTIFICATE-----\n").next().map(str::to_string))
    {
        let env = pg_env(&on_localhost("?sslmode=require"), "10");
        env.write(".postgresql/root.crt", &other);
        env.run(&["ping"]).code(4).stderr_has("invalid peer certificate").stderr_has("sslrootcert");
    }
}

// ---- pool ------------------------------------------------------------------------------------

#[test]
fn max_backlog_fails_the_next_waiter_at_once() {
    use kcache::settings::Raw;
    let Some(db) = RigDb::create() else { return };
    let settings = crate::util::settings(&[
        ("backend", Raw::Str("postgresql".into())),
        ("url", Raw::Str(db.url())),
        ("pool_size", Raw::Int(1)),
        ("max_overflow", Raw::Int(0)),
        ("max_backlog", Raw::Int(1)),
        ("pool_timeout", Raw::Int(10)),
    ]);
    let backend = kcache::backend::postgres::Postgres::new(&settings, &|_| None, 3).expect("backend");
    let pool = std::sync::Arc::clone(backend.pool());

    let held = pool.get().expect("first connection");
    std::thread::scope(|s| {
        let (ready, waiting) = std::sync::mpsc::channel();
        let pool_ref = &pool;
        let waiter = s.spawn(move || {
            ready.send(()).expect("signal");
            let start = Instant::now();
            let c = pool_ref.get();
            (c.map(drop), start.elapsed())
        });
        // Let the second caller start waiting.
        waiting.recv().expect("waiter started");
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        let third = pool.get();
        let elapsed = start.elapsed();
        let Err(e) = third else { panic!("a third caller got a connection from a pool of one") };
        assert_eq!(e.kind().status(), 3, "{e}");
        assert!(elapsed < Duration::from_millis(500), "the third caller waited {elapsed:?}");
        let msg = e.to_string();
        assert!(msg.contains("exhausted") && msg.contains("max_backlog"), "{msg}");
        drop(held);
        let (second, waited) = waiter.join().expect("waiter");
        second.expect("the waiter gets the connection once it is given back");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    });
    assert_eq!(pool.open_connections(), 1);
}

#[test]
fn a_one_shot_command_opens_exactly_one_connection() {
    let Some(mut db) = RigDb::create() else { return };
    let Some(log) = server_log() else { return };
    db.sql(); // our own session is opened before counting
    // Over TCP with the password and TLS (sslmode prefer), as a deployment connects.
    let env = pg_env(&db.tcp_url(), "10");
    let before = authorized(&log, &db.name).len();
    let runs: &[(&[&str], i32)] = &[
        (&["migrate"], 0),
        (&["migrate", "--dry-run"], 0),
        (&["set", "k", "v", "60"], 0),
        (&["get", "k"], 0),
        (&["ttl", "k"], 0),
        (&["expire", "k", "120"], 0),
        (&["delete", "k"], 0),
        (&["get", "k"], 1),
        (&["ping"], 0),
        (&["purge"], 0),
        (&["--prefix", "p:", "flush"], 0),
        (&["flush"], 0),
    ];
    for (args, status) in runs {
        let lines = connections_of(&log, &db.name, || {
            env.run(args).code(*status);
        });
        assert_eq!(lines.len(), 1, "kcache {args:?} opened {} connections: {lines:#?}", lines.len());
    }
    settle();
    assert_eq!(authorized(&log, &db.name).len() - before, runs.len(), "no connection is opened in the background");
}

// ---- Kinto interop ---------------------------------------------------------------------------

#[test]
fn reads_the_rows_kinto_wrote() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let recorded = kinto_recording();
    let prefix = recorded["cache_prefix"].as_str().expect("prefix").to_string();
    let rows = recorded["rows"].as_array().expect("rows");
    assert!(rows.len() >= 5);
    let env = db.env();
    for row in rows {
        let (key, full_key, value) = (
            row["key"].as_str().expect("key"),
            row["full_key"].as_str().expect("full_key"),
            row["value"].as_str().expect("value"),
        );
        assert_eq!(format!("{prefix}{key}"), full_key);
        let secs: f64 = row["ttl_minus_now_epoch_seconds"].as_str().expect("secs").parse().expect("number");
        // As Kinto wrote it: its value text, and now() + the duration in the session's zone.
        db.sql()
            .execute(
                "INSERT INTO cache VALUES ($1, $2, localtimestamp + make_interval(secs => $3))",
                &[&full_key, &value, &secs],
            )
            .expect("insert");
        let expected = match &row["value_json"] {
            serde_json::Value::String(s) => s.clone(),
            other => serde_json::to_string(other).expect("json"),
        };
        if secs < 1.0 {
            // The 0.25 s row: readable now at most, gone soon.
            let out = env.run(&["--prefix", &prefix, "ttl", "--ms", key]);
            if out.status == 0 {
                let ms: f64 = out.stdout.trim().parse().expect("ms");
                assert!(ms <= secs * 1000.0, "{key}: {ms}");
            } else {
                out.code(1);
            }
            std::thread::sleep(Duration::from_secs_f64(secs + 0.1));
            env.run(&["--prefix", &prefix, "get", key]).code(1);
            continue;
        }
        env.run(&["--prefix", &prefix, "get", key]).ok().stdout_is(&format!("{expected}\n"));
        assert_left(&env.run(&["--prefix", &prefix, "ttl", key]), secs.ceil() as i64);
    }
    // A prefixed flush only takes Kinto's own keys.
    env.run(&["set", "mine", "v", "60"]).ok();
    env.run(&["--prefix", &prefix, "flush"]).ok();
    assert_eq!(db.keys(), vec!["mine".to_string()]);
}

#[test]
fn writes_what_kinto_writes() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("data/kinto/values.json")).expect("values.json");
    assert!(cases.len() > 40);
    let env = db.env();
    std::thread::scope(|s| {
        for chunk in cases.chunks(cases.len().div_ceil(8)) {
            let env = &env;
            s.spawn(move || {
                for case in chunk {
                    let name = case["name"].as_str().expect("name");
                    let doc = serde_json::to_string(&case["value_json"]).expect("json");
                    env.run_stdin(&["--prefix", "kinto:", "set", "--json", name, "-", "60"], Some(doc.as_bytes())).ok();
                }
            });
        }
    });
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let expected = case["encoded"].as_str().expect("encoded");
        assert_eq!(db.stored(&format!("kinto:{name}")).as_deref(), Some(expected), "{name}");
    }
    // The ttl column is what sec2ttl() gives, as Kinto computes it.
    let (low, high): (f64, f64) = {
        let row = db
            .sql()
            .query_one(
                "SELECT min(EXTRACT(EPOCH FROM ttl - sec2ttl(60)))::float8, max(EXTRACT(EPOCH FROM ttl - sec2ttl(60)))::float8 \
                 FROM cache",
                &[],
            )
            .expect("ttl");
        (row.get(0), row.get(1))
    };
    assert!(low > -30.0 && high <= 0.0, "ttl column vs sec2ttl(60): {low}..{high}");
    for (ttl, secs) in [("61.5", 61.5), ("3600", 3600.0), ("40d", 3_456_000.0)] {
        env.run(&["set", "t", "v", ttl]).ok();
        let diff: f64 = db
            .sql()
            .query_one("SELECT EXTRACT(EPOCH FROM ttl - sec2ttl($1))::float8 FROM cache WHERE key = 't'", &[&secs])
            .expect("ttl")
            .get(0);
        assert!((-(SLACK as f64)..=0.0).contains(&diff), "ttl {ttl}: {diff}");
    }
}

// ---- flush -----------------------------------------------------------------------------------

#[test]
fn a_prefixed_flush_takes_the_prefix_literally() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let prefix = "a%_\\";
    let doomed = ["a%_\\", "a%_\\k", "a%_\\%", "a%_\\_x"];
    let kept = ["aZ_\\k", "a%Z\\k", "a%_Zk", "a%%_\\k", "A%_\\k", "a%_", "ba%_\\k", "k"];
    for key in doomed.iter().chain(kept.iter()) {
        db.sql().execute("INSERT INTO cache VALUES ($1, '\"x\"', NULL) ON CONFLICT DO NOTHING", &[key]).expect("row");
    }
    let env = db.env();
    env.run(&["--prefix", prefix, "set", "new", "v", "60"]).ok();
    env.run(&["--prefix", prefix, "flush"]).ok().stdout_is("");
    let mut expected: Vec<String> = kept.iter().map(|k| k.to_string()).collect();
    expected.sort();
    expected.dedup();
    assert_eq!(db.keys(), expected);

    // Without a prefix, or with --all: the whole table, which stays.
    env.run(&["--prefix", "k", "flush", "--all"]).ok();
    assert_eq!(db.count("true"), 0);
    env.run(&["set", "x", "v", "60"]).ok();
    env.run(&["flush"]).ok();
    assert_eq!(db.count("true"), 0);
    assert_eq!(db.objects("public"), (1, 1, 1));
    env.run(&["set", "x", "v", "60"]).ok();
    env.run(&["get", "x"]).ok().stdout_is("v\n");
}

// ---- errors ----------------------------------------------------------------------------------

#[test]
fn a_refused_port_fails_at_once_with_status_3() {
    let Some(server) = RigPostgres::get() else { return };
    let port = crate::util::servers::free_port();
    let secret = format!("NeverPrinted{}", unique("pw"));
    let url = format!("postgresql://postgres:{secret}@127.0.0.1:{port}/postgres");
    for args in [&["get", "k"][..], &["migrate"], &["ping"], &["-v", "set", "k", "v", "60"]] {
        let start = Instant::now();
        let out = pg_env(&url, "10").var("KINTO_CACHE_POOL_TIMEOUT", "1").run(args);
        let took = start.elapsed();
        out.code(3);
        if !args.contains(&"-v") {
            out.one_error_line();
        }
        assert!(took < Duration::from_secs(2), "kcache {args:?} took {took:?}");
        assert!(out.stderr.contains(&port.to_string()), "the message says where:\n{}", out.stderr);
        no_secret(&out, &secret);
        no_secret(&out, &server.password);
    }
}

#[test]
fn a_silent_server_is_bounded_by_pool_timeout() {
    if RigPostgres::get().is_none() {
        return;
    }
    // Accepts connections and never answers.
    let address = crate::util::servers::fake_server(None);
    let url = format!("postgresql://postgres:pw@{address}/postgres");
    let start = Instant::now();
    let out = pg_env(&url, "10").var("KINTO_CACHE_POOL_TIMEOUT", "1").run(&["get", "k"]);
    let took = start.elapsed();
    out.code(3).one_error_line();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn a_missing_schema_is_status_4_with_a_hint() {
    let Some(mut db) = RigDb::create() else { return };
    let env = db.env();
    for args in [&["get", "k"][..], &["set", "k", "v", "60"], &["ttl", "k"], &["purge"], &["ping"]] {
        let out = env.run(args);
        out.code(4).one_error_line().stderr_has("kcache: hint: run 'kcache migrate' first");
        assert_eq!(out.stderr.lines().count(), 2, "{}", out.stderr);
        no_secret(&out, &db.server.password);
    }
    db.migrate();
    env.run(&["set", "k", "v", "60"]).ok();
    db.sql().batch_execute("DROP FUNCTION sec2ttl(FLOAT)").expect("drop function");
    let out = env.run(&["set", "k", "v", "60"]);
    out.code(4).one_error_line().stderr_has("kcache: hint: run 'kcache migrate' first");
    env.run(&["migrate"]).ok();
    db.sql().batch_execute("DROP TABLE cache").expect("drop table");
    env.run(&["get", "k"]).code(4).stderr_has("kcache: hint: run 'kcache migrate' first");
}

#[test]
fn keys_over_256_characters_are_refused_before_connecting() {
    let Some(mut db) = RigDb::create() else { return };
    let Some(log) = server_log() else { return };
    db.migrate();
    db.sql();
    let env = db.env();
    let long = "k".repeat(255);
    let lines = connections_of(&log, &db.name, || {
        for args in
            [&["--prefix", "pp", "get", long.as_str()][..], &["--prefix", "pp", "set", long.as_str(), "v", "60"]]
        {
            let out = env.run(args);
            out.code(2).one_error_line();
            assert!(out.stderr.contains("256"), "{}", out.stderr);
        }
        env.run(&["set", &"k".repeat(257), "v", "60"]).code(2);
        settle();
    });
    assert!(lines.is_empty(), "a refused key opened a connection: {lines:#?}");
    // 256 characters, prefix included, fit; characters, not bytes.
    env.run(&["--prefix", "p", "set", &long, "v", "60"]).ok();
    env.run(&["--prefix", "p", "get", &long]).ok().stdout_is("v\n");
    let wide = "é".repeat(256);
    env.run(&["set", &wide, "wide", "60"]).ok();
    env.run(&["get", &wide]).ok().stdout_is("wide\n");
    env.run(&["get", &format!("{wide}é")]).code(2);
}

// ---- configuration ---------------------------------------------------------------------------

#[test]
fn url_forms_and_query_parameters() {
    let Some(db) = RigDb::create() else { return };
    let Some(log) = server_log() else { return };
    let Some(socket_dir) = crate::util::rig::server("KCACHE_TEST_PG_SOCKET_DIR") else { return };
    db.migrate();
    let s = &db.server;
    let (name, userinfo) = (&db.name, format!("{}:{}", s.user, s.password));
    let urls = [
        format!("postgres://{userinfo}@{}:{}/{name}", s.host, s.port),
        format!("postgresql+psycopg2://{userinfo}@{}:{}/{name}", s.host, s.port),
        format!("postgresql:///{name}?host={socket_dir}&port={}&user={}", s.port, s.user),
    ];
    for url in &urls {
        pg_env(url, "10").run(&["set", "k", url.as_str(), "60"]).ok();
        pg_env(url, "10").run(&["get", "k"]).ok().stdout_is(&format!("{url}\n"));
    }
    // Query parameters reach the server.
    let lines = connections_of(&log, name, || {
        pg_env(&s.url(&userinfo, name, "?application_name=kcache-probe&connect_timeout=5"), "10").run(&["ping"]).ok();
    });
    assert!(lines.len() == 1 && lines[0].contains("application_name=kcache-probe"), "{lines:#?}");
}

#[test]
fn libpq_variables_fill_what_the_url_leaves_out() {
    let Some(db) = RigDb::create() else { return };
    let Some(socket_dir) = crate::util::rig::server("KCACHE_TEST_PG_SOCKET_DIR") else { return };
    db.migrate();
    let s = &db.server;
    let port = s.port.to_string();
    let env = Env::new()
        .var("KINTO_CACHE_BACKEND", "postgresql")
        .var("KINTO_CACHE_URL", "postgresql://")
        .var("PGHOST", &s.host)
        .var("PGPORT", &port)
        .var("PGUSER", &s.user)
        .var("PGPASSWORD", &s.password)
        .var("PGDATABASE", &db.name);
    env.run(&["set", "k", "v", "60"]).ok();
    let out = env.run(&["-v", "get", "k"]);
    out.ok().stdout_is("v\n");
    no_secret(&out, &s.password);
    // No host: PGHOST's socket folder.
    let env = Env::new()
        .var("KINTO_CACHE_BACKEND", "postgresql")
        .var("KINTO_CACHE_URL", &format!("postgresql:///{}", db.name))
        .var("PGHOST", &socket_dir)
        .var("PGPORT", &port)
        .var("PGUSER", &s.user);
    env.run(&["get", "k"]).ok().stdout_is("v\n");
}

#[test]
fn kinto_ini_with_the_module_path_and_pool_settings() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let s = db.server.clone();
    let env = Env::new();
    let ini = format!(
        "[app:main]\nuse = egg:kinto\nkinto.cache_backend = kinto.core.cache.postgresql\n\
         kinto.cache_url = postgresql+psycopg2://{}:{}@{}:{}/{}\nkinto.cache_prefix = kinto:\n\
         kinto.cache_pool_size = 5\nkinto.cache_max_overflow = 2\nkinto.cache_max_backlog = -1\n\
         kinto.cache_pool_recycle = -1\nkinto.cache_pool_timeout = 10\n\
         kinto.cache_poolclass = kinto.core.storage.postgresql.pool.QueuePoolWithMaxBacklog\n",
        s.user, s.password, s.host, s.port, db.name
    );
    let path = env.write("kinto.ini", &ini).display().to_string();
    env.run(&["-c", &path, "set", "from-ini", "v", "60"]).ok();
    env.run(&["-c", &path, "get", "from-ini"]).ok().stdout_is("v\n");
    assert_eq!(db.stored("kinto:from-ini").as_deref(), Some("\"v\""));
    let out = env.run(&["-v", "-c", &path, "ttl", "from-ini"]);
    out.ok();
    no_secret(&out, &s.password);
}

// ---- keys and flush --match ------------------------------------------------------------------

#[test]
fn keys_lists_the_rows_kinto_wrote_in_every_output_form() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let recorded = kinto_recording();
    let prefix = recorded["cache_prefix"].as_str().expect("prefix").to_string();
    let mut live = vec!["forever".to_string()];
    for row in recorded["rows"].as_array().expect("rows") {
        let secs: f64 = row["ttl_minus_now_epoch_seconds"].as_str().expect("secs").parse().expect("number");
        if secs < 5.0 {
            continue; // would expire during the test
        }
        let (full_key, value) = (row["full_key"].as_str().expect("full_key"), row["value"].as_str().expect("value"));
        db.sql()
            .execute(
                "INSERT INTO cache VALUES ($1, $2, localtimestamp + make_interval(secs => $3))",
                &[&full_key, &value, &secs],
            )
            .expect("insert");
        live.push(row["key"].as_str().expect("key").to_string());
    }
    live.sort();
    assert!(live.len() >= 4, "{live:?}");
    db.sql()
        .batch_execute(&format!(
            "INSERT INTO cache VALUES ('{prefix}forever', '\"x\"', NULL), \
             ('{prefix}expired', '\"x\"', localtimestamp - interval '1 second'), \
             ('other:ttl-61s', '\"x\"', localtimestamp + interval '1 hour')"
        ))
        .expect("rows");
    let env = db.env();
    let keys = |args: &[&str]| env.run(&[&["--prefix", prefix.as_str(), "keys"][..], args].concat());

    // Every live key of the prefix, prefix stripped, once; never the expired one or another prefix's.
    assert_eq!(sorted_lines(keys(&[]).ok()), live);
    // --ttl: the seconds left as `ttl` prints them, -1 for no expiry.
    let out = keys(&["--ttl"]);
    let mut seen = Vec::new();
    for line in out.ok().stdout.lines() {
        let (key, secs) = line.split_once('\t').unwrap_or_else(|| panic!("no tab in {line:?}"));
        let secs: i64 = secs.parse().expect("seconds");
        let want = match key {
            "forever" => -1,
            "ttl-61s" => 61,
            "ttl-3600s" | "heartbeat-like" => 3600,
            "ttl-40d" => 3_456_000,
            other => panic!("unexpected key {other}"),
        };
        assert!(secs <= want && secs > want - SLACK, "{key}: {secs}, want {want}");
        seen.push(key.to_string());
    }
    seen.sort();
    assert_eq!(seen, live);
    // --json: one object per line, ttl in seconds (ms precision) or null.
    let out = keys(&["--json"]);
    let mut seen = Vec::new();
    for line in out.ok().stdout.lines() {
        let doc: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let key = doc["key"].as_str().expect("key").to_string();
        match key.as_str() {
            "forever" => assert!(doc["ttl"].is_null(), "{line}"),
            _ => assert!(doc["ttl"].as_f64().is_some_and(|t| t > 50.0), "{line}"),
        }
        seen.push(key);
    }
    seen.sort();
    assert_eq!(seen, live);
    // -0: NUL-terminated, no newline.
    let out = keys(&["-0"]);
    assert!(out.ok().stdout.ends_with('\0') && !out.stdout.contains('\n'), "{:?}", out.stdout);
    let mut seen: Vec<String> = out.stdout.trim_end_matches('\0').split('\0').map(str::to_string).collect();
    seen.sort();
    assert_eq!(seen, live);
    // --limit and a pattern.
    let out = keys(&["--limit", "2"]);
    assert_eq!(out.ok().stdout.lines().filter(|k| live.contains(&k.to_string())).count(), 2, "{}", out.stdout);
    assert_eq!(sorted_lines(keys(&["ttl-*s"]).ok()), sorted(&["ttl-3600s", "ttl-61s"]));
    keys(&["nothing*"]).code(1).stdout_is("");
    keys(&["expired"]).code(1).stdout_is("");
}

#[test]
fn flush_match_takes_hostile_keys_literally_and_pages_through_thousands() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    // A prefix LIKE would widen, and decoys its unescaped pattern would match.
    let prefix = "a%_\\";
    let hostile = ["100%", "100x", "a_b", "axb", "a\\b", "a*b", "we[i]rd", "it's", "é-1", "\"q\"", "user'1"];
    let decoys = ["aZ_\\user:1", "a%Z\\user:1", "a%_Zuser:1", "A%_\\user:1", "user:1"];
    for key in hostile.iter().map(|k| format!("{prefix}{k}")).chain(decoys.iter().map(|k| k.to_string())) {
        db.sql().execute("INSERT INTO cache VALUES ($1, '\"x\"', NULL)", &[&key]).expect("row");
    }
    db.sql()
        .execute(
            "INSERT INTO cache SELECT $1 || 'user:' || i, '\"v\"', sec2ttl(600) FROM generate_series(0, 2499) i",
            &[&prefix],
        )
        .expect("rows");
    let total = db.count("true");
    let env = db.env();
    let run = |args: &[&str]| env.run(&[&["--prefix", prefix][..], args].concat());

    for (pattern, want) in [
        ("100%", vec!["100%"]),
        ("a_b", vec!["a_b"]),
        ("a?b", vec!["a_b", "axb", "a\\b", "a*b"]),
        ("a\\\\b", vec!["a\\b"]),
        ("a\\*b", vec!["a*b"]),
        ("we\\[i\\]rd", vec!["we[i]rd"]),
        ("it's", vec!["it's"]),
        ("user'*", vec!["user'1"]),
        ("é*", vec!["é-1"]),
        ("\"*", vec!["\"q\""]),
    ] {
        assert_eq!(sorted_lines(run(&["keys", pattern]).ok()), sorted(&want), "pattern {pattern}");
    }
    assert_eq!(run(&["keys", "user:*"]).ok().stdout.lines().count(), 2500, "three pages");

    // user:1, user:10-19, user:100-199, user:1000-1999: 1,111 keys over two pages.
    let out = run(&["flush", "--match", "user:1*", "--dry-run"]);
    let listed = sorted_lines(out.ok());
    assert_eq!(listed.len(), 1111);
    assert!(listed.iter().all(|k| k.starts_with("user:1")), "{listed:?}");
    assert_eq!(db.count("true"), total, "a dry run removes nothing");
    run(&["-v", "flush", "--match", "user:1*"]).ok().stdout_is("").stderr_has("removed 1111 entries");
    assert_eq!(db.count("true"), total - 1111);
    assert_eq!(run(&["keys", "user:1*"]).code(1).stdout, "");
    assert_eq!(run(&["keys", "user:*"]).ok().stdout.lines().count(), 2500 - 1111);
    run(&["-v", "flush", "--match", "a\\*b"]).ok().stderr_has("removed 1 entries");
    run(&["-v", "flush", "--match", "a_b"]).ok().stderr_has("removed 1 entries");
    for key in decoys {
        assert_eq!(db.count(&format!("key = '{}'", key.replace('\'', "''"))), 1, "{key} was touched");
    }
    assert_eq!(db.count(&format!("key = '{prefix}axb'")), 1, "_ is literal");
    assert_eq!(db.count(&format!("key = '{prefix}100%'")), 1);
}

#[test]
fn a_malformed_pattern_is_status_2_before_anything_is_sent() {
    let Some(_server) = RigPostgres::get() else { return };
    // Nothing listens there: a pattern that reached the connect would be status 3.
    let url = format!("postgresql://postgres@127.0.0.1:{}/postgres", crate::util::servers::free_port());
    let env = pg_env(&url, "2");
    for args in [&["keys", "[abc"][..], &["keys", "a\\"], &["flush", "--match", "[z-a]"], &["flush", "--match", "x\\"]]
    {
        env.run(args).code(2).one_error_line().stderr_has("pattern");
    }
    env.run(&["keys", "a*"]).code(3);
}

#[test]
fn keys_page_correctly_in_a_linguistic_collation() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let icu = db.sql().query("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'", &[]).expect("collations");
    if icu.is_empty() {
        eprintln!("skipped: this PostgreSQL has no ICU collation");
        return;
    }
    // ICU sorts case at the third level: k:a0000 < k:A0000 < k:a0001 ... the keys of prefix
    // `k:A` are not contiguous in ORDER BY key, and span several pages.
    db.sql()
        .batch_execute(
            "ALTER TABLE cache ALTER COLUMN key TYPE VARCHAR(256) COLLATE \"und-x-icu\"; \
             INSERT INTO cache SELECT 'k:' || c || lpad(i::text, 4, '0'), '\"v\"', NULL \
             FROM generate_series(0, 1499) i, unnest(ARRAY['a', 'A']) c",
        )
        .expect("ICU column");
    let first: Vec<String> = db
        .sql()
        .query("SELECT key FROM cache ORDER BY key LIMIT 3", &[])
        .expect("order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(first, ["k:a0000", "k:A0000", "k:a0001"], "the collation interleaves the prefixes");
    let env = db.env();
    for pattern in ["A*", "a*"] {
        let lines = sorted_lines(env.run(&["--prefix", "k:", "keys", pattern]).ok());
        let mut unique = lines.clone();
        unique.dedup();
        assert_eq!((lines.len(), unique.len()), (1500, 1500), "{pattern}");
        assert!(lines.iter().all(|k| k.starts_with(&pattern[..1])), "{pattern}");
    }
    env.run(&["--prefix", "k:", "-v", "flush", "--match", "A*"]).ok().stderr_has("removed 1500 entries");
    assert_eq!(db.count("key LIKE 'k:A%'"), 0);
    assert_eq!(db.count("key LIKE 'k:a%'"), 1500);
}

/// The rig's streaming standby of its PostgreSQL (`KCACHE_TEST_PG_STANDBY_PORT`), on the same
/// host, with the same superuser and password.
fn standby_port() -> Option<u16> {
    crate::util::rig::server("KCACHE_TEST_PG_STANDBY_PORT").map(|p| p.parse().expect("a port"))
}

/// Waits until the standby has replayed the creation of `db` and its schema (`migrate`).
fn replicated(server: &RigPostgres, port: u16, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut config = postgres::Config::new();
        config.host(&server.host).port(port).user(&server.user).password(&server.password).dbname(db);
        let seen = config
            .connect(postgres::NoTls)
            .ok()
            .and_then(|mut c| c.query_one("SELECT to_regclass('cache') IS NOT NULL", &[]).ok())
            .is_some_and(|r| r.get::<_, bool>(0));
        if seen {
            return;
        }
        if Instant::now() >= deadline {
            let log = std::env::var("KCACHE_TEST_PG_STANDBY_LOG").ok().and_then(|p| std::fs::read_to_string(p).ok());
            let tail: Vec<&str> = log.as_deref().unwrap_or("").lines().rev().take(30).collect();
            panic!(
                "the standby did not replay database {db} within 60 s; its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// libpq's six `target_session_attrs` against the rig's primary and its standby, in both host
/// orders: a write (`set`) succeeds where the value lands on the primary, and is status 4 with
/// the `target_session_attrs=read-write` hint where it lands on the standby; a value no host
/// matches is status 3 naming the hosts tried.
#[test]
fn target_session_attrs_choose_the_primary_or_the_standby_in_either_order() {
    let Some(db) = RigDb::create() else { return };
    let Some(standby) = standby_port() else { return };
    db.migrate();
    let s = &db.server;
    replicated(s, standby, &db.name);
    let primary = format!("{}:{}", s.host, s.port);
    let replica = format!("{}:{standby}", s.host);
    let url = |hosts: &str, attrs: &str| {
        format!("postgresql://{}@{hosts}/{}?target_session_attrs={attrs}", s.superuser(), db.name)
    };
    // (value, lands on the primary with primary first, ... with the standby first)
    let cases = [
        ("any", true, false),
        ("read-write", true, true),
        ("read-only", false, false),
        ("primary", true, true),
        ("standby", false, false),
        ("prefer-standby", false, false),
    ];
    for (attrs, first_order, second_order) in cases {
        for (hosts, on_primary) in
            [(format!("{primary},{replica}"), first_order), (format!("{replica},{primary}"), second_order)]
        {
            let env = pg_env(&url(&hosts, attrs), "5");
            let out = env.run(&["set", "k", "v", "60"]);
            if on_primary {
                out.code(0);
            } else {
                out.code(4).stderr_has("target_session_attrs=read-write");
            }
            // Reads work wherever it lands.
            env.run(&["get", "nothing-here"]).code(1);
        }
    }
    // Only the primary in the list.
    let only_primary = |attrs| pg_env(&url(&primary, attrs), "5");
    only_primary("standby").run(&["get", "k"]).code(3).stderr_has("no server matched target_session_attrs=standby");
    only_primary("read-only").run(&["get", "k"]).code(3).stderr_has(&primary);
    only_primary("prefer-standby").run(&["set", "k", "v", "60"]).code(0);
    // Only the standby: no primary to be found.
    let out = pg_env(&url(&replica, "primary"), "5").run(&["get", "k"]);
    out.code(3).stderr_has("a standby");
    // load_balance_hosts=random still picks a matching host, whatever the order drawn.
    for _ in 0..6 {
        let env =
            pg_env(&format!("{}&load_balance_hosts=random", url(&format!("{replica},{primary}"), "primary")), "5");
        env.run(&["set", "k", "v", "60"]).code(0);
    }
}

/// A failover: with the primary stopped and its standby promoted, the same two-host URL with
/// `target_session_attrs=read-write` writes again, on the new primary, and reads what was
/// written before the switch (servers of the test's own: no other test sees the change).
#[test]
fn after_a_failover_the_same_url_finds_the_promoted_standby() {
    let Some(mut primary) = crate::util::servers::OwnPostgres::start() else { return };
    let standby = crate::util::servers::OwnPostgres::standby_of(&primary);
    let url = format!(
        "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let env = pg_env(&url, "3");
    env.run(&["migrate"]).ok();
    env.run(&["set", "before", "written on the first primary", "1h"]).ok();
    // The standby has replayed it before the primary goes.
    let direct = pg_env(&format!("postgresql://postgres@127.0.0.1:{}/postgres", standby.port), "3");
    let deadline = Instant::now() + Duration::from_secs(20);
    while direct.run(&["get", "before"]).status != 0 {
        assert!(Instant::now() < deadline, "the standby did not replay the write");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Before the switch, the standby refuses writes with the hint.
    direct.run(&["set", "x", "y", "60"]).code(4).stderr_has("target_session_attrs=read-write");
    primary.crash();
    // No primary yet: status 3, naming what was tried.
    env.run(&["set", "during", "v", "60"]).code(3).stderr_has("no server matched target_session_attrs=read-write");
    standby.promote();
    env.run(&["set", "after", "written on the new primary", "1h"]).ok();
    env.run(&["get", "before"]).ok().stdout_is("written on the first primary\n");
    env.run(&["get", "after"]).ok().stdout_is("written on the new primary\n");
}
