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

/// What a command gave, for a one-shot command's output and a batch reply alike: its status
/// (0, or 1 for a missing key) and its `value`, the JSON text a batch reply holds (a document
/// for `get` and `delete`, the number `ttl` prints).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub missing: bool,
    pub value: Option<String>,
    /// `purge`: how many expired entries it removed (for `-v`; not part of a reply).
    pub purged: Option<u64>,
}

impl Answer {
    fn done(value: Option<String>) -> Answer {
        Answer { missing: false, value, purged: None }
    }
    fn missing(value: Option<String>) -> Answer {
        Answer { missing: true, value, purged: None }
    }
}

/// One command's outcome, with its line.
#[derive(Debug, Clone)]
pub struct Reply {
    pub line: u64,
    pub result: Result<Answer, Error>,
}

impl Reply {
    /// The exit status the one-shot command would have had.
    pub fn status(&self) -> u8 {
        match &self.result {
            Ok(a) => u8::from(a.missing),
            Err(e) => e.kind().status().max(2),
        }
    }

    /// The output line, without its newline: `{"line":N,"status":S,"value":V}`, or with
    /// `error` (what happened and its root cause, on one line, no password) and `hint`.
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\"line\":{},\"status\":{}", self.line, self.status());
        let quoted = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        match &self.result {
            Ok(Answer { value: Some(v), .. }) => {
                out.push_str(",\"value\":");
                out.push_str(v);
            }
            Ok(_) => {}
            Err(e) => {
                let chain = e.chain();
                let what = chain.first().cloned().unwrap_or_default();
                let message = match chain.last() {
                    Some(root) if chain.len() > 1 => format!("{what}: {root}"),
                    _ => what,
                };
                out.push_str(",\"error\":");
                out.push_str(&quoted(&crate::error::redact(&message)));
                if let Some(h) = e.hint() {
                    out.push_str(",\"hint\":");
                    out.push_str(&quoted(h));
                }
            }
        }
        out.push('}');
        out
    }
}

thread_local! {
    /// The batch line parser, built once per thread (see [`crate::cli::batch_parser`]).
    static PARSER: std::cell::RefCell<clap::Command> = std::cell::RefCell::new(crate::cli::batch_parser());
}

/// Parses one input line: `Ok(None)` for a blank or comment line. Words are split as a POSIX
/// shell splits them; the grammar is the command line's own: the clap definitions of the
/// commands a batch allows ([`crate::cli::batch_parser`]), so a flag or an argument means in a
/// batch what it means on the command line.
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
    if words.is_empty() {
        return Ok(None);
    }
    if let Some(op) = plain(&words) {
        return Ok(Some(op));
    }
    let command = PARSER.with(|parser| {
        let mut parser = parser.borrow_mut();
        let matches = parser.try_get_matches_from_mut(&words).map_err(|e| clap_message(&e, &words, &parser))?;
        <crate::cli::Command as clap::FromArgMatches>::from_arg_matches(&matches)
            .map_err(|e| clap_message(&e, &words, &parser))
    })?;
    Op::from_command(command).map(Some)
}

/// The commonest lines, `get K`, `delete K`, `ttl K`, `set K V T` and `expire K T` with no word
/// that starts with `-`, read without clap: clap takes about 2 µs a line, which would cap a
/// Redis batch near 450,000 commands/s where it runs 940,000. Only what clap would read the same
/// way is taken here (anything else, an error included, goes to clap, for its message); the
/// property test `hostile::batch_plain_lines_parse_as_clap_parses_them` holds the two together.
fn plain(words: &[String]) -> Option<Op> {
    if words.iter().any(|w| w.starts_with('-')) {
        return None;
    }
    Some(match (words[0].as_str(), &words[1..]) {
        ("get", [key]) => Op::Get { key: key.clone() },
        ("delete", [key]) => Op::Delete { key: key.clone() },
        ("ttl", [key]) => Op::Ttl { key: key.clone(), ms: false },
        ("set", [key, v, ttl]) => Op::Set { key: key.clone(), value: value::encode_string(v), ttl: ttl.parse().ok()? },
        ("expire", [key, ttl]) => Op::Expire { key: key.clone(), ttl: ttl.parse().ok()? },
        _ => return None,
    })
}

/// Parses `words` with clap alone (no shortcut), for the property test that compares the two.
pub fn parse_words_with_clap(words: &[String]) -> Result<Op, String> {
    PARSER
        .with(|parser| {
            let mut parser = parser.borrow_mut();
            let matches = parser.try_get_matches_from_mut(words).map_err(|e| clap_message(&e, words, &parser))?;
            <crate::cli::Command as clap::FromArgMatches>::from_arg_matches(&matches)
                .map_err(|e| clap_message(&e, words, &parser))
        })
        .and_then(Op::from_command)
}

/// clap's error for a batch line as one line of text: the problem, naming the culprit (at most
/// 100 characters of it), and the command's usage where arguments are missing or extra.
fn clap_message(e: &clap::Error, words: &[String], parser: &clap::Command) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind as K};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    let command = words.first().map(String::as_str).unwrap_or_default();
    let usage = || {
        let usage = parser.find_subcommand(command).map(|c| c.clone().render_usage().to_string()).unwrap_or_default();
        let usage = usage.trim().trim_start_matches("Usage:").trim().replacen("batch ", "", 1);
        format!("usage: {usage}")
    };
    match e.kind() {
        K::InvalidSubcommand => {
            format!("unknown command {} (a batch runs {})", excerpt(command), crate::cli::BATCH_COMMANDS.join(", "))
        }
        K::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg).unwrap_or_default();
            if arg.starts_with('-') {
                format!("unknown option {} for {command}", excerpt(&arg))
            } else {
                format!("unexpected argument {}; {}", excerpt(&arg), usage())
            }
        }
        K::ValueValidation | K::InvalidValue => {
            let arg = context(ContextKind::InvalidArg).unwrap_or_default();
            let arg = arg.trim_matches(['<', '>']).to_lowercase();
            let why = std::error::Error::source(e).map(ToString::to_string).unwrap_or_else(|| e.kind().to_string());
            if arg == "ttl" { format!("bad TTL: {why}") } else { format!("bad {arg}: {why}") }
        }
        K::MissingRequiredArgument | K::TooManyValues | K::WrongNumberOfValues | K::MissingSubcommand => usage(),
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error:").trim().to_string();
            excerpt(&first).trim_matches('\'').to_string()
        }
    }
}

impl Op {
    /// A command of the command line as a batch command: its value encoded as Kinto stores it,
    /// `set KEY - TTL` refused (standard input is the batch's), the commands a batch does not
    /// run refused.
    pub fn from_command(command: crate::cli::Command) -> Result<Op, String> {
        use crate::cli::{Command as C, ExpireArgs, FlushArgs, SetArgs, TtlArgs};
        Ok(match command {
            C::Get(a) => Op::Get { key: a.key },
            C::Delete(a) => Op::Delete { key: a.key },
            C::Ttl(TtlArgs { ms, key }) => Op::Ttl { key, ms },
            C::Expire(ExpireArgs { key, ttl }) => Op::Expire { key, ttl },
            C::Set(SetArgs { json, key, value, ttl }) => {
                if value == "-" {
                    return Err("set KEY - TTL (standard input) is not allowed in a batch".into());
                }
                Op::Set { key, value: encode(json, &value, "VALUE")?, ttl }
            }
            C::Flush(FlushArgs { pattern: Some(_), .. }) => {
                return Err("flush --match is not allowed in a batch (run it as a command of its own)".into());
            }
            C::Flush(FlushArgs { all, .. }) => Op::Flush { all },
            C::Purge => Op::Purge,
            C::Ping => Op::Ping,
            other => return Err(format!("{other:?} cannot run in a batch")),
        })
    }
}

/// VALUE as Kinto stores it: a JSON string, or with `json` the document it holds (`source`
/// names where it came from in the message).
pub fn encode(json: bool, text: &str, source: &str) -> Result<String, String> {
    if json {
        value::encode_json(text).map_err(|e| format!("{source} is not a JSON document kcache can store: {e}"))
    } else {
        Ok(value::encode_string(text))
    }
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

/// Runs a command that acts on everything (`flush`, `purge`, `ping`) on `cache`.
fn run_alone(cache: &mut Cache, op: &Op) -> Result<Answer, Error> {
    match op {
        Op::Flush { all } => cache.flush(*all).map(|()| Answer::default()),
        Op::Purge => cache.purge().map(|n| Answer { purged: Some(n), ..Answer::default() }),
        Op::Ping => cache.ping().map(|()| Answer::default()),
        keyed => {
            let group = keyed.as_group_op().map(|g| vec![g]).unwrap_or_default();
            let result = cache.run_group(&group).pop().unwrap_or_else(|| Err(Error::input("nothing ran")));
            answer(keyed, result)
        }
    }
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

/// What a keyed command's result means, for the one-shot command and a batch reply alike: the
/// one place where `ttl`'s `-1` and `-2`, the statuses and the shown value are decided.
fn answer(op: &Op, result: Result<GroupResult, Error>) -> Result<Answer, Error> {
    Ok(match result? {
        GroupResult::Value(Some(v)) => {
            let removed = if let Op::Delete { key } = op { Some(key.as_str()) } else { None };
            Answer::done(Some(document(&v, removed)?))
        }
        GroupResult::Value(None) | GroupResult::Existed(false) => Answer::missing(None),
        GroupResult::Stored | GroupResult::Existed(true) => Answer::done(None),
        GroupResult::Remaining(r) => {
            let ms = matches!(op, Op::Ttl { ms: true, .. });
            match r {
                Remaining::Missing => Answer::missing(Some("-2".into())),
                Remaining::NoExpiry => Answer::done(Some("-1".into())),
                Remaining::Left(d) if ms => Answer::done(Some(ttl::whole_millis_up(d).to_string())),
                Remaining::Left(d) => Answer::done(Some(ttl::whole_seconds_up(d).to_string())),
            }
        }
    })
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
                replies.push(Reply { line: *line, result: answer(op, result) });
            }
            if !keep_going && replies.iter().any(|r| r.status() >= 2) {
                return replies;
            }
        }
        if end < items.len() {
            let (line, op) = &items[end];
            let reply = Reply { line: *line, result: run_alone(cache, op) };
            let failed = reply.status() >= 2;
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
        if r.status() >= 2 {
            self.worst = self.worst.max(r.status());
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
    let failed = |m: String| Reply { line, result: Err(Error::input(format!("line {line}: {m}"))) };
    match text {
        Ok(t) => parse_line(&t).map_err(failed),
        Err(m) => Err(failed(m)),
    }
}

fn run_serial(mut cache: Cache, input: impl Read, out: &mut impl Write, keep_going: bool) -> Result<u8, Error> {
    let mut lines = Lines::new(input);
    let mut tally = Tally::default();
    // Commands read but not run yet: keyed ones wait here to go out together.
    let group_len = cache.group_len(GROUP);
    let mut group: Vec<(u64, Op)> = Vec::with_capacity(group_len);
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
        if lines.would_wait() || group.len() >= group_len {
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
                let group_len = sibling.group_len(GROUP);
                let mut group: Vec<(u64, Op)> = Vec::with_capacity(group_len);
                while let Ok(first) = rx.recv() {
                    // Whatever else is already queued goes out in the same group.
                    group.push(first);
                    while group.len() < group_len {
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
                    let reply = Reply { line: n, result: run_alone(&mut cache, &op) };
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

    /// The batch parser's messages: one line each, naming the culprit, from clap's own
    /// definitions (the same flags and arguments as the command line).
    #[test]
    fn batch_parser_messages_are_one_line_and_name_the_culprit() {
        for (l, expected) in [
            (
                "frobnicate k",
                "unknown command 'frobnicate' (a batch runs get, set, ttl, expire, delete, flush, purge, ping)",
            ),
            ("migrate", "unknown command 'migrate' (a batch runs get, set, ttl, expire, delete, flush, purge, ping)"),
            ("batch", "unknown command 'batch' (a batch runs get, set, ttl, expire, delete, flush, purge, ping)"),
            ("get --ms k", "unknown option '--ms' for get"),
            ("flush --force", "unknown option '--force' for flush"),
            ("get -v k", "unknown option '-v' for get"),
            ("set k v", "usage: set [OPTIONS] <KEY> <VALUE> <TTL>"),
            ("get", "usage: get [OPTIONS] <KEY>"),
            ("expire k", "usage: expire <KEY> <TTL>"),
            ("get a b", "unexpected argument 'b'; usage: get [OPTIONS] <KEY>"),
            ("ping now", "unexpected argument 'now'; usage: ping"),
            (
                "set k v 10x",
                "bad TTL: '10x' is not a TTL; give seconds (60, 0.25) or a number with a unit ms, s, m, h or d (500ms, 15m, 2h, 30d)",
            ),
            ("expire k -1", "bad TTL: '-1' is negative; a TTL is 0 or more"),
            ("set k - 60", "set KEY - TTL (standard input) is not allowed in a batch"),
        ] {
            let e = parse_line(l).unwrap_err();
            assert_eq!(e, expected, "{l}");
        }
        let long = format!("get --{} k", "x".repeat(500));
        let e = parse_line(&long).unwrap_err();
        assert!(e.len() < 200 && e.contains("(502 bytes)"), "{e}");
    }

    /// Flags mean in a batch what they mean on the command line, in any position clap allows.
    #[test]
    fn flags_are_the_command_lines() {
        assert_eq!(op("get --json -n k"), Op::Get { key: "k".into() });
        assert_eq!(op("get k --no-newline"), Op::Get { key: "k".into() });
        assert_eq!(op("ttl k --ms"), Op::Ttl { key: "k".into(), ms: true });
        assert_eq!(op("set k --json 1 60"), Op::Set { key: "k".into(), value: "1".into(), ttl: "60".parse().unwrap() });
        assert_eq!(op("set k -x 60"), Op::Set { key: "k".into(), value: "\"-x\"".into(), ttl: "60".parse().unwrap() });
        assert_eq!(op("delete -- -k"), Op::Delete { key: "-k".into() });
    }

    #[test]
    fn replies_are_json() {
        let r = Reply { line: 3, result: Ok(Answer::done(Some("{\"a\":1}".into()))) };
        assert_eq!(r.to_json(), r#"{"line":3,"status":0,"value":{"a":1}}"#);
        let r = Reply { line: 5, result: Ok(Answer::missing(Some("-2".into()))) };
        assert_eq!(r.to_json(), r#"{"line":5,"status":1,"value":-2}"#);
        let r = Reply { line: 4, result: Err(Error::input("bad \"x\"").with_hint("do y")) };
        let parsed: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(parsed["error"], "bad \"x\"");
        assert_eq!(parsed["status"], 2);
        assert_eq!(parsed["hint"], "do y");
    }
}
