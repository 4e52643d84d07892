//! The backend trait every cache implements, and [`Cache`], the one place where keys are
//! prefixed and checked, TTL 0 is given its meaning, and errors get their context.

#[cfg(feature = "memcached")]
pub mod memcached;
mod memory;
#[cfg(any(feature = "postgresql", feature = "memcached", feature = "redis"))]
pub mod pool;
#[cfg(feature = "postgresql")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

use crate::error::{Error, Result, excerpt};
use crate::pattern::Pattern;
use crate::settings::{BackendKind, Settings};
use crate::ttl::{Remaining, Ttl};

/// What `migrate` found or did.
#[derive(Debug, Default)]
pub struct Migration {
    /// The statements that were (or, with `--dry-run`, would be) run; empty when up to date.
    pub statements: Vec<String>,
    /// A note for backends without a schema ("nothing to migrate").
    pub note: Option<String>,
}

/// What `flush` removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushScope<'a> {
    /// Every entry of the backend.
    All,
    /// Only the keys that start with this (non-empty) prefix.
    Prefix(&'a str),
}

/// One keyed operation of a group (see [`Backend::run_group`]), on a full key. TTLs are
/// greater than zero, as for the single-operation methods.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GroupOp<'a> {
    Get(&'a str),
    Set(&'a str, &'a str, Ttl),
    Ttl(&'a str),
    Expire(&'a str, Ttl),
    Delete(&'a str),
}

/// What one [`GroupOp`] gave: the same as the single-operation method would return.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupResult {
    /// `get` and `delete`: the stored value, if there was a live one.
    Value(Option<String>),
    /// `set`.
    Stored,
    /// `ttl`.
    Remaining(Remaining),
    /// `expire`: whether there was a live entry.
    Existed(bool),
}

impl GroupOp<'_> {
    /// The key this operation acts on.
    pub fn key(&self) -> &str {
        match *self {
            GroupOp::Get(k) | GroupOp::Set(k, ..) | GroupOp::Ttl(k) | GroupOp::Expire(k, _) | GroupOp::Delete(k) => k,
        }
    }

    /// Runs this operation (user key) alone on `cache`, as a one-shot command would.
    pub fn run_alone_on(&self, cache: &mut Cache) -> Result<GroupResult> {
        Ok(match *self {
            GroupOp::Get(k) => GroupResult::Value(cache.get(k)?),
            GroupOp::Set(k, v, t) => {
                cache.set(k, v, t)?;
                GroupResult::Stored
            }
            GroupOp::Ttl(k) => GroupResult::Remaining(cache.ttl(k)?),
            GroupOp::Expire(k, t) => GroupResult::Existed(cache.expire(k, t)?),
            GroupOp::Delete(k) => GroupResult::Value(cache.delete(k)?),
        })
    }

    /// Runs this operation alone through the single-operation methods.
    pub fn run_alone(&self, b: &mut dyn Backend) -> Result<GroupResult> {
        Ok(match *self {
            GroupOp::Get(k) => GroupResult::Value(b.get(k)?),
            GroupOp::Set(k, v, t) => {
                b.set(k, v, t)?;
                GroupResult::Stored
            }
            GroupOp::Ttl(k) => GroupResult::Remaining(b.ttl(k)?),
            GroupOp::Expire(k, t) => GroupResult::Existed(b.expire(k, t)?),
            GroupOp::Delete(k) => GroupResult::Value(b.delete(k)?),
        })
    }
}

/// A cache backend. Keys given to these methods are full keys (prefix included) that have
/// passed [`Backend::check_key`]; values are JSON text as Kinto stores it (see `value.rs`).
///
/// Contract for implementors, from SPEC:
/// - an entry is never returned (by `get`, `ttl`, `delete`, `expire`) after its TTL has passed,
///   even when the backend has not removed it yet, and `expire` never brings it back;
/// - `get` and `ttl` never write;
/// - TTLs given to `set` and `expire` are greater than zero ([`Cache`] handles 0);
/// - building a backend does no I/O: the first operation connects;
/// - a failure is an error (status 3 or 4), never a silent miss.
pub trait Backend: Send {
    /// The name accepted by `--backend`.
    fn name(&self) -> &'static str;
    /// Where the backend points, without any password; used in messages.
    fn location(&self) -> String;
    /// Another handle on the same storage (a new connection, sharing any pool), for a second
    /// prefix or a second worker. No I/O.
    fn fork(&self) -> Result<Box<dyn Backend>>;
    /// Warnings found while building the backend (an insecure password file...), for the
    /// command to print. Default: none.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// Refuses a full key this backend cannot store. Called before any I/O.
    fn check_key(&self, _key: &str) -> Result<()> {
        Ok(())
    }
    /// What `ping` appends to its heartbeat key (the full key `key`) so that every server is
    /// checked: one suffix per server. Default: one server, no suffix.
    fn heartbeat_suffixes(&self, _key: &str) -> Vec<String> {
        vec![String::new()]
    }
    /// Refuses a flush scope this backend cannot honour. Called before any I/O.
    fn check_flush(&self, _scope: FlushScope<'_>) -> Result<()> {
        Ok(())
    }
    /// Creates what the backend needs; with `dry_run`, only reports it.
    fn migrate(&mut self, _dry_run: bool) -> Result<Migration> {
        Ok(Migration { statements: Vec::new(), note: Some(format!("the {} backend has no schema", self.name())) })
    }
    fn get(&mut self, key: &str) -> Result<Option<String>>;
    fn set(&mut self, key: &str, value: &str, ttl: Ttl) -> Result<()>;
    fn ttl(&mut self, key: &str) -> Result<Remaining>;
    /// Gives a live entry a new TTL; `false` if there is no live entry.
    fn expire(&mut self, key: &str, ttl: Ttl) -> Result<bool>;
    /// Removes the entry; returns its value if it was live.
    fn delete(&mut self, key: &str) -> Result<Option<String>>;
    fn flush(&mut self, scope: FlushScope<'_>) -> Result<()>;
    /// Removes expired entries now; returns how many. Default: nothing to do.
    fn purge(&mut self) -> Result<u64> {
        Ok(0)
    }
    /// Walks the live entries whose full key starts with `start`: `each` gets each full key
    /// once, with its time left, until it returns `false`. An expired entry is never given;
    /// memory stays flat however many keys there are (they stream, page by page). Where the
    /// walk is not a snapshot (Redis SCAN, the memcached crawler), a key written or removed
    /// during it may or may not be given.
    fn walk(&mut self, _start: &str, _each: &mut dyn FnMut(&str, Remaining) -> bool) -> Result<()> {
        Err(Error::backend(
            format!("list the keys of {}", self.name()),
            anyhow::anyhow!("this backend cannot list its keys yet"),
        ))
    }
    /// [`Backend::walk`] without the time left, for `keys` without `--ttl` or `--json`: a
    /// backend that has to ask for it separately (Redis: a `PTTL` per key) skips that.
    fn walk_keys(&mut self, start: &str, each: &mut dyn FnMut(&str) -> bool) -> Result<()> {
        self.walk(start, &mut |key, _| each(key))
    }
    /// Removes the entries whose full key starts with `start` and for which `chosen` is true,
    /// in bounded batches (no single huge statement or command), calling `each` with every full
    /// key removed (with `dry_run`, every key that would be, and nothing is removed). Returns
    /// how many. Default: walk, then delete the chosen ones one by one.
    fn remove_matching(
        &mut self,
        start: &str,
        chosen: &dyn Fn(&str) -> bool,
        dry_run: bool,
        each: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<u64> {
        if dry_run {
            let (mut listed, mut failed) = (0, None);
            self.walk(start, &mut |key, _| {
                if chosen(key) {
                    if let Err(e) = each(key) {
                        failed = Some(e);
                        return false;
                    }
                    listed += 1;
                }
                true
            })?;
            return failed.map_or(Ok(listed), Err);
        }
        let mut batch: Vec<String> = Vec::new();
        let mut removed = 0;
        loop {
            batch.clear();
            self.walk(start, &mut |key, _| {
                if chosen(key) {
                    batch.push(key.to_string());
                }
                batch.len() < MATCH_BATCH
            })?;
            let last = batch.len() < MATCH_BATCH;
            for key in &batch {
                self.delete(key)?;
                each(key)?;
                removed += 1;
            }
            if last || batch.is_empty() {
                return Ok(removed);
            }
        }
    }
    /// Runs consecutive operations in input order, in as few round trips as the protocol
    /// allows (a pipeline, a multi-statement query), with exactly the results, in order, that
    /// running them one by one would give: one result per operation. Used by `kcache batch`.
    /// `None` (the default): the backend has no faster way, [`Cache`] runs them one by one.
    fn run_group(&mut self, _ops: &[GroupOp<'_>]) -> Option<Vec<Result<GroupResult>>> {
        None
    }

    /// Removes the full key `key` if it holds `value`, in one atomic step: `Some(true)` when it
    /// did. `None` (the default): the backend has no such step, [`Cache::delete_if`] reads then
    /// deletes.
    fn delete_if(&mut self, _key: &str, _value: &str) -> Option<Result<bool>> {
        None
    }

    /// How many operations `kcache batch` puts in a group at most, when more than the usual
    /// (`None`): a backend that splits each group over several servers asks for larger groups.
    fn group_len(&self) -> Option<usize> {
        None
    }

    /// `dump`: walks the live entries whose full key starts with `start`, giving `each` the
    /// full key, the stored value (JSON text; on memcached the envelope's value) and when it
    /// expires (Unix time in seconds; `None`: never), until it returns `false`. PostgreSQL and
    /// SQLite read one snapshot (one statement); elsewhere the walk is as for [`Backend::walk`].
    /// Memory stays flat. Default: this backend cannot.
    fn entries(&mut self, _start: &str, _each: &mut EachEntry<'_>) -> Result<()> {
        Err(Error::backend(
            format!("dump {}", self.name()),
            anyhow::anyhow!("this backend cannot list its entries yet"),
        ))
    }
    /// `load`: writes `entries` (full keys, values as kcache writes them, live when checked),
    /// as few round trips as the protocol allows; with `keep_live`, a live existing entry is
    /// kept (an expired one is overwritten). Adds to `written` each entry written for good as
    /// it is known, failure or not, so that a failure can say how far the load got. A backend
    /// whose load is one transaction ([`Backend::load_is_atomic`]) writes nothing for good
    /// before [`Backend::load_end`]. Default: this backend cannot.
    fn load(&mut self, _entries: &[Entry], _keep_live: bool, _written: &mut u64) -> Result<()> {
        Err(Error::backend(
            format!("load into {}", self.name()),
            anyhow::anyhow!("this backend cannot load entries yet"),
        ))
    }
    /// Ends a load: commits it (`commit`), or rolls it back where it is one transaction.
    /// Returns how many entries the commit wrote. Default: nothing to end.
    fn load_end(&mut self, _commit: bool) -> Result<u64> {
        Ok(0)
    }
    /// Whether a load is one transaction: nothing is written unless it all is.
    fn load_is_atomic(&self) -> bool {
        false
    }
    /// How many live entries start with `start`, where the backend can count them without a
    /// walk (SQL backends: one count); for progress bars. Default: unknown.
    fn count(&mut self, _start: &str) -> Option<u64> {
        None
    }
    /// `stats`: the figures of the entries whose full key starts with `prefix`, and those of
    /// each server. A server that cannot be reached is an error, unless `keep_going`: then it
    /// is reported with `up: false` ([`crate::stats::ServerStats::down`]). `backend`,
    /// `location` and `prefix` are filled in by [`Cache::stats`]. Default: no figure known.
    fn stats(&mut self, _prefix: &str, _keep_going: bool) -> Result<crate::stats::Stats> {
        Ok(crate::stats::Stats::default())
    }
}

/// One entry of a dump or a load: full key, value (JSON text), and when it expires (Unix time
/// in seconds, millisecond precision or better; `None`: never).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub expires: Option<f64>,
}

/// What [`Backend::entries`] gives each entry to: full key, stored value, expiry; `Ok(false)`
/// stops the walk, an error stops it and is returned.
pub type EachEntry<'a> = dyn FnMut(&str, &str, Option<f64>) -> Result<bool> + 'a;

/// The current Unix time in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn op_name(op: &GroupOp<'_>) -> &'static str {
    match op {
        GroupOp::Get(_) => "get",
        GroupOp::Set(..) => "set",
        GroupOp::Ttl(_) => "ttl",
        GroupOp::Expire(..) => "expire",
        GroupOp::Delete(_) => "delete",
    }
}

/// How many keys `flush --match` removes at a time: one statement or command each, short enough
/// never to hold a lock or a server for long.
pub const MATCH_BATCH: usize = 1000;

/// The heartbeat key, as Kinto's (it gets the prefix like any other key).
pub const HEARTBEAT_KEY: &str = "__heartbeat__";

/// A backend behind the configured prefix.
pub struct Cache {
    inner: Box<dyn Backend>,
    prefix: String,
}

impl Cache {
    pub fn new(inner: Box<dyn Backend>, prefix: String) -> Cache {
        Cache { inner, prefix }
    }

    /// Another cache on the same storage and prefix (for a second worker).
    pub fn sibling_same_prefix(&self) -> Result<Cache> {
        self.sibling(&self.prefix)
    }

    /// A cache on the same storage with another prefix.
    pub fn sibling(&self, prefix: &str) -> Result<Cache> {
        Ok(Cache::new(self.inner.fork()?, prefix.to_string()))
    }

    /// See [`Backend::warnings`].
    pub fn warnings(&self) -> Vec<String> {
        self.inner.warnings()
    }

    pub fn backend_name(&self) -> &'static str {
        self.inner.name()
    }

    pub fn location(&self) -> String {
        self.inner.location()
    }

    /// The full key for `key`, after every check (generic ones here, the backend's own limits).
    pub fn full_key(&self, key: &str) -> Result<String> {
        if key.is_empty() {
            return Err(Error::input("the key is empty"));
        }
        if let Some(c) = key.chars().find(|c| c.is_control()) {
            return Err(Error::input(format!(
                "the key {} contains the control character {c:?}; keys are printable text",
                excerpt(key)
            )));
        }
        let full = format!("{}{key}", self.prefix);
        self.inner.check_key(&full)?;
        Ok(full)
    }

    fn ctx(&self, op: &str, key: &str) -> String {
        format!("{op} {} on {} at {}", excerpt(key), self.inner.name(), self.inner.location())
    }

    pub fn get(&mut self, key: &str) -> Result<Option<String>> {
        let full = self.full_key(key)?;
        self.inner.get(&full).map_err(|e| e.context(self.ctx("get", key)))
    }

    /// Stores `value` (JSON text) for `ttl`; a TTL of 0 stores nothing and removes the key.
    pub fn set(&mut self, key: &str, value: &str, ttl: Ttl) -> Result<()> {
        let full = self.full_key(key)?;
        let r = if ttl.is_zero() { self.inner.delete(&full).map(drop) } else { self.inner.set(&full, value, ttl) };
        r.map_err(|e| e.context(self.ctx("set", key)))
    }

    pub fn ttl(&mut self, key: &str) -> Result<Remaining> {
        let full = self.full_key(key)?;
        self.inner.ttl(&full).map_err(|e| e.context(self.ctx("ttl", key)))
    }

    /// Gives a live entry a new TTL; 0 expires it now. `false`: no live entry.
    pub fn expire(&mut self, key: &str, ttl: Ttl) -> Result<bool> {
        let full = self.full_key(key)?;
        let r =
            if ttl.is_zero() { self.inner.delete(&full).map(|v| v.is_some()) } else { self.inner.expire(&full, ttl) };
        r.map_err(|e| e.context(self.ctx("expire", key)))
    }

    pub fn delete(&mut self, key: &str) -> Result<Option<String>> {
        let full = self.full_key(key)?;
        self.inner.delete(&full).map_err(|e| e.context(self.ctx("delete", key)))
    }

    /// The scope SPEC gives `flush`: everything when the prefix is empty or `all` is set,
    /// else the prefix's keys.
    pub fn flush_scope(&self, all: bool) -> FlushScope<'_> {
        if all || self.prefix.is_empty() { FlushScope::All } else { FlushScope::Prefix(&self.prefix) }
    }

    /// Checks that `flush` can run with this scope (before anything is sent).
    pub fn check_flush(&self, all: bool) -> Result<()> {
        self.inner.check_flush(self.flush_scope(all))
    }

    pub fn flush(&mut self, all: bool) -> Result<()> {
        self.check_flush(all)?;
        let ctx = format!("flush {} at {}", self.inner.name(), self.inner.location());
        let prefix = self.prefix.clone();
        let scope = if all || prefix.is_empty() { FlushScope::All } else { FlushScope::Prefix(&prefix) };
        self.inner.flush(scope).map_err(|e| e.context(ctx))
    }

    /// Runs a group of keyed operations (user keys), as few round trips as the backend allows.
    /// Keys are checked first: an operation with a bad key gets its input error and is not sent;
    /// TTL 0 is given its meaning (`set` and `expire` with 0 delete the key) as elsewhere.
    pub fn run_group(&mut self, ops: &[GroupOp<'_>]) -> Vec<Result<GroupResult>> {
        self.run_group_with(ops, false)
    }

    /// [`Cache::run_group`]; with `stop_at_error`, nothing after the first failing operation
    /// runs when the operations go one by one (then the result list ends with that failure).
    /// A backend that sends the group at once (a pipeline) has run them all: every result is
    /// returned.
    /// How many operations a batch group holds at most on this backend (see
    /// [`Backend::group_len`]).
    pub fn group_len(&self, usual: usize) -> usize {
        self.inner.group_len().unwrap_or(usual)
    }

    pub fn run_group_with(&mut self, ops: &[GroupOp<'_>], stop_at_error: bool) -> Vec<Result<GroupResult>> {
        let mut results: Vec<Option<Result<GroupResult>>> = Vec::with_capacity(ops.len());
        let mut full_keys: Vec<String> = Vec::with_capacity(ops.len());
        for op in ops {
            let key = op.key();
            match self.full_key(key) {
                Ok(full) => {
                    full_keys.push(full);
                    results.push(None);
                }
                Err(e) => {
                    full_keys.push(String::new());
                    results.push(Some(Err(e.context(format!("{} {}", op_name(op), excerpt(key))))));
                }
            }
        }
        // The operations to send, on full keys, with TTL 0 turned into deletes.
        let mut sent: Vec<(usize, GroupOp<'_>)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let k = full_keys[i].as_str();
            let op = match *op {
                GroupOp::Get(_) => GroupOp::Get(k),
                GroupOp::Set(_, _, t) if t.is_zero() => GroupOp::Delete(k),
                GroupOp::Set(_, v, t) => GroupOp::Set(k, v, t),
                GroupOp::Ttl(_) => GroupOp::Ttl(k),
                GroupOp::Expire(_, t) if t.is_zero() => GroupOp::Delete(k),
                GroupOp::Expire(_, t) => GroupOp::Expire(k, t),
                GroupOp::Delete(_) => GroupOp::Delete(k),
            };
            sent.push((i, op));
        }
        if stop_at_error && let Some(first_bad) = results.iter().position(Option::is_some) {
            // An operation refused before sending: nothing after it may run.
            sent.retain(|(i, _)| *i < first_bad);
        }
        let to_send: Vec<GroupOp<'_>> = sent.iter().map(|(_, op)| *op).collect();
        let answers = match self.inner.run_group(&to_send) {
            Some(a) if a.len() == to_send.len() => a,
            _ => {
                let mut answers = Vec::with_capacity(to_send.len());
                for op in &to_send {
                    let a = op.run_alone(&mut *self.inner);
                    let failed = a.is_err();
                    answers.push(a);
                    if failed && stop_at_error {
                        break;
                    }
                }
                answers
            }
        };
        sent.truncate(answers.len());
        for ((i, op), answer) in sent.into_iter().zip(answers) {
            let original = &ops[i];
            let answer = match (original, op, answer) {
                // A TTL-0 set or expire ran as a delete: give the caller what it asked for.
                (GroupOp::Set(..), GroupOp::Delete(_), Ok(_)) => Ok(GroupResult::Stored),
                (GroupOp::Expire(..), GroupOp::Delete(_), Ok(GroupResult::Value(v))) => {
                    Ok(GroupResult::Existed(v.is_some()))
                }
                (_, _, a) => a,
            };
            let key = original.key();
            results[i] = Some(answer.map_err(|e| e.context(self.ctx(op_name(original), key))));
        }
        // With stop_at_error, the list ends after the last operation that has a result: what
        // came after did not run. Nor did the operations after the first failure that failed
        // before anything was sent (no connection): they are not reported either. Those that
        // were sent (a pipeline, another memcached server) are, so that no write goes unreported.
        let mut end =
            if stop_at_error { results.iter().rposition(Option::is_some).map_or(0, |i| i + 1) } else { results.len() };
        if stop_at_error && let Some(first) = results.iter().position(|r| matches!(r, Some(Err(_)))) {
            let sent = |r: &Option<Result<GroupResult>>| match r {
                Some(Ok(_)) => true,
                Some(Err(e)) => !e.is_unsent(),
                None => false,
            };
            let last_sent = results[..end].iter().rposition(sent).unwrap_or(0);
            end = end.min(first.max(last_sent) + 1);
        }
        results.into_iter().take(end).map(|r| r.unwrap_or_else(|| Err(Error::input("operation not run")))).collect()
    }

    /// Where a walk for `pattern` starts (the prefix and the pattern's literal beginning), how
    /// much of each full key is the prefix, and what a failure says it was doing.
    fn walk_of(&self, pattern: &Pattern, what: &str) -> (String, usize, String) {
        let start = format!("{}{}", self.prefix, pattern.literal_prefix());
        (start, self.prefix.len(), format!("{what} on {} at {}", self.inner.name(), self.inner.location()))
    }

    /// `keys`: walks the live keys under the prefix that match `pattern`, giving `each` the key
    /// (prefix stripped) and its time left, until `each` returns `false`.
    pub fn keys(&mut self, pattern: &Pattern, each: &mut dyn FnMut(&str, Remaining) -> bool) -> Result<()> {
        let (start, strip, ctx) = self.walk_of(pattern, "keys");
        self.inner
            .walk(&start, &mut |full, left| match full.get(strip..) {
                Some(key) if pattern.matches(key) => each(key, left),
                _ => true,
            })
            .map_err(|e| e.context(ctx))
    }

    /// [`Cache::keys`] without the time left (see [`Backend::walk_keys`]).
    pub fn key_names(&mut self, pattern: &Pattern, each: &mut dyn FnMut(&str) -> bool) -> Result<()> {
        let (start, strip, ctx) = self.walk_of(pattern, "keys");
        self.inner
            .walk_keys(&start, &mut |full| match full.get(strip..) {
                Some(key) if pattern.matches(key) => each(key),
                _ => true,
            })
            .map_err(|e| e.context(ctx))
    }

    /// `flush --match`: removes the entries under the prefix whose key matches `pattern` (with
    /// `dry_run`, none), giving `each` every key (prefix stripped); returns how many.
    pub fn flush_matching(
        &mut self,
        pattern: &Pattern,
        dry_run: bool,
        each: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<u64> {
        let (start, strip, ctx) = self.walk_of(pattern, "flush --match");
        let chosen = |full: &str| full.get(strip..).is_some_and(|key| pattern.matches(key));
        self.inner
            .remove_matching(&start, &chosen, dry_run, &mut |full| each(full.get(strip..).unwrap_or(full)))
            .map_err(|e| e.context(ctx))
    }

    /// `dump`: walks the live entries under the prefix whose key matches `pattern`, giving
    /// `each` the key (prefix stripped), the stored value (JSON text) and when it expires.
    pub fn entries(&mut self, pattern: &Pattern, each: &mut EachEntry<'_>) -> Result<()> {
        let (start, strip, ctx) = self.walk_of(pattern, "dump");
        let all = pattern.is_prefix_glob();
        self.inner
            .entries(&start, &mut |full, value, expires| match full.get(strip..) {
                Some(key) if all || pattern.matches(key) => each(key, value, expires),
                _ => Ok(true),
            })
            .map_err(|e| e.context(ctx))
    }

    /// How many live entries [`Cache::entries`] will give, where the backend can count them
    /// cheaply (for a progress bar); `None` when unknown.
    pub fn count(&mut self, pattern: &Pattern) -> Option<u64> {
        if !pattern.is_prefix_glob() {
            return None;
        }
        let start = format!("{}{}", self.prefix, pattern.literal_prefix());
        self.inner.count(&start)
    }

    /// The full key of a loaded entry: [`Cache::full_key`]'s checks.
    pub fn load_key(&self, key: &str) -> Result<String> {
        self.full_key(key)
    }

    /// `load`: writes entries on full keys (see [`Backend::load`]), adding to `written` those
    /// written for good.
    pub fn load(&mut self, entries: &[Entry], keep_live: bool, written: &mut u64) -> Result<()> {
        let ctx = format!("load into {} at {}", self.inner.name(), self.inner.location());
        self.inner.load(entries, keep_live, written).map_err(|e| e.context(ctx))
    }

    /// Stores `value` under `key` for `ttl` only if the key holds no live entry: `true` when it
    /// was stored. Atomic on every backend: it is a one-entry `load` that keeps live entries
    /// (`SET NX`, memcached's `add` or a CAS replace of an expired item, an upsert that updates
    /// only an expired row, in one transaction). `memo`'s lock.
    pub fn add(&mut self, key: &str, value: &str, ttl: Ttl) -> Result<bool> {
        let entry = Entry {
            key: self.full_key(key)?,
            value: value.to_string(),
            expires: Some(unix_now() + ttl.duration().as_secs_f64()),
        };
        let ctx = self.ctx("add", key);
        let mut written = 0;
        let loaded = self.inner.load(std::slice::from_ref(&entry), true, &mut written);
        let ended = self.inner.load_end(loaded.is_ok());
        loaded.map_err(|e| e.context(ctx.clone()))?;
        Ok(written + ended.map_err(|e| e.context(ctx))? > 0)
    }

    /// Removes `key` if it holds `value` (`memo`'s unlock): `true` when it did. In one atomic
    /// step on SQLite, PostgreSQL, memcached (CAS) and one Redis server ([`Backend::delete_if`]);
    /// elsewhere (a Redis Cluster, memory) a read, then a delete: another caller's write between
    /// the two would be removed (`memo` renews its lock well before it lapses, so that only a runner
    /// frozen for a whole lease meets this).
    pub fn delete_if(&mut self, key: &str, value: &str) -> Result<bool> {
        let full = self.full_key(key)?;
        let ctx = self.ctx("delete", key);
        if let Some(done) = self.inner.delete_if(&full, value) {
            return done.map_err(|e| e.context(ctx));
        }
        if self.get(key)?.as_deref() != Some(value) {
            return Ok(false);
        }
        Ok(self.delete(key)?.is_some())
    }

    /// Ends a load (see [`Backend::load_end`]).
    pub fn load_end(&mut self, commit: bool) -> Result<u64> {
        let ctx = format!("load into {} at {}", self.inner.name(), self.inner.location());
        self.inner.load_end(commit).map_err(|e| e.context(ctx))
    }

    /// See [`Backend::load_is_atomic`].
    pub fn load_is_atomic(&self) -> bool {
        self.inner.load_is_atomic()
    }

    /// `stats`: what the cache holds under the prefix, and its servers' figures.
    pub fn stats(&mut self, keep_going: bool) -> Result<crate::stats::Stats> {
        let ctx = format!("stats of {} at {}", self.inner.name(), self.inner.location());
        let mut stats = self.inner.stats(&self.prefix, keep_going).map_err(|e| e.context(ctx))?;
        stats.backend = self.inner.name().to_string();
        stats.location = self.inner.location();
        stats.prefix = self.prefix.clone();
        Ok(stats)
    }

    pub fn purge(&mut self) -> Result<u64> {
        let ctx = format!("purge {} at {}", self.inner.name(), self.inner.location());
        self.inner.purge().map_err(|e| e.context(ctx))
    }

    pub fn migrate(&mut self, dry_run: bool) -> Result<Migration> {
        let ctx = format!("migrate {} at {}", self.inner.name(), self.inner.location());
        self.inner.migrate(dry_run).map_err(|e| e.context(ctx))
    }

    /// Kinto's heartbeat made deterministic: write a heartbeat key, read it back, delete it,
    /// each step checked. Kinto deletes on a coin toss and so passes half the time against a dead
    /// memcached (reference §1.2, #2107); kcache's backends report failures instead of missing
    /// data, and the read-back is checked too.
    ///
    /// The key is this ping's own, [`HEARTBEAT_KEY`] followed by the process id and the time
    /// (`__heartbeat__1f2e-18a3c...`): on Kinto's shared `__heartbeat__`, any other ping (another
    /// kcache, or Kinto's own heartbeat, which deletes it at random) could remove the entry
    /// between the write and the read, and a healthy backend would fail. Where the prefix leaves
    /// no room for the longer key (memcached: 250 bytes), `__heartbeat__` itself is used. A
    /// backend with several servers gets one heartbeat per server ([`Backend::heartbeat_suffixes`]).
    pub fn ping(&mut self) -> Result<()> {
        let base = self.heartbeat_key();
        let alive = crate::value::encode_string("alive");
        let ttl = Ttl::from_duration(std::time::Duration::from_secs(3600));
        let what = format!("ping {} at {}", self.inner.name(), self.inner.location());
        let full = format!("{}{base}", self.prefix);
        for suffix in self.inner.heartbeat_suffixes(&full) {
            let key = format!("{base}{suffix}");
            self.set(&key, &alive, ttl)?;
            let read = self.get(&key)?;
            self.delete(&key)?;
            let problem = match read {
                Some(v) if v == alive => continue,
                Some(_) => "the heartbeat key did not read back what was written",
                None => "the heartbeat key vanished right after it was written",
            };
            return Err(Error::backend(what, anyhow::anyhow!(problem)));
        }
        Ok(())
    }

    fn heartbeat_key(&self) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let own = format!("{HEARTBEAT_KEY}{:x}-{:x}", std::process::id(), nanos);
        if self.full_key(&own).is_ok() { own } else { HEARTBEAT_KEY.to_string() }
    }
}

/// Builds the configured backend for one worker, reading libpq's variables from the process
/// environment. No I/O happens here.
pub fn open(settings: &Settings) -> Result<Cache> {
    open_with(settings, &|k| std::env::var(k).ok(), 1)
}

/// Builds the configured backend; `env` reads environment variables, `workers` is how many
/// threads will use it at once (pools never open more connections than that).
pub fn open_with(settings: &Settings, env: &dyn Fn(&str) -> Option<String>, workers: u32) -> Result<Cache> {
    #[cfg(not(any(feature = "postgresql", feature = "memcached", feature = "redis")))]
    let _ = (env, workers);
    let inner: Box<dyn Backend> = match settings.backend {
        BackendKind::Memory => Box::new(memory::Memory::new(settings.max_size_bytes)),
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => Box::new(sqlite::Sqlite::new(settings)?),
        #[cfg(not(feature = "sqlite"))]
        BackendKind::Sqlite => return Err(not_built("sqlite")),
        #[cfg(feature = "postgresql")]
        BackendKind::Postgresql => Box::new(postgres::Postgres::new(settings, env, workers)?),
        #[cfg(not(feature = "postgresql"))]
        BackendKind::Postgresql => return Err(not_built("postgresql")),
        #[cfg(feature = "memcached")]
        BackendKind::Memcached => memcached::open(settings, env, workers)?,
        #[cfg(not(feature = "memcached"))]
        BackendKind::Memcached => return Err(not_built("memcached")),
        #[cfg(feature = "redis")]
        BackendKind::Redis => redis::open(settings, env, workers)?,
        #[cfg(not(feature = "redis"))]
        BackendKind::Redis => return Err(not_built("redis")),
    };
    Ok(Cache::new(inner, settings.prefix.clone()))
}

#[cfg_attr(all(feature = "sqlite", feature = "postgresql", feature = "memcached", feature = "redis"), allow(dead_code))]
fn not_built(name: &str) -> Error {
    Error::input(format!("this kcache was built without the {name} backend (see kcache --version)"))
}

/// The backends compiled into this binary, for `--version`.
pub const COMPILED: &[(&str, bool)] = &[
    ("sqlite", cfg!(feature = "sqlite")),
    ("memory", true),
    ("postgresql", cfg!(feature = "postgresql")),
    ("memcached", cfg!(feature = "memcached")),
    ("redis", cfg!(feature = "redis")),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(prefix: &str) -> Cache {
        Cache::new(Box::new(memory::Memory::new(None)), prefix.to_string())
    }

    #[test]
    fn keys_are_checked_before_anything_else() {
        let mut c = cache("p:");
        assert_eq!(c.get("").unwrap_err().kind(), crate::error::ErrorKind::Input);
        assert_eq!(c.set("a\nb", "\"v\"", "1".parse().unwrap()).unwrap_err().kind(), crate::error::ErrorKind::Input);
        assert_eq!(c.full_key("k").unwrap(), "p:k");
        assert_eq!(c.full_key("é k").unwrap(), "p:é k");
    }

    #[test]
    fn flush_scope_follows_spec() {
        assert_eq!(cache("").flush_scope(false), FlushScope::All);
        assert_eq!(cache("p:").flush_scope(false), FlushScope::Prefix("p:"));
        assert_eq!(cache("p:").flush_scope(true), FlushScope::All);
    }

    #[test]
    fn ping_passes_on_a_working_backend() {
        let mut c = cache("x:");
        c.ping().unwrap();
        assert_eq!(c.get(HEARTBEAT_KEY).unwrap(), None);
        // A key of its own: Kinto's shared `__heartbeat__`, set by someone else, is left alone.
        let alive = crate::value::encode_string("someone else's");
        c.set(HEARTBEAT_KEY, &alive, Ttl::from_duration(std::time::Duration::from_secs(60))).unwrap();
        c.ping().unwrap();
        assert_eq!(c.get(HEARTBEAT_KEY).unwrap(), Some(alive));
        let own = c.heartbeat_key();
        assert!(own.starts_with(HEARTBEAT_KEY) && own.len() > HEARTBEAT_KEY.len(), "{own}");
    }
}
