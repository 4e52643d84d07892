//! `kcache stats` through the real binary, on every backend: the counts under the prefix (other
//! prefixes and expired entries left out), the servers' own figures (on servers of the test's
//! own where figures of the whole server are checked), the three outputs, and a dead server
//! (status 3; with `--keep-going`, `"up": false` and `kcache_server_up 0`, status 0).
//!
//! The Prometheus output is checked by Prometheus's own parser and linter, `promtool check
//! metrics` (Debian's `prometheus` package, installed by scripts/test): missing, the check is
//! skipped loudly, or fails under CI, as the servers are.

use crate::util::servers::require;
use crate::util::{Env, Out};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// The JSON object of `stats --json` (status 0 asserted).
#[track_caller]
fn json(out: &Out) -> Value {
    out.ok();
    assert_eq!(out.stdout.lines().count(), 1, "one line: {}", out.stdout);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

/// Checks `text` with `promtool check metrics`: it must parse, and pass the linter silently.
#[track_caller]
fn promtool_accepts(text: &str) {
    let found = Command::new("promtool").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !require(found, "promtool (Debian's prometheus package)") {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics refused ({}):\n{said}\n--- input\n{text}",
        out.status
    );
}

/// The one sample of `metric` whose labels contain `labels`.
#[track_caller]
fn sample(text: &str, metric: &str, labels: &str) -> String {
    let found: Vec<&str> =
        text.lines().filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(labels)).collect();
    assert_eq!(found.len(), 1, "one {metric} sample with {labels}:\n{text}");
    found[0].rsplit(' ').next().unwrap_or_default().to_string()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

// ---- sqlite and memory -----------------------------------------------------------------------

#[test]
fn stats_on_sqlite_counts_live_and_expired_entries_under_the_prefix_only() {
    let env = Env::new().var("KINTO_CACHE_PREFIX", "s:");
    env.run(&["set", "a", "hello", "60"]).ok();
    env.run(&["set", "b", "é, ü and ∑", "60"]).ok();
    env.run(&["set", "--json", "c", r#"{"n": [1, 2]}"#, "60"]).ok();
    env.run(&["--prefix", "t:", "set", "other", "not counted", "60"]).ok();
    let db = crate::util::db(&env.default_db());
    db.execute("INSERT INTO cache (key, value, ttl) VALUES ('s:old', '\"gone\"', 1)", []).unwrap();
    let bytes: i64 = db
        .query_row("SELECT sum(length(CAST(value AS BLOB))) FROM cache WHERE key IN ('s:a', 's:b', 's:c')", [], |r| {
            r.get(0)
        })
        .unwrap();

    let s = json(&env.run(&["stats", "--json"]));
    assert_eq!(s["backend"], "sqlite");
    assert_eq!(s["prefix"], "s:");
    assert_eq!(s["location"], env.default_db().display().to_string());
    assert_eq!(n(&s["entries"]), 3, "{s}");
    assert_eq!(n(&s["expired"]), 1, "{s}");
    assert_eq!(n(&s["value_bytes"]), bytes as u64, "{s}");
    assert!(s.get("servers").is_none(), "sqlite has no server: {s}");

    // The table: one figure a line, values in one column.
    let table = env.run(&["stats"]);
    table.ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    let column = |name: &str| {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name}:\n{}", table.stdout));
        let value = line[name.len()..].trim_start();
        (line.len() - value.len(), value.to_string())
    };
    let (at, backend) = column("backend");
    assert_eq!(backend, "sqlite");
    assert_eq!(column("entries"), (at, "3".to_string()), "{}", table.stdout);
    assert_eq!(column("expired"), (at, "1".to_string()), "{}", table.stdout);
    assert_eq!(column("value_bytes"), (at, bytes.to_string()), "{}", table.stdout);
    assert_eq!(column("prefix"), (at, "s:".to_string()), "{}", table.stdout);
}

#[test]
fn stats_on_a_fresh_sqlite_file_is_all_zero_and_writes_nothing() {
    let env = Env::new();
    let s = json(&env.run(&["stats", "--json"]));
    assert_eq!((n(&s["entries"]), n(&s["expired"]), n(&s["value_bytes"])), (0, 0, 0), "{s}");
    assert_eq!(s["prefix"], "");
    assert!(!env.default_db().exists(), "stats created the file");
}

#[test]
fn stats_prometheus_output_passes_promtool_with_hostile_label_values() {
    let prefix = "p\"\\x:";
    let env = Env::new().var("KINTO_CACHE_PREFIX", prefix);
    env.run(&["set", "k", "v", "60"]).ok();
    let out = env.run(&["stats", "--prometheus"]);
    out.ok();
    promtool_accepts(&out.stdout);
    let labels = r#"{backend="sqlite",prefix="p\"\\x:"}"#;
    assert!(out.stdout.contains(&format!("kcache_entries{labels} 1\n")), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("kcache_expired_entries{labels} 0\n")), "{}", out.stdout);
    assert!(out.stdout.contains("# TYPE kcache_value_bytes gauge\n"), "{}", out.stdout);
    assert_eq!(sample(&out.stdout, "kcache_value_bytes", r#"backend="sqlite""#), "3");
    assert!(!out.stdout.contains("kcache_server_"), "no server on sqlite:\n{}", out.stdout);
}

#[test]
fn stats_on_memory_counts_its_own_empty_store() {
    let env = Env::new().var("KINTO_CACHE_BACKEND", "memory");
    let s = json(&env.run(&["stats", "--json"]));
    assert_eq!(s["backend"], "memory");
    assert_eq!((n(&s["entries"]), n(&s["expired"]), n(&s["value_bytes"])), (0, 0, 0), "{s}");
    let out = env.run(&["stats", "--prometheus"]);
    out.ok();
    promtool_accepts(&out.stdout);
    env.run(&["stats"]).ok().stdout_is(
        "backend      memory\nlocation     this process\nprefix       (none)\nentries      0\nexpired      0\nvalue_bytes  0\n",
    );
}

#[test]
fn stats_json_and_prometheus_cannot_be_combined() {
    let out = Env::new().run(&["stats", "--json", "--prometheus"]);
    out.code(2).stderr_has("cannot be used with");
}

// ---- postgresql ------------------------------------------------------------------------------

#[cfg(feature = "postgresql")]
#[test]
fn stats_on_postgresql_counts_with_sql_and_reads_the_catalog() {
    let Some(mut db) = crate::util::rig::RigDb::create() else { return };
    db.migrate();
    let env = db.env().var("KINTO_CACHE_PREFIX", "pg%_:");
    env.run(&["set", "a", "hello", "60"]).ok();
    env.run(&["set", "b", "é and ∑", "60"]).ok();
    // `%` and `_` in the prefix are literal: `pgX_:` is another prefix.
    env.run(&["--prefix", "pgx_:", "set", "c", "other", "60"]).ok();
    db.sql()
        .batch_execute(
            "INSERT INTO cache (key, value, ttl) VALUES ('pg%_:old', '\"gone\"', now() - interval '1 minute')",
        )
        .unwrap();
    let bytes: i64 = db
        .sql()
        .query_one("SELECT sum(octet_length(value))::int8 FROM cache WHERE key IN ('pg%_:a', 'pg%_:b')", &[])
        .unwrap()
        .get(0);
    let version: String = db.sql().query_one("SHOW server_version", &[]).unwrap().get(0);

    let s = json(&env.run(&["stats", "--json"]));
    assert_eq!(s["backend"], "postgresql");
    assert!(!s["location"].as_str().unwrap().contains(&db.server.password) || db.server.password.is_empty());
    assert_eq!(n(&s["entries"]), 2, "{s}");
    assert_eq!(n(&s["expired"]), 1, "{s}");
    assert_eq!(n(&s["value_bytes"]), bytes as u64, "{s}");
    let servers = s["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 1, "{s}");
    let server = &servers[0];
    assert_eq!(server["up"], true);
    assert_eq!(server["version"], version.as_str());
    assert_eq!(n(&server["items"]), 4, "every row of the table: {s}");
    assert!(n(&server["bytes"]) > 0 && n(&server["index_bytes"]) > 0, "{s}");
    assert!(n(&server["bytes"]) >= n(&server["index_bytes"]), "{s}");
    assert!(n(&server["connections"]) >= 1, "{s}");
    let _ = n(&server["uptime_s"]);
    assert!(server.get("hits").is_none() && server.get("max_bytes").is_none(), "{s}");

    let out = env.run(&["stats", "--prometheus"]);
    out.ok();
    promtool_accepts(&out.stdout);
    assert_eq!(sample(&out.stdout, "kcache_entries", r#"prefix="pg%_:""#), "2");
    assert_eq!(sample(&out.stdout, "kcache_server_items", "server="), "4");
    assert_eq!(sample(&out.stdout, "kcache_server_info", &format!("version=\"{version}\"")), "1");
    let table = env.run(&["stats"]);
    table.ok();
    assert!(table.stdout.contains("index_bytes") && table.stdout.contains(" yes "), "{}", table.stdout);
}

#[cfg(feature = "postgresql")]
#[test]
fn stats_on_a_dead_postgresql_is_status_3_unless_keep_going() {
    let url = format!("postgresql://kcache:stats-secret-7@127.0.0.1:{}/kcache", crate::util::servers::free_port());
    let env = crate::util::rig::pg_env(&url, "2");
    env.run(&["stats"]).code(3).one_error_line();
    let out = env.run(&["stats", "--keep-going", "--json"]);
    assert!(!format!("{}{}", out.stdout, out.stderr).contains("stats-secret-7"), "{out:?}");
    let s = json(&out);
    assert!(s.get("entries").is_none(), "{s}");
    assert_eq!(s["servers"][0]["up"], false, "{s}");
    assert!(s["servers"][0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{s}");
    let out = env.run(&["stats", "-k", "--prometheus"]);
    out.ok().stderr_has("is down");
    promtool_accepts(&out.stdout);
    assert_eq!(sample(&out.stdout, "kcache_server_up", "server="), "0");
}

// ---- redis -----------------------------------------------------------------------------------

#[cfg(feature = "redis")]
#[test]
fn stats_on_redis_counts_the_prefix_and_reads_info() {
    use crate::util::servers::{OwnRedis, redis_client};
    let Some(server) = OwnRedis::start(&[]) else { return };
    let env = Env::new()
        .var("KINTO_CACHE_BACKEND", "redis")
        .var("KINTO_CACHE_URL", &server.url())
        .var("KINTO_CACHE_PREFIX", "r*[:");
    env.run(&["set", "a", "hello", "60"]).ok();
    env.run(&["set", "b", "é and ∑", "60"]).ok();
    env.run(&["set", "--json", "c", "[1, 2, 3]", "60"]).ok();
    env.run(&["--prefix", "rx[:", "set", "d", "another prefix", "60"]).ok();
    env.run(&["get", "a"]).ok();
    env.run(&["get", "missing"]).code(1);
    let mut raw = redis_client(&server.url());
    // Not a kcache entry: neither counted nor a failure.
    let _: i64 = redis::cmd("HSET").arg("r*[:hash").arg("f").arg("v").query(&mut raw).unwrap();
    let mut bytes = 0;
    for k in ["r*[:a", "r*[:b", "r*[:c"] {
        let len: u64 = redis::cmd("STRLEN").arg(k).query(&mut raw).unwrap();
        bytes += len;
    }
    let info: String = redis::cmd("INFO").arg("server").query(&mut raw).unwrap();
    let version = info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap().trim().to_string();

    let s = json(&env.run(&["stats", "--json"]));
    assert_eq!(s["backend"], "redis");
    assert_eq!(n(&s["entries"]), 3, "{s}");
    assert_eq!(n(&s["value_bytes"]), bytes, "{s}");
    assert!(s.get("expired").is_none(), "redis removes expired keys itself: {s}");
    let one = &s["servers"][0];
    assert_eq!(one["up"], true);
    assert_eq!(one["version"], version.as_str());
    assert_eq!(n(&one["items"]), 5, "every key of the server: {s}");
    assert!(n(&one["hits"]) >= 1 && n(&one["misses"]) >= 1, "{s}");
    assert!(n(&one["connections"]) >= 1 && n(&one["bytes"]) > 0, "{s}");
    assert_eq!(n(&one["evictions"]), 0, "{s}");
    assert!(one.get("max_bytes").is_none(), "no maxmemory set: {s}");

    let out = env.run(&["stats", "--prometheus"]);
    out.ok();
    promtool_accepts(&out.stdout);
    assert_eq!(sample(&out.stdout, "kcache_entries", r#"prefix="r*[:""#), "3");
    assert_eq!(sample(&out.stdout, "kcache_server_up", "server="), "1");
    assert_eq!(sample(&out.stdout, "kcache_server_items", "server="), "5");
    let table = env.run(&["stats"]);
    table.ok();
    assert!(table.stdout.contains("evictions") && table.stdout.contains(&version), "{}", table.stdout);
}

#[cfg(feature = "redis")]
#[test]
fn stats_on_a_dead_redis_is_status_3_unless_keep_going() {
    let url = format!("redis://127.0.0.1:{}/0", crate::util::servers::free_port());
    let env =
        Env::new().var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_URL", &url).var("KINTO_CACHE_PREFIX", "p:");
    env.run(&["stats"]).code(3).one_error_line();
    let s = json(&env.run(&["stats", "--keep-going", "--json"]));
    assert_eq!(s["servers"][0]["up"], false, "{s}");
    assert!(s.get("entries").is_none(), "{s}");
    let out = env.run(&["stats", "--keep-going", "--prometheus"]);
    out.ok();
    promtool_accepts(&out.stdout);
    assert_eq!(sample(&out.stdout, "kcache_server_up", "server="), "0");
    assert!(!out.stdout.contains("kcache_server_items"), "{}", out.stdout);
    let table = env.run(&["stats", "-k"]);
    table.ok();
    assert!(table.stdout.contains(" no "), "{}", table.stdout);
}

// ---- memcached -------------------------------------------------------------------------------

#[cfg(feature = "memcached")]
#[test]
fn stats_on_memcached_reports_each_server_and_a_dead_one_with_keep_going() {
    use crate::util::servers::OwnMemcached;
    let Some([first, mut second]) = OwnMemcached::several::<2>() else { return };
    let hosts = format!("{},{}", first.host(), second.host());
    let env = Env::new()
        .var("KINTO_CACHE_BACKEND", "memcached")
        .var("KINTO_CACHE_HOSTS", &hosts)
        .var("KINTO_CACHE_PREFIX", &format!("{}:", crate::util::unique("m")));
    for k in ["a", "b", "c", "d"] {
        env.run(&["set", k, "v", "60"]).ok();
    }
    env.run(&["get", "a"]).ok();
    env.run(&["get", "missing"]).code(1);

    let s = json(&env.run(&["stats", "--json"]));
    assert_eq!(s["backend"], "memcached");
    // Entries through the key crawler; value bytes are not known there.
    assert_eq!(n(&s["entries"]), 4, "{s}");
    assert!(s.get("value_bytes").is_none(), "{s}");
    let servers = s["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 2, "{s}");
    assert_eq!(servers[0]["address"], first.host().as_str());
    assert_eq!(servers[1]["address"], second.host().as_str());
    let items: u64 = servers.iter().map(|x| n(&x["items"])).sum();
    assert_eq!(items, 4, "{s}");
    let hits: u64 = servers.iter().map(|x| n(&x["hits"])).sum();
    let misses: u64 = servers.iter().map(|x| n(&x["misses"])).sum();
    assert!(hits >= 1 && misses >= 1, "{s}");
    for x in servers {
        assert_eq!(x["up"], true);
        assert_eq!(n(&x["max_bytes"]), 64 * 1024 * 1024, "memcached -m 64: {s}");
        assert!(x["version"].as_str().is_some_and(|v| v.starts_with("1.")), "{s}");
        assert!(n(&x["connections"]) >= 1, "{s}");
        let _ = (n(&x["bytes"]), n(&x["evictions"]), n(&x["uptime_s"]));
    }
    let out = env.run(&["stats", "--prometheus"]);
    out.ok();
    promtool_accepts(&out.stdout);
    assert_eq!(sample(&out.stdout, "kcache_server_up", &format!("server=\"{}\"", first.host())), "1");

    second.kill();
    let dead = env.run(&["stats"]);
    dead.code(3).one_error_line().stderr_has(&second.host());
    let s = json(&env.run(&["stats", "--keep-going", "--json"]));
    assert_eq!(s["servers"][0]["up"], true, "{s}");
    assert_eq!(s["servers"][1]["up"], false, "{s}");
    assert!(s["servers"][1].get("items").is_none(), "{s}");
    assert!(s.get("entries").is_none(), "unknown with a server down: {s}");
    let out = env.run(&["stats", "--keep-going", "--prometheus"]);
    out.ok().stderr_has(&format!("{} is down", second.host()));
    promtool_accepts(&out.stdout);
    assert_eq!(sample(&out.stdout, "kcache_server_up", &format!("server=\"{}\"", second.host())), "0");
    assert_eq!(sample(&out.stdout, "kcache_server_up", &format!("server=\"{}\"", first.host())), "1");
    let quiet = env.run(&["-q", "stats", "-k"]);
    assert!(quiet.ok().stdout.contains(" no ") && quiet.stderr.is_empty(), "{quiet:?}");
}
