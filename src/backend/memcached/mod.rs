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
//! **Expiry is exact** (§11 items 20-23): an entry lives until the earlier of the envelope's
//! time and the server's own expiry. Past the envelope's time it is missing for `get`, `ttl`,
//! `expire` and `delete`, whatever the server still holds. The server's expiry comes first on
//! Kinto's entries (exptime `int(ttl)`, envelope `ceil(now + ttl)`): `get`, `expire` and
//! `delete` see it at no cost, since the server returns only items it still holds (and `cas`
//! fails on one it dropped since); `ttl` asks the server for its seconds left in the same
//! request (`mg <key> v f t`) and counts on `t - 2` of them (see
//! [`envelope::SERVER_CLOCK_LAG`]). What kcache writes gets a server exptime that never comes
//! first, even so: whole seconds rounded up plus [`EXPTIME_MARGIN`] (never 0, "never
//! expires"), sent as a unix time over 30 days (memcached reads larger values as one), and 0
//! past 2038, which memcached cannot hold.
//!
//! **Atomic updates** (§11 items 24-25): `expire` and `delete` read the entry with its CAS
//! token (`mg <key> v f c`) and write over it (`ms ... C<cas>`), retrying when another client changed it meanwhile (at once a few times,
//! then after growing pauses, for up to `pool_timeout`: a key many clients write at once, as
//! batches do, stays contended for a while). `expire` on a missing
//! or expired entry writes nothing (Kinto creates `{"value":null}`). `delete` swaps the entry for
//! an already expired one (`ms` over its CAS with a past unix time): it removes only the entry it read,
//! and of two concurrent deletes of one entry exactly one gets its value.
//!
//! **Failures are errors** (§11 items 26-28): there is no failover (python-memcached silently
//! rehashes a key to another server when its own is down, where Kinto will not look once it is
//! back): an unreachable server is status 3 naming it, within `pool_timeout` (3 s by default, as
//! python-memcached's `socket_timeout`); a value over the item size limit is status 4. Keys are
//! checked as python-memcached checks them, before anything is sent (the crate checks only the
//! length, and a key with CR LF would inject a command; crates.md §1.4). `flush` with a prefix
//! is refused: `flush_all` empties whole servers. `flush --all` flushes every server at once
//! (so that hung servers cost one `pool_timeout` in all, not one each), then reports those it
//! could not flush.
//!
//! **Connections**: one pool per server (`backend/pool.rs`), created when a command first needs
//! that server. The commands are the memcache crate's meta commands (memcached 1.6 and newer)
//! and its parser reads the replies; the socket is kcache's own (see [`conn`] for why).
//!
//! **Groups** (`kcache batch`, [`group`]): the commands of a group are sent to each server they
//! touch in one pipeline, one meta command per operation, and the replies read
//! back: a round trip per server instead of one per command, with the results the commands
//! would have had one by one.

mod conn;
mod crawl;
mod envelope;
mod group;
pub mod hosts;

pub use envelope::{EXPTIME_MARGIN, FLAG_TEXT, MAX_EXPTIME, MAX_RELATIVE_EXPTIME};

use super::pool::{Pool, PoolSettings};
use super::{Backend, FlushScope, GroupOp, GroupResult};
use crate::error::{Error, ErrorKind, Result, quote};
use crate::settings::{Settings, split_hosts};
use crate::ttl::{Remaining, Ttl};
use conn::{Conn, Failure, Manager};
use envelope::Entry;
use hosts::Address;
use memcache::exp::{MetaCommand, MetaCommandResult, MetaOp, ReturnCode, Router};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// python-memcached's `socket_timeout`, the default `pool_timeout` here: it bounds the connect,
/// each read and write, and the wait for a pooled connection.
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(3);

/// memcached's (and python-memcached's) longest key, in bytes, prefix included.
pub const MAX_KEY_BYTES: usize = 250;

/// How many times `expire` and `delete` re-read at once an entry that another client changed
/// between their read and their write, before they pause between attempts.
const CAS_QUICK_ATTEMPTS: u32 = 5;

/// The longest pause between two attempts.
const CAS_MAX_PAUSE: Duration = Duration::from_millis(50);

/// The attempts of one `expire` or `delete` (see the module doc).
struct Attempts {
    start: Instant,
    patience: Duration,
    made: u32,
}

impl Attempts {
    fn new(patience: Duration) -> Attempts {
        Attempts { start: Instant::now(), patience, made: 0 }
    }

    /// After a lost race: `false` when it is time to give up, else `true`, once a pause (none
    /// for the first attempts, then growing, with jitter so that racing clients drift apart)
    /// has passed.
    fn again(&mut self) -> bool {
        self.made += 1;
        if self.made < CAS_QUICK_ATTEMPTS {
            return true;
        }
        let elapsed = self.start.elapsed();
        if elapsed >= self.patience {
            return false;
        }
        let step = (self.made - CAS_QUICK_ATTEMPTS).min(10);
        let ceiling = (Duration::from_micros(100) * (1 << step)).min(CAS_MAX_PAUSE);
        let jitter = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let pause = ceiling / 2 + Duration::from_nanos(u64::from(jitter) % (ceiling.as_nanos() as u64 / 2 + 1));
        std::thread::sleep(pause.min(self.patience - elapsed));
        true
    }
}

/// One memcached server, its pool created on first use.
struct Server {
    address: Address,
    location: String,
    pool: OnceLock<Pool<Manager>>,
}

/// What every handle on one configuration shares.
struct Shared {
    /// Distinct servers, in the order of the host list.
    servers: Vec<Server>,
    /// Their locations, as the router is given them.
    ids: Vec<String>,
    /// python-memcached's placement.
    router: hosts::PythonMemcached,
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
                    // Host lists are accepted as before, when the `memcache` crate opened the
                    // connections: a unix socket path it could not open is still refused
                    // (`Address::url`), although kcache now connects by itself.
                    address.url()?;
                    servers.push(Server { address, location, pool: OnceLock::new() });
                    servers.len() - 1
                }
            };
            buckets.push(index);
        }
        let ids: Vec<String> = servers.iter().map(|s| s.location.clone()).collect();
        let location = ids.join(",");
        let pool = PoolSettings {
            pool_size: settings.pool_size,
            max_overflow: settings.max_overflow,
            max_backlog: settings.max_backlog,
            timeout: settings.pool_timeout.unwrap_or(DEFAULT_POOL_TIMEOUT),
            recycle: settings.pool_recycle,
            workers,
        };
        let router = hosts::PythonMemcached { buckets };
        Ok(Memcached { shared: Arc::new(Shared { servers, ids, router, pool, location }) })
    }

    /// The server python-memcached would pick for this full key.
    fn server(&self, key: &str) -> &Server {
        &self.shared.servers[self.server_index(key)]
    }

    /// Its index in `servers`.
    fn server_index(&self, key: &str) -> usize {
        self.shared.router.route(key.as_bytes(), &self.shared.ids)
    }

    fn pool<'a>(&self, server: &'a Server) -> &'a Pool<Manager> {
        server.pool.get_or_init(|| {
            let manager = Manager::new(server.address.clone(), self.shared.pool.timeout);
            Pool::new(manager, self.shared.pool, "memcached", server.location.clone(), conn::classify_connect)
        })
    }

    /// A connection to `server` from its pool; the error names the server.
    fn connection(&self, server: &Server) -> Result<super::pool::Connection<Manager>> {
        self.pool(server).get().map_err(|e| conn::naming(e, &server.location))
    }

    /// Runs `op` on a connection to `server` (the pool drops it if it broke).
    fn run<T>(&self, server: &Server, op: impl FnOnce(&mut Conn) -> Result<T, Failure>) -> Result<T> {
        let mut c = self.connection(server)?;
        op(&mut c).map_err(|e| conn::classify(e, &server.location))
    }

    /// How many servers there are (distinct ones).
    #[cfg(test)]
    fn servers(&self) -> usize {
        self.shared.servers.len()
    }
}

/// `mg <key> v f`: the value and its flags, with `extra` flags (`c`: the CAS token, `t`: the
/// server's own seconds left).
fn mg(key: &str, extra: &[&'static str]) -> MetaCommand {
    extra.iter().fold(MetaCommand::new(MetaOp::Get, key).flag("v").flag("f"), |c, f| c.flag(*f))
}

/// An entry that expires more than this far ahead (50 years, half the longest TTL kcache
/// allows) is one that `load` stored as "never expires" (memcached's envelope needs a time): a
/// dump gives it as `null`.
const NEVER_AFTER: f64 = crate::ttl::MAX_TTL.as_secs_f64() / 2.0;

/// `ms`: the envelope with flags 16 ([`FLAG_TEXT`]) and `exptime`, only over the entry `cas`
/// was read with when given.
fn ms(key: &str, envelope: String, exptime: u32, cas: Option<u64>) -> MetaCommand {
    let c = MetaCommand::new(MetaOp::Set, key).flag("F16").flag(format!("T{exptime}")).value(envelope);
    match cas {
        Some(cas) => c.flag(format!("C{cas}")),
        None => c,
    }
}

/// `ms` for `set`: the envelope for `ttl` from now.
fn set_command(key: &str, value: &str, ttl: Ttl) -> MetaCommand {
    let now = SystemTime::now();
    ms(
        key,
        envelope::encode(value, envelope::expires_us(now, ttl.duration())),
        envelope::exptime(now, ttl.duration()),
        None,
    )
}

/// The item an `mg` found (`VA`, with flags), or none (`EN`).
fn found(c: &mut Conn, reply: MetaCommandResult) -> Result<Option<MetaCommandResult>, Failure> {
    match reply.rc {
        ReturnCode::Va if reply.client_flags.is_some() => Ok(Some(reply)),
        ReturnCode::En => Ok(None),
        _ => Err(c.unexpected()),
    }
}

/// Whether an `ms` or `md` was done (`HD`), or not (`NS`, `EX`: another CAS, `NF`: no item).
fn done(c: &mut Conn, reply: MetaCommandResult) -> Result<bool, Failure> {
    match reply.rc {
        ReturnCode::Hd => Ok(true),
        ReturnCode::Ns | ReturnCode::Ex | ReturnCode::Nf => Ok(false),
        _ => Err(c.unexpected()),
    }
}

/// Sends `command`, an `mg`, and reads the item it found.
fn read_on(c: &mut Conn, command: &MetaCommand) -> Result<Option<MetaCommandResult>, Failure> {
    let reply = c.call(command)?;
    found(c, reply)
}

/// Sends `command`, an `ms` or `md`, and reads whether it was done.
fn write_on(c: &mut Conn, server: &Server, command: &MetaCommand) -> Result<bool> {
    c.call(command).and_then(|reply| done(c, reply)).map_err(|e| conn::classify(e, &server.location))
}

/// The live value of a stored item, if it has one.
fn live_value(item: Option<&MetaCommandResult>, key: &str, server: &Server, now: SystemTime) -> Result<Option<String>> {
    let Some(item) = item else { return Ok(None) };
    let entry = decode(item, key, server)?;
    Ok(entry.remaining(now).map(|_| entry.value))
}

/// The time left of a stored item: the earlier of the envelope's and, when the server said
/// (`mg ... t`), the server's.
fn remaining(item: Option<&MetaCommandResult>, key: &str, server: &Server, now: SystemTime) -> Result<Remaining> {
    let Some(item) = item else { return Ok(Remaining::Missing) };
    let entry = decode(item, key, server)?;
    let left = match item.ttl {
        Some(t) => entry.remaining_on(now, t),
        None => entry.remaining(now),
    };
    Ok(left.map_or(Remaining::Missing, Remaining::Left))
}

/// The entry under `key` with its CAS token (`mg <key> v f c`), if there is one (live or not);
/// the entry is an error when it is not Kinto's.
fn gets_on(c: &mut Conn, server: &Server, key: &str) -> Result<Option<(Result<Entry>, u64)>> {
    let item = read_on(c, &mg(key, &["c"])).map_err(|e| conn::classify(e, &server.location))?;
    let Some(item) = item else { return Ok(None) };
    let cas = item.cas.ok_or_else(|| {
        Error::new(ErrorKind::Backend, anyhow::anyhow!("memcached at {} sent no CAS token", server.location))
    })?;
    Ok(Some((decode(&item, key, server), cas)))
}

/// `expire` on a connection: `mg`, then `ms` over that CAS (again if another client changed
/// the entry).
fn expire_on(c: &mut Conn, server: &Server, key: &str, ttl: Ttl, patience: Duration) -> Result<bool> {
    let mut attempts = Attempts::new(patience);
    loop {
        let Some((entry, cas)) = gets_on(c, server, key)? else { return Ok(false) };
        let entry = entry?;
        let now = SystemTime::now();
        if entry.remaining(now).is_none() {
            return Ok(false);
        }
        let envelope = envelope::encode(&entry.value, envelope::expires_us(now, ttl.duration()));
        if write_on(c, server, &ms(key, envelope, envelope::exptime(now, ttl.duration()), Some(cas)))? {
            return Ok(true);
        }
        if !attempts.again() {
            return Err(contended(key, server, &attempts));
        }
    }
}

/// `delete` on a connection: `mg`, then `ms` of an expired tombstone over that CAS.
fn delete_on(c: &mut Conn, server: &Server, key: &str, patience: Duration) -> Result<Option<String>> {
    let mut attempts = Attempts::new(patience);
    loop {
        let Some((entry, cas)) = gets_on(c, server, key)? else { return Ok(None) };
        // An entry that is not Kinto's envelope is removed all the same, as the SQL backends and
        // Redis remove a value they cannot show: `delete` is asked to remove the key. Then status
        // 5 says it is gone although its value cannot be shown.
        // An expired entry the server still holds is removed too, but reads as missing.
        let tombstone = ms(key, envelope::TOMBSTONE.into(), envelope::EXPIRED_EXPTIME, Some(cas));
        if write_on(c, server, &tombstone)? {
            let entry = entry.map_err(|e| {
                Error::new(
                    ErrorKind::Unshown,
                    anyhow::anyhow!("the entry was removed, but its value cannot be shown: {}", e.chain().join(": ")),
                )
            })?;
            let live = entry.remaining(SystemTime::now()).is_some();
            return Ok(live.then_some(entry.value));
        }
        if !attempts.again() {
            return Err(contended(key, server, &attempts));
        }
    }
}

/// Removes `key` if its live entry holds `value`: the entry read with its CAS, then a tombstone
/// written over that CAS only (another write between the two makes it fail, and the entry is
/// read again).
fn delete_if_on(c: &mut Conn, server: &Server, key: &str, value: &str, patience: Duration) -> Result<bool> {
    let mut attempts = Attempts::new(patience);
    loop {
        let Some((Ok(entry), cas)) = gets_on(c, server, key)? else { return Ok(false) };
        if entry.value != value || entry.remaining(SystemTime::now()).is_none() {
            return Ok(false);
        }
        let tombstone = ms(key, envelope::TOMBSTONE.into(), envelope::EXPIRED_EXPTIME, Some(cas));
        if write_on(c, server, &tombstone)? {
            return Ok(true);
        }
        if !attempts.again() {
            return Err(contended(key, server, &attempts));
        }
    }
}

/// Decodes an envelope, or says which entry is not one.
fn decode(item: &MetaCommandResult, key: &str, server: &Server) -> Result<Entry> {
    envelope::decode(item.value.as_deref().unwrap_or_default(), item.client_flags.unwrap_or_default()).map_err(|why| {
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
fn contended(key: &str, server: &Server, attempts: &Attempts) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        anyhow::anyhow!(
            "the entry {} on memcached at {} changed {} times in {:.1} s while kcache was updating it; try again",
            quote(key),
            server.location,
            attempts.made,
            attempts.start.elapsed().as_secs_f64()
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

    /// Each server's `stats`, every server at once (each bounded by `pool_timeout`, as for
    /// `flush --all`): `curr_items`, `bytes`, `limit_maxbytes`, `evictions`, `get_hits`,
    /// `get_misses`, `curr_connections`, `uptime`, `version`. The entries under the prefix and
    /// their bytes are left absent: memcached finds keys only through its key crawler.
    fn stats(&mut self, prefix: &str, keep_going: bool) -> Result<crate::stats::Stats> {
        use crate::stats::{ServerStats, Stats};
        let this = &*self;
        let one = |server: &Server| -> Result<ServerStats> {
            let figures = this.run(server, |c| c.stats())?;
            let get = |name: &str| figures.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let n = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
            Ok(ServerStats {
                version: get("version"),
                uptime_s: n("uptime"),
                items: n("curr_items"),
                bytes: n("bytes"),
                max_bytes: n("limit_maxbytes"),
                evictions: n("evictions"),
                hits: n("get_hits"),
                misses: n("get_misses"),
                connections: n("curr_connections"),
                ..ServerStats::up(server.location.clone())
            })
        };
        let one = &one;
        let outcomes: Vec<Result<ServerStats>> = std::thread::scope(|scope| {
            let asking: Vec<_> = this.shared.servers.iter().map(|server| scope.spawn(move || one(server))).collect();
            asking
                .into_iter()
                .map(|t| {
                    t.join().unwrap_or_else(|_| {
                        Err(Error::new(ErrorKind::Backend, anyhow::anyhow!("the stats thread failed (internal error)")))
                    })
                })
                .collect()
        });
        let mut servers = Vec::with_capacity(outcomes.len());
        for (server, outcome) in this.shared.servers.iter().zip(outcomes) {
            servers.push(match outcome {
                Ok(s) => s,
                Err(e) if keep_going && e.kind() == ErrorKind::Unavailable => ServerStats::down(&server.location, &e),
                Err(e) => return Err(e),
            });
        }
        // The live entries under the prefix, through the key crawler (`keys`' walk), when every
        // server answered; absent when one did not or its crawler is off (then unknown).
        let entries = if servers.iter().all(|s| s.up) {
            let mut n = 0u64;
            self.walk(prefix, &mut |_, _| {
                n += 1;
                true
            })
            .ok()
            .map(|()| n)
        } else {
            None
        };
        Ok(Stats { entries, servers: Some(servers), ..Stats::default() })
    }

    /// `-0`, `-1`, ...: the first suffix that lands on each server, in server order, so that a
    /// ping checks every server (python-memcached's `__heartbeat__` reaches only one). A suffix
    /// that would make the key too long leaves that server to the others' check; with no
    /// suffix that fits, the key alone.
    fn heartbeat_suffixes(&self, key: &str) -> Vec<String> {
        let servers = self.shared.servers.len();
        let mut found: Vec<Option<String>> = vec![None; servers];
        for n in 0..servers * 64 {
            let suffix = format!("-{n}");
            if key.len() + suffix.len() > MAX_KEY_BYTES {
                break;
            }
            let slot = &mut found[self.server_index(&format!("{key}{suffix}"))];
            if slot.is_none() {
                *slot = Some(suffix);
            }
            if found.iter().all(Option::is_some) {
                break;
            }
        }
        let suffixes: Vec<String> = found.into_iter().flatten().collect();
        if suffixes.is_empty() { vec![String::new()] } else { suffixes }
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
        let item = self.run(server, |c| read_on(c, &mg(key, &[])))?;
        live_value(item.as_ref(), key, server, SystemTime::now())
    }

    fn set(&mut self, key: &str, value: &str, ttl: Ttl) -> Result<()> {
        let server = self.server(key);
        self.run(server, |c| c.call(&set_command(key, value, ttl)).and_then(|reply| done(c, reply))).map(drop)
    }

    fn ttl(&mut self, key: &str) -> Result<Remaining> {
        let server = self.server(key);
        let item = self.run(server, |c| read_on(c, &mg(key, &["t"])))?;
        remaining(item.as_ref(), key, server, SystemTime::now())
    }

    fn expire(&mut self, key: &str, ttl: Ttl) -> Result<bool> {
        let server = self.server(key);
        expire_on(&mut *self.connection(server)?, server, key, ttl, self.shared.pool.timeout)
    }

    fn delete(&mut self, key: &str) -> Result<Option<String>> {
        let server = self.server(key);
        delete_on(&mut *self.connection(server)?, server, key, self.shared.pool.timeout)
    }

    fn delete_if(&mut self, key: &str, value: &str) -> Option<Result<bool>> {
        let server = self.server(key);
        let patience = self.shared.pool.timeout;
        Some(self.connection(server).and_then(|mut c| delete_if_on(&mut c, server, key, value, patience)))
    }

    fn run_group(&mut self, ops: &[GroupOp<'_>]) -> Option<Vec<Result<GroupResult>>> {
        Some(group::run(self, ops))
    }

    /// Each server's key crawler, then the candidates' envelopes (see [`crawl`]).
    fn walk(&mut self, start: &str, each: &mut dyn FnMut(&str, Remaining) -> bool) -> Result<()> {
        self.crawl(start, &mut |_, _, live| Ok(live.iter().all(|l| each(&l.key, Remaining::Left(l.left)))))
    }

    /// The crawl's live entries with their values (see [`crawl`]): the expiry is the earlier of
    /// the envelope's and the server's, as `ttl` reads it.
    fn entries(&mut self, start: &str, each: &mut crate::backend::EachEntry<'_>) -> Result<()> {
        // What `load` stored for "never expires" (the longest TTL) reads back as never, however
        // long ago it was stored.
        let never = crate::backend::unix_now() + NEVER_AFTER;
        self.crawl(start, &mut |_, _, live| {
            for l in live {
                if !each(&l.key, &l.value, (l.expires < never).then_some(l.expires))? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Pipelines of `ms` per server (see [`group::load`]).
    fn load(&mut self, entries: &[crate::backend::Entry], keep_live: bool, written: &mut u64) -> Result<()> {
        group::load(self, entries, keep_live, written)
    }

    /// The walk's chosen entries removed chunk by chunk, each chunk in one pipeline of
    /// `md <key> C<cas>` (see [`crawl`] for why).
    fn remove_matching(
        &mut self,
        start: &str,
        chosen: &dyn Fn(&str) -> bool,
        dry_run: bool,
        each: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<u64> {
        let mut removed = 0;
        self.crawl(start, &mut |c, server, live| {
            let picked: Vec<&crawl::Live> = live.iter().filter(|l| chosen(&l.key)).collect();
            if picked.is_empty() {
                return Ok(true);
            }
            let gone = if dry_run {
                vec![true; picked.len()]
            } else {
                crawl::remove(c, &picked).map_err(|f| conn::classify(f, &server.location))?
            };
            for (live, gone) in picked.into_iter().zip(gone) {
                if gone {
                    each(&live.key)?;
                    removed += 1;
                }
            }
            Ok(true)
        })?;
        Ok(removed)
    }

    fn flush(&mut self, scope: FlushScope<'_>) -> Result<()> {
        self.check_flush(scope)?;
        // Every server at once, each on a thread of its own: each is bounded by `pool_timeout`
        // (the connect, the write, the reply), so the whole flush is too, however many hang.
        let this = &*self;
        let outcomes: Vec<Result<()>> = if this.shared.servers.len() == 1 {
            vec![this.run(&this.shared.servers[0], |c| c.flush_all())]
        } else {
            std::thread::scope(|scope| {
                let flushing: Vec<_> = this
                    .shared
                    .servers
                    .iter()
                    .map(|server| scope.spawn(move || this.run(server, |c| c.flush_all())))
                    .collect();
                flushing
                    .into_iter()
                    .map(|t| {
                        t.join().unwrap_or_else(|_| {
                            Err(Error::new(
                                ErrorKind::Backend,
                                anyhow::anyhow!("the flush thread failed (internal error)"),
                            ))
                        })
                    })
                    .collect()
            })
        };
        let failed: Vec<(String, Error)> = this
            .shared
            .servers
            .iter()
            .zip(outcomes)
            .filter_map(|(server, outcome)| outcome.err().map(|e| (server.location.clone(), e)))
            .collect();
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
        assert_eq!(m.shared.router.buckets, vec![0, 1, 0]);
        assert_eq!(m.location(), "a:1,b:2");
        // cmemcache_hash("a") = 26807; 26807 % 3 = 2: the third entry, server a.
        assert_eq!(m.server("a").location, "a:1");
        assert_eq!(m.server("foobar").location, "a:1"); // 7926 % 3 = 0
        assert_eq!(m.server("__heartbeat__").location, "a:1"); // 3465 % 3 = 0
        assert_eq!(m.server("kinto:abc").location, "a:1"); // 29232 % 3 = 0
        assert_eq!(backend(&[("hosts", "a:1 b:2")]).server("a").location, "b:2"); // 26807 % 2 = 1
    }

    #[test]
    fn a_ping_reaches_every_server() {
        for hosts in ["a:1", "a:1 b:2", "a:1 b:2 c:3", "a:1 b:2 a:1", "a:1 b:2 c:3 d:4 e:5"] {
            let m = backend(&[("hosts", hosts)]);
            let key = "p:__heartbeat__1f2e-18a3c";
            let suffixes = m.heartbeat_suffixes(key);
            let reached: Vec<usize> = suffixes.iter().map(|s| m.server_index(&format!("{key}{s}"))).collect();
            assert_eq!(reached, (0..m.servers()).collect::<Vec<_>>(), "{hosts}: {suffixes:?}");
        }
        // No room for a suffix: the key alone.
        let m = backend(&[("hosts", "a:1 b:2")]);
        let long = "k".repeat(MAX_KEY_BYTES - 1);
        assert_eq!(m.heartbeat_suffixes(&long), vec![String::new()]);
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
    fn a_lost_race_is_retried_at_once_then_after_pauses_until_the_patience_runs_out() {
        let start = Instant::now();
        let mut attempts = Attempts::new(Duration::from_millis(60));
        for _ in 1..CAS_QUICK_ATTEMPTS {
            assert!(attempts.again());
        }
        assert!(start.elapsed() < Duration::from_millis(20), "no pause at first");
        while attempts.again() {}
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(60) && took < Duration::from_secs(1), "{took:?}");
        assert!(attempts.made > CAS_QUICK_ATTEMPTS + 2, "{}", attempts.made);
    }

    #[test]
    fn opening_connects_to_nothing() {
        let m = backend(&[("hosts", "127.0.0.1:1 127.0.0.1:2")]);
        assert!(m.shared.servers.iter().all(|s| s.pool.get().is_none()));
    }
}
