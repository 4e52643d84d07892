//! The `redis` backend: Kinto's Redis cache, shared live with a running Kinto.
//!
//! The wire format is Kinto's (reference §5.2, recorded in `tests/data/kinto/redis.json`): each
//! entry is one Redis string under `prefix + key` holding the JSON text itself, with no
//! envelope, written with `PSETEX key <milliseconds> <json>`. `get` is `GET`, `ttl` is `PTTL`
//! (-2: missing, -1: no expiry; the command layer rounds it up to whole seconds), `expire` is
//! `PEXPIRE`. `migrate` and `purge` have nothing to do: Redis expires keys itself.
//!
//! What Kinto 26.5 gets wrong, kcache does right (reference §11, items 31-35):
//! - TTLs: Kinto sends `int(ttl * 1000)` ms, so a TTL under 1 ms (0.0005 s) is refused by Redis,
//!   0 is an error, and negative ones too. kcache rounds up to the next whole millisecond (at
//!   least 1 ms: a 0.0005 s entry lives 1 ms), and TTL 0 deletes the key ([`super::Cache`]).
//! - URLs (see [`url`]): a trailing `/` (Kinto crashes at startup), `rediss://` (Kinto silently
//!   connects without TLS), the username (Kinto ignores it; kcache sends `AUTH user password` to
//!   Redis 6 ACLs), percent-encoded passwords (Kinto sends them still encoded), unix sockets
//!   (Kinto cannot use them) all work.
//! - `delete` is atomic: `GETDEL` (Redis ≥ 6.2), or `MULTI GET DEL EXEC` on older servers (an
//!   "unknown command" reply switches to it once per process). Kinto's `GET` then `DEL` lets two
//!   concurrent deletes of a one-time nonce both succeed.
//! - `flush` honours the prefix: with one, `SCAN MATCH <prefix>* COUNT 1000` (the prefix's glob
//!   characters escaped, so that `a*` matches only keys starting with `a*`) and `UNLINK` of what
//!   it finds (`DEL` before Redis 4.0); only an empty prefix or `--all` runs Kinto's `FLUSHDB`,
//!   which empties the whole logical database.
//! - Errors are never silent and never show the password; they are sorted in [`classify`].
//!
//! `kcache batch` sends each group of consecutive keyed commands as one pipeline, on one
//! connection, in one round trip ([`Backend::run_group`]): the same commands as the
//! single-operation methods, their replies read the same way, one result per operation (a
//! server error for one command is that command's error, not the group's).
//!
//! Connections come from the shared pool ([`super::pool`]), with Kinto's settings: at most
//! `pool_size` connections (Kinto's `BlockingConnectionPool(max_connections=pool_size)`; Redis
//! has no `max_overflow`, so it is ignored, as Kinto does), `pool_timeout` (default
//! [`DEFAULT_POOL_TIMEOUT`], Kinto's), `max_backlog` and `pool_recycle` as for PostgreSQL. The
//! connect (with its `AUTH`, `SELECT` or `PING`: see [`Manager`]) is bounded by
//! [`CONNECT_TIMEOUT`] and every command by [`COMMAND_TIMEOUT`], so that a dead or frozen server
//! costs seconds (`pool_timeout` caps both); redis-py, as Kinto configures it, waits for the
//! system's TCP timeouts (minutes).

pub mod link;
pub mod sentinel;
pub mod url;

use super::pool::{Pool, PoolSettings};
use super::{Backend, EachEntry, Entry, FlushScope, GroupOp, GroupResult};
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::ttl::{Remaining, Ttl};
use link::Link;
use redis::{ConnectionLike, ErrorKind, FromRedisValue, RedisError, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Kinto's `cache_pool_timeout` default for Redis: redis-py's `BlockingConnectionPool` waits
/// 20 s for a free connection (reference §5.1; Kinto's docstring says 30, wrongly: §11.38).
///
/// Kept although a CLI might want less: this bounds only the wait for a *free* connection, which
/// happens only when `batch --jobs N` runs more jobs than `pool_size`. An unreachable server
/// does not wait for it: a refused connect fails at once, and a connect or command that hangs
/// is cut by [`CONNECT_TIMEOUT`] and [`COMMAND_TIMEOUT`]. Set `pool_timeout` to cap everything.
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest a connect (TCP, then `AUTH`, `SELECT` or `PING`) may take; `pool_timeout` when
/// that is shorter. Kinto sets none (the system's TCP timeout: about two minutes). The TLS
/// handshake runs inside the redis crate without a socket timeout, so a server that accepts a
/// TLS connection and then never answers is cut by `pool_timeout` alone.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one command may wait for its reply (read and write timeouts of the socket), so
/// that a server that stops answering fails the command with status 3. Ten seconds is ample
/// for a value of Redis's 512 MB maximum on a local network.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// `FLUSHDB` runs in the server before it answers: millions of keys take seconds.
pub const FLUSHDB_TIMEOUT: Duration = Duration::from_secs(120);

/// Keys per `SCAN` step of a dump: each page's values come in the same pipeline as the next
/// step, and the page is written while the server works on the next one, so smaller steps
/// overlap more. 1,000,000 entries, by hand, three to five runs each: COUNT 500 1.9-2.3 s,
/// 1,000 2.5 s, 2,000 2.3-2.5 s, 10,000 3.1 s.
const DUMP_SCAN_COUNT: u32 = 500;

/// Keys per `SCAN` step of a prefixed flush (each step's keys are unlinked at once).
const SCAN_COUNT: u32 = 1000;

/// A connection of the pool, and whether it must not be reused.
pub struct Conn {
    inner: Link,
    /// Set after an I/O error or timeout: a late reply could otherwise answer the next command.
    broken: bool,
    /// Reached through Sentinel: a `READONLY` refusal means this master was demoted by a
    /// failover (status 3, and the next connection asks the sentinels again).
    failover: bool,
    /// Writes are reported done only once this many replicas have them (`WAIT`; Sentinel only).
    wait_replicas: u32,
}

impl Conn {
    fn new(inner: Link) -> Conn {
        Conn { inner, broken: false, failover: false, wait_replicas: 0 }
    }

    /// Runs `f` on the connection; an I/O failure marks it broken (r2d2 then drops it), and so
    /// does a demoted master's `READONLY` on a connection found through Sentinel.
    fn run<T>(&mut self, f: impl FnOnce(&mut Link) -> redis::RedisResult<T>) -> redis::RedisResult<T> {
        let r = f(&mut self.inner);
        match &r {
            Err(e) if e.is_io_error() || e.is_unrecoverable_error() => self.broken = true,
            Err(e) if self.failover && e.code() == Some("READONLY") => {
                self.broken = true;
                return Err(demoted(e.detail()).extract_error().err().unwrap_or_else(wrong_reply_count));
            }
            _ => {}
        }
        r
    }

    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        self.run(|c| cmd.query(c))
    }

    /// Sends `packed` and reads one reply per command (see [`Packed::send`]). Through Sentinel,
    /// a `READONLY` reply marks the connection broken and becomes a demoted master's refusal.
    fn send(&mut self, packed: &Packed) -> redis::RedisResult<Vec<Value>> {
        let mut replies = self.run(|c| packed.send(c))?;
        if self.failover {
            for r in &mut replies {
                if let Value::ServerError(e) = r
                    && e.code() == "READONLY"
                {
                    self.broken = true;
                    *r = demoted(e.details());
                }
            }
        }
        Ok(replies)
    }

    /// Waits until the connection's `wait_replicas` replicas have the writes sent so far (at most
    /// [`WAIT_MS`]): a write is reported done only then, so that a failover to that replica
    /// keeps it. Nothing to wait for without Sentinel.
    fn wait_for_replicas(&mut self) -> redis::RedisResult<()> {
        let n = self.wait_replicas;
        if n == 0 {
            return Ok(());
        }
        let acked: u32 = self.query(redis::cmd("WAIT").arg(n).arg(WAIT_MS))?;
        self.check_acked(acked)
    }

    /// What `WAIT` answered: fewer replicas than asked for is a failure (and the connection is
    /// not reused: the next one asks the sentinels again, in case the master was demoted).
    fn check_acked(&mut self, acked: u32) -> redis::RedisResult<()> {
        let n = self.wait_replicas;
        if acked >= n {
            return Ok(());
        }
        self.broken = true;
        let why = format!(
            "the master has the write, but {acked} of the {n} replica(s) asked for confirmed it within {WAIT_MS} ms \
             (wait_replicas in the URL), so it is not reported as done: a failover could lose it"
        );
        // As the server's own NOREPLICAS (what a master with min-replicas-to-write answers): status 3.
        Err(link::refusal("NOREPLICAS", Some(&why)).extract_error().err().unwrap_or_else(wrong_reply_count))
    }
}

/// How long a write through Sentinel waits for its replicas (`WAIT`).
const WAIT_MS: u64 = 1000;

/// Said of a `READONLY` refusal on a connection found through Sentinel.
const DEMOTED: &str = "(this master was demoted by a failover; the next connection asks the sentinels again)";

/// A demoted master's refusal, from the detail of the server's `READONLY`.
fn demoted(detail: Option<&str>) -> Value {
    link::refusal("READONLY", Some(&format!("{} {DEMOTED}", detail.unwrap_or_default())))
}

/// Opens connections, each a [`Conn`]:
/// - to one server: the TCP (and TLS) connect through the redis crate, with a timeout (its own
///   r2d2 manager has none), then kcache's own handshake, `AUTH` and `SELECT`, or a `PING` when
///   there are neither, all within the connect timeout in total. A server that accepts the
///   connection but does not answer, frozen or overloaded, thus fails the connect. Not the
///   crate's handshake (user, password and db in `RedisConnectionInfo`), measured with redis
///   1.8.1, `get_connection_with_timeout(2 s)`, against a server stopped with SIGSTOP: with a
///   password and a db it failed after 4.03 s (one timeout per reply); with neither it
///   "connected" in 66 µs without a round trip, leaving the frozen server to the first command
///   (10 s, and no longer a failure before sending); and a wrong password came back as "Password
///   authentication failed", without the server's `WRONGPASS ...`;
/// - through Sentinel: the master's address asked of the sentinels ([`sentinel::Lookup`]) at
///   each connect, then the same;
/// - to a Redis Cluster: the crate's cluster client (it connects to a seed node, reads the slot
///   map, and connects to the other nodes as commands need them), with the connect timeout per
///   node and [`COMMAND_TIMEOUT`] per reply.
pub struct Manager {
    source: Source,
    username: Option<String>,
    password: Option<String>,
    db: u32,
    connect_timeout: Duration,
}

enum Source {
    /// One server; a client without user, password or database: its connect does no round trip.
    Direct(redis::Client),
    /// The master of a service, found through sentinels at each connect.
    Sentinel {
        lookup: sentinel::Lookup,
        wait_replicas: u32,
    },
    Cluster(redis::cluster::ClusterClient),
}

impl Manager {
    /// Sends one handshake command within what is left of the connect timeout.
    fn step(&self, conn: &mut Conn, started: Instant, cmd: &redis::Cmd) -> redis::RedisResult<()> {
        let left = self.connect_timeout.checked_sub(started.elapsed()).filter(|d| !d.is_zero());
        let timed_out = || {
            let secs = self.connect_timeout.as_secs_f64();
            RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the server did not answer within {secs:.1} s (connect timeout)"),
            ))
        };
        let left = left.ok_or_else(timed_out)?;
        conn.inner.set_read_timeout(Some(left))?;
        conn.inner.set_write_timeout(Some(left))?;
        conn.query::<()>(cmd).map_err(|e| if e.is_timeout() { timed_out() } else { e })
    }

    /// Connects to one server and runs kcache's handshake (see [`Manager`]).
    fn connect_to(&self, client: &redis::Client, started: Instant) -> std::result::Result<Conn, RedisError> {
        let left = self.connect_timeout.checked_sub(started.elapsed()).filter(|d| !d.is_zero());
        let inner = client.get_connection_with_timeout(left.unwrap_or(Duration::from_millis(1)))?;
        let mut conn = Conn::new(Link::One(inner));
        if let Some(password) = &self.password {
            let mut auth = redis::cmd("AUTH");
            auth.arg(self.username.as_deref()).arg(password);
            match self.step(&mut conn, started, &auth) {
                // Redis < 6 has no users: `AUTH password`, as redis-py and the redis crate do.
                Err(e)
                    if self.username.is_some()
                        && e.detail().is_some_and(|d| d.contains("wrong number of arguments")) =>
                {
                    self.step(&mut conn, started, redis::cmd("AUTH").arg(password))?
                }
                r => r?,
            }
        }
        if self.db != 0 {
            self.step(&mut conn, started, redis::cmd("SELECT").arg(self.db))?;
        }
        if self.password.is_none() && self.db == 0 {
            self.step(&mut conn, started, &redis::cmd("PING"))?;
        }
        conn.inner.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        conn.inner.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        Ok(conn)
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    fn connect(&self) -> std::result::Result<Conn, RedisError> {
        let started = Instant::now();
        match &self.source {
            Source::Direct(client) => self.connect_to(client, started),
            Source::Sentinel { lookup, wait_replicas } => {
                let addr = lookup.master(self.connect_timeout)?;
                let client = open_client(addr, lookup.ca_pem.as_deref())?;
                let mut conn = self.connect_to(&client, started)?;
                conn.failover = true;
                conn.wait_replicas = *wait_replicas;
                Ok(conn)
            }
            Source::Cluster(client) => {
                let inner = client.get_connection()?;
                inner.set_write_timeout(Some(COMMAND_TIMEOUT))?;
                Ok(Conn::new(Link::Cluster(Box::new(inner))))
            }
        }
    }

    fn is_valid(&self, conn: &mut Conn) -> std::result::Result<(), RedisError> {
        conn.query::<()>(&redis::cmd("PING"))
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken || !conn.inner.is_open()
    }
}

/// What the server turned out not to support, learnt once for every handle on the pool.
#[derive(Default)]
struct Missing {
    /// `GETDEL` (Redis < 6.2): `delete` uses `MULTI GET DEL EXEC`.
    getdel: AtomicBool,
    /// `GETDEL` answered as a known command: a group may pipeline it (until then, or until
    /// `getdel` is set, a group sends its first delete alone, to learn which form works).
    getdel_known: AtomicBool,
    /// `UNLINK` (Redis < 4.0): a prefixed flush uses `DEL`.
    unlink: AtomicBool,
    /// `PEXPIRETIME` (Redis < 7.0): a dump reads `PTTL` and adds the time of the reply.
    pexpiretime: AtomicBool,
    /// `SET ... PXAT` (Redis < 6.2): a load sends `PX` with the time left when it sends.
    pxat: AtomicBool,
    /// Whether the server was asked about `PXAT` yet.
    pxat_known: AtomicBool,
}

/// A handle on the pool; forks share the pool and what was learnt about the server.
pub struct Redis {
    pool: Arc<Pool<Manager>>,
    missing: Arc<Missing>,
    /// A Redis Cluster (`redis+cluster://`).
    cluster: bool,
}

/// Builds the redis backend (no I/O, except reading `ssl_ca_certs` when the URL names one).
pub fn open(settings: &Settings, _env: &dyn Fn(&str) -> Option<String>, workers: u32) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Redis::new(settings, workers)?))
}

impl Redis {
    pub fn new(settings: &Settings, workers: u32) -> Result<Redis> {
        let target = url::parse(settings.url.as_deref())?;
        let timeout = settings.pool_timeout.unwrap_or(DEFAULT_POOL_TIMEOUT);
        let connect_timeout = timeout.min(CONNECT_TIMEOUT);
        let manager = Manager {
            source: source(&target, connect_timeout)?,
            username: target.username.clone(),
            password: target.password.clone(),
            db: target.db,
            connect_timeout,
        };
        let pool = Pool::new(
            manager,
            PoolSettings {
                pool_size: settings.pool_size,
                max_overflow: 0,
                max_backlog: settings.max_backlog,
                timeout,
                recycle: settings.pool_recycle,
                workers,
            },
            "redis",
            target.location,
            classify_connect,
        );
        let cluster = matches!(target.topology, url::Topology::Cluster { .. });
        Ok(Redis { pool: Arc::new(pool), missing: Arc::default(), cluster })
    }

    /// The pool this backend draws from (shared with its forks).
    pub fn pool(&self) -> &Arc<Pool<Manager>> {
        &self.pool
    }

    /// Runs `f` on a pooled connection; errors are classified.
    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> redis::RedisResult<T>) -> Result<T> {
        let mut conn = self.pool.get()?;
        f(&mut conn).map_err(classify)
    }

    /// `UNLINK` (or `DEL` on servers without it) of `keys`: how many the server removed.
    fn unlink<K: redis::ToRedisArgs>(&self, conn: &mut Conn, keys: &[K]) -> redis::RedisResult<u64> {
        if !self.missing.unlink.load(Ordering::Relaxed) {
            match conn.query::<u64>(redis::cmd("UNLINK").arg(keys)) {
                Err(e) if is_unknown_command(&e) => self.missing.unlink.store(true, Ordering::Relaxed),
                r => return r,
            }
        }
        conn.query::<u64>(redis::cmd("DEL").arg(keys))
    }

    /// Walks the keys that start with `start`: `SCAN cursor MATCH <start escaped>* COUNT 1000`
    /// on one connection, giving `page` each reply's keys (UTF-8 ones only: kcache's keys are
    /// text; each key once, see [`Recent`]) with the connection, until it returns `false` or the
    /// cursor comes back to 0. Every command is bounded by [`COMMAND_TIMEOUT`].
    fn scan(&self, start: &str, page: &mut dyn FnMut(&mut Conn, Vec<String>) -> Result<bool>) -> Result<()> {
        let mut conn = self.pool.get()?;
        let mut recent = Recent::default();
        scan_pages(&mut conn, start, &mut |conn, keys| {
            let keys = recent.fresh(keys.into_iter().filter_map(|k| String::from_utf8(k).ok()).collect());
            if keys.is_empty() { Ok(true) } else { page(conn, keys) }
        })
    }

    /// A cluster's dump: [`Redis::scan`] of each master, and for each page the `GET` and the
    /// `PEXPIRETIME` (`PTTL` before Redis 7.0) of each key in one pipeline, split per node by
    /// the crate (a cross-slot `MGET` cannot be pipelined). Entries as [`give_page`] reads them.
    fn cluster_entries(&mut self, start: &str, each: &mut EachEntry<'_>) -> Result<()> {
        if !self.missing.pexpiretime.load(Ordering::Relaxed) {
            let probe = self.with(|c| Ok(c.query::<i64>(redis::cmd("PEXPIRETIME").arg("kcache:\u{0}probe"))));
            if let Err(e) = probe? {
                if e.code().is_none() {
                    return Err(classify(e));
                }
                self.missing.pexpiretime.store(true, Ordering::Relaxed);
            }
        }
        let absolute = !self.missing.pexpiretime.load(Ordering::Relaxed);
        let expiry = if absolute { "PEXPIRETIME" } else { "PTTL" };
        self.scan(start, &mut |conn, keys| {
            let mut packed = Packed::on(conn);
            for key in &keys {
                packed.push(("GET", key.as_str()));
            }
            for key in &keys {
                packed.push((expiry, key.as_str()));
            }
            let mut replies = conn.send(&packed).map_err(classify)?;
            let times = replies.split_off(keys.len().min(replies.len()));
            // As MGET answers: a key that is not a string has no value.
            let values = replies.into_iter().map(|v| if matches!(v, Value::ServerError(_)) { Value::Nil } else { v });
            let mut page: Vec<Value> = std::iter::once(Value::Array(values.collect())).chain(times).collect();
            give_page(&keys, &mut page, absolute, each)
        })
    }
}

/// What [`scan_pages`] gives each reply's keys to: `false` stops the walk.
type ScanPage<'a> = dyn FnMut(&mut Conn, Vec<Vec<u8>>) -> Result<bool> + 'a;

/// The `SCAN cursor MATCH <start escaped>* COUNT 1000` loop on `conn`: `page` gets each reply's
/// keys that start with `start` (as bytes: every key, UTF-8 or not), until it returns `false`
/// or the cursor comes back to 0. The one SCAN loop of the module (walk, flush of a prefix,
/// stats, a cluster's dump). On a cluster, each master in turn ([`Link::masters`]).
fn scan_pages(conn: &mut Conn, start: &str, page: &mut ScanPage<'_>) -> Result<()> {
    let pattern = format!("{}*", glob_escape(start));
    for node in conn.run(Link::masters).map_err(classify)? {
        let mut cursor: u64 = 0;
        loop {
            let scan = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_COUNT).clone();
            let (next, mut keys): (u64, Vec<Vec<u8>>) =
                conn.run(|c| redis::from_redis_value(c.on(&node, &scan)?).map_err(Into::into)).map_err(classify)?;
            // The escaped pattern matches only these; checked again all the same.
            keys.retain(|k| k.starts_with(start.as_bytes()));
            if !keys.is_empty() && !page(conn, keys)? {
                return Ok(());
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// How many replies of a walk [`Recent`] remembers the keys of.
const RECENT_REPLIES: usize = 16;

/// The keys of a walk's last [`RECENT_REPLIES`] `SCAN` replies, so that no key is given twice
/// without holding every key of the walk.
///
/// `SCAN` returns a key twice only when the keyspace's hash table shrinks during the walk (many
/// keys removed meanwhile): the cursor then goes on in the smaller table from the bucket it had
/// reached, which also holds the entries of the larger table's buckets of that bucket's group,
/// some visited already. Its reverse-binary cursor visits a group's buckets one after the other,
/// so a repeated key is one of the replies just before. 16 replies of `COUNT 1000` cover a group
/// of at least 16,000 buckets (a reply stops at 1,000 keys or 10,000 buckets), so a key can be
/// given twice only if the keyspace shrinks more than 16,000-fold during the walk (Redis halves
/// the table down to the next power of two above the keys left). Memory stays at most that
/// many keys (a few MB) however many keys there are.
#[derive(Default)]
struct Recent {
    replies: std::collections::VecDeque<Vec<String>>,
    seen: std::collections::HashSet<String>,
}

impl Recent {
    /// The keys of a new reply that no remembered reply had (and each once); remembers them.
    fn fresh(&mut self, keys: Vec<String>) -> Vec<String> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if self.seen.insert(key.clone()) {
                out.push(key);
            }
        }
        self.replies.push_back(out.clone());
        if self.replies.len() > RECENT_REPLIES {
            for key in self.replies.pop_front().unwrap_or_default() {
                self.seen.remove(&key);
            }
        }
        out
    }
}

/// How connections reach the servers of a parsed URL (no I/O but reading `ssl_ca_certs`).
fn source(target: &url::Target, connect_timeout: Duration) -> Result<Source> {
    use redis::ConnectionAddr;
    let (tls, ca_file) = match &target.addr {
        url::Addr::Tcp { tls: Some(tls), .. } => (Some(tls.insecure), tls.ca_file.as_ref()),
        _ => (None, None),
    };
    if tls.is_some() && !cfg!(feature = "tls") {
        return Err(Error::input(format!(
            "{} needs TLS, and this kcache was built without the tls feature (see kcache --version)",
            target.location
        )));
    }
    let ca_pem = match ca_file {
        None => None,
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            Error::input(format!("cannot read ssl_ca_certs {} of {}: {e}", path.display(), target.location))
        })?),
    };
    let tcp = |host: &str, port: u16| match tls {
        None => ConnectionAddr::Tcp(host.to_string(), port),
        Some(insecure) => ConnectionAddr::TcpTls { host: host.to_string(), port, insecure, tls_params: None },
    };
    let bad = |e: RedisError| Error::input(format!("bad redis URL {}: {e}", target.location));
    Ok(match &target.topology {
        url::Topology::Single => {
            let addr = match &target.addr {
                url::Addr::Tcp { host, port, .. } => tcp(host, *port),
                url::Addr::Unix(path) => ConnectionAddr::Unix(path.clone()),
            };
            Source::Direct(open_client(addr, ca_pem.as_deref()).map_err(|e| match &ca_file {
                Some(path) => Error::input(format!("bad ssl_ca_certs {} of {}: {e}", path.display(), target.location)),
                None => bad(e),
            })?)
        }
        url::Topology::Sentinel { sentinels, service, username, password } => {
            let wait_replicas = target.wait_replicas.unwrap_or(1);
            let lookup = sentinel::Lookup {
                sentinels: sentinels.iter().map(|(h, p)| tcp(h, *p)).collect(),
                service: service.clone(),
                username: target.username.clone(),
                password: target.password.clone(),
                db: target.db,
                sentinel_username: username.clone(),
                sentinel_password: password.clone(),
                tls,
                ca_pem,
                client: std::sync::Mutex::new(None),
            };
            Source::Sentinel { lookup, wait_replicas }
        }
        url::Topology::Cluster { nodes } => {
            let seeds = nodes.iter().map(|(h, p)| tcp(h, *p));
            let mut b = redis::cluster::ClusterClient::builder(seeds)
                .connection_timeout(connect_timeout)
                .response_timeout(COMMAND_TIMEOUT)
                .retries(CLUSTER_RETRIES)
                .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
            if let Some(u) = &target.username {
                b = b.username(u);
            }
            if let Some(p) = &target.password {
                b = b.password(p);
            }
            #[cfg(feature = "tls")]
            if let Some(pem) = ca_pem {
                b = b.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(pem) });
            }
            Source::Cluster(b.build().map_err(bad)?)
        }
    })
}

/// The longest batch group on a cluster: eight times the usual 256 (`batch::GROUP`), so that
/// each of three masters gets a pipeline longer than one server would. Measured (100,000 mixed
/// set/get, three masters, --jobs 1, 2 cores, five runs each): 680,000-690,000 ops/s with groups
/// of 256, where a quarter of kcache's time went to the three `send`s per group (loopback TCP
/// does the receiver's work on the sender's core); 780,000-920,000 with 1,024; 970,000-1,030,000
/// with 2,048 (one server, groups of 256: 925,000-945,000).
const CLUSTER_GROUP: usize = 2048;

/// How many times the cluster client sends a command again (after a redirection, a
/// `TRYAGAIN`, a lost node): a resharding needs two (`ASK`, then `MOVED`); the crate's 16, each
/// possibly a connect timeout, would keep a command on a dead node for over a minute.
const CLUSTER_RETRIES: u32 = 4;

/// A client for one server at `addr` (TLS checked against `ca_pem` when given), without user,
/// password, database or `CLIENT SETINFO`: see [`Manager`].
fn open_client(addr: redis::ConnectionAddr, ca_pem: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    use redis::{IntoConnectionInfo, RedisConnectionInfo};
    let info = addr
        .into_connection_info()?
        .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name())
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    match ca_pem {
        None => redis::Client::open(info),
        #[cfg(feature = "tls")]
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates { client_tls: None, root_cert: Some(pem.to_vec()) },
        ),
        #[cfg(not(feature = "tls"))]
        Some(_) => redis::Client::open(info),
    }
}

/// Whether the server answered that it does not know the command (older Redis, or a command
/// renamed away with `rename-command`).
/// `ERR syntax error`: what a server answers to an option it does not know (`PXAT` before 6.2).
fn is_syntax_error(e: &RedisError) -> bool {
    e.code() == Some("ERR") && e.detail().is_some_and(|d| d.to_ascii_lowercase().starts_with("syntax error"))
}

fn is_unknown_command(e: &RedisError) -> bool {
    e.code() == Some("ERR") && e.detail().is_some_and(|d| d.to_ascii_lowercase().starts_with("unknown command"))
}

/// A TLS handshake that failed on the certificate (rustls: "invalid peer certificate: ..."): a
/// setting to fix, not worth retrying.
fn is_untrusted_certificate(e: &RedisError) -> bool {
    e.to_string().contains("invalid peer certificate")
}

/// The error codes that mean "not now": worth retrying.
const UNAVAILABLE_CODES: &[&str] = &["LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"];

/// Sorts a Redis failure into SPEC's statuses, in one place:
/// - 3 (unavailable, worth retrying): I/O errors (refused, reset, timed out, TLS handshake),
///   a server loading its data (`LOADING`), busy with a script (`BUSY`), a replica without its
///   primary (`MASTERDOWN`), cluster hiccups, and "max number of clients reached";
/// - 4 (refused): every other reply of the server: authentication (`NOAUTH`, `WRONGPASS`,
///   a failed `AUTH`), permissions (`NOPERM`), a read-only replica (`READONLY`), memory full
///   (`OOM`), a key of another type (`WRONGTYPE`), a failing disk (`MISCONF`), a database number
///   out of range, and replies kcache cannot read.
///
/// The cause names the server's own code and text (`NOAUTH Authentication required.`); where
/// a fix is known, a hint says it.
pub fn classify(e: RedisError) -> Error {
    let code = e.code().map(str::to_string);
    let detail = e.detail().unwrap_or_default().to_string();
    let max_clients = detail.contains("max number of clients reached");
    if is_untrusted_certificate(&e) {
        return Error::backend("the TLS handshake with redis failed", cause(&e)).with_hint(
            "the server's certificate is not trusted: add ?ssl_ca_certs=/path/to/ca.pem to the URL \
             (or set SSL_CERT_FILE), or #insecure to skip the check",
        );
    }
    let demoted = code.as_deref() == Some("READONLY") && detail.ends_with(DEMOTED);
    if e.is_io_error() || code.as_deref().is_some_and(|c| UNAVAILABLE_CODES.contains(&c)) || max_clients || demoted {
        let what = match &code {
            _ if demoted => "the redis master was demoted by a failover".to_string(),
            Some(c) => format!("redis cannot do it now ({c})"),
            None => "lost the connection to redis".to_string(),
        };
        return Error::unavailable(what, cause(&e));
    }
    let what = match &code {
        Some(c) => format!("redis refused the operation ({c})"),
        None => "redis refused the operation".to_string(),
    };
    let err = Error::backend(what, cause(&e));
    let auth = e.kind() == ErrorKind::AuthenticationFailed
        || detail.contains("Authentication required")
        || detail.starts_with("AUTH ");
    match code.as_deref() {
        Some("NOAUTH") => err.with_hint("the server wants a password: give it in the URL (redis://:password@host/0)"),
        Some("WRONGPASS") => {
            err.with_hint("check the user and password of the URL (percent-encode special characters)")
        }
        _ if auth => err
            .with_hint("check the user and password of the URL (redis://user:password@host:port/db, percent-encoded)"),
        Some("READONLY") => err.with_hint("this server is a read-only replica; point the URL at the primary"),
        Some("OOM") => err.with_hint("the server reached its maxmemory; free memory or raise maxmemory"),
        Some("WRONGTYPE") => err.with_hint("another application stores a non-string value under this key"),
        _ if detail.contains("DB index is out of range") => {
            err.with_hint("the server has fewer databases (its 'databases' setting; 16 by default)")
        }
        _ => err,
    }
}

/// The root cause as one readable line: the server's reply as it sent it (`NOAUTH
/// Authentication required.`), or the I/O error, without the redis crate's decorations.
fn cause(e: &RedisError) -> anyhow::Error {
    let shown = e.to_string();
    if e.is_timeout() && shown.contains("os error") {
        let secs = COMMAND_TIMEOUT.as_secs();
        return anyhow::anyhow!("the server did not answer in time (read timeout: {secs} s; FLUSHDB: longer)");
    }
    if e.kind() == ErrorKind::AuthenticationFailed {
        return anyhow::anyhow!("authentication failed: the server refused the user or password");
    }
    if shown.contains("refused to switch database") {
        let why = e.detail().unwrap_or("refused");
        return anyhow::anyhow!("the server refused to select the database: {why}");
    }
    match (e.kind(), e.code(), e.detail()) {
        (ErrorKind::Server(_) | ErrorKind::Extension, Some(code), Some(detail)) => anyhow::anyhow!("{code} {detail}"),
        (ErrorKind::Server(_) | ErrorKind::Extension, Some(code), None) => anyhow::anyhow!("{code}"),
        // The crate writes its own errors as "what - Kind: detail".
        (kind, _, _) => anyhow::anyhow!("{}", shown.replacen(&format!(" - {kind:?}"), "", 1)),
    }
}

/// A failure to connect, from the pool: sorted by [`classify`], naming the server.
fn classify_connect(e: RedisError, location: &str) -> Error {
    let what = format!("cannot connect to redis at {location}");
    if e.is_io_error() && !is_untrusted_certificate(&e) {
        return Error::unavailable(what, cause(&e));
    }
    classify(e).context(what)
}

/// Escapes Redis glob characters (`*`, `?`, `[`, `]`, `\`) so that the pattern matches `s`
/// literally.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Milliseconds for `PSETEX`/`PEXPIRE`: rounded up, at least 1 (Kinto truncates, and fails
/// under 1 ms: reference §11.31).
fn millis(ttl: Ttl) -> u64 {
    u64::try_from(crate::ttl::whole_millis_up(ttl.duration())).unwrap_or(u64::MAX).max(1)
}

/// A stored value: Kinto's JSON text. An empty string is a miss, as in Kinto (`if not value`).
fn text(value: Option<Vec<u8>>) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => String::from_utf8(v).map(Some).map_err(|_| {
            Error::backend(
                "read the value",
                anyhow::anyhow!("the stored value is not UTF-8 text, so not JSON that Kinto or kcache wrote"),
            )
        }),
    }
}

/// What `PTTL` answered, as [`Remaining`].
fn remaining(ms: i64) -> Remaining {
    match ms {
        -1 => Remaining::NoExpiry,
        ms if ms > 0 => Remaining::Left(Duration::from_millis(ms as u64)),
        // -2, or 0: expiring this very millisecond.
        _ => Remaining::Missing,
    }
}

/// One reply of a pipeline, read as `Cmd::query` reads the reply of a single command (a server
/// error is an error; then the type conversion).
fn reply<T: FromRedisValue>(v: Value) -> redis::RedisResult<T> {
    Ok(redis::from_redis_value(v.extract_error()?)?)
}

/// Gives `each` the entries of a dump page: `replies` holds the `MGET` of `keys`, then their
/// expiry times (`PEXPIRETIME`, or `PTTL` unless `absolute`), and is left with what follows.
/// `Ok(false)`: `each` stopped the walk.
fn give_page(keys: &[String], replies: &mut Vec<Value>, absolute: bool, each: &mut EachEntry<'_>) -> Result<bool> {
    if keys.is_empty() {
        return Ok(true);
    }
    if replies.len() < keys.len() + 1 {
        return Err(classify(wrong_reply_count()));
    }
    let now = super::unix_now();
    let mut page = replies.drain(..keys.len() + 1);
    let values: Vec<Option<Vec<u8>>> = match page.next() {
        Some(v) => reply(v).map_err(classify)?,
        None => Vec::new(),
    };
    if values.len() != keys.len() {
        return Err(classify(wrong_reply_count()));
    }
    for (key, (value, ms)) in keys.iter().zip(values.into_iter().zip(page)) {
        let Some(value) = value else { continue };
        let Ok(value) = String::from_utf8(value) else { continue };
        let expires = match reply::<i64>(ms).map_err(classify)? {
            -1 => None,
            ms if ms > 0 && absolute => Some(ms as f64 / 1000.0),
            ms if ms > 0 => Some(now + ms as f64 / 1000.0),
            _ => continue,
        };
        if value.is_empty() {
            continue;
        }
        if !each(key, &value, expires)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn wrong_reply_count() -> RedisError {
    RedisError::from((ErrorKind::UnexpectedReturnType, "the server sent another number of replies than commands"))
}

/// Commands packed by the redis crate into one buffer, through one reused `Cmd`. Not
/// `redis::pipe()`, which allocates a `Cmd` per command: kcache's CPU time for a 100,000-line
/// set/get batch (`--jobs 1`, median of 21 runs) was 63.9 ms with it, 55.8 ms with this.
#[derive(Default)]
///
/// For a cluster the commands go into a [`redis::cluster::ClusterPipeline`] instead, which the
/// crate splits per node ([`Link::send_cluster`]).
struct Packed {
    bytes: Vec<u8>,
    cmd: redis::Cmd,
    /// How many commands, so how many replies to read.
    count: usize,
    cluster: Option<redis::cluster::ClusterPipeline>,
}

impl Packed {
    /// An empty one for `conn`'s kind of connection.
    fn on(conn: &Conn) -> Packed {
        let cluster = conn.inner.is_cluster().then(redis::cluster::cluster_pipe);
        Packed { cluster, ..Packed::default() }
    }

    /// Appends one command: its name and arguments, as a tuple (`("GET", key)`).
    fn push(&mut self, args: impl redis::ToRedisArgs) {
        self.count += 1;
        if let Some(pipe) = &mut self.cluster {
            let mut cmd = redis::Cmd::new();
            cmd.arg(args);
            pipe.add_command(cmd);
            return;
        }
        self.cmd.clear();
        self.cmd.arg(args).write_packed_command(&mut self.bytes);
    }

    /// Empties it, to be filled again.
    fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
        if let Some(pipe) = &mut self.cluster {
            pipe.clear();
        }
    }

    /// Appends the commands of `op`, the same the single-operation method sends; `old`: the
    /// server has no `GETDEL` ([`read`] reads their replies).
    fn add(&mut self, op: &GroupOp<'_>, old: bool) {
        match *op {
            GroupOp::Get(k) => self.push(("GET", k)),
            GroupOp::Set(k, v, t) => self.push(("PSETEX", k, millis(t), v)),
            GroupOp::Ttl(k) => self.push(("PTTL", k)),
            GroupOp::Expire(k, t) => self.push(("PEXPIRE", k, millis(t))),
            GroupOp::Delete(k) if old => {
                self.push("MULTI");
                self.push(("GET", k));
                self.push(("DEL", k));
                self.push("EXEC");
            }
            GroupOp::Delete(k) => self.push(("GETDEL", k)),
        }
    }

    /// Sends the commands on `c` and reads their replies, giving up at the first read that
    /// times out. The crate's own `Pipeline::query` (`req_packed_commands`) goes on reading
    /// after a timeout, to stay in step with the server: measured with redis 1.8.1 against a
    /// server stopped with SIGSTOP, 4 GETs with a 1 s read timeout failed after 4.08 s, so a
    /// group of 256 commands would wait 256 command timeouts (43 minutes); this waits one.
    fn send(&self, c: &mut Link) -> redis::RedisResult<Vec<Value>> {
        match (c, &self.cluster) {
            (Link::One(c), _) => {
                c.send_packed_command(&self.bytes)?;
                (0..self.count).map(|_| c.recv_response()).collect()
            }
            (link, Some(pipe)) => link.send_cluster(pipe),
            (Link::Cluster(_), None) => Err(wrong_reply_count()),
        }
    }
}

/// Reads the replies to the commands [`Packed::add`] sent for `op` (taken from `next`, in
/// order) into its result, as its single-operation method reads them.
fn read(op: &GroupOp<'_>, old: bool, next: &mut impl FnMut() -> Value) -> Result<GroupResult> {
    Ok(match op {
        GroupOp::Delete(_) if old => {
            let (multi, get, del, exec) = (next(), next(), next(), next());
            GroupResult::Value(text(multi_del(multi, get, del, exec).map_err(classify)?)?)
        }
        GroupOp::Get(_) | GroupOp::Delete(_) => GroupResult::Value(text(reply(next()).map_err(classify)?)?),
        GroupOp::Set(..) => {
            reply::<()>(next()).map_err(classify)?;
            GroupResult::Stored
        }
        GroupOp::Ttl(_) => GroupResult::Remaining(remaining(reply(next()).map_err(classify)?)),
        GroupOp::Expire(..) => GroupResult::Existed(reply::<i64>(next()).map_err(classify)? == 1),
    })
}

/// The value `MULTI GET DEL EXEC` removed: `GET`'s reply inside `EXEC`'s. When the transaction
/// was refused (`EXECABORT`), the refusal of the queued command that caused it.
fn multi_del(multi: Value, get: Value, del: Value, exec: Value) -> redis::RedisResult<Option<Vec<u8>>> {
    reply::<()>(multi)?;
    match exec {
        Value::Array(items) => match items.into_iter().next() {
            Some(value) => reply(value),
            None => Err(wrong_reply_count()),
        },
        Value::ServerError(_) => {
            reply::<()>(get)?;
            reply::<()>(del)?;
            reply(exec)
        }
        other => reply(other),
    }
}

/// `delete` on `c`: `GETDEL`, or `MULTI GET DEL EXEC` on a server without it (learnt here, once
/// for the pool, from its "unknown command").
fn delete_on(missing: &Missing, c: &mut Conn, key: &str) -> redis::RedisResult<Option<Vec<u8>>> {
    if !missing.getdel.load(Ordering::Relaxed) {
        let r = c.query::<Option<Vec<u8>>>(redis::cmd("GETDEL").arg(key));
        match &r {
            Err(e) if is_unknown_command(e) => missing.getdel.store(true, Ordering::Relaxed),
            Err(e) if e.is_io_error() || e.is_unrecoverable_error() => return r,
            _ => {
                missing.getdel_known.store(true, Ordering::Relaxed);
                return r;
            }
        }
    }
    // Redis < 6.2: the same, atomic, in a transaction (sent and read as a group sends it).
    let mut packed = Packed::default();
    packed.add(&GroupOp::Delete(key), true);
    let replies = c.send(&packed)?;
    let [multi, get, del, exec]: [Value; 4] = replies.try_into().map_err(|_| wrong_reply_count())?;
    multi_del(multi, get, del, exec)
}

/// Sends `ops` as one pipeline on `conn` (one write, then every reply): one result per
/// operation; `Err` when the exchange itself failed (connection lost, timeout), for all of them.
fn pipeline(conn: &mut Conn, ops: &[GroupOp<'_>], old: bool) -> Result<Vec<Result<GroupResult>>> {
    let mut packed = Packed::on(conn);
    packed.bytes.reserve(ops.len() * 48);
    for op in ops {
        packed.add(op, old);
    }
    let n = conn.wait_replicas;
    let writes = n > 0 && ops.iter().any(|op| !matches!(op, GroupOp::Get(_) | GroupOp::Ttl(_)));
    if writes {
        packed.push(("WAIT", n, WAIT_MS));
    }
    let mut replies = conn.send(&packed).map_err(classify)?.into_iter();
    let mut next = || replies.next().unwrap_or(Value::Nil);
    let mut results: Vec<Result<GroupResult>> = ops.iter().map(|op| read(op, old, &mut next)).collect();
    if writes && let Err(e) = reply::<u32>(next()).and_then(|acked| conn.check_acked(acked)) {
        // The writes of the group are not confirmed; what it read stands.
        let e = classify(e);
        for (op, r) in ops.iter().zip(&mut results) {
            if r.is_ok() && !matches!(op, GroupOp::Get(_) | GroupOp::Ttl(_)) {
                *r = Err(e.clone());
            }
        }
    }
    Ok(results)
}

/// Fails the `n` operations left of a group with `e` (the last one gets `e` itself).
fn fail_rest(out: &mut Vec<Result<GroupResult>>, n: usize, e: Error) {
    if n == 0 {
        return;
    }
    for _ in 1..n {
        out.push(Err(e.clone()));
    }
    out.push(Err(e));
}

/// One server's figures from its `INFO`: items are the keys of every database, `max_bytes` is
/// `maxmemory` (absent when 0: no limit).
fn server_stats(info: &str, address: String) -> crate::stats::ServerStats {
    let field =
        |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(|v| v.trim().to_string());
    let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
    let items = info
        .lines()
        .filter(|l| l.starts_with("db"))
        .filter_map(|l| l.split_once(":keys=")?.1.split(',').next()?.parse::<u64>().ok())
        .sum();
    crate::stats::ServerStats {
        version: field("redis_version"),
        uptime_s: number("uptime_in_seconds"),
        items: Some(items),
        bytes: number("used_memory"),
        max_bytes: number("maxmemory").filter(|n| *n > 0),
        evictions: number("evicted_keys"),
        hits: number("keyspace_hits"),
        misses: number("keyspace_misses"),
        connections: number("connected_clients"),
        ..crate::stats::ServerStats::up(address)
    }
}

impl Backend for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn location(&self) -> String {
        self.pool.location().to_string()
    }

    fn fork(&self) -> Result<Box<dyn Backend>> {
        Ok(Box::new(Redis { pool: Arc::clone(&self.pool), missing: Arc::clone(&self.missing), cluster: self.cluster }))
    }

    /// `INFO` first (its hits and misses do not count the reads below), then the prefix's keys:
    /// `SCAN MATCH <escaped prefix>* COUNT 1000`, and for each step's keys their `STRLEN`s in
    /// one pipeline (a key gone meanwhile, an empty value, which Kinto reads as a miss, and a
    /// key that is not a string are no entries). SCAN's guarantees hold: a key written or
    /// removed during the count may or may not be counted. Server figures from `INFO`: items
    /// are the keys of every database, `max_bytes` is `maxmemory` (absent when 0: no limit).
    fn stats(&mut self, prefix: &str, keep_going: bool) -> Result<crate::stats::Stats> {
        use crate::stats::{ServerStats, Stats};
        let address = self.location();
        let down = |e: Error| -> Result<Stats> {
            if keep_going && e.kind() == crate::error::ErrorKind::Unavailable {
                Ok(Stats { servers: Some(vec![ServerStats::down(address.clone(), &e)]), ..Stats::default() })
            } else {
                Err(e)
            }
        };
        let mut conn = match self.pool.get() {
            Ok(c) => c,
            Err(e) => return down(e),
        };
        let nodes = match conn.run(Link::masters).map_err(classify) {
            Ok(n) => n,
            Err(e) => return down(e),
        };
        // One server's figures each (a cluster: each master, named by its address).
        let mut servers = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let named = node.address().unwrap_or_else(|| address.clone());
            let info =
                conn.run(|c| redis::from_redis_value::<String>(c.on(node, &redis::cmd("INFO"))?).map_err(Into::into));
            match info.map_err(classify) {
                Ok(info) => servers.push(server_stats(&info, named)),
                Err(e) if nodes.len() > 1 && keep_going && e.kind() == crate::error::ErrorKind::Unavailable => {
                    servers.push(ServerStats::down(named, &e))
                }
                Err(e) => return down(e),
            }
        }
        let (mut entries, mut bytes) = (0u64, 0u64);
        scan_pages(&mut conn, prefix, &mut |conn, keys| {
            let mut packed = Packed::on(conn);
            for key in &keys {
                packed.push(("STRLEN", key.as_slice()));
            }
            for len in conn.send(&packed).map_err(classify)? {
                if let Ok(n @ 1..) = reply::<u64>(len) {
                    entries += 1;
                    bytes += n;
                }
            }
            Ok(true)
        })?;
        Ok(Stats { entries: Some(entries), value_bytes: Some(bytes), servers: Some(servers), ..Stats::default() })
    }

    fn get(&mut self, key: &str) -> Result<Option<String>> {
        text(self.with(|c| c.query(redis::cmd("GET").arg(key)))?)
    }

    fn set(&mut self, key: &str, value: &str, ttl: Ttl) -> Result<()> {
        self.with(|c| {
            c.query::<()>(redis::cmd("PSETEX").arg(key).arg(millis(ttl)).arg(value))?;
            c.wait_for_replicas()
        })
    }

    fn ttl(&mut self, key: &str) -> Result<Remaining> {
        Ok(remaining(self.with(|c| c.query(redis::cmd("PTTL").arg(key)))?))
    }

    fn expire(&mut self, key: &str, ttl: Ttl) -> Result<bool> {
        let set: i64 = self.with(|c| {
            let set = c.query(redis::cmd("PEXPIRE").arg(key).arg(millis(ttl)))?;
            c.wait_for_replicas().map(|()| set)
        })?;
        Ok(set == 1)
    }

    fn delete(&mut self, key: &str) -> Result<Option<String>> {
        let missing = Arc::clone(&self.missing);
        text(self.with(|c| {
            let value = delete_on(&missing, c, key)?;
            c.wait_for_replicas().map(|()| value)
        })?)
    }

    /// On a cluster, groups of [`CLUSTER_GROUP`]: the crate splits each over the masters, so
    /// that each master's pipeline is about as long as one server's would be.
    fn group_len(&self) -> Option<usize> {
        self.cluster.then_some(CLUSTER_GROUP)
    }

    fn run_group(&mut self, ops: &[GroupOp<'_>]) -> Option<Vec<Result<GroupResult>>> {
        let mut out = Vec::with_capacity(ops.len());
        if ops.is_empty() {
            return Some(out);
        }
        let mut conn = match self.pool.get() {
            Ok(c) => c,
            Err(e) => {
                fail_rest(&mut out, ops.len(), e);
                return Some(out);
            }
        };
        let mut rest = ops;
        while !rest.is_empty() {
            let old = self.missing.getdel.load(Ordering::Relaxed);
            let known = old || self.missing.getdel_known.load(Ordering::Relaxed);
            // Until the server is known to have GETDEL or not, the first delete goes alone (it
            // learns which form works); what comes before it and after it is pipelined. On a
            // cluster every delete goes alone (see [`link`]: its value could be lost).
            let alone = self.cluster || !known;
            let first_delete = if alone { rest.iter().position(|op| matches!(op, GroupOp::Delete(_))) } else { None };
            let now = &rest[..first_delete.unwrap_or(rest.len())];
            if !now.is_empty() {
                match pipeline(&mut conn, now, old) {
                    Ok(results) => out.extend(results),
                    Err(e) => {
                        fail_rest(&mut out, rest.len(), e);
                        break;
                    }
                }
            }
            rest = &rest[now.len()..];
            if let Some(GroupOp::Delete(key)) = first_delete.and(rest.first()) {
                match delete_on(&self.missing, &mut conn, key).and_then(|v| conn.wait_for_replicas().map(|()| v)) {
                    Err(e) if conn.broken => {
                        fail_rest(&mut out, rest.len(), classify(e));
                        break;
                    }
                    r => out.push(r.map_err(classify).and_then(text).map(GroupResult::Value)),
                }
                rest = &rest[1..];
            }
        }
        Some(out)
    }

    /// `WATCH key`, `GET key`, then `MULTI DEL EXEC` if it holds `value`: `EXEC` does nothing
    /// when the key changed since `WATCH`. One server only (a cluster cannot route `MULTI`).
    fn delete_if(&mut self, key: &str, value: &str) -> Option<Result<bool>> {
        if self.cluster {
            return None;
        }
        Some(self.with(|c| {
            c.query::<()>(redis::cmd("WATCH").arg(key))?;
            let held: Option<Vec<u8>> = c.query(redis::cmd("GET").arg(key))?;
            if held.as_deref() != Some(value.as_bytes()) {
                c.query::<()>(&redis::cmd("UNWATCH"))?;
                return Ok(false);
            }
            let mut packed = Packed::default();
            packed.push("MULTI");
            packed.push(("DEL", key));
            packed.push("EXEC");
            let mut replies = c.send(&packed)?.into_iter();
            let (multi, del, exec) = (replies.next(), replies.next(), replies.next());
            reply::<()>(multi.unwrap_or(Value::Nil))?;
            reply::<()>(del.unwrap_or(Value::Nil))?;
            // A null EXEC: the key changed since WATCH, and nothing was deleted.
            let removed: Option<Vec<i64>> = reply(exec.unwrap_or(Value::Nil))?;
            Ok(removed.is_some_and(|r| r.first() == Some(&1)))
        }))
    }

    fn flush(&mut self, scope: FlushScope<'_>) -> Result<()> {
        match scope {
            FlushScope::All => self.with(|c| {
                c.inner.set_read_timeout(Some(FLUSHDB_TIMEOUT))?;
                c.query::<()>(&redis::cmd("FLUSHDB"))?;
                c.inner.set_read_timeout(Some(COMMAND_TIMEOUT))
            }),
            FlushScope::Prefix(prefix) => {
                let mut conn = self.pool.get()?;
                scan_pages(&mut conn, prefix, &mut |conn, keys| {
                    self.unlink(conn, &keys).map_err(classify)?;
                    Ok(true)
                })
            }
        }
    }

    /// `SCAN` pages (see [`Redis::scan`]), then the `PTTL` of each page's keys in one pipeline:
    /// a key gone since (-2, or 0: expiring this millisecond) is left out.
    fn walk(&mut self, start: &str, each: &mut dyn FnMut(&str, Remaining) -> bool) -> Result<()> {
        self.scan(start, &mut |conn, keys| {
            let mut packed = Packed::on(conn);
            for key in &keys {
                packed.push(("PTTL", key.as_str()));
            }
            let replies = conn.send(&packed).map_err(classify)?;
            for (key, ms) in keys.iter().zip(replies) {
                match remaining(reply(ms).map_err(classify)?) {
                    Remaining::Missing => {}
                    left => {
                        if !each(key, left) {
                            return Ok(false);
                        }
                    }
                }
            }
            Ok(true)
        })
    }

    /// `SCAN` pages of [`DUMP_SCAN_COUNT`] keys (UTF-8 ones, each once: see [`Recent`]); each
    /// page's values (one `MGET`) and `PEXPIRETIME`s go in one pipeline with the next `SCAN`, so
    /// a page costs one round trip. `PEXPIRETIME` gives the absolute expiry, exact whatever the network's
    /// delay (a time left, `PTTL`, read plus the time of the reply, was late by the reply's
    /// travel: 100 ms on a link with 100 ms each way); servers before Redis 7.0 get `PTTL`. A
    /// key gone since, empty (a miss for Kinto), not a string or not UTF-8 is no entry.
    fn entries(&mut self, start: &str, each: &mut EachEntry<'_>) -> Result<()> {
        if self.cluster {
            return self.cluster_entries(start, each);
        }
        let mut conn = self.pool.get()?;
        let pattern = format!("{}*", glob_escape(start));
        let scan = |cursor: u64| ("SCAN", cursor, "MATCH", pattern.clone(), "COUNT", DUMP_SCAN_COUNT);
        let mut recent = Recent::default();
        let mut packed = Packed::default();
        // Whether the server has PEXPIRETIME: asked with the first SCAN, of a key name no one uses.
        let probe = !self.missing.pexpiretime.load(Ordering::Relaxed);
        if probe {
            packed.push(("PEXPIRETIME", "kcache:\u{0}probe"));
        }
        packed.push(scan(0));
        let mut replies = conn.send(&packed).map_err(classify)?;
        if probe && let Some(Err(e)) = (!replies.is_empty()).then(|| reply::<i64>(replies.remove(0))) {
            // Unknown to the server, or not allowed to this user (NOPERM): PTTL then.
            if e.code().is_none() {
                return Err(classify(e));
            }
            self.missing.pexpiretime.store(true, Ordering::Relaxed);
        }
        let absolute = !self.missing.pexpiretime.load(Ordering::Relaxed);
        let expiry = if absolute { "PEXPIRETIME" } else { "PTTL" };
        // `replies` answer the request in flight: the values and expiry times of `keys`, then
        // (unless the walk has ended) the next SCAN step. As soon as they are in, the next
        // request goes out, and the page is given while the server works on that one.
        let mut keys: Vec<String> = Vec::new();
        let mut scanned = true;
        loop {
            let (next, found): (u64, Vec<Vec<u8>>) = if scanned {
                let Some(last) = replies.pop() else { return Err(classify(wrong_reply_count())) };
                reply(last).map_err(classify)?
            } else {
                (0, Vec::new())
            };
            let coming = recent.fresh(
                found
                    .into_iter()
                    .filter(|k| k.starts_with(start.as_bytes()))
                    .filter_map(|k| String::from_utf8(k).ok())
                    .collect(),
            );
            packed.clear();
            if !coming.is_empty() {
                packed.push(("MGET", &coming[..]));
            }
            for key in &coming {
                packed.push((expiry, key.as_str()));
            }
            if scanned && next != 0 {
                packed.push(scan(next));
            }
            if packed.count > 0 {
                conn.run(|c| c.one()?.send_packed_command(&packed.bytes)).map_err(classify)?;
            }
            let given = give_page(&keys, &mut replies, absolute, each);
            if !matches!(given, Ok(true)) {
                // Replies of the request just sent are left unread: the connection is not reused.
                conn.broken |= packed.count > 0;
                return given.map(drop);
            }
            if packed.count == 0 {
                return Ok(());
            }
            let count = packed.count;
            replies = conn.run(|c| (0..count).map(|_| c.one()?.recv_response()).collect()).map_err(classify)?;
            keys = coming;
            scanned = scanned && next != 0;
        }
    }

    /// Each group in one pipeline of `SET key value [PXAT ms] [NX]`: the absolute expiry, exact
    /// whatever the network's delay. Whether the server knows `PXAT` (Redis 6.2) is asked once,
    /// in the first group's pipeline, by a `SET` of a key name no one uses with `XX` (so it
    /// writes nothing); a server that answers it with a syntax error gets `PX`, the time left
    /// counted just before each group is sent. `NX` keeps a live entry (Redis has removed
    /// expired ones). `OK` is a write, a null reply a kept entry; a refused command fails the
    /// load after every reply is read.
    fn load(&mut self, entries: &[Entry], keep_live: bool, written: &mut u64) -> Result<()> {
        let mut conn = self.pool.get()?;
        if !self.missing.pxat_known.load(Ordering::Relaxed) {
            let probe = conn.query::<Option<String>>(
                redis::cmd("SET").arg("kcache:\u{0}probe").arg("").arg("PXAT").arg(1).arg("XX"),
            );
            match probe {
                Ok(_) => {}
                Err(e) if is_syntax_error(&e) => self.missing.pxat.store(true, Ordering::Relaxed),
                Err(e) => return Err(classify(e)),
            }
            self.missing.pxat_known.store(true, Ordering::Relaxed);
        }
        let relative = self.missing.pxat.load(Ordering::Relaxed);
        let max_ms = crate::ttl::MAX_TTL.as_millis() as f64;
        let mut packed = Packed::on(&conn);
        let now = super::unix_now();
        for e in entries {
            let expiry = match e.expires {
                None => None,
                Some(at) if at <= now => continue,
                Some(at) if relative => Some(("PX", ((at - now) * 1000.0).ceil().clamp(1.0, max_ms) as u64)),
                Some(at) => Some(("PXAT", (at * 1000.0).ceil().min(now * 1000.0 + max_ms) as u64)),
            };
            let (k, v) = (e.key.as_str(), e.value.as_str());
            match (expiry, keep_live) {
                (Some((unit, n)), false) => packed.push(("SET", k, v, unit, n)),
                (Some((unit, n)), true) => packed.push(("SET", k, v, unit, n, "NX")),
                (None, false) => packed.push(("SET", k, v)),
                (None, true) => packed.push(("SET", k, v, "NX")),
            }
        }
        if packed.count == 0 {
            return Ok(());
        }
        let replies = conn.send(&packed).map_err(classify)?;
        let mut failure = None;
        for r in replies {
            match reply::<Option<String>>(r) {
                Ok(Some(_)) => *written += 1,
                Ok(None) => {}
                Err(e) => {
                    failure.get_or_insert(classify(e));
                }
            }
        }
        failure.map_or(Ok(()), Err)?;
        conn.wait_for_replicas().map_err(classify)
    }

    /// `DBSIZE` when the walk covers the whole database (no prefix): every key of it.
    fn count(&mut self, start: &str) -> Option<u64> {
        if !start.is_empty() {
            return None;
        }
        self.with(|c| c.query::<u64>(&redis::cmd("DBSIZE"))).ok()
    }

    /// `SCAN` alone: the server leaves out keys that have expired (it checks each key it returns),
    /// so no `PTTL` is needed when the time left is not asked for (1,000,000 keys: half the time).
    fn walk_keys(&mut self, start: &str, each: &mut dyn FnMut(&str) -> bool) -> Result<()> {
        self.scan(start, &mut |_, keys| Ok(keys.iter().all(|key| each(key))))
    }

    /// `SCAN` pages (see [`Redis::scan`]); each page's chosen keys removed by one `UNLINK` (`DEL`
    /// before Redis 4.0) of at most 1,000 keys. The count is what the server removed (a key
    /// removed by someone else in the meantime is not counted).
    fn remove_matching(
        &mut self,
        start: &str,
        chosen: &dyn Fn(&str) -> bool,
        dry_run: bool,
        each: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<u64> {
        let mut removed = 0;
        let this = &*self;
        this.scan(start, &mut |conn, mut keys| {
            keys.retain(|k| chosen(k));
            if keys.is_empty() {
                return Ok(true);
            }
            removed += if dry_run { keys.len() as u64 } else { this.unlink(conn, &keys).map_err(classify)? };
            for key in &keys {
                each(key)?;
            }
            Ok(true)
        })?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::ServerErrorKind;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("plain:"), "plain:");
        assert_eq!(glob_escape(r"a*b?c[d]e\f"), r"a\*b\?c\[d\]e\\f");
        assert_eq!(glob_escape("é^-:"), "é^-:");
    }

    #[test]
    fn a_walk_gives_each_key_once_and_remembers_only_recent_replies() {
        let page = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let mut recent = Recent::default();
        assert_eq!(recent.fresh(page(&["a", "b", "a"])), page(&["a", "b"]));
        assert_eq!(recent.fresh(page(&["b", "c"])), page(&["c"]), "a key SCAN repeats is given once");
        for i in 0..RECENT_REPLIES {
            recent.fresh(vec![format!("k{i}")]);
        }
        assert!(recent.seen.len() <= RECENT_REPLIES * 2, "memory stays the last replies' keys");
        assert_eq!(recent.fresh(page(&["a"])), page(&["a"]), "forgotten after {RECENT_REPLIES} replies");
    }

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        let ms = |s: &str| millis(s.parse().unwrap());
        assert_eq!(ms("0.0005"), 1, "Kinto sends 0 and fails");
        assert_eq!(ms("0.000000001"), 1);
        assert_eq!(ms("0.0015"), 2);
        assert_eq!(ms("1.9"), 1900);
        assert_eq!(ms("40d"), 3_456_000_000);
        assert_eq!(ms("36500d"), 3_153_600_000_000);
    }

    #[test]
    fn errors_are_sorted() {
        use crate::error::ErrorKind as K;
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(io).kind(), K::Unavailable);
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(classify(timeout).kind(), K::Unavailable);
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "Password authentication failed"));
        let e = classify(auth);
        assert_eq!(e.kind(), K::Backend);
        assert!(e.hint().unwrap().contains("password"));
        let loading = RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
        assert_eq!(classify(loading).kind(), K::Unavailable);
        let ro = RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "read only"));
        assert_eq!(classify(ro).kind(), K::Backend);
        let client = RedisError::from((ErrorKind::UnexpectedReturnType, "odd reply"));
        assert_eq!(classify(client).kind(), K::Backend);
    }

    fn server_error(code: &str, detail: &str) -> Value {
        let resp = format!("-{code} {detail}\r\n");
        redis::parse_redis_value(resp.as_bytes()).unwrap()
    }

    #[test]
    fn group_replies_are_read_as_single_replies() {
        use crate::error::ErrorKind as K;
        let read = |(op, old): (GroupOp<'_>, bool), replies: Vec<Value>| {
            let mut it = replies.into_iter();
            super::read(&op, old, &mut || it.next().unwrap_or(Value::Nil))
        };
        let t: Ttl = "1".parse().unwrap();
        let [get, set, ttl, expire, get_del, multi_delete] = [
            (GroupOp::Get("k"), false),
            (GroupOp::Set("k", "\"v\"", t), false),
            (GroupOp::Ttl("k"), false),
            (GroupOp::Expire("k", t), false),
            (GroupOp::Delete("k"), false),
            (GroupOp::Delete("k"), true),
        ];
        let bulk = |b: &[u8]| Value::BulkString(b.to_vec());
        assert_eq!(read(get, vec![bulk(b"\"v\"")]).unwrap(), GroupResult::Value(Some("\"v\"".into())));
        assert_eq!(read(get, vec![Value::Nil]).unwrap(), GroupResult::Value(None));
        assert_eq!(read(get, vec![bulk(b"")]).unwrap(), GroupResult::Value(None));
        assert_eq!(read(get, vec![bulk(&[0xff])]).unwrap_err().kind(), K::Backend);
        assert_eq!(read(set, vec![Value::Okay]).unwrap(), GroupResult::Stored);
        assert_eq!(read(ttl, vec![Value::Int(-2)]).unwrap(), GroupResult::Remaining(Remaining::Missing));
        assert_eq!(read(ttl, vec![Value::Int(0)]).unwrap(), GroupResult::Remaining(Remaining::Missing));
        assert_eq!(read(ttl, vec![Value::Int(-1)]).unwrap(), GroupResult::Remaining(Remaining::NoExpiry));
        assert_eq!(
            read(ttl, vec![Value::Int(1500)]).unwrap(),
            GroupResult::Remaining(Remaining::Left(Duration::from_millis(1500)))
        );
        assert_eq!(read(expire, vec![Value::Int(1)]).unwrap(), GroupResult::Existed(true));
        assert_eq!(read(expire, vec![Value::Int(0)]).unwrap(), GroupResult::Existed(false));
        let e = read(get_del, vec![server_error("WRONGTYPE", "Operation against a key")]).unwrap_err();
        assert_eq!(e.kind(), K::Backend);
        assert!(e.chain().last().unwrap().starts_with("WRONGTYPE"), "{:?}", e.chain());
        assert!(e.hint().is_some());
        let e = read(set, vec![server_error("LOADING", "Redis is loading")]).unwrap_err();
        assert_eq!(e.kind(), K::Unavailable);
        // MULTI GET DEL EXEC: GET's reply inside EXEC's.
        let queued = || Value::SimpleString("QUEUED".into());
        let multi = |exec: Value| vec![Value::Okay, queued(), queued(), exec];
        let exec = Value::Array(vec![bulk(b"\"v\""), Value::Int(1)]);
        assert_eq!(read(multi_delete, multi(exec)).unwrap(), GroupResult::Value(Some("\"v\"".into())));
        let exec = Value::Array(vec![Value::Nil, Value::Int(0)]);
        assert_eq!(read(multi_delete, multi(exec)).unwrap(), GroupResult::Value(None));
        let exec = Value::Array(vec![server_error("WRONGTYPE", "Operation"), Value::Int(1)]);
        assert!(read(multi_delete, multi(exec)).unwrap_err().chain().last().unwrap().starts_with("WRONGTYPE"));
        // Refused when queued: that refusal, not EXECABORT.
        let replies = vec![
            Value::Okay,
            server_error("NOPERM", "no permissions to run the 'get' command"),
            queued(),
            server_error("EXECABORT", "Transaction discarded"),
        ];
        assert!(read(multi_delete, replies).unwrap_err().chain().last().unwrap().starts_with("NOPERM"));
    }

    #[test]
    fn groups_are_packed_as_the_redis_crate_packs_commands() {
        let value = "\"é 😀 \\r\\n\"".to_string() + &"x".repeat(1000);
        let ops = [
            GroupOp::Get("p:k"),
            GroupOp::Set("p:k", &value, "0.0005".parse().unwrap()),
            GroupOp::Set("p:é k", "\"v\"", "36500d".parse().unwrap()),
            GroupOp::Ttl("p:k"),
            GroupOp::Expire("p:k", "1.9".parse().unwrap()),
            GroupOp::Delete("p:k"),
        ];
        for old in [false, true] {
            let mut mine = Packed::default();
            for op in &ops {
                mine.add(op, old);
            }
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg("p:k");
            pipe.cmd("PSETEX").arg("p:k").arg(1).arg(&value);
            pipe.cmd("PSETEX").arg("p:é k").arg(3_153_600_000_000u64).arg("\"v\"");
            pipe.cmd("PTTL").arg("p:k");
            pipe.cmd("PEXPIRE").arg("p:k").arg(1900);
            if old {
                pipe.cmd("MULTI").cmd("GET").arg("p:k").cmd("DEL").arg("p:k").cmd("EXEC");
            } else {
                pipe.cmd("GETDEL").arg("p:k");
            }
            assert_eq!(String::from_utf8_lossy(&mine.bytes), String::from_utf8_lossy(&pipe.get_packed_pipeline()));
            assert_eq!(mine.count, pipe.len());
        }
    }

    #[test]
    fn a_failed_group_fails_every_operation_alike() {
        let e = classify(RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)))
            .context("outer")
            .with_hint("a hint");
        let mut out = Vec::new();
        fail_rest(&mut out, 3, e);
        assert_eq!(out.len(), 3);
        let first = out[0].as_ref().unwrap_err();
        for r in &out {
            let e = r.as_ref().unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Unavailable);
            assert_eq!(e.chain(), first.chain());
            assert_eq!(e.hint(), Some("a hint"));
        }
        fail_rest(&mut out, 0, Error::input("x"));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn empty_values_are_misses_as_in_kinto() {
        assert_eq!(text(Some(Vec::new())).unwrap(), None);
        assert_eq!(text(None).unwrap(), None);
        assert_eq!(text(Some(b"\"v\"".to_vec())).unwrap().as_deref(), Some("\"v\""));
        assert_eq!(text(Some(vec![0xff])).unwrap_err().kind(), crate::error::ErrorKind::Backend);
    }
}
