//! The backend conformance suite: SPEC's cache contract, written once and run against every
//! backend through the library (no process per call). Each test gets its own storage or its own
//! prefix, so backends on shared servers can run the suite in parallel.
//!
//! To add a backend: add an arm to `open` and its name to `for_backends!` at the bottom.

use crate::util::{left, secs, settings, string};
use kcache::backend::{Cache, GroupOp, GroupResult};
use kcache::error::ErrorKind;
use kcache::settings::Raw;
use kcache::ttl::{Remaining, Ttl};
use kcache::value;
use std::time::Duration;

/// One test's backend: a cache with a fresh prefix, and a way to open more on the same storage.
pub struct Fixture {
    pub cache: Cache,
    /// Whether this fixture's storage belongs to this test alone (then `flush --all` is safe).
    pub isolated: bool,
    /// Whatever must outlive the cache (a temp folder, a database dropped on drop).
    _guard: Option<Box<dyn std::any::Any>>,
}

impl Fixture {
    /// Another cache on the same storage, with `prefix`.
    pub fn other(&self, prefix: &str) -> Cache {
        self.cache.sibling(prefix).expect("sibling cache")
    }
}

/// Opens `kind` for one test, or `None` (with a loud `skipped:` line) when its server is not
/// available outside CI.
pub fn open(kind: &str) -> Option<Fixture> {
    let prefix = crate::util::unique("t");
    let prefix = format!("{prefix}:");
    match kind {
        "memory" => {
            let s = settings(&[("backend", Raw::Str("memory".into())), ("prefix", Raw::Str(prefix))]);
            Some(Fixture { cache: kcache::backend::open(&s).expect("open"), isolated: true, _guard: None })
        }
        "sqlite" => {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("cache.sqlite3");
            let s = settings(&[
                ("backend", Raw::Str("sqlite".into())),
                ("path", Raw::Str(path.display().to_string())),
                ("prefix", Raw::Str(prefix)),
            ]);
            Some(Fixture {
                cache: kcache::backend::open(&s).expect("open"),
                isolated: true,
                _guard: Some(Box::new(dir)),
            })
        }
        #[cfg(feature = "postgresql")]
        "postgresql" => {
            let db = crate::util::rig::RigDb::create()?;
            let s = settings(&[
                ("backend", Raw::Str("postgresql".into())),
                ("url", Raw::Str(db.url())),
                ("prefix", Raw::Str(prefix)),
                ("pool_timeout", Raw::Int(10)),
            ]);
            let mut cache = kcache::backend::open(&s).expect("open");
            cache.migrate(false).expect("migrate");
            Some(Fixture { cache, isolated: true, _guard: Some(Box::new(db)) })
        }
        "redis" | "redis_cluster" | "redis_sentinel" => {
            let var = match kind {
                "redis_cluster" => "KCACHE_TEST_REDIS_CLUSTER_URL",
                "redis_sentinel" => "KCACHE_TEST_REDIS_SENTINEL_URL",
                _ => "KCACHE_TEST_REDIS_URL",
            };
            let url = crate::util::rig::server(var)?;
            let s = settings(&[
                ("backend", Raw::Str("redis".into())),
                ("url", Raw::Str(url)),
                ("prefix", Raw::Str(prefix)),
                ("pool_timeout", Raw::Int(10)),
            ]);
            Some(Fixture { cache: kcache::backend::open(&s).expect("open"), isolated: false, _guard: None })
        }
        "memcached" => {
            let hosts = crate::util::rig::server("KCACHE_TEST_MEMCACHED")?;
            let s = settings(&[
                ("backend", Raw::Str("memcached".into())),
                ("hosts", Raw::Str(hosts)),
                ("prefix", Raw::Str(prefix)),
            ]);
            Some(Fixture { cache: kcache::backend::open(&s).expect("open"), isolated: false, _guard: None })
        }
        other if !crate::util::rig::compiled(other.split('_').next().unwrap_or(other)) => None,
        other => panic!("no fixture for backend {other}"),
    }
}

fn run(module: &str, test: fn(&mut Fixture)) {
    let kind = module.rsplit("::").next().expect("module path");
    if let Some(mut fx) = open(kind) {
        test(&mut fx);
    }
}

// ---- the contract -------------------------------------------------------------------------

fn add_and_delete_if_are_memos_lock(fx: &mut Fixture) {
    let (a, b) = (string("a"), string("b"));
    assert!(fx.cache.add("l", &a, secs("60")).unwrap(), "add on a missing key stores it");
    assert!(!fx.cache.add("l", &b, secs("60")).unwrap(), "add on a live key stores nothing");
    assert_eq!(fx.cache.get("l").unwrap(), Some(a.clone()));
    assert!(!fx.cache.delete_if("l", &b).unwrap(), "another value: kept");
    assert_eq!(fx.cache.get("l").unwrap(), Some(a.clone()));
    assert!(fx.cache.delete_if("l", &a).unwrap());
    assert_eq!(fx.cache.get("l").unwrap(), None);
    assert!(!fx.cache.delete_if("l", &a).unwrap(), "a missing key: nothing to remove");
    // An expired entry counts as absent.
    assert!(fx.cache.add("e", &a, secs("0.05")).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(fx.cache.add("e", &b, secs("60")).unwrap(), "add over an expired entry stores it");
    assert_eq!(fx.cache.get("e").unwrap(), Some(b));
}

fn set_then_get(fx: &mut Fixture) {
    fx.cache.set("k", &string("v"), secs("60")).unwrap();
    assert_eq!(fx.cache.get("k").unwrap(), Some(string("v")));
}

fn missing_key_is_none_everywhere(fx: &mut Fixture) {
    assert_eq!(fx.cache.get("nope").unwrap(), None);
    assert_eq!(fx.cache.ttl("nope").unwrap(), Remaining::Missing);
    assert!(!fx.cache.expire("nope", secs("10")).unwrap());
    assert_eq!(fx.cache.delete("nope").unwrap(), None);
    assert_eq!(fx.cache.get("nope").unwrap(), None, "expire on a missing key creates nothing");
}

fn overwrite_replaces_value_and_ttl(fx: &mut Fixture) {
    fx.cache.set("k", &string("one"), secs("1000")).unwrap();
    fx.cache.set("k", &string("two"), secs("10")).unwrap();
    assert_eq!(fx.cache.get("k").unwrap(), Some(string("two")));
    assert!(left(fx.cache.ttl("k").unwrap()) <= Duration::from_secs(10));
}

fn every_json_type_round_trips_byte_for_byte(fx: &mut Fixture) {
    let docs = [
        r#""plain""#,
        r#""é☃😀""#,
        r#""quotes \" and \\ and \n""#,
        r#""""#,
        "0",
        "-42",
        "1180591620717411303424",
        "3.14",
        "1e16",
        "-0.0",
        "true",
        "false",
        "null",
        "[]",
        "{}",
        r#"{"b":1,"a":[1,2,{"é":null}]}"#,
    ];
    for (i, doc) in docs.iter().enumerate() {
        let encoded = value::encode_json(doc).unwrap();
        let key = format!("doc{i}");
        fx.cache.set(&key, &encoded, secs("60")).unwrap();
        assert_eq!(fx.cache.get(&key).unwrap().as_deref(), Some(encoded.as_str()), "{doc}");
    }
}

/// A document nested as deep as Python's `json` (Kinto) reads, and as deep as kcache reads:
/// stored and read back whole, alone and in a group (memcached parses its envelope on reads).
/// Run on a thread with the stack kcache gives its batch threads (a test thread's 2 MiB is too
/// little for 2,048 levels in a debug build).
fn deeply_nested_values_round_trip(fx: &mut Fixture) {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new().stack_size(kcache::batch::WORKER_STACK);
        worker.spawn_scoped(scope, || deep_values(&mut fx.cache)).expect("thread").join().expect("no panic");
    });
}

fn deep_values(cache: &mut Cache) {
    for levels in [200, 995, value::MAX_DEPTH] {
        let doc = format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        let encoded = value::encode_json(&doc).unwrap();
        cache.set("deep", &encoded, secs("60")).unwrap();
        assert_eq!(cache.get("deep").unwrap().as_deref(), Some(doc.as_str()), "{levels} levels");
        let group = cache.run_group(&[GroupOp::Get("deep"), GroupOp::Delete("deep")]);
        let got: Vec<_> = group.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, vec![GroupResult::Value(Some(doc.clone())); 2], "{levels} levels");
    }
}

fn unicode_keys_work(fx: &mut Fixture) {
    fx.cache.set("clé-☃", &string("v"), secs("60")).unwrap();
    assert_eq!(fx.cache.get("clé-☃").unwrap(), Some(string("v")));
    assert_eq!(fx.cache.get("cle-☃").unwrap(), None);
}

fn large_value(fx: &mut Fixture) {
    let big = "x".repeat(256 * 1024); // within memory's default max_size_bytes
    fx.cache.set("big", &string(&big), secs("60")).unwrap();
    assert_eq!(fx.cache.get("big").unwrap().map(|v| v.len()), Some(big.len() + 2));
}

fn delete_returns_the_value_once(fx: &mut Fixture) {
    fx.cache.set("k", &string("v"), secs("60")).unwrap();
    assert_eq!(fx.cache.delete("k").unwrap(), Some(string("v")));
    assert_eq!(fx.cache.delete("k").unwrap(), None);
    assert_eq!(fx.cache.get("k").unwrap(), None);
}

fn ttl_is_what_was_set(fx: &mut Fixture) {
    for (ttl, secs_) in [("10", 10), ("61", 61), ("3600", 3600), ("40d", 40 * 86400)] {
        fx.cache.set("k", &string("v"), secs(ttl)).unwrap();
        let d = left(fx.cache.ttl("k").unwrap());
        assert!(d <= Duration::from_secs(secs_), "{ttl}: {d:?}");
        assert!(d > Duration::from_secs(secs_) - Duration::from_secs(2), "{ttl}: {d:?}");
        assert_eq!(kcache::ttl::whole_seconds_up(d), secs_, "{ttl} rounds up to itself");
    }
}

fn set_with_ttl_zero_removes_the_key(fx: &mut Fixture) {
    fx.cache.set("k", &string("v"), secs("60")).unwrap();
    fx.cache.set("k", &string("w"), secs("0")).unwrap();
    assert_eq!(fx.cache.get("k").unwrap(), None);
    assert_eq!(fx.cache.ttl("k").unwrap(), Remaining::Missing);
    fx.cache.set("fresh", &string("w"), secs("0")).unwrap();
    assert_eq!(fx.cache.get("fresh").unwrap(), None);
}

fn expire_sets_a_new_ttl(fx: &mut Fixture) {
    fx.cache.set("k", &string("v"), secs("10")).unwrap();
    assert!(fx.cache.expire("k", secs("2h")).unwrap());
    let d = left(fx.cache.ttl("k").unwrap());
    assert!(d > Duration::from_secs(7000) && d <= Duration::from_secs(7200), "{d:?}");
    assert_eq!(fx.cache.get("k").unwrap(), Some(string("v")));
}

fn expire_zero_expires_now(fx: &mut Fixture) {
    fx.cache.set("k", &string("v"), secs("60")).unwrap();
    assert!(fx.cache.expire("k", secs("0")).unwrap());
    assert_eq!(fx.cache.get("k").unwrap(), None);
    assert!(!fx.cache.expire("k", secs("0")).unwrap());
}

fn sub_second_ttl_expires_on_time(fx: &mut Fixture) {
    fx.cache.set("k", &string("v"), secs("0.4")).unwrap();
    assert_eq!(fx.cache.get("k").unwrap(), Some(string("v")));
    assert!(left(fx.cache.ttl("k").unwrap()) <= Duration::from_millis(400));
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(fx.cache.get("k").unwrap(), None);
    assert_eq!(fx.cache.ttl("k").unwrap(), Remaining::Missing);
    assert_eq!(fx.cache.delete("k").unwrap(), None, "an expired entry is missing for delete");
    assert!(!fx.cache.expire("k", secs("60")).unwrap(), "expire never brings an entry back");
    assert_eq!(fx.cache.get("k").unwrap(), None);
}

fn prefixes_are_isolated(fx: &mut Fixture) {
    let p = crate::util::unique("iso");
    let mut a = fx.other(&format!("{p}a:"));
    let mut b = fx.other(&format!("{p}b:"));
    let mut bare = fx.other("");
    a.set("k", &string("from a"), secs("60")).unwrap();
    assert_eq!(b.get("k").unwrap(), None);
    assert_eq!(bare.get(&format!("{p}a:k")).unwrap(), Some(string("from a")), "the prefix is plain concatenation");
}

fn prefixed_flush_removes_only_that_prefix(fx: &mut Fixture) {
    if fx.cache.check_flush(false).is_err() {
        // memcached: a prefixed flush is refused (status 2) before anything is sent.
        assert_eq!(fx.cache.flush(false).unwrap_err().kind(), ErrorKind::Input);
        return;
    }
    let p = crate::util::unique("fl");
    let mut a = fx.other(&format!("{p}a:"));
    let mut b = fx.other(&format!("{p}b:"));
    // Keys that look like wildcards must be taken literally.
    let mut wild = fx.other(&format!("{p}%_\\*?["));
    let mut wild_sibling = fx.other(&format!("{p}X_\\*?["));
    a.set("k", &string("a"), secs("60")).unwrap();
    b.set("k", &string("b"), secs("60")).unwrap();
    wild.set("k", &string("w"), secs("60")).unwrap();
    wild_sibling.set("k", &string("ws"), secs("60")).unwrap();
    a.flush(false).unwrap();
    assert_eq!(a.get("k").unwrap(), None);
    assert_eq!(b.get("k").unwrap(), Some(string("b")));
    wild.flush(false).unwrap();
    assert_eq!(wild.get("k").unwrap(), None);
    assert_eq!(wild_sibling.get("k").unwrap(), Some(string("ws")));
}

fn flush_all_removes_everything(fx: &mut Fixture) {
    if !fx.isolated {
        eprintln!("skipped: flush --all on a shared server");
        return;
    }
    let mut a = fx.other("a:");
    let mut b = fx.other("b:");
    a.set("k", &string("a"), secs("60")).unwrap();
    b.set("k", &string("b"), secs("60")).unwrap();
    a.flush(true).unwrap();
    assert_eq!(b.get("k").unwrap(), None);
    let mut bare = fx.other("");
    bare.set("k", &string("x"), secs("60")).unwrap();
    bare.flush(false).unwrap();
    assert_eq!(bare.get("k").unwrap(), None, "an empty prefix flushes everything");
}

fn purge_keeps_live_entries(fx: &mut Fixture) {
    fx.cache.set("live", &string("v"), secs("60")).unwrap();
    fx.cache.set("dead", &string("v"), secs("0.05")).unwrap();
    std::thread::sleep(Duration::from_millis(80));
    fx.cache.purge().unwrap();
    assert_eq!(fx.cache.get("live").unwrap(), Some(string("v")));
    assert_eq!(fx.cache.get("dead").unwrap(), None);
}

fn ping_works_and_leaves_nothing(fx: &mut Fixture) {
    fx.cache.ping().unwrap();
    assert_eq!(fx.cache.get(kcache::backend::HEARTBEAT_KEY).unwrap(), None);
}

fn migrate_is_idempotent(fx: &mut Fixture) {
    fx.cache.migrate(false).unwrap();
    fx.cache.migrate(false).unwrap();
    let m = fx.cache.migrate(true).unwrap();
    assert!(m.statements.is_empty(), "up to date after migrate: {:?}", m.statements);
    fx.cache.set("k", &string("v"), secs("60")).unwrap();
    assert_eq!(fx.cache.get("k").unwrap(), Some(string("v")));
}

fn bad_keys_are_refused_before_anything_is_sent(fx: &mut Fixture) {
    for key in ["", "a\nb", "a\rb", "\u{0}", "tab\there", "esc\u{1b}"] {
        let e = fx.cache.set(key, &string("v"), secs("60")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Input, "{key:?}");
        assert_eq!(fx.cache.get(key).unwrap_err().kind(), ErrorKind::Input, "{key:?}");
    }
}

/// A batch group gives exactly what the same operations give one by one.
fn group_matches_one_by_one(fx: &mut Fixture) {
    use kcache::backend::GroupOp;
    let json = value::encode_json(r#"{"a":[1,"é"]}"#).unwrap();
    let v1 = string("v1");
    let v2 = string("v2");
    let ops = |v1: &str, v2: &str, json: &str| -> Vec<(String, u8, String, Option<Ttl>)> {
        // (key, kind, value, ttl): kinds 0 get, 1 set, 2 ttl, 3 expire, 4 delete
        vec![
            ("a".into(), 0, String::new(), None),
            ("a".into(), 1, v1.into(), Some(secs("60"))),
            ("a".into(), 0, String::new(), None),
            ("a".into(), 2, String::new(), None),
            ("b".into(), 1, json.into(), Some(secs("3600"))),
            ("a".into(), 1, v2.into(), Some(secs("120"))),
            ("a".into(), 0, String::new(), None),
            ("b".into(), 3, String::new(), Some(secs("7200"))),
            ("b".into(), 2, String::new(), None),
            ("c".into(), 3, String::new(), Some(secs("10"))),
            ("c".into(), 4, String::new(), None),
            ("a".into(), 4, String::new(), None),
            ("a".into(), 0, String::new(), None),
            ("b".into(), 1, v1.into(), Some(secs("0"))),
            ("b".into(), 0, String::new(), None),
            ("d".into(), 1, v1.into(), Some(secs("60"))),
            ("d".into(), 3, String::new(), Some(secs("0"))),
            ("d".into(), 0, String::new(), None),
            ("bad\nkey".into(), 0, String::new(), None),
            ("e".into(), 0, String::new(), None),
        ]
    };
    let list = ops(&v1, &v2, &json);
    let as_ops: Vec<GroupOp<'_>> = list
        .iter()
        .map(|(k, kind, v, t)| match kind {
            0 => GroupOp::Get(k),
            1 => GroupOp::Set(k, v, t.expect("ttl")),
            2 => GroupOp::Ttl(k),
            3 => GroupOp::Expire(k, t.expect("ttl")),
            _ => GroupOp::Delete(k),
        })
        .collect();
    let p = crate::util::unique("grp");
    let mut grouped = fx.other(&format!("{p}g:"));
    let mut single = fx.other(&format!("{p}s:"));
    let got = grouped.run_group(&as_ops);
    assert_eq!(got.len(), as_ops.len());
    for (i, (op, g)) in as_ops.iter().zip(got).enumerate() {
        let one = op.run_alone_on(&mut single);
        crate::util::assert_same_result(&format!("op {i} {op:?}"), &g, &one);
    }
}

/// The keys of the pattern table: hostile for every backend's own glob or LIKE (`%`, `_`,
/// `\\`, `*`, `?`, `[`, `]`, quotes, non-ASCII).
const TABLE_KEYS: [&str; 16] = [
    "user:1", "user:2", "user:10", "user:1:x", "sess:a", "100%", "100x", "a_b", "axb", "a\\b", "a*b", "a?b", "we[i]rd",
    "it's", "é-1", "\"q\"",
];

/// Patterns and the keys of [`TABLE_KEYS`] each selects: the same answer on every backend.
fn pattern_table() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("*", TABLE_KEYS.to_vec()),
        ("user:?", vec!["user:1", "user:2"]),
        ("user:*", vec!["user:1", "user:2", "user:10", "user:1:x"]),
        ("user:1*", vec!["user:1", "user:10", "user:1:x"]),
        ("*:x", vec!["user:1:x"]),
        ("100%", vec!["100%"]),
        ("a_b", vec!["a_b"]),
        ("a?b", vec!["a_b", "axb", "a\\b", "a*b", "a?b"]),
        ("a\\*b", vec!["a*b"]),
        ("a\\?b", vec!["a?b"]),
        ("a\\\\b", vec!["a\\b"]),
        ("we\\[i\\]rd", vec!["we[i]rd"]),
        ("we[i]rd", vec![]),
        ("[!a-z]*", vec!["100%", "100x", "é-1", "\"q\""]),
        ("[ae]*", vec!["a_b", "axb", "a\\b", "a*b", "a?b"]),
        ("it's", vec!["it's"]),
        ("é*", vec!["é-1"]),
        ("nothing*", vec![]),
    ]
}

/// `keys`: every pattern of the table selects the same keys, each once; expired entries and
/// another prefix's keys are never listed.
fn keys_follow_the_pattern_table(fx: &mut Fixture) {
    for k in TABLE_KEYS {
        fx.cache.set(k, &string("v"), secs("600")).unwrap();
    }
    fx.cache.set("user:3", &string("v"), secs("0.2")).unwrap();
    let mut other = fx.other(&format!("{}other:", crate::util::unique("o")));
    other.set("user:4", &string("v"), secs("600")).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    for (pattern, expected) in pattern_table() {
        let p = kcache::pattern::Pattern::parse(pattern).unwrap();
        let mut got = Vec::new();
        fx.cache
            .keys(&p, &mut |k, left| {
                assert!(!matches!(left, Remaining::Missing), "{k}");
                got.push(k.to_string());
                true
            })
            .unwrap();
        got.sort();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "pattern {pattern}");
        // Without the time left (`keys` with neither --ttl nor --json): the same keys.
        let mut names = Vec::new();
        fx.cache
            .key_names(&p, &mut |k| {
                names.push(k.to_string());
                true
            })
            .unwrap();
        names.sort();
        assert_eq!(names, want, "pattern {pattern}, names only");
    }
    // --limit: the walk stops when asked.
    let mut n = 0;
    fx.cache
        .keys(&kcache::pattern::Pattern::default(), &mut |_, _| {
            n += 1;
            n < 3
        })
        .unwrap();
    assert_eq!(n, 3);
}

/// `flush --match`: removes exactly what `keys` lists (a dry run removes nothing), never another
/// prefix's keys.
fn flush_match_removes_exactly_the_matches(fx: &mut Fixture) {
    for k in TABLE_KEYS {
        fx.cache.set(k, &string("v"), secs("600")).unwrap();
    }
    let mut other = fx.other(&format!("{}other:", crate::util::unique("o")));
    other.set("user:1", &string("v"), secs("600")).unwrap();
    let p = kcache::pattern::Pattern::parse("user:*").unwrap();
    let mut listed = Vec::new();
    let n = fx
        .cache
        .flush_matching(&p, true, &mut |k| {
            listed.push(k.to_string());
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(fx.cache.get("user:1").unwrap(), Some(string("v")), "a dry run removes nothing");
    let mut removed = Vec::new();
    let n = fx
        .cache
        .flush_matching(&p, false, &mut |k| {
            removed.push(k.to_string());
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 4);
    listed.sort();
    removed.sort();
    assert_eq!(listed, removed);
    for k in TABLE_KEYS {
        let gone = k.starts_with("user:");
        assert_eq!(fx.cache.get(k).unwrap().is_none(), gone, "{k}");
    }
    assert_eq!(other.get("user:1").unwrap(), Some(string("v")), "another prefix is never touched");
}

/// The keys and flush --match tests, for the backends that can list their keys.
macro_rules! keys_tests {
    ($($kind:ident),* $(,)?) => {
        $( mod $kind {
            #[test] fn keys_follow_the_pattern_table() { super::super::run(module_path!(), super::super::keys_follow_the_pattern_table) }
            #[test] fn flush_match_removes_exactly_the_matches() { super::super::run(module_path!(), super::super::flush_match_removes_exactly_the_matches) }
        } )*
    };
}

mod keys {
    keys_tests!(memory, sqlite, postgresql, redis, memcached);
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { super::run(module_path!(), super::$name) } )*
    };
}

macro_rules! for_backends {
    ($($kind:ident),* $(,)?) => {
        $( mod $kind {
            conformance_tests!(
                set_then_get,
                missing_key_is_none_everywhere,
                overwrite_replaces_value_and_ttl,
                every_json_type_round_trips_byte_for_byte,
                unicode_keys_work,
                deeply_nested_values_round_trip,
                large_value,
                delete_returns_the_value_once,
                ttl_is_what_was_set,
                set_with_ttl_zero_removes_the_key,
                expire_sets_a_new_ttl,
                expire_zero_expires_now,
                sub_second_ttl_expires_on_time,
                prefixes_are_isolated,
                prefixed_flush_removes_only_that_prefix,
                flush_all_removes_everything,
                purge_keeps_live_entries,
                ping_works_and_leaves_nothing,
                migrate_is_idempotent,
                bad_keys_are_refused_before_anything_is_sent,
                group_matches_one_by_one,
                add_and_delete_if_are_memos_lock,
            );
        } )*
    };
}

for_backends!(memory, sqlite, postgresql, redis, redis_cluster, redis_sentinel, memcached);
