//! Where PostgreSQL connections go: the `url` setting, libpq's environment variables and
//! `~/.pgpass`, resolved with libpq's rules into a [`Target`] (a `postgres::Config`, a TLS
//! connector and a printable location). Nothing here touches the network; it only reads the
//! local files libpq would read (the password file, certificates and keys).
//!
//! What is accepted:
//! - URLs as Kinto takes them: `postgresql://`, `postgres://` and SQLAlchemy's
//!   `postgresql+<driver>://` (the driver is dropped). `user:password@host:port/dbname`, with
//!   percent-decoding of every part; hosts may be lists (`h1:5432,h2:5433`), bracketed IPv6
//!   (`[::1]:5432`) or percent-encoded socket folders (`%2Ftmp`). The authority ends at the
//!   first `/` or `?`, and the user information at its last `@`, so an unencoded `@` in a
//!   password works; `#` is an ordinary character, as in libpq.
//! - Query parameters with libpq's keywords (the `KEYWORDS` table); later ones override earlier
//!   ones and the URL's own parts, as in libpq. `ssl=true` means `sslmode=require` (libpq's
//!   JDBC compatibility) and `keepalives_retries` is taken for libpq's `keepalives_count`. An
//!   unknown parameter is an input error naming it (never its value).
//! - A libpq `key=value` connection string (read by [`crate::settings::conninfo`], which `-v`
//!   uses too: `host=/tmp dbname=x`, with `'...'` quoting and `\`
//!   escapes).
//! - Percent-decoding is lenient like SQLAlchemy's (`%` not followed by two hex digits stays as
//!   it is); `%00` and text that is not UTF-8 once decoded are refused. In the query of a
//!   `postgresql+<driver>://` URL, `+` means a space, as SQLAlchemy reads it; in the other
//!   forms `+` is kept, as libpq does.
//!
//! How values are chosen, libpq's way: the URL, else the environment variable (`PGHOST`,
//! `PGHOSTADDR`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGPASSFILE`, `PGDATABASE`, `PGSSLMODE`,
//! `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGSSLNEGOTIATION`, `PGCONNECT_TIMEOUT`,
//! `PGAPPNAME`, `PGOPTIONS`, `PGTARGETSESSIONATTRS`, `PGCHANNELBINDING`, `PGLOADBALANCEHOSTS`),
//! else the default. Empty values (in the URL or the environment) count as unset. `PGTZ` and
//! `PGDATESTYLE` are sent as `-c TimeZone=...` / `-c DateStyle=...` after the other options,
//! so that they win over them as libpq's startup parameters do; the value `default` sends
//! nothing. `PGSERVICE` is not supported: a warning says it is ignored.
//!
//! Defaults: the host is the socket folder `/var/run/postgresql` if it exists, else `/tmp`
//! (libpq's compiled-in folder differs between builds); the port 5432; the user the OS user:
//! `USER`, else `LOGNAME`, else the `/etc/passwd` entry of the process's effective uid (the
//! owner of `/proc/self`), else `postgres`. libpq asks the passwd database first; the
//! environment comes first here so that tests and containers without a passwd entry behave.
//! The home folder (for `~/.pgpass` and `~/.postgresql/`) is `HOME`, else the passwd entry.
//! The database is the user; `application_name` is `kcache` unless the URL, `PGAPPNAME` or
//! `fallback_application_name` gives one.
//!
//! The password: the URL's (or `password=`), else `PGPASSWORD`, else the password file
//! (`passfile=`, else `PGPASSFILE`, else `~/.pgpass`). The file is used only when it is a
//! regular file without group or other permission bits; otherwise it is ignored with libpq's
//! warning in [`Target::warnings`]. Lines are `host:port:database:user:password`, `*` matches
//! anything, `\` escapes `:` and `\`, lines starting with `#` and lines with fewer than five
//! fields are skipped, and the first match wins (an empty password there means none). The port
//! is compared as text. A socket folder matches the entry `localhost` (libpq does so only for
//! its compiled-in folder) as well as its own path; a host given only as `hostaddr` matches
//! on the address. With several hosts, the first host that has an entry gives the password
//! (one `postgres::Config` holds one password).
//!
//! `sslmode` takes libpq's six values, mapped onto tokio-postgres's three modes and the rustls
//! connector of the `tls` module (which says how each check is done):
//! - `disable`: no TLS.
//! - `allow`, `prefer` (the default): `Prefer`, accepting any certificate and host name (libpq
//!   does not verify in these modes). tokio-postgres tries TLS first and, when the server
//!   offers TLS but the handshake fails, does not retry in clear; libpq's `allow` tries in
//!   clear first. Root certificates are not read in these modes.
//! - `require`: `Require` without verification, unless a root certificate file exists
//!   (`sslrootcert`, which must then exist, or `~/.postgresql/root.crt`): then as `verify-ca`.
//! - `verify-ca`: `Require`, chain checked against `sslrootcert` (default
//!   `~/.postgresql/root.crt`, which must exist), any host name.
//! - `verify-full`: `Require`, chain and host name checked. `sslrootcert=system` uses the
//!   system's roots, makes `verify-full` the default and, as in libpq 16, refuses weaker modes.
//!
//! A root file (PEM, one or more certificates) replaces the built-in roots. A client certificate
//! is `sslcert` (an error if it is missing) or `~/.postgresql/postgresql.crt` if it exists, with
//! the key `sslkey` or `~/.postgresql/postgresql.key`; the key must not be readable by group or
//! others (libpq's rule) and may be PKCS#8, PKCS#1 RSA or SEC1 EC PEM (not encrypted). When every host is a socket folder
//! TLS never applies (libpq ignores `sslmode` there): the mode becomes `Disable` and no file is
//! read. A build without the `tls` feature connects in clear for `disable`, `allow` and
//! `prefer` and refuses the other modes, except on sockets.
//!
//! Every password found (URL, `password=`, `PGPASSWORD`, password file) is registered with
//! [`crate::error::register_secret`], raw and percent-decoded, and no message built here
//! contains one. When a URL's authority has no `@` but a later part has one (an unencoded `/`
//! or `?` in the password), the text SQLAlchemy would read as the password is registered too,
//! and a database name containing `@` is refused.

use crate::error::{Error, Result, quote};
use crate::settings::conninfo::{self, KEYWORDS, UNSUPPORTED};
use postgres::config::{ChannelBinding, LoadBalanceHosts, SslMode, SslNegotiation, TargetSessionAttrs};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Registers a password found here so that no message can print it.
fn secret(text: &str) {
    #[cfg(test)]
    if !tests::REGISTER.with(std::cell::Cell::get) {
        return; // the fuzz test must not fill the process-wide registry with random words
    }
    crate::error::register_secret(text);
}

#[cfg(feature = "tls")]
mod tls;

/// The TLS connector type every PostgreSQL connection uses.
#[cfg(feature = "tls")]
pub use tls::Tls;
#[cfg(not(feature = "tls"))]
pub type Tls = postgres::NoTls;

/// Everything needed to open connections to one server.
pub struct Target {
    /// host(s), port, user, dbname, password, options, application_name, connect_timeout, ssl_mode...
    pub config: postgres::Config,
    /// The connector for `config.get_ssl_mode()`.
    pub tls: Tls,
    /// `postgresql://user@host:port/dbname` (never a password), for messages.
    pub location: String,
    /// What libpq would have printed as warnings (an insecure password file, `PGSERVICE`...),
    /// for the caller to print. They never contain a password.
    pub warnings: Vec<String>,
}

/// Resolves the `url` setting (None or empty: libpq defaults only) with libpq's rules.
/// `env` reads environment variables (the real environment, or a map in tests); `HOME` is read through it too.
pub fn resolve(url: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Target> {
    let prepared = prepare(url, env)?;
    let tls = build_tls(&prepared.plan)?;
    Ok(Target { config: prepared.config, tls, location: prepared.location, warnings: prepared.warnings })
}

const DEFAULT_PORT: u16 = 5432;
const DEFAULT_APPLICATION_NAME: &str = "kcache";
/// Socket folders tried, in order, when no host is given; the last one is used if none exists.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// Environment variables libpq sends as startup parameters, and the setting each one sets.
const ENV_GUCS: [(&str, &str); 2] = [("PGDATESTYLE", "DateStyle"), ("PGTZ", "TimeZone")];

/// The connection parameters a URL or connection string gave, by libpq keyword.
#[derive(Default)]
struct Params(BTreeMap<&'static str, String>);

impl Params {
    /// The value of `key`; empty counts as unset.
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Stores one `key=value`; later ones win, as in libpq. `echo`: whether an unknown key may
    /// be named in the error (not when it may be a piece of a mangled password).
    fn set(&mut self, key: &str, value: String, context: &str, echo: bool) -> Result<()> {
        let keyword = match key {
            "keepalives_retries" => "keepalives_count",
            "ssl" if value == "true" => {
                self.0.insert("sslmode", "require".to_string());
                return Ok(());
            }
            "ssl" => {
                return Err(Error::input(format!(
                    "invalid value {} for ssl in the {context}: only ssl=true (sslmode=require) is accepted",
                    quote(&value)
                )));
            }
            other => match KEYWORDS.iter().find(|(name, _)| *name == other) {
                Some((name, _)) => name,
                None => return Err(unknown_parameter(other, context, echo)),
            },
        };
        if keyword == "password" {
            secret(&value);
        }
        self.0.insert(keyword, value);
        Ok(())
    }
}

fn unknown_parameter(name: &str, context: &str, echo: bool) -> Error {
    let known: Vec<&str> = KEYWORDS.iter().map(|(k, _)| *k).collect();
    let hint = format!("the parameters kcache knows are {}", known.join(", "));
    if UNSUPPORTED.contains(&name) {
        return Error::input(format!("the {context} sets {name}, a libpq parameter kcache does not support"))
            .with_hint(hint);
    }
    let plain = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if echo && plain {
        Error::input(format!("unknown parameter {} in the {context}", quote(name))).with_hint(hint)
    } else {
        Error::input(format!("the {context} has a parameter that is not a libpq keyword")).with_hint(
            "if the password contains '/', '?', '@' or spaces, percent-encode them (%2F, %3F, %40, %20) in a URL, \
             or quote the value in a connection string",
        )
    }
}

/// Parses a URL or a `key=value` connection string.
fn parse_setting(text: &str) -> Result<Params> {
    if let Some((scheme, rest)) = url_scheme(text) {
        let lower = scheme.to_ascii_lowercase();
        let (base, driver) = match lower.split_once('+') {
            Some((base, driver)) => (base, Some(driver)),
            None => (lower.as_str(), None),
        };
        let driver_ok =
            driver.is_none_or(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if matches!(base, "postgresql" | "postgres") && driver_ok {
            return parse_url(rest, driver.is_some());
        }
        return Err(Error::input(format!(
            "unsupported URL scheme {scheme}://: a PostgreSQL URL starts with postgresql://, postgres:// \
             or postgresql+<driver>://"
        )));
    }
    if text.contains('=') {
        return parse_conninfo(text);
    }
    Err(Error::input(
        "the PostgreSQL url is neither a URL (postgresql://user@host:port/dbname) nor a libpq connection string \
         (host=... dbname=...)",
    ))
}

/// `scheme` and what follows `scheme://`, if `text` starts with a URL scheme.
fn url_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let ok = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'));
    ok.then_some((scheme, rest))
}

/// Parses what follows `postgresql://`.
fn parse_url(rest: &str, sqlalchemy: bool) -> Result<Params> {
    const CONTEXT: &str = "PostgreSQL URL";
    let mut params = Params::default();
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let (userinfo, hostspec) = match authority.rsplit_once('@') {
        Some((userinfo, hostspec)) => (Some(userinfo), hostspec),
        None => (None, authority),
    };
    // An unencoded '/' or '?' in a password ends the authority early. SQLAlchemy would still read
    // the password up to the next '@': register that text so that no message can show it.
    let mangled = userinfo.is_none() && after.contains('@');
    if mangled
        && let Some(colon) = authority.find(':')
        && let Some(at) = rest[colon..].find('@')
    {
        let candidate = &rest[colon + 1..colon + at];
        secret(candidate);
        secret(&String::from_utf8_lossy(&percent_decode(candidate, false)));
    }
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        if let Some(password) = password {
            secret(password);
            secret(&String::from_utf8_lossy(&percent_decode(password, false)));
            params.0.insert("password", decode(password, false, "password")?);
        }
        params.0.insert("user", decode(user, false, "user name")?);
    }

    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    if !hostspec.is_empty() {
        for item in hostspec.split(',') {
            let (host, port) = if let Some(inner) = item.strip_prefix('[') {
                let (host, tail) = inner
                    .split_once(']')
                    .ok_or_else(|| Error::input("an IPv6 address in the PostgreSQL URL lacks its closing ']'"))?;
                let port = match tail {
                    "" => "",
                    tail => tail
                        .strip_prefix(':')
                        .ok_or_else(|| Error::input("unexpected text after ']' in the host of the PostgreSQL URL"))?,
                };
                (host, port)
            } else {
                item.split_once(':').unwrap_or((item, ""))
            };
            if !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::input("the port in the PostgreSQL URL is not a number")
                    .with_hint("if the password contains '/' or '?', percent-encode them (%2F, %3F)"));
            }
            hosts.push(decode(host, false, "host")?);
            ports.push(port.to_string());
        }
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        params.0.insert("host", hosts.join(","));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        params.0.insert("port", ports.join(","));
    }

    let (path, query) = match after.strip_prefix('/') {
        Some(path) => match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        },
        None => ("", after.strip_prefix('?')),
    };
    if path.contains('@') {
        return Err(Error::input("the database name in the PostgreSQL URL contains '@'")
            .with_hint("if the password contains '/', '?' or '@', percent-encode them (%2F, %3F, %40)"));
    }
    if !path.is_empty() {
        params.0.insert("dbname", decode(path, false, "database name")?);
    }

    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::input("the PostgreSQL URL has a query parameter without '=' (key=value)"));
        };
        let key = decode(key, sqlalchemy, "name of a parameter")?;
        if key == "password" {
            secret(value);
            secret(&String::from_utf8_lossy(&percent_decode(value, sqlalchemy)));
        }
        let what = if key == "password" { "password parameter".to_string() } else { format!("value of {key}") };
        let value = decode(value, sqlalchemy, &what)?;
        params.set(&key, value, CONTEXT, !mangled)?;
    }
    Ok(params)
}

/// Decodes `%XX` escapes (others are kept as they are, as SQLAlchemy does); `+` becomes a space
/// when `plus` is set (an encoded `%2B` stays a `+`).
fn percent_decode(s: &str, plus: bool) -> Vec<u8> {
    if plus && s.contains('+') {
        crate::settings::percent_decode_bytes(&s.replace('+', " "))
    } else {
        crate::settings::percent_decode_bytes(s)
    }
}

/// Percent-decodes one part of a URL, which must then be UTF-8 without NUL. `what` names the
/// part in messages; its value is never shown.
fn decode(s: &str, plus: bool, what: &str) -> Result<String> {
    let bytes = percent_decode(s, plus);
    if bytes.contains(&0) {
        return Err(Error::input(format!("the {what} in the PostgreSQL URL contains %00")));
    }
    String::from_utf8(bytes)
        .map_err(|_| Error::input(format!("the {what} in the PostgreSQL URL is not UTF-8 once percent-decoded")))
}

/// Parses a libpq `key=value` connection string (the syntax is [`conninfo::Pairs`]'s).
fn parse_conninfo(text: &str) -> Result<Params> {
    const CONTEXT: &str = "connection string";
    let mut params = Params::default();
    let mut echo = true;
    for pair in conninfo::Pairs::new(text) {
        let (key, value) = pair.map_err(|problem| match problem {
            conninfo::Problem::MissingEquals(key) => {
                let known = KEYWORDS.iter().any(|(k, _)| *k == key) || UNSUPPORTED.contains(&key.as_str());
                let shown = if known { quote(&key) } else { "a word".to_string() };
                Error::input(format!("missing '=' after {shown} in the connection string"))
            }
            conninfo::Problem::Unterminated => Error::input("unterminated quoted value in the connection string"),
        })?;
        let is_password = key == "password";
        params.set(&key, value, CONTEXT, echo)?;
        echo &= !is_password;
    }
    Ok(params)
}

/// One host to try: a name or socket folder, an address, or both.
#[derive(Debug)]
struct Slot {
    host: Option<String>,
    hostaddr: Option<IpAddr>,
    port: u16,
    /// The port as given (`5432` by default), for the password file.
    port_text: String,
}

impl Slot {
    fn is_socket(&self) -> bool {
        self.hostaddr.is_none() && self.host.as_deref().is_some_and(|h| h.starts_with('/'))
    }
}

/// Pairs libpq's comma lists of hosts, addresses and ports, with libpq's rules.
fn host_slots(host: Option<&str>, hostaddr: Option<&str>, port: Option<&str>) -> Result<Vec<Slot>> {
    let split = |s: Option<&str>| -> Vec<String> {
        s.map(|s| s.split(',').map(|p| p.trim().to_string()).collect()).unwrap_or_default()
    };
    let (hosts, addrs, ports) = (split(host), split(hostaddr), split(port));
    let n = if addrs.is_empty() { hosts.len().max(1) } else { addrs.len() };
    if !addrs.is_empty() && !hosts.is_empty() && hosts.len() != n {
        return Err(Error::input(format!("could not match {} host names to {n} hostaddr values", hosts.len())));
    }
    if ports.len() > 1 && ports.len() != n {
        return Err(Error::input(format!("could not match {} port numbers to {n} hosts", ports.len())));
    }
    let mut slots = Vec::with_capacity(n);
    for i in 0..n {
        let hostaddr = match addrs.get(i).filter(|a| !a.is_empty()) {
            Some(a) => Some(
                a.parse::<IpAddr>()
                    .map_err(|_| Error::input(format!("invalid hostaddr {}: expected an IP address", quote(a))))?,
            ),
            None => None,
        };
        let mut host = hosts.get(i).filter(|h| !h.is_empty()).cloned();
        if host.is_none() && hostaddr.is_none() {
            host = Some(default_socket_dir());
        }
        let text = if ports.len() == 1 { ports.first() } else { ports.get(i) }.map_or("", String::as_str);
        let port = if text.is_empty() {
            DEFAULT_PORT
        } else {
            text.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Error::input(format!("invalid port {}: expected a number from 1 to 65535", quote(text)))
            })?
        };
        let port_text = if text.is_empty() { DEFAULT_PORT.to_string() } else { text.to_string() };
        slots.push(Slot { host, hostaddr, port, port_text });
    }
    Ok(slots)
}

fn default_socket_dir() -> String {
    let found = DEFAULT_SOCKET_DIRS.iter().find(|d| Path::new(d).is_dir());
    found.unwrap_or(&DEFAULT_SOCKET_DIRS[DEFAULT_SOCKET_DIRS.len() - 1]).to_string()
}

/// libpq's six `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LibpqSslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl LibpqSslMode {
    const ALL: [LibpqSslMode; 6] = [
        LibpqSslMode::Disable,
        LibpqSslMode::Allow,
        LibpqSslMode::Prefer,
        LibpqSslMode::Require,
        LibpqSslMode::VerifyCa,
        LibpqSslMode::VerifyFull,
    ];

    fn name(self) -> &'static str {
        match self {
            LibpqSslMode::Disable => "disable",
            LibpqSslMode::Allow => "allow",
            LibpqSslMode::Prefer => "prefer",
            LibpqSslMode::Require => "require",
            LibpqSslMode::VerifyCa => "verify-ca",
            LibpqSslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Result<LibpqSslMode> {
        LibpqSslMode::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            Error::input(format!(
                "invalid sslmode {}: expected disable, allow, prefer, require, verify-ca or verify-full",
                quote(s)
            ))
        })
    }

    /// Whether the mode never connects in clear.
    fn requires_tls(self) -> bool {
        matches!(self, LibpqSslMode::Require | LibpqSslMode::VerifyCa | LibpqSslMode::VerifyFull)
    }
}

/// Where trusted roots come from when the server certificate is checked.
#[derive(Debug, PartialEq, Eq)]
enum Roots {
    /// The system's roots (`sslrootcert=system`).
    System,
    /// Only the certificates of this PEM file.
    File(PathBuf),
}

/// How the server certificate is checked.
#[derive(Debug, PartialEq, Eq)]
struct Verify {
    roots: Roots,
    hostname: bool,
}

/// What the TLS connector must do, decided before any file is parsed.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
struct TlsPlan {
    mode: SslMode,
    /// `None`: any certificate and host name are accepted.
    verify: Option<Verify>,
    /// Client certificate and key files.
    identity: Option<(PathBuf, PathBuf)>,
}

/// The TLS files asked for (`sslrootcert`, `sslcert`, `sslkey`) and the home folder, for the
/// defaults under `~/.postgresql/`.
struct TlsFiles<'a> {
    rootcert: Option<&'a str>,
    cert: Option<&'a str>,
    key: Option<&'a str>,
    home: Option<&'a Path>,
}

impl TlsFiles<'_> {
    fn default_file(&self, name: &str) -> Option<PathBuf> {
        self.home.map(|h| h.join(".postgresql").join(name))
    }
}

fn plan_tls(mode: LibpqSslMode, all_sockets: bool, files: &TlsFiles<'_>) -> Result<TlsPlan> {
    let clear = TlsPlan { mode: SslMode::Disable, verify: None, identity: None };
    if all_sockets || mode == LibpqSslMode::Disable {
        return Ok(clear);
    }
    if !cfg!(feature = "tls") {
        return match mode {
            LibpqSslMode::Allow | LibpqSslMode::Prefer => Ok(clear),
            _ => Err(Error::input(format!(
                "sslmode={} needs TLS, but this kcache was built without TLS (the \"tls\" feature)",
                mode.name()
            ))),
        };
    }
    let identity = client_identity(files)?;
    let plan = match mode {
        LibpqSslMode::Disable => clear,
        LibpqSslMode::Allow | LibpqSslMode::Prefer => TlsPlan { mode: SslMode::Prefer, verify: None, identity },
        LibpqSslMode::Require => {
            let root = match files.rootcert {
                Some(path) => Some(existing(path, "root certificate file (sslrootcert)")?),
                None => files.default_file("root.crt").filter(|p| p.is_file()),
            };
            let verify = root.map(|r| Verify { roots: Roots::File(r), hostname: false });
            TlsPlan { mode: SslMode::Require, verify, identity }
        }
        LibpqSslMode::VerifyCa | LibpqSslMode::VerifyFull => {
            let roots = match files.rootcert {
                Some("system") => Roots::System,
                Some(path) => Roots::File(existing(path, "root certificate file (sslrootcert)")?),
                None => match files.default_file("root.crt") {
                    Some(path) if path.is_file() => Roots::File(path),
                    default => {
                        let shown = default.map_or("~/.postgresql/root.crt".to_string(), |p| p.display().to_string());
                        return Err(Error::input(format!(
                            "sslmode={} needs a root certificate, and {shown} does not exist",
                            mode.name()
                        ))
                        .with_hint(
                            "give the file with sslrootcert, use the system's roots with sslrootcert=system \
                             (and sslmode=verify-full), or choose sslmode=require to skip the check",
                        ));
                    }
                },
            };
            let verify = Verify { roots, hostname: mode == LibpqSslMode::VerifyFull };
            TlsPlan { mode: SslMode::Require, verify: Some(verify), identity }
        }
    };
    Ok(plan)
}

/// The client certificate and key, as libpq finds them.
fn client_identity(files: &TlsFiles<'_>) -> Result<Option<(PathBuf, PathBuf)>> {
    let cert = match files.cert {
        Some(path) => existing(path, "client certificate file (sslcert)")?,
        None => match files.default_file("postgresql.crt").filter(|p| p.is_file()) {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    let key = match files.key {
        Some(path) => PathBuf::from(path),
        None => files.default_file("postgresql.key").unwrap_or_else(|| PathBuf::from("postgresql.key")),
    };
    let meta = std::fs::metadata(&key).map_err(|e| {
        Error::input(format!(
            "the client certificate {} has no private key file: {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    check_key_permissions(&key, &meta)?;
    Ok(Some((cert, key)))
}

/// libpq refuses a private key readable by group or others (0640 is allowed when root owns it).
#[cfg(unix)]
fn check_key_permissions(key: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    let me = effective_uid();
    let bad = if me == Some(meta.uid()) {
        mode & 0o077 != 0
    } else if meta.uid() == 0 {
        mode & 0o037 != 0
    } else {
        false
    };
    if bad {
        return Err(Error::input(format!(
            "private key file {} has group or world access; it must be u=rw (0600) or less if owned by the \
             current user, or u=rw,g=r (0640) or less if owned by root",
            key.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_permissions(_key: &Path, _meta: &std::fs::Metadata) -> Result<()> {
    Ok(())
}

/// `path` as a path, if it names something that exists.
fn existing(path: &str, what: &str) -> Result<PathBuf> {
    std::fs::metadata(path).map_err(|e| Error::input(format!("cannot read the {what} {path}: {e}")))?;
    Ok(PathBuf::from(path))
}

#[cfg(feature = "tls")]
fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::input(format!("cannot read the {what} {}: {e}", path.display())))
}

#[cfg(feature = "tls")]
fn build_tls(plan: &TlsPlan) -> Result<Tls> {
    tls::build(plan)
}

#[cfg(not(feature = "tls"))]
fn build_tls(_plan: &TlsPlan) -> Result<Tls> {
    Ok(postgres::NoTls)
}

/// The effective uid, as the owner of `/proc/self` (no libc binding needed).
#[cfg(unix)]
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

#[cfg(not(unix))]
fn effective_uid() -> Option<u32> {
    None
}

/// The user name and home folder of the effective uid in `/etc/passwd`.
fn passwd_entry() -> Option<(String, PathBuf)> {
    let uid = effective_uid()?.to_string();
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, id, _, _, home, ..] if *id == uid && !name.is_empty() => {
                Some((name.to_string(), PathBuf::from(home)))
            }
            _ => None,
        }
    })
}

/// The OS user name: `USER`, `LOGNAME`, the passwd entry of the effective uid, else `postgres`.
fn os_user(env: &dyn Fn(&str) -> Option<String>) -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| env(v).filter(|s| !s.is_empty()))
        .or_else(|| passwd_entry().map(|(name, _)| name))
        .unwrap_or_else(|| "postgres".to_string())
}

/// `HOME`, else the passwd entry's home folder.
fn home_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).or_else(|| passwd_entry().map(|(_, home)| home))
}

/// The password file's content, if libpq would use it; otherwise a warning says why not.
fn read_passfile(path: &Path, warnings: &mut Vec<String>) -> Option<Vec<u8>> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warnings.push(format!("cannot read the password file \"{shown}\": {e}"));
            return None;
        }
    };
    if !meta.is_file() {
        warnings.push(format!("password file \"{shown}\" is not a plain file"));
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            warnings.push(format!(
                "password file \"{shown}\" has group or world access; permissions should be u=rw (0600) or less"
            ));
            return None;
        }
    }
    match std::fs::read(path) {
        Ok(content) => Some(content),
        Err(e) => {
            warnings.push(format!("cannot read the password file \"{shown}\": {e}"));
            None
        }
    }
}

/// One field of a password file line: its unescaped text, and whether it is the wildcard `*`.
struct Field {
    text: Vec<u8>,
    any: bool,
}

/// Splits a password file line on unescaped `:`; `\` escapes the next byte.
fn passfile_fields(line: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let (mut text, mut raw_star, mut escaped_any) = (Vec::new(), true, false);
    let mut bytes = line.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                escaped_any = true;
                text.extend(bytes.next());
            }
            b':' => {
                let any = raw_star && !escaped_any && text == b"*";
                fields.push(Field { text: std::mem::take(&mut text), any });
                (raw_star, escaped_any) = (true, false);
            }
            other => {
                raw_star &= other == b'*';
                text.push(other);
            }
        }
    }
    let any = raw_star && !escaped_any && text == b"*";
    fields.push(Field { text, any });
    fields
}

/// The password of the first line of a password file that matches, libpq's way. `socket`: the
/// host is a socket folder, which the entry `localhost` matches too.
fn passfile_lookup(content: &[u8], host: &str, port: &str, dbname: &str, user: &str, socket: bool) -> Option<Vec<u8>> {
    for line in content.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let fields = passfile_fields(line);
        let [h, p, d, u, password, ..] = fields.as_slice() else { continue };
        let matches = |f: &Field, want: &str| f.any || f.text == want.as_bytes();
        let host_ok = matches(h, host) || (socket && h.text == b"localhost");
        if host_ok && matches(p, port) && matches(d, dbname) && matches(u, user) {
            return (!password.text.is_empty()).then(|| password.text.clone());
        }
    }
    None
}

/// Percent-encodes what would make a location ambiguous or unsafe to print.
fn location_part(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control()
            || c == ' '
            || matches!(c, '%' | '@' | '?' | '#' | ':' | '&' | ',')
            || (c == '/' && !keep_slash)
        {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `postgresql://user@host:port/dbname`, or `postgresql://user@/dbname?host=/dir&port=N` for
/// socket folders; never a password.
fn location(user: &str, dbname: &str, slots: &[Slot]) -> String {
    let (user, dbname) = (location_part(user, false), location_part(dbname, false));
    if !slots.is_empty() && slots.iter().all(Slot::is_socket) {
        let dirs: Vec<String> =
            slots.iter().filter_map(|s| s.host.as_deref()).map(|h| location_part(h, true)).collect();
        let mut ports: Vec<String> = slots.iter().map(|s| s.port.to_string()).collect();
        ports.dedup();
        return format!("postgresql://{user}@/{dbname}?host={}&port={}", dirs.join(","), ports.join(","));
    }
    let mut hosts = Vec::new();
    let mut addrs = Vec::new();
    for slot in slots {
        let name = match (&slot.host, slot.hostaddr) {
            (Some(host), Some(addr)) => {
                addrs.push(addr.to_string());
                host.clone()
            }
            (Some(host), None) => host.clone(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => String::new(),
        };
        let name = if name.contains(':') && !name.starts_with('/') {
            format!("[{}]", location_part(&name, false).replace("%3A", ":"))
        } else {
            location_part(&name, false)
        };
        hosts.push(format!("{name}:{}", slot.port));
    }
    let mut out = format!("postgresql://{user}@{}/{dbname}", hosts.join(","));
    if !addrs.is_empty() {
        out.push_str(&format!("?hostaddr={}", addrs.join(",")));
    }
    out
}

/// Escapes a value for the `options` string (the server splits it on spaces).
fn option_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace(' ', "\\ ")
}

fn int_param(key: &str, value: &str) -> Result<i64> {
    value
        .trim()
        .parse::<i64>()
        .map_err(|_| Error::input(format!("invalid {key} {}: expected a whole number", quote(value))))
}

/// Seconds as libpq reads them: `<= 0` means none.
fn seconds(key: &str, value: &str) -> Result<Option<Duration>> {
    let n = int_param(key, value)?;
    Ok((n > 0).then(|| Duration::from_secs(n.unsigned_abs())))
}

fn invalid(key: &str, value: &str, expected: &str) -> Error {
    Error::input(format!("invalid {key} {}: expected {expected}", quote(value)))
}

/// Everything but the TLS connector, which [`resolve`] builds from the plan.
struct Prepared {
    config: postgres::Config,
    plan: TlsPlan,
    location: String,
    warnings: Vec<String>,
}

fn prepare(url: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Prepared> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(password) = var("PGPASSWORD") {
        secret(&password);
    }
    let params = match url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(text) => parse_setting(text)?,
        None => Params::default(),
    };
    let value = |key: &str| -> Option<String> {
        params
            .get(key)
            .map(str::to_string)
            .or_else(|| KEYWORDS.iter().find(|(k, _)| *k == key).and_then(|(_, name)| name.and_then(&var)))
    };
    let mut warnings = Vec::new();
    if var("PGSERVICE").is_some() {
        warnings.push("PGSERVICE is set, but kcache does not read pg_service.conf: it is ignored".to_string());
    }

    let slots = host_slots(value("host").as_deref(), value("hostaddr").as_deref(), value("port").as_deref())?;
    let user = value("user").unwrap_or_else(|| os_user(env));
    let dbname = value("dbname").unwrap_or_else(|| user.clone());
    let home = home_dir(env);

    let mut config = postgres::Config::new();
    config.user(&user);
    config.dbname(&dbname);

    let password = match value("password") {
        Some(password) => Some(password.into_bytes()),
        None => {
            let path = value("passfile").map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".pgpass")));
            let content = path.and_then(|p| read_passfile(&p, &mut warnings));
            content.and_then(|content| {
                slots.iter().find_map(|slot| {
                    let host = slot.host.clone().or_else(|| slot.hostaddr.map(|a| a.to_string())).unwrap_or_default();
                    passfile_lookup(&content, &host, &slot.port_text, &dbname, &user, slot.is_socket())
                })
            })
        }
    };
    if let Some(password) = &password {
        let text = String::from_utf8_lossy(password);
        secret(&text);
        config.password(password);
    }

    let any_addr = slots.iter().any(|s| s.hostaddr.is_some());
    if any_addr && slots.iter().any(|s| s.hostaddr.is_none()) {
        return Err(Error::input("hostaddr has an empty entry: give an address for every host"));
    }
    for slot in &slots {
        if let Some(addr) = slot.hostaddr {
            config.hostaddr(addr);
        }
    }
    if !any_addr || slots.iter().any(|s| s.host.is_some()) {
        for slot in &slots {
            match (&slot.host, slot.hostaddr) {
                (Some(host), _) => config.host(host),
                (None, Some(addr)) => config.host(&addr.to_string()),
                (None, None) => config.host(&default_socket_dir()),
            };
        }
    }
    let first_port = slots.first().map_or(DEFAULT_PORT, |s| s.port);
    if slots.iter().all(|s| s.port == first_port) {
        config.port(first_port);
    } else {
        for slot in &slots {
            config.port(slot.port);
        }
    }

    let mut options = value("options");
    for (name, setting) in ENV_GUCS {
        if let Some(v) = var(name).filter(|v| !v.eq_ignore_ascii_case("default")) {
            let extra = format!("-c {setting}={}", option_value(&v));
            options = Some(match options {
                Some(o) => format!("{o} {extra}"),
                None => extra,
            });
        }
    }
    if let Some(options) = &options {
        config.options(options);
    }
    let application_name = value("application_name")
        .or_else(|| value("fallback_application_name"))
        .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string());
    config.application_name(&application_name);

    if let Some(v) = value("connect_timeout")
        && let Some(timeout) = seconds("connect_timeout", &v)?
    {
        config.connect_timeout(timeout);
    }
    if let Some(v) = value("keepalives") {
        config.keepalives(int_param("keepalives", &v)? != 0);
    }
    if let Some(v) = value("keepalives_idle")
        && let Some(idle) = seconds("keepalives_idle", &v)?
    {
        config.keepalives_idle(idle);
    }
    if let Some(v) = value("keepalives_interval")
        && let Some(interval) = seconds("keepalives_interval", &v)?
    {
        config.keepalives_interval(interval);
    }
    if let Some(v) = value("keepalives_count") {
        let count = int_param("keepalives_count", &v)?;
        config.keepalives_retries(u32::try_from(count).map_err(|_| invalid("keepalives_count", &v, "a count"))?);
    }
    if let Some(v) = value("tcp_user_timeout") {
        let ms = int_param("tcp_user_timeout", &v)?;
        if ms > 0 {
            config.tcp_user_timeout(Duration::from_millis(ms.unsigned_abs()));
        }
    }
    if let Some(v) = value("target_session_attrs") {
        config.target_session_attrs(match v.as_str() {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            _ => return Err(invalid("target_session_attrs", &v, "any, read-write or read-only")),
        });
    }
    if let Some(v) = value("channel_binding") {
        config.channel_binding(match v.as_str() {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => return Err(invalid("channel_binding", &v, "disable, prefer or require")),
        });
    }
    if let Some(v) = value("load_balance_hosts") {
        config.load_balance_hosts(match v.as_str() {
            "disable" => LoadBalanceHosts::Disable,
            "random" => LoadBalanceHosts::Random,
            _ => return Err(invalid("load_balance_hosts", &v, "disable or random")),
        });
    }
    if let Some(v) = value("client_encoding")
        && !matches!(v.to_ascii_lowercase().as_str(), "utf8" | "utf-8" | "unicode" | "auto")
    {
        return Err(invalid("client_encoding", &v, "UTF8, the only encoding kcache uses"));
    }
    match value("gssencmode").as_deref() {
        None | Some("disable" | "prefer") => {}
        Some("require") => return Err(Error::input("gssencmode=require: kcache has no GSSAPI support")),
        Some(other) => return Err(invalid("gssencmode", other, "disable, prefer or require")),
    }

    let rootcert = value("sslrootcert");
    let mode = match value("sslmode") {
        Some(text) => LibpqSslMode::parse(&text)?,
        None if rootcert.as_deref() == Some("system") => LibpqSslMode::VerifyFull,
        None => LibpqSslMode::Prefer,
    };
    if rootcert.as_deref() == Some("system") && mode != LibpqSslMode::VerifyFull {
        return Err(Error::input(format!(
            "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
            mode.name()
        )));
    }
    let direct = match value("sslnegotiation").as_deref() {
        None | Some("postgres") => false,
        Some("direct") if mode.requires_tls() => true,
        Some("direct") => {
            return Err(Error::input(format!(
                "weak sslmode \"{}\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", \
                 or \"verify-full\")",
                mode.name()
            )));
        }
        Some(other) => return Err(invalid("sslnegotiation", other, "postgres or direct")),
    };
    let all_sockets = slots.iter().all(Slot::is_socket);
    let (cert, key) = (value("sslcert"), value("sslkey"));
    let files =
        TlsFiles { rootcert: rootcert.as_deref(), cert: cert.as_deref(), key: key.as_deref(), home: home.as_deref() };
    let plan = plan_tls(mode, all_sockets, &files)?;
    config.ssl_mode(plan.mode);
    if direct && plan.mode != SslMode::Disable {
        config.ssl_negotiation(SslNegotiation::Direct);
    }

    let location = location(&user, &dbname, &slots);
    Ok(Prepared { config, plan, location, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, redact};
    use postgres::config::Host;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    thread_local! {
        /// Whether [`secret`] registers passwords on this test's thread.
        pub(super) static REGISTER: Cell<bool> = const { Cell::new(true) };
    }

    /// `openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 36500`.
    #[cfg(feature = "tls")]
    pub(super) const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIDCzCCAfOgAwIBAgIUavo+QMcmOm/EMd9emEvZamimT3YwDQYJKoZIhvcNAQEL
BQAwFDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNTE1MDIyN1oYDzIxMjYx
MTAxMTUwMjI3WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwggEiMA0GCSqGSIb3DQEB
AQUAA4IBDwAwggEKAoIBAQC9Qwqrgp0NGgUzgYk1L6lVa+fve2edQSKxV6X/KGUF
o745HcHnCN0XPIbx1TYEGNXmHDE2OdxZcfWdiwKbbCTsWkHekM590ju//aHj97eQ
sFIkboRqAHGSRJiWaF13aTW7p4VUg8QF4hmbPUujcZfSWA3qAswJJVbp2Ys9mjBQ
2BtdqnxM3zqjCyqHDa20fZkaE4Z5ZsqYSTk0X+HUU+CVs3bwQLxSm15ArhVzWUfg
pQLr6hQzEBEkFXTe/Fx7nHzfs5Cyh0q331GgMKrejk8flKsHyTkYTiD1eNAlMWxK
lgWKX6ZAB2QvHuCg2zjtYKFreSYYXwgCQ1Ct5+ELMv6bAgMBAAGjUzBRMB0GA1Ud
DgQWBBTkl55pBvAvDSNKUF4pQZucUfjYZjAfBgNVHSMEGDAWgBTkl55pBvAvDSNK
UF4pQZucUfjYZjAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4IBAQCT
BhadleqN0uUbm1Q4GW69wWtd1xOdOZd7HCj+mTGkBwbVXZmcs8edZplNB65oEFZo
lv4aS+ms7MaVG6I4zlV7k9RM0hoiNiP6uxC3kavHE5bdKNHC2BOrETFGT953I0+/
FlvQqqYYxpfofSeodH1pT1V2epCzXNMHPwtpGtwa4AUnR5tPC2ZIDt6Jvncxblzs
SuGykEhTeIcmAH+sJB4aySqBHpHKWQof5UQXbUF0TDiVxs2owMEpbfv9ohRLEwdU
8OGZAIHoSg4jS1vKYdS7XuV1jFVrA9olpsXxeffv65RRA+zVIRo6/2n/B66Zc/K1
bDeHaskbdH1Z905Gw1kL
-----END CERTIFICATE-----
";
    /// Its key, as PKCS#8 (what `openssl req` writes).
    #[cfg(feature = "tls")]
    pub(super) const KEY_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC9Qwqrgp0NGgUz
gYk1L6lVa+fve2edQSKxV6X/KGUFo745HcHnCN0XPIbx1TYEGNXmHDE2OdxZcfWd
iwKbbCTsWkHekM590ju//aHj97eQsFIkboRqAHGSRJiWaF13aTW7p4VUg8QF4hmb
PUujcZfSWA3qAswJJVbp2Ys9mjBQ2BtdqnxM3zqjCyqHDa20fZkaE4Z5ZsqYSTk0
X+HUU+CVs3bwQLxSm15ArhVzWUfgpQLr6hQzEBEkFXTe/Fx7nHzfs5Cyh0q331Gg
MKrejk8flKsHyTkYTiD1eNAlMWxKlgWKX6ZAB2QvHuCg2zjtYKFreSYYXwgCQ1Ct
5+ELMv6bAgMBAAECggEAFHKQTgxb/GThx/lIQiNGl7CDS+fYv3Agl+lgyUrrcysI
K7KP1u6puE91Qt5mqhWm0mgcVv/0UwORZjZ1DyalbJWpxSp+7LAQfYMhAPir7+lk
zoPUMYGfw44+sA1Rf8uxnvcP3BwqSvptCs0aBWwJ25Ng2XX45koO9E/pD7w/WRR4
Eyz17ZDqS2G4DE9e2PIHMUrBZl8UgDmzwTqesfnVybh4y4I48hluYKij5EduoFe3
Aa2mEYb03k9HH95k614ypqF8SNp8rVivuA79lWVfY6LmfxoXw75fkmKwK5eBLGWX
e7lTxv8tVUDq687840SM5SuCz8TUOENLfw7bWPYfmQKBgQD7BLvzSXamd0qdbG+D
Yq3oQ/Z+fBxillQA/NtotV/L0qilHIJlgW8SdgTrJRK48VZz+N0OSvwP2rN4LL/3
b5Gc3in7o6Bh01qlrS95py/oXBHBTpyssTXVkJPQG/p8fvbUDLjAq0mfE/ykQlky
XTChwyLzxG6mTW5BEU8K/UqVEwKBgQDBBI+x+ggjf8uiq3XT9+7Q1zMwC5dHHPDT
0K1izzYJmxlV54Uf3fC/oY0bTdkeX1KhoK7GRCpoP4+sEFkuqNPBTEjGvevvK/La
huRH2pOvPMRU8VtNcY6VmB4fwKA2W1AW0Iur60yuZxsSGFVGo83dyjMplhAErLJc
OxcveUqJWQKBgGTAvLPk+8PLQ962BHhm5kjA5rJUHIyRrDwNQf/gNQg5kMldDRWz
AyMUzdqYMdCbxciczhWLkWrHrJuC0rZ9SKP/JDjFr300eUDgp5qbuYX5VoMRi59h
Lat/8WRppnvL9kScqpdi6RT5z8EahHTLpNZ43ZGceZE0qRli2igeDI6TAoGASSq8
ed/o8+P+wmQyny5t9faNrdnG96sN041YHIul1VBY80p3GVRdbZcE0WPaOPwza5do
iTnPxYLKqJPt6pUO6EhNkiDubdSAE7xsjpxZvWTQm85+KMYyIZzvVmQDl3dXzb4y
I/JnN/lXtq1IriVr5XY/nLUIz2zTk8jGijV1PskCgYEArqmb7Z04oIYCLbjHkGOU
84hrfxE3Tc4/OLtuHKaX/SOBM16f1ChD0YbB/I2xECGcqs7O8WTo5eJ5axJTaYDp
Lntzw/Cfs4Jqw1hu2wfbOVk4MJeZcr8g4mC1+OCNdqdadviCt9lHBnTnNRLZqB+U
GhSveqyZL6KSy7ajNgvBDeA=
-----END PRIVATE KEY-----
";
    /// The same key as PKCS#1 (`openssl rsa -traditional`).
    #[cfg(feature = "tls")]
    pub(super) const KEY_PKCS1_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAvUMKq4KdDRoFM4GJNS+pVWvn73tnnUEisVel/yhlBaO+OR3B
5wjdFzyG8dU2BBjV5hwxNjncWXH1nYsCm2wk7FpB3pDOfdI7v/2h4/e3kLBSJG6E
agBxkkSYlmhdd2k1u6eFVIPEBeIZmz1Lo3GX0lgN6gLMCSVW6dmLPZowUNgbXap8
TN86owsqhw2ttH2ZGhOGeWbKmEk5NF/h1FPglbN28EC8UpteQK4Vc1lH4KUC6+oU
MxARJBV03vxce5x837OQsodKt99RoDCq3o5PH5SrB8k5GE4g9XjQJTFsSpYFil+m
QAdkLx7goNs47WCha3kmGF8IAkNQrefhCzL+mwIDAQABAoIBABRykE4MW/xk4cf5
SEIjRpewg0vn2L9wIJfpYMlK63MrCCuyj9buqbhPdULeZqoVptJoHFb/9FMDkWY2
dQ8mpWyVqcUqfuywEH2DIQD4q+/pZM6D1DGBn8OOPrANUX/LsZ73D9wcKkr6bQrN
GgVsCduTYNl1+OZKDvRP6Q+8P1kUeBMs9e2Q6kthuAxPXtjyBzFKwWZfFIA5s8E6
nrH51cm4eMuCOPIZbmCoo+RHbqBXtwGtphGG9N5PRx/eZOteMqahfEjafK1Yr7gO
/ZVlX2Oi5n8aF8O+X5JisCuXgSxll3u5U8b/LVVA6uvO/ONEjOUrgs/E1DhDS38O
21j2H5kCgYEA+wS780l2pndKnWxvg2Kt6EP2fnwcYpZUAPzbaLVfy9KopRyCZYFv
EnYE6yUSuPFWc/jdDkr8D9qzeCy/92+RnN4p+6OgYdNapa0veacv6FwRwU6crLE1
1ZCT0Bv6fH721Ay4wKtJnxP8pEJZMl0wocMi88Rupk1uQRFPCv1KlRMCgYEAwQSP
sfoII3/Loqt10/fu0NczMAuXRxzw09CtYs82CZsZVeeFH93wv6GNG03ZHl9SoaCu
xkQqaD+PrBBZLqjTwUxIxr3r7yvy2obkR9qTrzzEVPFbTXGOlZgeH8CgNltQFtCL
q+tMrmcbEhhVRqPN3cozKZYQBKyyXDsXL3lKiVkCgYBkwLyz5PvDy0PetgR4ZuZI
wOayVByMkaw8DUH/4DUIOZDJXQ0VswMjFM3amDHQm8XInM4Vi5Fqx6ybgtK2fUij
/yQ4xa99NHlA4Keam7mF+VaDEYufYS2rf/FkaaZ7y/ZEnKqXYukU+c/BGoR0y6TW
eN2RnHmRNKkZYtooHgyOkwKBgEkqvHnf6PPj/sJkMp8ubfX2ja3ZxverDdONWByL
pdVQWPNKdxlUXW2XBNFj2jj8M2uXaIk5z8WCyqiT7eqVDuhITZIg7m3UgBO8bI6c
Wb1k0JvOfijGMiGc71ZkA5d3V82+MiPyZzf5V7atSK4la+V2P5y1CM9s05PIxoo1
dT7JAoGBAK6pm+2dOKCGAi24x5BjlPOIa38RN03OPzi7bhyml/0jgTNen9QoQ9GG
wfyNsRAhnKrOzvFk6OXieWsSU2mA6S57c8Pwn7OCasNYbtsH2zlZODCXmXK/IOJg
tfjgjXanWnb4grfZRwZ05zUS2agflBoUr3qsmS+iksu2ozYLwQ3g
-----END RSA PRIVATE KEY-----
";
    /// A second, unrelated self-signed certificate (EC P-256, CN=second-ca).
    #[cfg(feature = "tls")]
    pub(super) const CERT2_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASWgAwIBAgIUD9R50zyr0Sg5LegGIm7EsJVTZ/8wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJc2Vjb25kLWNhMCAXDTI2MTEyNTE1MDIyN1oYDzIxMjYxMTAx
MTUwMjI3WjAUMRIwEAYDVQQDDAlzZWNvbmQtY2EwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARjt3/vp6AwpfTpB/drKXIgtNURQuzZVC+igCpl1EzxeWaC//y+FY0F
5GCI49Q83d7yXcjpNnLgyrhkG9hpnKP/o1MwUTAdBgNVHQ4EFgQUtRyidTH+tdw1
thy5gey4/MWqrcIwHwYDVR0jBBgwFoAUtRyidTH+tdw1thy5gey4/MWqrcIwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA1e/41zdHhx2bH1ViSTLI
e1AdGXFDocry8nzc6m9dNWwCIQCN4L7sPH/aspEAy3hBaOh41cTxRMlKLZ3t/mqM
ZxImMA==
-----END CERTIFICATE-----
";

    /// A fake environment with its own empty home folder (so that no real ~/.pgpass or
    /// ~/.postgresql is read) and USER=alice.
    struct Fx {
        home: tempfile::TempDir,
        vars: HashMap<String, String>,
    }

    impl Fx {
        fn new() -> Fx {
            let home = tempfile::tempdir().expect("temp dir");
            let mut vars = HashMap::new();
            vars.insert("HOME".to_string(), home.path().display().to_string());
            vars.insert("USER".to_string(), "alice".to_string());
            Fx { home, vars }
        }
        fn var(mut self, name: &str, value: &str) -> Fx {
            self.vars.insert(name.to_string(), value.to_string());
            self
        }
        fn unset(mut self, name: &str) -> Fx {
            self.vars.remove(name);
            self
        }
        fn env(&self) -> impl Fn(&str) -> Option<String> + '_ {
            move |name| self.vars.get(name).cloned()
        }
        fn try_prepare(&self, url: Option<&str>) -> Result<Prepared> {
            prepare(url, &self.env())
        }
        fn prepare(&self, url: &str) -> Prepared {
            self.try_prepare(Some(url)).unwrap_or_else(|e| panic!("{url}: {e}"))
        }
        fn defaults(&self) -> Prepared {
            self.try_prepare(None).unwrap_or_else(|e| panic!("no url: {e}"))
        }
        /// The error for `url`, unredacted (chain and hint), after checking it is an input error.
        fn error(&self, url: &str) -> String {
            match self.try_prepare(Some(url)) {
                Ok(_) => panic!("{url} was accepted"),
                Err(e) => unredacted(&e),
            }
        }
        fn resolve(&self, url: &str) -> Result<Target> {
            resolve(Some(url), &self.env())
        }
        /// Writes `content` at `rel` under the home folder with `mode`; returns its path.
        fn file(&self, rel: &str, content: &str, mode: u32) -> PathBuf {
            let path = self.home.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&path, content).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        }
    }

    fn unredacted(e: &Error) -> String {
        assert_eq!(e.kind(), ErrorKind::Input, "{e}");
        let mut text = e.chain().join(": ");
        if let Some(hint) = e.hint() {
            text.push_str(" hint: ");
            text.push_str(hint);
        }
        text
    }

    fn hosts(p: &Prepared) -> Vec<String> {
        p.config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => format!("tcp:{name}"),
                Host::Unix(path) => format!("unix:{}", path.display()),
            })
            .collect()
    }

    fn password(p: &Prepared) -> Option<String> {
        p.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// What `prefer` becomes: `Prefer`, or `Disable` in a build without TLS.
    fn prefer() -> SslMode {
        if cfg!(feature = "tls") { SslMode::Prefer } else { SslMode::Disable }
    }

    fn is_default_socket(host: &str) -> bool {
        DEFAULT_SOCKET_DIRS.iter().any(|d| host == format!("unix:{d}"))
    }

    #[test]
    fn every_url_form_kinto_takes() {
        let fx = Fx::new();
        for scheme in ["postgresql", "postgres", "postgresql+psycopg2", "postgresql+pg8000", "POSTGRESQL", "Postgres"] {
            let p = fx.prepare(&format!("{scheme}://bob:kc-pw-x1@db.example:6543/cache"));
            assert_eq!(p.config.get_user(), Some("bob"), "{scheme}");
            assert_eq!(password(&p).as_deref(), Some("kc-pw-x1"));
            assert_eq!(hosts(&p), ["tcp:db.example"]);
            assert_eq!(p.config.get_ports(), [6543]);
            assert_eq!(p.config.get_dbname(), Some("cache"));
            assert_eq!(p.location, "postgresql://bob@db.example:6543/cache");
        }
        // Kinto's own example, and the shortest forms.
        let p = fx.prepare("postgresql://postgres:kc-example-pw@localhost/postgres");
        assert_eq!((hosts(&p), p.config.get_ports()), (vec!["tcp:localhost".to_string()], &[5432][..]));
        let p = fx.prepare("postgresql://db.example");
        assert_eq!((p.config.get_user(), p.config.get_dbname()), (Some("alice"), Some("alice")));
        assert_eq!(p.config.get_password(), None);
        let p = fx.prepare("postgres://db.example/");
        assert_eq!(p.config.get_dbname(), Some("alice"));
        let p = fx.prepare("postgresql://db.example?sslmode=disable");
        assert_eq!(p.config.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn other_schemes_and_bad_drivers_are_refused() {
        let fx = Fx::new();
        assert!(fx.error("mysql://u@h/db").contains("unsupported URL scheme mysql://"));
        for url in ["postgresql+://h/db", "postgresql+psy-co://h/db", "redis://h", "postgresqlx://h"] {
            assert!(fx.error(url).contains("unsupported URL scheme"), "{url}");
        }
        assert!(fx.error("just-a-name").contains("neither a URL"));
    }

    #[test]
    fn percent_decoding_in_every_part() {
        let fx = Fx::new();
        let p = fx
            .prepare("postgresql://us%40er%3Aone:p%40ss%2Fw%3Ard%25@h%2Dx.example:5433/my%20db?application_name=a%26b");
        assert_eq!(p.config.get_user(), Some("us@er:one"));
        assert_eq!(password(&p).as_deref(), Some("p@ss/w:rd%"));
        assert_eq!(hosts(&p), ["tcp:h-x.example"]);
        assert_eq!(p.config.get_dbname(), Some("my db"));
        assert_eq!(p.config.get_application_name(), Some("a&b"));
        assert_eq!(p.location, "postgresql://us%40er%3Aone@h-x.example:5433/my%20db");
        // Lenient like SQLAlchemy: a '%' without two hex digits stays; '+' is kept by libpq forms.
        let p = fx.prepare("postgresql://u:100%sure+x@h/db?application_name=a+b");
        assert_eq!(password(&p).as_deref(), Some("100%sure+x"));
        assert_eq!(p.config.get_application_name(), Some("a+b"));
        // ...and means a space in the query of a SQLAlchemy URL, as parse_qsl reads it.
        let p = fx.prepare("postgresql+psycopg2://u@h/db?application_name=a+b%2Bc");
        assert_eq!(p.config.get_application_name(), Some("a b+c"));
        // An unencoded '@' in the password: the user information ends at the last '@'.
        let p = fx.prepare("postgresql://user@server:kc-p@ss@h/db");
        assert_eq!((p.config.get_user(), password(&p).as_deref()), (Some("user@server"), Some("kc-p@ss")));
        // '#' is an ordinary character, as in libpq.
        let p = fx.prepare("postgresql://u:kc#pw@h/d#b");
        assert_eq!((password(&p).as_deref(), p.config.get_dbname()), (Some("kc#pw"), Some("d#b")));
        assert!(fx.error("postgresql://u@h/d%00b").contains("database name in the PostgreSQL URL contains %00"));
        assert!(fx.error("postgresql://u%FF@h/db").contains("user name in the PostgreSQL URL is not UTF-8"));
    }

    #[test]
    fn socket_folders_in_the_host_or_the_query() {
        let fx = Fx::new();
        let p = fx.prepare("postgresql://bob@%2Ftmp%2Fpg:6000/cache");
        assert_eq!(hosts(&p), ["unix:/tmp/pg"]);
        assert_eq!(p.config.get_ports(), [6000]);
        assert_eq!(p.location, "postgresql://bob@/cache?host=/tmp/pg&port=6000");
        let p = fx.prepare("postgresql:///cache?host=/var/lib/pg%20x&port=6001&user=bob");
        assert_eq!(hosts(&p), ["unix:/var/lib/pg x"]);
        assert_eq!(p.config.get_ports(), [6001]);
        assert_eq!(p.location, "postgresql://bob@/cache?host=/var/lib/pg%20x&port=6001");
        // A query host overrides the URL's, as in libpq.
        let p = fx.prepare("postgresql://u@ignored.example/db?host=/srv/pg");
        assert_eq!(hosts(&p), ["unix:/srv/pg"]);
        let p = fx.prepare("postgresql+psycopg2://u:kc-socket-pw@/db?host=/run/postgresql");
        assert_eq!(hosts(&p), ["unix:/run/postgresql"]);
    }

    #[test]
    fn ipv6_hosts_and_host_lists() {
        let fx = Fx::new();
        let p = fx.prepare("postgresql://u@[::1]:5433/db");
        assert_eq!(hosts(&p), ["tcp:::1"]);
        assert_eq!(p.config.get_ports(), [5433]);
        assert_eq!(p.location, "postgresql://u@[::1]:5433/db");
        let p = fx.prepare("postgresql://u@[fe80::1%25eth0]/db");
        assert_eq!(hosts(&p), ["tcp:fe80::1%eth0"]);
        assert_eq!(p.config.get_ports(), [5432]);
        let p = fx.prepare("postgresql://u@h1:5433,[::1],h3:5435/db");
        assert_eq!(hosts(&p), ["tcp:h1", "tcp:::1", "tcp:h3"]);
        assert_eq!(p.config.get_ports(), [5433, 5432, 5435]);
        assert_eq!(p.location, "postgresql://u@h1:5433,[::1]:5432,h3:5435/db");
        let p = fx.prepare("postgresql://u@h1,h2:6000/db");
        assert_eq!(p.config.get_ports(), [5432, 6000]);
        let p = fx.prepare("host=h1,h2 port=6000");
        assert_eq!(p.config.get_ports(), [6000]);
        assert!(fx.error("host=h1,h2 port=1,2,3").contains("could not match 3 port numbers to 2 hosts"));
        assert!(fx.error("postgresql://u@[::1/db").contains("closing ']'"));
        assert!(fx.error("postgresql://u@[::1]x/db").contains("after ']'"));
    }

    #[test]
    fn query_parameters_reach_the_config() {
        let fx = Fx::new();
        let p = fx.prepare(
            "postgresql://u@h/db?connect_timeout=7&application_name=app&options=-c%20statement_timeout%3D1500\
             &keepalives=1&keepalives_idle=30&keepalives_interval=5&keepalives_count=4&tcp_user_timeout=2500\
             &target_session_attrs=read-write&channel_binding=require&load_balance_hosts=random\
             &client_encoding=UTF8&gssencmode=disable&sslmode=prefer",
        );
        let c = &p.config;
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(c.get_application_name(), Some("app"));
        assert_eq!(c.get_options(), Some("-c statement_timeout=1500"));
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(c.get_keepalives_retries(), Some(4));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_millis(2500)));
        assert_eq!(c.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
        assert_eq!(c.get_channel_binding(), ChannelBinding::Require);
        assert_eq!(c.get_load_balance_hosts(), LoadBalanceHosts::Random);
        let p = fx.prepare("postgresql://u@h/db?keepalives=0&keepalives_retries=2&connect_timeout=0");
        assert!(!p.config.get_keepalives());
        assert_eq!(p.config.get_keepalives_retries(), Some(2));
        assert_eq!(p.config.get_connect_timeout(), None, "<= 0 means no timeout");
        let p = fx.prepare("postgresql://u@h/db?connect_timeout=-3");
        assert_eq!(p.config.get_connect_timeout(), None);
        match fx.try_prepare(Some("postgresql://u@h/db?ssl=true")) {
            Ok(p) => assert_eq!(p.plan.mode, SslMode::Require),
            Err(e) => assert!(!cfg!(feature = "tls") && unredacted(&e).contains("built without TLS"), "{e}"),
        }
        // Empty and repeated parameters: empty counts as unset, the last one wins.
        let p = fx.prepare("postgresql://u@h/db?application_name=&&connect_timeout=3&connect_timeout=4");
        assert_eq!(p.config.get_application_name(), Some("kcache"));
        assert_eq!(p.config.get_connect_timeout(), Some(&Duration::from_secs(4)));
        for (url, what) in [
            ("postgresql://u@h/db?connect_timeout=soon", "invalid connect_timeout 'soon'"),
            ("postgresql://u@h/db?target_session_attrs=primary", "any, read-write or read-only"),
            ("postgresql://u@h/db?channel_binding=maybe", "invalid channel_binding"),
            ("postgresql://u@h/db?load_balance_hosts=yes", "invalid load_balance_hosts"),
            ("postgresql://u@h/db?client_encoding=LATIN1", "invalid client_encoding 'LATIN1'"),
            ("postgresql://u@h/db?gssencmode=require", "no GSSAPI"),
            ("postgresql://u@h/db?keepalives_count=-1", "invalid keepalives_count"),
            ("postgresql://u@h/db?ssl=yes", "only ssl=true"),
        ] {
            assert!(fx.error(url).contains(what), "{url}: {}", fx.error(url));
        }
    }

    #[test]
    fn application_name_defaults_to_kcache() {
        let fx = Fx::new();
        assert_eq!(fx.prepare("postgresql://h").config.get_application_name(), Some("kcache"));
        let p = fx.prepare("postgresql://h?fallback_application_name=fb");
        assert_eq!(p.config.get_application_name(), Some("fb"));
        let fx = fx.var("PGAPPNAME", "from-env");
        let p = fx.prepare("postgresql://h?fallback_application_name=fb");
        assert_eq!(p.config.get_application_name(), Some("from-env"));
        let p = fx.prepare("postgresql://h?application_name=given");
        assert_eq!(p.config.get_application_name(), Some("given"));
    }

    #[test]
    fn unknown_parameters_are_named_but_not_their_values() {
        let fx = Fx::new();
        let e = fx.error("postgresql://u@h/db?frobnicate=secret-value-42");
        assert!(e.contains("unknown parameter 'frobnicate' in the PostgreSQL URL"), "{e}");
        assert!(!e.contains("secret-value-42"));
        assert!(e.contains("hint: the parameters kcache knows are host, hostaddr"));
        let e = fx.error("postgresql://u@h/db?service=mine");
        assert!(e.contains("sets service, a libpq parameter kcache does not support"), "{e}");
        assert!(fx.error("postgresql://u@h/db?sslmode").contains("without '='"));
        assert!(fx.error("host=h bogus=1").contains("unknown parameter 'bogus' in the connection string"));
    }

    #[test]
    fn libpq_connection_strings() {
        let fx = Fx::new();
        let p = fx.prepare("host=/tmp port=5999 dbname=x user=bob password = 'kc pw 1' application_name='my app'");
        assert_eq!(hosts(&p), ["unix:/tmp"]);
        assert_eq!(p.config.get_ports(), [5999]);
        assert_eq!((p.config.get_user(), p.config.get_dbname()), (Some("bob"), Some("x")));
        assert_eq!(password(&p).as_deref(), Some("kc pw 1"));
        assert_eq!(p.config.get_application_name(), Some("my app"));
        let p = fx.prepare(r"host=db.example password='kc \'b\' \\ c' options=-c\ geqo=off");
        assert_eq!(password(&p).as_deref(), Some(r"kc 'b' \ c"));
        assert_eq!(p.config.get_options(), Some("-c geqo=off"));
        assert!(fx.error("host=h password='open").contains("unterminated quoted value"));
        assert!(fx.error("host=h dbname").contains("missing '=' after 'dbname'"));
        assert!(fx.error("host=h oops x=1").contains("missing '=' after a word"));
    }

    #[test]
    fn libpq_defaults_without_a_url() {
        let fx = Fx::new();
        for url in [None, Some(""), Some("   ")] {
            let p = fx.try_prepare(url).expect("defaults");
            assert_eq!(p.config.get_hosts().len(), 1);
            assert!(is_default_socket(&hosts(&p)[0]), "{:?}", hosts(&p));
            assert_eq!(p.config.get_ports(), [5432]);
            assert_eq!((p.config.get_user(), p.config.get_dbname()), (Some("alice"), Some("alice")));
            assert_eq!(p.config.get_application_name(), Some("kcache"));
            assert_eq!(p.config.get_password(), None);
            assert_eq!(p.plan.mode, SslMode::Disable, "a socket never uses TLS");
            assert!(p.location.starts_with("postgresql://alice@/alice?host=/"), "{}", p.location);
            assert!(p.location.ends_with("&port=5432"));
        }
        // An empty host in the URL or a list means the default socket too.
        let p = fx.prepare("postgresql://u@:6000/db");
        assert!(is_default_socket(&hosts(&p)[0]));
        assert_eq!(p.config.get_ports(), [6000]);
        // The OS user: USER, else LOGNAME, else the passwd entry (or "postgres").
        let fx = fx.unset("USER").var("LOGNAME", "logan");
        assert_eq!(fx.defaults().config.get_user(), Some("logan"));
        let fx = fx.unset("LOGNAME");
        let p = fx.defaults();
        let user = p.config.get_user().expect("a user");
        assert!(!user.is_empty());
        assert_eq!(p.config.get_dbname(), Some(user));
    }

    #[test]
    fn environment_variables_fill_what_the_url_leaves() {
        let fx = Fx::new()
            .var("PGHOST", "env-host.example")
            .var("PGPORT", "6432")
            .var("PGUSER", "envuser")
            .var("PGDATABASE", "envdb")
            .var("PGPASSWORD", "env-pw-9")
            .var("PGOPTIONS", "-c search_path=cache")
            .var("PGAPPNAME", "envapp")
            .var("PGCONNECT_TIMEOUT", "9")
            .var("PGSSLMODE", "allow")
            .var("PGTARGETSESSIONATTRS", "read-only");
        let p = fx.defaults();
        assert_eq!(hosts(&p), ["tcp:env-host.example"]);
        assert_eq!(p.config.get_ports(), [6432]);
        assert_eq!((p.config.get_user(), p.config.get_dbname()), (Some("envuser"), Some("envdb")));
        assert_eq!(password(&p).as_deref(), Some("env-pw-9"));
        assert_eq!(p.config.get_options(), Some("-c search_path=cache"));
        assert_eq!(p.config.get_application_name(), Some("envapp"));
        assert_eq!(p.config.get_connect_timeout(), Some(&Duration::from_secs(9)));
        assert_eq!(p.config.get_target_session_attrs(), TargetSessionAttrs::ReadOnly);
        assert_eq!(p.plan.mode, prefer());
        assert_eq!(p.location, "postgresql://envuser@env-host.example:6432/envdb");
        // The URL wins over every one of them.
        let p = fx.prepare(
            "postgresql://u:url-pw@url-host:7000/urldb?options=-c%20x%3D1&application_name=a&connect_timeout=3\
             &sslmode=disable",
        );
        assert_eq!(hosts(&p), ["tcp:url-host"]);
        assert_eq!(p.config.get_ports(), [7000]);
        assert_eq!((p.config.get_user(), p.config.get_dbname()), (Some("u"), Some("urldb")));
        assert_eq!(password(&p).as_deref(), Some("url-pw"));
        assert_eq!(p.config.get_options(), Some("-c x=1"));
        assert_eq!(p.config.get_application_name(), Some("a"));
        assert_eq!(p.config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(p.plan.mode, SslMode::Disable);
        // PGHOST may name a socket folder or a list.
        let fx = Fx::new().var("PGHOST", "/srv/sock,db2.example").var("PGPORT", "5440,5441");
        let p = fx.defaults();
        assert_eq!(hosts(&p), ["unix:/srv/sock", "tcp:db2.example"]);
        assert_eq!(p.config.get_ports(), [5440, 5441]);
    }

    #[test]
    fn empty_variables_and_parts_count_as_unset() {
        let fx = Fx::new().var("PGHOST", "").var("PGUSER", "").var("PGPORT", "").var("PGPASSWORD", "from-env-77");
        let p = fx.defaults();
        assert!(is_default_socket(&hosts(&p)[0]));
        assert_eq!(p.config.get_user(), Some("alice"));
        assert_eq!(p.config.get_ports(), [5432]);
        // "u:@" gives an empty password: PGPASSWORD is used, as libpq does.
        let p = fx.prepare("postgresql://u:@h/db");
        assert_eq!(password(&p).as_deref(), Some("from-env-77"));
    }

    #[test]
    fn pgtz_and_pgdatestyle_become_options() {
        let fx = Fx::new().var("PGTZ", "Europe/Paris").var("PGDATESTYLE", "ISO, DMY");
        let p = fx.prepare("postgresql://h/db?options=-c%20geqo%3Doff");
        assert_eq!(p.config.get_options(), Some(r"-c geqo=off -c DateStyle=ISO,\ DMY -c TimeZone=Europe/Paris"));
        let p = Fx::new().var("PGTZ", "UTC").defaults();
        assert_eq!(p.config.get_options(), Some("-c TimeZone=UTC"));
        let p = Fx::new().var("PGTZ", "DEFAULT").var("PGOPTIONS", "-c a=b").defaults();
        assert_eq!(p.config.get_options(), Some("-c a=b"));
        assert_eq!(Fx::new().defaults().config.get_options(), None);
    }

    #[test]
    fn password_precedence_url_then_pgpassword_then_passfile() {
        let fx = Fx::new();
        fx.file(".pgpass", "*:*:*:*:file-pw-5\n", 0o600);
        assert_eq!(password(&fx.prepare("postgresql://u@h/db")).as_deref(), Some("file-pw-5"));
        let fx = fx.var("PGPASSWORD", "env-pw-5");
        assert_eq!(password(&fx.prepare("postgresql://u@h/db")).as_deref(), Some("env-pw-5"));
        assert_eq!(password(&fx.prepare("postgresql://u:url-pw-5@h/db")).as_deref(), Some("url-pw-5"));
        // A password= parameter overrides the URL's own, as later values do in libpq.
        let p = fx.prepare("postgresql://u:url-pw-5@h/db?password=param-pw-5");
        assert_eq!(password(&p).as_deref(), Some("param-pw-5"));
    }

    #[test]
    fn pgpass_matching_rules() {
        let fx = Fx::new();
        fx.file(
            ".pgpass",
            "# a comment: *:*:*:*:kc-never\n\
             \n\
             too:few:fields:here\n\
             db.example:5432:cache:bob:kc-first\n\
             db.example:5432:cache:bob:kc-second\n\
             db.example:*:*:carol:kc-c\\:o\\\\lon:extra:fields\n\
             h\\:x:5432:*:*:kc-escaped-host\r\n\
             \\*:5432:*:*:kc-literal-star\n\
             *:6000:*:dave:kc-any-host\n\
             db.example:05432:*:erin:kc-port-as-text\n\
             db.example:5432:*:frank:\n\
             *:*:*:frank:kc-not-reached\n",
            0o600,
        );
        let pw = |url: &str| password(&fx.prepare(url));
        assert_eq!(pw("postgresql://bob@db.example/cache").as_deref(), Some("kc-first"), "first match wins");
        assert_eq!(pw("postgresql://bob@db.example/other"), None);
        assert_eq!(pw("postgresql://bob@db.example:5433/cache"), None);
        assert_eq!(pw("postgresql://carol@db.example:1234/any").as_deref(), Some(r"kc-c:o\lon"));
        assert_eq!(pw("host=h:x user=zed").as_deref(), Some("kc-escaped-host"));
        assert_eq!(pw("postgresql://zed@%2A/db").as_deref(), Some("kc-literal-star"));
        assert_eq!(pw("postgresql://zed@other.example/db"), None, "an escaped star is no wildcard");
        assert_eq!(pw("postgresql://dave@anything.example:6000/db").as_deref(), Some("kc-any-host"));
        assert_eq!(pw("postgresql://erin@db.example/db"), None, "ports are compared as text");
        assert_eq!(pw("postgresql://erin@db.example:05432/db").as_deref(), Some("kc-port-as-text"));
        assert_eq!(pw("postgresql://frank@db.example/db"), None, "an empty password ends the search");
        assert!(fx.prepare("postgresql://bob@db.example/cache").warnings.is_empty());
    }

    #[test]
    fn pgpass_for_sockets_hostaddr_and_host_lists() {
        let fx = Fx::new();
        fx.file(
            ".pgpass",
            "/srv/exact:5432:*:*:kc-exact-path\n\
             localhost:5432:*:*:kc-local\n\
             10.0.0.7:5432:*:*:kc-by-address\n\
             second.example:5432:*:*:kc-second-host\n",
            0o600,
        );
        let pw = |url: &str| password(&fx.prepare(url));
        assert_eq!(pw("postgresql:///db?host=/srv/exact").as_deref(), Some("kc-exact-path"));
        assert_eq!(pw("postgresql:///db?host=/srv/other").as_deref(), Some("kc-local"));
        assert_eq!(pw("postgresql:///db").as_deref(), Some("kc-local"), "the default socket is localhost");
        assert_eq!(pw("postgresql://127.0.0.1/db"), None, "a TCP host is compared as written");
        assert_eq!(pw("postgresql:///db?hostaddr=10.0.0.7").as_deref(), Some("kc-by-address"));
        assert_eq!(pw("postgresql:///db?host=named.example&hostaddr=10.0.0.7"), None, "the host name is the key");
        assert_eq!(pw("postgresql://first.example,second.example/db").as_deref(), Some("kc-second-host"));
    }

    #[test]
    fn pgpass_with_group_or_other_access_is_ignored_with_a_warning() {
        let fx = Fx::new();
        let path = fx.file(".pgpass", "*:*:*:*:kc-too-open\n", 0o640);
        let p = fx.prepare("postgresql://u@h/db");
        assert_eq!(p.config.get_password(), None);
        assert_eq!(
            p.warnings,
            [format!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            )]
        );
        for mode in [0o604, 0o610, 0o601] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(fx.prepare("postgresql://u@h/db").config.get_password(), None, "{mode:o}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert_eq!(password(&fx.prepare("postgresql://u@h/db")).as_deref(), Some("kc-too-open"));
        // A folder is not a password file.
        let fx = Fx::new();
        std::fs::create_dir(fx.home.path().join(".pgpass")).expect("mkdir");
        let p = fx.prepare("postgresql://u@h/db");
        assert_eq!(p.config.get_password(), None);
        assert!(p.warnings[0].contains("is not a plain file"), "{:?}", p.warnings);
    }

    #[test]
    fn pgpassfile_and_the_passfile_parameter() {
        let fx = Fx::new();
        fx.file(".pgpass", "*:*:*:*:kc-home-file\n", 0o600);
        let other = fx.file("elsewhere/pass", "*:*:*:*:kc-env-file\n", 0o600);
        let third = fx.file("third", "*:*:*:*:kc-param-file\n", 0o600);
        let fx = fx.var("PGPASSFILE", &other.display().to_string());
        assert_eq!(password(&fx.prepare("postgresql://u@h/db")).as_deref(), Some("kc-env-file"));
        let url = format!("postgresql://u@h/db?passfile={}", third.display());
        assert_eq!(password(&fx.prepare(&url)).as_deref(), Some("kc-param-file"));
        // A missing file is silently skipped, as in libpq.
        let fx = fx.var("PGPASSFILE", "/nonexistent/kcache/pgpass");
        let p = fx.prepare("postgresql://u@h/db");
        assert_eq!((p.config.get_password(), p.warnings.len()), (None, 0));
        // Without HOME, the passwd entry's home would be used: an empty HOME is unset.
        let p = Fx::new().var("HOME", "").var("PGPASSFILE", &other.display().to_string()).defaults();
        assert_eq!(password(&p).as_deref(), Some("kc-env-file"));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn sslmode_maps_onto_tokio_postgres_modes() {
        let fx = Fx::new();
        let plan = |mode: &str| fx.prepare(&format!("postgresql://u@db.example/db?sslmode={mode}")).plan;
        let any = |mode| TlsPlan { mode, verify: None, identity: None };
        assert_eq!(plan("disable"), any(SslMode::Disable));
        assert_eq!(plan("allow"), any(SslMode::Prefer));
        assert_eq!(plan("prefer"), any(SslMode::Prefer));
        assert_eq!(fx.prepare("postgresql://u@db.example/db").plan, any(SslMode::Prefer), "prefer is the default");
        assert_eq!(plan("require"), any(SslMode::Require));
        for mode in ["verify-ca", "verify-full"] {
            let e = fx.error(&format!("postgresql://u@db.example/db?sslmode={mode}"));
            assert!(e.contains(&format!("sslmode={mode} needs a root certificate")), "{e}");
            assert!(e.contains(".postgresql/root.crt does not exist"), "{e}");
        }
        let e = fx.error("postgresql://u@h/db?sslmode=verify_full");
        assert!(e.contains("invalid sslmode 'verify_full'"), "{e}");
        // With ~/.postgresql/root.crt, require verifies the chain like verify-ca.
        let root = fx.file(".postgresql/root.crt", CERT_PEM, 0o644);
        let ca = Some(Verify { roots: Roots::File(root.clone()), hostname: false });
        assert_eq!(plan("require"), TlsPlan { mode: SslMode::Require, verify: ca, identity: None });
        let ca = Some(Verify { roots: Roots::File(root.clone()), hostname: false });
        assert_eq!(plan("verify-ca"), TlsPlan { mode: SslMode::Require, verify: ca, identity: None });
        let full = Some(Verify { roots: Roots::File(root), hostname: true });
        assert_eq!(plan("verify-full"), TlsPlan { mode: SslMode::Require, verify: full, identity: None });
        assert_eq!(plan("prefer"), any(SslMode::Prefer), "prefer never verifies");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn sslrootcert_given_or_system() {
        let fx = Fx::new();
        let root = fx.file("certs/ca.pem", CERT_PEM, 0o644);
        let url = |mode: &str| format!("postgresql://u@db.example/db?sslmode={mode}&sslrootcert={}", root.display());
        let verify = |hostname| Some(Verify { roots: Roots::File(root.clone()), hostname });
        assert_eq!(fx.prepare(&url("require")).plan.verify, verify(false));
        assert_eq!(fx.prepare(&url("verify-ca")).plan.verify, verify(false));
        assert_eq!(fx.prepare(&url("verify-full")).plan.verify, verify(true));
        assert_eq!(fx.prepare(&url("allow")).plan.verify, None);
        let e = fx.error("postgresql://u@h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem");
        assert!(e.contains("cannot read the root certificate file (sslrootcert) /nonexistent/ca.pem"), "{e}");
        let fx = fx.var("PGSSLROOTCERT", &root.display().to_string());
        assert_eq!(fx.prepare("postgresql://u@h/db?sslmode=verify-ca").plan.verify, verify(false));
        // system: the system's roots, verify-full by default, nothing weaker.
        let fx = Fx::new();
        let p = fx.prepare("postgresql://u@db.example/db?sslrootcert=system");
        let system = Some(Verify { roots: Roots::System, hostname: true });
        assert_eq!(p.plan, TlsPlan { mode: SslMode::Require, verify: system, identity: None });
        for mode in ["disable", "allow", "prefer", "require", "verify-ca"] {
            let e = fx.error(&format!("postgresql://u@h/db?sslrootcert=system&sslmode={mode}"));
            assert!(e.contains(&format!("weak sslmode \"{mode}\" may not be used with sslrootcert=system")), "{e}");
        }
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let fx = Fx::new();
        for mode in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            let p = fx.prepare(&format!("postgresql:///db?host=/tmp&sslmode={mode}&sslrootcert=/nonexistent/ca"));
            assert_eq!(p.config.get_ssl_mode(), SslMode::Disable, "{mode}");
            assert_eq!(p.plan, TlsPlan { mode: SslMode::Disable, verify: None, identity: None });
        }
        let p = Fx::new().var("PGSSLMODE", "verify-full").defaults();
        assert_eq!(p.config.get_ssl_mode(), SslMode::Disable);
        // A list with a TCP host keeps the mode.
        let p = fx.prepare("postgresql:///db?host=/tmp,db.example&sslmode=allow");
        assert_eq!(p.config.get_ssl_mode(), prefer());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn sslnegotiation_direct_needs_a_tls_only_mode() {
        let fx = Fx::new();
        let p = fx.prepare("postgresql://u@h/db?sslmode=require&sslnegotiation=direct");
        assert_eq!(p.config.get_ssl_negotiation(), SslNegotiation::Direct);
        let p = fx.prepare("postgresql://u@h/db?sslnegotiation=postgres");
        assert_eq!(p.config.get_ssl_negotiation(), SslNegotiation::Postgres);
        let e = fx.error("postgresql://u@h/db?sslnegotiation=direct");
        assert!(e.contains("weak sslmode \"prefer\" may not be used with sslnegotiation=direct"), "{e}");
        assert!(fx.error("postgresql://u@h/db?sslnegotiation=fast").contains("invalid sslnegotiation"));
    }

    #[test]
    fn hostaddr_rules() {
        let fx = Fx::new();
        let p = fx.prepare("postgresql:///db?hostaddr=10.1.2.3&port=5999");
        assert_eq!(p.config.get_hostaddrs(), ["10.1.2.3".parse::<IpAddr>().expect("ip")]);
        assert!(p.config.get_hosts().is_empty());
        assert_eq!(p.location, "postgresql://alice@10.1.2.3:5999/db");
        assert_eq!(p.plan.mode, prefer(), "an address is TCP");
        let p = fx.prepare("postgresql://db.example/db?hostaddr=10.1.2.3");
        assert_eq!(hosts(&p), ["tcp:db.example"]);
        assert_eq!(p.location, "postgresql://alice@db.example:5432/db?hostaddr=10.1.2.3");
        let p = Fx::new().var("PGHOSTADDR", "::1").prepare("postgresql://db.example/db");
        assert_eq!(p.config.get_hostaddrs(), ["::1".parse::<IpAddr>().expect("ip")]);
        assert!(fx.error("postgresql:///db?hostaddr=db.example").contains("invalid hostaddr 'db.example'"));
        assert!(fx.error("host=a,b hostaddr=10.0.0.1").contains("could not match 2 host names to 1 hostaddr values"));
        assert!(fx.error("host=a,b hostaddr=10.0.0.1,").contains("empty entry"));
    }

    #[test]
    fn ports_are_checked() {
        let fx = Fx::new();
        for url in ["postgresql://u@h/db?port=0", "postgresql://u@h/db?port=70000", "postgresql://u@h/db?port=x1"] {
            assert!(fx.error(url).contains("invalid port"), "{url}");
        }
        assert!(Fx::new().var("PGPORT", "abc").try_prepare(None).is_err());
        let e = fx.error("postgresql://u@h:54a/db");
        assert!(e.contains("the port in the PostgreSQL URL is not a number") && !e.contains("54a"), "{e}");
        assert_eq!(fx.prepare("postgresql://u@h:/db").config.get_ports(), [5432]);
    }

    #[test]
    fn errors_never_contain_the_password() {
        let fx = Fx::new();
        let secret = "Zq-unique-pw-7731";
        for url in [
            format!("postgresql://u:{secret}@h/db?frobnicate=1"),
            format!("postgresql://u:{secret}@h/db?sslmode=bogus"),
            format!("postgresql://u:{secret}@h:99999/db"),
            format!("postgresql://u:{secret}@h/d%00b"),
            format!("postgresql://u:{secret}@[::1/db"),
            format!("postgresql://u@h/db?password={secret}&x=1"),
            format!("mysql://u:{secret}@h/db"),
            format!("host=h password={secret} dbname"),
            format!("host=h password='{secret}' bogus=1"),
            format!("u:{secret}@h"),
            format!("postgresql://u:{secret}@h/db?sslmode=verify-full"),
            // Unencoded '/' or '?' in the password: the parse goes wrong, but says nothing of it.
            format!("postgresql://u:Zq-ab/{secret}@h/db"),
            format!("postgresql://u:Zq-ab?{secret}@h/db"),
            format!("postgresql://u:1234?x{secret}=1@h/db"),
            format!("host=h password=Zq-ab {secret}"),
            format!("host=h password=Zq-ab {secret}=1"),
        ] {
            let e = fx.error(&url);
            assert!(!e.contains(secret), "{url}: {e}");
            assert!(!e.contains("Zq-unique"), "{url}: {e}");
        }
        // Nor does a location.
        let p = fx.prepare(&format!("postgresql://u:{secret}@h/db"));
        assert!(!p.location.contains(secret));
    }

    #[test]
    fn passwords_are_registered_as_secrets() {
        let fx = Fx::new();
        fx.prepare("postgresql://u:raw%2Dpw%2Done@h/db");
        assert_eq!(redact("x raw%2Dpw%2Done y raw-pw-one"), "x *** y ***");
        fx.prepare("postgresql://u@h/db?password=param%20pw%20two");
        assert_eq!(redact("param%20pw%20two|param pw two"), "***|***");
        fx.prepare("postgresql+psycopg2://u@h/db?password=plus+pw+three");
        assert_eq!(redact("plus pw three"), "***");
        fx.prepare("host=h password='conn pw four'");
        assert_eq!(redact("conn pw four"), "***");
        Fx::new().var("PGPASSWORD", "env-pw-five").defaults();
        assert_eq!(redact("env-pw-five"), "***");
        let fx = Fx::new();
        fx.file(".pgpass", "*:*:*:*:file\\:pw-six\n", 0o600);
        fx.prepare("postgresql://u@h/db");
        assert_eq!(redact("file:pw-six"), "***");
        // Even the password of a URL that is then refused.
        let _ = fx.try_prepare(Some("postgresql://u:refused-pw-seven@h/db?nope=1"));
        assert_eq!(redact("refused-pw-seven"), "***");
        // And what SQLAlchemy would read as the password when '/' is not encoded.
        let _ = fx.try_prepare(Some("postgresql://u:slash/pw-eight@h/db"));
        assert_eq!(redact("slash/pw-eight"), "***");
    }

    #[test]
    fn locations_are_readable_and_safe() {
        let fx = Fx::new();
        let p = fx.prepare("postgresql://a%0Ab:kc-loc-pw@h/d%1Bb");
        assert_eq!(p.location, "postgresql://a%0Ab@h:5432/d%1Bb");
        let p = fx.prepare("postgresql://u@/db?host=/s%26x,db.example");
        assert_eq!(p.location, "postgresql://u@%2Fs%26x:5432,db.example:5432/db");
        let p = fx.prepare("postgresql://u@/db?host=/s%26x");
        assert_eq!(p.location, "postgresql://u@/db?host=/s%26x&port=5432");
    }

    #[test]
    fn never_panics_on_odd_input() {
        REGISTER.with(|r| r.set(false));
        let fx = Fx::new();
        let pieces = [
            "postgresql://",
            "postgres+x://",
            "%",
            "%2",
            "%zz",
            "%00",
            "%C3",
            "@",
            ":",
            "[",
            "]",
            "/",
            "?",
            "&",
            "=",
            "#",
            ",",
            "'",
            "\\",
            " ",
            "é",
            "host",
            "port",
            "password",
            "9",
            "::1",
            "\u{0}",
            "sslmode",
            "verify-full",
        ];
        let mut seed = 0x2545_f491_u64;
        for _ in 0..4000 {
            let mut s = String::new();
            for _ in 0..(seed % 9) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                s.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let _ = fx.try_prepare(Some(&s));
            seed = seed.wrapping_add(7);
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_connectors_build_for_every_mode() {
        let fx = Fx::new();
        let roots = fx.file("ca/two.pem", &format!("{CERT_PEM}{CERT2_PEM}"), 0o644);
        for mode in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            let url = format!("postgresql://u@db.example/db?sslmode={mode}&sslrootcert={}", roots.display());
            let target = fx.resolve(&url).unwrap_or_else(|e| panic!("{mode}: {e}"));
            let expected = match mode {
                "disable" => SslMode::Disable,
                "allow" | "prefer" => SslMode::Prefer,
                _ => SslMode::Require,
            };
            assert_eq!(target.config.get_ssl_mode(), expected);
        }
        assert!(fx.resolve("postgresql://u@db.example/db?sslrootcert=system").is_ok());
        let junk = fx.file("ca/junk.pem", "not a certificate\n", 0o644);
        let Err(e) = fx.resolve(&format!("postgresql://u@h/db?sslmode=verify-ca&sslrootcert={}", junk.display()))
        else {
            panic!("junk roots accepted")
        };
        assert!(unredacted(&e).contains("holds no PEM certificate"), "{e}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn client_certificates_pkcs8_or_pkcs1() {
        let fx = Fx::new();
        let cert = fx.file("client/cert.pem", CERT_PEM, 0o644);
        let key8 = fx.file("client/key8.pem", KEY_PKCS8_PEM, 0o600);
        let key1 = fx.file("client/key1.pem", KEY_PKCS1_PEM, 0o600);
        for key in [&key8, &key1] {
            let url =
                format!("postgresql://u@h/db?sslmode=require&sslcert={}&sslkey={}", cert.display(), key.display());
            let p = fx.prepare(&url);
            assert_eq!(p.plan.identity, Some((cert.clone(), key.clone())));
            assert!(fx.resolve(&url).is_ok(), "{}", key.display());
        }
        // The defaults under ~/.postgresql/ are used when they exist.
        fx.file(".postgresql/postgresql.crt", CERT_PEM, 0o644);
        let key = fx.file(".postgresql/postgresql.key", KEY_PKCS8_PEM, 0o600);
        let p = fx.prepare("postgresql://u@h/db");
        assert_eq!(p.plan.identity.as_ref().map(|(_, k)| k), Some(&key));
        assert!(fx.resolve("postgresql://u@h/db").is_ok());
        // A key readable by others is refused, as libpq does; so is a missing key or certificate.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(fx.error("postgresql://u@h/db").contains("has group or world access"));
        std::fs::remove_file(&key).expect("rm");
        assert!(fx.error("postgresql://u@h/db").contains("has no private key file"));
        assert!(fx.error("postgresql://u@h/db?sslcert=/nonexistent/c.pem").contains("client certificate file"));
        // Encrypted and non-RSA traditional keys get a hint.
        let enc = fx.file(
            "client/enc.pem",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            0o600,
        );
        let url = format!("postgresql://u@h/db?sslcert={}&sslkey={}", cert.display(), enc.display());
        let Err(e) = fx.resolve(&url) else { panic!("encrypted key accepted") };
        assert!(unredacted(&e).contains("is encrypted") && e.hint().is_some_and(|h| h.contains("openssl pkcs8")));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_tls_only_clear_modes_work() {
        let fx = Fx::new();
        for mode in ["disable", "allow", "prefer"] {
            let p = fx.prepare(&format!("postgresql://u@h/db?sslmode={mode}"));
            assert_eq!(p.config.get_ssl_mode(), SslMode::Disable);
        }
        for mode in ["require", "verify-ca", "verify-full"] {
            let e = fx.error(&format!("postgresql://u@h/db?sslmode={mode}"));
            assert!(e.contains("this kcache was built without TLS"), "{e}");
            // On a socket TLS never applies, so the mode is no obstacle.
            assert!(fx.try_prepare(Some(&format!("postgresql:///db?host=/tmp&sslmode={mode}"))).is_ok());
        }
        assert!(fx.resolve("postgresql://u@h/db").is_ok());
    }
}
