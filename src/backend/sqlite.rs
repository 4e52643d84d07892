//! The `sqlite` backend, kcache's embedded default: one file holding Kinto's `cache` table
//! (`key`, `value`, `ttl`), with `ttl` as Unix time in seconds (REAL; NULL = no expiry).
//!
//! Many kcache processes may use one file at once: WAL journal, a busy timeout, and every write
//! in a `BEGIN IMMEDIATE` transaction (a deferred one that reads then writes fails at once with
//! "database is locked" under contention; see `reference/crates.md` §6.2). Reads never write: a
//! `get` on a file that does not exist yet is a miss, not a new file.

use super::{Backend, EachEntry, Entry, FlushScope, GroupOp, GroupResult, Migration};
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::ttl::{Remaining, Ttl};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many expired rows a `set` removes on its way (SPEC: bounded, so that a table does not
/// grow without end when nobody purges, and a `set` stays fast).
const SET_PURGE_BATCH: u32 = 100;

/// How long a command waits for another process's write lock by default.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const CREATE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL, ttl REAL DEFAULT NULL)";
const CREATE_INDEX: &str = "CREATE INDEX IF NOT EXISTS idx_cache_ttl ON cache(ttl)";

pub struct Sqlite {
    path: PathBuf,
    busy_timeout: Duration,
    conn: Option<Connection>,
    /// Whether the schema is known to exist in `conn`.
    schema_ready: bool,
    /// A load's transaction is open on `conn`, with this many entries written in it.
    loading: Option<u64>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Sorts SQLite failures into SPEC's statuses: a lock held too long is worth retrying (3);
/// anything else is the file refusing the operation (4).
fn classify(e: rusqlite::Error) -> Error {
    let code = e.sqlite_error_code();
    match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            Error::unavailable("the sqlite file is locked by another process", e)
        }
        Some(ErrorCode::ReadOnly) => Error::backend("the sqlite file is read-only", e),
        Some(ErrorCode::CannotOpen) => Error::backend("cannot open the sqlite file", e),
        Some(ErrorCode::NotADatabase) => Error::backend("the file is not an sqlite database", e),
        _ => Error::backend("sqlite failed", e),
    }
}

/// SQLite's process-wide memory settings, before its first connection: no lookaside buffer and
/// no page-cache block allocated up front. Each is written through when a connection opens
/// (120 KB and 20 pages), 25 page faults that were 50 µs of a one-shot `get`; a one-shot command
/// never needs them, and a bulk one prepares its statements once.
fn configure_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rusqlite::ffi;
        use std::ffi::{c_int, c_void};
        // SAFETY: sqlite3_config before sqlite3_initialize (rusqlite initializes on the first
        // open, after this), with the arguments each option documents. A refusal (SQLite
        // already initialized) leaves the defaults, which work too.
        unsafe {
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, 0 as c_int, 0 as c_int);
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_PAGECACHE, std::ptr::null_mut::<c_void>(), 0 as c_int, 0 as c_int);
        }
    });
}

impl Sqlite {
    pub fn new(settings: &Settings) -> Result<Sqlite> {
        configure_memory();
        let path = settings.path.clone().ok_or_else(|| {
            Error::input("no sqlite file: set 'path', or HOME or XDG_CACHE_HOME for the default location")
        })?;
        if path.is_dir() {
            return Err(Error::input(format!("the sqlite path {} is a directory, not a file", path.display())));
        }
        Ok(Sqlite {
            path,
            busy_timeout: settings.pool_timeout.unwrap_or(DEFAULT_BUSY_TIMEOUT),
            conn: None,
            schema_ready: false,
            loading: None,
        })
    }

    /// A file whose mode has no write bit is treated as read-only, even for root, who could
    /// otherwise write it: the owner asked for it not to change.
    fn read_only_file(&self) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&self.path).is_ok_and(|m| m.permissions().mode() & 0o222 == 0)
    }

    /// The connection for a read: `None` when the file does not exist (everything is missing).
    fn reader(&mut self) -> Result<Option<&mut Connection>> {
        if self.conn.is_none() {
            if !self.path.exists() {
                return Ok(None);
            }
            let conn = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(classify)?;
            conn.busy_timeout(self.busy_timeout).map_err(classify)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut())
    }

    /// The connection for a write, creating the file, its folder and the schema if needed.
    fn writer(&mut self) -> Result<&mut Connection> {
        self.open_writer()?;
        let Some(conn) = self.conn.as_mut() else { unreachable!("open_writer opened it") };
        if !self.schema_ready {
            ensure_schema(conn, self.busy_timeout)?;
            self.schema_ready = true;
        }
        Ok(conn)
    }

    /// Opens the file for writing (creating it and its folder), without touching the schema.
    fn open_writer(&mut self) -> Result<&mut Connection> {
        if self.read_only_file() {
            return Err(Error::backend(
                format!("cannot write {}", self.path.display()),
                anyhow::anyhow!("the sqlite file is read-only (it has no write permission)"),
            ));
        }
        // A reader opened read-only cannot write: reopen.
        if self.conn.as_ref().is_some_and(|c| c.is_readonly(rusqlite::MAIN_DB).unwrap_or(true)) {
            self.conn = None;
        }
        if self.conn.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::backend(format!("cannot create the folder {}", dir.display()), e))?;
            }
            let conn = Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(classify)?;
            conn.busy_timeout(self.busy_timeout).map_err(classify)?;
            // In WAL mode, NORMAL keeps the file consistent after a crash and skips the fsync of
            // every commit; a cache can lose its last writes on power loss, not its integrity.
            conn.pragma_update(None, "synchronous", "NORMAL").map_err(classify)?;
            // The last connection to close would checkpoint the WAL and fsync: with one process per
            // command that is every command. SQLite's automatic checkpoint (every 1000 pages)
            // still keeps the WAL bounded.
            conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map_err(classify)?;
            self.schema_ready = false;
            return Ok(self.conn.insert(conn));
        }
        let Some(conn) = self.conn.as_mut() else { unreachable!("checked above") };
        Ok(conn)
    }

    /// The statements the schema still needs.
    fn missing_schema(conn: &Connection) -> Result<Vec<String>> {
        let exists = |kind: &str, name: &str| -> Result<bool> {
            conn.query_row("SELECT 1 FROM sqlite_master WHERE type = ?1 AND name = ?2", params![kind, name], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
                .map_err(classify)
        };
        let mut todo = Vec::new();
        if !exists("table", "cache")? {
            todo.push(format!("{CREATE_TABLE};"));
        }
        if !exists("index", "idx_cache_ttl")? {
            todo.push(format!("{CREATE_INDEX};"));
        }
        Ok(todo)
    }
}

/// WAL journal (persistent in the file) and the table and index, created at most once, under
/// the write lock so that concurrent first runs agree.
fn ensure_schema(conn: &mut Connection, busy_timeout: Duration) -> Result<()> {
    // Switching to WAL needs an exclusive lock and SQLite does not wait for it (the busy
    // handler is not called): several processes making the file at once retry here, within the
    // busy timeout, re-reading the mode each time (another one may have switched it).
    let start = std::time::Instant::now();
    loop {
        let mode: std::result::Result<String, rusqlite::Error> =
            conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).and_then(|m: String| {
                if m.eq_ignore_ascii_case("wal") {
                    Ok(m)
                } else {
                    conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                }
            });
        match mode {
            Ok(_) => break,
            Err(e)
                if matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
                    && start.elapsed() < busy_timeout =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(classify(e)),
        }
    }
    let has_table: bool = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'cache'", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(classify)?
        > 0;
    if !has_table {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(classify)?;
        tx.execute_batch(&format!("{CREATE_TABLE}; {CREATE_INDEX};")).map_err(classify)?;
        tx.commit().map_err(classify)?;
    }
    Ok(())
}

/// WAL bytes above which a writer empties the WAL into the file as it closes (64 pages).
const WAL_LIMIT: u64 = 256 * 1024;

/// Each kcache process is the only one on the file most of the time, so SQLite rebuilds the
/// WAL's index from the whole WAL at every open (the `-shm` file is not trusted when no other
/// process holds it), and forgets what was checkpointed: the WAL then never restarts. Without
/// this, 1,200 one-shot `set`s left a 15 MB WAL that every later command read, 6 ms a `get`. A
/// writer whose WAL is past [`WAL_LIMIT`] therefore checkpoints it and truncates it when it
/// closes, waiting at most 200 ms for readers (a checkpoint that cannot finish is left to the
/// next writer). A one-shot `get` then reads at most 64 pages of WAL.
impl Drop for Sqlite {
    fn drop(&mut self) {
        let Some(conn) = self.conn.as_mut() else { return };
        if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true) || !conn.is_autocommit() {
            return;
        }
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_LIMIT) {
            let _ = conn.busy_timeout(Duration::from_millis(200));
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
}

/// Keys read per page by `walk` and `flush --match`.
const PAGE: usize = 1000;

/// A page of keys with their expiry (Unix time; `None`: never).
type Page = Vec<(String, Option<f64>)>;

impl Sqlite {
    /// The next page of live keys that start with `start` (after `after`), with their expiry;
    /// `None` when the file or its table does not exist.
    fn page(&mut self, start: &str, after: Option<&str>) -> Result<Option<Page>> {
        let Some(conn) = self.reader()? else { return Ok(None) };
        let t = now();
        // Two statements, so that each is a plain range on the primary key (an `OR` of the two
        // bounds made SQLite scan from `start` on every page: 16 s for 1,000,000 keys, not 1.2).
        let (sql, from) = match after {
            None => (
                "SELECT key, ttl FROM cache WHERE key >= ?1 AND (ttl IS NULL OR ttl > ?2) ORDER BY key LIMIT ?3",
                start,
            ),
            Some(last) => {
                ("SELECT key, ttl FROM cache WHERE key > ?1 AND (ttl IS NULL OR ttl > ?2) ORDER BY key LIMIT ?3", last)
            }
        };
        let rows = conn.prepare_cached(sql).and_then(|mut s| {
            s.query_map(params![from, t, PAGE as i64], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Page>>()
        });
        let mut rows = match rows {
            Err(e) if no_table(&e) => return Ok(None),
            r => r.map_err(classify)?,
        };
        // Ordered by key: the first key without the prefix ends the walk (the page is then
        // shorter than PAGE, which tells the caller so).
        if let Some(end) = rows.iter().position(|(k, _)| !k.starts_with(start)) {
            rows.truncate(end);
        }
        Ok(Some(rows))
    }
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction.
fn immediate<T>(conn: &mut Connection, f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>) -> Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(classify)?;
    let out = f(&tx).map_err(classify)?;
    tx.commit().map_err(classify)?;
    Ok(out)
}

/// Reads tolerate a file without the table yet: everything is missing.
fn no_table(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(_, Some(m)) if m.starts_with("no such table"))
}

/// The operations of a group, in order, on `tx` (a transaction: see `run_group`; a single
/// operation runs through here too, a write in its own `BEGIN IMMEDIATE`). Reads of a file
/// without the table yet find nothing.
fn group_in(tx: &Connection, ops: &[GroupOp<'_>]) -> rusqlite::Result<Vec<GroupResult>> {
    // The clock is read once the write lock is held: waiting for it must not shorten an entry's
    // life.
    let t = now();
    let mut purged = false;
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push(match *op {
            GroupOp::Get(k) => {
                let r = tx
                    .prepare_cached("SELECT value FROM cache WHERE key = ?1 AND (ttl IS NULL OR ttl > ?2)")
                    .and_then(|mut s| s.query_row(params![k, t], |r| r.get(0)).optional());
                match r {
                    Err(e) if no_table(&e) => GroupResult::Value(None),
                    r => GroupResult::Value(r?),
                }
            }
            GroupOp::Ttl(k) => {
                let r = tx
                    .prepare_cached("SELECT ttl FROM cache WHERE key = ?1 AND (ttl IS NULL OR ttl > ?2)")
                    .and_then(|mut s| s.query_row(params![k, t], |r| r.get::<_, Option<f64>>(0)).optional());
                let row = match r {
                    Err(e) if no_table(&e) => None,
                    r => r?,
                };
                // Counted from after the read: a write committed just before it must not show more
                // than was set.
                GroupResult::Remaining(match row {
                    None => Remaining::Missing,
                    Some(None) => Remaining::NoExpiry,
                    Some(Some(expiry)) => match Duration::try_from_secs_f64(expiry - now()) {
                        Ok(d) if !d.is_zero() => Remaining::Left(d),
                        _ => Remaining::Missing,
                    },
                })
            }
            GroupOp::Set(k, v, ttl) => {
                if !purged {
                    purged = true;
                    tx.prepare_cached(
                        "DELETE FROM cache WHERE key IN (SELECT key FROM cache WHERE ttl <= ?1 LIMIT ?2)",
                    )?
                    .execute(params![t, SET_PURGE_BATCH])?;
                }
                tx.prepare_cached(
                    "INSERT INTO cache (key, value, ttl) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, ttl = excluded.ttl",
                )?
                .execute(params![k, v, t + ttl.as_secs_f64()])?;
                GroupResult::Stored
            }
            GroupOp::Expire(k, ttl) => {
                let n = tx
                    .prepare_cached("UPDATE cache SET ttl = ?1 WHERE key = ?2 AND (ttl IS NULL OR ttl > ?3)")?
                    .execute(params![t + ttl.as_secs_f64(), k, t])?;
                GroupResult::Existed(n > 0)
            }
            GroupOp::Delete(k) => {
                let row = tx
                    .prepare_cached("DELETE FROM cache WHERE key = ?1 RETURNING value, ttl")?
                    .query_row(params![k], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<f64>>(1)?)))
                    .optional()?;
                GroupResult::Value(row.and_then(|(v, exp)| exp.is_none_or(|e| e > t).then_some(v)))
            }
        });
    }
    Ok(out)
}

impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn fork(&self) -> Result<Box<dyn Backend>> {
        Ok(Box::new(Sqlite {
            path: self.path.clone(),
            busy_timeout: self.busy_timeout,
            conn: None,
            schema_ready: false,
            loading: None,
        }))
    }

    fn migrate(&mut self, dry_run: bool) -> Result<Migration> {
        if dry_run {
            let statements = match self.reader()? {
                None => vec![format!("{CREATE_TABLE};"), format!("{CREATE_INDEX};")],
                Some(conn) => Self::missing_schema(conn)?,
            };
            return Ok(Migration { statements, note: None });
        }
        let busy = self.busy_timeout;
        let conn = self.open_writer()?;
        let statements = Self::missing_schema(conn)?;
        ensure_schema(conn, busy)?;
        self.schema_ready = true;
        Ok(Migration { statements, note: None })
    }

    fn get(&mut self, key: &str) -> Result<Option<String>> {
        let Some(conn) = self.reader()? else { return Ok(None) };
        Ok(match group_in(conn, &[GroupOp::Get(key)]).map_err(classify)?.pop() {
            Some(GroupResult::Value(v)) => v,
            _ => None,
        })
    }

    fn set(&mut self, key: &str, value: &str, ttl: Ttl) -> Result<()> {
        immediate(self.writer()?, |tx| group_in(tx, &[GroupOp::Set(key, value, ttl)])).map(drop)
    }

    fn ttl(&mut self, key: &str) -> Result<Remaining> {
        let Some(conn) = self.reader()? else { return Ok(Remaining::Missing) };
        Ok(match group_in(conn, &[GroupOp::Ttl(key)]).map_err(classify)?.pop() {
            Some(GroupResult::Remaining(r)) => r,
            _ => Remaining::Missing,
        })
    }

    fn expire(&mut self, key: &str, ttl: Ttl) -> Result<bool> {
        if !self.path.exists() {
            return Ok(false);
        }
        let done = immediate(self.writer()?, |tx| group_in(tx, &[GroupOp::Expire(key, ttl)]))?;
        Ok(matches!(done.first(), Some(GroupResult::Existed(true))))
    }

    fn delete(&mut self, key: &str) -> Result<Option<String>> {
        if !self.path.exists() {
            return Ok(None);
        }
        Ok(match immediate(self.writer()?, |tx| group_in(tx, &[GroupOp::Delete(key)]))?.pop() {
            Some(GroupResult::Value(v)) => v,
            _ => None,
        })
    }

    fn delete_if(&mut self, key: &str, value: &str) -> Option<Result<bool>> {
        if !self.path.exists() {
            return Some(Ok(false));
        }
        let conn = match self.writer() {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let sql = "DELETE FROM cache WHERE key = ?1 AND value = ?2";
        Some(immediate(conn, |tx| tx.execute(sql, params![key, value])).map(|n| n > 0))
    }

    fn flush(&mut self, scope: FlushScope<'_>) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        let conn = self.writer()?;
        immediate(conn, |tx| match scope {
            FlushScope::All => tx.execute("DELETE FROM cache", []),
            // substr/length count characters on both sides: no LIKE wildcards to escape.
            FlushScope::Prefix(p) => tx.execute("DELETE FROM cache WHERE substr(key, 1, length(?1)) = ?1", params![p]),
        })
        .map(drop)
    }

    /// Pages of the primary key in order (its BINARY order keeps every key with one prefix
    /// together), each page a short query of its own: no read transaction is held while the
    /// caller works, and memory stays one page.
    fn walk(&mut self, start: &str, each: &mut dyn FnMut(&str, Remaining) -> bool) -> Result<()> {
        let mut after: Option<String> = None;
        loop {
            let Some(page) = self.page(start, after.as_deref())? else { return Ok(()) };
            let t = now();
            let full = page.len() == PAGE;
            after = page.last().map(|(k, _)| k.clone());
            for (key, expires) in &page {
                let left = match expires {
                    None => Remaining::NoExpiry,
                    Some(e) => Remaining::Left(Duration::from_secs_f64((e - t).max(1e-9))),
                };
                if !each(key, left) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Page by page, each page's chosen keys removed in one short `BEGIN IMMEDIATE`.
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
            let Some(page) = self.page(start, after.as_deref())? else { return Ok(removed) };
            let full = page.len() == PAGE;
            after = page.last().map(|(k, _)| k.clone());
            let keys: Vec<&str> = page.iter().map(|(k, _)| k.as_str()).filter(|k| chosen(k)).collect();
            if !dry_run && !keys.is_empty() {
                let conn = self.writer()?;
                immediate(conn, |tx| {
                    let mut delete = tx.prepare_cached("DELETE FROM cache WHERE key = ?1")?;
                    for key in &keys {
                        delete.execute(params![key])?;
                    }
                    Ok(())
                })?;
            }
            for key in keys {
                each(key)?;
                removed += 1;
            }
            if !full {
                return Ok(removed);
            }
        }
    }

    /// One `SELECT` over the prefix's range of the primary key, read as it streams: one
    /// statement, so one snapshot (WAL: writers go on meanwhile).
    fn entries(&mut self, start: &str, each: &mut EachEntry<'_>) -> Result<()> {
        let Some(conn) = self.reader()? else { return Ok(()) };
        let mut stmt = match conn
            .prepare("SELECT key, value, ttl FROM cache WHERE key >= ?1 AND (ttl IS NULL OR ttl > ?2) ORDER BY key")
        {
            Err(e) if no_table(&e) => return Ok(()),
            r => r.map_err(classify)?,
        };
        let mut rows = stmt.query(params![start, now()]).map_err(classify)?;
        while let Some(row) = rows.next().map_err(classify)? {
            let (Ok(key), Ok(value)) =
                (row.get_ref(0).and_then(|v| Ok(v.as_str()?)), row.get_ref(1).and_then(|v| Ok(v.as_str()?)))
            else {
                continue; // not text: no entry kcache or Kinto wrote
            };
            if !key.starts_with(start) {
                break; // ordered by key: the prefix's range has ended
            }
            let expires: Option<f64> = row.get(2).map_err(classify)?;
            if !each(key, value, expires)? {
                break;
            }
        }
        Ok(())
    }

    /// Every entry of the load in one `BEGIN IMMEDIATE` transaction, committed by `load_end`.
    fn load(&mut self, entries: &[Entry], keep_live: bool, _written: &mut u64) -> Result<()> {
        if self.loading.is_none() {
            self.writer()?.execute_batch("BEGIN IMMEDIATE").map_err(classify)?;
            self.loading = Some(0);
        }
        let t = now();
        let written = {
            let conn = self.writer()?;
            let keep = if keep_live { " WHERE cache.ttl IS NOT NULL AND cache.ttl <= ?4" } else { " WHERE ?4 > 0" };
            let sql = format!(
                "INSERT INTO cache (key, value, ttl) VALUES (?1, ?2, ?3) ON CONFLICT (key) DO UPDATE \
                 SET value = excluded.value, ttl = excluded.ttl{keep}"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(classify)?;
            let mut written = 0;
            for e in entries.iter().filter(|e| e.expires.is_none_or(|at| at > t)) {
                written += stmt.execute(params![e.key, e.value, e.expires, t]).map_err(classify)? as u64;
            }
            written
        };
        if let Some(n) = &mut self.loading {
            *n += written;
        }
        Ok(())
    }

    fn load_end(&mut self, commit: bool) -> Result<u64> {
        let Some(written) = self.loading.take() else { return Ok(0) };
        let conn = self.writer()?;
        if commit {
            conn.execute_batch("COMMIT").map_err(classify)?;
            Ok(written)
        } else {
            conn.execute_batch("ROLLBACK").map_err(classify)?;
            Ok(0)
        }
    }

    fn load_is_atomic(&self) -> bool {
        true
    }

    fn count(&mut self, start: &str) -> Option<u64> {
        let conn = self.reader().ok()??;
        conn.query_row(
            "SELECT count(*) FROM cache WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1 AND (ttl IS NULL OR ttl > ?2)",
            params![start, now()],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .and_then(|n| u64::try_from(n).ok())
    }

    /// The whole group in one transaction (`BEGIN IMMEDIATE` when it writes): one lock, one
    /// commit, the statements prepared once. A statement that fails rolls the group back and
    /// its operations run one by one, each with its own result.
    fn run_group(&mut self, ops: &[GroupOp<'_>]) -> Option<Vec<Result<GroupResult>>> {
        if ops.len() < 2 {
            return None;
        }
        let writes = ops.iter().any(|op| !matches!(op, GroupOp::Get(_) | GroupOp::Ttl(_)));
        if !writes && !self.path.exists() {
            return Some(
                ops.iter()
                    .map(|op| {
                        Ok(match op {
                            GroupOp::Ttl(_) => GroupResult::Remaining(Remaining::Missing),
                            _ => GroupResult::Value(None),
                        })
                    })
                    .collect(),
            );
        }
        let conn = if writes {
            self.writer()
        } else {
            self.reader().and_then(|c| {
                c.ok_or_else(|| {
                    Error::backend("read the sqlite file", anyhow::anyhow!("the file was removed meanwhile"))
                })
            })
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                let e = e.unsent();
                return Some(ops.iter().map(|_| Err(e.clone())).collect());
            }
        };
        let behavior = if writes { TransactionBehavior::Immediate } else { TransactionBehavior::Deferred };
        let tx = match conn.transaction_with_behavior(behavior) {
            Ok(tx) => tx,
            Err(e) => {
                let e = classify(e).unsent();
                return Some(ops.iter().map(|_| Err(e.clone())).collect());
            }
        };
        let results = group_in(&tx, ops);
        match results.and_then(|r| tx.commit().map(|()| r)) {
            Ok(r) => Some(r.into_iter().map(Ok).collect()),
            Err(e) if no_table(&e) => None,
            Err(_) => None,
        }
    }

    fn purge(&mut self) -> Result<u64> {
        if !self.path.exists() {
            return Ok(0);
        }
        let conn = self.writer()?;
        let t = now();
        immediate(conn, |tx| tx.execute("DELETE FROM cache WHERE ttl <= ?1", params![t])).map(|n| n as u64)
    }

    /// One query over the prefix's range of the primary key: live and expired rows, and the
    /// bytes of the live values. No file, or no table yet: all zero. No server.
    fn stats(&mut self, prefix: &str, _keep_going: bool) -> Result<crate::stats::Stats> {
        let t = now();
        let counts = match self.reader()? {
            None => Ok((0, 0, 0)),
            Some(conn) => conn
                .prepare_cached(
                    "SELECT count(*) FILTER (WHERE ttl IS NULL OR ttl > ?2), count(*) FILTER (WHERE ttl <= ?2), \
                     coalesce(sum(length(CAST(value AS BLOB))) FILTER (WHERE ttl IS NULL OR ttl > ?2), 0) \
                     FROM cache WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1",
                )
                .and_then(|mut s| {
                    s.query_row(params![prefix, t], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    })
                }),
        };
        let (entries, expired, bytes) = match counts {
            Err(e) if no_table(&e) => (0, 0, 0),
            r => r.map_err(classify)?,
        };
        let n = |v: i64| Some(u64::try_from(v).unwrap_or(0));
        Ok(crate::stats::Stats {
            entries: n(entries),
            expired: n(expired),
            value_bytes: n(bytes),
            ..crate::stats::Stats::default()
        })
    }
}
