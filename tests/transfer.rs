//! `dump`, `load`, `copy --to` and `diff --to` through the binary, for round trips and data
//! fidelity: every ordered pair of backends (values byte for byte, expiry to the millisecond, to
//! the second where memcached is at either end, "never expires" kept), dumps of entries written
//! the way Kinto writes them, `load --no-overwrite` and the counts of `-v`, patterns on both
//! sides of a copy, and 20,000 entries copied and compared. Also: a target that refuses an entry
//! midway ends the copy or load (status 4, no hang), and Redis keeps absolute expiry times over
//! a slow link.
//!
//! Every storage is described by a TOML file (mode 0600) of the test's own, used both as the
//! source's `KCACHE_CONFIG` and as the target's `--to`. Each test works under prefixes of its
//! own (PostgreSQL: in a database of its own; SQLite: in a file of its own), so tests running at
//! once never see each other's entries. Bad lines, other faults, the kinds of differences and
//! progress bars are in `transfer_faults.rs`.

use crate::util::rig::RigDb;
use crate::util::servers::{MemcachedClient, OwnMemcached, OwnRedis, redis_client, replies, run_within, sq, status};
use crate::util::{Env, Out, sorted, sorted_lines, string, unique};
use kcache::backend::memcached::hosts;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// A fresh prefix for one side of one step.
fn prefix() -> String {
    format!("{}:", unique("tr"))
}

const HOUR: f64 = 3600.0;
const MONTH: f64 = 30.0 * 86_400.0;

/// How far an expiry may move through Redis: kcache gives and reads Redis absolute times
/// (`SET ... PXAT`, `PEXPIRETIME`), so no more than elsewhere. (With times left, `PX` and
/// `PTTL`, every load and dump moved it by the link's latency: 12 ms seen on a busy machine
/// over loopback, 100 ms through the slow proxy of
/// `redis_{dump,load}_over_a_slow_link_keeps_the_exact_expiry`.)
const REDIS_SLACK: f64 = 0.010;

// ---- storages --------------------------------------------------------------------------------

/// The storages round trips run between: memcached with one server, and with two (keys spread as
/// python-memcached spreads them).
const KINDS: [&str; 7] =
    ["sqlite", "postgresql", "memcached1", "memcached2", "redis", "redis_cluster", "redis_sentinel"];

/// One storage of a test: a SQLite file, a PostgreSQL database (on the rig's server), memcached
/// servers and a Redis server of its own, each reached through a config file per prefix.
///
/// Servers of the test's own, not the rig's memcached and Redis: those are shared with tests and
/// benchmarks that load hundreds of thousands of entries, so the rig's memcached (64 MB) evicts
/// a test's entries while it runs (a round trip finds entries missing), and a dump of the rig's
/// Redis walks a million keys of others (SCAN visits the whole keyspace) for each of a test's.
struct Store {
    kind: &'static str,
    /// The lines of the `[cache]` table but `prefix`.
    table: String,
    /// The config files (and the SQLite file).
    dir: tempfile::TempDir,
    /// memcached: the hosts, in the config's order.
    hosts: Vec<String>,
    _db: Option<RigDb>,
    _servers: Vec<OwnMemcached>,
    redis: Option<OwnRedis>,
}

/// `text` as a TOML basic string.
fn toml_str(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Store {
    /// `None`: PostgreSQL, memcached or Redis is missing (skipped with a `skipped:` line, or
    /// failed under CI, by `rig::server` and `servers::require`).
    fn open(kind: &'static str) -> Option<Store> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut hosts = Vec::new();
        let mut db = None;
        let mut servers = Vec::new();
        let mut redis = None;
        let table = match kind {
            "sqlite" => {
                let path = dir.path().join("cache.sqlite3");
                format!("backend = \"sqlite\"\npath = {}\n", toml_str(&path.display().to_string()))
            }
            "postgresql" => {
                let rig = RigDb::create()?;
                rig.migrate();
                let url = rig.url();
                db = Some(rig);
                format!("backend = \"postgresql\"\nurl = {}\n", toml_str(&url))
            }
            "memcached1" | "memcached2" => {
                servers = match kind {
                    "memcached1" => OwnMemcached::several::<1>()?.into(),
                    _ => OwnMemcached::several::<2>()?.into(),
                };
                hosts = servers.iter().map(OwnMemcached::host).collect();
                let list: Vec<String> = hosts.iter().map(|h| toml_str(h)).collect();
                format!("backend = \"memcached\"\nhosts = [{}]\n", list.join(", "))
            }
            "redis" => {
                let own = OwnRedis::start(&[])?;
                let url = own.url();
                redis = Some(own);
                format!("backend = \"redis\"\nurl = {}\n", toml_str(&url))
            }
            // The rig's cluster and sentinel group, shared: each test has its own prefixes.
            "redis_cluster" | "redis_sentinel" => {
                let var = if kind == "redis_cluster" {
                    "KCACHE_TEST_REDIS_CLUSTER_URL"
                } else {
                    "KCACHE_TEST_REDIS_SENTINEL_URL"
                };
                let url = crate::util::rig::server(var)?;
                format!("backend = \"redis\"\nurl = {}\n", toml_str(&url))
            }
            other => panic!("no storage {other}"),
        };
        let store = Store { kind, table, dir, hosts, _db: db, _servers: servers, redis };
        if kind == "sqlite" {
            // An existing, migrated file (the race of first writes has its own test).
            store.env("").run(&["migrate"]).ok();
        }
        Some(store)
    }

    fn is_memcached(&self) -> bool {
        self.kind.starts_with("memcached")
    }

    /// A config file for this storage under `prefix` (mode 0600: no warning, whatever it holds).
    fn config(&self, prefix: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(format!("{}.toml", unique("cfg")));
        std::fs::write(&path, format!("[cache]\n{}prefix = {}\n", self.table, toml_str(prefix))).expect("write config");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// kcache on this storage under `prefix` (through `KCACHE_CONFIG`).
    fn env(&self, prefix: &str) -> Env {
        Env::new().var("KCACHE_CONFIG", &self.config(prefix).display().to_string())
    }

    /// Redis: the server's URL.
    fn redis_url(&self) -> String {
        self.redis.as_ref().expect("a redis store").url()
    }

    /// The raw flags and bytes memcached holds under `full` (prefix included).
    fn memcached_item(&self, full: &str) -> Option<(u32, Vec<u8>)> {
        let host = &self.hosts[hosts::bucket(full, self.hosts.len())];
        MemcachedClient::to(host).get(full)
    }
}

/// Asserts a quiet success: status 0, nothing on standard output nor on standard error.
#[track_caller]
fn quiet(out: &Out) {
    out.ok().stdout_is("");
    assert_eq!(out.stderr, "", "stderr of kcache {:?}", out.args);
}

/// A path argument.
fn arg(path: &std::path::Path) -> String {
    path.display().to_string()
}

// ---- dumps -----------------------------------------------------------------------------------

/// One line of a dump: the value's JSON text as written, and the expiry.
#[derive(Clone, Debug, PartialEq)]
struct Dumped {
    value: String,
    expires: Option<f64>,
}

/// The lines of a dump (status 0 asserted), by key: exactly the fields `key`, `value` and
/// `expires`, each key once, expiry `null` or seconds with at most three decimals.
#[track_caller]
fn parse_dump(out: &Out) -> BTreeMap<String, Dumped> {
    out.ok();
    let mut entries = BTreeMap::new();
    for line in out.stdout.lines() {
        let fields: BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a dump line is not an object ({e}): {line}"));
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["expires", "key", "value"], "{line}");
        let key: String = serde_json::from_str(fields["key"].get()).unwrap_or_else(|e| panic!("key ({e}): {line}"));
        let e = fields["expires"].get();
        let expires = (e != "null").then(|| {
            assert!(e.split_once('.').is_none_or(|(_, ms)| ms.len() <= 3), "milliseconds at most: {line}");
            e.parse::<f64>().unwrap_or_else(|err| panic!("expires ({err}): {line}"))
        });
        let dumped = Dumped { value: fields["value"].get().to_string(), expires };
        assert!(entries.insert(key, dumped).is_none(), "a key dumped twice: {line}\n{}", out.stdout);
    }
    entries
}

/// The same keys, the same value texts, expiry times within `tolerance` seconds (never only
/// where never).
#[track_caller]
fn assert_same_entries(
    what: &str,
    source: &BTreeMap<String, Dumped>,
    target: &BTreeMap<String, Dumped>,
    tolerance: f64,
) {
    assert_eq!(source.keys().collect::<Vec<_>>(), target.keys().collect::<Vec<_>>(), "{what}: the keys");
    for (key, s) in source {
        let t = &target[key];
        assert_eq!(s.value, t.value, "{what}: the value of {key:?}");
        match (s.expires, t.expires) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                assert!((a - b).abs() <= tolerance + 1e-6, "{what}: the expiry of {key:?}: {a} then {b}")
            }
            other => panic!("{what}: the expiry of {key:?}: {other:?}"),
        }
    }
}

/// `get --json KEY` of every key (status 0 asserted), a few at a time.
fn gets(env: &Env, keys: &[String]) -> BTreeMap<String, String> {
    let mut got = BTreeMap::new();
    std::thread::scope(|s| {
        let runs: Vec<_> = keys
            .chunks(keys.len().div_ceil(4).max(1))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|k| (k.clone(), env.run(&["get", "--json", k]).ok().stdout.clone()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for run in runs {
            got.extend(run.join().expect("get thread"));
        }
    });
    got
}

/// The diff lines of `out` (status 1 asserted), as JSON.
#[track_caller]
fn differences(out: &Out) -> Vec<serde_json::Value> {
    out.code(1);
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

// ---- the values ------------------------------------------------------------------------------

/// Kinto's recorded values: (name, the exact text Kinto stores).
fn kinto_values() -> Vec<(String, String)> {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("data/kinto/values.json")).expect("values.json");
    assert!(cases.len() > 40);
    assert!(cases.iter().any(|c| c["name"] == "int_huge_2_pow_70"), "large integers");
    assert!(cases.iter().any(|c| c["name"] == "object_nested_non_ascii_keys"), "non-ASCII");
    cases
        .iter()
        .map(|c| (c["name"].as_str().expect("name").to_string(), c["encoded"].as_str().expect("encoded").to_string()))
        .collect()
}

/// What the round trips write: key → (value as stored, life in seconds or never).
fn fixture() -> BTreeMap<String, (String, Option<f64>)> {
    let mut entries: BTreeMap<String, (String, Option<f64>)> =
        kinto_values().into_iter().map(|(name, encoded)| (format!("v:{name}"), (encoded, Some(HOUR)))).collect();
    // A string as Kinto stores it: ASCII only, uppercase escapes, a surrogate pair.
    let plain = r#""cha\u00EEne \u2603 \u65E5\u672C \uD83D\uDE00""#;
    entries.insert("plain".into(), (plain.to_string(), Some(MONTH)));
    entries.insert("clé:ü☃".into(), (string("non-ASCII key"), Some(HOUR)));
    entries.insert("never".into(), (string("forever"), None));
    entries
}

/// Writes [`fixture`] through `batch` (and the entry without expiry through `load`: `set`
/// always has one); returns the times before and after.
fn write_fixture(env: &Env) -> (f64, f64) {
    let mut lines = String::new();
    for (name, encoded) in kinto_values() {
        lines.push_str(&format!("set --json {} {} 1h\n", sq(&format!("v:{name}")), sq(&encoded)));
    }
    lines.push_str(&format!("set plain {} 30d\n", sq("chaîne ☃ 日本 😀")));
    lines.push_str(&format!("set {} {} 3600\n", sq("clé:ü☃"), sq("non-ASCII key")));
    let t0 = now();
    let out = env.run_stdin(&["batch"], Some(lines.as_bytes()));
    out.ok();
    let got = replies(&out.stdout);
    assert_eq!(got.len(), lines.lines().count(), "{}", out.stdout);
    assert!(got.iter().all(|r| status(r) == 0), "{}", out.stdout);
    quiet(&env.run_stdin(&["load"], Some(b"{\"key\":\"never\",\"value\":\"forever\",\"expires\":null}\n")));
    (t0, now())
}

/// The source's dump is the fixture: the values as Kinto stores them, the expiry times of the
/// TTLs given between `t0` and `t1`.
#[track_caller]
fn assert_fixture(what: &str, dumped: &BTreeMap<String, Dumped>, (t0, t1): (f64, f64), slack: f64) {
    let want = fixture();
    assert_eq!(dumped.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: the keys");
    for (key, (value, life)) in &want {
        let d = &dumped[key];
        assert_eq!(&d.value, value, "{what}: the value of {key:?}");
        match (life, d.expires) {
            (None, None) => {}
            (Some(life), Some(e)) => {
                assert!(
                    t0 + life - slack <= e && e <= t1 + life + slack,
                    "{what}: {key:?} expires at {e}, set for {life} s between {t0} and {t1}"
                )
            }
            other => panic!("{what}: the expiry of {key:?}: {other:?}"),
        }
    }
}

// ---- 1. round trips between every ordered pair -----------------------------------------------

/// From `source_kind` to each other storage: `dump` then `load`, and `copy --to`, then `dump`,
/// `get --json` and `diff --to` on the target.
fn round_trips_from(source_kind: &'static str) {
    let Some(source) = Store::open(source_kind) else { return };
    let senv = source.env(&prefix());
    let times = write_fixture(&senv);
    let dump = senv.run(&["dump"]);
    let src = parse_dump(&dump);
    let slack = if source_kind.starts_with("redis") { REDIS_SLACK } else { 0.002 };
    assert_fixture(source_kind, &src, times, slack);
    let keys: Vec<String> = src.keys().cloned().collect();
    let src_gets = gets(&senv, &keys);
    for target_kind in KINDS.into_iter().filter(|k| *k != source_kind) {
        let Some(target) = Store::open(target_kind) else { continue };
        // Memcached's own clock counts whole seconds: there, a second.
        let tolerance = if source.is_memcached() || target.is_memcached() {
            1.0
        } else if source_kind.starts_with("redis") || target_kind.starts_with("redis") {
            REDIS_SLACK
        } else {
            0.010
        };

        // dump | load
        let what = format!("{source_kind} dump | {target_kind} load");
        let tp = prefix();
        let tenv = target.env(&tp);
        quiet(&tenv.run_stdin(&["load"], Some(dump.stdout.as_bytes())));
        let loaded = parse_dump(&tenv.run(&["dump"]));
        assert_same_entries(&what, &src, &loaded, tolerance);
        assert_eq!(gets(&tenv, &keys), src_gets, "{what}: get --json");
        if target.is_memcached() {
            // "Never expires" is the longest TTL kcache allows: in the envelope, a century.
            let full = format!("{tp}never");
            let (flags, bytes) = target.memcached_item(&full).unwrap_or_else(|| panic!("{what}: no item {full}"));
            assert_eq!(flags, 16, "{what}");
            let envelope: serde_json::Value = serde_json::from_slice(&bytes).expect("an envelope");
            let at = envelope["ttl"].as_f64().unwrap_or_else(|| panic!("{what}: {envelope}"));
            assert!(at > now() + 99.0 * 365.0 * 86_400.0, "{what}: never expires stored as {envelope}");
            assert_eq!(envelope["value"], "forever", "{what}");
        }
        quiet(&senv.run(&["diff", "--to", &arg(&target.config(&tp))]));

        // copy --to
        let what = format!("{source_kind} copy --to {target_kind}");
        let cp = prefix();
        let cfg = target.config(&cp);
        quiet(&senv.run(&["copy", "--to", &arg(&cfg)]));
        quiet(&senv.run(&["diff", "--to", &arg(&cfg)]));
        let copied = parse_dump(&target.env(&cp).run(&["dump"]));
        assert_same_entries(&what, &src, &copied, tolerance);
    }
}

#[test]
fn round_trips_from_sqlite_to_every_backend_keep_values_and_expiry() {
    round_trips_from("sqlite");
}

#[test]
fn round_trips_from_postgresql_to_every_backend_keep_values_and_expiry() {
    round_trips_from("postgresql");
}

#[test]
fn round_trips_from_one_memcached_to_every_backend_keep_values_and_expiry() {
    round_trips_from("memcached1");
}

#[test]
fn round_trips_from_two_memcached_to_every_backend_keep_values_and_expiry() {
    round_trips_from("memcached2");
}

#[test]
fn round_trips_from_redis_to_every_backend_keep_values_and_expiry() {
    round_trips_from("redis");
}

#[test]
fn round_trips_from_a_redis_cluster_to_every_backend_keep_values_and_expiry() {
    round_trips_from("redis_cluster");
}

#[test]
fn round_trips_from_redis_through_sentinel_to_every_backend_keep_values_and_expiry() {
    round_trips_from("redis_sentinel");
}

// ---- 2. dumps of entries Kinto wrote ---------------------------------------------------------

/// `copy --to` a SQLite file, then `diff --to` it: the same entries (within `tolerance`).
fn copies_to_sqlite(env: &Env, tolerance: &str) {
    let Some(sqlite) = Store::open("sqlite") else { return };
    let cfg = sqlite.config(&prefix());
    quiet(&env.run(&["copy", "--to", &arg(&cfg)]));
    quiet(&env.run(&["diff", "--ttl-tolerance", tolerance, "--to", &arg(&cfg)]));
}

#[test]
fn dump_reads_postgresql_rows_as_kinto_writes_them() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    let p = prefix();
    let values = kinto_values();
    // Kinto's set(): the JSON text and sec2ttl(ttl), one statement each; NULL ttl: never.
    let insert = "INSERT INTO cache (key, value, ttl) VALUES ($1, $2, sec2ttl($3))";
    let t0 = now();
    for (name, encoded) in &values {
        db.sql().execute(insert, &[&format!("{p}{name}"), encoded, &HOUR]).expect("insert");
    }
    db.sql().execute(insert, &[&format!("{p}month"), &"\"\\u00E9t\\u00E9\"", &MONTH]).expect("insert");
    let t1 = now();
    db.sql().execute(insert, &[&format!("{p}never"), &"{\"a\":[1,2]}", &None::<f64>]).expect("insert");
    db.sql().execute(insert, &[&format!("{p}gone"), &"1", &0.001f64]).expect("insert");
    // Other prefixes: one that `_` in a LIKE pattern would take for this one.
    db.sql().execute(insert, &[&format!("other:{p}x"), &"1", &HOUR]).expect("insert");
    assert!(p.contains('_'));
    db.sql().execute(insert, &[&format!("{}x", p.replace('_', "X")), &"1", &HOUR]).expect("insert");
    std::thread::sleep(Duration::from_millis(20));

    let env = crate::util::rig::pg_env(&db.url(), "10").var("KINTO_CACHE_PREFIX", &p);
    let dumped = parse_dump(&env.run(&["dump"]));
    let mut want: Vec<String> = values.iter().map(|(n, _)| n.clone()).collect();
    want.extend(["month".into(), "never".into()]);
    assert_eq!(
        dumped.keys().cloned().collect::<Vec<_>>(),
        sorted(&want.iter().map(String::as_str).collect::<Vec<_>>())
    );
    for (name, encoded) in &values {
        let d = &dumped[name];
        assert_eq!(&d.value, encoded, "{name}");
        let e = d.expires.unwrap_or_else(|| panic!("{name}: no expiry"));
        assert!(t0 + HOUR - 0.002 <= e && e <= t1 + HOUR + 0.002, "{name}: {e} for an hour between {t0} and {t1}");
    }
    assert_eq!(dumped["month"].value, "\"\\u00E9t\\u00E9\"");
    let e = dumped["month"].expires.expect("month expires");
    assert!(t0 + MONTH - 0.002 <= e && e <= t1 + MONTH + 0.002, "month: {e}");
    assert_eq!(dumped["never"], Dumped { value: "{\"a\":[1,2]}".into(), expires: None });
    copies_to_sqlite(&env, "10ms");
}

#[test]
fn dump_reads_redis_entries_as_kinto_writes_them() {
    let Some(store) = Store::open("redis") else { return };
    let url = store.redis_url();
    let p = prefix();
    let mut conn = redis_client(&url);
    let values = kinto_values();
    // Kinto's redis cache: SET key <JSON text> PX <ms>.
    let t0 = now();
    for (i, (name, encoded)) in values.iter().enumerate() {
        let ms = 3_600_000 + i as u64 * 1_001;
        let _: () =
            redis::cmd("SET").arg(format!("{p}{name}")).arg(encoded).arg("PX").arg(ms).query(&mut conn).expect("SET");
    }
    let t1 = now();
    let _: () =
        redis::cmd("SET").arg(format!("other:{p}x")).arg("1").arg("PX").arg(60_000).query(&mut conn).expect("SET");
    let env = store.env(&p);
    let dumped = parse_dump(&env.run(&["dump"]));
    let want: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(dumped.keys().cloned().collect::<Vec<_>>(), sorted(&want));
    for (i, (name, encoded)) in values.iter().enumerate() {
        let d = &dumped[name];
        assert_eq!(&d.value, encoded, "{name}");
        let life = (3_600_000 + i as u64 * 1_001) as f64 / 1000.0;
        let e = d.expires.unwrap_or_else(|| panic!("{name}: no expiry"));
        assert!(
            t0 + life - 0.005 <= e && e <= t1 + life + REDIS_SLACK,
            "{name}: {e} for {life} s between {t0} and {t1}"
        );
    }
    copies_to_sqlite(&env, "250ms");
}

#[test]
fn dump_reads_memcached_items_as_kinto_writes_them() {
    let Some(mc) = Store::open("memcached2") else { return };
    let p = prefix();
    let values = kinto_values();
    // python-memcached's set: flags 16, exptime int(ttl); Kinto's envelope, ceil(now + ttl).
    let write = |key: &str, encoded: &str, exptime: u32, envelope_at: u64| {
        let full = format!("{p}{key}");
        let payload = format!("{{\"value\":{encoded},\"ttl\":{envelope_at}}}");
        MemcachedClient::to(&mc.hosts[hosts::bucket(&full, 2)]).set(&full, 16, exptime, payload.as_bytes());
    };
    let lives = [600.0, HOUR];
    let t0 = now();
    for (i, (name, encoded)) in values.iter().enumerate() {
        let life = lives[i % 2];
        write(name, encoded, life as u32, (now() + life).ceil() as u64);
    }
    let t1 = now();
    // Not entries: an envelope whose time has passed (the server still holds it).
    write("stale", "1", 600, now() as u64 - 5);
    let env = mc.env(&p);
    let dumped = parse_dump(&env.run(&["dump"]));
    let want: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(dumped.keys().cloned().collect::<Vec<_>>(), sorted(&want), "{:?}", mc.hosts);
    for (i, (name, encoded)) in values.iter().enumerate() {
        let life = lives[i % 2];
        let d = &dumped[name];
        assert_eq!(&d.value, encoded, "{name}");
        // The earlier of the envelope's time and the server's (whole seconds, counted 2 s short).
        let e = d.expires.unwrap_or_else(|| panic!("{name}: no expiry"));
        assert!(t0 + life - 4.0 <= e && e <= (t1 + life).ceil(), "{name}: {e} for {life} s between {t0} and {t1}");
    }
    // As `ttl` reads it.
    let name = &values[1].0;
    let before = now();
    let ms: f64 = env.run(&["ttl", "--ms", name]).ok().stdout.trim().parse().expect("ms");
    let by_ttl = before + ms / 1000.0;
    assert!((dumped[name].expires.unwrap() - by_ttl).abs() < 1.5, "dump {:?} vs ttl {by_ttl}", dumped[name]);
    copies_to_sqlite(&env, "5s");
}

// ---- 3. load: --no-overwrite, expired lines, repeated keys, counts ---------------------------

/// `-v`'s "wrote N entries, skipped M".
#[track_caller]
fn counts(out: &Out) -> (u64, u64) {
    out.ok();
    let line = out.stderr.lines().find(|l| l.contains("wrote ")).unwrap_or_else(|| panic!("no counts: {}", out.stderr));
    let rest = line.split_once("wrote ").unwrap().1;
    let (written, rest) = rest.split_once(" entries, skipped ").unwrap_or_else(|| panic!("{line}"));
    let skipped = rest.split(' ').next().unwrap_or_default();
    (written.parse().expect(line), skipped.parse().expect(line))
}

/// A dump line.
fn line(key: &str, value: &str, expires: Option<f64>) -> String {
    let e = expires.map_or("null".to_string(), |e| format!("{e:.3}"));
    format!("{{\"key\":{},\"value\":{},\"expires\":{e}}}\n", serde_json::json!(key), serde_json::json!(value))
}

/// The value `get` prints, or `None` (status 1).
#[track_caller]
fn get(env: &Env, key: &str) -> Option<String> {
    let out = env.run(&["get", key]);
    match out.status {
        1 => None,
        _ => Some(out.ok().stdout.trim_end_matches('\n').to_string()),
    }
}

fn loads_on(kind: &'static str) {
    let Some(store) = Store::open(kind) else { return };
    let env = store.env(&prefix());
    env.run(&["set", "live", "old", "1h"]).ok();
    env.run(&["set", "kept", "old", "1h"]).ok();
    let t = now();
    let dump = [
        line("live", "new live", Some(t + 600.0)),
        line("fresh", "new fresh", None),
        // Already expired: skipped, whether the key exists or not.
        line("past", "never written", Some(t - 10.0)),
        line("kept", "never written", Some(t - 0.5)),
    ]
    .concat();

    // --no-overwrite: a live entry stays.
    let out = env.run_stdin(&["-v", "load", "--no-overwrite"], Some(dump.as_bytes()));
    assert_eq!(get(&env, "live").as_deref(), Some("old"), "{kind}: a live entry is kept");
    assert_eq!(get(&env, "fresh").as_deref(), Some("new fresh"), "{kind}");
    assert_eq!(get(&env, "past"), None, "{kind}: an expired line is not written");
    assert_eq!(get(&env, "kept").as_deref(), Some("old"), "{kind}: an expired line leaves the entry alone");
    assert_eq!(counts(&out), (1, 3), "{kind}: {}", out.stderr);
    let never = env.run(&["ttl", "fresh"]);
    if store.is_memcached() {
        // memcached stores the longest TTL kcache allows for "never expires".
        let left: f64 = never.ok().stdout.trim().parse().expect("seconds");
        assert!(left == -1.0 || left > 99.0 * 365.0 * 86_400.0, "{kind}: {}", never.stdout);
    } else {
        never.ok().stdout_is("-1\n");
    }

    // Without it, every live line is written, with the life the dump gave it.
    let out = env.run_stdin(&["-v", "load"], Some(dump.as_bytes()));
    assert_eq!(get(&env, "live").as_deref(), Some("new live"), "{kind}: overwritten");
    assert_eq!(get(&env, "past"), None, "{kind}");
    assert_eq!(get(&env, "kept").as_deref(), Some("old"), "{kind}");
    assert_eq!(counts(&out), (2, 2), "{kind}: {}", out.stderr);
    let ttl: u64 = env.run(&["ttl", "live"]).ok().stdout.trim().parse().expect("seconds");
    assert!((595..=600).contains(&ttl), "{kind}: the life the dump gave it: {ttl}");
    assert_eq!(sorted_lines(&env.run(&["keys"])), ["fresh", "kept", "live"], "{kind}");

    // A dump loaded twice (concatenated): the last line of a key wins, with its expiry.
    let first = [line("dup", "first", Some(t + 600.0)), line("a", "a", None)].concat();
    let second = [line("dup", "second", Some(t + 900.0)), line("b", "b", Some(t + 600.0))].concat();
    let both = format!("{first}{second}");
    let twice = store.env(&prefix());
    let out = twice.run_stdin(&["-v", "load"], Some(both.as_bytes()));
    assert_eq!(get(&twice, "dup").as_deref(), Some("second"), "{kind}: the last line wins");
    let ttl: u64 = twice.run(&["ttl", "dup"]).ok().stdout.trim().parse().expect("seconds");
    assert!((895..=900).contains(&ttl), "{kind}: with its expiry: {ttl}");
    assert_eq!(sorted_lines(&twice.run(&["keys"])), ["a", "b", "dup"], "{kind}");
    let (written, skipped) = counts(&out);
    assert_eq!(written + skipped, 4, "{kind}: every line is written or skipped: {}", out.stderr);
    assert!(written >= 3, "{kind}: {}", out.stderr);
    // Over several groups (a load writes 1,000 lines at a time), a key repeated within a group
    // and across groups: the same. Key j is on lines j, j + 700, j + 1400 and (j < 400) j + 2100.
    let many: String = (0..2500).map(|i| line(&format!("k{}", i % 700), &format!("v{i}"), Some(t + 600.0))).collect();
    let grouped = store.env(&prefix());
    grouped.run_stdin(&["load"], Some(many.as_bytes())).ok();
    let dumped = parse_dump(&grouped.run(&["dump"]));
    assert_eq!(dumped.len(), 700, "{kind}");
    for i in [0, 299, 300, 399, 400, 699] {
        let last = if i < 400 { 2100 + i } else { 1400 + i };
        assert_eq!(dumped[&format!("k{i}")].value, format!("\"v{last}\""), "{kind}: the last line of k{i} wins");
    }

    // With --no-overwrite, as lines written one by one: the first line of a key is written, the
    // later ones find it live.
    let keeping = store.env(&prefix());
    let out = keeping.run_stdin(&["-v", "load", "--no-overwrite"], Some(both.as_bytes()));
    out.ok();
    assert_eq!(get(&keeping, "dup").as_deref(), Some("first"), "{kind}: the first line is kept: {}", out.stderr);
    let keeping = store.env(&prefix());
    keeping.run_stdin(&["load", "--no-overwrite"], Some(many.as_bytes())).ok();
    let dumped = parse_dump(&keeping.run(&["dump"]));
    assert_eq!(dumped.len(), 700, "{kind}");
    for i in [0, 299, 300, 399, 400, 699] {
        assert_eq!(dumped[&format!("k{i}")].value, format!("\"v{i}\""), "{kind}: the first line of k{i} is kept");
    }
}

#[test]
fn load_no_overwrite_keeps_live_entries_and_skips_expired_lines_on_sqlite() {
    loads_on("sqlite");
}

#[test]
fn load_no_overwrite_keeps_live_entries_and_skips_expired_lines_on_postgresql() {
    loads_on("postgresql");
}

#[test]
fn load_no_overwrite_keeps_live_entries_and_skips_expired_lines_on_redis() {
    loads_on("redis");
}

#[test]
fn load_no_overwrite_keeps_live_entries_and_skips_expired_lines_on_memcached() {
    loads_on("memcached2");
}

/// `load --no-overwrite` over an entry that has expired but that the backend still holds (SQL:
/// the row until a purge; memcached: the item, which kcache gives a few seconds more than its
/// envelope's time): the entry is overwritten.
fn no_overwrite_replaces_an_expired_entry(kind: &'static str) {
    let Some(store) = Store::open(kind) else { return };
    let p = prefix();
    let env = store.env(&p);
    env.run(&["set", "dead", "old", "0.2"]).ok();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(&env, "dead"), None, "{kind}: expired before the load");
    if store.is_memcached() {
        assert!(store.memcached_item(&format!("{p}dead")).is_some(), "the server still holds the item");
    }
    let dump = line("dead", "new dead", Some(now() + 600.0));
    let out = env.run_stdin(&["-v", "load", "--no-overwrite"], Some(dump.as_bytes()));
    assert_eq!(
        get(&env, "dead").as_deref(),
        Some("new dead"),
        "{kind}: load --no-overwrite must overwrite an expired entry (stderr: {})",
        out.stderr
    );
    assert_eq!(counts(&out), (1, 0), "{kind}: {}", out.stderr);
}

#[test]
fn load_no_overwrite_replaces_an_expired_row_on_sqlite() {
    no_overwrite_replaces_an_expired_entry("sqlite");
}

#[test]
fn load_no_overwrite_replaces_an_expired_row_on_postgresql() {
    no_overwrite_replaces_an_expired_entry("postgresql");
}

#[test]
fn load_no_overwrite_replaces_an_expired_entry_on_redis() {
    no_overwrite_replaces_an_expired_entry("redis");
}

/// memcached's `load --no-overwrite` cannot write with `ms ... ME` (add) alone: the server
/// refuses it while it still holds the item, live or not, and kcache's own entries stay on the
/// server `EXPTIME_MARGIN` (4 s) and more past their envelope's time. (Failed until the keys
/// were read first and an expired entry replaced over its CAS.)
#[test]
fn load_no_overwrite_replaces_an_expired_item_the_server_still_holds_on_memcached() {
    no_overwrite_replaces_an_expired_entry("memcached2");
}

// ---- 4. patterns -----------------------------------------------------------------------------

const PATTERN_KEYS: [&str; 11] =
    ["user:1", "user:2", "user:10", "usera", "item_1", "item%1", "itemX1", "a", "b", "ab", "A"];

/// Each pattern and the keys of [`PATTERN_KEYS`] it selects.
fn patterns() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("*", PATTERN_KEYS.to_vec()),
        ("user:*", vec!["user:1", "user:10", "user:2"]),
        ("user:?", vec!["user:1", "user:2"]),
        ("user[a-z]", vec!["usera"]),
        ("[a-z]", vec!["a", "b"]),
        ("[!a]", vec!["A", "b"]),
        ("?", vec!["A", "a", "b"]),
        ("item_1", vec!["item_1"]),
        ("item%1", vec!["item%1"]),
        ("*%*", vec!["item%1"]),
        ("*_*", vec!["item_1"]),
        ("item?1", vec!["item%1", "itemX1", "item_1"]),
        ("a*", vec!["a", "ab"]),
        ("nothing*", vec![]),
    ]
}

fn patterns_on(kind: &'static str) {
    let Some(store) = Store::open(kind) else { return };
    let Some(sqlite) = Store::open("sqlite") else { return };
    let p = prefix();
    let env = store.env(&p);
    let lines: String = PATTERN_KEYS.iter().map(|k| format!("set {} {} 1h\n", sq(k), sq(&format!("v-{k}")))).collect();
    let out = env.run_stdin(&["batch"], Some(lines.as_bytes()));
    assert!(replies(&out.ok().stdout).iter().all(|r| status(r) == 0), "{}", out.stdout);
    let files = crate::util::db(&sqlite.dir.path().join("cache.sqlite3"));
    for (pattern, want) in patterns() {
        let what = format!("{kind}, pattern {pattern:?}");
        let want = sorted(&want);

        // dump PATTERN: the matching keys, prefix stripped.
        let dumped = parse_dump(&env.run(&["dump", pattern]));
        assert_eq!(dumped.keys().cloned().collect::<Vec<_>>(), want, "{what}: dump");
        for (key, d) in &dumped {
            assert_eq!(d.value, string(&format!("v-{key}")), "{what}: {key}");
        }

        // copy --to the same backend under another prefix: those keys, under it.
        let tp = prefix();
        let cfg = store.config(&tp);
        quiet(&env.run(&["copy", "--to", &arg(&cfg), pattern]));
        let listed = store.env(&tp).run(&["keys"]);
        assert_eq!(sorted_lines(&listed), want, "{what}: copied keys");
        quiet(&env.run(&["diff", "--to", &arg(&cfg), pattern]));
        // The whole source differs by the keys left out.
        let whole = env.run(&["diff", "--to", &arg(&cfg)]);
        let mut only: Vec<String> = differences_or_none(&whole)
            .iter()
            .map(|d| {
                assert_eq!(d["only_in"], "source", "{what}: {d}");
                d["key"].as_str().expect("key").to_string()
            })
            .collect();
        only.sort();
        let left_out: Vec<&str> = PATTERN_KEYS.iter().copied().filter(|k| !want.iter().any(|w| w == k)).collect();
        assert_eq!(only, sorted(&left_out), "{what}: diff without the pattern");

        // copy --to a SQLite file: the target's prefix on every key it stored.
        let sp = prefix();
        quiet(&env.run(&["copy", "--to", &arg(&sqlite.config(&sp)), pattern]));
        let mut stmt =
            files.prepare("SELECT key FROM cache WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key").unwrap();
        let stored: Vec<String> = stmt.query_map([&sp], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        let prefixed: Vec<String> = want.iter().map(|k| format!("{sp}{k}")).collect();
        assert_eq!(stored, prefixed, "{what}: full keys in the SQLite target");
    }
    // A malformed pattern is refused before anything is written.
    let cfg = sqlite.config(&prefix());
    env.run(&["copy", "--to", &arg(&cfg), "[a-"]).code(2).one_error_line();
    env.run(&["dump", "a\\"]).code(2).one_error_line();
}

/// The differences of a diff: none (status 0) or some (status 1).
#[track_caller]
fn differences_or_none(out: &Out) -> Vec<serde_json::Value> {
    if out.status == 0 {
        out.stdout_is("");
        return Vec::new();
    }
    differences(out)
}

#[test]
fn dump_and_copy_select_keys_by_pattern_on_sqlite() {
    patterns_on("sqlite");
}

#[test]
fn dump_and_copy_select_keys_by_pattern_on_postgresql() {
    patterns_on("postgresql");
}

#[test]
fn dump_and_copy_select_keys_by_pattern_on_redis() {
    patterns_on("redis");
}

#[test]
fn dump_and_copy_select_keys_by_pattern_on_a_redis_cluster() {
    patterns_on("redis_cluster");
}

#[test]
fn dump_and_copy_select_keys_by_pattern_on_memcached() {
    patterns_on("memcached2");
}

// ---- 5. many entries -------------------------------------------------------------------------

const MANY: usize = 20_000;

/// [`MANY`] entries written through `batch` into `from`, copied into `to`, compared.
fn copies_many(from: &'static str, to: &'static str) {
    let (Some(source), Some(target)) = (Store::open(from), Store::open(to)) else { return };
    let env = source.env(&prefix());
    let lines: String =
        (0..MANY).map(|i| format!("set --json k{i} {} 1h\n", sq(&format!("{{\"n\":{i},\"s\":\"é{i}\"}}")))).collect();
    let out = env.run_stdin(&["batch"], Some(lines.as_bytes()));
    let got = replies(&out.ok().stdout);
    assert_eq!(got.len(), MANY);
    assert!(got.iter().all(|r| status(r) == 0));
    let tp = prefix();
    let cfg = target.config(&tp);
    let out = env.run(&["-v", "copy", "--to", &arg(&cfg)]);
    assert_eq!(counts(&out), (MANY as u64, 0), "{}", out.stderr);
    quiet(&env.run(&["diff", "--to", &arg(&cfg)]));
    let listed = target.env(&tp).run(&["keys"]);
    assert_eq!(listed.ok().stdout.lines().count(), MANY, "{from} -> {to}: keys on the target");
    assert_eq!(env.run(&["keys"]).ok().stdout.lines().count(), MANY, "{from}: keys on the source");
    // One entry, read back on the target.
    let dumped = parse_dump(&target.env(&tp).run(&["dump", "k12345"]));
    assert_eq!(dumped["k12345"].value, "{\"n\":12345,\"s\":\"\\u00E912345\"}");
}

#[test]
fn twenty_thousand_entries_copy_from_sqlite_to_redis() {
    copies_many("sqlite", "redis");
}

#[test]
fn twenty_thousand_entries_copy_from_a_redis_cluster_to_redis_through_sentinel() {
    copies_many("redis_cluster", "redis_sentinel");
}

#[test]
fn twenty_thousand_entries_copy_from_postgresql_to_two_memcached() {
    copies_many("postgresql", "memcached2");
}

// ---- 6. a target that refuses an entry midway ------------------------------------------------

/// A dump of one value over memcached's item size limit (1 MiB), then 10,000 small entries:
/// more groups than the load keeps in flight.
fn too_big_then_many() -> String {
    let at = Some(now() + 600.0);
    let mut dump = line("a-too-big", &"x".repeat(2 << 20), at);
    for i in 0..10_000 {
        dump.push_str(&line(&format!("k{i:05}"), "v", at));
    }
    dump
}

/// A target that refuses a group (a value over the item size limit) ends the copy with its
/// error, the walk of the source stopped. Before def46b2 the walking thread blocked forever on
/// the full channel and kcache never exited (a 20,000-entry copy into a memcached short of
/// memory hung 15 minutes). Servers killed midway are in `transfer_faults.rs`.
#[test]
fn copy_into_a_target_that_refuses_an_entry_midway_ends_with_status_4() {
    let (Some(source), Some(target)) = (Store::open("sqlite"), Store::open("memcached1")) else { return };
    let env = source.env(&prefix());
    quiet(&env.run_stdin(&["load"], Some(too_big_then_many().as_bytes())));
    let cfg = target.config(&prefix());
    let out = run_within(&env, &["copy", "--to", &arg(&cfg)], None, Duration::from_secs(20));
    out.code(4).one_error_line();
}

/// As [`copy_into_a_target_that_refuses_an_entry_midway_ends_with_status_4`], for `load`: the
/// thread reading standard input must not keep kcache waiting.
#[test]
fn load_into_a_target_that_refuses_an_entry_midway_ends_with_status_4() {
    let Some(target) = Store::open("memcached1") else { return };
    let env = target.env(&prefix());
    let out = run_within(&env, &["load"], Some(too_big_then_many().as_bytes()), Duration::from_secs(20));
    out.code(4).one_error_line().stderr_has("stopped after writing");
}

/// The message of a load that stopped says how many entries it wrote (SPEC: "the entries before
/// it stay written and the message says how many"), those of the group with the refused value
/// included (memcached refuses one command, not the group: its 999 other entries are stored).
/// (Said "stopped after writing 0 entries" while only whole groups were counted.)
#[test]
fn load_into_a_target_that_refuses_an_entry_midway_says_how_many_were_written() {
    let Some(target) = Store::open("memcached1") else { return };
    let env = target.env(&prefix());
    let out = run_within(&env, &["load"], Some(too_big_then_many().as_bytes()), Duration::from_secs(20));
    out.code(4);
    let said: u64 = out
        .stderr
        .split_once("stopped after writing ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {}", out.stderr));
    let stored = env.run(&["keys"]).stdout.lines().count() as u64;
    assert!(stored > 0, "the entries around the refused one are stored");
    assert_eq!(said, stored, "the message's count vs the entries stored: {}", out.stderr);
}

// ---- 7. Redis over a slow link: expiry times stay absolute -----------------------------------

/// A TCP proxy to `upstream` (`host:port`) that holds every byte for `delay` in each direction:
/// a link with a round trip of `2 * delay`. Lives as long as the test process.
fn slow_link(upstream: String, delay: Duration) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(&upstream) else { continue };
            let pairs = [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)];
            for (mut from, mut to) in pairs {
                let (held, due) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || held.send((std::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                std::thread::spawn(move || {
                    for (at, bytes) in due {
                        std::thread::sleep(at.saturating_duration_since(std::time::Instant::now()));
                        if to.write_all(&bytes).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    address
}

/// `url` (`redis://[auth@]host:port[/db]`) through a slow link of `delay` each way.
fn slowly(url: &str, delay: Duration) -> String {
    let (scheme, rest) = url.split_once("://").expect("a redis URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (auth, host) = authority.rsplit_once('@').map_or((String::new(), authority), |(a, h)| (format!("{a}@"), h));
    format!("{scheme}://{auth}{}/{path}", slow_link(host.to_string(), delay))
}

fn redis_env(url: &str, prefix: &str) -> Env {
    Env::new().var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_URL", url).var("KINTO_CACHE_PREFIX", prefix)
}

/// The absolute expiry Redis holds for `key`, in seconds: `PEXPIRETIME` (Redis 7), else `PTTL`
/// counted from now on the direct link.
fn redis_expiry(conn: &mut redis::Connection, key: &str) -> f64 {
    match redis::cmd("PEXPIRETIME").arg(key).query::<i64>(conn) {
        Ok(ms) => {
            assert!(ms > 0, "{key}: PEXPIRETIME {ms}");
            ms as f64 / 1000.0
        }
        Err(_) => {
            let before = now();
            let ms: i64 = redis::cmd("PTTL").arg(key).query(conn).expect("PTTL");
            assert!(ms > 0, "{key}: PTTL {ms}");
            before + ms as f64 / 1000.0
        }
    }
}

/// A Redis dump gives the time Redis holds (`PEXPIRETIME`, Redis 7), to the millisecond, however
/// slow the link. (`now + PTTL`, `now` read when the reply had come, was late by the reply's
/// time on the link: 100 ms here, 12 ms seen over loopback on a busy machine.)
#[test]
fn redis_dump_over_a_slow_link_keeps_the_exact_expiry() {
    let Some(store) = Store::open("redis") else { return };
    let url = store.redis_url();
    let p = prefix();
    let mut conn = redis_client(&url);
    let _: () = redis::cmd("SET").arg(format!("{p}k")).arg("1").arg("PX").arg(3_600_000).query(&mut conn).expect("SET");
    let held = redis_expiry(&mut conn, &format!("{p}k"));
    let env = redis_env(&slowly(&url, Duration::from_millis(100)), &p);
    let dumped = parse_dump(&run_within(&env, &["dump"], None, Duration::from_secs(30)));
    let e = dumped["k"].expires.expect("an expiry");
    assert!((e - held).abs() <= 0.010, "dump over a 100 ms link says {e}; Redis holds {held} ({:+.3} s)", e - held);
}

/// A load into Redis keeps the dump's expiry to the millisecond (`SET ... PXAT`, Redis 6.2),
/// however slow the link. (`SET ... PX <ms left>`, counted before the request was sent, gave the
/// entry the request's time on the link more life: 100 ms and more here.)
#[test]
fn redis_load_over_a_slow_link_keeps_the_exact_expiry() {
    let Some(store) = Store::open("redis") else { return };
    let url = store.redis_url();
    let p = prefix();
    let at = (now() + HOUR).floor() + 0.5;
    let env = redis_env(&slowly(&url, Duration::from_millis(100)), &p);
    let out = run_within(&env, &["load"], Some(line("k", "v", Some(at)).as_bytes()), Duration::from_secs(30));
    quiet(&out);
    let held = redis_expiry(&mut redis_client(&url), &format!("{p}k"));
    assert!((held - at).abs() <= 0.010, "loaded over a 100 ms link for {at}; Redis holds {held} ({:+.3} s)", held - at);
}
