//! The `memcached` backend: Kinto's entries on Kinto's servers, readable by both tools.
//!
//! **Wire format** (reference §4.4): each entry is Kinto's envelope `{"value":<json>,"ttl":<unix
//! time>}`, compact ASCII JSON stored with python-memcached's text flag 16; the value's bytes are
//! exactly those Kinto writes. kcache reads envelopes stored with flags 0 or 16. The envelope's
//! time is written to the microsecond (`"ttl":1795617795.309417`; Kinto writes whole seconds,
//! rounded up); Kinto reads it as a float, so each tool reads the other's entries.
//!
//! **Routing** (reference §4.2, crates.md §1.1): a key goes to the server python-memcached picks,
//! `cmemcache_hash(prefixed key) % number of hosts` (see [`hosts`]); a host listed twice counts
//! twice, as there. Host syntaxes are python-memcached's. When `hosts` is empty, `url` is read as
//! a host list, which is what `kinto init --cache-backend memcached` writes (§11 item 29).
//!
//! **Expiry is exact** (§11 items 20-23): the envelope's time is the truth: an entry whose time
//! has passed is missing for `get`, `ttl`, `expire` and `delete`, whatever the server still
//! holds. The server's own exptime is only there to free memory and is never earlier: whole
//! seconds rounded up plus one (never 0, "never expires"), sent as a unix time over 30 days
//! (memcached reads larger values as one), and 0 past 2038, which memcached cannot hold.
//!
//! **Atomic updates** (§11 items 24-25): `expire` and `delete` read the entry with `gets` and
//! write with `cas`, retrying when another client changed it meanwhile. `expire` on a missing
//! or expired entry writes nothing (Kinto creates `{"value":null}`). `delete` swaps the entry for
//! an already expired one (`cas` with a past unix time): it removes only the entry it read,
//! and of two concurrent deletes of one entry exactly one gets its value.
//!
//! **Failures are errors** (§11 items 26-28): there is no failover (python-memcached silently
//! rehashes a key to another server when its own is down, where Kinto will not look once it is
//! back): an unreachable server is status 3 naming it, within `pool_timeout` (3 s by default, as
//! python-memcached's `socket_timeout`); a value over the item size limit is status 4. Keys are
//! checked as python-memcached checks them, before anything is sent (the crate checks only the
//! length, and a key with CR LF would inject a command; crates.md §1.4). `flush` with a prefix
//! is refused: `flush_all` empties whole servers. `flush --all` flushes every server it can
//! reach, then reports the others.
//!
//! **Connections**: one pool per server (`backend/pool.rs`), created when a command first needs
//! that server; see [`conn`] for how a pooled connection wraps the `memcache` crate.

mod conn;
mod envelope;
pub mod hosts;

pub use envelope::{EXPTIME_MARGIN, FLAG_TEXT, MAX_EXPTIME, MAX_RELATIVE_EXPTIME};

use super::pool::{Pool, PoolSettings};
use super::{Backend, FlushScope};
use crate::error::{Error, ErrorKind, Result, quote};
use crate::settings::{Settings, split_hosts};
use crate::ttl::{Remaining, Ttl};
use conn::{Conn, Manager};
use envelope::Entry;
use hosts::Address;
use memcache::{MemcacheError, ToMemcacheValue};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// python-memcached's `socket_timeout`, the default `pool_timeout` here: it bounds the connect,
/// each read and write, and the wait for a pooled connection.
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(3);

/// memcached's (and python-memcached's) longest key, in bytes, prefix included.
pub const MAX_KEY_BYTES: usize = 250;

/// How many times `expire` and `delete` re-read an entry that another client changed between
/// their `gets` and their `cas`.
const CAS_ATTEMPTS: usize = 5;

/// An envelope as memcached stores it: text, with python-memcached's text flag (the crate would
/// store flags 0).
struct Text<'a>(&'a str);

impl<W: std::io::Write> ToMemcacheValue<W> for Text<'_> {
    fn get_flags(&self) -> u32 {
        FLAG_TEXT
    }

    fn get_length(&self) -> usize {
        self.0.len()
    }

    fn write_to(&self, stream: &mut W) -> std::io::Result<()> {
        stream.write_all(self.0.as_bytes())
    }
}

/// One memcached server, its pool created on first use.
struct Server {
    address: Address,
    location: String,
    url: memcache::Url,
    pool: OnceLock<Pool<Manager>>,
}

/// What every handle on one configuration shares.
struct Shared {
    /// Distinct servers, in the order of the host list.
    servers: Vec<Server>,
    /// The host list as python-memcached's buckets: an index into `servers` for each entry.
    buckets: Vec<usize>,
    pool: PoolSettings,
    location: String,
}

/// A handle on the configured servers; forks share the pools.
pub struct Memcached {
    shared: Arc<Shared>,
}

/// Builds the memcached backend (no I/O).
pub fn open(settings: &Settings, _env: &dyn Fn(&str) -> Option<String>, workers: u32) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Memcached::new(settings, workers)?))
}

/// The host list: `hosts`, else the hosts `kinto init` writes into `url`.
fn host_list(settings: &Settings) -> Result<Vec<String>> {
    if !settings.hosts.is_empty() {
        return Ok(settings.hosts.clone());
    }
    let from_url = settings.url.as_deref().map(split_hosts).unwrap_or_default();
    if !from_url.is_empty() {
        return Ok(from_url);
    }
    Err(Error::input("no memcached host is configured")
        .with_hint("give hosts as host:port with --hosts, KINTO_CACHE_HOSTS or kinto.cache_hosts"))
}

impl Memcached {
    /// Parses the hosts; opens nothing.
    pub fn new(settings: &Settings, workers: u32) -> Result<Memcached> {
        let mut servers: Vec<Server> = Vec::new();
        let mut buckets = Vec::new();
        for entry in host_list(settings)? {
            let address = hosts::parse(&entry)?;
            let location = address.location();
            let index = match servers.iter().position(|s| s.location == location) {
                Some(i) => i,
                None => {
                    let url = address.url()?;
                    servers.push(Server { address, location, url, pool: OnceLock::new() });
                    servers.len() - 1
                }
            };
            buckets.push(index);
        }
        let location = servers.iter().map(|s| s.location.as_str()).collect::<Vec<_>>().join(",");
        let pool = PoolSettings {
            pool_size: settings.pool_size,
            max_overflow: settings.max_overflow,
            max_backlog: settings.max_backlog,
            timeout: settings.pool_timeout.unwrap_or(DEFAULT_POOL_TIMEOUT),
            recycle: settings.pool_recycle,
            workers,
        };
        Ok(Memcached { shared: Arc::new(Shared { servers, buckets, pool, location }) })
    }

    /// The server python-memcached would pick for this full key.
    fn server(&self, key: &str) -> &Server {
        let s = &self.shared;
        &s.servers[s.buckets[hosts::bucket(key, s.buckets.len())]]
    }

    fn pool<'a>(&self, server: &'a Server) -> &'a Pool<Manager> {
        server.pool.get_or_init(|| {
            let manager = Manager::new(server.address.clone(), server.url.clone(), self.shared.pool.timeout);
            Pool::new(manager, self.shared.pool, "memcached", server.location.clone(), conn::classify_connect)
        })
    }

    /// Runs `op` on a connection to `server`; a connection that saw an error is not reused.
    fn run<T>(&self, server: &Server, op: impl FnOnce(&memcache::Client) -> Result<T, MemcacheError>) -> Result<T> {
        let mut c = self.pool(server).get().map_err(|e| conn::naming(e, &server.location))?;
        op(&c.client).map_err(|e| {
            let conn: &mut Conn = &mut c;
            conn.broken = true;
            conn::classify(e, &server.location)
        })
    }

    /// The entry under `key` with its CAS token, if there is one (live or not).
    fn gets(&self, server: &Server, key: &str) -> Result<Option<(Entry, u64)>> {
        let got: Option<(Vec<u8>, u32, Option<u64>)> = self.run(server, |c| c.get(key))?;
        let Some((bytes, flags, cas)) = got else { return Ok(None) };
        let entry = decode(&bytes, flags, key, server)?;
        let cas = cas.ok_or_else(|| {
            Error::new(ErrorKind::Backend, anyhow::anyhow!("memcached at {} sent no CAS token", server.location))
        })?;
        Ok(Some((entry, cas)))
    }

    /// Writes `envelope` under `key` if the entry is still the one `cas` was read with.
    fn cas(&self, server: &Server, key: &str, envelope: &str, exptime: u32, cas: u64) -> Result<bool> {
        self.run(server, |c| c.cas(key, Text(envelope), exptime, cas))
    }

    /// How many servers there are (distinct ones).
    #[cfg(test)]
    fn servers(&self) -> usize {
        self.shared.servers.len()
    }
}

/// Decodes an envelope, or says which entry is not one.
fn decode(bytes: &[u8], flags: u32, key: &str, server: &Server) -> Result<Entry> {
    envelope::decode(bytes, flags).map_err(|why| {
        Error::new(
            ErrorKind::Backend,
            anyhow::anyhow!(
                "the entry {} on memcached at {} cannot be read as a Kinto cache entry: {why}",
                quote(key),
                server.location
            ),
        )
    })
}

/// `expire` or `delete` gave up: other clients kept changing the entry.
fn contended(key: &str, server: &Server) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        anyhow::anyhow!(
            "the entry {} on memcached at {} changed {CAS_ATTEMPTS} times while kcache was updating it; try again",
            quote(key),
            server.location
        ),
    )
}

/// How a byte python-memcached refuses in a key is named in the message.
fn describe_byte(c: char) -> String {
    match c {
        ' ' => "a space".to_string(),
        '\u{7f}' => "the DEL character".to_string(),
        c => format!("the control character {}", c.escape_default()),
    }
}

impl Backend for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn location(&self) -> String {
        self.shared.location.clone()
    }

    fn fork(&self) -> Result<Box<dyn Backend>> {
        Ok(Box::new(Memcached { shared: Arc::clone(&self.shared) }))
    }

    /// python-memcached's `check_key`: 1 to 250 bytes of UTF-8, prefix included, every byte in
    /// `[\x21-\x7e\x80-\xff]` (no space, no control character, no DEL).
    fn check_key(&self, key: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::input("the key is empty"));
        }
        if let Some(c) = key.chars().find(|c| c.is_ascii() && !c.is_ascii_graphic()) {
            return Err(Error::input(format!(
                "the key {} contains {}; memcached keys have no spaces or control characters",
                quote(key),
                describe_byte(c)
            )));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::input(format!(
                "the key {} is {} bytes long (UTF-8, prefix included); memcached keys are at most {MAX_KEY_BYTES} bytes",
                quote(key),
                key.len()
            )));
        }
        Ok(())
    }

    fn check_flush(&self, scope: FlushScope<'_>) -> Result<()> {
        match scope {
            FlushScope::All => Ok(()),
            FlushScope::Prefix(prefix) => Err(Error::input(format!(
                "memcached cannot flush only the keys under the prefix {}: its flush_all empties whole servers",
                quote(prefix)
            ))
            .with_hint("'kcache flush --all' empties every server (every prefix, and anything else on them), as Kinto's flush does")),
        }
    }

    fn get(&mut self, key: &str) -> Result<Option<String>> {
        let server = self.server(key);
        let got: Option<(Vec<u8>, u32)> = self.run(server, |c| c.get(key))?;
        let Some((bytes, flags)) = got else { return Ok(None) };
        let entry = decode(&bytes, flags, key, server)?;
        Ok(entry.remaining(SystemTime::now()).map(|_| entry.value))
    }

    fn set(&mut self, key: &str, value: &str, ttl: Ttl) -> Result<()> {
        let server = self.server(key);
        let now = SystemTime::now();
        let envelope = envelope::encode(value, envelope::expires_us(now, ttl.duration()));
        let exptime = envelope::exptime(now, ttl.duration());
        self.run(server, |c| c.set(key, Text(&envelope), exptime))
    }

    fn ttl(&mut self, key: &str) -> Result<Remaining> {
        let server = self.server(key);
        let got: Option<(Vec<u8>, u32)> = self.run(server, |c| c.get(key))?;
        let Some((bytes, flags)) = got else { return Ok(Remaining::Missing) };
        let entry = decode(&bytes, flags, key, server)?;
        Ok(entry.remaining(SystemTime::now()).map_or(Remaining::Missing, Remaining::Left))
    }

    fn expire(&mut self, key: &str, ttl: Ttl) -> Result<bool> {
        let server = self.server(key);
        for _ in 0..CAS_ATTEMPTS {
            let Some((entry, cas)) = self.gets(server, key)? else { return Ok(false) };
            let now = SystemTime::now();
            if entry.remaining(now).is_none() {
                return Ok(false);
            }
            let envelope = envelope::encode(&entry.value, envelope::expires_us(now, ttl.duration()));
            if self.cas(server, key, &envelope, envelope::exptime(now, ttl.duration()), cas)? {
                return Ok(true);
            }
        }
        Err(contended(key, server))
    }

    fn delete(&mut self, key: &str) -> Result<Option<String>> {
        let server = self.server(key);
        for _ in 0..CAS_ATTEMPTS {
            let Some((entry, cas)) = self.gets(server, key)? else { return Ok(None) };
            let live = entry.remaining(SystemTime::now()).is_some();
            // An expired entry the server still holds is removed too, but reads as missing.
            if self.cas(server, key, envelope::TOMBSTONE, envelope::EXPIRED_EXPTIME, cas)? {
                return Ok(live.then_some(entry.value));
            }
        }
        Err(contended(key, server))
    }

    fn flush(&mut self, scope: FlushScope<'_>) -> Result<()> {
        self.check_flush(scope)?;
        let mut failed: Vec<(String, Error)> = Vec::new();
        for server in &self.shared.servers {
            if let Err(e) = self.run(server, |c| c.flush()) {
                failed.push((server.location.clone(), e));
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let kind = if failed.iter().any(|(_, e)| e.kind() == ErrorKind::Unavailable) {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Backend
        };
        let total = self.shared.servers.len();
        let flushed = total - failed.len();
        let names = failed.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join(", ");
        let causes = failed.iter().map(|(_, e)| e.chain().last().cloned().unwrap_or_default()).collect::<Vec<_>>();
        Err(Error::new(
            kind,
            anyhow::anyhow!(
                "could not flush {} of {total} memcached servers ({names}; {} flushed): {}",
                failed.len(),
                if flushed == 0 { "none".to_string() } else { format!("the other {flushed}") },
                causes.join("; ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Layer, Raw};

    fn settings(entries: &[(&'static str, &str)]) -> Settings {
        let mut layer = Layer::default();
        layer.set("backend", Raw::Str("memcached".into()), "test", None);
        for (k, v) in entries {
            layer.set(k, Raw::Str(v.to_string()), "test", None);
        }
        Settings::from_layer(&layer).unwrap()
    }

    fn backend(entries: &[(&'static str, &str)]) -> Memcached {
        Memcached::new(&settings(entries), 1).unwrap()
    }

    #[test]
    fn hosts_come_from_hosts_else_from_url() {
        let m = backend(&[("hosts", "a:1, b:2\nunix:/run/m.sock")]);
        assert_eq!(m.location(), "a:1,b:2,unix:/run/m.sock");
        let m = backend(&[("url", "127.0.0.1:11211 127.0.0.2:11211")]);
        assert_eq!(m.location(), "127.0.0.1:11211,127.0.0.2:11211");
        let m = backend(&[("hosts", "a:1"), ("url", "ignored:2")]);
        assert_eq!(m.location(), "a:1");
    }

    #[test]
    fn no_host_is_an_input_error() {
        let e = Memcached::new(&settings(&[]), 1).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Input);
        assert!(e.hint().unwrap().contains("KINTO_CACHE_HOSTS"));
        let e = Memcached::new(&settings(&[("hosts", "a:1 b:x")]), 1).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Input);
        assert!(e.to_string().contains("'b:x'"), "{e}");
    }

    #[test]
    fn a_host_listed_twice_counts_twice() {
        let m = backend(&[("hosts", "a:1 b:2 a:1")]);
        assert_eq!(m.servers(), 2);
        assert_eq!(m.shared.buckets, vec![0, 1, 0]);
        assert_eq!(m.location(), "a:1,b:2");
        // cmemcache_hash("a") = 26807; 26807 % 3 = 2: the third entry, server a.
        assert_eq!(m.server("a").location, "a:1");
        assert_eq!(m.server("foobar").location, "a:1"); // 7926 % 3 = 0
        assert_eq!(m.server("__heartbeat__").location, "a:1"); // 3465 % 3 = 0
        assert_eq!(m.server("kinto:abc").location, "a:1"); // 29232 % 3 = 0
        assert_eq!(backend(&[("hosts", "a:1 b:2")]).server("a").location, "b:2"); // 26807 % 2 = 1
    }

    #[test]
    fn keys_are_checked_as_python_memcached_does() {
        let m = backend(&[("hosts", "a:1")]);
        m.check_key("kinto:abc").unwrap();
        m.check_key(&"é".repeat(125)).unwrap(); // 250 bytes
        m.check_key(&"x".repeat(250)).unwrap();
        m.check_key("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~").unwrap();
        m.check_key("\u{80}\u{ff}☃").unwrap();
        for (bad, says) in [
            ("", "empty"),
            ("a b", "a space"),
            ("x\r\ndelete victim", "\\r"),
            ("tab\t", "\\t"),
            ("del\u{7f}", "DEL"),
            ("nul\u{0}", "\\u{0}"),
        ] {
            let e = m.check_key(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Input, "{bad:?}");
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
        }
        let e = m.check_key(&"é".repeat(126)).unwrap_err();
        assert!(e.to_string().contains("252 bytes"), "{e}");
        assert!(m.check_key(&"x".repeat(251)).is_err());
    }

    #[test]
    fn a_prefixed_flush_is_refused_before_anything_is_sent() {
        let mut m = backend(&[("hosts", "127.0.0.1:1")]);
        let e = m.check_flush(FlushScope::Prefix("p:")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Input);
        assert!(e.hint().unwrap().contains("--all"));
        assert_eq!(m.flush(FlushScope::Prefix("p:")).unwrap_err().kind(), ErrorKind::Input);
        m.check_flush(FlushScope::All).unwrap();
    }

    #[test]
    fn handles_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Memcached>();
    }

    #[test]
    fn opening_connects_to_nothing() {
        let m = backend(&[("hosts", "127.0.0.1:1 127.0.0.1:2")]);
        assert!(m.shared.servers.iter().all(|s| s.pool.get().is_none()));
    }
}
