//! Settings: where each one comes from and what it resolves to.
//!
//! Four layers, highest first: command-line options, environment (`CACHE_*` then
//! `KINTO_CACHE_*`), config file (TOML or Kinto INI), defaults. They are merged setting by
//! setting: `KINTO_CACHE_PREFIX` alone does not hide the file's `url`. Every value is checked
//! here, before any backend is built, and a bad one is an input error that names its source.

pub mod conninfo;
mod env;
pub mod ini;
pub mod toml;

use crate::error::{Error, Result, register_secret};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use env::env_layer;

/// The backends kcache knows, by SPEC name; [`BackendKind::from_str`] is the only list of
/// names and Kinto module paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Memory,
    Sqlite,
    Postgresql,
    Memcached,
    Redis,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgresql => "postgresql",
            BackendKind::Memcached => "memcached",
            BackendKind::Redis => "redis",
        }
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.trim() {
            "memory" | "kinto.core.cache.memory" => BackendKind::Memory,
            "sqlite" => BackendKind::Sqlite,
            "postgresql" | "kinto.core.cache.postgresql" => BackendKind::Postgresql,
            "memcached" | "kinto.core.cache.memcached" => BackendKind::Memcached,
            "redis" | "kinto.core.cache.redis" | "kinto_redis.cache" => BackendKind::Redis,
            other => {
                return Err(format!(
                    "unknown backend '{other}'; expected one of memory, sqlite, postgresql, memcached, redis \
                     (or kinto.core.cache.memory, kinto.core.cache.postgresql, kinto.core.cache.memcached, \
                     kinto.core.cache.redis, kinto_redis.cache)"
                ));
            }
        })
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A setting's value before it is typed: what TOML gives, or what Kinto's `native_value` makes
/// of an INI or environment string (JSON if it parses, else the string itself).
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    List(Vec<String>),
}

impl Raw {
    /// Kinto's `native_value`: a string that parses as JSON becomes that JSON value.
    pub fn native(s: &str) -> Raw {
        match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::String(v)) => Raw::Str(v),
            Ok(serde_json::Value::Bool(b)) => Raw::Bool(b),
            Ok(serde_json::Value::Null) => Raw::Null,
            Ok(serde_json::Value::Number(n)) => {
                let text = n.to_string();
                match text.parse::<i64>() {
                    Ok(i) => Raw::Int(i),
                    Err(_) => text.parse::<f64>().map(Raw::Float).unwrap_or(Raw::Str(s.to_string())),
                }
            }
            Ok(serde_json::Value::Array(items)) if items.iter().all(|i| i.is_string()) => {
                Raw::List(items.into_iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
            }
            _ => Raw::Str(s.to_string()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Raw::Str(s) => format!("the string \"{s}\""),
            Raw::Int(i) => format!("the number {i}"),
            Raw::Float(f) => format!("the number {f}"),
            Raw::Bool(b) => format!("the boolean {b}"),
            Raw::Null => "null".to_string(),
            Raw::List(_) => "a list".to_string(),
        }
    }
}

/// One setting as a source gave it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub raw: Raw,
    /// Where it came from, for messages and `-v`: `--prefix`, `KINTO_CACHE_URL`,
    /// `config file /etc/kinto.ini ([app:main] kinto.cache_url)`.
    pub source: String,
    /// The folder relative paths are resolved against (a config file's folder).
    pub base: Option<PathBuf>,
}

/// The canonical setting names, in display order.
pub const NAMES: &[&str] = &[
    "backend",
    "url",
    "hosts",
    "prefix",
    "max_size_bytes",
    "pool_size",
    "max_overflow",
    "max_backlog",
    "pool_recycle",
    "pool_timeout",
    "path",
];

/// Settings of one source, by canonical name.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    pub entries: BTreeMap<&'static str, Entry>,
}

impl Layer {
    pub fn set(&mut self, name: &'static str, raw: Raw, source: impl Into<String>, base: Option<PathBuf>) {
        self.entries.insert(name, Entry { raw, source: source.into(), base });
    }
    /// This layer's settings, with `lower`'s where this one has none.
    pub fn over(mut self, lower: Layer) -> Layer {
        for (k, v) in lower.entries {
            self.entries.entry(k).or_insert(v);
        }
        self
    }
}

/// Resolves the canonical name of a setting (`maxoverflow` is Kinto's documented spelling).
pub fn canonical(name: &str) -> Option<&'static str> {
    if name == "maxoverflow" {
        return Some("max_overflow");
    }
    NAMES.iter().copied().find(|n| *n == name)
}

/// The resolved, typed settings.
#[derive(Clone)]
pub struct Settings {
    pub backend: BackendKind,
    /// May hold a password: never print it as it is; see [`redact_url`].
    pub url: Option<String>,
    pub hosts: Vec<String>,
    pub prefix: String,
    /// `None`: no limit.
    pub max_size_bytes: Option<u64>,
    pub pool_size: u32,
    pub max_overflow: u32,
    /// `None`: unlimited (Kinto's -1).
    pub max_backlog: Option<u32>,
    /// `None`: never recycle (Kinto's -1).
    pub pool_recycle: Option<Duration>,
    /// `None`: the backend's own default.
    pub pool_timeout: Option<Duration>,
    pub path: Option<PathBuf>,
    /// `(name, shown value, source)` of every setting, for `-v`.
    pub origins: Vec<(String, String, String)>,
}

/// Written by hand so that the URL's password never reaches a `{:?}`.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("backend", &self.backend)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("hosts", &self.hosts)
            .field("prefix", &self.prefix)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_MAX_SIZE_BYTES: u64 = 524_288;
pub const DEFAULT_POOL_SIZE: u32 = 25;
pub const DEFAULT_MAX_OVERFLOW: u32 = 10;

fn bad(entry: &Entry, name: &str, expected: &str) -> Error {
    Error::input(format!("{}: {name} must be {expected}, not {}", entry.source, entry.raw.describe()))
}

fn as_string(e: &Entry, name: &str) -> Result<String> {
    match &e.raw {
        Raw::Str(s) => Ok(s.clone()),
        Raw::Int(i) => Ok(i.to_string()),
        Raw::Float(_) | Raw::Bool(_) | Raw::Null | Raw::List(_) => Err(bad(e, name, "a string")),
    }
}

fn as_int(e: &Entry, name: &str, min: i64, expected: &str) -> Result<i64> {
    match &e.raw {
        Raw::Int(i) if *i >= min => Ok(*i),
        Raw::Str(s) => match s.trim().parse::<i64>() {
            Ok(i) if i >= min => Ok(i),
            _ => Err(bad(e, name, expected)),
        },
        _ => Err(bad(e, name, expected)),
    }
}

fn as_seconds(e: &Entry, name: &str, min: f64, expected: &str) -> Result<f64> {
    let v = match &e.raw {
        Raw::Int(i) => *i as f64,
        Raw::Float(f) => *f,
        Raw::Str(s) => s.trim().parse::<f64>().map_err(|_| bad(e, name, expected))?,
        _ => return Err(bad(e, name, expected)),
    };
    if v.is_finite() && v >= min && v <= 1e9 { Ok(v) } else { Err(bad(e, name, expected)) }
}

/// `seconds` (0 or more) as a duration of at least 1 ms: the pool and socket timeouts refuse a
/// zero duration, which a tiny value (`1e-12`) would otherwise round to.
fn at_least_a_millisecond(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds).max(Duration::from_millis(1))
}

/// Splits a host list on spaces, commas and new lines (Kinto's `aslist`, plus commas).
pub fn split_hosts(s: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || c == ',').filter(|h| !h.is_empty()).map(str::to_string).collect()
}

/// What [`redact_url`] shows in place of a connection string it cannot read: a piece of a
/// password could be anywhere in it.
pub const UNREADABLE_CONNECTION_STRING: &str = "(a connection string that cannot be parsed; not shown)";

/// Whether a query or connection-string parameter holds a secret: libpq's `password` and
/// `sslpassword`, redis-py's `password` (and any other `...password`), the redis crate's `pass`.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("password") || key == "pass"
}

/// `scheme` and what follows `scheme://`, when `text` starts with a URL scheme (a letter, then
/// letters, digits, `+`, `.` or `-`), as the PostgreSQL reader decides it.
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let ok = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'));
    ok.then_some((scheme, rest))
}

/// `text` (a URL, a libpq connection string, or anything else given as `url`) as it may be
/// printed, and the secrets it holds, as written. The one place that decides what of a URL is
/// a secret, for [`redact_url`] and [`register_url_secret`].
///
/// - A URL (`scheme://...`) is read both ways a backend may read it, and what either would take
///   for a password is hidden: the user information ends at the LAST `@` (the Redis reader, and
///   so a password with an unencoded `@`, `/`, `?` or `#` is hidden whole), and everything from
///   its first `:` to that `@` is hidden; in the query (from the first `?`), the value of a
///   secret parameter (`password=`, `sslpassword=`...) is hidden up to the next `&`, an `@`
///   included (the PostgreSQL reader takes `postgresql://h/db?password=a@b` for the password
///   `a@b`), and so is a part without `=` that follows it (a piece of a value with an
///   unencoded `&`).
/// - A libpq connection string (`host=h password='a b'`): read with libpq's rules
///   ([`conninfo::Pairs`]), then written again, the password (however it was quoted) as `***`
///   and the other values quoted as needed. One that cannot be read, or that has a word libpq
///   does not know (it may be a piece of a badly quoted password), is shown as
///   [`UNREADABLE_CONNECTION_STRING`].
/// - Anything else: up to the last `@` is hidden.
fn hide_secrets(text: &str) -> (String, Vec<String>) {
    let mut secrets = Vec::new();
    if let Some((scheme, rest)) = split_scheme(text) {
        // Byte ranges of `rest` to hide.
        let mut hidden: Vec<(usize, usize)> = Vec::new();
        if let Some(at) = rest.rfind('@') {
            match rest[..at].find(':') {
                Some(colon) => hidden.push((colon + 1, at)),
                // No password, but no user name either: a broken URL whose text before the
                // '@' may be anything (a socket path, `unix:///run/r@1.sock`, is not hidden).
                None if rest[..at].contains(['/', '?', '#']) && !rest.starts_with('/') => hidden.push((0, at)),
                None => {}
            }
        }
        if let Some(question) = rest.find('?') {
            let mut start = question + 1;
            let mut after_secret = false;
            for pair in rest[start..].split('&') {
                match pair.split_once('=') {
                    Some((key, _)) => {
                        after_secret = is_secret_key(&percent_decode(key));
                        if after_secret {
                            hidden.push((start + key.len() + 1, start + pair.len()));
                        }
                    }
                    None if after_secret && !pair.is_empty() => hidden.push((start, start + pair.len())),
                    None => {}
                }
                start += pair.len() + 1;
            }
        }
        secrets.extend(hidden.iter().map(|&(from, to)| rest[from..to].to_string()));
        hidden.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (from, to) in hidden {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        let mut shown = format!("{scheme}://");
        let mut done = 0;
        for (from, to) in merged {
            shown.push_str(&rest[done..from]);
            shown.push_str("***");
            done = to;
        }
        shown.push_str(&rest[done..]);
        return (shown, secrets);
    }
    if text.contains('=') {
        let mut parts = Vec::new();
        for pair in conninfo::Pairs::new(text) {
            let Ok((key, value)) = pair else {
                return (UNREADABLE_CONNECTION_STRING.to_string(), secrets);
            };
            if is_secret_key(&key) {
                parts.push(format!("{key}=***"));
                secrets.push(value);
            } else {
                parts.push(format!("{key}={}", conninfo::quote_value(&value)));
            }
            if !conninfo::is_keyword(&key) {
                return (UNREADABLE_CONNECTION_STRING.to_string(), secrets);
            }
        }
        return (parts.join(" "), secrets);
    }
    match text.rsplit_once('@') {
        Some((userinfo, host)) => {
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.push(password.to_string());
            }
            (format!("***@{host}"), secrets)
        }
        None => (text.to_string(), secrets),
    }
}

/// A URL, a libpq connection string or any `url` setting as it may be printed: every password
/// replaced by `***` (`scheme://user:***@host/...`, `...?password=***`, `host=h password=***`).
/// The only way kcache shows a URL it was given; it relies on nothing registered anywhere.
pub fn redact_url(url: &str) -> String {
    hide_secrets(url).0
}

/// Registers the passwords of a URL or connection string (raw and percent-decoded) as
/// secrets, a safety net for text that libraries print.
fn register_url_secret(url: &str) {
    for secret in hide_secrets(url).1 {
        register_secret(&secret);
        register_secret(&percent_decode(&secret));
    }
}

/// Decodes `%XX` escapes, keeping any other `%` as it is (as SQLAlchemy, redis-py and libpq's
/// URLs read them); text that is not UTF-8 once decoded is shown with replacement characters.
/// The one percent-decoder of kcache (with [`percent_decode_bytes`]).
pub fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

/// The bytes `%XX` escapes stand for, others kept as they are.
pub fn percent_decode_bytes(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

impl Settings {
    /// Types and checks the merged layer; applies defaults (no sqlite file: see [`resolve`]).
    pub fn from_layer(layer: &Layer) -> Result<Settings> {
        Self::from_layer_with(layer, &|| None)
    }

    /// [`Settings::from_layer`], with `default_path` for the sqlite file when none is set.
    pub(crate) fn from_layer_with(layer: &Layer, default_path: &dyn Fn() -> Option<PathBuf>) -> Result<Settings> {
        let get = |name: &str| layer.entries.get(name);
        let mut origins = Vec::new();
        let mut note = |name: &str, shown: String, e: Option<&Entry>| {
            origins.push((name.to_string(), shown, e.map_or("default".to_string(), |e| e.source.clone())));
        };

        let backend = match get("backend") {
            Some(e) => {
                let s = as_string(e, "backend")?;
                if s.trim().is_empty() {
                    BackendKind::Sqlite
                } else {
                    s.parse().map_err(|m: String| Error::input(format!("{}: {m}", e.source)))?
                }
            }
            None => BackendKind::Sqlite,
        };
        note("backend", backend.to_string(), get("backend"));

        let url = match get("url") {
            Some(e) => {
                let s = as_string(e, "url")?;
                register_url_secret(&s);
                (!s.trim().is_empty()).then(|| s.trim().to_string())
            }
            None => None,
        };
        note("url", url.as_deref().map(redact_url).unwrap_or_default(), get("url"));

        let hosts = match get("hosts") {
            Some(Entry { raw: Raw::List(items), .. }) => items.iter().flat_map(|h| split_hosts(h)).collect(),
            Some(e) => split_hosts(&as_string(e, "hosts")?),
            None => Vec::new(),
        };
        note("hosts", hosts.join(","), get("hosts"));

        let prefix = match get("prefix") {
            Some(e) => as_string(e, "prefix")?,
            None => String::new(),
        };
        if let Some(c) = prefix.chars().find(|c| c.is_control()) {
            let e = get("prefix").map_or("prefix".to_string(), |e| e.source.clone());
            return Err(Error::input(format!("{e}: the prefix contains the control character {c:?}")));
        }
        note("prefix", format!("{prefix:?}"), get("prefix"));

        let max_size_bytes = match get("max_size_bytes") {
            Some(Entry { raw: Raw::Null, .. }) => None,
            Some(e) => match as_int(e, "max_size_bytes", -1, "a number of bytes (or -1 or null for no limit)")? {
                -1 => None,
                n => Some(n as u64),
            },
            None => Some(DEFAULT_MAX_SIZE_BYTES),
        };
        note("max_size_bytes", max_size_bytes.map_or("none".to_string(), |n| n.to_string()), get("max_size_bytes"));

        let int_setting = |name: &str, min: i64, max: i64, expected: &str, default: i64| -> Result<i64> {
            match get(name) {
                Some(e) => {
                    let v = as_int(e, name, min, expected)?;
                    if v > max { Err(bad(e, name, expected)) } else { Ok(v) }
                }
                None => Ok(default),
            }
        };
        let pool_size = int_setting("pool_size", 1, 10_000, "a whole number from 1 to 10000", 25)? as u32;
        note("pool_size", pool_size.to_string(), get("pool_size"));
        let max_overflow = int_setting("max_overflow", 0, 10_000, "a whole number from 0 to 10000", 10)? as u32;
        note("max_overflow", max_overflow.to_string(), get("max_overflow"));
        let max_backlog = match int_setting("max_backlog", -1, 1_000_000, "a whole number, or -1 for no limit", -1)? {
            -1 => None,
            n => Some(n as u32),
        };
        note("max_backlog", max_backlog.map_or("-1".to_string(), |n| n.to_string()), get("max_backlog"));

        let pool_recycle = match get("pool_recycle") {
            Some(e) => {
                let v = as_seconds(e, "pool_recycle", -1.0, "a number of seconds, or -1 for never")?;
                if v < 0.0 { None } else { Some(at_least_a_millisecond(v)) }
            }
            None => None,
        };
        note(
            "pool_recycle",
            pool_recycle.map_or("-1".to_string(), |d| format!("{}", d.as_secs_f64())),
            get("pool_recycle"),
        );

        let pool_timeout = match get("pool_timeout") {
            Some(e) => {
                let v = as_seconds(e, "pool_timeout", 0.0, "a number of seconds greater than 0")?;
                if v <= 0.0 {
                    return Err(bad(e, "pool_timeout", "a number of seconds greater than 0"));
                }
                Some(at_least_a_millisecond(v))
            }
            None => None,
        };
        note(
            "pool_timeout",
            pool_timeout.map_or("backend default".to_string(), |d| format!("{}", d.as_secs_f64())),
            get("pool_timeout"),
        );

        let path = match get("path") {
            Some(e) => {
                let s = as_string(e, "path")?;
                if s.is_empty() {
                    None
                } else {
                    let p = PathBuf::from(&s);
                    Some(match (&e.base, p.is_relative()) {
                        (Some(base), true) => base.join(p),
                        _ => p,
                    })
                }
            }
            None if backend == BackendKind::Sqlite => default_path(),
            None => None,
        };
        note("path", path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(), get("path"));

        Ok(Settings {
            backend,
            url,
            hosts,
            prefix,
            max_size_bytes,
            pool_size,
            max_overflow,
            max_backlog,
            pool_recycle,
            pool_timeout,
            path,
            origins,
        })
    }
}

/// The command-line layer.
/// The settings of a command line: every layer resolved (options over environment over the
/// config file over defaults), each setting's source logged with `-v`.
pub fn resolve(
    global: &crate::cli::Global,
    env: &dyn Fn(&str) -> Option<String>,
    log: &crate::Log,
) -> Result<Settings> {
    let file = match locate(global.config.as_deref(), env) {
        Some((path, _explicit)) => {
            log.note(&format!("reading config file {}", path.display()));
            let mut warn = |m: String| log.warn(&m);
            file_layer(&path, &mut warn)?
        }
        None => {
            log.note("no config file");
            Layer::default()
        }
    };
    let layer = cli_layer(global).over(env_layer(env)).over(file);
    let s = Settings::from_layer_with(&layer, &|| default_sqlite_path(env))?;
    for (name, value, source) in &s.origins {
        log.note(&format!("setting {name} = {value} (from {source})"));
    }
    Ok(s)
}

/// `$XDG_CACHE_HOME/kcache/cache.sqlite3`, else `~/.cache/kcache/cache.sqlite3`.
pub fn default_sqlite_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CACHE_HOME")
        .filter(|s| Path::new(s).is_absolute())
        .map(PathBuf::from)
        .or_else(|| env("HOME").filter(|s| !s.is_empty()).map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("kcache").join("cache.sqlite3"))
}

pub fn cli_layer(g: &crate::cli::Global) -> Layer {
    let mut l = Layer::default();
    if let Some(b) = &g.backend {
        l.set("backend", Raw::Str(b.clone()), "--backend", None);
    }
    if let Some(u) = &g.url {
        l.set("url", Raw::Str(u.clone()), "--url", None);
    }
    if let Some(h) = &g.hosts {
        l.set("hosts", Raw::Str(h.clone()), "--hosts", None);
    }
    if let Some(p) = &g.prefix {
        l.set("prefix", Raw::Str(p.clone()), "--prefix", None);
    }
    l
}

/// Which config file to read: `--config`, else `$KCACHE_CONFIG` (an empty one counts as unset),
/// both of which must exist; else `$XDG_CONFIG_HOME/kcache/config.toml` or
/// `~/.config/kcache/config.toml` if it exists. The flag is `true` for an explicit file.
pub fn locate(explicit: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Option<(PathBuf, bool)> {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return Some((p.to_path_buf(), true));
    }
    if let Some(p) = env("KCACHE_CONFIG").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    let config_home = env("XDG_CONFIG_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").filter(|s| !s.is_empty()).map(|h| Path::new(&h).join(".config")))?;
    let p = config_home.join("kcache").join("config.toml");
    p.is_file().then_some((p, false))
}

/// The format of a config file.
#[derive(Debug, PartialEq, Eq)]
enum Format {
    Toml,
    Ini,
}

/// `.toml` is TOML; `.ini`, `.cfg` and `.conf` are INI; anything else is INI when it has a
/// `[app:main]` section, TOML otherwise.
fn format_of(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("toml") => Format::Toml,
        Some("ini" | "cfg" | "conf") => Format::Ini,
        _ if text.lines().any(|l| l.trim() == "[app:main]") => Format::Ini,
        _ => Format::Toml,
    }
}

/// Reads a config file into a layer. Warnings (ignored INI keys) go to `warn`.
pub fn file_layer(path: &Path, warn: &mut dyn FnMut(String)) -> Result<Layer> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "it does not exist".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ if path.is_dir() => "it is a directory".to_string(),
            _ => e.to_string(),
        };
        Error::input(format!("cannot read config file {shown}: {why}"))
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        Error::input(format!("config file {shown} is not valid UTF-8 (line {line})"))
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let base = abs.parent().map(Path::to_path_buf);
    let layer = parse_file(path, &abs, &text, base, warn)?;
    warn_if_secret_is_exposed(path, &layer, warn);
    Ok(layer)
}

/// Like ssh with a private key: a config file that holds a password and that others may read
/// gets a warning (it still works; refusing would break a deployment over a chmod).
fn warn_if_secret_is_exposed(path: &Path, layer: &Layer, warn: &mut dyn FnMut(String)) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o044 == 0 {
        return;
    }
    let has_password = layer.entries.get("url").is_some_and(|e| match &e.raw {
        Raw::Str(u) => {
            let (shown, secrets) = hide_secrets(u);
            secrets.iter().any(|p| !p.is_empty()) || (shown == UNREADABLE_CONNECTION_STRING && u.contains("password"))
        }
        _ => false,
    });
    if has_password {
        warn(format!(
            "config file {} holds a password and is readable by others (mode {mode:04o}); run: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
}

/// Parses a config file's text into a layer, by its format.
fn parse_file(
    path: &Path,
    abs: &Path,
    text: &str,
    base: Option<PathBuf>,
    warn: &mut dyn FnMut(String),
) -> Result<Layer> {
    let shown = path.display();
    match format_of(path, text) {
        Format::Toml => toml::layer(text, &shown.to_string(), base),
        Format::Ini => {
            let found = ini::cache_settings_with_keys(text, abs)
                .map_err(|e| Error::input(format!("config file {shown}: {e:#}")))?;
            let mut layer = Layer::default();
            for (name, key, value) in found {
                match canonical(&name) {
                    Some(c) => layer.set(
                        c,
                        Raw::native(&value),
                        format!("config file {shown} ([app:main] {key})"),
                        base.clone(),
                    ),
                    // Accepted and ignored, as SPEC says (`poolclass`), or irrelevant to a cache
                    // client (`max_fetch_size` is on Kinto's own ignore list).
                    None if name == "poolclass" || name == "max_fetch_size" => {}
                    None => warn(format!("{shown}: ignoring unknown setting {key} in [app:main]")),
                }
            }
            Ok(layer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(raw: Raw) -> Layer {
        let mut l = Layer::default();
        l.set("pool_size", raw, "TEST_SOURCE", None);
        l
    }

    #[test]
    fn backend_names_and_kinto_paths() {
        for (s, k) in [
            ("memory", BackendKind::Memory),
            ("kinto.core.cache.memory", BackendKind::Memory),
            ("sqlite", BackendKind::Sqlite),
            ("postgresql", BackendKind::Postgresql),
            ("kinto.core.cache.postgresql", BackendKind::Postgresql),
            ("memcached", BackendKind::Memcached),
            ("kinto.core.cache.memcached", BackendKind::Memcached),
            ("redis", BackendKind::Redis),
            ("kinto.core.cache.redis", BackendKind::Redis),
            ("kinto_redis.cache", BackendKind::Redis),
        ] {
            assert_eq!(s.parse::<BackendKind>(), Ok(k));
        }
        assert!("mongodb".parse::<BackendKind>().unwrap_err().contains("'mongodb'"));
        assert!("kinto.core.cache".parse::<BackendKind>().is_err());
    }

    #[test]
    fn native_value_follows_kinto() {
        assert_eq!(Raw::native("10"), Raw::Int(10));
        assert_eq!(Raw::native("1.5"), Raw::Float(1.5));
        assert_eq!(Raw::native("true"), Raw::Bool(true));
        assert_eq!(Raw::native("null"), Raw::Null);
        assert_eq!(Raw::native("\"x\""), Raw::Str("x".into()));
        assert_eq!(Raw::native("redis://h/0"), Raw::Str("redis://h/0".into()));
        assert_eq!(Raw::native(""), Raw::Str("".into()));
    }

    #[test]
    fn typed_values_are_checked_and_named() {
        let e = Settings::from_layer(&entry(Raw::Str("ten".into()))).err().unwrap();
        let msg = e.to_string();
        assert!(msg.contains("TEST_SOURCE") && msg.contains("pool_size") && msg.contains("\"ten\""), "{msg}");
        assert!(Settings::from_layer(&entry(Raw::Int(0))).is_err());
        assert!(Settings::from_layer(&entry(Raw::Float(2.5))).is_err());
        assert_eq!(Settings::from_layer(&entry(Raw::Str("7".into()))).ok().unwrap().pool_size, 7);
    }

    #[test]
    fn defaults() {
        let s = Settings::from_layer(&Layer::default()).ok().unwrap();
        assert_eq!(s.backend, BackendKind::Sqlite);
        assert_eq!(s.prefix, "");
        assert_eq!(s.max_size_bytes, Some(524_288));
        assert_eq!((s.pool_size, s.max_overflow, s.max_backlog), (25, 10, None));
        assert!(s.origins.iter().all(|(_, _, src)| src == "default"));
    }

    #[test]
    fn merge_is_per_setting() {
        let mut high = Layer::default();
        high.set("prefix", Raw::Str("a:".into()), "env", None);
        let mut low = Layer::default();
        low.set("prefix", Raw::Str("b:".into()), "file", None);
        low.set("url", Raw::Str("redis://h/1".into()), "file", None);
        let s = Settings::from_layer(&high.over(low)).ok().unwrap();
        assert_eq!(s.prefix, "a:");
        assert_eq!(s.url.as_deref(), Some("redis://h/1"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgresql://u:pw@h:5432/db"), "postgresql://u:***@h:5432/db");
        assert_eq!(redact_url("redis://:pw@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("redis://h/0"), "redis://h/0");
        assert_eq!(redact_url("postgresql://u:p@ss@h/db"), "postgresql://u:***@h/db");
        assert_eq!(redact_url("redis://:pa/ss?w#d@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("redis://:ab@cd/SECRETPART@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
        assert_eq!(redact_url("redis://:ab@cd?SECRET@host/0"), "redis://:***@host/0");
        assert_eq!(redact_url("unix:///tmp/r@main.sock?db=1"), "unix:///tmp/r@main.sock?db=1");
        assert_eq!(redact_url("redis://SECRET@PART/x@h/0"), "redis://***@h/0");
    }

    #[test]
    fn password_query_parameters_are_redacted() {
        assert_eq!(redact_url("postgresql://h/db?password=x%20y"), "postgresql://h/db?password=***");
        assert_eq!(
            redact_url("postgresql://h/db?sslmode=disable&password=x%20y&application_name=a"),
            "postgresql://h/db?sslmode=disable&password=***&application_name=a"
        );
        assert_eq!(
            redact_url("postgresql://h/db?pass%77ord=x&sslpassword=y"),
            "postgresql://h/db?pass%77ord=***&sslpassword=***"
        );
        // An unencoded '@' or '&' in the value: hidden up to the next parameter.
        assert_eq!(redact_url("postgresql://h/db?password=a@b"), "postgresql://***");
        assert_eq!(redact_url("postgresql://h:5432/db?password=a@b/c"), "postgresql://h:***");
        assert_eq!(redact_url("postgresql://h/db?password=a&b&port=1"), "postgresql://h/db?password=***&***&port=1");
        assert_eq!(redact_url("redis://h/0?password=se:cret@b"), "redis://h/0?password=***");
        assert_eq!(redact_url("rediss://h/0?password=x#insecure"), "rediss://h/0?password=***");
    }

    #[test]
    fn connection_strings_are_parsed_and_redacted() {
        let shown = |text: &str| redact_url(text);
        assert_eq!(shown("host=h port=1 user=u password='alpha beta gamma'"), "host=h port=1 user=u password=***");
        assert_eq!(shown("host=h password = 'alpha beta' dbname=d"), "host=h password=*** dbname=d");
        assert_eq!(shown("password=alpha\\ beta host=h"), "password=*** host=h");
        assert_eq!(shown("password=alpha host=h"), "password=*** host=h");
        assert_eq!(shown("password='it\\'s' sslpassword=k"), "password=*** sslpassword=***");
        // Other values are quoted again as libpq reads them.
        assert_eq!(
            shown("host = /tmp application_name='my app' options='-c a=\\'b\\'' dbname=x\\ y"),
            "host=/tmp application_name='my app' options='-c a=\\'b\\'' dbname='x y'"
        );
        // Unreadable, or a word libpq does not know (a piece of a badly quoted password): the
        // text is not shown at all.
        for text in [
            "host=h password=alpha beta gamma",
            "host=h password='alpha beta",
            "host=h password=alpha beta=gamma",
            "pasword=alpha host=h",
        ] {
            assert_eq!(shown(text), UNREADABLE_CONNECTION_STRING, "{text}");
        }
    }

    #[test]
    fn the_secrets_registered_are_the_ones_hidden() {
        let secrets = |text: &str| hide_secrets(text).1;
        assert_eq!(secrets("host=h password='alpha beta gamma'"), ["alpha beta gamma"]);
        assert_eq!(secrets("postgresql://h/db?password=x%20y"), ["x%20y"]);
        assert_eq!(secrets("redis://:ab@cd/EF@h/0"), ["ab@cd/EF"]);
        assert_eq!(secrets("redis://h/0"), Vec::<String>::new());
    }

    #[test]
    fn hosts_split_on_spaces_commas_and_newlines() {
        assert_eq!(split_hosts("\na:1 b:2,c:3\n\td"), vec!["a:1", "b:2", "c:3", "d"]);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%40ss%2"), "p@ss%2");
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }

    #[test]
    fn file_format_by_extension_then_content() {
        assert_eq!(format_of(Path::new("a.toml"), "[app:main]"), Format::Toml);
        assert_eq!(format_of(Path::new("a.ini"), ""), Format::Ini);
        assert_eq!(format_of(Path::new("kinto"), "[app:main]\nx=1"), Format::Ini);
        assert_eq!(format_of(Path::new("kinto"), "[cache]\n"), Format::Toml);
    }
}
