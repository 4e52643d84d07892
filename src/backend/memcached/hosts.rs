//! Server addresses as python-memcached (Kinto's client) reads them, and the server each key
//! goes to (reference §4.1, §4.2; crates.md §1.1).

use crate::error::{Error, Result, quote};
use std::net::Ipv6Addr;

/// python-memcached's default port.
pub const DEFAULT_PORT: u16 = 11211;

/// Where one memcached listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A host name or IPv4 address (or, inside `inet6:[...]`, an IPv6 address) and a port.
    Tcp { host: String, port: u16 },
    /// A unix socket.
    Unix(String),
}

impl Address {
    /// How messages name the server: `host:port`, `[addr]:port` or `unix:/path`.
    pub fn location(&self) -> String {
        match self {
            Address::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Address::Tcp { host, port } => format!("{host}:{port}"),
            Address::Unix(path) => format!("unix:{path}"),
        }
    }

    /// The URL the `memcache` crate connects with: ASCII protocol, as python-memcached speaks.
    pub fn url(&self) -> Result<memcache::Url> {
        let text = match self {
            Address::Tcp { .. } => format!("memcache://{}?protocol=ascii", self.location()),
            Address::Unix(path) => format!("memcache://{path}?protocol=ascii"),
        };
        let url = memcache::Url::parse(&text).map_err(|e| self.refused(&e.to_string()))?;
        // The crate opens `url.path()`, which is percent-encoded: a path that needs escaping
        // would name another file (a '%' already in the path is kept as it is).
        if let Address::Unix(path) = self
            && (url.path() != path || url.host().is_some())
        {
            return Err(
                self.refused("kcache cannot open a unix socket path with spaces, '?', '#' or non-ASCII characters")
            );
        }
        Ok(url)
    }

    fn refused(&self, why: &str) -> Error {
        Error::input(format!("memcached host {}: {why}", quote(&self.location())))
    }
}

/// Parses one entry of `hosts`, with python-memcached's syntaxes: `host[:port]`,
/// `inet:host[:port]`, `inet6:[addr][:port]` and `unix:/path`; `[addr][:port]` is accepted too.
pub fn parse(entry: &str) -> Result<Address> {
    let bad = |why: &str| {
        Error::input(format!(
            "memcached host {}: {why}; give host:port, inet:host:port, inet6:[addr]:port or unix:/path",
            quote(&crate::settings::redact_url(entry))
        ))
    };
    if let Some(path) = entry.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(bad("a unix socket path must be absolute"));
        }
        return Ok(Address::Unix(path.to_string()));
    }
    let rest = entry.strip_prefix("inet6:").unwrap_or(entry);
    if let Some(bracketed) = rest.strip_prefix('[') {
        let (addr, after) = bracketed.split_once(']').ok_or_else(|| bad("the IPv6 address has no closing ']'"))?;
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address between the brackets"));
        }
        let port = match after {
            "" => DEFAULT_PORT,
            p => port(p.strip_prefix(':').ok_or_else(|| bad("expected ':' and a port after ']'"))?)
                .ok_or_else(|| bad("bad port"))?,
        };
        return Ok(Address::Tcp { host: addr.to_string(), port });
    }
    if entry.starts_with("inet6:") {
        return Err(bad("inet6: takes an address in brackets"));
    }
    if entry.contains("://") {
        return Err(bad("a URL is not a memcached host"));
    }
    let rest = entry.strip_prefix("inet:").unwrap_or(entry);
    let (host, port) = match rest.split_once(':') {
        Some((h, p)) => (h, port(p).ok_or_else(|| bad("bad port"))?),
        None => (rest, DEFAULT_PORT),
    };
    if host.is_empty() {
        return Err(bad("no host name"));
    }
    if host.contains(['/', '?', '#', '@', '[', ']', '%', '\\']) {
        return Err(bad("not a host name"));
    }
    Ok(Address::Tcp { host: host.to_string(), port })
}

/// A port number: digits only, 1 to 65535.
fn port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// python-memcached's `cmemcache_hash`: `((crc32(key) & 0xffffffff) >> 16) & 0x7fff`, or 1 when
/// that is 0, on the UTF-8 bytes of the full (prefixed) key.
pub fn py_hash(key: impl AsRef<[u8]>) -> u32 {
    match (crc32fast::hash(key.as_ref()) >> 16) & 0x7fff {
        0 => 1,
        h => h,
    }
}

/// The index in the host list of the server python-memcached picks for `key` among `n` hosts
/// (a host listed twice counts twice, as there).
pub fn bucket(key: &str, n: usize) -> usize {
    py_hash(key) as usize % n.max(1)
}

/// python-memcached's placement as the memcache crate's `Router`: the server of the host-list
/// entry [`bucket`] picks.
pub struct PythonMemcached {
    /// The host list: for each entry, the index of its server among the distinct ones (a host
    /// listed twice counts twice).
    pub buckets: Vec<usize>,
}

impl memcache::exp::Router for PythonMemcached {
    fn route(&self, key: &[u8], _servers: &[String]) -> usize {
        self.buckets[py_hash(key) as usize % self.buckets.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Address {
        Address::Tcp { host: host.to_string(), port }
    }

    #[test]
    fn python_memcached_syntaxes() {
        assert_eq!(parse("127.0.0.1:11212").unwrap(), tcp("127.0.0.1", 11212));
        assert_eq!(parse("cache.local").unwrap(), tcp("cache.local", 11211));
        assert_eq!(parse("inet:10.0.0.1:5").unwrap(), tcp("10.0.0.1", 5));
        assert_eq!(parse("inet:10.0.0.1").unwrap(), tcp("10.0.0.1", 11211));
        assert_eq!(parse("inet6:[::1]:11300").unwrap(), tcp("::1", 11300));
        assert_eq!(parse("inet6:[::1]").unwrap(), tcp("::1", 11211));
        assert_eq!(parse("[fe80::2]:7").unwrap(), tcp("fe80::2", 7));
        assert_eq!(parse("unix:/run/memcached.sock").unwrap(), Address::Unix("/run/memcached.sock".into()));
    }

    #[test]
    fn bad_hosts_are_input_errors_that_name_them() {
        for bad in [
            "",
            ":11211",
            "h:",
            "h:0",
            "h:65536",
            "h:12a",
            "h:1:2",
            "inet6:::1",
            "inet6:[nope]:1",
            "[::1",
            "[::1]x",
            "unix:",
            "unix:relative.sock",
            "memcache://h:1",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Input, "{bad:?}");
            assert!(e.to_string().contains(&quote(bad)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn passwords_never_reach_a_message() {
        for (entry, shown) in [
            ("memcache://u:s3cret@h:1", "'memcache://u:***@h:1'"),
            ("u:s3cret@h:1", "'***@h:1'"),
            ("user@h:1", "'***@h:1'"),
        ] {
            let e = parse(entry).unwrap_err().to_string();
            assert!(!e.contains("s3cret") && e.contains(shown), "{e}");
        }
    }

    #[test]
    fn locations_and_urls() {
        assert_eq!(tcp("::1", 5).location(), "[::1]:5");
        assert_eq!(tcp("h", 5).url().unwrap().as_str(), "memcache://h:5?protocol=ascii");
        assert_eq!(tcp("::1", 5).url().unwrap().as_str(), "memcache://[::1]:5?protocol=ascii");
        let unix = Address::Unix("/tmp/m.sock".into());
        assert_eq!(unix.location(), "unix:/tmp/m.sock");
        let url = unix.url().unwrap();
        assert_eq!((url.host(), url.path()), (None, "/tmp/m.sock"));
        assert!(Address::Unix("/tmp/a b.sock".into()).url().is_err());
        assert!(Address::Unix("/tmp/q?.sock".into()).url().is_err());
        assert!(Address::Unix("/tmp/é.sock".into()).url().is_err());
        assert_eq!(Address::Unix("/tmp/a%20.sock".into()).url().unwrap().path(), "/tmp/a%20.sock");
    }

    #[test]
    fn hash_matches_the_reference_examples() {
        // crates.md §1.1 and reference §4.2.
        for (key, hash, of_two) in
            [("a", 26807, 1), ("foobar", 7926, 0), ("__heartbeat__", 3465, 1), ("kinto:abc", 29232, 0), ("é", 3588, 0)]
        {
            assert_eq!(py_hash(key), hash, "{key}");
            assert_eq!(bucket(key, 2), of_two, "{key}");
        }
    }

    #[test]
    fn a_zero_hash_becomes_one_as_in_python_memcached() {
        let key =
            (0u32..).map(|i| format!("k{i}")).find(|k| (crc32fast::hash(k.as_bytes()) >> 16) & 0x7fff == 0).unwrap();
        assert_eq!(py_hash(&key), 1);
        assert_eq!(bucket(&key, 2), 1);
    }

    #[test]
    fn hash_matches_the_recorded_placement_on_two_and_three_servers() {
        let data: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/data/kinto/memcached.json")).unwrap();
        let placement = data["placement"].as_array().unwrap();
        assert!(placement.len() >= 30);
        for p in placement {
            let key = p["key"].as_str().unwrap();
            assert_eq!(u64::from(py_hash(key)), p["cmemcache_hash"].as_u64().unwrap(), "{key:?}");
            assert_eq!(bucket(key, 2) as u64, p["server_index_2"].as_u64().unwrap(), "{key:?}");
            assert_eq!(bucket(key, 3) as u64, p["server_index_3"].as_u64().unwrap(), "{key:?}");
        }
    }
}
