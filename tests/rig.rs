//! The rig's servers (`scripts/test`, [`crate::util::rig`]) answer.

use crate::util::servers::probe;

/// The first line of the reply to `request` from `host_port` (panics without one).
fn request_line(host_port: &str, request: &[u8]) -> String {
    probe(host_port, request).unwrap_or_else(|| panic!("no reply from {host_port}"))
}

/// `host:port` of a `redis://[user:password@]host[:port][/db]` URL.
fn redis_host_port(url: &str) -> String {
    let rest = url.strip_prefix("redis://").unwrap_or_else(|| panic!("not a redis:// URL: {url}"));
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    assert!(!host_port.is_empty(), "no host in {url}");
    let has_port = match host_port.rfind(']') {
        Some(bracket) => host_port[bracket..].contains(':'),
        None => host_port.contains(':'),
    };
    if has_port { host_port.to_string() } else { format!("{host_port}:6379") }
}

#[cfg(feature = "postgresql")]
#[test]
fn rig_postgresql_answers() {
    let Some(url) = crate::util::rig::server("KCACHE_TEST_PG_URL") else {
        return;
    };
    let mut config: postgres::Config = url.parse().unwrap_or_else(|e| panic!("KCACHE_TEST_PG_URL does not parse: {e}"));
    config.connect_timeout(std::time::Duration::from_secs(5));
    let mut client =
        config.connect(postgres::NoTls).unwrap_or_else(|e| panic!("cannot connect to KCACHE_TEST_PG_URL: {e}"));
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    let version: String = client.query_one("SHOW server_version", &[]).unwrap().get(0);
    let major: u32 = version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or_else(|| panic!("unexpected server_version {version:?}"));
    assert!(major >= 10, "PostgreSQL {version} is too old");
}

#[test]
fn rig_memcached_both_answer() {
    let Some(hosts) = crate::util::rig::server("KCACHE_TEST_MEMCACHED") else {
        return;
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    let mut distinct = hosts.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!((hosts.len(), distinct.len()), (2, 2), "KCACHE_TEST_MEMCACHED must name two distinct hosts: {hosts:?}");
    for host in hosts {
        let reply = request_line(host, b"version\r\n");
        assert!(reply.starts_with("VERSION ") && reply.ends_with("\r\n"), "memcached at {host} answered {reply:?}");
    }
}

#[test]
fn rig_redis_answers() {
    let Some(url) = crate::util::rig::server("KCACHE_TEST_REDIS_URL") else {
        return;
    };
    let host_port = redis_host_port(&url);
    let reply = request_line(&host_port, b"PING\r\n");
    assert_eq!(reply, "+PONG\r\n", "redis at {host_port}");
}

#[test]
fn rig_redis_url_parsing() {
    assert_eq!(redis_host_port("redis://127.0.0.1:6380/0"), "127.0.0.1:6380");
    assert_eq!(redis_host_port("redis://localhost"), "localhost:6379");
    assert_eq!(redis_host_port("redis://u:p@h:1/2?x=y"), "h:1");
    assert_eq!(redis_host_port("redis://[::1]/0"), "[::1]:6379");
    assert_eq!(redis_host_port("redis://[::1]:7000"), "[::1]:7000");
}
