//! The command-line surface, and nothing else: clap types whose doc comments are the help text.

use crate::ttl::Ttl;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Examples:
  kcache set greeting hello 60 && kcache get greeting
  kcache -c /etc/kinto/kinto.ini migrate --dry-run
  kcache --prefix myapp: flush

Exit status: 0 done, 1 key not found, 2 bad usage or input (nothing was sent),
3 backend unavailable (worth retrying), 4 backend refused the operation,
5 done but its output was lost (a removed value that cannot be shown, output closed or full).

Configuration: --config, else $KCACHE_CONFIG, else ~/.config/kcache/config.toml; with none,
an SQLite file in ~/.cache/kcache/. Environment: CACHE_* and KINTO_CACHE_* as Kinto reads them.";

/// Work with a Kinto cache from the shell: migrate, read, write and flush it.
///
/// kcache reads the same configuration as a Kinto deployment (its kinto.ini, or a TOML file),
/// talks to the same backends and reads and writes the same data.
#[derive(Debug, Parser)]
#[command(
    name = "kcache",
    version,
    long_version = crate::LONG_VERSION.as_str(),
    propagate_version = true,
    disable_help_subcommand = true,
    after_help = AFTER_HELP,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after any command.
#[derive(Debug, Args)]
pub struct Global {
    /// Config file: TOML with a [cache] table, or a Kinto INI with [app:main] [default: $KCACHE_CONFIG]
    #[arg(short, long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Backend: sqlite, memory, postgresql, memcached, redis, or a Kinto module path
    #[arg(short, long, global = true, value_name = "NAME")]
    pub backend: Option<String>,
    /// Backend URL (postgresql://..., redis://...)
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Memcached servers, separated by commas or spaces
    #[arg(long, global = true, value_name = "HOST[,HOST...]")]
    pub hosts: Option<String>,
    /// Prefix prepended to every key, exactly as Kinto does
    #[arg(long, global = true, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Say more: where each setting came from, and the whole cause of an error
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Say less: no warnings
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

// Each command's arguments are built only when that command is parsed (or its help shown):
// building all of them took a third of a one-shot command's start-up. Their structs' comments
// are `//`, not `///`, which would replace the command's own help text once built.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Create what the backend needs (tables, index, function); idempotent
    ///
    /// Safe to run on every deploy, from several hosts at once. Example:
    ///   kcache migrate --dry-run && kcache migrate
    Migrate {
        /// Print what would be done (the SQL, or that the schema is up to date); change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the value of KEY (status 1 if there is none)
    ///
    /// A stored JSON string prints as its raw text, any other document as compact JSON.
    /// Example:
    ///   value=$(kcache get session:42) || echo "not cached"
    Get(ReadArgs),
    /// Store VALUE under KEY for TTL
    ///
    /// VALUE is stored as a JSON string; with --json it is parsed as any JSON document.
    /// VALUE "-" reads standard input to its end. TTL is seconds (60, 0.25) or a number with
    /// a unit (500ms, 15m, 2h, 30d); 0 stores nothing and removes the key. Examples:
    ///   kcache set greeting hello 60
    ///   kcache set --json user:1 '{"name": "Ada"}' 1h
    ///   slow-command | kcache set report - 15m
    #[command(allow_negative_numbers = true)]
    Set(SetArgs),
    /// Print the seconds KEY has left (-1: no expiry; -2 and status 1: no such key)
    ///
    /// Whole seconds rounded up, so a live entry never shows 0. Example:
    ///   kcache ttl --ms greeting
    Ttl(TtlArgs),
    /// Give an existing entry a new TTL (status 1 if there is none)
    ///
    /// A TTL of 0 expires the entry now. An expired entry is never brought back. Example:
    ///   kcache expire greeting 2h
    #[command(allow_negative_numbers = true)]
    Expire(ExpireArgs),
    /// Remove KEY and print the value it had (status 1 if there was none)
    ///
    /// Example:
    ///   token=$(kcache delete nonce:abc) || echo "already used"
    Delete(ReadArgs),
    /// Remove every entry (with a prefix: only the entries under it, where the backend can)
    ///
    /// Memcached cannot find keys by prefix, so there a prefixed flush needs --all. With
    /// --match PATTERN only the matching keys go, on every backend (see `kcache keys --help`
    /// for the pattern syntax). Examples:
    ///   kcache --prefix myapp: flush
    ///   kcache flush --match 'session:*' --dry-run
    Flush(FlushArgs),
    /// List the live keys (prefix stripped) that match PATTERN, one per line
    ///
    /// PATTERN is a glob matched against the whole key: * any run of characters, ? one
    /// character, [abc] [a-z] [!a] one of a set, \ makes the next character literal; every other
    /// character (% and _ included) is literal. Status 1 when no key matched. Examples:
    ///   kcache keys 'session:*'
    ///   kcache keys --ttl --limit 10
    ///   kcache keys -0 'tmp:*' | xargs -0 -n1 kcache delete
    Keys(KeysArgs),
    /// Check that the backend answers (write, read and delete a heartbeat key)
    ///
    /// Prints "ok". Example:
    ///   kcache ping || alert "cache down"
    Ping,
    /// Remove expired entries now (SQL backends; elsewhere there is nothing to do)
    ///
    /// Example (cron):
    ///   */10 * * * *  kcache purge
    Purge,
    /// Show what the cache holds under the prefix, and its servers' own figures
    ///
    /// Entries, expired entries and value bytes under the prefix (where the backend can count
    /// them), and per server: version, uptime, items, bytes, evictions, hits, misses,
    /// connections. A server that cannot be reached is status 3 unless --keep-going. Examples:
    ///   kcache --prefix myapp: stats
    ///   kcache stats --prometheus > /var/lib/node_exporter/kcache.prom
    Stats(StatsArgs),
    /// Run many commands from standard input over one set of connections
    ///
    /// One command per line (get, set, ttl, expire, delete, flush, purge, ping, with their
    /// flags), words split as a POSIX shell splits them; blank lines and # lines are skipped.
    /// One JSON object per command comes out, in input order:
    /// {"line": N, "status": S, "value": V, "error": "..."}. Without --keep-going the batch
    /// stops after the first command whose status is 2 or more. Exit status: 0 when every
    /// command's status was 0 or 1, else the highest status seen. Example:
    ///   printf 'set a 1 60\nget a\n' | kcache batch
    Batch {
        /// Run on up to N connections at once (commands on one key keep their order)
        #[arg(long, short = 'j', value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        jobs: u32,
        /// Go on after a command whose status is 2 or more
        #[arg(long, short = 'k')]
        keep_going: bool,
    },
    /// Write every live entry that matches PATTERN as one JSON line
    ///
    /// Each line is {"key": K, "value": V, "expires": E}: the key (prefix stripped), the stored
    /// JSON document, and the Unix time it expires (seconds, millisecond precision; null:
    /// never). PostgreSQL and SQLite dump one snapshot. Examples:
    ///   kcache dump > cache.jsonl
    ///   kcache dump 'session:*' | gzip > sessions.jsonl.gz
    Dump(DumpArgs),
    /// Write the entries of a dump read from standard input
    ///
    /// Each entry gets the life it has left; entries already expired are skipped. Each line is
    /// checked before it is written; a bad line is status 2 naming it (PostgreSQL and SQLite:
    /// nothing is written, the load is one transaction). -v reports what was written and
    /// skipped. Example:
    ///   kcache -c old.ini dump | kcache -c new.toml load
    Load(LoadArgs),
    /// Copy the live entries into the cache that CONFIG describes
    ///
    /// dump | load in one process: from this cache into the one the file CONFIG (TOML or
    /// Kinto INI) alone describes, with its own backend and prefix. Example:
    ///   kcache -c memcached.ini copy --to redis.toml
    Copy(CopyArgs),
    /// Compare the live entries with the cache that CONFIG describes
    ///
    /// One JSON line per difference: {"key": K, "only_in": "source"|"target"} or {"key": K,
    /// "differs": "value"|"expires", "source": ..., "target": ...}. Status 0 when both hold the
    /// same entries, 1 when they differ. Example:
    ///   kcache -c memcached.ini diff --to redis.toml && echo same
    Diff(DiffArgs),
    /// Run COMMAND, or replay its cached output and exit status
    ///
    /// The result (standard output, standard error, exit status) is stored for TTL under a key
    /// made from COMMAND and its arguments (or --key). One run at a time on the backend: other
    /// callers for the same key, on any host, wait for the runner's result instead of running
    /// COMMAND too. COMMAND runs directly, not through a shell. If the cache fails, COMMAND
    /// still runs (one warning). Examples:
    ///   kcache memo 10m -- curl -fsS https://example.com/feed.json
    ///   kcache memo --stale 1m 1h -- ./slow-report --daily
    #[command(allow_negative_numbers = true)]
    Memo(MemoArgs),
    /// Print a shell completion script
    ///
    /// Example:
    ///   kcache completions bash > /etc/bash_completion.d/kcache
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

/// Parses a command line (`args`: the program's name, then its arguments).
///
/// When the first argument names a command, that command alone is parsed first, with the
/// global options and exactly its own definitions from [`Cli`]: clap copies every global option
/// into every command of the tree it parses, 170 KB of memory written for 18 commands, a sixth
/// of a one-shot `get` (README, "Performance"). Anything but a successful parse (an error, help,
/// version) is parsed again on the whole tree, which gives clap's own answer. The property test
/// `hostile::one_command_parses_as_the_whole_tree_parses` holds the two together.
pub fn parse(args: &[std::ffi::OsString]) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let mut whole = Cli::command();
    if let Some(one) = args.get(1).and_then(|a| a.to_str()).and_then(|name| whole.find_subcommand(name)) {
        // What of `Cli`'s own settings reaches a command: its version flags.
        let root = clap::Command::new("kcache")
            .version(env!("CARGO_PKG_VERSION"))
            .long_version(crate::LONG_VERSION.as_str())
            .propagate_version(true);
        let mut parser = Global::augment_args(root).subcommand(one.clone());
        let parsed = parser.try_get_matches_from_mut(args).ok().and_then(|m| Cli::from_arg_matches(&m).ok());
        // Neither tree is freed (freeing the whole one was a tenth of `kcache --version`): the
        // process ends soon after.
        std::mem::forget(parser);
        if let Some(cli) = parsed {
            std::mem::forget(whole);
            return Ok(cli);
        }
    }
    let parsed = parse_whole(&mut whole, args);
    std::mem::forget(whole);
    parsed
}

/// Parses `args` on the whole tree (`Cli::command()`).
pub fn parse_whole(whole: &mut clap::Command, args: &[std::ffi::OsString]) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    whole
        .try_get_matches_from_mut(args)
        .and_then(|m| Cli::from_arg_matches(&m).map_err(|e| e.format(&mut Cli::command())))
}

/// The commands a batch line may hold: the command line's own definitions (see
/// [`batch_parser`]).
pub const BATCH_COMMANDS: [&str; 8] = ["get", "set", "ttl", "expire", "delete", "flush", "purge", "ping"];

/// The parser of a batch line: the subcommands of [`Cli`] that a batch allows, with exactly
/// their definitions (arguments, value parsers, flags), and no global option. Built once.
pub fn batch_parser() -> clap::Command {
    use clap::CommandFactory;
    let cli = Cli::command();
    let mut parser = clap::Command::new("batch")
        .no_binary_name(true)
        .subcommand_required(true)
        .disable_help_subcommand(true)
        .disable_help_flag(true)
        .disable_version_flag(true);
    for name in BATCH_COMMANDS {
        if let Some(sub) = cli.find_subcommand(name) {
            parser = parser.subcommand(sub.clone().disable_help_flag(true));
        }
    }
    parser.build();
    parser
}

// Arguments of `set`.
#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// Parse VALUE as JSON instead of storing it as a string
    #[arg(long)]
    pub json: bool,
    /// The key (the configured prefix is prepended)
    pub key: String,
    /// The value, or - for standard input
    #[arg(allow_hyphen_values = true)]
    pub value: String,
    /// Time to live: 60, 0.25, 500ms, 15m, 2h, 30d
    pub ttl: Ttl,
}

// Arguments of `ttl`.
#[derive(Debug, Clone, Args)]
pub struct TtlArgs {
    /// Print milliseconds instead of seconds
    #[arg(long)]
    pub ms: bool,
    /// The key
    pub key: String,
}

// Arguments of `expire`.
#[derive(Debug, Clone, Args)]
pub struct ExpireArgs {
    /// The key
    pub key: String,
    /// Time to live: 60, 0.25, 500ms, 15m, 2h, 30d
    pub ttl: Ttl,
}

// Arguments of `flush`.
#[derive(Debug, Clone, Args)]
pub struct FlushArgs {
    /// Remove everything, whatever the prefix
    #[arg(long)]
    pub all: bool,
    /// Remove only the entries whose key (prefix stripped) matches this glob
    #[arg(long = "match", value_name = "PATTERN", conflicts_with = "all")]
    pub pattern: Option<String>,
    /// With --match: print the keys that would be removed, remove nothing
    #[arg(long, requires = "pattern")]
    pub dry_run: bool,
}

// Arguments of `keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// Glob matched against the whole key, prefix stripped [default: *]
    pub pattern: Option<String>,
    /// Append a tab and the seconds left, as `ttl` prints them (-1: no expiry)
    #[arg(long)]
    pub ttl: bool,
    /// End each key with a NUL byte instead of a newline (for xargs -0)
    #[arg(short = '0', long = "null", conflicts_with = "json")]
    pub null: bool,
    /// One JSON object per line: {"key": K, "ttl": T}, T in seconds or null
    #[arg(long)]
    pub json: bool,
    /// Stop after N keys
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

// Arguments of `stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Print one JSON object instead of a table
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Print the Prometheus text exposition format (for node_exporter's textfile collector)
    #[arg(long)]
    pub prometheus: bool,
    /// Report a server that cannot be reached as down (up: false) instead of failing
    #[arg(long, short = 'k')]
    pub keep_going: bool,
}

// Arguments of `dump`.
#[derive(Debug, Clone, Args)]
pub struct DumpArgs {
    /// Glob matched against the whole key, prefix stripped [default: *]
    pub pattern: Option<String>,
}

// Arguments of `load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Keep a live existing entry instead of overwriting it
    #[arg(long)]
    pub no_overwrite: bool,
}

// Arguments of `copy`.
#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// The target cache's config file (TOML or Kinto INI), read alone
    #[arg(long, value_name = "CONFIG")]
    pub to: PathBuf,
    /// Keep a live existing entry of the target instead of overwriting it
    #[arg(long)]
    pub no_overwrite: bool,
    /// Glob matched against the whole key, prefix stripped [default: *]
    pub pattern: Option<String>,
}

// Arguments of `diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The other cache's config file (TOML or Kinto INI), read alone
    #[arg(long, value_name = "CONFIG")]
    pub to: PathBuf,
    /// Expiry times this close are equal: 2s, 500ms, 1m
    #[arg(long, value_name = "DUR", default_value = "2s", allow_hyphen_values = true)]
    pub ttl_tolerance: Ttl,
    /// Glob matched against the whole key, prefix stripped [default: *]
    pub pattern: Option<String>,
}

// Arguments of `memo`.
#[derive(Debug, Clone, Args)]
pub struct MemoArgs {
    /// Store the result under KEY (the prefix is prepended) instead of a hash of COMMAND
    #[arg(long)]
    pub key: Option<String>,
    /// Make the working directory part of the key
    #[arg(long)]
    pub cwd: bool,
    /// Make the value of environment variable NAME part of the key (repeatable)
    #[arg(long = "env", value_name = "NAME")]
    pub env: Vec<String>,
    /// Print a result older than DUR at once and refresh it in the background
    #[arg(long, value_name = "DUR")]
    pub stale: Option<Ttl>,
    /// Do not store a result whose exit status is not 0
    #[arg(long)]
    pub discard_failures: bool,
    /// Run COMMAND and store its result whatever the cache holds
    #[arg(long)]
    pub force: bool,
    /// Wait at most DUR for another caller's run, then run COMMAND [default: TTL, at most 10m]
    #[arg(long, value_name = "DUR")]
    pub wait: Option<Ttl>,
    /// How long the runner's lock lasts if it dies (renewed while COMMAND runs)
    #[arg(long, value_name = "DUR", default_value = "10s")]
    pub lease: Ttl,
    /// How long the result is kept: 60, 500ms, 15m, 2h, 30d
    pub ttl: Ttl,
    /// The command and its arguments (after --)
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

// Arguments of the commands that print a value (`get`, `delete`).
#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    /// Print the value as a JSON document, even when it is a string
    #[arg(long)]
    pub json: bool,
    /// Do not print the trailing newline
    #[arg(short = 'n', long)]
    pub no_newline: bool,
    /// The key (the configured prefix is prepended)
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn negative_ttl_reaches_the_ttl_parser() {
        let e = Cli::try_parse_from(["kcache", "set", "k", "v", "-1"]).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
    }

    #[test]
    fn values_may_start_with_a_hyphen() {
        let cli = Cli::try_parse_from(["kcache", "set", "k", "-x", "10"]).unwrap();
        assert!(matches!(cli.command, Command::Set(SetArgs { value, .. }) if value == "-x"));
    }
}
