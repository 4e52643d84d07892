//! The `postgresql` backend: Kinto's cache table, shared live with a running Kinto.
//!
//! The wire format is Kinto's (reference §2): `cache(key, value, ttl)` from `schema.sql`,
//! values as Kinto's JSON text, keys with the prefix, and the expiry computed by the server with
//! `sec2ttl()` and `now()` in the session's own time zone, so that both tools agree on it.
//! What Kinto gets wrong, kcache does right (reference §11, items 1-13): `ttl` reports the whole
//! duration (`EXTRACT(EPOCH ...)`, not `EXTRACT(SECOND ...)`); a NULL ttl is an entry without
//! expiry; expired rows are invisible to `get`, `ttl`, `expire` and `delete`; `get` never writes;
//! `set` purges a bounded batch; `flush` honours the prefix; `migrate` looks in the connection's
//! own schema and checks all three objects.
//!
//! Every statement is sent with its parameter types (`query_typed`): one round trip each, no
//! prepare.

mod bulk;
mod connect;
mod session;

use super::pool::{Pool, PoolSettings};

use super::{Backend, EachEntry, Entry, FlushScope, GroupOp, GroupResult, MATCH_BATCH, Migration};
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::ttl::{Remaining, Ttl};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::types::Type;
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// A statement parameter with its type, owned so that it can go to the [`Replies`] thread.
type Param = (Box<dyn ToSql + Sync + Send>, Type);

fn param(value: impl ToSql + Sync + Send + 'static, ty: Type) -> Param {
    (Box::new(value), ty)
}

/// Kinto's `key VARCHAR(256)`, prefix included.
pub const MAX_KEY_CHARS: usize = 256;

/// Kinto's `pool_timeout` default (SQLAlchemy's).
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(30);

/// How many expired rows one `set` removes on its way.
const SET_PURGE_BATCH: i64 = 100;

/// `sec2ttl()` turns its float into text and parses it as an interval; PostgreSQL writes
/// floats under 1e-4 in exponent notation, which that parse rejects (reference §2.4). A TTL that
/// small is sent as 0.1 ms: an entry that short-lived is gone before any reader could see it.
const MIN_SEC2TTL: f64 = 0.0001;

/// How long a batch group's transaction may wait for a row lock before it gives up and runs its
/// operations one by one (which wait up to `pool_timeout`, each in its own transaction).
const GROUP_LOCK_TIMEOUT_MS: u64 = 50;

/// The advisory lock `migrate` holds, so that several hosts may run it at once ("kcache").
const MIGRATE_LOCK: i64 = 0x6b_63_61_63_68_65;

/// The schema, as DBAs can apply it by hand; `migrate` runs its statements one by one.
pub const SCHEMA_SQL: &str = include_str!("../../../schema.sql");

/// How much longer than `pool_timeout` (which bounds every lock wait in the server) a command
/// waits for the server's reply before it gives up on the connection: see [`Replies`].
pub const REPLY_MARGIN: Duration = Duration::from_secs(5);

/// The least time `flush`, `purge` and `migrate` wait for their reply: a `DELETE` of millions
/// of rows runs for a while before the server answers.
pub const BULK_REPLY_TIMEOUT: Duration = Duration::from_secs(120);

type Conn = r2d2::PooledConnection<session::Manager>;
type Job = Box<dyn FnOnce() + Send>;

/// Bounds every wait for a PostgreSQL reply. The `postgres` client has no read timeout (its
/// `connect_timeout` covers the TCP connect only), and TCP keepalives cannot see a server whose
/// processes are frozen or a proxy that stops forwarding, since the peer's kernel still
/// acknowledges everything. So each exchange runs on this handle's own thread while the caller
/// waits at most the bound; when the bound passes, the caller gets status 3 and the thread is
/// abandoned with its connection (it ends with the process), and the next exchange starts a new
/// thread. Costs a thread start per handle and a channel hand-off per exchange (microseconds,
/// against a round trip of 100 µs or more).
#[derive(Default)]
struct Replies {
    jobs: Option<mpsc::Sender<Job>>,
}

impl Replies {
    /// Runs `job` on this handle's thread; `None` when it has not finished within `bound`.
    /// This handle's thread, started if it is not running. Started before the connection is
    /// checked out, so that its start (a stack, a heap arena: 0.3-0.5 ms measured) overlaps the
    /// connect instead of adding to every one-shot command.
    fn thread(&mut self) -> Option<mpsc::Sender<Job>> {
        if let Some(jobs) = &self.jobs {
            return Some(jobs.clone());
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name("kcache-postgresql".into()).spawn(move || {
            // Take the heap arena now, while the caller still waits for its connection.
            drop(std::hint::black_box(Vec::<u8>::with_capacity(64 << 10)));
            while let Ok(job) = queue.recv() {
                job();
            }
        });
        spawned.ok()?;
        self.jobs = Some(jobs.clone());
        Some(jobs)
    }

    /// Runs `job` on this handle's thread; `None` when it has not finished within `bound`.
    fn within<T: Send + 'static>(&mut self, bound: Duration, job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (done, result) = mpsc::sync_channel(1);
        let mut job: Job = Box::new(move || {
            let _ = done.send(job());
        });
        // A thread that died (it never does: jobs return errors, not panics) is replaced once.
        for _ in 0..2 {
            match self.thread()?.send(job) {
                Ok(()) => break,
                Err(mpsc::SendError(back)) => {
                    job = back;
                    self.jobs = None;
                }
            }
        }
        match result.recv_timeout(bound) {
            Ok(value) => Some(value),
            Err(_) => {
                self.jobs = None; // that thread is stuck in a read: the next exchange gets a new one
                None
            }
        }
    }
}

/// A handle on the pool. Each operation checks a connection out and gives it back, so handles
/// on one pool (forks, siblings with another prefix) never wait for each other when used in turn,
/// and a one-shot command reuses its one connection.
pub struct Postgres {
    pool: Arc<Pool<session::Manager>>,
    lock_timeout: Duration,
    /// The longest wait for the reply to one statement or group: `pool_timeout` + [`REPLY_MARGIN`].
    reply_timeout: Duration,
    replies: Replies,
    /// What libpq would warn about (an insecure ~/.pgpass...), printed by the command.
    warnings: Vec<String>,
    /// A load in progress (see `bulk.rs`).
    load: Option<bulk::Loader>,
}

impl Postgres {
    /// Resolves the connection target and builds the pool; opens nothing.
    pub fn new(settings: &Settings, env: &dyn Fn(&str) -> Option<String>, workers: u32) -> Result<Postgres> {
        let connect::Target { tls, location, warnings, mut hosts, attrs, random, .. } =
            connect::resolve(settings.url.as_deref(), env)?;
        let timeout = settings.pool_timeout.unwrap_or(DEFAULT_POOL_TIMEOUT);
        for (config, _) in &mut hosts {
            // The connect itself must not outlast the pool timeout (a blackholed host would
            // otherwise hold a pool worker for the system's SYN timeout).
            let connect_timeout = timeout.max(Duration::from_secs(1));
            if config.get_connect_timeout().is_none_or(|t| *t > connect_timeout) {
                config.connect_timeout(connect_timeout);
            }
            // No statement waits for a lock longer than pool_timeout either (then status 3): sent
            // as a startup option, so it costs no round trip; the user's own options come after
            // it and win.
            let lock_ms = timeout.as_millis().max(1);
            let options = match config.get_options() {
                Some(o) if !o.trim().is_empty() => format!("-c lock_timeout={lock_ms} {o}"),
                _ => format!("-c lock_timeout={lock_ms}"),
            };
            config.options(&options);
        }
        let pool = Pool::new(
            session::Manager::new(hosts, tls, attrs, random),
            PoolSettings {
                pool_size: settings.pool_size,
                max_overflow: settings.max_overflow,
                max_backlog: settings.max_backlog,
                timeout,
                recycle: settings.pool_recycle,
                workers,
            },
            "postgresql",
            location,
            classify_connect,
        );
        Ok(Postgres {
            pool: Arc::new(pool),
            lock_timeout: timeout,
            reply_timeout: timeout + REPLY_MARGIN,
            replies: Replies::default(),
            warnings,
            load: None,
        })
    }

    /// The pool this backend draws from (shared with its forks).
    pub fn pool(&self) -> &Arc<Pool<session::Manager>> {
        &self.pool
    }

    /// The longest wait for the reply of `flush`, `purge` or `migrate`.
    fn bulk_timeout(&self) -> Duration {
        self.reply_timeout.max(BULK_REPLY_TIMEOUT)
    }

    /// Checks a connection out (within `pool_timeout`) and runs `exchange` on it, waiting at most
    /// `bound` for it to end (see [`Replies`]); then status 3.
    fn exchange<T: Send + 'static>(
        &mut self,
        bound: Duration,
        exchange: impl FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _ = self.replies.thread(); // starts while the connection is made (see Replies::thread)
        let mut conn = self.pool.get()?;
        self.replies.within(bound, move || exchange(&mut conn)).unwrap_or_else(|| Err(stopped(bound)))
    }

    /// Runs one statement with typed parameters; errors are classified. A connection that broke
    /// is not given back to the pool (r2d2 checks `is_closed` on return).
    fn query(&mut self, sql: &'static str, params: Vec<Param>) -> Result<Vec<postgres::Row>> {
        self.query_within(self.reply_timeout, sql, params)
    }

    fn query_within(&mut self, bound: Duration, sql: &'static str, params: Vec<Param>) -> Result<Vec<postgres::Row>> {
        self.exchange(bound, move |conn| {
            let params: Vec<(&(dyn ToSql + Sync), Type)> =
                params.iter().map(|(p, t)| (&**p as &(dyn ToSql + Sync), t.clone())).collect();
            conn.query_typed(sql, &params).map_err(classify)
        })
    }

    /// What the schema still needs, in the connection's own schema (`current_schema()`).
    fn missing(conn: &mut impl postgres::GenericClient) -> Result<(String, Vec<SchemaObject>)> {
        let row = conn
            .query_one(
                "SELECT current_schema()::text, \
                   EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                           WHERE n.nspname = current_schema() AND c.relname = 'cache' AND c.relkind IN ('r', 'p')), \
                   EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                           WHERE n.nspname = current_schema() AND c.relname = 'idx_cache_ttl' AND c.relkind IN ('i', 'I')), \
                   EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                           WHERE n.nspname = current_schema() AND p.proname = 'sec2ttl')",
                &[],
            )
            .map_err(classify)?;
        let schema: Option<String> = row.get(0);
        let Some(schema) = schema else {
            return Err(Error::backend(
                "find the schema to migrate",
                anyhow::anyhow!("no schema of the search_path exists (current_schema() is NULL)"),
            ));
        };
        let present = [row.get::<_, bool>(1), row.get::<_, bool>(2), row.get::<_, bool>(3)];
        let missing = SchemaObject::ALL.into_iter().zip(present).filter(|(_, p)| !p).map(|(o, _)| o).collect();
        Ok((schema, missing))
    }
}

/// The three objects of `schema.sql`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaObject {
    Table,
    Index,
    Function,
}

impl SchemaObject {
    const ALL: [SchemaObject; 3] = [SchemaObject::Table, SchemaObject::Index, SchemaObject::Function];

    /// This object's statement in `schema.sql`.
    pub fn statement(self) -> &'static str {
        let marker = match self {
            SchemaObject::Table => "CREATE TABLE",
            SchemaObject::Index => "CREATE INDEX",
            SchemaObject::Function => "CREATE OR REPLACE FUNCTION",
        };
        schema_statements().into_iter().find(|s| s.starts_with(marker)).unwrap_or("")
    }

    fn describe(self) -> &'static str {
        match self {
            SchemaObject::Table => "the table cache",
            SchemaObject::Index => "the index idx_cache_ttl",
            SchemaObject::Function => "the function sec2ttl",
        }
    }
}

/// The statements of `schema.sql`, comments removed, each ending with its `;`. A `;` inside a
/// `$$ ... $$` body does not end a statement.
pub fn schema_statements() -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut in_body = false;
    let mut offset = 0;
    for line in SCHEMA_SQL.split_inclusive('\n') {
        let trimmed = line.trim();
        if start.is_none() && (trimmed.is_empty() || trimmed.starts_with("--")) {
            offset += line.len();
            continue;
        }
        let begin = *start.get_or_insert(offset);
        if line.matches("$$").count() % 2 == 1 {
            in_body = !in_body;
        }
        offset += line.len();
        if !in_body && trimmed.ends_with(';') {
            out.push(SCHEMA_SQL[begin..offset].trim());
            start = None;
        }
    }
    out
}

/// Sorts a PostgreSQL failure into SPEC's statuses, in one place:
/// - 3 (unavailable, worth retrying): connection failures, timeouts (statement or lock),
///   too many connections, a server shutting down or starting;
/// - 4 (refused): everything the server answered with an error, among them permissions,
///   authentication, a missing table or function (with the `migrate` hint), a read-only
///   transaction, and values it would not store.
pub fn classify(e: postgres::Error) -> Error {
    let Some(db) = e.as_db_error() else {
        return Error::unavailable("lost the connection to postgresql", e);
    };
    let code = db.code().clone();
    let text = db.message().to_string();
    let unavailable = code == SqlState::QUERY_CANCELED
        || code == SqlState::LOCK_NOT_AVAILABLE
        || code == SqlState::TOO_MANY_CONNECTIONS
        || code == SqlState::ADMIN_SHUTDOWN
        || code == SqlState::CRASH_SHUTDOWN
        || code == SqlState::CANNOT_CONNECT_NOW
        || code == SqlState::T_R_SERIALIZATION_FAILURE
        || code == SqlState::T_R_DEADLOCK_DETECTED
        || code.code().starts_with("08");
    let what = format!("postgresql refused the operation ({})", code.code());
    if unavailable {
        return Error::unavailable(format!("postgresql could not do it now ({})", code.code()), anyhow::anyhow!(text));
    }
    let err = Error::backend(what, anyhow::anyhow!(text));
    if code == SqlState::UNDEFINED_TABLE || code == SqlState::UNDEFINED_FUNCTION {
        err.with_hint("run 'kcache migrate' first")
    } else if code == SqlState::READ_ONLY_SQL_TRANSACTION {
        err.with_hint(
            "the server only reads (a standby?): add target_session_attrs=read-write to the URL, with every host, \
             to write on the primary",
        )
    } else if code == SqlState::INSUFFICIENT_PRIVILEGE {
        err.with_hint("grant the role the privilege named above, or have a DBA apply schema.sql")
    } else {
        err
    }
}

/// A failure to connect: authentication and unknown databases are refusals (4), the rest is
/// unavailability (3).
fn classify_connect(e: session::ConnectError, location: &str) -> Error {
    let e = match e {
        session::ConnectError::Pg(e) => e,
        no_match => return Error::unavailable(format!("cannot connect to postgresql at {location}"), no_match),
    };
    let what = format!("cannot connect to postgresql at {location}");
    match e.as_db_error().map(|d| d.code().clone()) {
        Some(c) if c == SqlState::TOO_MANY_CONNECTIONS || c == SqlState::CANNOT_CONNECT_NOW => {
            Error::unavailable(what, e)
        }
        Some(c) if c == SqlState::INVALID_PASSWORD || c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            Error::backend(what, e).with_hint("check the user and password (URL, PGPASSWORD or ~/.pgpass)")
        }
        Some(_) => Error::backend(what, e),
        // postgres::Error's Display shows only its kind; the reason is in its source chain.
        None if cause_has(&e, "password missing") => Error::backend(what, e)
            .with_hint("the server wants a password: give it in the URL, PGPASSWORD or ~/.pgpass (mode 0600)"),
        // rustls: "invalid peer certificate: UnknownIssuer", "...: certificate not valid for name ...".
        None if cause_has(&e, "invalid peer certificate") => Error::backend(what, e).with_hint(
            "the server's certificate is not trusted for this host: give its CA with sslrootcert=FILE, \
             connect by the name it was issued for, or choose sslmode=require to skip the check",
        ),
        None => Error::unavailable(what, e),
    }
}

/// Whether a message in the source chain of `e` contains `text`.
fn cause_has(e: &postgres::Error, text: &str) -> bool {
    std::iter::successors(std::error::Error::source(e), |c| c.source()).any(|c| c.to_string().contains(text))
}

/// Status 3 for a reply that did not come within `bound` (see [`Replies`]).
fn stopped(bound: Duration) -> Error {
    Error::new(
        crate::error::ErrorKind::Unavailable,
        anyhow::anyhow!(
            "the server stopped answering: no reply within {:.1} s (pool_timeout + {} s; {} s at least \
             for flush, purge, migrate, dump and load); the connection was abandoned",
            bound.as_secs_f64(),
            REPLY_MARGIN.as_secs(),
            BULK_REPLY_TIMEOUT.as_secs()
        ),
    )
}

/// A string literal safe whatever `standard_conforming_strings` says: `E'...'` with `\` and
/// `'` escaped. Keys and values never hold NUL (keys refuse control characters; values are
/// JSON text whose control characters are escaped).
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The condition "the key starts with `start`", as SQL: `LIKE 'start%'` with `start` escaped,
/// exact whatever the column's collation (where it is C, the planner turns it into an index
/// range). Used by every walk of a prefix (pages, dump, count).
fn starts_with(start: &str) -> String {
    format!("key LIKE {} ESCAPE E'\\\\'", literal(&format!("{}%", crate::pattern::like_escape(start))))
}

/// The statements a batch group executes, prepared once per connection (named, so that the
/// server parses and plans each once, not once per line: see [`PREPARE_GROUP`]).
const GROUP_STATEMENTS: [(&str, &str); 6] = [
    ("kcache_get(text)", "SELECT value FROM cache WHERE key = $1 AND (ttl IS NULL OR ttl > now())"),
    (
        "kcache_set(text, text, float8)",
        "INSERT INTO cache (key, value, ttl) VALUES ($1, $2, sec2ttl($3)) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, ttl = EXCLUDED.ttl",
    ),
    (
        "kcache_set_purging(text, text, float8, int8)",
        "WITH purged AS (DELETE FROM cache WHERE key IN \
           (SELECT key FROM cache WHERE ttl < now() AND key <> $1 ORDER BY ttl LIMIT $4 FOR UPDATE SKIP LOCKED)) \
         INSERT INTO cache (key, value, ttl) VALUES ($1, $2, sec2ttl($3)) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, ttl = EXCLUDED.ttl",
    ),
    (
        "kcache_ttl(text)",
        "SELECT EXTRACT(EPOCH FROM (ttl - now()))::float8 FROM cache WHERE key = $1 AND (ttl IS NULL OR ttl > now())",
    ),
    (
        "kcache_expire(text, float8)",
        "UPDATE cache SET ttl = sec2ttl($2) WHERE key = $1 AND (ttl IS NULL OR ttl > now()) RETURNING 1",
    ),
    ("kcache_delete(text)", "DELETE FROM cache WHERE key = $1 RETURNING value, (ttl IS NULL OR ttl > now())"),
];

/// The first statement of every batch group: prepares each of [`GROUP_STATEMENTS`] that the
/// connection does not have yet (a prepared statement lives as long as its session; each is
/// checked on its own, since a `PREPARE` is not undone when its transaction fails), in the
/// group's own round trip. 100,000 mixed set/get lines at `--jobs 1` went from 70,126 to
/// 117,925 ops/s: the server no longer parses and plans every line.
static PREPARE_GROUP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut body = String::new();
    for (signature, sql) in GROUP_STATEMENTS {
        let name = signature.split('(').next().unwrap_or(signature);
        body.push_str(&format!(
            "IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = '{name}') THEN EXECUTE {}; END IF; ",
            literal(&format!("PREPARE {signature} AS {sql}"))
        ));
    }
    format!("DO $kcache$ BEGIN {body}END $kcache$;\n")
});

/// The statements of a batch group, one per operation, sent as one multi-statement query.
fn group_sql(ops: &[GroupOp<'_>]) -> String {
    let mut sql = String::new();
    let mut purged = false;
    for op in ops {
        match *op {
            GroupOp::Get(k) => sql.push_str(&format!("EXECUTE kcache_get({});\n", literal(k))),
            GroupOp::Set(k, v, t) => {
                let (k, v) = (literal(k), literal(v));
                let secs = seconds(t);
                if purged {
                    sql.push_str(&format!("EXECUTE kcache_set({k}, {v}, {secs});\n"));
                } else {
                    // The group's first set removes a bounded batch of expired rows, as `set` does.
                    purged = true;
                    sql.push_str(&format!("EXECUTE kcache_set_purging({k}, {v}, {secs}, {SET_PURGE_BATCH});\n"));
                }
            }
            GroupOp::Ttl(k) => sql.push_str(&format!("EXECUTE kcache_ttl({});\n", literal(k))),
            GroupOp::Expire(k, t) => sql.push_str(&format!("EXECUTE kcache_expire({}, {});\n", literal(k), seconds(t))),
            GroupOp::Delete(k) => sql.push_str(&format!("EXECUTE kcache_delete({});\n", literal(k))),
        }
    }
    sql
}

/// One page of `walk` and `flush --match`: live keys that start with the prefix, in key order,
/// with the seconds they have left (`None`: no expiry).
type Page = Vec<(String, Option<f64>)>;

impl Postgres {
    /// The page of live keys that start with `start` after `after` (every one when `None`).
    ///
    /// `LIKE 'start%'` with `start` escaped is exact whatever the column's collation, and the
    /// planner turns its literal prefix into an index range where the collation allows it (C).
    /// A bare `key >= start` with a stop at the first key without the prefix would not be: in a
    /// linguistic collation (en_US...) the keys of one prefix are not contiguous in `ORDER BY
    /// key` (`a-c` sorts between `ab` and `ad`). Paging follows `ORDER BY key` and `key > last`
    /// in the column's own collation, so every page starts where the previous one ended.
    ///
    /// The page is read in a transaction of its own with bitmap scans and sorts off, so that it
    /// walks the primary key in order and stops after one page whatever the table's statistics:
    /// right after a bulk load (no statistics yet) the planner chose a bitmap scan of the whole
    /// rest of the prefix and a sort, for every page: `keys 'a:*'` over 500,000 of 1,000,000
    /// rows took 48.7 s instead of under one. One round trip: the statements go as one simple
    /// query, the values as escaped literals (as for batch groups).
    fn page(&mut self, start: &str, after: Option<&str>) -> Result<Page> {
        let starts = starts_with(start);
        let after = after.map_or(String::new(), |last| format!("AND key > {} ", literal(last)));
        let sql = format!(
            "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; \
             SELECT key::text, EXTRACT(EPOCH FROM (ttl - now()))::float8 FROM cache \
             WHERE {starts} {after}AND (ttl IS NULL OR ttl > now()) \
             ORDER BY key LIMIT {MATCH_BATCH}; COMMIT;"
        );
        let messages = self.exchange(self.reply_timeout, move |conn| conn.simple_query(&sql).map_err(classify))?;
        let mut page = Vec::with_capacity(MATCH_BATCH);
        for m in messages {
            if let postgres::SimpleQueryMessage::Row(r) = m {
                let key = r.get(0).unwrap_or_default().to_string();
                let left = match r.get(1) {
                    None => None,
                    Some(t) => Some(t.parse::<f64>().map_err(|_| {
                        Error::backend("read a page of keys", anyhow::anyhow!("a ttl that is not a number"))
                    })?),
                };
                page.push((key, left));
            }
        }
        Ok(page)
    }
}

/// What a `ttl` query's row (EXTRACT(EPOCH ...) as float8, or NULL) means.
fn remaining(row: Option<Option<f64>>) -> Remaining {
    match row {
        None => Remaining::Missing,
        Some(None) => Remaining::NoExpiry,
        Some(Some(secs)) => match Duration::try_from_secs_f64(secs) {
            Ok(d) if !d.is_zero() => Remaining::Left(d),
            _ => Remaining::Missing,
        },
    }
}

/// Seconds for `sec2ttl()` (see [`MIN_SEC2TTL`]).
fn seconds(ttl: Ttl) -> f64 {
    ttl.as_secs_f64().max(MIN_SEC2TTL)
}

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn location(&self) -> String {
        self.pool.location().to_string()
    }

    fn fork(&self) -> Result<Box<dyn Backend>> {
        Ok(Box::new(Postgres {
            pool: Arc::clone(&self.pool),
            lock_timeout: self.lock_timeout,
            reply_timeout: self.reply_timeout,
            replies: Replies::default(),
            warnings: Vec::new(),
            load: None,
        }))
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    /// One statement, one scan of the table (`left()` is not indexable anyway), bounded as
    /// `purge` is: the prefix's live and expired rows and live value bytes, every row of the
    /// table (the server's `items`), and the server's own figures from its catalog: version,
    /// uptime, the table's size with its indexes (`bytes`) and that of its indexes, the client
    /// connections. Down (with `keep_going`): no connection could be had, or no reply came.
    fn stats(&mut self, prefix: &str, keep_going: bool) -> Result<crate::stats::Stats> {
        use crate::stats::{ServerStats, Stats};
        let prefix = prefix.to_string();
        let address = self.location();
        let row = self.exchange(self.bulk_timeout(), move |conn| {
            conn.query_typed(
                "SELECT count(*) FILTER (WHERE left(key, char_length($1)) = $1 AND (ttl IS NULL OR ttl > now())), \
                   count(*) FILTER (WHERE left(key, char_length($1)) = $1 AND ttl <= now()), \
                   coalesce(sum(octet_length(value)) FILTER \
                     (WHERE left(key, char_length($1)) = $1 AND (ttl IS NULL OR ttl > now())), 0)::int8, \
                   count(*), current_setting('server_version'), \
                   EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())::int8, \
                   pg_total_relation_size('cache'::regclass), pg_indexes_size('cache'::regclass), \
                   (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') \
                 FROM cache",
                &[(&prefix, Type::TEXT)],
            )
            .map_err(classify)
        });
        let rows = match row {
            Err(e) if keep_going && e.kind() == crate::error::ErrorKind::Unavailable => {
                return Ok(Stats { servers: Some(vec![ServerStats::down(address, &e)]), ..Stats::default() });
            }
            r => r?,
        };
        let Some(r) = rows.first() else {
            return Err(Error::backend("read the figures", anyhow::anyhow!("the server sent no row")));
        };
        let n = |i: usize| r.get::<_, Option<i64>>(i).and_then(|v| u64::try_from(v).ok());
        let server = ServerStats {
            version: r.get::<_, Option<String>>(4),
            uptime_s: n(5),
            items: n(3),
            bytes: n(6),
            index_bytes: n(7),
            connections: n(8),
            ..ServerStats::up(address)
        };
        Ok(Stats { entries: n(0), expired: n(1), value_bytes: n(2), servers: Some(vec![server]), ..Stats::default() })
    }

    fn check_key(&self, key: &str) -> Result<()> {
        let n = key.chars().count();
        if n > MAX_KEY_CHARS {
            return Err(Error::input(format!(
                "the key is {n} characters long with its prefix; PostgreSQL's cache table holds at most {MAX_KEY_CHARS}"
            )));
        }
        Ok(())
    }

    fn migrate(&mut self, dry_run: bool) -> Result<Migration> {
        self.exchange(self.bulk_timeout(), move |conn| {
            if dry_run {
                let (_, missing) = Self::missing(&mut **conn)?;
                return Ok(Migration {
                    statements: missing.iter().map(|o| o.statement().to_string()).collect(),
                    note: None,
                });
            }
            let mut tx = conn.transaction().map_err(classify)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK]).map_err(classify)?;
            let (schema, missing) = Self::missing(&mut tx)?;
            let mut ran = Vec::new();
            for object in missing {
                tx.batch_execute(object.statement()).map_err(|e| {
                    let refused = e.as_db_error().is_some_and(|d| *d.code() == SqlState::INSUFFICIENT_PRIVILEGE);
                    let err = classify(e).context(format!("create {} in schema {schema}", object.describe()));
                    if refused {
                        err.with_hint(format!(
                            "the role needs the CREATE privilege on schema {schema} (GRANT CREATE ON SCHEMA {schema} TO ...), or a DBA can apply schema.sql"
                        ))
                    } else {
                        err
                    }
                })?;
                ran.push(object.statement().to_string());
            }
            tx.commit().map_err(classify)?;
            Ok(Migration { statements: ran, note: None })
        })
    }

    fn get(&mut self, key: &str) -> Result<Option<String>> {
        let rows = self.query(
            "SELECT value FROM cache WHERE key = $1 AND (ttl IS NULL OR ttl > now())",
            vec![param(key.to_string(), Type::TEXT)],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn set(&mut self, key: &str, value: &str, ttl: Ttl) -> Result<()> {
        // One statement, one round trip: a bounded purge of expired rows (never the row being
        // written: one statement cannot both delete and upsert it), then Kinto's upsert.
        self.query(
            "WITH purged AS (DELETE FROM cache WHERE key IN \
               (SELECT key FROM cache WHERE ttl < now() AND key <> $1 ORDER BY ttl LIMIT $4 FOR UPDATE SKIP LOCKED)) \
             INSERT INTO cache (key, value, ttl) VALUES ($1, $2, sec2ttl($3)) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, ttl = EXCLUDED.ttl",
            vec![
                param(key.to_string(), Type::TEXT),
                param(value.to_string(), Type::TEXT),
                param(seconds(ttl), Type::FLOAT8),
                param(SET_PURGE_BATCH, Type::INT8),
            ],
        )?;
        Ok(())
    }

    fn ttl(&mut self, key: &str) -> Result<Remaining> {
        let rows = self.query(
            "SELECT EXTRACT(EPOCH FROM (ttl - now()))::float8 FROM cache \
             WHERE key = $1 AND (ttl IS NULL OR ttl > now())",
            vec![param(key.to_string(), Type::TEXT)],
        )?;
        Ok(remaining(rows.first().map(|r| r.get::<_, Option<f64>>(0))))
    }

    fn expire(&mut self, key: &str, ttl: Ttl) -> Result<bool> {
        let rows = self.query(
            "UPDATE cache SET ttl = sec2ttl($2) WHERE key = $1 AND (ttl IS NULL OR ttl > now()) RETURNING 1",
            vec![param(key.to_string(), Type::TEXT), param(seconds(ttl), Type::FLOAT8)],
        )?;
        Ok(!rows.is_empty())
    }

    fn delete(&mut self, key: &str) -> Result<Option<String>> {
        let rows = self.query(
            "DELETE FROM cache WHERE key = $1 RETURNING value, (ttl IS NULL OR ttl > now())",
            vec![param(key.to_string(), Type::TEXT)],
        )?;
        Ok(rows.first().and_then(|r| r.get::<_, bool>(1).then(|| r.get(0))))
    }

    fn delete_if(&mut self, key: &str, value: &str) -> Option<Result<bool>> {
        let rows = self.query(
            "DELETE FROM cache WHERE key = $1 AND value = $2 RETURNING 1",
            vec![param(key.to_string(), Type::TEXT), param(value.to_string(), Type::TEXT)],
        );
        Some(rows.map(|r| !r.is_empty()))
    }

    fn flush(&mut self, scope: FlushScope<'_>) -> Result<()> {
        let bound = self.bulk_timeout();
        match scope {
            FlushScope::Prefix(p) => {
                // left()/char_length() compare characters: `%`, `_` and `\` are plain here.
                self.query_within(
                    bound,
                    "DELETE FROM cache WHERE left(key, char_length($1)) = $1",
                    vec![param(p.to_string(), Type::TEXT)],
                )?;
            }
            FlushScope::All => {
                // TRUNCATE empties a million rows at once where DELETE would take minutes; it
                // needs its own privilege and an exclusive lock, so wait for that lock no
                // longer than pool_timeout, and fall back to DELETE for a role without it.
                let lock_ms = self.lock_timeout.as_millis().max(1);
                self.exchange(bound, move |conn| {
                    let mut tx = conn.transaction().map_err(classify)?;
                    tx.batch_execute(&format!("SET LOCAL lock_timeout = {lock_ms}")).map_err(classify)?;
                    match tx.batch_execute("TRUNCATE cache") {
                        Ok(()) => tx.commit().map_err(classify),
                        Err(e) if e.as_db_error().is_some_and(|d| *d.code() == SqlState::INSUFFICIENT_PRIVILEGE) => {
                            drop(tx);
                            conn.batch_execute("DELETE FROM cache").map_err(classify)
                        }
                        Err(e) => Err(classify(e)),
                    }
                })?;
            }
        }
        Ok(())
    }

    fn purge(&mut self) -> Result<u64> {
        let rows = self.query_within(self.bulk_timeout(), "DELETE FROM cache WHERE ttl < now() RETURNING 1", vec![])?;
        Ok(rows.len() as u64)
    }

    /// Pages of [`MATCH_BATCH`] keys in key order, each page one short statement of its own
    /// (bounded like every other: see [`Replies`]), so no transaction or cursor is held while the
    /// caller prints, and memory stays one page.
    fn walk(&mut self, start: &str, each: &mut dyn FnMut(&str, Remaining) -> bool) -> Result<()> {
        let mut after: Option<String> = None;
        loop {
            let page = self.page(start, after.as_deref())?;
            for (key, secs) in &page {
                // `ttl > now()` in the same statement: the time left is above zero.
                let left = secs.map_or(Remaining::NoExpiry, |s| Remaining::Left(Duration::from_secs_f64(s.max(1e-9))));
                if !each(key, left) {
                    return Ok(());
                }
            }
            if page.len() < MATCH_BATCH {
                return Ok(());
            }
            after = page.into_iter().next_back().map(|(k, _)| k);
        }
    }

    /// Page by page as [`Backend::walk`]; each page's chosen keys (at most [`MATCH_BATCH`])
    /// removed by one `DELETE ... WHERE key = ANY($1)`, a short statement of its own. The keys
    /// reported are those the `DELETE` removed while live (one removed by someone else, or
    /// expired, in the meantime is not counted).
    fn remove_matching(
        &mut self,
        start: &str,
        chosen: &dyn Fn(&str) -> bool,
        dry_run: bool,
        each: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<u64> {
        let mut after: Option<String> = None;
        let mut removed = 0;
        loop {
            let page = self.page(start, after.as_deref())?;
            let full = page.len() == MATCH_BATCH;
            let keys: Vec<String> = page.iter().map(|(k, _)| k).filter(|k| chosen(k)).cloned().collect();
            after = page.into_iter().next_back().map(|(k, _)| k);
            if dry_run {
                for key in &keys {
                    each(key)?;
                    removed += 1;
                }
            } else if !keys.is_empty() {
                let rows = self.query(
                    "DELETE FROM cache WHERE key = ANY($1) RETURNING key::text, (ttl IS NULL OR ttl > now())",
                    vec![param(keys, Type::TEXT_ARRAY)],
                )?;
                for row in rows.iter().filter(|r| r.get::<_, bool>(1)) {
                    each(row.get(0))?;
                    removed += 1;
                }
            }
            if !full {
                return Ok(removed);
            }
        }
    }

    /// One `COPY` of the prefix's live entries (see `bulk.rs`).
    fn entries(&mut self, start: &str, each: &mut EachEntry<'_>) -> Result<()> {
        self.dump_entries(start, each)
    }

    /// A temporary table filled by `COPY`, then one upsert (see `bulk.rs`).
    fn load(&mut self, entries: &[Entry], keep_live: bool, _written: &mut u64) -> Result<()> {
        self.load_entries(entries, keep_live)
    }

    fn load_end(&mut self, commit: bool) -> Result<u64> {
        self.end_load(commit)
    }

    fn load_is_atomic(&self) -> bool {
        true
    }

    fn count(&mut self, start: &str) -> Option<u64> {
        self.count_live(start)
    }

    /// One round trip for the whole group: its statements as one multi-statement query in one
    /// transaction (so `now()` is the same for all of them, as within any statement). The
    /// transaction waits for no lock longer than [`GROUP_LOCK_TIMEOUT_MS`]: then, as on any
    /// other failure (a deadlock included), it is rolled back and the operations are run one by
    /// one instead, each in its own transaction with its own result. So a group never holds
    /// row locks while waiting, and its `now()` is never more than that late.
    fn run_group(&mut self, ops: &[GroupOp<'_>]) -> Option<Vec<Result<GroupResult>>> {
        if ops.len() < 2 {
            return None;
        }
        let sql = format!(
            "{}BEGIN;\nSET LOCAL lock_timeout = {GROUP_LOCK_TIMEOUT_MS};\n{}COMMIT;",
            *PREPARE_GROUP,
            group_sql(ops)
        );
        // `Ok(None)`: the server refused a statement; the transaction was rolled back and the
        // operations are to run one by one for per-operation results.
        let answer = self.exchange(self.reply_timeout, move |conn| match conn.simple_query(&sql) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.as_db_error().is_some() => {
                // The rest of the query was skipped and the transaction is aborted: end it (a
                // connection that cannot is closed, and r2d2 drops it).
                let _ = conn.batch_execute("ROLLBACK");
                Ok(None)
            }
            Err(e) => Err(classify(e)),
        });
        let messages = match answer {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(e) => return Some(ops.iter().map(|_| Err(e.clone())).collect()),
        };
        // Each statement answers with its rows, then CommandComplete.
        let mut statements: Vec<Vec<postgres::SimpleQueryRow>> = Vec::with_capacity(ops.len());
        let mut rows = Vec::new();
        for m in messages {
            match m {
                postgres::SimpleQueryMessage::Row(r) => rows.push(r),
                postgres::SimpleQueryMessage::CommandComplete(_) => statements.push(std::mem::take(&mut rows)),
                _ => {}
            }
        }
        // DO, BEGIN and SET come first, COMMIT last. The group was committed: it must not run
        // again one by one, whatever the reply looks like.
        if statements.len() != ops.len() + 4 {
            let e = Error::backend(
                "read a batch result",
                anyhow::anyhow!(
                    "the server answered {} statements for {} (the group was committed)",
                    statements.len(),
                    ops.len() + 4
                ),
            );
            return Some(ops.iter().map(|_| Err(e.clone())).collect());
        }
        let statements: Vec<_> = statements.into_iter().skip(3).take(ops.len()).collect();
        let bad = |what: &str| Error::backend("read a batch result", anyhow::anyhow!("{what}"));
        Some(
            ops.iter()
                .zip(statements)
                .map(|(op, rows)| {
                    let first = rows.first();
                    Ok(match op {
                        GroupOp::Get(_) => GroupResult::Value(first.and_then(|r| r.get(0)).map(str::to_string)),
                        GroupOp::Set(..) => GroupResult::Stored,
                        GroupOp::Ttl(_) => {
                            let row = match first {
                                None => None,
                                Some(r) => Some(match r.get(0) {
                                    None => None,
                                    Some(t) => Some(t.parse::<f64>().map_err(|_| bad("a ttl that is not a number"))?),
                                }),
                            };
                            GroupResult::Remaining(remaining(row))
                        }
                        GroupOp::Expire(..) => GroupResult::Existed(!rows.is_empty()),
                        GroupOp::Delete(_) => GroupResult::Value(
                            first.filter(|r| r.get(1) == Some("t")).and_then(|r| r.get(0)).map(str::to_string),
                        ),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_sql_holds_the_three_statements() {
        let statements = schema_statements();
        assert_eq!(statements.len(), 3, "{statements:#?}");
        assert!(SchemaObject::Table.statement().starts_with("CREATE TABLE IF NOT EXISTS cache ("));
        assert!(SchemaObject::Table.statement().contains("key VARCHAR(256) PRIMARY KEY"));
        assert!(SchemaObject::Index.statement().contains("idx_cache_ttl ON cache(ttl)"));
        let f = SchemaObject::Function.statement();
        assert!(f.starts_with("CREATE OR REPLACE FUNCTION sec2ttl(seconds FLOAT)"), "{f}");
        assert!(f.ends_with("$$ LANGUAGE plpgsql;"), "{f}");
        assert!(f.contains("RETURN NULL;"), "a ; inside the body does not split the statement");
    }

    #[test]
    fn literals_cannot_break_out() {
        assert_eq!(literal("a'b"), "E'a''b'");
        assert_eq!(literal("a\\'; DROP TABLE cache; --"), "E'a\\\\''; DROP TABLE cache; --'");
        assert_eq!(literal("é"), "E'é'");
    }

    #[test]
    fn keys_over_256_characters_are_refused() {
        assert_eq!(MAX_KEY_CHARS, 256);
    }

    #[test]
    fn tiny_ttls_avoid_exponent_notation() {
        assert_eq!(seconds(Ttl::from_duration(Duration::from_nanos(1))), 0.0001);
        assert_eq!(seconds(Ttl::from_duration(Duration::from_millis(250))), 0.25);
    }
}
