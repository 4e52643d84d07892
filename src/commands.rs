//! One function per command; [`dispatch`] is the only place that lists them all. Input is
//! checked (value read and encoded, key checked) before the backend is touched.

use crate::backend::{self, Cache};
use crate::cli::{Command, ReadArgs};
use crate::error::{Error, ErrorKind, Result};
use crate::settings::Settings;
use crate::ttl::{self, Remaining, Ttl};
use crate::value::{self, Shown};
use crate::{Log, Outcome, output};

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
    match command {
        Command::Migrate { dry_run } => migrate(&mut cache, dry_run, log),
        Command::Get(args) => get(&mut cache, &args),
        Command::Set { json, key, value, ttl } => set(&mut cache, json, &key, &value, ttl),
        Command::Ttl { ms, key } => ttl(&mut cache, ms, &key),
        Command::Expire { key, ttl } => expire(&mut cache, &key, ttl),
        Command::Delete(args) => delete(&mut cache, &args),
        Command::Flush { all } => flush(&mut cache, all, log),
        Command::Ping => ping(&mut cache),
        Command::Purge => purge(&mut cache, log),
        Command::Batch { jobs, keep_going } => batch(cache, jobs, keep_going),
        Command::Completions { .. } => unreachable!("handled before settings are loaded"),
    }
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

/// Prints a value `get` read, or `delete` removed (`removed`): then a value that cannot be
/// shown, or output that cannot be written, is status 5, since the entry is gone all the same.
fn show(stored: Option<String>, args: &ReadArgs, removed: bool) -> Result<Outcome> {
    let Some(stored) = stored else { return Ok(Outcome::Missing) };
    let key = crate::error::excerpt(&args.key);
    let shown = value::show(&stored, args.json).map_err(|e| {
        if removed {
            Error::new(ErrorKind::Unshown, anyhow::anyhow!("the entry was removed, but its value cannot be shown: {e}"))
                .context(format!("delete {key}"))
        } else {
            Error::backend(format!("read {key}"), anyhow::anyhow!(e))
        }
    })?;
    let printed = match shown {
        Shown::Raw(s) | Shown::Json(s) => output::print(&s, args.no_newline),
    };
    printed.map_err(|e| match e.kind() {
        ErrorKind::BrokenPipe | ErrorKind::Unshown if removed => Error::new(
            ErrorKind::Unshown,
            anyhow::anyhow!(
                "the entry was removed, but its value could not be written to standard output: {}",
                e.chain().last().map_or("", String::as_str)
            ),
        )
        .context(format!("delete {key}")),
        _ => e,
    })?;
    Ok(Outcome::Done)
}

fn get(cache: &mut Cache, args: &ReadArgs) -> Result<Outcome> {
    let stored = cache.get(&args.key)?;
    show(stored, args, false)
}

fn set(cache: &mut Cache, json: bool, key: &str, value: &str, ttl: Ttl) -> Result<Outcome> {
    // Everything about the input is checked before the backend is touched.
    cache.full_key(key)?;
    let text = crate::read_value_arg(value)?;
    let encoded = if json {
        let source = if value == "-" { "standard input" } else { "VALUE" };
        value::encode_json(&text)
            .map_err(|e| Error::input(format!("{source} is not a JSON document kcache can store: {e}")))?
    } else {
        value::encode_string(&text)
    };
    cache.set(key, &encoded, ttl)?;
    Ok(Outcome::Done)
}

fn ttl(cache: &mut Cache, ms: bool, key: &str) -> Result<Outcome> {
    let (text, outcome) = match cache.ttl(key)? {
        Remaining::Missing => ("-2".to_string(), Outcome::Missing),
        Remaining::NoExpiry => ("-1".to_string(), Outcome::Done),
        Remaining::Left(d) if ms => (ttl::whole_millis_up(d).to_string(), Outcome::Done),
        Remaining::Left(d) => (ttl::whole_seconds_up(d).to_string(), Outcome::Done),
    };
    output::print(&text, false)?;
    Ok(outcome)
}

fn expire(cache: &mut Cache, key: &str, ttl: Ttl) -> Result<Outcome> {
    Ok(if cache.expire(key, ttl)? { Outcome::Done } else { Outcome::Missing })
}

fn delete(cache: &mut Cache, args: &ReadArgs) -> Result<Outcome> {
    let stored = cache.delete(&args.key)?;
    show(stored, args, true)
}

fn flush(cache: &mut Cache, all: bool, log: &Log) -> Result<Outcome> {
    cache.flush(all)?;
    log.note("flushed");
    Ok(Outcome::Done)
}

fn ping(cache: &mut Cache) -> Result<Outcome> {
    cache.ping()?;
    output::print("ok", false)?;
    Ok(Outcome::Done)
}

fn purge(cache: &mut Cache, log: &Log) -> Result<Outcome> {
    let n = cache.purge()?;
    log.note(&format!("removed {n} expired entries"));
    Ok(Outcome::Done)
}

fn batch(cache: Cache, jobs: u32, keep_going: bool) -> Result<Outcome> {
    let stdin = std::io::stdin();
    // `Stdout` (not its lock) can move to the writer thread; the buffer keeps writes few.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    let status = crate::batch::run(cache, stdin.lock(), &mut out, jobs as usize, keep_going)?;
    Ok(if status == 0 { Outcome::Done } else { Outcome::Status(status) })
}
