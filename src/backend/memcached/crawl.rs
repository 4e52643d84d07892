//! `keys` and `flush --match` on memcached: each server's key crawler, then Kinto's envelopes.
//!
//! - **The dump**: on a connection of its own, closed after it (a dump that fails midway
//!   leaves nothing behind in the pool), `lru_crawler metadump hash`, which walks the hash
//!   table (`metadump all` was seen to skip live keys on memcached 1.6.18); a server that answers that it does not
//!   know `hash` (`BADCLASS` on older servers) gets `lru_crawler metadump all` (1.4.31 and newer).
//!   A server that refuses both (the crawler disabled with `-o no_lru_crawler`, metadump not
//!   allowed, too old) is status 4 with a hint; one busy with another crawl (memcached runs one
//!   at a time) is asked again for up to [`BUSY_PATIENCE`], then status 3. The dump's lines
//!   (`key=<uri-encoded> exp=... la=... cas=... fetch=... cls=... size=...`) are read one at a
//!   time ([`Conn::dump_line`]: bounded in time and length) up to `END`; a server that sends no
//!   `END` is status 3 once `pool_timeout` passes without a line.
//! - **The keys**: URI-decoded; a key that is not UTF-8, or that kcache could not send back in
//!   a command (a space, a control character: written by another protocol), is skipped. Only
//!   keys that start with the walk's start and that live on the server python-memcached picks
//!   for them are candidates: those are the keys `get` finds, and each is so listed once even
//!   when a stray copy sits on another server.
//! - **Expiry**: the dump's `exp` is the server's expiry only, and Kinto's envelope may come
//!   first. Once a server's dump has ended, its candidates are read [`CHUNK`] at a time in
//!   pipelines of `mg <key> v f t c` (on a pooled connection, kept as small as `group.rs` keeps
//!   its own), and only live entries are given, with the time left `ttl` would show
//!   (`remaining_on`). Entries that are not Kinto's envelopes are not cache entries and are
//!   skipped.
//! - **Why the whole dump first**: memcached's crawler holds item locks while it waits for its
//!   client to read the dump (seen on 1.6.18: a walk that read envelopes between chunks of a
//!   200,000-key dump stalled until `pool_timeout`), so nothing else is sent to a server until
//!   its dump has been read to `END`. That also keeps the crawl short for the server. The
//!   candidates wait in a [`Spool`]: the first chunk in memory, the rest in an unlinked
//!   temporary file, so memory holds one chunk, never the dump.
//! - **Removal** (`flush --match`): each chunk's chosen entries go in one pipeline of
//!   `md <key> C<cas>`, the CAS read with the envelope. A plain `md` would also remove an
//!   entry another client wrote after the walk judged the key (a fresh entry that was never
//!   listed); the CAS tombstone `delete` writes exists so that of two deletes one gets the
//!   value, and `flush --match` returns no values: `md` over the CAS removes exactly the entry
//!   that was judged, in one command instead of two round trips. An entry changed or removed
//!   meanwhile (`EX`, `NF`) is left alone and not counted.
//!
//! The servers are walked one after the other, in the order of the host list. The walk is no
//! snapshot: a key written or removed during it may or may not be given. With `metadump all`
//! (old servers), an entry moved between LRUs during the crawl could be seen twice; duplicates
//! are dropped within a chunk only, to keep memory flat.

use super::conn::{self, Conn, Failure, Manager};
use super::group::{AFTER_READ_BYTES, MAX_PIPELINE};
use super::{Memcached, Server, done, envelope, found, mg};
use crate::backend::{Backend, MATCH_BATCH};
use crate::error::{Error, ErrorKind, Result};
use memcache::exp::{MetaCommand, MetaOp};
use r2d2::ManageConnection;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::time::{Duration, Instant, SystemTime};

/// How many candidate keys are read (and removed) at a time.
pub const CHUNK: usize = MATCH_BATCH;

/// How long a server busy with another crawl is asked again.
pub const BUSY_PATIENCE: Duration = Duration::from_secs(10);

/// The pause between two asks of a busy server.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// A live entry the walk found.
pub struct Live {
    /// The full key.
    pub key: String,
    /// Its time left.
    pub left: Duration,
    /// The CAS token it was read with.
    pub cas: u64,
    /// Its value (Kinto's JSON text, out of the envelope).
    pub value: String,
    /// When it expires, Unix time in seconds: now plus `left`.
    pub expires: f64,
}

/// What the walk gives each chunk of live entries: a connection to their server, the server,
/// the entries; `false` stops the walk.
pub type OnChunk<'a> = dyn FnMut(&mut Conn, &Server, &[Live]) -> Result<bool> + 'a;

/// A server's key dump in progress.
struct Dump<'s> {
    conn: Conn,
    server: &'s Server,
    /// How long one line may take.
    limit: Duration,
    /// The first key line, read with the reply to the command.
    first: Option<Vec<u8>>,
    /// `END` was read (or the server had nothing to crawl).
    ended: bool,
}

/// Why a dump failed, naming the server: no `END` in time or a closed connection are status 3.
fn dump_error(f: Failure, server: &Server) -> Error {
    let at = &server.location;
    match f {
        Failure::Io { timeout: true, .. } => Error::new(
            ErrorKind::Unavailable,
            anyhow::anyhow!("memcached at {at} did not finish its key dump: no END line within pool_timeout"),
        ),
        Failure::Closed => Error::new(
            ErrorKind::Unavailable,
            anyhow::anyhow!("memcached at {at} closed the connection before the END of its key dump"),
        ),
        f => conn::classify(f, at),
    }
}

impl<'s> Dump<'s> {
    /// Connects and starts the dump (`hash`, else `all`; see the module doc).
    fn open(server: &'s Server, timeout: Duration) -> Result<Dump<'s>> {
        let mut conn = Manager::new(server.address.clone(), timeout)
            .connect()
            .map_err(|e| conn::classify_connect(e, &server.location))?;
        let (mut first, mut ended) = (None, false);
        let busy_since = Instant::now();
        let mut mode = "hash";
        let mut refused = Vec::new();
        loop {
            conn.send_line(&format!("lru_crawler metadump {mode}")).map_err(|f| dump_error(f, server))?;
            let line = conn.dump_line(timeout).map_err(|f| dump_error(f, server))?;
            if line.starts_with(b"key=") {
                first = Some(line.to_vec());
            } else if line == b"END" || line.starts_with(b"NOTSTARTED") {
                // NOTSTARTED: nothing to crawl (an empty server, with `all`).
                ended = true;
            } else if line.starts_with(b"BUSY") && busy_since.elapsed() < BUSY_PATIENCE {
                std::thread::sleep(BUSY_PAUSE);
                continue;
            } else if line.starts_with(b"BUSY") {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    anyhow::anyhow!(
                        "the key crawler of memcached at {} was busy with another crawl for {} s; try again",
                        server.location,
                        BUSY_PATIENCE.as_secs()
                    ),
                ));
            } else {
                refused.push(format!("'lru_crawler metadump {mode}': {}", conn.last_line()));
                if mode == "hash" {
                    mode = "all";
                    continue;
                }
                return Err(Error::new(
                    ErrorKind::Backend,
                    anyhow::anyhow!("memcached at {} cannot list its keys ({})", server.location, refused.join(", ")),
                )
                .with_hint(
                    "kcache lists memcached keys with its key crawler (memcached 1.4.31 or newer): start memcached \
                     with -o lru_crawler (and without -o no_lru_crawler)",
                ));
            }
            return Ok(Dump { conn, server, limit: timeout, first, ended });
        }
    }

    /// The next key of the dump, URI-decoded; `None` after `END`. Keys that are not UTF-8 are
    /// skipped.
    fn next_key(&mut self) -> Result<Option<String>> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let first = self.first.take();
            let line = match &first {
                Some(line) => &line[..],
                None => self.conn.dump_line(self.limit).map_err(|f| dump_error(f, self.server))?,
            };
            if line == b"END" {
                self.ended = true;
                return Ok(None);
            }
            let Some(rest) = line.strip_prefix(b"key=") else {
                let quoted = conn::escape(line);
                self.conn.broken = true;
                return Err(conn::classify(Failure::Unexpected(quoted), &self.server.location));
            };
            let encoded = rest.split(|b| *b == b' ').next().unwrap_or_default();
            let Ok(encoded) = std::str::from_utf8(encoded) else { continue };
            if let Ok(key) = String::from_utf8(crate::settings::percent_decode_bytes(encoded)) {
                return Ok(Some(key));
            }
        }
    }
}

/// Reads `keys` (on `c`'s server) in pipelines of `mg <key> v f t c`, and adds the live
/// entries to `out`. On a failure the connection is given up: replies may be left unread.
fn lookup(c: &mut Conn, keys: &[String], out: &mut Vec<Live>) -> Result<(), Failure> {
    read_held(c, keys, &mut |i, held| {
        if let Held::Entry { entry, left: Some(left), cas: Some(cas), at } = held {
            let expires =
                at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64() + left.as_secs_f64();
            out.push(Live { key: keys[i].clone(), left, cas, value: entry.value, expires });
        }
    })
}

/// What `mg <key> v f t c` found under a key.
pub enum Held {
    Nothing,
    /// An item that is not Kinto's envelope (another client's).
    Foreign,
    /// An entry, with its time left as `ttl` reads it (`None`: its time has passed), its CAS,
    /// and when the reply was read.
    Entry {
        entry: envelope::Entry,
        left: Option<Duration>,
        cas: Option<u64>,
        at: SystemTime,
    },
}

/// Reads `keys` (on `c`'s server) in pipelines of `mg <key> v f t c`, giving `each` what each
/// key holds, in order. Replies may be large: what a pipeline holds after its first command stays
/// small (see `group.rs`). On a failure the connection is given up: replies may be left unread.
pub fn read_held<K: AsRef<str>>(c: &mut Conn, keys: &[K], each: &mut dyn FnMut(usize, Held)) -> Result<(), Failure> {
    let r = (|| {
        let mut next = 0;
        while next < keys.len() {
            let from = next;
            while next < keys.len() && next - from < MAX_PIPELINE && (next == from || c.queued() < AFTER_READ_BYTES) {
                c.push(&mg(keys[next].as_ref(), &["t", "c"]));
                next += 1;
            }
            c.send()?;
            for i in from..next {
                let reply = c.receive()?;
                let at = SystemTime::now();
                let held = match found(c, reply)? {
                    None => Held::Nothing,
                    Some(item) => match envelope::decode(
                        item.value.as_deref().unwrap_or_default(),
                        item.client_flags.unwrap_or_default(),
                    ) {
                        Err(_) => Held::Foreign,
                        Ok(entry) => {
                            let left = match item.ttl {
                                Some(t) => entry.remaining_on(at, t),
                                None => entry.remaining(at),
                            };
                            Held::Entry { entry, left, cas: item.cas, at }
                        }
                    },
                };
                each(i, held);
            }
        }
        Ok(())
    })();
    if r.is_err() {
        c.broken = true;
    }
    r
}

/// Removes `chosen` (on `c`'s server) in one pipeline of `md <key> C<cas>`; returns whether
/// each was removed. On a failure the connection is given up.
pub fn remove(c: &mut Conn, chosen: &[&Live]) -> Result<Vec<bool>, Failure> {
    let r: Result<Vec<bool>, Failure> = (|| {
        // The replies are short (`HD`, `EX`, `NF`): a whole chunk goes in one pipeline.
        for live in chosen {
            c.push(&MetaCommand::new(MetaOp::Delete, live.key.as_str()).flag(format!("C{}", live.cas)));
        }
        c.send()?;
        chosen.iter().map(|_| c.receive().and_then(|reply| done(c, reply))).collect()
    })();
    if r.is_err() {
        c.broken = true;
    }
    r
}

/// The candidate keys of one server, between its dump and their lookups: the first [`CHUNK`]
/// in memory, any more in a temporary file (unlinked at once), one key a line (keys have no
/// control characters).
struct Spool {
    head: Vec<String>,
    writer: Option<BufWriter<File>>,
    reader: Option<BufReader<File>>,
}

impl Spool {
    fn new() -> Spool {
        Spool { head: Vec::with_capacity(CHUNK), writer: None, reader: None }
    }

    fn push(&mut self, key: String) -> Result<()> {
        if self.writer.is_none() && self.head.len() < CHUNK {
            self.head.push(key);
            return Ok(());
        }
        let w = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(BufWriter::with_capacity(64 * 1024, tempfile::tempfile().map_err(spool_error)?)),
        };
        w.write_all(key.as_bytes()).and_then(|()| w.write_all(b"\n")).map_err(spool_error)
    }

    /// The next chunk of at most [`CHUNK`] keys, `None` when none is left.
    fn next_chunk(&mut self) -> Result<Option<Vec<String>>> {
        if !self.head.is_empty() {
            return Ok(Some(std::mem::take(&mut self.head)));
        }
        if let Some(w) = self.writer.take() {
            let mut file = w.into_inner().map_err(|e| spool_error(e.into_error()))?;
            file.seek(SeekFrom::Start(0)).map_err(spool_error)?;
            self.reader = Some(BufReader::with_capacity(64 * 1024, file));
        }
        let Some(r) = &mut self.reader else { return Ok(None) };
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut line = String::new();
        while chunk.len() < CHUNK {
            line.clear();
            if r.read_line(&mut line).map_err(spool_error)? == 0 {
                break;
            }
            chunk.push(line.trim_end_matches('\n').to_string());
        }
        if chunk.is_empty() {
            self.reader = None;
            return Ok(None);
        }
        Ok(Some(chunk))
    }
}

fn spool_error(e: std::io::Error) -> Error {
    let dir = std::env::temp_dir();
    Error::new(
        ErrorKind::Backend,
        anyhow::anyhow!("cannot keep the listed keys in a temporary file in {}: {e}", dir.display()),
    )
    .with_hint("set TMPDIR to a folder kcache can write to, with room for the keys")
}

impl Memcached {
    /// Walks every server's live entries whose full key starts with `start` (see the module
    /// doc), giving `on_chunk` each chunk with a connection to its server, until it returns
    /// `false`.
    pub(super) fn crawl(&self, start: &str, on_chunk: &mut OnChunk<'_>) -> Result<()> {
        for (index, server) in self.shared.servers.iter().enumerate() {
            let mut spool = self.candidates(index, server, start)?;
            let mut pooled = None;
            let mut live: Vec<Live> = Vec::with_capacity(CHUNK);
            while let Some(mut candidates) = spool.next_chunk()? {
                candidates.sort_unstable();
                candidates.dedup();
                let c = match &mut pooled {
                    Some(c) => c,
                    None => pooled.insert(self.connection(server)?),
                };
                live.clear();
                lookup(c, &candidates, &mut live).map_err(|f| conn::classify(f, &server.location))?;
                if !on_chunk(c, server, &live)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Reads the whole dump of `server` (the `index`th) before anything else is sent to it, and
    /// keeps its candidate keys. memcached's crawler holds item locks while it waits for its
    /// client to read (seen on 1.6.18): a `mg` sent to the server while the dump is left unread
    /// can wait on the crawler, which waits on kcache.
    fn candidates(&self, index: usize, server: &Server, start: &str) -> Result<Spool> {
        let mut dump = Dump::open(server, self.shared.pool.timeout)?;
        let mut spool = Spool::new();
        while let Some(key) = dump.next_key()? {
            if key.starts_with(start) && self.check_key(&key).is_ok() && self.server_index(&key) == index {
                spool.push(key)?;
            }
        }
        Ok(spool)
    }
}
