//! [`dispatch`] is the only place that lists the commands. The keyed commands and `flush`,
//! `purge` and `ping` run as a batch of one line: the same parsing into [`Op`], the same group
//! path to the backend ([`batch::execute_many`]) and the same [`batch::Answer`] (status, `ttl`'s
//! `-1`/`-2`, the value), so a one-shot command and a batch line cannot drift apart; only the
//! printing differs (raw text here, JSON in a batch). Input is checked (value read and encoded,
//! key checked) before the backend is touched.

use crate::backend::{self, Cache};
use crate::batch::{self, Op};
use crate::cli::{Command, FlushArgs, KeysArgs, SetArgs, StatsArgs};
use crate::error::{Error, ErrorKind, Result, excerpt};
use crate::pattern::Pattern;
use crate::settings::Settings;
use crate::ttl::{self, Remaining};
use crate::value::{self, Shown};
use crate::{Log, Outcome, output, transfer};

pub fn dispatch(
    command: Command,
    settings: Settings,
    env: &dyn Fn(&str) -> Option<String>,
    log: &Log,
) -> Result<Outcome> {
    let workers = if let Command::Batch { jobs, .. } = &command { *jobs } else { 1 };
    let mut cache = backend::open_with(&settings, env, workers)?;
    log.note(&format!("backend {} at {}", cache.backend_name(), cache.location()));
    for w in cache.warnings() {
        log.warn(&w);
    }
    let print = Print::of(&command);
    let op = match command {
        Command::Migrate { dry_run } => return migrate(&mut cache, dry_run, log),
        Command::Keys(args) => return keys(&mut cache, &args),
        Command::Stats(args) => return stats(&mut cache, &args, log),
        Command::Flush(FlushArgs { pattern: Some(pattern), dry_run, .. }) => {
            return flush_matching(&mut cache, &pattern, dry_run, log);
        }
        Command::Batch { jobs, keep_going } => return run_batch(cache, jobs, keep_going),
        Command::Dump(args) => return transfer::dump(&mut cache, args.pattern.as_deref(), log),
        Command::Load(args) => return transfer::load(&mut cache, args.no_overwrite, log),
        Command::Copy(args) => {
            let mut target = transfer::open_target(&args.to, log)?;
            return transfer::copy(&mut cache, &mut target, args.pattern.as_deref(), args.no_overwrite, log);
        }
        Command::Diff(args) => {
            let mut target = transfer::open_target(&args.to, log)?;
            let tolerance = args.ttl_tolerance.duration();
            return transfer::diff(&mut cache, &mut target, args.pattern.as_deref(), tolerance, log);
        }
        Command::Completions { .. } => unreachable!("handled before settings are loaded"),
        Command::Set(SetArgs { json, key, value, ttl }) if value == "-" => {
            cache.full_key(&key)?; // a bad key is refused before standard input is read
            let text = crate::read_value_arg(&value)?;
            Op::Set { key, value: batch::encode(json, &text, "standard input").map_err(Error::input)?, ttl }
        }
        command => Op::from_command(command).map_err(Error::input)?,
    };
    let reply = batch::execute_many(&mut cache, &[(1, op)], false).pop();
    let answer = reply.map_or_else(|| Err(Error::input("the command did not run")), |r| r.result)?;
    print.show(&answer, log)?;
    Ok(if answer.missing { Outcome::Missing } else { Outcome::Done })
}

/// How a one-shot command prints its [`batch::Answer`].
enum Print {
    /// `get`, `delete` (`removed`): the value, raw or as JSON.
    Value { json: bool, no_newline: bool, removed: Option<String> },
    /// `ttl`: the number.
    Number,
    /// `ping`: `ok`.
    Ok,
    /// `flush`, `purge`: a note with `-v`.
    Note,
    /// `set`, `expire`: nothing.
    Nothing,
}

impl Print {
    fn of(command: &Command) -> Print {
        match command {
            Command::Get(a) => Print::Value { json: a.json, no_newline: a.no_newline, removed: None },
            Command::Delete(a) => Print::Value { json: a.json, no_newline: a.no_newline, removed: Some(a.key.clone()) },
            Command::Ttl(_) => Print::Number,
            Command::Ping => Print::Ok,
            Command::Flush(_) | Command::Purge => Print::Note,
            _ => Print::Nothing,
        }
    }

    fn show(&self, answer: &batch::Answer, log: &Log) -> Result<()> {
        match self {
            Print::Value { json, no_newline, removed } => {
                let Some(doc) = &answer.value else { return Ok(()) };
                let printed = match value::show(doc, *json) {
                    Ok(Shown::Raw(s) | Shown::Json(s)) => output::print(&s, *no_newline),
                    Err(e) => Err(Error::backend("show the value", anyhow::anyhow!(e))),
                };
                // The entry is gone whatever happens to the output: say so (status 5).
                printed.map_err(|e| match (removed, e.kind()) {
                    (Some(key), ErrorKind::BrokenPipe | ErrorKind::Unshown) => Error::new(
                        ErrorKind::Unshown,
                        anyhow::anyhow!(
                            "the entry was removed, but its value could not be written to standard output: {}",
                            e.chain().last().map_or("", String::as_str)
                        ),
                    )
                    .context(format!("delete {}", excerpt(key))),
                    _ => e,
                })
            }
            Print::Number => output::print(answer.value.as_deref().unwrap_or_default(), false),
            Print::Ok => output::print("ok", false),
            Print::Note => {
                match answer.purged {
                    Some(n) => log.note(&format!("removed {n} expired entries")),
                    None => log.note("flushed"),
                }
                Ok(())
            }
            Print::Nothing => Ok(()),
        }
    }
}

/// `keys`: each matching key as it comes (memory stays flat), in the chosen format.
fn keys(cache: &mut Cache, args: &KeysArgs) -> Result<Outcome> {
    use std::io::Write;
    let pattern = args.pattern.as_deref().map(Pattern::parse).transpose()?.unwrap_or_default();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let end = if args.null { b'\0' } else { b'\n' };
    let limit = args.limit.unwrap_or(u64::MAX);
    let (mut printed, mut failed) = (0u64, None);
    // Writes one key's line; `false` once the walk must stop (the limit, or a failed output).
    let mut emit = |line: &str| match out.write_all(line.as_bytes()).and_then(|()| out.write_all(&[end])) {
        Ok(()) => {
            printed += 1;
            printed < limit
        }
        Err(e) => {
            failed = Some(e);
            false
        }
    };
    if !args.ttl && !args.json {
        cache.key_names(&pattern, &mut |key| emit(key))?;
    } else {
        cache.keys(&pattern, &mut |key, left| {
            let line = if args.json {
                let ttl = match left {
                    Remaining::Left(d) => serde_json::Value::from(ttl::whole_millis_up(d) as f64 / 1000.0),
                    _ => serde_json::Value::Null,
                };
                serde_json::json!({"key": key, "ttl": ttl}).to_string()
            } else {
                let secs = match left {
                    Remaining::Left(d) => ttl::whole_seconds_up(d).to_string(),
                    _ => "-1".to_string(),
                };
                format!("{key}\t{secs}")
            };
            emit(&line)
        })?;
    }
    if let Some(e) = failed {
        return Err(output::failed(e));
    }
    out.flush().map_err(output::failed)?;
    Ok(if printed == 0 { Outcome::Missing } else { Outcome::Done })
}

/// `stats`: the figures in the chosen format; with `--keep-going`, a warning for each server
/// that is down.
fn stats(cache: &mut Cache, args: &StatsArgs, log: &Log) -> Result<Outcome> {
    let stats = cache.stats(args.keep_going)?;
    for s in stats.servers.iter().flatten().filter(|s| !s.up) {
        log.warn(&format!("{} is down: {}", s.address, s.error.as_deref().unwrap_or("unreachable")));
    }
    let text = if args.json {
        format!("{}\n", stats.json())
    } else if args.prometheus {
        stats.prometheus()
    } else {
        stats.table()
    };
    output::write_all(text.as_bytes())?;
    Ok(Outcome::Done)
}

/// `flush --match PATTERN [--dry-run]`: the pattern is checked before anything is removed.
fn flush_matching(cache: &mut Cache, pattern: &str, dry_run: bool, log: &Log) -> Result<Outcome> {
    use std::io::Write;
    let pattern = Pattern::parse(pattern)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let n = cache.flush_matching(&pattern, dry_run, &mut |key| {
        if dry_run {
            writeln!(out, "{key}").map_err(output::failed)?;
        }
        Ok(())
    })?;
    out.flush().map_err(output::failed)?;
    if !dry_run {
        log.note(&format!("removed {n} entries"));
    }
    Ok(Outcome::Done)
}

fn migrate(cache: &mut Cache, dry_run: bool, log: &Log) -> Result<Outcome> {
    let m = cache.migrate(dry_run)?;
    if let Some(note) = &m.note {
        if dry_run {
            output::print(&format!("-- nothing to do: {note}"), false)?;
        } else {
            log.note(&format!("nothing to do: {note}"));
        }
    } else if dry_run {
        if m.statements.is_empty() {
            output::print("-- the schema is up to date", false)?;
        } else {
            output::print(&m.statements.join("\n"), false)?;
        }
    } else if m.statements.is_empty() {
        log.note("the schema is up to date");
    } else {
        for s in &m.statements {
            // One line per statement: its first line is enough to say what was created.
            let first = s.lines().next().unwrap_or_default().trim_end_matches(['(', ' ']);
            log.note(&format!("ran: {first} ..."));
        }
    }
    Ok(Outcome::Done)
}

fn run_batch(cache: Cache, jobs: u32, keep_going: bool) -> Result<Outcome> {
    let stdin = std::io::stdin();
    // `Stdout` (not its lock) can move to the writer thread; the buffer keeps writes few.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    let status = batch::run(cache, stdin.lock(), &mut out, jobs as usize, keep_going)?;
    Ok(if status == 0 { Outcome::Done } else { Outcome::Status(status) })
}
