//! Past one server: a Redis Cluster resharded under a running batch, a Redis Sentinel failover
//! under a `--keep-going` batch, and what the cluster and the sentinels answer to the commands
//! that cover every server. Tests that reshard or fail over use servers of their own; the others
//! use the rig's cluster and sentinel group under prefixes of their own.

use crate::util::servers::{Batch, OwnRedisCluster, OwnSentinels, fake_server, replies, run_within, sq, status};
use crate::util::{Env, unique};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// kcache on the Redis at `url` under `prefix`, with a short pool timeout (a failover must not
/// make each line wait 20 s).
fn env(url: &str, prefix: &str) -> Env {
    Env::new()
        .var("KINTO_CACHE_BACKEND", "redis")
        .var("KINTO_CACHE_URL", url)
        .var("KINTO_CACHE_PREFIX", prefix)
        .var("KINTO_CACHE_POOL_TIMEOUT", "2")
}

/// `set` lines for keys `from..to`, each value naming its key.
fn sets(from: usize, to: usize) -> String {
    (from..to).map(|i| format!("set k{i} {} 1h\n", sq(&format!("v{i}")))).collect()
}

/// The values of `keys` read back with one batch of gets (`None`: a miss).
fn read_back(env: &Env, keys: &[String]) -> BTreeMap<String, Option<String>> {
    let lines: String = keys.iter().map(|k| format!("get {k}\n")).collect();
    let out = env.run_stdin(&["batch", "--keep-going"], Some(lines.as_bytes()));
    let got = replies(&out.stdout);
    assert_eq!(got.len(), keys.len(), "{}", out.stderr);
    keys.iter()
        .zip(got)
        .map(|(k, r)| {
            assert!(status(&r) <= 1, "get {k}: {r}");
            (k.clone(), r["value"].as_str().map(str::to_string))
        })
        .collect()
}

// ---- Redis Cluster ---------------------------------------------------------------------------

#[test]
fn a_resharding_under_a_streaming_batch_fails_no_line() {
    let Some(cluster) = OwnRedisCluster::start(3) else { return };
    let env = env(&cluster.url(), &format!("{}:", unique("rs")));
    let before = cluster.slots_of(0);
    let mut batch = Batch::spawn(&env, &["batch"]);
    // Lines go in, a chunk at a time, while 4,000 slots move from the first master to the
    // second; then more, after the resharding ended.
    let mut sent = 0;
    let chunk = 1000;
    let resharding = cluster.reshard_in_background(0, 1, 4000);
    let mut got = Vec::new();
    while !resharding.is_finished() {
        batch.send(&sets(sent, sent + chunk));
        got.extend(batch.read(chunk, Duration::from_secs(30)));
        sent += chunk;
        assert!(sent < 2_000_000, "the resharding did not end");
    }
    resharding.join().expect("the resharding thread");
    assert!(sent >= 3 * chunk, "only {sent} lines went in while the slots moved");
    batch.send(&sets(sent, sent + 5 * chunk));
    sent += 5 * chunk;
    let end = batch.finish(Duration::from_secs(60));
    assert_eq!(end.status, 0, "{}", end.stderr);
    got.extend(end.replies);
    assert_eq!(got.len(), sent);
    let failed: Vec<&Value> = got.iter().filter(|r| status(r) != 0).collect();
    assert!(failed.is_empty(), "{} of {sent} lines failed, the first: {}", failed.len(), failed[0]);
    assert_eq!(cluster.slots_of(0), before - 4000, "the slots moved");
    let keys: Vec<String> = (0..sent).map(|i| format!("k{i}")).collect();
    for (i, (key, value)) in read_back(&env, &keys).into_iter().enumerate() {
        assert_eq!(value.as_deref(), Some(format!("v{}", &key[1..]).as_str()), "line {i}: {key}");
    }
}

#[test]
fn flush_stats_and_keys_cover_every_master_of_a_cluster() {
    let Some(cluster) = OwnRedisCluster::start(3) else { return };
    let mine = env(&cluster.url(), "mine:");
    let other = env(&cluster.url(), "other:");
    let out = mine.run_stdin(&["batch"], Some(sets(0, 300).as_bytes()));
    assert!(replies(&out.ok().stdout).iter().all(|r| status(r) == 0));
    other.run(&["set", "x", "1", "1h"]).ok();
    // Every master holds some of the keys (300 keys over 16,384 slots in three ranges).
    for i in 0..3 {
        assert!(cluster.dbsize(i) > 0, "master {i} holds none");
    }

    let stats: Value = serde_json::from_str(&mine.run(&["stats", "--json"]).ok().stdout).expect("JSON");
    assert_eq!(stats["entries"], 300, "{stats}");
    let servers = stats["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 3, "one row per master: {stats}");
    let items: u64 = servers.iter().map(|s| s["items"].as_u64().expect("items")).sum();
    assert_eq!(items, 301, "{stats}");
    let mut addresses: Vec<String> = servers.iter().map(|s| s["address"].as_str().unwrap().to_string()).collect();
    addresses.sort();
    let mut want: Vec<String> = cluster.ports().iter().map(|p| format!("127.0.0.1:{p}")).collect();
    want.sort();
    assert_eq!(addresses, want);

    let listed = mine.run(&["keys", "k1*"]).ok().stdout.clone();
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("k{i}")).filter(|k| k.starts_with("k1")).collect();
    want.sort();
    assert_eq!(listed, want.iter().map(String::as_str).collect::<Vec<_>>());

    // flush --match, then a prefixed flush: the other prefix stays; flush --all empties all.
    mine.run(&["flush", "--match", "k1*"]).ok();
    assert_eq!(mine.run(&["keys"]).ok().stdout.lines().count(), 300 - want.len());
    mine.run(&["flush"]).ok();
    mine.run(&["keys"]).code(1);
    assert_eq!(other.run(&["get", "x"]).ok().stdout, "1\n", "another prefix is left alone");
    other.run(&["flush", "--all"]).ok();
    for i in 0..3 {
        assert_eq!(cluster.dbsize(i), 0, "master {i} after flush --all");
    }
}

#[test]
fn a_cluster_url_with_another_database_is_refused_before_connecting() {
    let out = env("redis+cluster://127.0.0.1:1,127.0.0.1:2/3", "p:").run(&["get", "k"]);
    out.code(2).one_error_line().stderr_has("database 0 only");
}

// ---- Redis Sentinel --------------------------------------------------------------------------

#[test]
fn a_sentinel_failover_under_a_keep_going_batch_loses_no_line_reported_done() {
    let Some(group) = OwnSentinels::start() else { return };
    let env = env(&group.url(), "fo:");
    let old = group.master_port();
    let mut batch = Batch::spawn(&env, &["batch", "--keep-going"]);
    let chunk = 50;
    let mut sent = 0;
    let mut got: Vec<Value> = Vec::new();
    let mut step = |batch: &mut Batch, got: &mut Vec<Value>| {
        batch.send(&sets(sent, sent + chunk));
        got.extend(batch.read(chunk, Duration::from_secs(30)));
        sent += chunk;
        std::thread::sleep(Duration::from_millis(20));
    };
    for _ in 0..5 {
        step(&mut batch, &mut got);
    }
    let failing_over = group.failover_in_background();
    while !failing_over.is_finished() {
        step(&mut batch, &mut got);
    }
    failing_over.join().expect("the failover thread");
    // Until the new master has a replica again (the old one, reconfigured by the sentinels),
    // writes are not confirmed; after that, every line succeeds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tail_ok = 0;
    while tail_ok < 10 {
        assert!(Instant::now() < deadline, "lines still fail 60 s after the failover");
        let start = got.len();
        step(&mut batch, &mut got);
        tail_ok = if got[start..].iter().all(|r| status(r) == 0) { tail_ok + 1 } else { 0 };
    }
    let end = batch.finish(Duration::from_secs(30));
    got.extend(end.replies);
    assert_eq!(got.len(), sent);
    assert_ne!(group.master_port(), old, "the sentinels named another master");

    let mut done = Vec::new();
    for (i, r) in got.iter().enumerate() {
        match status(r) {
            0 => done.push(format!("k{i}")),
            3 => {
                let e = r["error"].as_str().unwrap_or_default();
                assert!(!e.contains("***") || !e.contains("password"), "{e}");
            }
            s => panic!("line {}: status {s}, only 0 or 3 during a failover: {r}", i + 1),
        }
    }
    assert!(done.len() > sent / 2, "{} of {sent} lines done", done.len());
    assert!(done.len() < sent, "no line failed: the switch did not happen under the batch");
    assert_eq!(end.status, if done.len() == sent { 0 } else { 3 }, "{}", end.stderr);
    // Every line reported done is readable on the new master.
    for (key, value) in read_back(&env, &done) {
        assert_eq!(value.as_deref(), Some(format!("v{}", &key[1..]).as_str()), "{key} was reported done");
    }
}

#[test]
fn sentinels_and_a_master_with_passwords_of_their_own() {
    let Some(group) = OwnSentinels::start_with_passwords(Some("master-pw-1"), Some("sentinel-pw-2")) else { return };
    let sentinels = group.url();
    let (hosts, rest) = sentinels.split_once("://").expect("a URL").1.split_once('/').expect("a path");
    let url = |auth: &str, query: &str| format!("redis+sentinel://{auth}{hosts}/{rest}{query}");
    let good = env(&url(":master-pw-1@", "?sentinel_password=sentinel-pw-2"), "pw:");
    good.run(&["set", "k", "1", "1h"]).ok();
    assert_eq!(good.run(&["get", "k"]).ok().stdout, "1\n");
    // Without the sentinels' password no master is found: status 3 or 4, never a password shown.
    let no_sentinel_pw = env(&url(":master-pw-1@", ""), "pw:").run(&["get", "k"]);
    assert!([3, 4].contains(&no_sentinel_pw.status), "{no_sentinel_pw:?}");
    no_sentinel_pw.one_error_line();
    // A wrong master password: refused by the master, status 4.
    let wrong = env(&url(":wrong-pw-3@", "?sentinel_password=sentinel-pw-2"), "pw:").run(&["get", "k"]);
    wrong.code(4).one_error_line();
    for o in [&no_sentinel_pw, &wrong] {
        for secret in ["master-pw-1", "sentinel-pw-2", "wrong-pw-3"] {
            assert!(!o.stderr.contains(secret), "{}", o.stderr);
        }
    }
}

#[test]
fn an_unknown_sentinel_service_is_status_4_naming_it() {
    let Some(url) = crate::util::rig::server("KCACHE_TEST_REDIS_SENTINEL_URL") else { return };
    let (sentinels, _) = url.rsplit_once("/kcache/").expect("the rig's service is kcache");
    let out = env(&format!("{sentinels}/cahce/0"), "p:").run(&["get", "k"]);
    out.code(4).one_error_line().stderr_has("'cahce'").stderr_has("kcache");
}

#[test]
fn sentinels_that_never_answer_fail_within_the_connect_timeout() {
    let silent = fake_server(None);
    let start = Instant::now();
    let url = format!("redis+sentinel://{silent}/kcache/0");
    let out = run_within(&env(&url, "p:"), &["get", "k"], None, Duration::from_secs(15));
    out.code(3).one_error_line().stderr_has("sentinel");
    assert!(start.elapsed() < Duration::from_secs(8), "took {:?}", start.elapsed());
}

#[test]
fn no_sentinel_reachable_is_status_3() {
    let port = crate::util::servers::free_port();
    let out = env(&format!("redis+sentinel://127.0.0.1:{port}/kcache/0"), "p:").run(&["set", "k", "1", "1m"]);
    out.code(3).one_error_line().stderr_has(&format!("no sentinel answered (tried 127.0.0.1:{port})"));
}
