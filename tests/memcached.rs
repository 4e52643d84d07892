//! The memcached backend against real servers: the two the rig starts (`KCACHE_TEST_MEMCACHED`),
//! shared by every test and so only used with unique prefixes and never flushed, and servers a
//! test starts for itself ([`OwnMemcached`]) when it stops one, flushes one or counts connections.
//!
//! What Kinto writes comes from `tests/data/kinto/memcached.json` (Kinto 26.5 with
//! python-memcached 1.62); the tests read and write servers with raw ASCII commands ([`MemcachedClient`]).

use crate::util::servers::{MemcachedClient, OwnMemcached, fake_server};
use crate::util::{Env, left, secs, settings, sorted, sorted_lines, string, unique};
use kcache::backend::Cache;
use kcache::backend::memcached::hosts;
use kcache::error::ErrorKind;
use kcache::settings::Raw;
use kcache::ttl::Remaining;
use kcache::value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---- fixtures --------------------------------------------------------------------------------

/// The rig's two servers, or `None` (skipped, loudly) outside CI.
fn rig() -> Option<Vec<String>> {
    let hosts = crate::util::rig::server("KCACHE_TEST_MEMCACHED")?;
    Some(hosts.split(',').map(|h| h.trim().to_string()).collect())
}

fn cache(hosts: &[String], prefix: &str) -> Cache {
    open(hosts, prefix, None)
}

/// A cache on `hosts` with `prefix`, and `pool_timeout` when given.
fn open(hosts: &[String], prefix: &str, pool_timeout: Option<i64>) -> Cache {
    let mut entries = vec![("backend", Raw::Str("memcached".into())), ("hosts", Raw::Str(hosts.join(",")))];
    entries.push(("prefix", Raw::Str(prefix.into())));
    entries.extend(pool_timeout.map(|t| ("pool_timeout", Raw::Int(t))));
    kcache::backend::open(&settings(&entries)).expect("open")
}

/// The binary with a memcached configuration, as Kinto's environment variables give it.
fn env(hosts: &[String], prefix: &str) -> Env {
    Env::new()
        .var("KINTO_CACHE_BACKEND", "memcached")
        .var("KINTO_CACHE_HOSTS", &hosts.join(","))
        .var("KINTO_CACHE_PREFIX", prefix)
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The recorded Kinto data.
fn kinto_recording() -> serde_json::Value {
    serde_json::from_str(include_str!("data/kinto/memcached.json")).expect("memcached.json")
}

/// `{"value":V,"ttl":N}` split into V and N, checking the envelope's exact shape.
fn split_envelope(bytes: &[u8]) -> (String, f64) {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    let rest = text.strip_prefix("{\"value\":").unwrap_or_else(|| panic!("not an envelope: {text}"));
    let (value, time) = rest.rsplit_once(",\"ttl\":").unwrap_or_else(|| panic!("not an envelope: {text}"));
    let time = time.strip_suffix('}').unwrap_or_else(|| panic!("not an envelope: {text}"));
    (value.to_string(), time.parse().unwrap_or_else(|_| panic!("bad time in {text}")))
}

/// Which of `hosts` holds `key` (by raw `get` on each); panics if several do.
fn holder(hosts: &[String], key: &str) -> Option<usize> {
    let holding: Vec<usize> = (0..hosts.len()).filter(|&i| MemcachedClient::to(&hosts[i]).get(key).is_some()).collect();
    assert!(holding.len() <= 1, "{key:?} is on several servers: {holding:?}");
    holding.first().copied()
}

// ---- placement -------------------------------------------------------------------------------

/// Writes every recorded key through kcache and finds it, with raw gets, on the server
/// python-memcached put it on.
fn check_placement(hosts: &[String], field: &str) {
    let mut c = cache(hosts, "");
    let tag = string(&unique("placed"));
    for p in kinto_recording()["placement"].as_array().unwrap() {
        let key = p["key"].as_str().unwrap();
        let expected = p[field].as_u64().unwrap() as usize;
        c.set(key, &tag, secs("60")).unwrap();
        let on = holder(hosts, key);
        assert_eq!(on, Some(expected), "{key:?} (python-memcached hash {})", p["cmemcache_hash"]);
        assert_eq!(c.get(key).unwrap(), Some(tag.clone()), "{key:?}");
        c.delete(key).unwrap();
    }
}

#[test]
fn keys_land_on_the_server_python_memcached_picks_of_two() {
    let Some(hosts) = rig() else { return };
    check_placement(&hosts, "server_index_2");
}

#[test]
fn keys_land_on_the_server_python_memcached_picks_of_three() {
    let Some(servers) = OwnMemcached::several::<3>() else { return };
    let hosts: Vec<String> = servers.iter().map(|s| s.host()).collect();
    check_placement(&hosts, "server_index_3");
}

#[test]
fn the_prefixed_key_decides_the_server() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("route"));
    let mut c = cache(&hosts, &prefix);
    for i in 0..20 {
        let key = format!("k{i}");
        c.set(&key, &string("v"), secs("60")).unwrap();
        let full = format!("{prefix}{key}");
        assert_eq!(holder(&hosts, &full), Some(hosts::bucket(&full, 2)), "{full}");
    }
}

// ---- Kinto's records, both ways --------------------------------------------------------------

/// The recorded writes Kinto made that stayed on the server, with a TTL of a second or more.
fn kinto_writes() -> Vec<serde_json::Value> {
    let all = kinto_recording()["writes"].as_array().unwrap().clone();
    let kept: Vec<_> =
        all.into_iter().filter(|w| w["stored"] == true && w["set_ttl_seconds"].as_f64().unwrap() >= 1.0).collect();
    assert!(kept.len() >= 5, "the recording has the writes this test reads");
    kept
}

#[test]
fn reads_entries_as_kinto_writes_them() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("fromkinto"));
    let mut c = cache(&hosts, &prefix);
    for w in kinto_writes() {
        let ttl = w["set_ttl_seconds"].as_f64().unwrap();
        let (recorded_value, recorded_time) = split_envelope(w["wire_payload"].as_str().unwrap().as_bytes());
        assert_eq!(recorded_time, (w["client_time"].as_f64().unwrap() + ttl).ceil());
        // Kinto's bytes, with the time moved to now as Kinto would compute it.
        let payload = format!("{{\"value\":{recorded_value},\"ttl\":{}}}", (now() + ttl).ceil() as u64);
        let key = format!("{prefix}{}", w["key"].as_str().unwrap());
        let exptime = w["wire_command_line"].as_str().unwrap().split(' ').nth(3).unwrap().parse().unwrap();
        for flags in [16, 0] {
            MemcachedClient::to(&hosts[hosts::bucket(&key, 2)]).set(&key, flags, exptime, payload.as_bytes());
            let short = w["key"].as_str().unwrap();
            assert_eq!(c.get(short).unwrap().as_deref(), Some(recorded_value.as_str()), "{short} flags {flags}");
            // The server's expiry (int(ttl)) comes first; kcache counts on its seconds minus 2.
            let d = left(c.ttl(short).unwrap()).as_secs_f64();
            assert!(d <= ttl && d > ttl - 4.0, "{short}: ttl {d} for {ttl}");
        }
    }
}

#[test]
fn writes_entries_as_kinto_writes_them() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("askinto"));
    let mut c = cache(&hosts, &prefix);
    for w in kinto_writes() {
        let ttl = w["set_ttl_seconds"].as_f64().unwrap();
        let short = w["key"].as_str().unwrap();
        let key = format!("{prefix}{short}");
        let text = serde_json::to_string(&w["value_json"]).unwrap();
        let before = now();
        c.set(short, &value::encode_json(&text).unwrap(), secs(&ttl.to_string())).unwrap();
        let mut raw = MemcachedClient::to(&hosts[hosts::bucket(&key, 2)]);
        let (flags, bytes) = raw.get(&key).unwrap_or_else(|| panic!("{key} was not stored"));
        assert_eq!(flags, 16, "python-memcached's text flag");
        let (value, time) = split_envelope(&bytes);
        let (kinto_value, _) = split_envelope(w["wire_payload"].as_str().unwrap().as_bytes());
        assert_eq!(value, kinto_value, "{short}: the value bytes are Kinto's");
        assert!(time >= before + ttl && time <= now() + ttl + 0.001, "{short}: time {time}");
        // The server keeps it longer (whole seconds, rounded up, plus four; over 30 days a unix
        // time, which memcached's own clock, a second or two behind, reads as a little more).
        let server = raw.server_ttl(&key).unwrap();
        assert!(server >= ttl.ceil() as i64 + 2 && server <= ttl.ceil() as i64 + 7, "{short}: server ttl {server}");
    }
}

#[test]
fn entries_that_are_not_kintos_are_refused_with_status_4() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("foreign"));
    let mut c = cache(&hosts, &prefix);
    for (flags, data) in [(1u32, &b"\x80\x04K\x01."[..]), (16, b"plain text"), (16, br#"{"value":1}"#)] {
        let key = format!("{prefix}k{flags}{}", data.len());
        MemcachedClient::to(&hosts[hosts::bucket(&key, 2)]).set(&key, flags, 60, data);
        let e = c.get(&key[prefix.len()..]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Backend, "{data:?}");
        assert!(e.to_string().contains("cannot be read as a Kinto cache entry"), "{e}");
    }
}

/// The recorded Kinto write of `key`.
fn kinto_write(key: &str) -> serde_json::Value {
    let writes = kinto_recording()["writes"].as_array().unwrap().clone();
    writes.into_iter().find(|w| w["key"] == key).unwrap_or_else(|| panic!("no recorded write {key}"))
}

/// Writes the recorded write `w` to `server` as Kinto would write it now: python-memcached's
/// command line (flags 16, exptime `int(ttl)`, its trailing space) and Kinto's payload, with the
/// envelope's time `ceil(now + ttl)`. Returns the envelope's time.
fn write_as_kinto(server: &OwnMemcached, w: &serde_json::Value) -> f64 {
    let ttl = w["set_ttl_seconds"].as_f64().unwrap();
    let line = w["wire_command_line"].as_str().unwrap();
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!((words[0], words[2], words[3]), ("set", "16", (ttl as i64).to_string().as_str()), "{line}");
    let (value, recorded_time) = split_envelope(w["wire_payload"].as_str().unwrap().as_bytes());
    assert_eq!(recorded_time, (w["client_time"].as_f64().unwrap() + ttl).ceil(), "the recording's envelope");
    let time = (now() + ttl).ceil();
    let payload = format!("{{\"value\":{value},\"ttl\":{}}}", time as u64);
    let command = format!("set {} 16 {} {} \r\n{payload}\r\n", words[1], words[3], payload.len());
    assert_eq!(server.raw(&command), ["STORED"]);
    time
}

#[test]
fn ttl_of_a_kinto_entry_is_the_servers_expiry_which_comes_first() {
    // Kinto's set("ttl-3600s", "alive", 3600): exptime 3600, envelope ceil(now + 3600). The
    // server drops it up to a second before the envelope's time: `ttl` follows the server.
    let Some([server]) = OwnMemcached::several::<1>() else { return };
    let w = kinto_write("ttl-3600s");
    let envelope_time = write_as_kinto(&server, &w);
    assert!(envelope_time - now() > 3600.0, "the envelope alone would say more than 3600 s");
    let e = env(&[server.host()], "kinto:");
    let out = e.run(&["ttl", "--ms", "ttl-3600s"]);
    let ms: u64 = out.ok().stdout.trim().parse().unwrap();
    assert!((3_597_000..=3_600_000).contains(&ms), "ttl --ms {ms}: never more than the server gives it");
    let secs: u64 = e.run(&["ttl", "ttl-3600s"]).ok().stdout.trim().parse().unwrap();
    assert!((3597..=3600).contains(&secs), "ttl {secs}");
    e.run(&["get", "ttl-3600s"]).ok().stdout_is("alive\n");
    // A batch's ttl says the same (one `mg` of its own in the pipeline).
    let mut c = cache(&[server.host()], "kinto:");
    let grouped = c.run_group(&[GroupOp::Get("ttl-3600s"), GroupOp::Ttl("ttl-3600s")]);
    let Ok(GroupResult::Remaining(Remaining::Left(d))) = grouped[1] else { panic!("{grouped:?}") };
    assert!(d <= Duration::from_secs(3600) && d >= Duration::from_secs(3597), "{d:?}");
}

#[test]
fn a_kinto_entry_is_live_until_its_server_drops_it_and_never_after() {
    // Kinto's set("ttl-1.9s", [1,2], 1.9): exptime 1, envelope ceil(now + 1.9), 1.9 to 2.9 s
    // away. The server drops it within a second; kcache's `ttl` never promises more.
    let Some([server]) = OwnMemcached::several::<1>() else { return };
    let w = kinto_write("ttl-1.9s");
    let envelope_time = write_as_kinto(&server, &w);
    let e = env(&[server.host()], "kinto:");
    let out = e.run(&["ttl", "--ms", "ttl-1.9s"]);
    let answered = Instant::now();
    // The server's own end of the item, to within a poll.
    while server.raw("mg kinto:ttl-1.9s t\r\n") != ["EN"] {
        assert!(answered.elapsed() < Duration::from_secs(3), "the server still holds it");
        std::thread::sleep(Duration::from_millis(2));
    }
    let real_ms = answered.elapsed().as_millis() as u64;
    if out.status == 0 {
        let ms: u64 = out.stdout.trim().parse().unwrap();
        assert!(ms >= 1 && ms <= real_ms, "ttl --ms said {ms}; the server dropped it {real_ms} ms later");
    } else {
        // The server's clock ticked between the write and the read: it was gone already.
        out.code(1).stdout_is("-2\n");
    }
    assert!(envelope_time > now(), "the envelope's time has not come: the server decided");
    e.run(&["get", "ttl-1.9s"]).code(1).stdout_is("");
    e.run(&["ttl", "ttl-1.9s"]).code(1).stdout_is("-2\n");
    e.run(&["expire", "ttl-1.9s", "1h"]).code(1);
    e.run(&["delete", "ttl-1.9s"]).code(1);
    assert_eq!(server.raw("get kinto:ttl-1.9s\r\n"), ["END"], "expire brought nothing back");
}

// ---- expiry ----------------------------------------------------------------------------------

#[test]
fn a_sub_second_ttl_expires_on_time_although_the_server_keeps_it_longer() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("short"));
    let mut c = cache(&hosts, &prefix);
    let key = format!("{prefix}k");
    let mut raw = MemcachedClient::to(&hosts[hosts::bucket(&key, 2)]);
    c.set("k", &string("v"), secs("0.3")).unwrap();
    assert_eq!(c.get("k").unwrap(), Some(string("v")));
    assert!(left(c.ttl("k").unwrap()) <= Duration::from_millis(300));
    let server = raw.server_ttl(&key).expect("stored");
    assert!(server > 0, "never 0 (= never expires): {server}");
    std::thread::sleep(Duration::from_millis(320));
    assert!(raw.get(&key).is_some(), "the server still has it");
    assert_eq!(c.get("k").unwrap(), None, "but the envelope says it expired");
    assert_eq!(c.ttl("k").unwrap(), Remaining::Missing);
}

#[test]
fn a_forty_day_ttl_is_sent_as_a_unix_time() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("long"));
    let mut c = cache(&hosts, &prefix);
    c.set("k", &string("forty days"), secs("40d")).unwrap();
    assert_eq!(c.get("k").unwrap(), Some(string("forty days")));
    let d = left(c.ttl("k").unwrap());
    assert_eq!(kcache::ttl::whole_seconds_up(d), 3_456_000);
    let key = format!("{prefix}k");
    let server = MemcachedClient::to(&hosts[hosts::bucket(&key, 2)]).server_ttl(&key).unwrap();
    assert!((3_456_002..=3_456_007).contains(&server), "server ttl {server}");
    // Exactly 30 days: the largest relative exptime would be 30 days, so with the margin it is
    // sent as a unix time too, and the item stays.
    c.set("edge", &string("thirty days"), secs("30d")).unwrap();
    assert_eq!(kcache::ttl::whole_seconds_up(left(c.ttl("edge").unwrap())), 2_592_000);
}

#[test]
fn expire_on_a_missing_or_expired_key_writes_nothing() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("ghost"));
    let mut c = cache(&hosts, &prefix);
    assert!(!c.expire("ghost", secs("10")).unwrap());
    let ghost = format!("{prefix}ghost");
    assert_eq!(holder(&hosts, &ghost), None, "Kinto would have created {{\"value\":null}} here");

    c.set("gone", &string("v"), secs("0.05")).unwrap();
    let gone = format!("{prefix}gone");
    let mut raw = MemcachedClient::to(&hosts[hosts::bucket(&gone, 2)]);
    std::thread::sleep(Duration::from_millis(80));
    let before = raw.get(&gone).expect("the server still holds it");
    assert!(!c.expire("gone", secs("60")).unwrap());
    assert_eq!(raw.get(&gone), Some(before), "an expired entry is not brought back");
    assert_eq!(c.get("gone").unwrap(), None);
}

#[test]
fn expire_rewrites_the_envelope_and_the_server_exptime() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("exp"));
    let mut c = cache(&hosts, &prefix);
    c.set("k", &value::encode_json(r#"{"é":[1,2.5]}"#).unwrap(), secs("5")).unwrap();
    assert!(c.expire("k", secs("2h")).unwrap());
    let key = format!("{prefix}k");
    let mut raw = MemcachedClient::to(&hosts[hosts::bucket(&key, 2)]);
    let (flags, bytes) = raw.get(&key).unwrap();
    let (v, time) = split_envelope(&bytes);
    assert_eq!((flags, v.as_str()), (16, r#"{"\u00E9":[1,2.5]}"#));
    assert!((time - now() - 7200.0).abs() < 2.0, "{time}");
    assert!(raw.server_ttl(&key).unwrap() > 7000);
}

// ---- delete ----------------------------------------------------------------------------------

#[test]
fn concurrent_deletes_of_one_entry_give_its_value_once() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("nonce"));
    let mut c = cache(&hosts, &prefix);
    for round in 0..10 {
        let key = format!("nonce{round}");
        c.set(&key, &string("token"), secs("60")).unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let winners: usize = (0..6)
            .map(|_| {
                let (barrier, key, hosts, prefix) = (barrier.clone(), key.clone(), hosts.clone(), prefix.clone());
                std::thread::spawn(move || {
                    let mut mine = cache(&hosts, &prefix);
                    mine.get("warm-up").unwrap(); // connected before the race
                    barrier.wait();
                    mine.delete(&key).unwrap().is_some() as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(winners, 1, "round {round}: exactly one delete gets the value");
        assert_eq!(holder(&hosts, &format!("{prefix}{key}")), None);
    }
}

#[test]
fn delete_of_an_expired_entry_removes_it_and_returns_nothing() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("del"));
    let mut c = cache(&hosts, &prefix);
    c.set("k", &string("v"), secs("0.05")).unwrap();
    std::thread::sleep(Duration::from_millis(80));
    let key = format!("{prefix}k");
    assert!(holder(&hosts, &key).is_some());
    assert_eq!(c.delete("k").unwrap(), None);
    assert_eq!(holder(&hosts, &key), None);
}

// ---- limits ----------------------------------------------------------------------------------

#[test]
fn a_value_over_the_item_size_limit_is_status_4_and_one_under_it_is_stored() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("big"));
    let mut c = cache(&hosts, &prefix);
    let fits = "x".repeat(1024 * 1024 - 1024);
    c.set("fits", &string(&fits), secs("60")).unwrap();
    assert_eq!(c.get("fits").unwrap().map(|v| v.len()), Some(fits.len() + 2));
    c.delete("fits").unwrap();

    let e = c.set("big", &string(&"x".repeat(1024 * 1024)), secs("60")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Backend);
    let server = &hosts[hosts::bucket(&format!("{prefix}big"), 2)];
    let line = &e.render(false)[0];
    assert!(line.contains("over the item size limit") && line.contains(server.as_str()), "{line}");
    assert!(e.hint().unwrap().contains("-I"));
    // The connection is still usable afterwards (a new one, if need be).
    c.set("after", &string("ok"), secs("60")).unwrap();
    assert_eq!(c.get("after").unwrap(), Some(string("ok")));

    // Through the binary: one error line and its hint, status 4.
    let big = "y".repeat(1024 * 1024 + 10);
    let out = env(&hosts, &prefix).run_stdin(&["set", "big", "-", "60"], Some(big.as_bytes()));
    out.code(4).stderr_has("over the item size limit").stderr_has("kcache: hint:").one_error_line();
}

#[test]
fn bad_keys_never_reach_a_server() {
    let Some([mut server]) = OwnMemcached::several::<1>() else { return };
    let hosts = vec![server.host().clone()];
    let mut raw = MemcachedClient::to(&server.host());
    raw.set("victim", 16, 60, br#"{"value":"still here","ttl":9999999999}"#);
    let connections = raw.stat("total_connections");
    let e = env(&hosts, "");
    let long = "k".repeat(251);
    for args in [
        vec!["get", "x\r\ndelete victim"],
        vec!["delete", "x\r\ndelete victim"],
        vec!["set", "x\r\ndelete victim", "v", "10"],
        vec!["get", "x delete victim"],
        vec!["ttl", "a b"],
        vec!["expire", "tab\there", "10"],
        vec!["get", "del\u{7f}"],
        vec!["get", &long],
        vec!["get", ""],
    ] {
        e.run(&args).code(2).one_error_line();
    }
    // A prefix with a space is refused the same way; one with CR LF is refused by the settings.
    env(&hosts, "a b").run(&["get", "k"]).code(2).stderr_has("a space");
    env(&hosts, "x\r\ndelete victim ").run(&["get", "k"]).code(2);
    assert_eq!(raw.stat("total_connections"), connections, "kcache never connected");
    assert_eq!(raw.stat("cmd_get"), 0);
    assert!(raw.get("victim").is_some());
    e.run(&["get", "victim"]).ok().stdout_is("still here\n");
    server.kill();
}

// ---- unavailable servers and flush -----------------------------------------------------------

#[test]
fn a_stopped_server_is_status_3_naming_it_quickly() {
    let Some([mut server]) = OwnMemcached::several::<1>() else { return };
    let hosts = vec![server.host().clone()];
    let e = env(&hosts, "p:").var("KINTO_CACHE_POOL_TIMEOUT", "1");
    e.run(&["set", "k", "v", "60"]).ok();
    server.kill();
    for args in [&["get", "k"][..], &["set", "k", "v", "60"], &["delete", "k"], &["ping"]] {
        let start = Instant::now();
        let out = e.run(args);
        out.code(3).one_error_line().stderr_has(&server.host());
        assert!(start.elapsed() < Duration::from_secs(4), "{args:?} took {:?}", start.elapsed());
    }
}

#[test]
fn ping_checks_every_server_every_time() {
    let Some([live]) = OwnMemcached::several::<1>() else { return };
    let dead = format!("127.0.0.1:{}", crate::util::servers::free_port());
    for hosts in [[live.host(), dead.clone()], [dead.clone(), live.host()]] {
        let e = env(&hosts, "p:").var("KINTO_CACHE_POOL_TIMEOUT", "1");
        for _ in 0..5 {
            e.run(&["ping"]).code(3).one_error_line().stderr_has(&dead);
        }
    }
    let Some(servers) = OwnMemcached::several::<3>() else { return };
    let hosts: Vec<String> = servers.iter().map(|s| s.host()).collect();
    // Read back (a get hit), then deleted (kcache deletes with `cas`: a cas hit) on each server.
    let hits = |s: &OwnMemcached| (s.stat("get_hits"), s.stat("cas_hits"));
    let before: Vec<(u64, u64)> = servers.iter().map(hits).collect();
    env(&hosts, "p:").run(&["ping"]).ok().stdout_is("ok\n");
    for (i, s) in servers.iter().enumerate() {
        let (gets, cases) = hits(s);
        assert!(gets > before[i].0, "server {i}: its heartbeat was written and read back");
        assert!(cases > before[i].1, "server {i}: its heartbeat was deleted");
    }
}

#[test]
fn no_failover_a_key_whose_server_is_down_is_an_error() {
    let Some([live]) = OwnMemcached::several::<1>() else { return };
    let dead = format!("127.0.0.1:{}", crate::util::servers::free_port());
    let hosts = [live.host().clone(), dead.clone()];
    let mut c = open(&hosts, "", Some(1));
    let on = |want: usize| (0..).map(|i| format!("key{i}")).find(|k| hosts::bucket(k, 2) == want).unwrap();
    let (k_live, k_dead) = (on(0), on(1));
    c.set(&k_live, &string("v"), secs("60")).unwrap();
    assert_eq!(c.get(&k_live).unwrap(), Some(string("v")));
    for e in [c.set(&k_dead, &string("v"), secs("60")).unwrap_err(), c.get(&k_dead).unwrap_err()] {
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.render(false)[0].contains(&format!("cannot connect to memcached at {dead}")), "{e}");
    }
    assert!(MemcachedClient::to(&live.host()).get(&k_dead).is_none(), "python-memcached would have rehashed it here");
}

#[test]
fn flush_is_refused_with_a_prefix_and_flush_all_empties_every_server() {
    let Some(servers) = OwnMemcached::several::<2>() else { return };
    let hosts: Vec<String> = servers.iter().map(|s| s.host()).collect();
    let e = env(&hosts, "app:");
    for i in 0..10 {
        e.run(&["set", &format!("k{i}"), "v", "60"]).ok();
    }
    MemcachedClient::to(&hosts[0]).set("other-app", 0, 0, b"x");
    let out = e.run(&["flush"]);
    out.code(2).stderr_has("cannot flush only the keys under the prefix 'app:'").stderr_has("--all");
    assert!(MemcachedClient::to(&hosts[0]).get("other-app").is_some(), "nothing was flushed");
    assert!(hosts.iter().all(|h| MemcachedClient::to(h).stat("curr_items") > 0));

    e.run(&["flush", "--all"]).ok().stdout_is("");
    assert!(MemcachedClient::to(&hosts[0]).get("other-app").is_none());
    for i in 0..10 {
        e.run(&["get", &format!("k{i}")]).code(1);
    }
    // With an empty prefix, flush means everything, as in Kinto.
    let bare = env(&hosts, "");
    bare.run(&["set", "k", "v", "60"]).ok();
    bare.run(&["flush"]).ok();
    bare.run(&["get", "k"]).code(1);
}

#[test]
fn flush_all_flushes_the_servers_it_reaches_then_names_the_others() {
    let Some([live]) = OwnMemcached::several::<1>() else { return };
    let dead = format!("127.0.0.1:{}", crate::util::servers::free_port());
    MemcachedClient::to(&live.host()).set("x", 0, 0, b"x");
    let e = env(&[dead.clone(), live.host().clone()], "").var("KINTO_CACHE_POOL_TIMEOUT", "1");
    let out = e.run(&["flush", "--all"]);
    out.code(3).one_error_line().stderr_has(&format!("could not flush 1 of 2 memcached servers ({dead}"));
    assert!(MemcachedClient::to(&live.host()).get("x").is_none(), "the live server was flushed");
}

#[test]
fn flush_of_hung_servers_takes_one_pool_timeout_in_all_and_names_them() {
    // Two servers that accept connections and never answer: each flush_all waits out
    // pool_timeout (2 s here); one after the other that was 4 s, at once it is 2 s.
    let hung = [fake_server(None), fake_server(None)];
    let e = env(&hung, "").var("KINTO_CACHE_POOL_TIMEOUT", "2");
    let start = Instant::now();
    let out = crate::util::servers::run_within(&e, &["flush", "--all"], None, Duration::from_secs(10));
    let took = start.elapsed();
    out.code(3).one_error_line().stderr_has("could not flush 2 of 2 memcached servers").stderr_has("none flushed");
    for h in &hung {
        out.stderr_has(h);
    }
    assert!(took >= Duration::from_secs(2), "{took:?}: it waited pool_timeout for the replies");
    assert!(took < Duration::from_millis(3500), "{took:?}: the servers were waited for one after the other");

    // One live server among hung ones is flushed all the same, in the same time.
    let Some([live]) = OwnMemcached::several::<1>() else { return };
    MemcachedClient::to(&live.host()).set("x", 0, 0, b"x");
    let hosts = [hung[0].clone(), live.host(), hung[1].clone()];
    let e = env(&hosts, "").var("KINTO_CACHE_POOL_TIMEOUT", "2");
    let start = Instant::now();
    let out = crate::util::servers::run_within(&e, &["flush", "--all"], None, Duration::from_secs(10));
    assert!(start.elapsed() < Duration::from_millis(3500), "{:?}", start.elapsed());
    out.code(3)
        .one_error_line()
        .stderr_has("could not flush 2 of 3 memcached servers")
        .stderr_has("the other 1 flushed");
    assert!(MemcachedClient::to(&live.host()).get("x").is_none(), "the live server was flushed");
}

#[test]
fn a_garbage_reply_is_quoted_escaped_in_valid_utf8() {
    // A "server" that answers bytes that are not UTF-8, with a terminal escape among them.
    let garbage = fake_server(Some(b"\xff\xfe junk \x1b[2J\xc3\r\n"));
    let refusing = fake_server(Some(b"SERVER_ERROR \xff\xfe\r\n"));
    for (host, args, says) in [
        (&garbage, &["get", "k"][..], r#"unexpected reply "\xff\xfe junk \x1b[2J\xc3""#),
        (&garbage, &["ttl", "k"], r"\xff\xfe junk"),
        (&garbage, &["set", "k", "v", "60"], r"\xff\xfe junk"),
        (&garbage, &["delete", "k"], r"\xff\xfe junk"),
        (&garbage, &["flush", "--all"], r"\xff\xfe junk"),
        (&refusing, &["set", "k", "v", "60"], r"refused the command: SERVER_ERROR \xff\xfe"),
    ] {
        for verbose in [false, true] {
            let e = env(std::slice::from_ref(host), "").var("KINTO_CACHE_POOL_TIMEOUT", "2");
            let mut cmd = e.command();
            if verbose {
                cmd.arg("-v");
            }
            let out = cmd.args(args).output().expect("run kcache");
            let stderr = String::from_utf8(out.stderr.clone())
                .unwrap_or_else(|_| panic!("{args:?}: stderr is not UTF-8: {:?}", out.stderr));
            assert_eq!(out.status.code(), Some(4), "{args:?}: {stderr}");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
            assert!(stderr.contains(host.as_str()), "{args:?} names the server: {stderr}");
            assert!(!stderr.contains('\u{fffd}'), "{args:?}: bytes replaced, not escaped: {stderr}");
            assert!(!stderr.chars().any(|c| c.is_control() && c != '\n'), "{args:?}: {stderr:?}");
        }
    }
}

// ---- connections -----------------------------------------------------------------------------

#[test]
fn a_command_connects_only_to_the_server_its_key_needs_and_reuses_the_connection() {
    let Some(servers) = OwnMemcached::several::<2>() else { return };
    let hosts: Vec<String> = servers.iter().map(|s| s.host()).collect();
    let mut raw: Vec<MemcachedClient> = hosts.iter().map(|h| MemcachedClient::to(h)).collect();
    let mut connections = || [raw[0].stat("total_connections"), raw[1].stat("total_connections")];
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| hosts::bucket(k, 2) == 1 && hosts::bucket(&format!("other:{k}"), 2) == 1)
        .unwrap();
    let before = connections();
    env(&hosts, "").run(&["get", &key]).code(1);
    let after = connections();
    // On the key's server only: one connection.
    assert_eq!([after[0] - before[0], after[1] - before[1]], [0, 1]);

    let mut c = cache(&hosts, "");
    for i in 0..20 {
        c.set(&key, &string(&i.to_string()), secs("60")).unwrap();
        assert_eq!(c.get(&key).unwrap(), Some(string(&i.to_string())));
    }
    // A sibling with another prefix shares the pool.
    c.sibling("other:").unwrap().get(&key).unwrap();
    let last = connections();
    assert_eq!([last[0] - after[0], last[1] - after[1]], [0, 1], "one connection for 41 commands");
}

// ---- configuration and the binary ------------------------------------------------------------

#[test]
fn the_binary_runs_every_command() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("bin"));
    let e = env(&hosts, &prefix);
    e.run(&["set", "k", "é☃", "60"]).ok().stdout_is("");
    e.run(&["get", "k"]).ok().stdout_is("é☃\n");
    e.run(&["get", "--json", "k"]).ok().stdout_is("\"é☃\"\n");
    e.run(&["ttl", "k"]).ok().stdout_is("60\n");
    e.run(&["expire", "k", "2h"]).ok();
    e.run(&["ttl", "k"]).ok().stdout_is("7200\n");
    e.run(&["set", "--json", "j", r#"{"a": [1, 2.0]}"#, "500ms"]).ok();
    e.run(&["get", "j"]).ok().stdout_is("{\"a\":[1,2.0]}\n");
    e.run(&["delete", "k"]).ok().stdout_is("é☃\n");
    e.run(&["get", "k"]).code(1).stdout_is("");
    e.run(&["ttl", "k"]).code(1);
    e.run(&["expire", "k", "10"]).code(1);
    e.run(&["delete", "k"]).code(1);
    e.run(&["ping"]).ok();
    e.run(&["migrate"]).ok();
    e.run(&["purge"]).ok();
}

#[test]
fn hosts_are_read_from_the_url_as_kinto_init_writes_them() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("url"));
    let e = Env::new()
        .var("KINTO_CACHE_BACKEND", "kinto.core.cache.memcached")
        .var("KINTO_CACHE_URL", &hosts.join(" "))
        .var("KINTO_CACHE_PREFIX", &prefix);
    e.run(&["set", "k", "v", "60"]).ok();
    let full = format!("{prefix}k");
    assert_eq!(holder(&hosts, &full), Some(hosts::bucket(&full, 2)));
    // And from a kinto.ini with multi-line hosts.
    let ini = format!(
        "[app:main]\nkinto.cache_backend = kinto.core.cache.memcached\nkinto.cache_prefix = {prefix}\n\
         kinto.cache_hosts =\n    {}\n    {}\n",
        hosts[0], hosts[1]
    );
    let e = Env::new();
    let path = e.write("kinto.ini", &ini);
    e.run(&["-c", path.to_str().unwrap(), "get", "k"]).ok().stdout_is("v\n");
}

#[test]
fn no_hosts_and_bad_hosts_are_status_2() {
    let e = Env::new().var("KINTO_CACHE_BACKEND", "memcached");
    e.run(&["get", "k"]).code(2).stderr_has("no memcached host").stderr_has("kcache: hint:");
    let e = e.var("KINTO_CACHE_HOSTS", "127.0.0.1:11211 127.0.0.1:port");
    e.run(&["get", "k"]).code(2).one_error_line().stderr_has("'127.0.0.1:port'");
}

#[test]
fn a_unix_socket_host_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("memcached.sock");
    if crate::util::servers::is_root() {
        // memcached drops to nobody, who must be able to create the socket.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let Some(server) = OwnMemcached::unix(&socket) else { return };
    let e = env(std::slice::from_ref(&server.host()), "u:");
    e.run(&["set", "k", "over a socket", "60"]).ok();
    e.run(&["get", "k"]).ok().stdout_is("over a socket\n");
    e.run(&["-v", "ttl", "k"]).ok().stderr_has(&format!("memcached at {}", server.host()));
}

// ---- groups (kcache batch) -------------------------------------------------------------------

use kcache::backend::{GroupOp, GroupResult};

/// A key (without the prefix) that `prefix` puts on server `index` of two, not in `taken`.
fn key_on(prefix: &str, index: usize, taken: &mut Vec<String>) -> String {
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| hosts::bucket(&format!("{prefix}{k}"), 2) == index && !taken.contains(k))
        .unwrap();
    taken.push(key.clone());
    key
}

#[test]
fn a_group_gives_exactly_what_one_by_one_gives() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("group"));
    let mut c = cache(&hosts, &prefix);
    let mut taken = Vec::new();
    // a and b on the first server, c and d on the second; m is never written.
    let (a, b) = (key_on(&prefix, 0, &mut taken), key_on(&prefix, 0, &mut taken));
    let (k_c, d) = (key_on(&prefix, 1, &mut taken), key_on(&prefix, 1, &mut taken));
    let m = key_on(&prefix, 1, &mut taken);
    let (v1, v2, small) = (string("v1"), string("v2 é"), string("small"));
    let json = value::encode_json(r#"{"a":[1,"é",null]}"#).unwrap();
    let big = string(&"x".repeat(1024 * 1024));
    let ops = vec![
        GroupOp::Get(&a),
        GroupOp::Set(&a, &v1, secs("60")),
        GroupOp::Get(&a),
        GroupOp::Ttl(&a),
        GroupOp::Set(&k_c, &json, secs("3600")),
        GroupOp::Get(&k_c),
        GroupOp::Get(&m),
        GroupOp::Ttl(&m),
        GroupOp::Set(&b, &big, secs("60")), // over the item size limit: status 4, alone
        GroupOp::Get(&b),
        GroupOp::Set(&d, &v2, secs("0.5")),
        // Reads in a row, on both servers: one multi-key get each, a key asked twice.
        GroupOp::Get(&a),
        GroupOp::Get(&k_c),
        GroupOp::Get(&d),
        GroupOp::Ttl(&d),
        GroupOp::Get(&a),
        GroupOp::Get(&m),
        GroupOp::Expire(&a, secs("2h")),
        GroupOp::Ttl(&a),
        GroupOp::Delete(&k_c),
        GroupOp::Get(&k_c),
        GroupOp::Delete(&k_c),
        GroupOp::Set(&a, &v2, secs("120")),
        GroupOp::Get(&a),
        GroupOp::Expire(&m, secs("10")),
        GroupOp::Delete(&m),
        GroupOp::Set(&b, &small, secs("60")),
        GroupOp::Get(&b),
        GroupOp::Set(&a, &v1, secs("0")), // TTL 0: removes the key
        GroupOp::Get(&a),
        GroupOp::Expire(&d, secs("0")), // expires it now
        GroupOp::Get(&d),
        GroupOp::Ttl(&d),
        GroupOp::Get("bad key"), // refused before anything is sent
        GroupOp::Set(&d, &v1, secs("30d")),
        GroupOp::Ttl(&d),
    ];
    let single: Vec<_> = ops.iter().map(|op| op.run_alone_on(&mut c)).collect();
    // The same starting point (nothing under the prefix), then the same operations as a group.
    for k in &taken {
        c.delete(k).unwrap();
    }
    let grouped = c.run_group(&ops);
    assert_eq!(grouped.len(), ops.len());
    for (i, op) in ops.iter().enumerate() {
        crate::util::assert_same_result(&format!("op {i} {op:?}"), &grouped[i], &single[i]);
    }
    // A few results spelled out, so that the comparison cannot pass on two wrong answers.
    assert_eq!(grouped[2].as_ref().unwrap(), &GroupResult::Value(Some(v1.clone())));
    let e = grouped[8].as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Backend);
    assert!(e.to_string().contains("over the item size limit") && e.to_string().contains(&hosts[0]), "{e}");
    assert_eq!(grouped[12].as_ref().unwrap(), &GroupResult::Value(Some(json.clone())));
    assert_eq!(grouped[20].as_ref().unwrap(), &GroupResult::Value(None));
    assert_eq!(grouped[27].as_ref().unwrap(), &GroupResult::Value(Some(small.clone())));
    assert_eq!(grouped[33].as_ref().unwrap_err().kind(), ErrorKind::Input);
    // What the group left is what the single operations left.
    assert_eq!(c.get(&b).unwrap(), Some(small));
    assert_eq!(kcache::ttl::whole_seconds_up(left(c.ttl(&d).unwrap())), 2_592_000);
    assert_eq!(c.get(&a).unwrap(), None);
}

/// A TCP proxy in front of one memcached: it logs every command line the client sends and
/// holds each piece of the server's replies for `delay` (a slow network).
struct Proxy {
    host: String,
    commands: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(upstream: &str, delay: Duration) -> Proxy {
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let host = listener.local_addr().unwrap().to_string();
        let commands: Arc<Mutex<Vec<String>>> = Arc::default();
        let (log, upstream) = (Arc::clone(&commands), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let mut server = TcpStream::connect(&upstream).expect("upstream");
                let (mut client_in, mut server_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    // Client to server, parsing commands: a line, and for set/cas its data.
                    let (mut pending, mut skip, mut buf) = (Vec::new(), 0usize, [0u8; 65536]);
                    while let Ok(n) = client_in.read(&mut buf) {
                        if n == 0 || server_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        loop {
                            if skip > 0 {
                                let s = skip.min(pending.len());
                                pending.drain(..s);
                                skip -= s;
                                if skip > 0 {
                                    break;
                                }
                            }
                            let Some(end) = pending.windows(2).position(|w| w == b"\r\n") else { break };
                            let line = String::from_utf8_lossy(&pending[..end]).into_owned();
                            pending.drain(..end + 2);
                            let words: Vec<&str> = line.split(' ').collect();
                            let length = match words[0] {
                                "set" | "cas" => words.get(4),
                                "ms" => words.get(2),
                                _ => None,
                            };
                            if let Some(length) = length {
                                skip = length.parse::<usize>().unwrap() + 2;
                            }
                            log.lock().unwrap().push(line);
                        }
                    }
                    let _ = server_out.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = server.read(&mut buf) {
                        std::thread::sleep(delay);
                        if n == 0 || client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy { host, commands }
    }

    /// The command lines sent since the last call, verb first.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.commands.lock().unwrap())
    }
}

#[test]
fn a_group_is_one_pipeline_per_server_with_one_meta_command_per_operation() {
    let Some(servers) = OwnMemcached::several::<2>() else { return };
    let delay = Duration::from_millis(50);
    let proxies = [Proxy::start(&servers[0].host(), delay), Proxy::start(&servers[1].host(), delay)];
    let hosts: Vec<String> = proxies.iter().map(|p| p.host.clone()).collect();
    let mut c = cache(&hosts, "p:");
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let on = |s: usize| -> Vec<&String> { keys.iter().filter(|k| hosts::bucket(&format!("p:{k}"), 2) == s).collect() };
    assert!(!on(0).is_empty() && !on(1).is_empty());
    let v = string("v");

    // Sets then gets of the same keys, alternating, as `kcache batch` sees them: one by one,
    // 80 round trips of at least 50 ms each; as a group, about one per server, at once.
    let mut ops = Vec::new();
    for k in &keys {
        ops.push(GroupOp::Set(k, &v, secs("60")));
        ops.push(GroupOp::Get(k));
    }
    let start = Instant::now();
    let results = c.run_group(&ops);
    let took = start.elapsed();
    assert!(results.iter().skip(1).step_by(2).all(|r| r.as_ref().unwrap() == &GroupResult::Value(Some(v.clone()))));
    assert!(took < Duration::from_millis(1000), "{took:?} for 80 commands: not pipelined");
    for (s, proxy) in proxies.iter().enumerate() {
        let sent = proxy.take();
        // Flags 16, exptime 60 s + 4 (`ms <key> <bytes> F16 T64`), then the read (`mg`).
        let want: Vec<[String; 2]> = on(s)
            .iter()
            .flat_map(|k| [[format!("ms p:{k} "), " F16 T64".into()], [format!("mg p:{k} v f"), String::new()]])
            .collect();
        assert_eq!(sent.len(), want.len(), "server {s}: {sent:?}");
        for (line, [start, end]) in sent.iter().zip(&want) {
            assert!(
                line.starts_with(start.as_str()) && line.ends_with(end.as_str()),
                "server {s}: {line:?}, expected {start:?}...{end:?}"
            );
        }
    }

    // Reads: one `mg` each, in order, in one pipeline per server; a `ttl` asks for the server's
    // time left too (`t`), in its place.
    let mut reads: Vec<GroupOp<'_>> = keys.iter().map(|k| GroupOp::Get(k)).collect();
    reads.push(GroupOp::Ttl(&keys[0]));
    reads.push(GroupOp::Get("missing"));
    let start = Instant::now();
    let results = c.run_group(&reads);
    assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
    assert!(results[..40].iter().all(|r| r.as_ref().unwrap() == &GroupResult::Value(Some(v.clone()))));
    assert!(matches!(results[40], Ok(GroupResult::Remaining(Remaining::Left(_)))));
    assert_eq!(results[41].as_ref().unwrap(), &GroupResult::Value(None));
    for (s, proxy) in proxies.iter().enumerate() {
        let mut lines: Vec<String> = on(s).iter().map(|k| format!("mg p:{k} v f")).collect();
        if hosts::bucket(&format!("p:{}", keys[0]), 2) == s {
            lines.push(format!("mg p:{} v f t", keys[0]));
        }
        if hosts::bucket("p:missing", 2) == s {
            lines.push("mg p:missing v f".into());
        }
        assert_eq!(proxy.take(), lines, "server {s}");
    }

    // expire and delete run alone (`mg` with the CAS token, then `ms` over it), in their place.
    let k0 = on(0)[0].as_str();
    let ops =
        [GroupOp::Get(k0), GroupOp::Expire(k0, secs("1h")), GroupOp::Ttl(k0), GroupOp::Delete(k0), GroupOp::Get(k0)];
    let results = c.run_group(&ops);
    assert_eq!(results[1].as_ref().unwrap(), &GroupResult::Existed(true));
    assert_eq!(results[3].as_ref().unwrap(), &GroupResult::Value(Some(v.clone())));
    assert_eq!(results[4].as_ref().unwrap(), &GroupResult::Value(None));
    let verbs: Vec<String> = proxies[0].take().iter().map(|l| l.split(' ').next().unwrap().to_string()).collect();
    assert_eq!(verbs, ["mg", "mg", "ms", "mg", "mg", "ms", "mg"]);
}

#[test]
fn a_group_fails_only_the_operations_of_a_server_that_is_down_naming_it() {
    let Some(mut servers) = OwnMemcached::several::<2>() else { return };
    let hosts: Vec<String> = servers.iter().map(|s| s.host()).collect();
    let mut c = open(&hosts, "", Some(1));
    let mut taken = Vec::new();
    let (a, b) = (key_on("", 0, &mut taken), key_on("", 1, &mut taken));
    let v = string("v");
    let ops = [
        GroupOp::Set(&a, &v, secs("60")),
        GroupOp::Set(&b, &v, secs("60")),
        GroupOp::Get(&a),
        GroupOp::Get(&b),
        GroupOp::Delete(&b),
        GroupOp::Ttl(&a),
    ];
    assert!(c.run_group(&ops).iter().all(|r| r.is_ok()), "both servers up");
    // The second server goes away, with a pooled connection to it: its operations fail with
    // status 3 naming it, the others are not affected, as one by one.
    servers[1].kill();
    let on_dead = [false, true, false, true, true, false];
    for round in 0..2 {
        let grouped = c.run_group(&ops);
        for (i, r) in grouped.iter().enumerate() {
            if !on_dead[i] {
                assert!(r.is_ok(), "round {round} op {i}: {r:?}");
            } else {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Unavailable, "round {round} op {i}: {e}");
                assert!(e.render(false)[0].contains(&hosts[1]), "round {round} op {i}: {e}");
            }
        }
        let single: Vec<_> = ops.iter().map(|op| op.run_alone_on(&mut c)).collect();
        for (i, (g, s)) in grouped.iter().zip(&single).enumerate() {
            assert_eq!(g.is_ok(), s.is_ok(), "round {round} op {i}: {g:?} vs {s:?}");
            if let (Err(g), Err(s)) = (g, s) {
                assert_eq!(g.kind(), s.kind(), "round {round} op {i}");
            }
        }
    }
}

#[test]
fn a_group_of_large_values_never_waits_on_itself() {
    // Each get's reply is large: were the whole group written before any reply is read,
    // memcached would stop reading (its replies not taken) while kcache still writes.
    let Some([server]) = OwnMemcached::several::<1>() else { return };
    let mut c = open(&[server.host()], "", Some(2));
    let values: Vec<String> = (0..24u8).map(|i| string(&char::from(b'a' + i).to_string().repeat(900 * 1024))).collect();
    let keys: Vec<String> = (0..24).map(|i| format!("big{i}")).collect();
    let mut ops = Vec::new();
    for (k, v) in keys.iter().zip(&values) {
        ops.push(GroupOp::Set(k, v, secs("60")));
        ops.push(GroupOp::Get(k));
    }
    ops.extend(keys.iter().map(|k| GroupOp::Get(k)));
    let results = c.run_group(&ops);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(results[2 * i].as_ref().unwrap(), &GroupResult::Stored, "set {i}");
        assert_eq!(results[2 * i + 1].as_ref().unwrap(), &GroupResult::Value(Some(v.clone())), "get {i}");
        assert_eq!(results[48 + i].as_ref().unwrap(), &GroupResult::Value(Some(v.clone())), "get {i} again");
    }
}

#[test]
fn workers_sharing_one_connection_per_server_never_wait_for_each_other() {
    // With fewer connections than workers, a group holds a connection to each of its servers
    // at once: taken in the same order by every worker, or two workers could each hold the
    // one the other waits for (until pool_timeout, then status 3).
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("order"));
    let e = env(&hosts, &prefix)
        .var("KINTO_CACHE_POOL_SIZE", "1")
        .var("KINTO_CACHE_MAX_OVERFLOW", "0")
        .var("KINTO_CACHE_POOL_TIMEOUT", "1");
    let input: String = (0..3000).map(|i| format!("set k{} v{i} 60\nget k{}\n", i % 97, (i * 7) % 97)).collect();
    let start = Instant::now();
    let out = e.run_stdin(&["batch", "--jobs", "4"], Some(input.as_bytes()));
    out.ok();
    assert_eq!(out.stdout.lines().count(), 6000);
    assert!(!out.stdout.contains("\"status\":3"));
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
}

// ---- keys and flush --match (each server's key crawler) --------------------------------------

#[test]
fn keys_lists_both_servers_and_entries_as_kinto_writes_them_never_expired_ones() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("keys"));
    let e = env(&hosts, &prefix);
    // Kinto's own writes, raw: python-memcached's exptime int(ttl), envelope ceil(now + ttl).
    // (Those of a minute or more: the server drops `ttl-1.9s` within about a second.)
    let mut want = Vec::new();
    for w in kinto_writes().into_iter().filter(|w| w["set_ttl_seconds"].as_f64().unwrap() >= 60.0) {
        let ttl = w["set_ttl_seconds"].as_f64().unwrap();
        let (value, _) = split_envelope(w["wire_payload"].as_str().unwrap().as_bytes());
        let short = w["key"].as_str().unwrap();
        let key = format!("{prefix}{short}");
        let exptime = w["wire_command_line"].as_str().unwrap().split(' ').nth(3).unwrap().parse().unwrap();
        let payload = format!("{{\"value\":{value},\"ttl\":{}}}", (now() + ttl).ceil() as u64);
        MemcachedClient::to(&hosts[hosts::bucket(&key, 2)]).set(&key, 16, exptime, payload.as_bytes());
        want.push(short.to_string());
    }
    // And kcache's, enough that both servers hold some.
    for i in 0..10 {
        e.run(&["set", &format!("k{i}"), "v", "600"]).ok();
        want.push(format!("k{i}"));
    }
    let on: Vec<usize> = want.iter().map(|k| hosts::bucket(&format!("{prefix}{k}"), 2)).collect();
    assert!(on.contains(&0) && on.contains(&1), "the keys are on both servers: {on:?}");
    // Never listed: an envelope whose time has passed while the server still holds the entry,
    // an entry that is not Kinto's, another prefix's key.
    let stale = format!("{prefix}stale");
    let payload = format!("{{\"value\":1,\"ttl\":{}}}", now() as u64 - 5);
    MemcachedClient::to(&hosts[hosts::bucket(&stale, 2)]).set(&stale, 16, 600, payload.as_bytes());
    assert!(holder(&hosts, &stale).is_some(), "the server still holds it");
    let foreign = format!("{prefix}foreign");
    MemcachedClient::to(&hosts[hosts::bucket(&foreign, 2)]).set(&foreign, 16, 600, b"plain text");
    env(&hosts, &format!("{}:", unique("keysother"))).run(&["set", "k0", "v", "600"]).ok();
    // kcache's sub-second entry: the server keeps it seconds longer than its envelope says.
    e.run(&["set", "brief", "v", "200ms"]).ok();
    std::thread::sleep(Duration::from_millis(400));

    let out = e.run(&["keys"]);
    out.ok();
    want.sort();
    assert_eq!(sorted_lines(&out), want);
    // The time left is ttl's: the server's expiry, which comes first on Kinto's entries.
    let out = e.run(&["keys", "--ttl", "ttl-3600s"]);
    let (key, secs) = out.ok().stdout.trim().split_once('\t').unwrap();
    let secs: u64 = secs.parse().unwrap();
    assert!(key == "ttl-3600s" && (3597..=3600).contains(&secs), "{}", out.stdout);
    let out = e.run(&["keys", "--json", "k[0-9]"]);
    let docs: Vec<serde_json::Value> = out.ok().stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(docs.len(), 10);
    assert!(docs.iter().all(|d| d["ttl"].as_f64().is_some_and(|t| t > 590.0 && t <= 600.0)), "{docs:?}");
    assert_eq!(e.run(&["keys", "--limit", "3"]).ok().stdout.lines().count(), 3);
    e.run(&["keys", "stale"]).code(1).stdout_is("");
    e.run(&["keys", "nothing*"]).code(1).stdout_is("");
}

#[test]
fn hostile_keys_come_back_from_the_uri_encoded_dump_exactly() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:%é", unique("hostile"));
    let e = env(&hosts, &prefix);
    let hostile =
        ["100%", "%20", "%25", "a%2Fb", "é☃😀", "+plus+", "it's", "\"q\"", "a\\b", "a*b?[c]", "x=1&y=2", "ü%C3%BC"];
    for k in hostile {
        e.run(&["set", k, "v", "600"]).ok();
    }
    // Bytes that are not UTF-8 (memcached takes them): skipped, not an error.
    let mut client = MemcachedClient::to(&hosts[0]);
    let mut command = format!("set {prefix}").into_bytes();
    command.extend_from_slice(b"\xff\xfe 16 600 2 \r\n12\r\n");
    client.send(&command);
    assert_eq!(client.line(), "STORED\r\n");
    let out = e.run(&["keys", "-0"]);
    let mut got: Vec<String> = out.ok().stdout.split_terminator('\0').map(str::to_string).collect();
    got.sort();
    assert_eq!(got, sorted(&hostile));
    e.run(&["keys", "100%"]).ok().stdout_is("100%\n");
    assert_eq!(sorted_lines(e.run(&["keys", "%2?"]).ok()), sorted(&["%20", "%25"]));
    e.run(&["keys", "a\\*b\\?\\[c\\]"]).ok().stdout_is("a*b?[c]\n");
    e.run(&["-v", "flush", "--match", "*%*"]).ok().stderr_has("removed 5 entries");
    let left: Vec<&str> = hostile.iter().copied().filter(|k| !k.contains('%')).collect();
    assert_eq!(sorted_lines(e.run(&["keys"]).ok()), sorted(&left));
}

#[test]
fn flush_match_removes_only_the_matches_in_chunks_with_a_count_and_a_dry_run() {
    let Some(hosts) = rig() else { return };
    let prefix = format!("{}:", unique("fmatch"));
    let mut c = cache(&hosts, &prefix);
    let bulk: Vec<String> = (0..2500).map(|i| format!("bulk:{i}")).collect();
    let value = string("v");
    let ttl = secs("600");
    let ops: Vec<GroupOp<'_>> = bulk.iter().map(|k| GroupOp::Set(k, &value, ttl)).collect();
    assert!(c.run_group(&ops).iter().all(Result::is_ok));
    for k in ["user:1", "user:2", "user:10", "sess:1"] {
        c.set(k, &value, ttl).unwrap();
    }
    let other_prefix = format!("{}:", unique("fmatchother"));
    let mut other = cache(&hosts, &other_prefix);
    other.set("user:1", &value, ttl).unwrap();
    other.set("bulk:1", &value, ttl).unwrap();
    let e = env(&hosts, &prefix);

    let out = e.run(&["flush", "--match", "user:*", "--dry-run"]);
    assert_eq!(sorted_lines(out.ok()), sorted(&["user:1", "user:10", "user:2"]));
    assert_eq!(c.get("user:1").unwrap(), Some(value.clone()), "a dry run removes nothing");
    let out = e.run(&["flush", "--match", "user:*"]);
    assert!(out.ok().stdout_is("").stderr.is_empty(), "quiet without -v: {}", out.stderr);
    e.run(&["keys", "user:*"]).code(1);
    // More than one chunk, on both servers.
    let out = e.run(&["flush", "--match", "bulk:*", "--dry-run"]);
    assert_eq!(out.ok().stdout.lines().count(), 2500);
    e.run(&["-v", "flush", "--match", "bulk:*"]).ok().stderr_has("removed 2500 entries");
    e.run(&["-v", "flush", "--match", "bulk:*"]).ok().stderr_has("removed 0 entries");
    assert!(bulk.iter().take(50).all(|k| c.get(k).unwrap().is_none()));
    e.run(&["keys"]).ok().stdout_is("sess:1\n");
    assert_eq!(other.get("user:1").unwrap(), Some(value.clone()), "another prefix is never touched");
    assert_eq!(other.get("bulk:1").unwrap(), Some(value));
}

#[test]
fn a_server_that_refuses_the_crawler_is_status_4_with_a_hint() {
    let disabled = fake_server(Some(b"CLIENT_ERROR lru crawler disabled\r\n"));
    for args in [&["keys"][..], &["flush", "--match", "*"], &["flush", "--match", "a*", "--dry-run"]] {
        let e = env(std::slice::from_ref(&disabled), "p:").var("KINTO_CACHE_POOL_TIMEOUT", "1");
        let start = Instant::now();
        let out = crate::util::servers::run_within(&e, args, None, Duration::from_secs(10));
        out.code(4)
            .stderr_has(&format!("memcached at {disabled} cannot list its keys"))
            .stderr_has("CLIENT_ERROR lru crawler disabled")
            .stderr_has("kcache: hint:")
            .stderr_has("-o lru_crawler");
        assert!(start.elapsed() < Duration::from_secs(3), "{args:?}: {:?}", start.elapsed());
    }
}

#[test]
fn a_large_server_is_walked_in_full_with_its_dump_read_first() {
    // memcached's crawler holds item locks while its client does not read: envelopes read
    // between chunks of a dump larger than the socket buffers stalled until pool_timeout.
    let Some([server]) = OwnMemcached::several::<1>() else { return };
    let mut raw = server.client();
    let time = now() as u64 + 3600;
    let mut sets = Vec::new();
    for i in 0..100_000 {
        let envelope = format!("{{\"value\":{i},\"ttl\":{time}}}");
        sets.extend_from_slice(format!("set big:k{i} 16 0 {} noreply\r\n{envelope}\r\n", envelope.len()).as_bytes());
    }
    raw.send(&sets);
    assert!(raw.command("version\r\n")[0].starts_with("VERSION"));
    let e = env(&[server.host()], "big:").var("KINTO_CACHE_POOL_TIMEOUT", "2");
    let tmp = e.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let e = e.var("TMPDIR", tmp.to_str().unwrap());
    let out = crate::util::servers::run_within(&e, &["keys"], None, Duration::from_secs(60));
    assert_eq!(out.ok().stdout.lines().count(), 100_000);
    let out = crate::util::servers::run_within(&e, &["-v", "flush", "--match", "k1*"], None, Duration::from_secs(60));
    out.ok().stderr_has("removed 11111 entries");
    let out = crate::util::servers::run_within(&e, &["keys", "k1*"], None, Duration::from_secs(60));
    out.code(1);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "the spooled keys leave no file behind");
}

/// A memcached started with its key crawler off (`-o no_lru_crawler`); killed on drop.
struct NoCrawler(std::process::Child, String);

impl Drop for NoCrawler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_server_with_its_crawler_off_is_status_4_with_a_hint() {
    // The rig's memcached is installed when its servers run.
    if rig().is_none() {
        return;
    }
    let host = format!("127.0.0.1:{}", crate::util::servers::free_port());
    let port = host.rsplit(':').next().unwrap().to_string();
    let mut cmd = std::process::Command::new("memcached");
    cmd.args(["-l", "127.0.0.1", "-p", &port, "-U", "0", "-m", "16", "-o", "no_lru_crawler"]);
    if crate::util::servers::is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let server = NoCrawler(child, host.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::util::servers::probe(&server.1, b"version\r\n").is_none_or(|l| !l.starts_with("VERSION")) {
        assert!(Instant::now() < deadline, "memcached -o no_lru_crawler did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = env(std::slice::from_ref(&host), "p:");
    e.run(&["set", "k", "v", "60"]).ok();
    for args in [&["keys"][..], &["flush", "--match", "*"]] {
        e.run(args)
            .code(4)
            .stderr_has(&format!("memcached at {host} cannot list its keys"))
            .stderr_has("lru crawler disabled")
            .stderr_has("kcache: hint:");
    }
    e.run(&["get", "k"]).ok().stdout_is("v\n");
}

#[test]
fn a_crawler_busy_with_another_crawl_is_asked_again_then_status_3() {
    // memcached runs one crawl at a time: concurrent walks wait for each other.
    if let Some(hosts) = rig() {
        let prefix = format!("{}:", unique("busy"));
        let mut c = cache(&hosts, &prefix);
        let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        let value = string("v");
        let ops: Vec<GroupOp<'_>> = keys.iter().map(|k| GroupOp::Set(k, &value, secs("600"))).collect();
        assert!(c.run_group(&ops).iter().all(Result::is_ok));
        let walks: Vec<_> = (0..6)
            .map(|_| {
                let e = env(&hosts, &prefix);
                std::thread::spawn(move || e.run(&["keys"]).ok().stdout.lines().count())
            })
            .collect();
        for w in walks {
            assert_eq!(w.join().unwrap(), 300);
        }
    }
    // A server whose crawler stays busy: asked again for 10 s, then status 3.
    let busy = fake_server(Some(b"BUSY currently processing crawler request\r\n"));
    let e = env(std::slice::from_ref(&busy), "p:").var("KINTO_CACHE_POOL_TIMEOUT", "1");
    let start = Instant::now();
    let out = crate::util::servers::run_within(&e, &["keys"], None, Duration::from_secs(20));
    out.code(3).one_error_line().stderr_has(&format!("the key crawler of memcached at {busy} was busy"));
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(13), "{took:?}");
}

#[test]
fn a_dump_without_end_or_no_answer_is_status_3_in_bounded_time() {
    let endless = fake_server(Some(b"key=p%3Aa exp=-1 la=1 cas=1 fetch=no cls=1 size=60\n"));
    let hung = fake_server(None);
    for host in [&endless, &hung] {
        let e = env(std::slice::from_ref(host), "p:").var("KINTO_CACHE_POOL_TIMEOUT", "1");
        for args in [&["keys"][..], &["flush", "--match", "*"]] {
            let start = Instant::now();
            let out = crate::util::servers::run_within(&e, args, None, Duration::from_secs(10));
            out.code(3).one_error_line().stderr_has(&format!("memcached at {host} did not finish its key dump"));
            assert!(start.elapsed() < Duration::from_secs(4), "{host} {args:?}: {:?}", start.elapsed());
        }
    }
}

/// A memcached older than `metadump hash` (it answers `BADCLASS`), as a fake: `metadump all`
/// gives `dump`, and every `mg` finds a live Kinto envelope.
fn old_memcached(dump: &'static str) -> String {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            std::thread::spawn(move || {
                let mut writer = client.try_clone().unwrap();
                for line in std::io::BufReader::new(client).lines() {
                    let Ok(line) = line else { return };
                    let reply = if line == "lru_crawler metadump hash" {
                        "BADCLASS invalid class id\r\n".to_string()
                    } else if line == "lru_crawler metadump all" {
                        format!("{dump}END\r\n")
                    } else if line.starts_with("mg ") {
                        let envelope = format!("{{\"value\":\"old\",\"ttl\":{}}}", now() as u64 + 100);
                        format!("VA {} f16 t-1 c7\r\n{envelope}\r\n", envelope.len())
                    } else {
                        "ERROR\r\n".to_string()
                    };
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    host
}

#[test]
fn a_server_without_metadump_hash_is_walked_with_metadump_all() {
    let host = old_memcached(
        "key=p%3Aone exp=-1 la=1 cas=1 fetch=no cls=1 size=60\nkey=p%3At%C3%A9 exp=-1 la=1 cas=2 fetch=no cls=1 size=60\n\
         key=q%3Aother exp=-1 la=1 cas=3 fetch=no cls=1 size=60\nkey=p%3A%FF exp=-1 la=1 cas=4 fetch=no cls=1 size=60\n",
    );
    let e = env(std::slice::from_ref(&host), "p:").var("KINTO_CACHE_POOL_TIMEOUT", "2");
    let out = crate::util::servers::run_within(&e, &["keys"], None, Duration::from_secs(10));
    assert_eq!(sorted_lines(out.ok()), sorted(&["one", "té"]), "another prefix and bytes that are not UTF-8 left out");
    let out = crate::util::servers::run_within(&e, &["keys", "--ttl", "one"], None, Duration::from_secs(10));
    let secs: u64 = out.ok().stdout.trim().strip_prefix("one\t").unwrap().parse().unwrap();
    assert!((99..=100).contains(&secs), "{}", out.stdout);
}
