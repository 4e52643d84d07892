//! The `url` setting read into libpq keywords, by kcache rather than `postgres::Config`, which
//! refuses what Kinto's users write (`postgresql+<driver>://`, sslmode's six values,
//! `sslrootcert`, `passfile`...) and whose messages do not name the part at fault.
//!
//! - URLs: `postgresql://`, `postgres://` and SQLAlchemy's `postgresql+<driver>://` (the driver
//!   is dropped); `user:password@host:port/dbname`, every part percent-decoded; hosts may be
//!   lists (`h1:5432,h2:5433`), bracketed IPv6 (`[::1]:5432`) or encoded socket folders
//!   (`%2Ftmp`). The authority ends at the first `/` or `?`, the user information at its last
//!   `@` (so an unencoded `@` in a password works); `#` is an ordinary character, as in libpq.
//! - Query parameters are libpq's keywords (the `KEYWORDS` table); later ones override earlier
//!   ones and the URL's own parts. `ssl=true` means `sslmode=require` (libpq's JDBC
//!   compatibility), `keepalives_retries` is `keepalives_count`. An unknown parameter is an
//!   input error naming it (never its value).
//! - A libpq `key=value` string, read by [`crate::settings::conninfo`] (which `-v` uses too).
//! - Percent-decoding is lenient like SQLAlchemy's (`%` without two hex digits stays); `%00`
//!   and text that is not UTF-8 once decoded are refused. In the query of a
//!   `postgresql+<driver>://` URL `+` means a space, as SQLAlchemy reads it; elsewhere it is kept.
//!
//! When a URL's authority has no `@` but a later part has one (an unencoded `/` or `?` in the
//! password), the text SQLAlchemy would read as the password is registered as a secret too, and
//! a database name containing `@` is refused.

use super::secret;
use crate::error::{Error, Result, quote};
use crate::settings::conninfo::{self, KEYWORDS, UNSUPPORTED};
use std::collections::BTreeMap;

/// The connection parameters a URL or connection string gave, by libpq keyword.
#[derive(Default)]
pub(super) struct Params(BTreeMap<&'static str, String>);

impl Params {
    /// The value of `key`; empty counts as unset.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
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
pub(super) fn parse_setting(text: &str) -> Result<Params> {
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

#[cfg(test)]
mod tests {
    use super::super::tests::*;

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
}
