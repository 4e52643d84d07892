//! `dump`, `load`, `copy` and `diff` (SPEC, "Dump format; dump, load, copy, diff").
//!
//! A dump is JSON lines `{"key":K,"value":V,"expires":E}`: the key with the prefix stripped,
//! the stored JSON document, and the Unix time in seconds (millisecond precision) when the
//! entry expires, `null` for never. Everything streams: a dump writes each entry as the backend
//! gives it; a load reads, checks and writes [`GROUP`] entries at a time, the checking on a
//! thread of its own so that it overlaps the writes; `copy` walks the source on one thread and
//! writes the target on another; `diff` spools both sides into [`BUCKETS`] temporary files by a
//! hash of the key and compares one bucket at a time, so memory holds one bucket of the source,
//! never a whole cache.

use crate::backend::{Cache, Entry, unix_now};
use crate::error::{Error, ErrorKind, Result, excerpt};
use crate::pattern::Pattern;
use crate::value;
use crate::{Log, Outcome, output};
use serde_json::Value;
use std::io::{BufRead, Write};
use std::sync::mpsc;

/// Entries written per backend call (one pipeline, one statement, one group of `COPY` data).
pub const GROUP: usize = 1000;

/// The longest dump line `load` reads (a value of up to 64 MiB).
pub const MAX_LINE: usize = 64 << 20;

/// How many buckets `diff` spools each side into.
pub const BUCKETS: usize = 128;

/// A group is also closed once its keys and values hold this many bytes, so that memory stays
/// bounded with large values (groups in flight times this).
pub const GROUP_BYTES: usize = 16 << 20;

/// Groups in flight between the reading thread and the writing one.
const IN_FLIGHT: usize = 4;

/// Standard output is written in whole lines, this many bytes at a time at most: a dump cut
/// short (a source that fails midway) never ends with part of a line.
const OUT_CHUNK: usize = 64 * 1024;

/// Appends one dump line to `out`. The value is the stored JSON text when it is valid JSON on
/// one line (byte for byte what the backend holds), else it is re-encoded; a stored value that
/// is not JSON is an error (the entry is left out of the dump).
pub fn write_line(out: &mut Vec<u8>, key: &str, stored: &str, expires: Option<f64>) -> Result<(), String> {
    let reencoded;
    let value = if value::is_one_line_json(stored) {
        stored
    } else {
        let doc = value::parse_stored(stored).map_err(|e| e.0)?;
        reencoded = value::encode(&doc).map_err(|e| e.0)?;
        &reencoded
    };
    out.extend_from_slice(b"{\"key\":");
    // serde_json writes a str without failing into a Vec.
    let _ = serde_json::to_writer(&mut *out, key);
    out.extend_from_slice(b",\"value\":");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b",\"expires\":");
    match expires {
        None => out.extend_from_slice(b"null"),
        Some(e) => out.extend_from_slice(expiry_text(e).as_bytes()),
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// An expiry time as the dump writes it: seconds with at most three decimals (`1795617795.309`).
pub fn expiry_text(secs: f64) -> String {
    let ms = (secs * 1000.0).round();
    let text = format!("{:.3}", ms / 1000.0);
    let text = text.trim_end_matches('0');
    text.trim_end_matches('.').to_string()
}

/// The latest expiry a dump line may give: 9999-12-31T23:59:59Z.
const LATEST_EXPIRY: f64 = 253_402_300_799.0;

/// One line of a dump, read: the key (prefix stripped), the value as kcache writes it, and the
/// expiry.
#[derive(Debug, PartialEq)]
pub struct Line {
    pub key: String,
    pub value: String,
    pub expires: Option<f64>,
}

/// Reads one dump line; the error says what is wrong with it. Other fields are ignored.
///
/// The line's object is read field by field ([`Fields`]), the value kept as raw text and
/// re-encoded as Kinto writes it (a string directly, any other document through
/// [`value::parse`]): no tree is built for the line itself (1,000,000 lines: a third less CPU
/// than reading each into a `serde_json::Value`: 0.72 s against 1.06 s).
pub fn parse_line(text: &str) -> Result<Line, String> {
    if !value::within_depth_of(text, value::MAX_DEPTH + 1) {
        return Err(format!("it is not JSON (arrays and objects nest more than {} levels deep)", value::MAX_DEPTH));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let fields = <Fields<'_> as serde::Deserialize>::deserialize(&mut de).and_then(|f| de.end().map(|()| f));
    let fields = match fields {
        Ok(f) => f,
        Err(e) if e.is_data() => {
            return Err("it is not a JSON object {\"key\": ..., \"value\": ..., \"expires\": ...}".into());
        }
        Err(e) => return Err(format!("it is not JSON ({e})")),
    };
    let key = match fields.key {
        Some(Value::String(k)) => k,
        Some(_) => return Err("its \"key\" is not a string".into()),
        None => return Err("it has no \"key\"".into()),
    };
    let expires = match fields.expires {
        Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64().filter(|f| f.is_finite()) {
            // Past the year 9999 no backend holds the time (PostgreSQL's timestamps, Redis's ms).
            Some(f) if f > LATEST_EXPIRY => {
                return Err("its \"expires\" is past the year 9999 (a Unix time in seconds is expected)".into());
            }
            Some(f) => Some(f),
            None => return Err("its \"expires\" is not a finite number".into()),
        },
        Some(_) => return Err("its \"expires\" is neither a number (Unix time in seconds) nor null".into()),
        None => return Err("it has no \"expires\" (a Unix time in seconds, or null)".into()),
    };
    let Some(raw) = fields.value else { return Err("it has no \"value\"".into()) };
    let raw = raw.get();
    let encoded = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw)
            .map(|s| value::encode_string(&s))
            .map_err(|e| value::ValueError(e.to_string()))
    } else {
        value::parse(raw).and_then(|doc| value::encode(&doc))
    };
    let value = encoded.map_err(|e| format!("its value cannot be stored: {e}"))?;
    Ok(Line { key, value, expires })
}

/// The fields of a dump line that matter, read without building the rest.
struct Fields<'a> {
    key: Option<Value>,
    value: Option<&'a serde_json::value::RawValue>,
    expires: Option<Value>,
}

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Fields { key: None, value: None, expires: None };
                while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match &*name {
                        "key" => fields.key = Some(map.next_value()?),
                        "value" => fields.value = Some(map.next_value()?),
                        "expires" => fields.expires = Some(map.next_value()?),
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(fields)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// What a load or copy has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Entries written for good.
    pub written: u64,
    /// Entries read (lines with an entry, or source entries).
    pub read: u64,
    /// Entries skipped because they had expired already.
    pub expired: u64,
}

impl Counts {
    /// `-v`'s summary: written, and skipped (expired, kept live entries, repeated keys).
    fn summary(&self) -> String {
        let skipped = self.read - self.written;
        format!(
            "wrote {} entries, skipped {skipped} ({} already expired, {} kept or repeated)",
            self.written,
            self.expired,
            skipped - self.expired.min(skipped)
        )
    }
}

/// Progress on standard error: entries done, rate, and the total where known. Shown only when
/// standard error is a terminal and `-q` is not given.
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// Whether progress is shown: standard error is a terminal and `-q` is not given.
    pub fn shown(log: &Log) -> bool {
        use std::io::IsTerminal;
        !log.quiet && std::io::stderr().is_terminal()
    }

    pub fn new(log: &Log, what: &str, total: Option<u64>) -> Progress {
        if !Progress::shown(log) {
            return Progress(None);
        }
        let (bar, template) = match total {
            Some(n) => (
                indicatif::ProgressBar::new(n),
                format!("kcache {what}: {{wide_bar}} {{human_pos}}/{{human_len}} entries, {{per_sec}}, {{eta}} left"),
            ),
            None => (
                indicatif::ProgressBar::no_length(),
                format!("kcache {what}: {{spinner}} {{human_pos}} entries, {{per_sec}}, {{elapsed}}"),
            ),
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(10));
        if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Progress(Some(bar))
    }

    pub fn add(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    pub fn done(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}

/// Standard output in whole lines (see [`OUT_CHUNK`]).
struct Lines<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> Lines<W> {
    fn new(out: W) -> Self {
        Lines { out, buf: Vec::with_capacity(OUT_CHUNK + 4096) }
    }

    /// Writes the buffer once it holds [`OUT_CHUNK`] bytes.
    fn maybe_flush(&mut self) -> Result<()> {
        if self.buf.len() >= OUT_CHUNK { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<()> {
        let r = self.out.write_all(&self.buf).and_then(|()| self.out.flush());
        self.buf.clear();
        r.map_err(output::failed)
    }
}

/// Stored values a dump or diff could not read, reported once at the end.
#[derive(Default)]
struct Unreadable {
    count: u64,
    first: Option<(String, String)>,
}

impl Unreadable {
    fn add(&mut self, key: &str, why: String, log: &Log) {
        self.count += 1;
        if self.count <= 3 {
            log.warn(&format!("the entry {} is left out: its stored value is not JSON ({why})", excerpt(key)));
        }
        if self.first.is_none() {
            self.first = Some((key.to_string(), why));
        }
    }

    /// Adds what another walk left out.
    fn merge(&mut self, other: Unreadable) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }

    /// Status 4 when any entry was left out.
    fn result(self, what: &str) -> Result<()> {
        match self.first {
            None => Ok(()),
            Some((key, why)) => Err(Error::backend(
                format!("{what}: {} entries were left out", self.count),
                anyhow::anyhow!("their stored values are not JSON (the first, {}: {why})", excerpt(&key)),
            )),
        }
    }
}

/// `dump [PATTERN]`: every live entry that matches, one line each, as the backend gives them.
pub fn dump(cache: &mut Cache, pattern: Option<&str>, log: &Log) -> Result<Outcome> {
    let pattern = pattern.map(Pattern::parse).transpose()?.unwrap_or_default();
    let progress = Progress::new(log, "dump", total(cache, &pattern, log));
    let mut lines = Lines::new(std::io::stdout().lock());
    let mut unreadable = Unreadable::default();
    let mut n = 0u64;
    // A failure to write stops the walk, and is reported as it is: not as the source's.
    let mut output_failed = None;
    let walked = cache.entries(&pattern, &mut |key, stored, expires| {
        if let Err(why) = write_line(&mut lines.buf, key, stored, expires) {
            unreadable.add(key, why, log);
            return Ok(true);
        }
        n += 1;
        if n.is_multiple_of(256) {
            progress.add(256);
        }
        if let Err(e) = lines.maybe_flush() {
            output_failed = Some(e);
            return Ok(false);
        }
        Ok(true)
    });
    if let Some(e) = output_failed {
        progress.done();
        return Err(e);
    }
    // The whole lines read before a failure are written, then the failure is reported.
    let flushed = lines.flush();
    progress.done();
    match (walked, flushed) {
        (Err(e), _) if e.kind() != ErrorKind::BrokenPipe => return Err(e),
        (_, Err(e)) | (Err(e), _) => return Err(e),
        _ => {}
    }
    log.note(&format!("dumped {n} entries"));
    unreadable.result("dump")?;
    Ok(Outcome::Done)
}

/// The total for a progress bar, where the backend counts cheaply (only when it is shown).
fn total(cache: &mut Cache, pattern: &Pattern, log: &Log) -> Option<u64> {
    if Progress::shown(log) { cache.count(pattern) } else { None }
}

/// What the reading side of a load or copy sends the writing side.
enum Batch {
    /// Entries to write (full keys), and how many were read and skipped as expired to get them.
    Entries { entries: Vec<Entry>, read: u64, expired: u64 },
    /// The input ended.
    End,
    /// The input failed: nothing after this is written.
    Failed(Error),
    /// The input holds an entry the target cannot take: nothing after it is written.
    Refused(Error),
}

/// Writes what `batches` brings into `target`, then ends the load (commit, or rollback on a
/// failure); returns the counts, or the failure with how much was written. `batches` is
/// dropped on return, so that a reading side blocked on a full channel sees the end instead
/// of waiting forever for a writer that gave up.
/// `what` names the command (`load`, `copy`), `source` the reading side for a message when it
/// is the one that failed (`None`: the input's own errors say where they are).
fn write_all(
    target: &mut Cache,
    batches: mpsc::Receiver<Batch>,
    keep_live: bool,
    progress: &Progress,
    what: &str,
    source: Option<&str>,
) -> (Counts, Result<()>) {
    let mut counts = Counts::default();
    let atomic = target.load_is_atomic();
    let mut from_source = false;
    let failure = loop {
        match batches.recv() {
            Ok(Batch::Entries { entries, read, expired }) => {
                counts.read += read;
                counts.expired += expired;
                if !entries.is_empty()
                    && let Err(e) = target.load(&entries, keep_live, &mut counts.written)
                {
                    break Some(e);
                }
                progress.add(read);
            }
            Ok(Batch::End) => break None,
            Ok(Batch::Refused(e)) => break Some(e),
            Ok(Batch::Failed(e)) => {
                from_source = true;
                break Some(e);
            }
            Err(_) => break Some(Error::new(ErrorKind::Backend, anyhow::anyhow!("the reading thread stopped"))),
        }
    };
    match failure {
        None => match target.load_end(true) {
            Ok(n) => {
                counts.written += n;
                (counts, Ok(()))
            }
            Err(e) => (counts, Err(e)),
        },
        Some(e) => {
            let _ = target.load_end(false);
            // One line says it all (a message shows its outermost context and its root cause):
            // which command, into what, how much was written, and which side failed.
            let into = format!("{what} into {} at {}", target.backend_name(), target.location());
            let done = if atomic {
                format!("{into} stopped; nothing was written (the load is one transaction)")
            } else {
                format!("{into} stopped after writing {} entries", counts.written)
            };
            let said = match source.filter(|_| from_source) {
                Some(source) => format!("{done}: reading the source, {source}, failed"),
                None => done,
            };
            (counts, Err(e.context(said)))
        }
    }
}

/// `load [--no-overwrite]`: the dump on standard input into the cache.
pub fn load(cache: &mut Cache, keep_live: bool, log: &Log) -> Result<Outcome> {
    let checker = cache.sibling_same_prefix()?;
    let progress = Progress::new(log, "load", None);
    let (send, batches) = mpsc::sync_channel::<Batch>(IN_FLIGHT);
    // Not joined: when the target fails, the load ends at once, whether the reading thread
    // is blocked on a full channel or on standard input (a producer that waits, a terminal).
    std::thread::spawn(move || read_dump(std::io::stdin().lock(), &checker, &send));
    let (counts, result) = write_all(cache, batches, keep_live, &progress, "load", None);
    progress.done();
    result?;
    log.note(&counts.summary());
    Ok(Outcome::Done)
}

/// Reads dump lines from `input`, checks each (JSON, key with the prefix and the backend's
/// limits, value), and sends them in groups; an entry already expired is counted, not sent. A
/// bad line sends what came before it, then the failure naming the line.
fn read_dump(mut input: impl BufRead, checker: &Cache, send: &mpsc::SyncSender<Batch>) {
    let mut group = Grouper::default();
    let mut buf = Vec::new();
    let mut number = 0u64;
    let now = unix_now();
    let failure = loop {
        buf.clear();
        let got = std::io::Read::take(&mut input, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf);
        number += 1;
        match got {
            Ok(0) => break None,
            Ok(_) => {}
            Err(e) => break Some(Error::input(format!("cannot read standard input: {e}"))),
        }
        if buf.len() > MAX_LINE {
            break Some(bad_line(number, format!("it is longer than {} MiB", MAX_LINE >> 20)));
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            break Some(bad_line(number, "it is not UTF-8".into()));
        };
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let line = match parse_line(text) {
            Ok(l) => l,
            Err(why) => break Some(bad_line(number, why)),
        };
        let key = match checker.load_key(&line.key) {
            Ok(k) => k,
            Err(e) => break Some(bad_key(number, e)),
        };
        let entry = Entry { key, value: line.value, expires: line.expires };
        if entry.expires.is_some_and(|e| e <= now) {
            group.expired();
        } else if !group.push(entry, send) {
            return;
        }
    };
    let _ = send.send(group.take());
    let _ = send.send(failure.map_or(Batch::End, Batch::Failed));
}

/// The group the reading side of a load or copy is filling: closed at [`GROUP`] entries read
/// or [`GROUP_BYTES`] of keys and values.
#[derive(Default)]
struct Grouper {
    entries: Vec<Entry>,
    read: u64,
    expired: u64,
    bytes: usize,
}

impl Grouper {
    /// An entry read and skipped, its time having passed.
    fn expired(&mut self) {
        self.read += 1;
        self.expired += 1;
    }

    /// Adds an entry, and sends the group once it is full; `false` when the writing side has
    /// gone (nothing more is wanted).
    fn push(&mut self, entry: Entry, send: &mpsc::SyncSender<Batch>) -> bool {
        self.read += 1;
        self.bytes += entry.key.len() + entry.value.len();
        self.entries.push(entry);
        if self.read < GROUP as u64 && self.bytes < GROUP_BYTES {
            return true;
        }
        send.send(self.take()).is_ok()
    }

    /// The group so far, as a batch; the grouper starts a new one.
    fn take(&mut self) -> Batch {
        let taken = std::mem::take(self);
        self.entries.reserve(GROUP);
        Batch::Entries { entries: taken.entries, read: taken.read, expired: taken.expired }
    }
}

fn bad_line(number: u64, why: String) -> Error {
    Error::input(format!("line {number} of the dump is not an entry: {why}"))
}

/// A key the cache refuses, on line `number`: one message that names the line and says why
/// (a context would show only with `-v`: the one-line error shows the outermost message and
/// the root cause), with the refusal's kind and hint.
fn bad_key(number: u64, refused: Error) -> Error {
    let why = refused.chain().last().cloned().unwrap_or_default();
    let mut e = Error::new(refused.kind(), anyhow::anyhow!("line {number} of the dump is not an entry: {why}"));
    if let Some(hint) = refused.hint() {
        e = e.with_hint(hint);
    }
    e
}

/// The cache the file `config` alone describes (`copy --to`, `diff --to`): no command-line
/// option and no `CACHE_*` or `KINTO_CACHE_*` variable applies to it, nor libpq's `PG*`
/// variables (they describe the source's server); `HOME` and `XDG_CACHE_HOME` still locate
/// `~/.pgpass` and the default SQLite file.
pub fn open_target(config: &std::path::Path, log: &Log) -> Result<Cache> {
    let env = |k: &str| match k {
        "HOME" | "XDG_CACHE_HOME" => std::env::var(k).ok(),
        _ => None,
    };
    let mut warn = |m: String| log.warn(&m);
    let layer =
        crate::settings::file_layer(config, &mut warn).map_err(|e| e.context(format!("--to {}", config.display())))?;
    let settings = crate::settings::Settings::from_layer_with(&layer, &|| crate::settings::default_sqlite_path(&env))
        .map_err(|e| e.context(format!("--to {}", config.display())))?;
    let target = crate::backend::open_with(&settings, &env, 1)?;
    log.note(&format!(
        "target: backend {} at {}, prefix {:?}",
        target.backend_name(),
        target.location(),
        settings.prefix
    ));
    for w in target.warnings() {
        log.warn(&w);
    }
    Ok(target)
}

/// `copy --to CONFIG [PATTERN]`: `dump | load` in one process, the source walked on one thread
/// while the target is written on another.
pub fn copy(
    source: &mut Cache,
    target: &mut Cache,
    pattern: Option<&str>,
    keep_live: bool,
    log: &Log,
) -> Result<Outcome> {
    let source_label = format!("{} at {}", source.backend_name(), source.location());
    let pattern = pattern.map(Pattern::parse).transpose()?.unwrap_or_default();
    let checker = target.sibling_same_prefix()?;
    let progress = Progress::new(log, "copy", total(source, &pattern, log));
    let (send, batches) = mpsc::sync_channel::<Batch>(IN_FLIGHT);
    let mut unreadable = Unreadable::default();
    let (counts, result) = std::thread::scope(|scope| {
        let unreadable = &mut unreadable;
        scope.spawn(move || {
            let mut group = Grouper::default();
            let mut refused = None;
            let walked = source.entries(&pattern, &mut |key, stored, expires| {
                let value = match value::parse_stored(stored).and_then(|doc| value::encode(&doc)) {
                    Ok(v) => v,
                    Err(e) => {
                        unreadable.add(key, e.0, log);
                        return Ok(true);
                    }
                };
                let key = match checker.load_key(key) {
                    Ok(k) => k,
                    Err(e) => {
                        refused = Some(e.context("a source key the target cannot hold"));
                        return Ok(false);
                    }
                };
                Ok(group.push(Entry { key, value, expires }, &send))
            });
            let _ = send.send(group.take());
            let _ = send.send(match (walked, refused) {
                (_, Some(e)) => Batch::Refused(e),
                (Ok(()), None) => Batch::End,
                (Err(e), None) => Batch::Failed(e),
            });
        });
        write_all(target, batches, keep_live, &progress, "copy", Some(&source_label))
    });
    progress.done();
    result?;
    log.note(&counts.summary());
    unreadable.result("copy")?;
    Ok(Outcome::Done)
}

/// One side of a diff, spooled: [`BUCKETS`] temporary files of dump lines, by key hash.
struct Spool {
    files: Vec<std::io::BufWriter<std::fs::File>>,
}

fn bucket_of(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    // FNV-1a would do as well; the standard hasher with fixed keys is stable within a run.
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % BUCKETS as u64) as usize
}

fn spool_error(e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Backend,
        anyhow::anyhow!(
            "cannot spool the entries to compare in a temporary file in {}: {e}",
            std::env::temp_dir().display()
        ),
    )
    .with_hint("set TMPDIR to a folder kcache can write to, with room for both caches")
}

impl Spool {
    /// Walks `cache` into buckets.
    fn of(
        cache: &mut Cache,
        pattern: &Pattern,
        progress: &Progress,
        unreadable: &mut Unreadable,
        log: &Log,
    ) -> Result<Spool> {
        let mut files = Vec::with_capacity(BUCKETS);
        for _ in 0..BUCKETS {
            files.push(std::io::BufWriter::with_capacity(8192, tempfile::tempfile().map_err(spool_error)?));
        }
        let mut line = Vec::with_capacity(256);
        let mut n = 0u64;
        cache.entries(pattern, &mut |key, stored, expires| {
            line.clear();
            if let Err(why) = write_line(&mut line, key, stored, expires) {
                unreadable.add(key, why, log);
                return Ok(true);
            }
            files[bucket_of(key)].write_all(&line).map_err(spool_error)?;
            n += 1;
            if n.is_multiple_of(256) {
                progress.add(256);
            }
            Ok(true)
        })?;
        Ok(Spool { files })
    }

    /// The buckets, to read back from their start.
    fn into_readers(self) -> Result<Vec<std::io::BufReader<std::fs::File>>> {
        use std::io::Seek;
        self.files
            .into_iter()
            .map(|w| {
                let mut f = w.into_inner().map_err(|e| spool_error(e.into_error()))?;
                f.seek(std::io::SeekFrom::Start(0)).map_err(spool_error)?;
                Ok(std::io::BufReader::with_capacity(64 * 1024, f))
            })
            .collect()
    }
}

/// A spooled line, read back (the line was written by [`write_line`]).
fn read_spooled(text: &str) -> Result<(String, Box<serde_json::value::RawValue>, Option<f64>)> {
    let bad =
        |why: String| Error::new(ErrorKind::Backend, anyhow::anyhow!("a spooled entry cannot be read back: {why}"));
    let doc = value::parse_within(text, value::MAX_DEPTH + 1).map_err(|e| bad(e.0))?;
    let Value::Object(map) = doc else { return Err(bad("not an object".into())) };
    let key = map.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
    let expires = map.get("expires").and_then(Value::as_f64);
    let value = map.get("value").map(value::encode).transpose().map_err(|e| bad(e.0))?.unwrap_or_default();
    let raw = serde_json::value::RawValue::from_string(value).map_err(|e| bad(e.to_string()))?;
    Ok((key, raw, expires))
}

/// `diff --to CONFIG [PATTERN] [--ttl-tolerance DUR]`: one JSON line per difference; status 1
/// when there is one.
pub fn diff(
    source: &mut Cache,
    target: &mut Cache,
    pattern: Option<&str>,
    tolerance: std::time::Duration,
    log: &Log,
) -> Result<Outcome> {
    let pattern = pattern.map(Pattern::parse).transpose()?.unwrap_or_default();
    let progress = Progress::new(log, "diff", None);
    let mut unreadable = Unreadable::default();
    // Both sides are walked at once, each on its thread.
    let (left, right) = std::thread::scope(|scope| {
        let (pattern, progress) = (&pattern, &progress);
        let mut other = Unreadable::default();
        let right = scope.spawn(move || {
            let spool = Spool::of(target, pattern, progress, &mut other, log);
            (spool, other)
        });
        let left = Spool::of(source, pattern, progress, &mut unreadable, log);
        let (right, other) = right.join().unwrap_or_else(|_| {
            (Err(Error::new(ErrorKind::Backend, anyhow::anyhow!("the target's walk stopped"))), Unreadable::default())
        });
        unreadable.merge(other);
        (left, right)
    });
    let (left, right) = (left?.into_readers()?, right?.into_readers()?);
    progress.done();
    let mut lines = Lines::new(std::io::stdout().lock());
    let mut differences = 0u64;
    for (mut l, mut r) in left.into_iter().zip(right) {
        if let Err(e) = compare_bucket(&mut l, &mut r, tolerance.as_secs_f64(), &mut lines, &mut differences) {
            return output_closed(e);
        }
    }
    if let Err(e) = lines.flush() {
        return output_closed(e);
    }
    log.note(&format!("{differences} differences"));
    unreadable.result("diff")?;
    Ok(if differences == 0 { Outcome::Done } else { Outcome::Missing })
}

/// A failed write of differences. A reader that went away (`diff | head -1`) was given one at
/// least, so the caches differ: status 1, quietly (a quiet 0 would tell a script that they are
/// the same).
/// A spooled bucket: each line read back, given to `each`.
fn each_spooled(
    bucket: &mut std::io::BufReader<std::fs::File>,
    each: &mut dyn FnMut(String, Box<serde_json::value::RawValue>, Option<f64>) -> Result<()>,
) -> Result<()> {
    let mut text = String::new();
    loop {
        text.clear();
        if bucket.read_line(&mut text).map_err(spool_error)? == 0 {
            return Ok(());
        }
        let (key, value, expires) = read_spooled(text.trim_end())?;
        each(key, value, expires)?;
    }
}

/// Compares one bucket of each side (the source's held in memory, the target's streamed),
/// writing a line per difference and counting them.
fn compare_bucket(
    source: &mut std::io::BufReader<std::fs::File>,
    target: &mut std::io::BufReader<std::fs::File>,
    tol: f64,
    lines: &mut Lines<impl Write>,
    differences: &mut u64,
) -> Result<()> {
    use std::collections::{HashMap, HashSet};
    let mut here: HashMap<String, (Box<serde_json::value::RawValue>, Option<f64>)> = HashMap::new();
    each_spooled(source, &mut |key, value, expires| {
        here.insert(key, (value, expires));
        Ok(())
    })?;
    // A key a walk gives twice (memcached's `metadump all` may) is compared once.
    let mut matched: HashSet<String> = HashSet::new();
    let mut emit = |lines: &mut Lines<_>, line: Value| {
        *differences += 1;
        let _ = serde_json::to_writer(&mut lines.buf, &line);
        lines.buf.push(b'\n');
        lines.maybe_flush()
    };
    each_spooled(target, &mut |key, value, expires| {
        let line = match here.remove(&key) {
            None if matched.contains(&key) => None,
            None => Some(serde_json::json!({"key": key, "only_in": "target"})),
            Some((v, _)) if !same_document(v.get(), value.get()) => {
                Some(serde_json::json!({"key": key, "differs": "value", "source": v, "target": value}))
            }
            Some((_, e)) if !same_expiry(e, expires, tol) => Some(serde_json::json!({
                "key": key, "differs": "expires",
                "source": e.map(|e| raw_number(&expiry_text(e))), "target": expires.map(|e| raw_number(&expiry_text(e)))
            })),
            Some(_) => None,
        };
        matched.insert(key);
        line.map_or(Ok(()), |line| emit(lines, line))
    })?;
    let mut only: Vec<String> = here.into_keys().collect();
    only.sort_unstable();
    for key in only {
        emit(lines, serde_json::json!({"key": key, "only_in": "source"}))?;
    }
    Ok(())
}

fn output_closed(e: Error) -> Result<Outcome> {
    if e.kind() == ErrorKind::BrokenPipe { Ok(Outcome::Missing) } else { Err(e) }
}

/// Two values (JSON text as kcache writes it) are the same document: the same text, or the
/// same JSON value (an object's members in another order; JSON objects are unordered).
fn same_document(a: &str, b: &str) -> bool {
    let parse = |t: &str| value::parse_within(t, value::MAX_DEPTH + 1).ok();
    a == b || matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
}

/// Expiry times are equal within `tol` seconds; never-expiring only equals never-expiring.
fn same_expiry(a: Option<f64>, b: Option<f64>, tol: f64) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= tol + 1e-6,
        _ => false,
    }
}

/// A number written exactly as `text` (arbitrary precision keeps it so).
fn raw_number(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_and_read_back() {
        let mut out = Vec::new();
        write_line(&mut out, "é k", r#"{"a":[1,"\u00E9"]}"#, Some(1795617795.3094)).unwrap();
        write_line(&mut out, "n", "12345678901234567890123", None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"key\":\"é k\",\"value\":{\"a\":[1,\"\\u00E9\"]},\"expires\":1795617795.309}\n\
             {\"key\":\"n\",\"value\":12345678901234567890123,\"expires\":null}\n"
        );
        let lines: Vec<Line> = text.lines().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(
            lines[0],
            Line { key: "é k".into(), value: r#"{"a":[1,"\u00E9"]}"#.into(), expires: Some(1795617795.309) }
        );
        assert_eq!(lines[1].value, "12345678901234567890123", "large integers stay exact");
        assert_eq!(lines[1].expires, None);
    }

    #[test]
    fn stored_text_on_several_lines_is_reencoded() {
        let mut out = Vec::new();
        write_line(&mut out, "k", "{\"a\":\n 1}", Some(1.0)).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"key\":\"k\",\"value\":{\"a\":1},\"expires\":1}\n");
        assert!(write_line(&mut Vec::new(), "k", "not json", None).is_err());
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let why = |l: &str| parse_line(l).unwrap_err();
        assert!(why("nope").contains("not JSON"));
        assert!(why("[1]").contains("not a JSON object"));
        assert!(why(r#"{"value":1,"expires":null}"#).contains("no \"key\""));
        assert!(why(r#"{"key":1,"value":1,"expires":null}"#).contains("not a string"));
        assert!(why(r#"{"key":"k","expires":null}"#).contains("no \"value\""));
        assert!(why(r#"{"key":"k","value":1}"#).contains("no \"expires\""));
        assert!(why(r#"{"key":"k","value":1,"expires":"soon"}"#).contains("neither a number"));
        assert!(why(r#"{"key":"k","value":1e999,"expires":null}"#).contains("cannot be stored"));
        assert!(why(r#"{"key":"k","value":1,"expires":1e13}"#).contains("past the year 9999"));
        assert!(parse_line(r#"{"key":"k","value":1,"expires":-5}"#).is_ok(), "long expired: skipped later");
        // Other fields are ignored; the value is written as kcache writes it.
        let l = parse_line(r#"{"key":"k","value":{"b": "é"},"expires":5,"other":true}"#).unwrap();
        assert_eq!(l.value, r#"{"b":"\u00E9"}"#);
    }

    #[test]
    fn expiry_keeps_milliseconds() {
        assert_eq!(expiry_text(1795617795.0), "1795617795");
        assert_eq!(expiry_text(1795617795.1), "1795617795.1");
        assert_eq!(expiry_text(1795617795.30951), "1795617795.31");
        assert_eq!(expiry_text(1795617795.0004), "1795617795");
        assert!(same_expiry(Some(10.0), Some(12.0), 2.0));
        assert!(!same_expiry(Some(10.0), Some(12.5), 2.0));
        assert!(!same_expiry(None, Some(12.5), 2.0));
    }

    #[test]
    fn documents_compare_as_json_values() {
        assert!(same_document(r#"{"a":1,"b":{"c":[1,2],"d":null}}"#, r#"{"b":{"d":null,"c":[1,2]},"a":1}"#));
        assert!(!same_document(r#"{"a":[1,2]}"#, r#"{"a":[2,1]}"#), "arrays are ordered");
        assert!(!same_document(r#"{"a":1}"#, r#"{"a":"1"}"#));
        assert!(!same_document(r#"{"a":1}"#, r#"{"a":1,"b":1}"#));
    }

    #[test]
    fn buckets_spread_keys() {
        let mut seen = [0u32; BUCKETS];
        for i in 0..10_000 {
            seen[bucket_of(&format!("key:{i}"))] += 1;
        }
        assert!(seen.iter().all(|n| (30..=130).contains(n)), "{seen:?}");
    }
}
