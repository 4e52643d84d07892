//! `kcache batch`: many commands from standard input over one set of connections.
//!
//! Protocol (SPEC, section Batch): one command per line, words split as a POSIX shell splits
//! them (quotes and backslashes, no expansion); blank lines and `#` lines are skipped. One JSON
//! object per command comes out, in input order:
//! `{"line": N, "status": S, "value": V, "error": "..."}`. Streaming: a line is read, run and
//! written without holding the rest of the input, and output is flushed whenever kcache is about
//! to wait for more input, so a coprocess sees each answer in time.
//!
//! With `--jobs N`, commands run on N workers, each with its own connection from the shared
//! pool. A command goes to the worker its key hashes to, so commands on one key keep their input
//! order; `flush`, `purge` and `ping` wait for everything before them and run alone. Results
//! are put back in input order before they are written; at most [`WINDOW`] commands are in
//! flight, so memory stays flat whatever the input size.

use crate::backend::{Cache, GroupOp, GroupResult};
use crate::error::{Error, ErrorKind, excerpt};
use crate::ttl::{self, Remaining, Ttl};
use crate::value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};

/// Commands in flight at most with `--jobs` (bounded memory).
pub const WINDOW: usize = 4096;

/// The stack of each batch thread: room for a value nested [`crate::value::MAX_DEPTH`] levels
/// deep even in a debug build (the default 2 MiB holds it only in a release build).
pub const WORKER_STACK: usize = 8 << 20;

/// The longest batch line: a line holds one command, and memory stays within a few times this
/// whatever the input (a 200 MB line took 786 MB). A larger value goes through `set KEY - TTL`.
pub const MAX_LINE: usize = 16 << 20;

/// Consecutive keyed commands sent together in one group (one pipeline, one multi-statement
/// query): enough to hide the round trip, small enough to keep answers flowing.
pub const GROUP: usize = 256;

/// One parsed batch command. Values are already encoded (Kinto's JSON text).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Get { key: String },
    Set { key: String, value: String, ttl: Ttl },
    Ttl { key: String, ms: bool },
    Expire { key: String, ttl: Ttl },
    Delete { key: String },
    Flush { all: bool },
    Purge,
    Ping,
}

impl Op {
    /// The key this command touches; `None` for the commands that act on everything.
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Get { key }
            | Op::Set { key, .. }
            | Op::Ttl { key, .. }
            | Op::Expire { key, .. }
            | Op::Delete { key } => Some(key),
            Op::Flush { .. } | Op::Purge | Op::Ping => None,
        }
    }
}

/// What one command gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub line: u64,
    pub status: u8,
    /// JSON text of `value`.
    pub value: Option<String>,
    pub error: Option<String>,
    pub hint: Option<String>,
}

impl Reply {
    fn ok(line: u64, value: Option<String>) -> Reply {
        Reply { line, status: 0, value, error: None, hint: None }
    }
    fn missing(line: u64, value: Option<String>) -> Reply {
        Reply { line, status: 1, value, error: None, hint: None }
    }
    fn failed(line: u64, e: &Error) -> Reply {
        let chain = e.chain();
        let what = chain.first().cloned().unwrap_or_default();
        let message = match chain.last() {
            Some(root) if chain.len() > 1 => format!("{what}: {root}"),
            _ => what,
        };
        Reply {
            line,
            status: e.kind().status().max(2),
            value: None,
            error: Some(crate::error::redact(&message)),
            hint: e.hint().map(str::to_string),
        }
    }

    /// The output line, without its newline.
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\"line\":{},\"status\":{}", self.line, self.status);
        if let Some(v) = &self.value {
            out.push_str(",\"value\":");
            out.push_str(v);
        }
        if let Some(e) = &self.error {
            out.push_str(",\"error\":");
            out.push_str(&serde_json::Value::String(e.clone()).to_string());
        }
        if let Some(h) = &self.hint {
            out.push_str(",\"hint\":");
            out.push_str(&serde_json::Value::String(h.clone()).to_string());
        }
        out.push('}');
        out
    }
}

/// Parses one input line: `Ok(None)` for a blank or comment line.
pub fn parse_line(line: &str) -> Result<Option<Op>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    // Most lines hold no quoting at all: split them on blanks, as the shell would.
    let words = if trimmed.contains(['\'', '"', '\\', '#']) {
        shlex::split(trimmed).ok_or("unbalanced quotes or a trailing backslash")?
    } else {
        trimmed.split_ascii_whitespace().map(str::to_string).collect()
    };
    let Some((command, rest)) = words.split_first() else { return Ok(None) };
    let mut json = false;
    let mut ms = false;
    let mut all = false;
    let mut args: Vec<&str> = Vec::new();
    let mut only_args = false;
    for w in rest {
        match w.as_str() {
            "--" if !only_args => only_args = true,
            "--json" if !only_args => json = true,
            "--ms" if !only_args => ms = true,
            "--all" if !only_args => all = true,
            "-n" | "--no-newline" if !only_args => {}
            flag if !only_args && flag.starts_with("--") => {
                return Err(format!("unknown option {} for {}", excerpt(flag), excerpt(command)));
            }
            arg => args.push(arg),
        }
    }
    let allowed: &[&str] = match command.as_str() {
        "get" | "delete" => &["--json", "-n", "--no-newline"],
        "set" => &["--json"],
        "ttl" => &["--ms"],
        "flush" => &["--all"],
        _ => &[],
    };
    for (flag, on) in [("--json", json), ("--ms", ms), ("--all", all)] {
        if on && !allowed.contains(&flag) {
            return Err(format!("unknown option '{flag}' for {}", excerpt(command)));
        }
    }
    let want = |n: usize, usage: &str| -> Result<(), String> {
        if args.len() == n { Ok(()) } else { Err(format!("usage: {usage}")) }
    };
    let ttl_arg = |s: &str| s.parse::<Ttl>().map_err(|e| format!("bad TTL: {e}"));
    Ok(Some(match command.as_str() {
        "get" => {
            want(1, "get KEY")?;
            Op::Get { key: args[0].to_string() }
        }
        "set" => {
            want(3, "set [--json] KEY VALUE TTL")?;
            if args[1] == "-" {
                return Err("set KEY - TTL (standard input) is not allowed in a batch".into());
            }
            let value = if json {
                value::encode_json(args[1])
                    .map_err(|e| format!("VALUE is not a JSON document kcache can store: {e}"))?
            } else {
                value::encode_string(args[1])
            };
            Op::Set { key: args[0].to_string(), value, ttl: ttl_arg(args[2])? }
        }
        "ttl" => {
            want(1, "ttl [--ms] KEY")?;
            Op::Ttl { key: args[0].to_string(), ms }
        }
        "expire" => {
            want(2, "expire KEY TTL")?;
            Op::Expire { key: args[0].to_string(), ttl: ttl_arg(args[1])? }
        }
        "delete" => {
            want(1, "delete KEY")?;
            Op::Delete { key: args[0].to_string() }
        }
        "flush" => {
            want(0, "flush [--all]")?;
            Op::Flush { all }
        }
        "purge" => {
            want(0, "purge")?;
            Op::Purge
        }
        "ping" => {
            want(0, "ping")?;
            Op::Ping
        }
        other => {
            return Err(format!(
                "unknown command {} (a batch runs get, set, ttl, expire, delete, flush, purge, ping)",
                excerpt(other)
            ));
        }
    }))
}

/// A stored value as the `value` of a reply: the JSON document (checked, compact). For a value
/// `delete` removed (`removed`: its key), one that cannot be shown is status 5: the entry is gone.
fn document(stored: &str, removed: Option<&str>) -> Result<String, Error> {
    // What kcache and Kinto write is compact JSON on one line: check it and pass it through.
    // Anything else (a writer that pretty-printed) is parsed and written compact.
    if !stored.contains(['\n', '\r'])
        && value::within_depth(stored)
        && serde_json::from_str::<&serde_json::value::RawValue>(stored).is_ok()
    {
        return Ok(stored.trim().to_string());
    }
    match value::parse_stored(stored) {
        Ok(doc) => Ok(doc.to_string()),
        Err(e) if let Some(key) = removed => Err(Error::new(
            ErrorKind::Unshown,
            anyhow::anyhow!("the entry was removed, but its value cannot be shown: {e}"),
        )
        .context(format!("delete {}", excerpt(key)))),
        Err(e) => Err(Error::backend("read the stored value", anyhow::anyhow!(e))),
    }
}

/// Runs one command on `cache`.
pub fn execute(cache: &mut Cache, line: u64, op: &Op) -> Reply {
    let result = (|| -> Result<Reply, Error> {
        Ok(match op {
            Op::Get { key } => match cache.get(key)? {
                Some(v) => Reply::ok(line, Some(document(&v, None)?)),
                None => Reply::missing(line, None),
            },
            Op::Set { key, value, ttl } => {
                cache.set(key, value, *ttl)?;
                Reply::ok(line, None)
            }
            Op::Ttl { key, ms } => match cache.ttl(key)? {
                Remaining::Missing => Reply::missing(line, Some("-2".into())),
                Remaining::NoExpiry => Reply::ok(line, Some("-1".into())),
                Remaining::Left(d) if *ms => Reply::ok(line, Some(ttl::whole_millis_up(d).to_string())),
                Remaining::Left(d) => Reply::ok(line, Some(ttl::whole_seconds_up(d).to_string())),
            },
            Op::Expire { key, ttl } => {
                if cache.expire(key, *ttl)? {
                    Reply::ok(line, None)
                } else {
                    Reply::missing(line, None)
                }
            }
            Op::Delete { key } => match cache.delete(key)? {
                Some(v) => Reply::ok(line, Some(document(&v, Some(key))?)),
                None => Reply::missing(line, None),
            },
            Op::Flush { all } => {
                cache.flush(*all)?;
                Reply::ok(line, None)
            }
            Op::Purge => {
                cache.purge()?;
                Reply::ok(line, None)
            }
            Op::Ping => {
                cache.ping()?;
                Reply::ok(line, None)
            }
        })
    })();
    result.unwrap_or_else(|e| Reply::failed(line, &e))
}

impl Op {
    /// This command as a group operation, if it is a keyed one.
    fn as_group_op(&self) -> Option<GroupOp<'_>> {
        Some(match self {
            Op::Get { key } => GroupOp::Get(key),
            Op::Set { key, value, ttl } => GroupOp::Set(key, value, *ttl),
            Op::Ttl { key, .. } => GroupOp::Ttl(key),
            Op::Expire { key, ttl } => GroupOp::Expire(key, *ttl),
            Op::Delete { key } => GroupOp::Delete(key),
            Op::Flush { .. } | Op::Purge | Op::Ping => return None,
        })
    }
}

/// The reply for a keyed command from its group result.
fn reply_for(line: u64, op: &Op, result: Result<GroupResult, Error>) -> Reply {
    let reply = (|| -> Result<Reply, Error> {
        Ok(match result? {
            GroupResult::Value(Some(v)) => {
                let removed = if let Op::Delete { key } = op { Some(key.as_str()) } else { None };
                Reply::ok(line, Some(document(&v, removed)?))
            }
            GroupResult::Value(None) => Reply::missing(line, None),
            GroupResult::Stored | GroupResult::Existed(true) => Reply::ok(line, None),
            GroupResult::Existed(false) => Reply::missing(line, None),
            GroupResult::Remaining(r) => {
                let ms = matches!(op, Op::Ttl { ms: true, .. });
                match r {
                    Remaining::Missing => Reply::missing(line, Some("-2".into())),
                    Remaining::NoExpiry => Reply::ok(line, Some("-1".into())),
                    Remaining::Left(d) if ms => Reply::ok(line, Some(ttl::whole_millis_up(d).to_string())),
                    Remaining::Left(d) => Reply::ok(line, Some(ttl::whole_seconds_up(d).to_string())),
                }
            }
        })
    })();
    reply.unwrap_or_else(|e| Reply::failed(line, &e))
}

/// Runs consecutive commands: keyed ones as one group, the others alone, in order. Without
/// `keep_going`, it stops at the first failure, except that commands a backend already sent in
/// the same round trip (a pipeline) have run: their replies are returned too, so the output
/// never hides a write that happened.
pub fn execute_many(cache: &mut Cache, items: &[(u64, Op)], keep_going: bool) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(items.len());
    let mut start = 0;
    while start < items.len() {
        let end =
            items[start..].iter().position(|(_, op)| op.as_group_op().is_none()).map_or(items.len(), |p| start + p);
        if end > start {
            let group: Vec<GroupOp<'_>> = items[start..end].iter().filter_map(|(_, op)| op.as_group_op()).collect();
            let results = cache.run_group_with(&group, !keep_going);
            for ((line, op), result) in items[start..end].iter().zip(results) {
                replies.push(reply_for(*line, op, result));
            }
            if !keep_going && replies.iter().any(|r| r.status >= 2) {
                return replies;
            }
        }
        if end < items.len() {
            let (line, op) = &items[end];
            let reply = execute(cache, *line, op);
            let failed = reply.status >= 2;
            replies.push(reply);
            if failed && !keep_going {
                return replies;
            }
        }
        start = end + 1;
    }
    replies
}

/// How a batch ended: the exit status SPEC gives it.
#[derive(Debug, Default)]
struct Tally {
    worst: u8,
}

impl Tally {
    /// Records a reply; `true` when the batch must stop here.
    fn record(&mut self, r: &Reply, keep_going: bool) -> bool {
        if r.status >= 2 {
            self.worst = self.worst.max(r.status);
            return !keep_going;
        }
        false
    }
}

fn write_reply(out: &mut (impl Write + ?Sized), r: &Reply) -> std::io::Result<()> {
    let mut line = r.to_json();
    line.push('\n');
    out.write_all(line.as_bytes())
}

/// Standard output failed (closed or full) while the batch ran: it stops reading at once, and
/// the message says how far it got (`ran`: the last line whose command ran or was refused).
/// Status 5 whatever the cause: commands may have changed the backend, their replies are lost.
fn lost_output(e: &std::io::Error, ran: u64) -> Error {
    let how_far =
        if ran == 0 { "no command had run".to_string() } else { format!("no command after line {ran} was run") };
    Error::new(ErrorKind::Unshown, anyhow::anyhow!("standard output failed ({e}); {how_far}")).context("batch")
}

/// Reads lines from `input`, numbering them from 1; `Err` for a line that is not UTF-8.
struct Lines<R> {
    input: BufReader<R>,
    number: u64,
    buf: Vec<u8>,
}

impl<R: Read> Lines<R> {
    fn new(input: R) -> Self {
        Lines { input: BufReader::with_capacity(64 * 1024, input), number: 0, buf: Vec::new() }
    }

    /// Whether the next read may block (no whole line buffered): the moment to flush output,
    /// so that a coprocess gets every answer before it sends the next command.
    fn would_wait(&self) -> bool {
        !self.input.buffer().contains(&b'\n')
    }

    fn next_line(&mut self) -> Option<(u64, Result<String, String>)> {
        self.buf.clear();
        let read = (&mut self.input).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut self.buf);
        match read {
            Ok(0) => None,
            Ok(_) if self.buf.len() > MAX_LINE && self.buf.last() != Some(&b'\n') => {
                // Too long: the rest of the line is read and dropped, never held.
                self.number += 1;
                self.buf = Vec::new();
                let mut skipped = MAX_LINE as u64 + 1;
                let rest = loop {
                    let chunk = match self.input.fill_buf() {
                        Ok(chunk) => chunk,
                        Err(e) => break Err(e),
                    };
                    if chunk.is_empty() {
                        break Ok(());
                    }
                    let (n, end) =
                        chunk.iter().position(|&b| b == b'\n').map_or((chunk.len(), false), |i| (i + 1, true));
                    self.input.consume(n);
                    skipped += n as u64 - u64::from(end); // the newline is not part of the line
                    if end {
                        break Ok(());
                    }
                };
                let why = match rest {
                    Ok(()) => format!(
                        "the line is {skipped} bytes long; a batch line holds at most {} MiB \
                         (store a larger value with 'kcache set KEY - TTL')",
                        MAX_LINE >> 20
                    ),
                    Err(e) => format!("cannot read standard input: {e}"),
                };
                Some((self.number, Err(why)))
            }
            Ok(_) => {
                self.number += 1;
                while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                    self.buf.pop();
                }
                let text = String::from_utf8(std::mem::take(&mut self.buf))
                    .map_err(|e| format!("the line is not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()));
                Some((self.number, text))
            }
            Err(e) => {
                self.number += 1;
                Some((self.number, Err(format!("cannot read standard input: {e}"))))
            }
        }
    }
}

/// Runs a batch; returns the exit status SPEC gives it (0 when every command's status was 0 or
/// 1, else the highest status seen).
pub fn run<W: Write + Send>(
    cache: Cache,
    input: impl Read,
    out: &mut W,
    jobs: usize,
    keep_going: bool,
) -> Result<u8, Error> {
    if jobs <= 1 {
        run_serial(cache, input, out, keep_going)
    } else {
        run_parallel(cache, input, out, jobs, keep_going)
    }
}

fn parse_reply(line: u64, text: Result<String, String>) -> Result<Option<Op>, Reply> {
    let failed =
        |m: String| Reply { line, status: 2, value: None, error: Some(format!("line {line}: {m}")), hint: None };
    match text {
        Ok(t) => parse_line(&t).map_err(failed),
        Err(m) => Err(failed(m)),
    }
}

fn run_serial(mut cache: Cache, input: impl Read, out: &mut impl Write, keep_going: bool) -> Result<u8, Error> {
    let mut lines = Lines::new(input);
    let mut tally = Tally::default();
    // Commands read but not run yet: keyed ones wait here to go out together.
    let mut group: Vec<(u64, Op)> = Vec::with_capacity(GROUP);
    let mut stopped = false;
    // The last line whose command ran (or was refused), for a failure of standard output.
    let mut ran: u64 = 0;
    // Runs the group and writes its replies; `true` when the batch must stop.
    let mut run_group = |group: &mut Vec<(u64, Op)>, out: &mut dyn Write, tally: &mut Tally, ran: &mut u64| {
        let replies = execute_many(&mut cache, group, keep_going);
        group.clear();
        *ran = replies.last().map_or(*ran, |r| r.line.max(*ran));
        let mut stop = false;
        for r in &replies {
            write_reply(out, r).map_err(|e| lost_output(&e, *ran))?;
            stop |= tally.record(r, keep_going);
        }
        Ok::<bool, Error>(stop)
    };
    loop {
        if lines.would_wait() || group.len() >= GROUP {
            if !group.is_empty() && run_group(&mut group, out, &mut tally, &mut ran)? {
                stopped = true;
                break;
            }
            if lines.would_wait() {
                out.flush().map_err(|e| lost_output(&e, ran))?;
            }
        }
        let Some((n, text)) = lines.next_line() else { break };
        match parse_reply(n, text) {
            Ok(None) => {}
            Ok(Some(op)) if op.as_group_op().is_some() => group.push((n, op)),
            Ok(Some(op)) => {
                // A barrier: what came before goes first.
                group.push((n, op));
                if run_group(&mut group, out, &mut tally, &mut ran)? {
                    stopped = true;
                    break;
                }
            }
            Err(reply) => {
                // A bad line: nothing after it is sent before its reply is counted.
                if !group.is_empty() && run_group(&mut group, out, &mut tally, &mut ran)? {
                    stopped = true;
                    break;
                }
                ran = n;
                write_reply(out, &reply).map_err(|e| lost_output(&e, ran))?;
                if tally.record(&reply, keep_going) {
                    stopped = true;
                    break;
                }
            }
        }
    }
    if !stopped && !group.is_empty() {
        run_group(&mut group, out, &mut tally, &mut ran)?;
    }
    out.flush().map_err(|e| lost_output(&e, ran))?;
    Ok(tally.worst)
}

/// A counter others can wait on: commands finished by the workers (for barriers), replies
/// written (for the in-flight window). Waiting ends early once the batch stops.
struct Progress {
    done: Mutex<u64>,
    changed: Condvar,
    stop: Arc<AtomicBool>,
}

impl Progress {
    fn new(stop: &Arc<AtomicBool>) -> Arc<Progress> {
        Arc::new(Progress { done: Mutex::new(0), changed: Condvar::new(), stop: Arc::clone(stop) })
    }
    fn add(&self, n: u64) {
        if let Ok(mut d) = self.done.lock() {
            *d += n;
        }
        self.changed.notify_all();
    }
    /// Wakes every waiter (after `stop` was set).
    fn wake(&self) {
        let _guard = self.done.lock();
        self.changed.notify_all();
    }
    fn wait_for(&self, n: u64) {
        let Ok(mut d) = self.done.lock() else { return };
        while *d < n && !self.stop.load(Ordering::SeqCst) {
            d = match self.changed.wait(d) {
                Ok(d) => d,
                Err(_) => return,
            };
        }
    }
}

fn worker_for(key: &str, jobs: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % jobs as u64) as usize
}

fn run_parallel<W: Write + Send>(
    mut cache: Cache,
    input: impl Read,
    out: &mut W,
    jobs: usize,
    keep_going: bool,
) -> Result<u8, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Progress::new(&stop);
    let written = Progress::new(&stop);
    let (reply_tx, reply_rx) = mpsc::channel::<Reply>();
    // The last line whose command ran (or was refused), for a failure of standard output.
    let ran = &AtomicU64::new(0);
    let mut siblings = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        siblings.push(cache.sibling_same_prefix()?);
    }
    std::thread::scope(|scope| -> Result<u8, Error> {
        let mut workers = Vec::with_capacity(jobs);
        let mut senders = Vec::with_capacity(jobs);
        for mut sibling in siblings {
            let (tx, rx) = mpsc::sync_channel::<(u64, Op)>(WINDOW / jobs + 1);
            senders.push(tx);
            let reply_tx = reply_tx.clone();
            let progress = Arc::clone(&progress);
            let stop = Arc::clone(&stop);
            let worker = std::thread::Builder::new().stack_size(WORKER_STACK);
            let worker = worker.spawn_scoped(scope, move || {
                let mut group: Vec<(u64, Op)> = Vec::with_capacity(GROUP);
                while let Ok(first) = rx.recv() {
                    // Whatever else is already queued goes out in the same group.
                    group.push(first);
                    while group.len() < GROUP {
                        match rx.try_recv() {
                            Ok(item) => group.push(item),
                            Err(_) => break,
                        }
                    }
                    if !stop.load(Ordering::SeqCst) {
                        let replies = execute_many(&mut sibling, &group, keep_going);
                        if let Some(last) = replies.last() {
                            ran.fetch_max(last.line, Ordering::SeqCst);
                        }
                        for r in replies {
                            let _ = reply_tx.send(r);
                        }
                    }
                    progress.add(group.len() as u64);
                    group.clear();
                }
            });
            workers.push(worker.map_err(|e| Error::unavailable("start a batch thread", e))?);
        }

        // The writer: puts replies back in input order. Lines that produced no reply (blank,
        // comments) are reported to it as `None` so it can move past them.
        let (order_tx, order_rx) = mpsc::channel::<u64>();
        let writer_stop = Arc::clone(&stop);
        let writer_written = Arc::clone(&written);
        let writer = scope.spawn(move || -> std::io::Result<u8> {
            let w = out;
            // Replies written but not yet counted in `written` (counted in bulk: one wake-up per
            // batch of replies, not one per reply); always counted before the writer may block.
            let mut uncounted: u64 = 0;
            // The next line number to write; before blocking for it, flush and count.
            let next_line = |w: &mut W, uncounted: &mut u64| -> std::io::Result<Option<u64>> {
                match order_rx.try_recv() {
                    Ok(n) => Ok(Some(n)),
                    Err(mpsc::TryRecvError::Disconnected) => Ok(None),
                    Err(mpsc::TryRecvError::Empty) => {
                        w.flush()?;
                        writer_written.add(std::mem::take(uncounted));
                        Ok(order_rx.recv().ok())
                    }
                }
            };
            let mut pending: BTreeMap<u64, Reply> = BTreeMap::new();
            let mut tally = Tally::default();
            let mut next = next_line(w, &mut uncounted)?;
            let result = (|| -> std::io::Result<u8> {
                loop {
                    let reply = match reply_rx.try_recv() {
                        Ok(r) => r,
                        Err(mpsc::TryRecvError::Disconnected) => break,
                        Err(mpsc::TryRecvError::Empty) => {
                            writer_written.add(std::mem::take(&mut uncounted));
                            match reply_rx.recv() {
                                Ok(r) => r,
                                Err(_) => break,
                            }
                        }
                    };
                    pending.insert(reply.line, reply);
                    while let Some(n) = next {
                        let Some(r) = pending.remove(&n) else { break };
                        write_reply(w, &r)?;
                        uncounted += 1;
                        if tally.record(&r, keep_going) {
                            return Ok(tally.worst);
                        }
                        next = next_line(w, &mut uncounted)?;
                    }
                    if pending.is_empty() {
                        w.flush()?;
                    }
                }
                Ok(tally.worst)
            })();
            // However the writer ends, nothing more is run or waited for.
            writer_stop.store(true, Ordering::SeqCst);
            writer_written.add(uncounted);
            writer_written.wake();
            let flushed = w.flush();
            let status = result?;
            flushed?;
            Ok(status)
        });

        let mut lines = Lines::new(input);
        let mut dispatched: u64 = 0;
        let mut replies_due: u64 = 0;
        while let Some((n, text)) = lines.next_line() {
            // Bounded memory: at most WINDOW replies between reading and writing.
            written.wait_for(replies_due.saturating_sub(WINDOW as u64));
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let op = match parse_reply(n, text) {
                Ok(None) => continue,
                Ok(Some(op)) => op,
                Err(reply) => {
                    replies_due += 1;
                    ran.fetch_max(n, Ordering::SeqCst);
                    let _ = order_tx.send(n);
                    let _ = reply_tx.send(reply);
                    continue;
                }
            };
            replies_due += 1;
            let _ = order_tx.send(n);
            match op.key() {
                Some(key) => {
                    let w = worker_for(key, jobs);
                    dispatched += 1;
                    if senders[w].send((n, op)).is_err() {
                        break;
                    }
                }
                None => {
                    // A barrier: everything before it first, then it alone.
                    progress.wait_for(dispatched);
                    if stop.load(Ordering::SeqCst) {
                        break; // the batch stopped while this one waited: it must not run
                    }
                    let reply = execute(&mut cache, n, &op);
                    ran.fetch_max(n, Ordering::SeqCst);
                    let _ = reply_tx.send(reply);
                }
            }
        }
        drop(senders);
        drop(order_tx);
        for w in workers {
            let _ = w.join();
        }
        drop(reply_tx);
        match writer.join() {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err(lost_output(&e, ran.load(Ordering::SeqCst))),
            Err(_) => Err(Error::input("the batch writer failed")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(line: &str) -> Op {
        parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}")).unwrap_or_else(|| panic!("{line}: skipped"))
    }

    #[test]
    fn words_split_as_a_shell_does() {
        assert_eq!(
            op(r#"set k "hello world" 60"#),
            Op::Set { key: "k".into(), value: value::encode_string("hello world"), ttl: "60".parse().unwrap() }
        );
        assert_eq!(
            op(r#"set 'a b' it\'s 1m"#),
            Op::Set { key: "a b".into(), value: value::encode_string("it's"), ttl: "1m".parse().unwrap() }
        );
        assert_eq!(
            op(r#"set --json k '"l1\nl2 é"' 5"#),
            Op::Set { key: "k".into(), value: r#""l1\nl2 \u00E9""#.into(), ttl: "5".parse().unwrap() }
        );
        assert_eq!(op("ttl --ms k"), Op::Ttl { key: "k".into(), ms: true });
        assert_eq!(op("flush --all"), Op::Flush { all: true });
        assert_eq!(op("get -- --json"), Op::Get { key: "--json".into() });
    }

    #[test]
    fn blank_and_comment_lines_are_skipped() {
        for l in ["", "   ", "# set k v 1", "  # x"] {
            assert_eq!(parse_line(l), Ok(None));
        }
    }

    #[test]
    fn bad_lines_say_why() {
        for (l, needle) in [
            ("set k - 60", "not allowed"),
            ("set k v", "usage"),
            ("set k v 10x", "bad TTL"),
            ("set k v -1", "bad TTL"),
            ("set --json k {x 60", "JSON"),
            ("frobnicate k", "unknown command"),
            ("get --ms k", "unknown option"),
            ("get --frob k", "unknown option"),
            ("set k 'unterminated 60", "quotes"),
            ("migrate", "unknown command"),
        ] {
            let e = parse_line(l).unwrap_err();
            assert!(e.contains(needle), "{l}: {e}");
        }
    }

    #[test]
    fn replies_are_json() {
        let r = Reply { line: 3, status: 0, value: Some("{\"a\":1}".into()), error: None, hint: None };
        assert_eq!(r.to_json(), r#"{"line":3,"status":0,"value":{"a":1}}"#);
        let r = Reply { line: 4, status: 2, value: None, error: Some("bad \"x\"".into()), hint: None };
        let parsed: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(parsed["error"], "bad \"x\"");
    }
}
