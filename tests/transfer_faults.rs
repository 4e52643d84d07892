//! `dump`, `load`, `copy` and `diff` when something is wrong (SPEC, "Dump format; dump, load,
//! copy, diff"): every kind of difference `diff` reports, every kind of bad dump line `load`
//! refuses (and what it has written by then), servers killed or frozen in the middle of a
//! transfer, a reader that goes away, progress on a terminal only, and input errors caught
//! before anything is sent. The round trips themselves are in tests/transfer.rs.
//!
//! Each test has caches of its own: a database of its own on the rig's PostgreSQL (a server of
//! its own when it kills it), SQLite files in its temp dir, and Redis and memcached servers of
//! its own ([`crate::util::servers`]): the rig's are shared with runs that flush them whole,
//! and these tests check what a cache holds exactly. Every cache is described by a TOML file
//! (`[cache]`, mode 0600), which kcache reads through `KCACHE_CONFIG` as the source and
//! through `--to` as the target.

use crate::util::rig::RigDb;
use crate::util::servers::{self, OwnMemcached, OwnPostgres, OwnRedis, run_within, signal};
use crate::util::{Env, Out};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Entries of the large transfers: enough that a kill lands in the middle.
const MANY: usize = 200_000;
/// pool_timeout of the caches whose server a test kills or freezes.
const POOL_TIMEOUT: u64 = 2;
/// Slack over a documented wait: process start, a loaded machine.
const SLACK: Duration = Duration::from_secs(5);
/// A run that has not ended by then is killed and fails the test.
const HANG: Duration = Duration::from_secs(120);

// ---- caches described by a TOML file -----------------------------------------------------------

/// One cache of a test: the TOML file that describes it alone, and kcache on it (through
/// `KCACHE_CONFIG`). A database of the rig's PostgreSQL lives as long as the side.
struct Side {
    kind: &'static str,
    config: PathBuf,
    env: Env,
    prefix: String,
    /// The SQLite file (sqlite).
    file: Option<PathBuf>,
    db: Option<RigDb>,
    /// A raw connection's URL (redis).
    redis_url: Option<String>,
    /// The server of the test's own that holds this cache, stopped with the side.
    server: Option<Own>,
}

/// A TOML basic string (JSON's escapes are TOML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

/// Writes `fields` (`key = <TOML value>`) as the `[cache]` table of `path`, mode 0600.
fn write_config(path: &Path, fields: &[(&str, String)]) {
    use std::os::unix::fs::PermissionsExt;
    let mut text = String::from("[cache]\n");
    for (k, v) in fields {
        text.push_str(&format!("{k} = {v}\n"));
    }
    std::fs::write(path, text).expect("write config");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

impl Side {
    /// A side described by `fields` (backend and location; the prefix is added).
    fn with(kind: &'static str, fields: Vec<(&str, String)>, prefix: &str) -> Side {
        let dir = Env::new();
        let config = dir.path("cache.toml");
        let mut fields = fields;
        fields.push(("prefix", q(prefix)));
        write_config(&config, &fields);
        let env = dir.var("KCACHE_CONFIG", &config.display().to_string());
        Side { kind, config, env, prefix: prefix.to_string(), file: None, db: None, redis_url: None, server: None }
    }

    /// A fresh cache of `kind` (`None`: skipped, that server is missing): SQLite, a file in a
    /// temp dir; PostgreSQL, a database of its own on the rig's server; Redis and memcached, a
    /// server of its own (the rig's are shared with runs that flush them whole).
    fn fresh(kind: &'static str) -> Option<Side> {
        let prefix = format!("{}:", crate::util::unique("tf"));
        let side = match kind {
            "sqlite" => {
                let file = tempfile::NamedTempFile::new().expect("temp file").into_temp_path().keep().expect("keep");
                let mut side =
                    Side::with(kind, vec![("backend", q("sqlite")), ("path", q(&file.display().to_string()))], &prefix);
                side.file = Some(file);
                side.env.run(&["migrate"]).ok();
                side
            }
            "postgresql" => {
                let db = RigDb::create()?;
                db.migrate();
                let mut side = Side::with(kind, vec![("backend", q("postgresql")), ("url", q(&db.url()))], &prefix);
                side.db = Some(db);
                side
            }
            "redis" | "memcached" => {
                let server = Own::start(kind)?;
                let mut side = server.side(&prefix);
                side.server = Some(server);
                side
            }
            other => panic!("no side for {other}"),
        };
        Some(side)
    }

    /// kcache on this cache.
    fn run(&self, args: &[&str]) -> Out {
        self.env.run(args)
    }

    /// `load` of `dump` into this cache.
    fn load(&self, dump: &str) -> Out {
        self.env.run_stdin(&["load"], Some(dump.as_bytes()))
    }

    /// What `dump` gives: key → (value, expires).
    fn entries(&self) -> BTreeMap<String, (Value, Option<f64>)> {
        let out = self.run(&["dump"]);
        out.ok();
        parse_dump(&out.stdout)
    }

    /// Stores `text` as the raw stored value of `key` (prefix added), keeping its expiry: a
    /// value as another writer may have written it, bypassing kcache's encoding.
    fn write_raw(&mut self, key: &str, text: &str) {
        let full = format!("{}{key}", self.prefix);
        match self.kind {
            "sqlite" => {
                let conn = crate::util::db(self.file.as_ref().expect("sqlite file"));
                let n = conn.execute("UPDATE cache SET value = ?1 WHERE key = ?2", (text, &full)).expect("UPDATE");
                assert_eq!(n, 1, "no row for {full}");
            }
            "postgresql" => {
                let db = self.db.as_mut().expect("database");
                let n =
                    db.sql().execute("UPDATE cache SET value = $1 WHERE key = $2", &[&text, &full]).expect("UPDATE");
                assert_eq!(n, 1, "no row for {full}");
                assert_eq!(db.stored(&full).as_deref(), Some(text));
            }
            "redis" => {
                let mut conn = servers::redis_client(self.redis_url.as_ref().expect("url"));
                let reply: String =
                    redis::cmd("SET").arg(&full).arg(text).arg("XX").arg("KEEPTTL").query(&mut conn).expect("SET");
                assert_eq!(reply, "OK");
            }
            other => panic!("no raw write on {other}"),
        }
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A dump's lines, each checked to be a whole entry: key → (value, expires).
#[track_caller]
fn parse_dump(text: &str) -> BTreeMap<String, (Value, Option<f64>)> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let (key, value, expires) = entry_of(line);
        assert!(map.insert(key.clone(), (value, expires)).is_none(), "{key} is dumped twice");
    }
    map
}

/// One dump line, which must be `{"key": K, "value": V, "expires": E}`.
#[track_caller]
fn entry_of(line: &str) -> (String, Value, Option<f64>) {
    let doc: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("a dump line is not JSON: {line:?}: {e}"));
    let key = doc["key"].as_str().unwrap_or_else(|| panic!("no key: {line}")).to_string();
    assert!(doc.get("value").is_some(), "no value: {line}");
    let expires = match &doc["expires"] {
        Value::Null => None,
        Value::Number(n) => n.as_f64(),
        other => panic!("expires {other} in {line}"),
    };
    (key, doc["value"].clone(), expires)
}

/// Now, as a Unix time in seconds.
fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// One dump line.
fn line(key: &str, value: Value, expires: Option<f64>) -> String {
    format!("{}\n", json!({"key": key, "value": value, "expires": expires}))
}

/// `n` dump lines `k000000`... with small object values, live for an hour.
fn many_lines(n: usize) -> String {
    let e = (now() + 3600.0).round();
    let mut text = String::with_capacity(n * 80);
    for i in 0..n {
        text.push_str(&format!(
            "{{\"key\":\"k{i:06}\",\"value\":{{\"n\":{i},\"s\":\"entry {i}\"}},\"expires\":{e}}}\n"
        ));
    }
    text
}

/// The `N` of "stopped after writing N entries" in `stderr`.
#[track_caller]
fn written_before_stop(stderr: &str) -> u64 {
    let rest = stderr
        .split("stopped after writing ")
        .nth(1)
        .unwrap_or_else(|| panic!("the message does not say how many entries were written:\n{stderr}"));
    rest.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count in {stderr}"))
}

/// How many keys `keys` lists on `env` (0 on status 1: none).
#[track_caller]
fn key_count(env: &Env) -> usize {
    let out = env.run(&["keys"]);
    if out.status == 1 {
        return 0;
    }
    out.ok();
    out.stdout.lines().count()
}

// ---- 1. diff finds each kind of difference -------------------------------------------------------

/// A difference as the test expects it: what `diff` says about a key.
#[derive(Clone)]
enum Expect {
    Only(&'static str),
    Value(Value, Value),
    Expires(Option<f64>, Option<f64>),
}

/// `diff`'s lines, checked against `expected` (any order; expiry times within 0.5 s: the
/// backends keep milliseconds, or count a TTL from their own clock).
#[track_caller]
fn assert_differences(out: &Out, expected: &[(&str, Expect)]) {
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    for text in out.stdout.lines() {
        let doc: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("a diff line is not JSON: {text:?}: {e}"));
        let key = doc["key"].as_str().unwrap_or_else(|| panic!("no key in {text}")).to_string();
        assert!(seen.insert(key.clone(), doc).is_none(), "{key} is reported twice:\n{}", out.stdout);
    }
    let keys: Vec<&str> = seen.keys().map(String::as_str).collect();
    let mut wanted: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
    wanted.sort();
    assert_eq!(keys, wanted, "diff {:?} reported other keys:\n{}", out.args, out.stdout);
    let near = |a: &Value, b: Option<f64>| match (a, b) {
        (Value::Null, None) => true,
        (Value::Number(n), Some(b)) => (n.as_f64().expect("a number") - b).abs() < 0.5,
        _ => false,
    };
    for (key, what) in expected {
        let doc = &seen[*key];
        let fields = doc.as_object().expect("an object").len();
        match what {
            Expect::Only(side) => {
                assert_eq!(doc, &json!({"key": key, "only_in": side}), "{key}");
            }
            Expect::Value(source, target) => {
                assert_eq!(doc, &json!({"key": key, "differs": "value", "source": source, "target": target}), "{key}");
            }
            Expect::Expires(source, target) => {
                assert_eq!(doc["differs"], "expires", "{key}: {doc}");
                assert_eq!(fields, 4, "{key}: {doc}");
                assert!(near(&doc["source"], *source), "{key}: source expiry {source:?} expected: {doc}");
                assert!(near(&doc["target"], *target), "{key}: target expiry {target:?} expected: {doc}");
            }
        }
    }
}

/// Each kind of difference between a cache of `source` and one of `target`, the tolerance for
/// expiry times, a pattern restricting both sides, and values written differently but equal.
fn diff_finds_each_kind_of_difference(source: &'static str, target: &'static str) {
    let Some(mut src) = Side::fresh(source) else { return };
    let Some(mut tgt) = Side::fresh(target) else { return };
    let e = (now() + 3600.0).round();
    let mut a = String::new();
    let mut b = String::new();
    for (key, sv, se, tv, te) in [
        ("same", json!({"v": [1, "é"]}), Some(e), json!({"v": [1, "é"]}), Some(e)),
        ("str", json!("text"), None, json!("text"), None),
        ("value", json!({"a": 1}), Some(e), json!({"a": 2}), Some(e)),
        ("typed", json!("1"), Some(e), json!(1), Some(e)),
        ("expires", json!(1), Some(e), json!(1), Some(e + 600.0)),
        ("never", json!(1), None, json!(1), Some(e)),
        ("near", json!(1), Some(e), json!(1), Some(e + 1.0)),
        ("five", json!(1), Some(e), json!(1), Some(e + 5.0)),
        ("spaced", json!({"a": 1, "b": [true, null]}), None, json!({"a": 1, "b": [true, null]}), None),
        ("spaced2", json!({"x": "y"}), Some(e), json!({"x": "y"}), Some(e)),
        ("reordered", json!({"a": 1, "b": {"c": 2, "d": 3}}), None, json!({"a": 1, "b": {"c": 2, "d": 3}}), None),
    ] {
        a.push_str(&line(key, sv, se));
        b.push_str(&line(key, tv, te));
    }
    a.push_str(&line("only_src", json!("s"), Some(e)));
    b.push_str(&line("only_tgt", json!(["t"]), None));
    src.load(&a).ok();
    tgt.load(&b).ok();
    // Equal documents, written otherwise: spaces, another order of an object's members.
    tgt.write_raw("spaced", r#"{ "a" : 1 , "b": [ true , null ] }"#);
    src.write_raw("spaced2", "{\"x\":  \"y\"}");
    tgt.write_raw("reordered", r#"{"b":{"d":3,"c":2},"a":1}"#);
    let to = tgt.config.display().to_string();

    let all = [
        ("only_src", Expect::Only("source")),
        ("only_tgt", Expect::Only("target")),
        ("value", Expect::Value(json!({"a": 1}), json!({"a": 2}))),
        ("typed", Expect::Value(json!("1"), json!(1))),
        ("expires", Expect::Expires(Some(e), Some(e + 600.0))),
        ("never", Expect::Expires(None, Some(e))),
        ("five", Expect::Expires(Some(e), Some(e + 5.0))),
    ];
    let out = src.run(&["diff", "--to", &to]);
    out.code(1);
    assert_eq!(out.stderr, "", "diff writes nothing but differences");
    assert_differences(&out, &all);

    // The other way round, source and target swap.
    let out = tgt.run(&["diff", "--to", &src.config.display().to_string()]);
    out.code(1);
    assert_differences(
        &out,
        &[
            ("only_src", Expect::Only("target")),
            ("only_tgt", Expect::Only("source")),
            ("value", Expect::Value(json!({"a": 2}), json!({"a": 1}))),
            ("typed", Expect::Value(json!(1), json!("1"))),
            ("expires", Expect::Expires(Some(e + 600.0), Some(e))),
            ("never", Expect::Expires(Some(e), None)),
            ("five", Expect::Expires(Some(e + 5.0), Some(e))),
        ],
    );

    // 10 s of tolerance: 5 s apart are equal; 600 s and never are not.
    let out = src.run(&["diff", "--ttl-tolerance", "10s", "--to", &to]);
    out.code(1);
    let without_five: Vec<_> = all.iter().filter(|(k, _)| *k != "five").cloned().collect();
    assert_differences(&out, &without_five);
    // Less than a second of tolerance: 1 s apart differ.
    let out = src.run(&["diff", "--ttl-tolerance", "500ms", "--to", &to, "n*"]);
    out.code(1);
    assert_differences(
        &out,
        &[("near", Expect::Expires(Some(e), Some(e + 1.0))), ("never", Expect::Expires(None, Some(e)))],
    );

    // A pattern restricts both sides.
    let out = src.run(&["diff", "--to", &to, "only_*"]);
    out.code(1);
    assert_differences(&out, &[("only_src", Expect::Only("source")), ("only_tgt", Expect::Only("target"))]);
    let out = src.run(&["diff", "--to", &to, "[vt]*"]);
    out.code(1);
    assert_differences(
        &out,
        &[("value", Expect::Value(json!({"a": 1}), json!({"a": 2}))), ("typed", Expect::Value(json!("1"), json!(1)))],
    );
    // Keys that are equal: status 0, no output (1 s apart is within the default 2 s; values
    // written with other spaces and key order are the same documents).
    for pattern in ["s*", "near", "spaced*", "reordered", "nothing-matches-this"] {
        src.run(&["diff", "--to", &to, pattern]).ok().stdout_is("");
    }
    let out = src.run(&["diff", "--ttl-tolerance", "10s", "--to", &to, "[fnrs]*"]);
    out.code(1);
    assert_differences(&out, &[("never", Expect::Expires(None, Some(e)))]);

    // Whole caches that hold the same entries: a copy into a fresh cache of the target's kind.
    let Some(fresh) = Side::fresh(target) else { return };
    let fresh_to = fresh.config.display().to_string();
    src.run(&["copy", "--to", &fresh_to]).ok().stdout_is("");
    src.run(&["diff", "--to", &fresh_to]).ok().stdout_is("");
    fresh.run(&["diff", "--to", &src.config.display().to_string()]).ok().stdout_is("");
    // One change on either side is found again.
    fresh.run(&["delete", "same"]).ok();
    let out = src.run(&["diff", "--to", &fresh_to]);
    out.code(1);
    assert_differences(&out, &[("same", Expect::Only("source"))]);
}

#[test]
fn diff_sqlite_to_sqlite_finds_each_kind_of_difference() {
    diff_finds_each_kind_of_difference("sqlite", "sqlite");
}

#[test]
fn diff_redis_to_postgresql_finds_each_kind_of_difference() {
    diff_finds_each_kind_of_difference("redis", "postgresql");
}

#[test]
fn diff_postgresql_to_redis_finds_each_kind_of_difference() {
    diff_finds_each_kind_of_difference("postgresql", "redis");
}

/// memcached keeps whole seconds: the default tolerance still finds 5 s apart.
#[test]
fn diff_memcached_to_sqlite_finds_differences_to_the_second() {
    let Some(src) = Side::fresh("memcached") else { return };
    let Some(tgt) = Side::fresh("sqlite") else { return };
    let e = (now() + 3600.0).round();
    src.load(
        &[line("a", json!(1), Some(e)), line("b", json!({"x": 1}), Some(e)), line("c", json!(1), Some(e))].concat(),
    )
    .ok();
    tgt.load(
        &[line("a", json!(1), Some(e + 5.0)), line("b", json!({"x": 2}), Some(e)), line("d", json!(1), None)].concat(),
    )
    .ok();
    let out = src.run(&["diff", "--to", &tgt.config.display().to_string()]);
    out.code(1);
    assert_differences(
        &out,
        &[
            ("a", Expect::Expires(Some(e), Some(e + 5.0))),
            ("b", Expect::Value(json!({"x": 1}), json!({"x": 2}))),
            ("c", Expect::Only("source")),
            ("d", Expect::Only("target")),
        ],
    );
}

// ---- 2. bad dump lines ------------------------------------------------------------------------------

/// A bad line of a dump, what the message must say about it, and the backends that refuse it
/// (`None`: every backend).
struct BadLine {
    name: &'static str,
    line: Vec<u8>,
    says: &'static str,
    refused_on: Option<&'static [&'static str]>,
}

fn bad_lines(prefix_chars: usize) -> Vec<BadLine> {
    let bad = |name, line: &str, says| BadLine { name, line: line.as_bytes().to_vec(), says, refused_on: None };
    let pg_long = "x".repeat(257 - prefix_chars);
    let mc_long = "m".repeat(251 - prefix_chars);
    vec![
        bad("not_json", "{\"key\": \"k\", \"value\": 1, \"expires\": null", "not JSON"),
        bad("not_json_word", "nope", "not JSON"),
        bad("not_an_object", "[\"k\", 1, null]", "not a JSON object"),
        bad("a_string", "\"k\"", "not a JSON object"),
        bad("no_key", r#"{"value":1,"expires":null}"#, "no \"key\""),
        bad("key_number", r#"{"key":1,"value":1,"expires":null}"#, "\"key\" is not a string"),
        bad("key_null", r#"{"key":null,"value":1,"expires":null}"#, "\"key\" is not a string"),
        bad("empty_key", r#"{"key":"","value":1,"expires":null}"#, "empty"),
        bad("control_key", r#"{"key":"a\u0001b","value":1,"expires":null}"#, "control character"),
        bad("newline_key", r#"{"key":"a\nb","value":1,"expires":null}"#, "control character"),
        bad("no_value", r#"{"key":"k","expires":null}"#, "no \"value\""),
        bad("no_expires", r#"{"key":"k","value":1}"#, "no \"expires\""),
        bad("expires_string", r#"{"key":"k","value":1,"expires":"1795617795"}"#, "\"expires\""),
        bad("expires_bool", r#"{"key":"k","value":1,"expires":true}"#, "\"expires\""),
        bad("value_infinite", r#"{"key":"k","value":1e999,"expires":null}"#, "cannot be stored"),
        bad("value_nested_infinite", r#"{"key":"k","value":{"a":[-1e999]},"expires":null}"#, "cannot be stored"),
        BadLine {
            name: "not_utf8",
            line: b"{\"key\":\"k\xff\",\"value\":1,\"expires\":null}".to_vec(),
            says: "not UTF-8",
            refused_on: None,
        },
        BadLine {
            name: "pg_too_long",
            line: format!(r#"{{"key":"{pg_long}","value":1,"expires":null}}"#).into_bytes(),
            // 257 characters (PostgreSQL), 257 bytes (memcached).
            says: "257",
            refused_on: Some(&["postgresql", "memcached"]),
        },
        BadLine {
            name: "mc_too_long",
            line: format!(r#"{{"key":"{mc_long}","value":1,"expires":null}}"#).into_bytes(),
            says: "251 bytes",
            refused_on: Some(&["memcached"]),
        },
        BadLine {
            name: "mc_space",
            line: br#"{"key":"a b","value":1,"expires":null}"#.to_vec(),
            says: "space",
            refused_on: Some(&["memcached"]),
        },
    ]
}

/// Every bad line on `kind`: status 2, one error line naming line 4 of the dump and what is
/// wrong; on a transactional backend nothing is written (not even the good lines before it, nor
/// an overwrite), elsewhere the entries before it are and the message says how many; the line
/// after it never is.
fn load_refuses_bad_lines(kind: &'static str) {
    let Some(side) = Side::fresh(kind) else { return };
    let atomic = matches!(kind, "sqlite" | "postgresql");
    let e = (now() + 3600.0).round();
    for (i, bad) in bad_lines(side.prefix.len() + 4).into_iter().enumerate() {
        // Each case under a prefix of its own (4 more characters than the side's).
        let prefix = format!("{}{i:03}:", side.prefix);
        assert_eq!(prefix.len(), side.prefix.len() + 4);
        let run = |args: &[&str], stdin: Option<&[u8]>| {
            let mut argv = vec!["--prefix", prefix.as_str()];
            argv.extend_from_slice(args);
            side.env.run_stdin(&argv, stdin)
        };
        run(&["set", "pre", "old", "600"], None).ok();
        let applies = bad.refused_on.is_none_or(|on| on.contains(&kind));
        let mut input = Vec::new();
        input.extend_from_slice(line("pre", json!("new"), Some(e)).as_bytes());
        input.extend_from_slice(b"\n");
        input.extend_from_slice(br#"{"key":"good","value":{"ok":true},"expires":null,"note":"an extra field"}"#);
        input.extend_from_slice(b"\n");
        input.extend_from_slice(&bad.line);
        input.extend_from_slice(b"\n");
        input.extend_from_slice(line("after", json!(1), None).as_bytes());
        let out = run(&["load"], Some(&input));
        let entries = parse_dump(&run(&["dump"], None).ok().stdout);
        if !applies {
            // Another backend's limit: this backend stores it.
            out.ok();
            assert_eq!(entries.len(), 4, "{kind} {}: {entries:?}", bad.name);
            continue;
        }
        let what = format!("{kind}, {}", bad.name);
        out.code(2).one_error_line();
        assert_eq!(out.stdout, "", "{what}");
        assert!(out.stderr.contains("line 4 of the dump"), "{what}: the message does not name line 4:\n{}", out.stderr);
        assert!(out.stderr.contains(bad.says), "{what}: the message does not say {:?}:\n{}", bad.says, out.stderr);
        let keys: Vec<&str> = entries.keys().map(String::as_str).collect();
        if atomic {
            assert!(out.stderr.contains("nothing was written"), "{what}:\n{}", out.stderr);
            assert_eq!(keys, ["pre"], "{what}: a failed load wrote something");
            assert_eq!(entries["pre"].0, json!("old"), "{what}: a failed load overwrote an entry");
        } else {
            assert_eq!(written_before_stop(&out.stderr), 2, "{what}");
            assert_eq!(keys, ["good", "pre"], "{what}: not the entries before the bad line");
            assert_eq!(entries["pre"].0, json!("new"), "{what}");
            assert_eq!(entries["good"], (json!({"ok": true}), None), "{what}");
        }
    }
}

#[test]
fn load_bad_lines_sqlite_write_nothing() {
    load_refuses_bad_lines("sqlite");
}

#[test]
fn load_bad_lines_postgresql_write_nothing() {
    load_refuses_bad_lines("postgresql");
}

#[test]
fn load_bad_lines_redis_stop_after_the_entries_before() {
    load_refuses_bad_lines("redis");
}

#[test]
fn load_bad_lines_memcached_stop_after_the_entries_before() {
    load_refuses_bad_lines("memcached");
}

/// A bad line after several groups of entries (a load writes 1,000 at a time): on a
/// transactional backend the groups already sent are rolled back, elsewhere every entry before
/// the line is written, and the count says so.
fn bad_line_after_many_groups(kind: &'static str) {
    let Some(side) = Side::fresh(kind) else { return };
    side.run(&["set", "k000007", "before", "600"]).ok();
    let mut input = many_lines(2_500);
    input.push_str("{\"key\":\"k\",\"value\":1,\"expires\":\"tomorrow\"}\n");
    input.push_str(&many_lines(10).replace("\"k0", "\"after0"));
    let out = side.load(&input);
    out.code(2).one_error_line().stderr_has("line 2501 of the dump");
    let entries = side.entries();
    if matches!(kind, "sqlite" | "postgresql") {
        out.stderr_has("nothing was written");
        assert_eq!(entries.len(), 1, "{kind}: a load refused at line 2501 wrote something");
        assert_eq!(entries["k000007"].0, json!("before"));
    } else {
        assert_eq!(written_before_stop(&out.stderr), 2_500, "{kind}");
        assert_eq!(entries.len(), 2_500, "{kind}");
        assert_eq!(entries["k000007"].0, json!({"n": 7, "s": "entry 7"}));
        assert!(!entries.keys().any(|k| k.starts_with("after")), "{kind}: a line after the bad one was written");
    }
}

#[test]
fn load_bad_line_after_many_groups_sqlite() {
    bad_line_after_many_groups("sqlite");
}

#[test]
fn load_bad_line_after_many_groups_postgresql() {
    bad_line_after_many_groups("postgresql");
}

#[test]
fn load_bad_line_after_many_groups_redis() {
    bad_line_after_many_groups("redis");
}

#[test]
fn load_bad_line_after_many_groups_memcached() {
    bad_line_after_many_groups("memcached");
}

/// Blank lines (empty, spaces, CRLF) are skipped, unknown fields ignored, lines may end with
/// CRLF, the last line needs no newline, and a key at the backend's limit is fine.
fn load_skips_blank_lines_and_extra_fields(kind: &'static str) {
    let Some(side) = Side::fresh(kind) else { return };
    let e = (now() + 3600.0).round();
    let limit = match kind {
        "postgresql" => 256 - side.prefix.chars().count(),
        "memcached" => 250 - side.prefix.len(),
        _ => 300,
    };
    let long = "L".repeat(limit);
    let text = format!(
        "\n   \n\t\n\r\n{}\n\n{}\r\n  \n{}\n{}",
        r#"{"key":"a","value":1,"expires":null,"source":"old cache","x":{"nested":[1,2]}}"#,
        r#"{"expires":null,"value":{"k":"v"},"key":"b"}"#,
        json!({"key": long, "value": "long", "expires": e}),
        r#"{"key":"c","value":[],"expires":null}"#,
    );
    let out = side.env.run_stdin(&["-v", "load"], Some(text.as_bytes()));
    out.ok();
    assert!(out.stderr.contains("wrote 4 entries"), "-v reports the count:\n{}", out.stderr);
    let entries = side.entries();
    let keys: Vec<&str> = entries.keys().map(String::as_str).collect();
    let mut wanted = vec!["a", "b", "c", long.as_str()];
    wanted.sort();
    assert_eq!(keys, wanted);
    assert_eq!(entries["a"].0, json!(1));
    assert_eq!(entries["b"].0, json!({"k": "v"}));
    assert_eq!(entries["c"].0, json!([]));
}

#[test]
fn load_skips_blank_lines_and_extra_fields_sqlite() {
    load_skips_blank_lines_and_extra_fields("sqlite");
}

#[test]
fn load_skips_blank_lines_and_extra_fields_postgresql() {
    load_skips_blank_lines_and_extra_fields("postgresql");
}

#[test]
fn load_skips_blank_lines_and_extra_fields_redis() {
    load_skips_blank_lines_and_extra_fields("redis");
}

#[test]
fn load_skips_blank_lines_and_extra_fields_memcached() {
    load_skips_blank_lines_and_extra_fields("memcached");
}

// ---- 3. servers killed or frozen during a transfer ----------------------------------------------

/// A networked server of the test's own.
enum Own {
    Redis(OwnRedis),
    Memcached(OwnMemcached),
    Pg(OwnPostgres),
}

impl Own {
    /// Redis keeps every acknowledged write across a kill (`appendfsync always`).
    fn start(kind: &str) -> Option<Own> {
        Some(match kind {
            "redis" => Own::Redis(OwnRedis::start(&["--appendonly", "yes", "--appendfsync", "always"])?),
            "memcached" => Own::Memcached(OwnMemcached::start()?),
            "postgresql" => Own::Pg(OwnPostgres::start()?),
            other => panic!("no server for {other}"),
        })
    }

    /// A TOML description of a cache on this server, pool_timeout [`POOL_TIMEOUT`].
    fn side(&self, prefix: &str) -> Side {
        let (kind, location) = match self {
            Own::Redis(s) => ("redis", ("url", q(&s.url()))),
            Own::Memcached(s) => ("memcached", ("hosts", format!("[{}]", q(&s.host())))),
            Own::Pg(s) => ("postgresql", ("url", q(&s.url("postgres")))),
        };
        let mut side =
            Side::with(kind, vec![("backend", q(kind)), location, ("pool_timeout", POOL_TIMEOUT.to_string())], prefix);
        if let Own::Redis(s) = self {
            side.redis_url = Some(s.url());
        }
        if kind == "postgresql" {
            side.run(&["migrate"]).ok();
        }
        side
    }

    fn address(&self) -> String {
        let port = match self {
            Own::Redis(s) => s.port,
            Own::Memcached(s) => s.port,
            Own::Pg(s) => s.port,
        };
        format!("127.0.0.1:{port}")
    }

    /// How many entries the server holds (read by the server itself: DBSIZE, curr_items).
    fn items(&self) -> u64 {
        match self {
            Own::Redis(s) => {
                let mut conn = servers::redis_client(&s.url());
                redis::cmd("DBSIZE").query(&mut conn).expect("DBSIZE")
            }
            Own::Memcached(s) => s.stat("curr_items"),
            Own::Pg(_) => panic!("rows of a load are not visible before its commit"),
        }
    }

    fn kill(&mut self) {
        match self {
            Own::Redis(s) => s.kill(),
            Own::Memcached(s) => s.kill(),
            Own::Pg(s) => s.crash(),
        }
    }

    fn restart(&mut self) {
        match self {
            Own::Redis(s) => s.restart(),
            Own::Memcached(s) => s.restart(),
            Own::Pg(s) => s.restart(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Own::Redis(s) => s.pids(),
            Own::Memcached(s) => s.pids(),
            Own::Pg(s) => s.pids(),
        }
    }

    /// How long a command may wait for this server once it stopped answering (README): Redis
    /// its command timeout (10 s), PostgreSQL pool_timeout + 5 s, memcached pool_timeout.
    fn hung_bound(&self) -> Duration {
        Duration::from_secs(match self {
            Own::Redis(_) => 10,
            Own::Pg(_) => POOL_TIMEOUT + 5,
            Own::Memcached(_) => POOL_TIMEOUT,
        }) + SLACK
    }
}

/// kcache running in the background, its input fed by a thread of the test's and its output
/// read by another, which counts the bytes (to act in the middle of a dump).
struct Running {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// Bytes of standard output read so far.
    out_bytes: Arc<AtomicU64>,
    args: Vec<String>,
}

/// How a background run ended.
struct Ended {
    status: i32,
    stdout: Vec<u8>,
    stderr: String,
    /// From [`Running::wait`]'s call to the end.
    took: Duration,
}

impl Running {
    fn spawn(env: &Env, args: &[&str], stdin: Option<Box<dyn FnOnce(std::process::ChildStdin) + Send>>) -> Running {
        let mut cmd = env.command();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("spawn kcache");
        if let (Some(feed), Some(pipe)) = (stdin, child.stdin.take()) {
            std::thread::spawn(move || feed(pipe));
        }
        let out_bytes = Arc::new(AtomicU64::new(0));
        let mut out = child.stdout.take().expect("stdout");
        let counter = out_bytes.clone();
        let stdout = Some(std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
            all
        }));
        let mut err = child.stderr.take().expect("stderr");
        let stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        Running { child, stdout, stderr, out_bytes, args: args.iter().map(|s| s.to_string()).collect() }
    }

    /// Waits until `ready` holds (polled), failing the test if the run ended first or after
    /// `within`.
    #[track_caller]
    fn until(&mut self, what: &str, within: Duration, mut ready: impl FnMut(&Running) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if ready(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                panic!("kcache {:?} ended ({status}) before {what}; stderr:\n{stderr}", self.args);
            }
            assert!(Instant::now() < deadline, "kcache {:?}: not {what} within {within:?}", self.args);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the end, at most `within` (then kills it and fails the test).
    #[track_caller]
    fn wait(mut self, within: Duration) -> Ended {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                panic!("kcache {:?} did not end within {within:?} (killed); stderr:\n{stderr}", self.args);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = started.elapsed();
        let stdout = self.stdout.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(!stderr.contains(bad), "kcache {:?} panicked:\n{stderr}", self.args);
        }
        Ended { status: status.code().unwrap_or(-1), stdout, stderr, took }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A feeder that writes `text` and closes the input.
fn feed(text: String) -> Option<Box<dyn FnOnce(std::process::ChildStdin) + Send>> {
    Some(Box::new(move |mut pipe: std::process::ChildStdin| {
        let _ = pipe.write_all(text.as_bytes());
    }))
}

/// The target of a load or copy (`how`) killed with SIGKILL while it is written: status 3 in
/// bounded time, with how many entries were written; the server restarted, the same command
/// completes the job.
fn target_killed_midway(kind: &str, how: &str) {
    let Some(mut server) = Own::start(kind) else { return };
    let target = server.side("t:");
    let input = many_lines(MANY);
    // copy: the same entries from an SQLite file.
    let source = if how == "copy" {
        let Some(source) = Side::fresh("sqlite") else { return };
        source.load(&input).ok();
        Some(source)
    } else {
        None
    };
    let to = target.config.display().to_string();
    let (env, args): (&Env, Vec<&str>) = match &source {
        Some(s) => (&s.env, vec!["copy", "--to", &to]),
        None => (&target.env, vec!["load"]),
    };
    let stdin = || if how == "load" { feed(input.clone()) } else { None };

    let mut running = Running::spawn(env, &args, stdin());
    running.until("halfway", HANG, |_| server.items() >= 30_000);
    server.kill();
    let end = running.wait(server.hung_bound() + SLACK);
    let what = format!("{how} into {kind}");
    assert_eq!(end.status, 3, "{what}: status {}; stderr:\n{}", end.status, end.stderr);
    assert!(end.took < Duration::from_secs(POOL_TIMEOUT) + SLACK, "{what} took {:?} after the kill", end.took);
    assert!(end.stderr.starts_with("kcache: error: "), "{what}:\n{}", end.stderr);
    assert_eq!(end.stderr.lines().count(), 1, "{what}: one error line:\n{}", end.stderr);
    if kind == "memcached" {
        // SPEC: an unreachable memcached server is an error that names it.
        assert!(
            end.stderr.contains(&server.address()),
            "{what}: the message does not name the server:\n{}",
            end.stderr
        );
    }
    let written = written_before_stop(&end.stderr);
    assert!(written < MANY as u64, "{what}: {written} written");

    server.restart();
    if kind == "redis" {
        // Every write reported as done survived (appendfsync always).
        let kept = server.items();
        assert!(kept >= written, "{what}: {written} reported written, {kept} on the server");
    }
    let again = run_within(env, &args, if how == "load" { Some(input.as_bytes()) } else { None }, HANG);
    again.ok().stdout_is("");
    assert_eq!(again.stderr, "", "{what}, again");
    assert_eq!(key_count(&target.env), MANY, "{what}: the rerun did not complete the job");
    let entries = target.entries();
    assert_eq!(entries.len(), MANY);
    assert_eq!(entries["k123456"].0, json!({"n": 123456, "s": "entry 123456"}));
}

#[test]
fn load_into_redis_killed_midway_is_status_3_and_a_rerun_completes() {
    target_killed_midway("redis", "load");
}

#[test]
fn load_into_memcached_killed_midway_is_status_3_and_a_rerun_completes() {
    target_killed_midway("memcached", "load");
}

#[test]
fn copy_into_redis_killed_midway_is_status_3_and_a_rerun_completes() {
    target_killed_midway("redis", "copy");
}

#[test]
fn copy_into_memcached_killed_midway_is_status_3_and_a_rerun_completes() {
    target_killed_midway("memcached", "copy");
}

/// PostgreSQL crashed in the middle of a load (one transaction): status 3, nothing written (the
/// entry it held before is unchanged), and the rerun writes everything.
#[test]
fn load_into_postgresql_killed_midway_writes_nothing_and_a_rerun_completes() {
    let Some(mut server) = Own::start("postgresql") else { return };
    let target = server.side("t:");
    target.run(&["set", "k000007", "before", "600"]).ok();
    let input = many_lines(MANY);
    let half = input.match_indices('\n').nth(MANY / 2).expect("half").0 + 1;
    let (first, rest) = (input[..half].to_string(), input[half..].to_string());
    // The first half goes in, then the server dies, then the rest comes.
    let (sent, first_sent) = std::sync::mpsc::channel();
    let (go, resume) = std::sync::mpsc::channel::<()>();
    let feeder: Box<dyn FnOnce(std::process::ChildStdin) + Send> = Box::new(move |mut pipe| {
        let _ = pipe.write_all(first.as_bytes());
        let _ = sent.send(());
        if resume.recv().is_ok() {
            let _ = pipe.write_all(rest.as_bytes());
        }
    });
    let running = Running::spawn(&target.env, &["load"], Some(feeder));
    first_sent.recv_timeout(HANG).expect("the first half was read");
    // What was read is on its way to the server (a pipe holds 64 KiB, the load 4 groups).
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    let _ = go.send(());
    let end = running.wait(server.hung_bound() + SLACK);
    assert_eq!(end.status, 3, "stderr:\n{}", end.stderr);
    assert!(end.took < server.hung_bound(), "took {:?} after the crash", end.took);
    assert!(end.stderr.contains("nothing was written"), "{}", end.stderr);
    assert_eq!(end.stderr.lines().count(), 1, "{}", end.stderr);

    server.restart();
    let entries = target.entries();
    assert_eq!(entries.len(), 1, "a load cut short wrote something");
    assert_eq!(entries["k000007"].0, json!("before"));
    run_within(&target.env, &["load"], Some(input.as_bytes()), HANG).ok().stdout_is("");
    assert_eq!(key_count(&target.env), MANY);
    assert_eq!(target.entries()["k000007"].0, json!({"n": 7, "s": "entry 7"}));
}

/// The source of a dump killed (SIGKILL) or frozen (SIGSTOP) midway: status 3 in bounded time,
/// and what was written is whole lines, each a complete entry.
fn source_fails_during_dump(kind: &str, freeze: bool) {
    let Some(mut server) = Own::start(kind) else { return };
    let source = server.side("s:");
    source.load(&many_lines(MANY)).ok();
    let mut running = Running::spawn(&source.env, &["dump"], None);
    running.until("1 MB into the dump", HANG, |r| r.out_bytes.load(Ordering::SeqCst) >= 1 << 20);
    let pids = server.pids();
    let thaw = if freeze {
        signal("-STOP", &pids);
        Some(pids)
    } else {
        server.kill();
        None
    };
    let bound = if freeze { server.hung_bound() } else { Duration::from_secs(POOL_TIMEOUT) + SLACK };
    let end = running.wait(bound + SLACK);
    if let Some(pids) = &thaw {
        signal("-CONT", pids);
    }
    let what = format!("dump of {kind}, {}", if freeze { "frozen" } else { "killed" });
    assert_eq!(end.status, 3, "{what}: stderr:\n{}", end.stderr);
    assert!(end.took < bound, "{what}: took {:?}", end.took);
    assert_eq!(end.stderr.lines().count(), 1, "{what}: one error line:\n{}", end.stderr);
    assert!(end.stderr.contains(&server.address()), "{what}: the message does not name the server:\n{}", end.stderr);
    let text = String::from_utf8(end.stdout).expect("a dump is UTF-8");
    assert!(text.len() >= 1 << 20, "{what}");
    assert!(text.ends_with('\n'), "{what}: the dump ends with part of a line: {:?}", &text[text.len() - 80..]);
    let entries = parse_dump(&text);
    assert!(entries.len() < MANY, "{what}: {} entries", entries.len());
    for (key, (value, expires)) in &entries {
        let n: u64 = key[1..].parse().expect("k<n>");
        assert_eq!(value, &json!({"n": n, "s": format!("entry {n}")}), "{what}: {key}");
        assert!(expires.is_some(), "{what}: {key}");
    }
}

#[test]
fn dump_of_redis_killed_midway_is_status_3_with_whole_lines() {
    source_fails_during_dump("redis", false);
}

#[test]
fn dump_of_memcached_killed_midway_is_status_3_with_whole_lines() {
    source_fails_during_dump("memcached", false);
}

#[test]
fn dump_of_postgresql_killed_midway_is_status_3_with_whole_lines() {
    source_fails_during_dump("postgresql", false);
}

#[test]
fn dump_of_redis_frozen_midway_is_status_3_within_the_command_timeout_with_whole_lines() {
    source_fails_during_dump("redis", true);
}

#[test]
fn dump_of_memcached_frozen_midway_is_status_3_within_pool_timeout_with_whole_lines() {
    source_fails_during_dump("memcached", true);
}

/// `sh -c 'kcache dump | head -1'`: kcache's status (PIPESTATUS) and what it wrote on stderr.
fn dump_into_head(env: &Env, args: &str) -> (String, i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = dir.path().join("stderr");
    let script = format!(
        "{} {args} 2>{} | head -1; echo \"status=${{PIPESTATUS[0]}}\"",
        shell_quote(crate::util::BIN),
        shell_quote(&err.display().to_string())
    );
    let mut cmd = env_command(env, "bash");
    let out = cmd.args(["-c", &script]).stdin(Stdio::null()).output().expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (first, status) = stdout.rsplit_once("status=").expect("the status line");
    let status: i32 = status.trim().parse().expect("a status");
    (first.to_string(), status, std::fs::read_to_string(err).unwrap_or_default())
}

/// A dump whose reader goes away (`| head -1`) ends quietly: status 0, nothing on stderr; and a
/// diff too, with status 1 (the caches differ: a closed pipe does not make them equal).
fn dump_into_head_ends_quietly(kind: &'static str) {
    let Some(side) = Side::fresh(kind) else { return };
    side.load(&many_lines(MANY)).ok();
    let (first, status, stderr) = dump_into_head(&side.env, "dump");
    assert_eq!((status, stderr.as_str()), (0, ""), "kcache dump | head -1 on {kind}");
    let (key, _, _) = entry_of(first.trim_end());
    assert!(key.starts_with('k'), "{first}");
    // With a pattern, too.
    let (first, status, stderr) = dump_into_head(&side.env, "dump 'k1*'");
    assert_eq!((status, stderr.as_str()), (0, ""), "kcache dump 'k1*' | head -1 on {kind}");
    assert!(entry_of(first.trim_end()).0.starts_with("k1"), "{first}");
}

#[test]
fn dump_into_head_ends_quietly_sqlite() {
    dump_into_head_ends_quietly("sqlite");
}

#[test]
fn dump_into_head_ends_quietly_redis() {
    dump_into_head_ends_quietly("redis");
}

/// `diff | head -1` with many differences: quiet, and still status 1 (a closed pipe does not
/// make the caches equal: status 0 would tell a script they are).
#[test]
fn diff_into_head_is_quiet_and_still_says_the_caches_differ() {
    let Some(src) = Side::fresh("sqlite") else { return };
    let Some(tgt) = Side::fresh("sqlite") else { return };
    src.load(&many_lines(MANY / 4)).ok();
    let (first, status, stderr) =
        dump_into_head(&src.env, &format!("diff --to {}", shell_quote(&tgt.config.display().to_string())));
    let doc: Value = serde_json::from_str(first.trim_end()).expect("a diff line");
    assert_eq!(doc["only_in"], "source", "{doc}");
    assert_eq!(stderr, "", "kcache diff | head -1");
    assert_eq!(status, 1, "kcache diff | head -1: the caches differ");
}

/// Standard output that fails for another reason than a closed pipe (a full disk): status 5
/// for a dump that read everything, with the error.
#[test]
fn dump_to_a_full_disk_is_status_5() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let Some(side) = Side::fresh("sqlite") else { return };
    side.load(&many_lines(10_000)).ok();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let out = side.env.command().arg("dump").stdout(full).stderr(Stdio::piped()).output().expect("kcache");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    // The output failed, not the source: the message says so, with the cause.
    assert!(stderr.starts_with("kcache: error: cannot write to standard output: "), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

// ---- 4. progress on a terminal only ----------------------------------------------------------------

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `program` with the hermetic environment of `env` (as [`Env::command`] sets it for kcache).
fn env_command(env: &Env, program: &str) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", env.dir.path())
        .env("XDG_CONFIG_HOME", env.path("config"))
        .env("XDG_CACHE_HOME", env.path("cache"))
        .env("SHELL", "/bin/sh")
        .env("TERM", "xterm")
        .current_dir(env.dir.path());
    for (k, v) in &env.vars {
        c.env(k, v);
    }
    c
}

/// Whether util-linux's `script` is there (else skipped, or failed under CI).
fn have_script() -> bool {
    let found = Command::new("script").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    servers::require(found, "script (util-linux, for a pseudo-terminal)")
}

/// Runs `shell` (a shell command line) with its standard error on a pseudo-terminal
/// (`script`), and returns what the terminal showed and the command's status.
fn on_a_terminal(env: &Env, shell: &str) -> (String, i32) {
    let mut cmd = env_command(env, "script");
    cmd.args(["-qfec", shell, "/dev/null"]).stdin(Stdio::null());
    let out = cmd.output().expect("script");
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code().unwrap_or(-1))
}

/// Progress of `dump`, `load`, `copy` and `diff`: on a terminal it is shown (with the command's
/// name and a count of entries), with `-q` it is not, and with standard error on a pipe nothing
/// but errors is written there.
#[test]
fn progress_shows_on_a_terminal_only() {
    if !have_script() {
        return;
    }
    let Some(src) = Side::fresh("sqlite") else { return };
    let Some(tgt) = Side::fresh("sqlite") else { return };
    let input = many_lines(MANY);
    let dump_file = src.env.write("in.jsonl", &input);
    let bin = shell_quote(crate::util::BIN);
    let to = shell_quote(&tgt.config.display().to_string());
    let file = shell_quote(&dump_file.display().to_string());
    let commands = [
        ("load", format!("{bin} QUIET load < {file}")),
        ("dump", format!("{bin} QUIET dump > /dev/null")),
        ("copy", format!("{bin} QUIET copy --to {to}")),
        ("diff", format!("{bin} QUIET diff --to {to} > /dev/null")),
    ];
    for (name, shell) in &commands {
        let (shown, status) = on_a_terminal(&src.env, &shell.replace("QUIET", ""));
        assert_eq!(status, 0, "{name} on a terminal:\n{shown}");
        assert!(shown.contains(&format!("kcache {name}:")), "no progress from {name} on a terminal:\n{shown:?}");
        assert!(shown.contains("entries"), "{name}'s progress counts entries:\n{shown:?}");
        assert!(!shown.contains("error"), "{name}:\n{shown}");

        let (shown, status) = on_a_terminal(&src.env, &shell.replace("QUIET", "-q"));
        assert_eq!(status, 0, "{name} -q on a terminal:\n{shown}");
        assert!(!shown.contains("kcache") && !shown.contains("entries"), "progress from {name} -q:\n{shown:?}");
    }
    // Standard error on a pipe: nothing.
    let to = tgt.config.display().to_string();
    let out = src.env.run_stdin(&["load"], Some(input.as_bytes()));
    out.ok();
    assert_eq!(out.stderr, "", "kcache load with standard error on a pipe");
    for args in [vec!["dump"], vec!["copy", "--to", &to], vec!["diff", "--to", &to]] {
        let out = src.run(&args);
        out.ok();
        assert_eq!(out.stderr, "", "kcache {args:?} with standard error on a pipe");
    }
}

// ---- 5. input errors before anything is sent ------------------------------------------------------

/// A closed loopback port (connecting is refused).
fn dead_redis() -> String {
    format!("redis://127.0.0.1:{}/0", servers::free_port())
}

/// Bad arguments of the transfer commands are status 2, with nothing sent: the target is
/// unchanged, and a source or target whose server is down is never reached (not status 3).
#[test]
fn transfer_input_errors_are_status_2_before_anything_is_sent() {
    let Some(src) = Side::fresh("sqlite") else { return };
    let Some(tgt) = Side::fresh("sqlite") else { return };
    let e = (now() + 3600.0).round();
    src.load(&[line("a", json!(1), Some(e)), line("b", json!(2), None)].concat()).ok();
    tgt.load(&line("t", json!("kept"), None)).ok();
    let before = tgt.entries();
    let to = tgt.config.display().to_string();
    let dead = Side::with("redis", vec![("backend", q("redis")), ("url", q(&dead_redis()))], "d:");
    let dead_to = dead.config.display().to_string();
    let missing = src.env.path("nowhere/none.toml").display().to_string();
    let bad_toml =
        src.env.write("bad.toml", "[cache]\nbackend = \"sqlite\"\nflavour = \"vanilla\"\n").display().to_string();

    let cases: Vec<(&Side, Vec<&str>, &str)> = vec![
        (&src, vec!["copy", "--to", "/nonexistent.toml"], "/nonexistent.toml"),
        (&src, vec!["copy", "--to", &missing], "does not exist"),
        (&src, vec!["diff", "--to", &missing], "does not exist"),
        (&src, vec!["copy", "--to", &bad_toml], "flavour"),
        (&src, vec!["diff", "--to", &bad_toml], "flavour"),
        (&src, vec!["copy", "--to", &to, "bad["], "bad["),
        (&src, vec!["copy", "--to", &to, "x\\"], "x\\"),
        (&src, vec!["diff", "--to", &to, "bad["], "bad["),
        (&src, vec!["dump", "x\\"], "x\\"),
        (&src, vec!["dump", "[a-"], "[a-"),
        // Bad input with a server that is down: refused before any connection.
        (&dead, vec!["dump", "x\\"], "x\\"),
        (&dead, vec!["copy", "--to", &to, "bad["], "bad["),
        (&dead, vec!["copy", "--to", "/nonexistent.toml"], "/nonexistent.toml"),
        (&dead, vec!["diff", "--to", &to, "bad["], "bad["),
        (&src, vec!["copy", "--to", &dead_to, "bad["], "bad["),
        (&src, vec!["diff", "--to", &dead_to, "x\\"], "x\\"),
    ];
    for (side, args, says) in &cases {
        let out = run_within(&side.env, args, None, Duration::from_secs(30));
        out.code(2).stdout_is("").one_error_line();
        assert!(out.stderr.contains(says), "kcache {args:?} does not name {says:?}:\n{}", out.stderr);
        assert_eq!(tgt.entries(), before, "kcache {args:?} changed the target");
    }
    // A bad tolerance is refused by the argument parser (its own message), status 2.
    for args in [
        vec!["diff", "--ttl-tolerance", "-1", "--to", &to],
        vec!["diff", "--ttl-tolerance=-1", "--to", &to],
        vec!["diff", "--ttl-tolerance", "soon", "--to", &to],
        vec!["diff", "--ttl-tolerance", "-1", "--to", &dead_to],
    ] {
        let out = run_within(&src.env, &args, None, Duration::from_secs(30));
        out.code(2).stdout_is("");
        assert!(out.stderr.contains("-1") || out.stderr.contains("soon"), "kcache {args:?}:\n{}", out.stderr);
    }
    let out = src.run(&["copy"]);
    out.code(2).stdout_is("");
    assert!(out.stderr.contains("--to"), "{}", out.stderr);
    assert_eq!(tgt.entries(), before);
    // A load whose first line is bad, into a server that is down: nothing was to be sent.
    let out = run_within(&dead.env, &["load"], Some(b"nope\n"), Duration::from_secs(30));
    out.code(2).stderr_has("line 1 of the dump");
}
