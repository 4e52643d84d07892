//! Where PostgreSQL connections go: the `url` setting, libpq's environment variables and
//! `~/.pgpass`, resolved with libpq's rules into a [`Target`] (a `postgres::Config`, a TLS
//! connector and a printable location). Nothing here touches the network; it only reads the
//! local files libpq would read (the password file, certificates and keys). By concern: `url`
//! (URLs and `key=value` strings), `env` (`PG*` variables, OS defaults), `hosts`, `pgpass`,
//! `tls_plan` (`sslmode` and certificate files) and `tls` (the rustls connector).
//!
//! Each value is the URL's, else its environment variable's, else the default (empty counts as
//! unset): the local socket folder, port 5432, the OS user, a database named after the user,
//! `application_name` `fallback_application_name`, else `kcache`. The password
//! is the URL's (or `password=`), else `PGPASSWORD`, else the password file's. Every password
//! found is registered with [`crate::error::register_secret`], raw and percent-decoded, and no
//! message built here contains one. `postgres::Config` parses and types what it reads as libpq
//! does ([`BY_THE_CRATE`]); the rest is kcache's, each file saying why.

mod env;
mod hosts;
mod pgpass;
#[cfg(feature = "tls")]
mod tls;
mod tls_plan;
mod url;

use crate::error::{Error, Result, quote};
use crate::settings::conninfo;
use postgres::config::{SslMode, SslNegotiation};
use std::time::Duration;

/// Registers a password found here so that no message can print it.
fn secret(text: &str) {
    #[cfg(test)]
    if !tests::REGISTER.with(std::cell::Cell::get) {
        return; // the fuzz test must not fill the process-wide registry with random words
    }
    crate::error::register_secret(text);
}

/// The TLS connector type every PostgreSQL connection uses.
#[cfg(feature = "tls")]
pub use tls::Tls;
#[cfg(not(feature = "tls"))]
pub type Tls = postgres::NoTls;

/// Everything needed to open connections to one server.
pub struct Target {
    /// The connector for `config.get_ssl_mode()`.
    pub tls: Tls,
    /// `postgresql://user@host:port/dbname` (never a password), for messages.
    pub location: String,
    /// What libpq would have printed as warnings (an insecure password file, `PGSERVICE`...),
    /// for the caller to print. They never contain a password.
    pub warnings: Vec<String>,
    /// One config per host, in the order given (each `config` with that host alone), with the
    /// host as messages show it: kcache tries them itself when `attrs` asks what the crate
    /// cannot check, or when it must say which hosts it tried.
    pub hosts: Vec<(postgres::Config, String)>,
    /// `target_session_attrs`, all six of libpq's values.
    pub attrs: SessionAttrs,
    /// `load_balance_hosts=random`: the hosts are tried in a random order.
    pub random: bool,
}

/// libpq's `target_session_attrs`: what a server must be for a session to be kept. The crate
/// knows the first three; kcache checks them all itself, with one query after connecting
/// (`pg_is_in_recovery()` and `transaction_read_only`), and none for `any`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl SessionAttrs {
    fn parse(text: &str) -> Result<SessionAttrs> {
        Ok(match text.trim() {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            other => {
                return Err(invalid(
                    "target_session_attrs",
                    other,
                    "any, read-write, read-only, primary, standby or prefer-standby",
                ));
            }
        })
    }

    /// The value as libpq spells it.
    pub fn name(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server in recovery (`standby`) whose sessions are read-only (`read_only`)
    /// will do. `prefer-standby` takes a standby here; its second round takes any.
    pub fn accepts(self, standby: bool, read_only: bool) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !read_only,
            SessionAttrs::ReadOnly => read_only,
            SessionAttrs::Primary => !standby,
            SessionAttrs::Standby | SessionAttrs::PreferStandby => standby,
        }
    }
}

/// Resolves the `url` setting (None or empty: libpq defaults only) with libpq's rules.
/// `env` reads environment variables (the real environment, or a map in tests); `HOME` is read through it too.
pub fn resolve(url: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Target> {
    let prepared = prepare(url, env)?;
    #[cfg(feature = "tls")]
    let tls = tls::build(&prepared.plan)?;
    #[cfg(not(feature = "tls"))]
    let tls = postgres::NoTls;
    Ok(Target {
        tls,
        location: prepared.location,
        warnings: prepared.warnings,
        hosts: prepared.hosts,
        attrs: prepared.attrs,
        random: prepared.random,
    })
}

const DEFAULT_APPLICATION_NAME: &str = "kcache";

/// The libpq keywords `postgres::Config` reads as libpq does, besides `user`, `dbname`, `options`
/// and `application_name`, with what a valid value is (for messages).
const BY_THE_CRATE: [(&str, &str); 7] = [
    ("connect_timeout", "a whole number"),
    ("keepalives_idle", "a whole number"),
    ("keepalives_interval", "a whole number"),
    ("keepalives_count", "a count"),
    ("channel_binding", "disable, prefer or require"),
    ("load_balance_hosts", "disable or random"),
    ("sslnegotiation", "postgres or direct"),
];

/// `postgres::Config` parsed from `pairs` (libpq keyword, value) by the crate; a value it
/// refuses is an input error naming the keyword.
fn parse_with_the_crate(pairs: &[(&str, String)]) -> Result<postgres::Config> {
    let text = |pairs: &[(&str, String)]| -> String {
        let mut text = String::new();
        for (key, value) in pairs {
            let (key, value) = match *key {
                // libpq reads numbers with strtol, which allows spaces around them; the crate does not.
                "connect_timeout" | "keepalives_idle" | "keepalives_interval" => (*key, value.trim()),
                "keepalives_count" => ("keepalives_retries", value.trim()), // the crate's name for it
                _ => (*key, value.as_str()),
            };
            text.push_str(&format!("{key}={} ", conninfo::quote_value(value)));
        }
        text
    };
    text(pairs).parse().map_err(|_| {
        let refused = pairs.iter().find(|pair| text(std::slice::from_ref(pair)).parse::<postgres::Config>().is_err());
        let (key, value) = refused.map_or(("connection parameters", ""), |(k, v)| (*k, v.as_str()));
        let expected = BY_THE_CRATE.iter().find(|(k, _)| *k == key).map_or("a valid value", |(_, e)| e);
        invalid(key, value, expected)
    })
}

fn int_param(key: &str, value: &str) -> Result<i64> {
    value.trim().parse::<i64>().map_err(|_| invalid(key, value, "a whole number"))
}

fn invalid(key: &str, value: &str, expected: &str) -> Error {
    Error::input(format!("invalid {key} {}: expected {expected}", quote(value)))
}

/// Everything but the TLS connector, which [`resolve`] builds from the plan.
struct Prepared {
    /// Every host in one config (the per-host ones are in `hosts`); read by the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    config: postgres::Config,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))] // read by the connector and the tests
    plan: tls_plan::TlsPlan,
    location: String,
    warnings: Vec<String>,
    hosts: Vec<(postgres::Config, String)>,
    attrs: SessionAttrs,
    random: bool,
}

fn prepare(url: Option<&str>, env: env::Env<'_>) -> Result<Prepared> {
    if let Some(password) = env::var(env, "PGPASSWORD") {
        secret(&password);
    }
    let params = match url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(text) => url::parse_setting(text)?,
        None => url::Params::default(),
    };
    let value = |key: &str| params.get(key).map(str::to_string).or_else(|| env::keyword(env, key));
    let mut warnings = env::warnings(env);

    let slots = hosts::slots(value("host").as_deref(), value("hostaddr").as_deref(), value("port").as_deref())?;
    let user = value("user").unwrap_or_else(|| env::os_user(env));
    let dbname = value("dbname").unwrap_or_else(|| user.clone());
    let home = env::home_dir(env);
    let application_name = value("application_name")
        .or_else(|| value("fallback_application_name"))
        .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string());
    let mut pairs = vec![("user", user.clone()), ("dbname", dbname.clone()), ("application_name", application_name)];
    pairs.extend(env::options(value("options"), env).map(|o| ("options", o)));
    pairs.extend(BY_THE_CRATE.iter().filter_map(|(key, _)| value(key).map(|v| (*key, v))));
    let mut config = parse_with_the_crate(&pairs)?;

    let password = match value("password") {
        Some(password) => Some(password.into_bytes()),
        None => {
            let path = value("passfile").map(Into::into).or_else(|| home.as_ref().map(|h| h.join(".pgpass")));
            path.and_then(|path| pgpass::password(&path, &slots, &dbname, &user, &mut warnings))
        }
    };
    if let Some(password) = &password {
        secret(&String::from_utf8_lossy(password));
        config.password(password);
    }

    // libpq turns keepalives on for any number but 0; the crate refuses negative ones.
    if let Some(v) = value("keepalives") {
        config.keepalives(int_param("keepalives", &v)? != 0);
    }
    // libpq reads milliseconds; the crate, seconds.
    if let Some(v) = value("tcp_user_timeout") {
        let ms = int_param("tcp_user_timeout", &v)?;
        if ms > 0 {
            config.tcp_user_timeout(Duration::from_millis(ms.unsigned_abs()));
        }
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

    let direct = config.get_ssl_negotiation() == SslNegotiation::Direct;
    let all_sockets = slots.iter().all(hosts::Slot::is_socket);
    let plan = tls_plan::plan(&value, all_sockets, home.as_deref(), direct)?;
    config.ssl_mode(plan.mode);
    if plan.mode == SslMode::Disable {
        config.ssl_negotiation(SslNegotiation::Postgres); // TLS never applies
    }
    let attrs = value("target_session_attrs").map_or(Ok(SessionAttrs::Any), |v| SessionAttrs::parse(&v))?;
    let random = config.get_load_balance_hosts() == postgres::config::LoadBalanceHosts::Random;
    // One config per host, then every host in the config itself (the hosts go in last: a
    // config cannot take a host back).
    let per_host = slots
        .iter()
        .map(|slot| {
            let mut one = config.clone();
            one.load_balance_hosts(postgres::config::LoadBalanceHosts::Disable);
            hosts::configure(&mut one, std::slice::from_ref(slot));
            (one, format!("{}:{}", slot.name(), slot.port))
        })
        .collect();
    hosts::configure(&mut config, &slots);
    let location = hosts::location(&user, &dbname, &slots);
    Ok(Prepared { config, plan, location, warnings, hosts: per_host, attrs, random })
}

#[cfg(test)]
mod tests {
    //! The fixture every file's tests share, and the tests of the precedence rules.
    pub(super) use super::hosts::DEFAULT_SOCKET_DIRS;
    pub(super) use super::tls_plan::*;
    pub(super) use super::{Prepared, SessionAttrs, Target, prepare, resolve};
    pub(super) use crate::error::{Error, ErrorKind, Result, redact};
    pub(super) use postgres::config::*;
    use std::cell::Cell;
    use std::collections::HashMap;
    pub(super) use std::net::IpAddr;
    pub(super) use std::os::unix::fs::PermissionsExt;
    pub(super) use std::path::PathBuf;
    pub(super) use std::time::Duration;

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
    pub(super) struct Fx {
        pub(super) home: tempfile::TempDir,
        vars: HashMap<String, String>,
    }

    impl Fx {
        pub(super) fn new() -> Fx {
            let home = tempfile::tempdir().expect("temp dir");
            let mut vars = HashMap::new();
            vars.insert("HOME".to_string(), home.path().display().to_string());
            vars.insert("USER".to_string(), "alice".to_string());
            Fx { home, vars }
        }
        pub(super) fn var(mut self, name: &str, value: &str) -> Fx {
            self.vars.insert(name.to_string(), value.to_string());
            self
        }
        pub(super) fn unset(mut self, name: &str) -> Fx {
            self.vars.remove(name);
            self
        }
        pub(super) fn env(&self) -> impl Fn(&str) -> Option<String> + '_ {
            move |name| self.vars.get(name).cloned()
        }
        pub(super) fn try_prepare(&self, url: Option<&str>) -> Result<Prepared> {
            prepare(url, &self.env())
        }
        pub(super) fn prepare(&self, url: &str) -> Prepared {
            self.try_prepare(Some(url)).unwrap_or_else(|e| panic!("{url}: {e}"))
        }
        pub(super) fn defaults(&self) -> Prepared {
            self.try_prepare(None).unwrap_or_else(|e| panic!("no url: {e}"))
        }
        /// The error for `url`, unredacted (chain and hint), after checking it is an input error.
        pub(super) fn error(&self, url: &str) -> String {
            match self.try_prepare(Some(url)) {
                Ok(_) => panic!("{url} was accepted"),
                Err(e) => unredacted(&e),
            }
        }
        pub(super) fn resolve(&self, url: &str) -> Result<Target> {
            resolve(Some(url), &self.env())
        }
        /// Writes `content` at `rel` under the home folder with `mode`; returns its path.
        pub(super) fn file(&self, rel: &str, content: &str, mode: u32) -> PathBuf {
            let path = self.home.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&path, content).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        }
    }

    pub(super) fn unredacted(e: &Error) -> String {
        assert_eq!(e.kind(), ErrorKind::Input, "{e}");
        let mut text = e.chain().join(": ");
        if let Some(hint) = e.hint() {
            text.push_str(" hint: ");
            text.push_str(hint);
        }
        text
    }

    pub(super) fn hosts(p: &Prepared) -> Vec<String> {
        p.config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => format!("tcp:{name}"),
                Host::Unix(path) => format!("unix:{}", path.display()),
            })
            .collect()
    }

    pub(super) fn password(p: &Prepared) -> Option<String> {
        p.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// What `prefer` becomes: `Prefer`, or `Disable` in a build without TLS.
    pub(super) fn prefer() -> SslMode {
        if cfg!(feature = "tls") { SslMode::Prefer } else { SslMode::Disable }
    }

    pub(super) fn is_default_socket(host: &str) -> bool {
        DEFAULT_SOCKET_DIRS.iter().any(|d| host == format!("unix:{d}"))
    }

    #[test]
    fn libpqs_six_session_attributes_and_one_config_per_host() {
        let fx = Fx::new();
        for (text, attrs) in [
            ("any", SessionAttrs::Any),
            ("read-write", SessionAttrs::ReadWrite),
            ("read-only", SessionAttrs::ReadOnly),
            ("primary", SessionAttrs::Primary),
            ("standby", SessionAttrs::Standby),
            ("prefer-standby", SessionAttrs::PreferStandby),
        ] {
            let p = fx.prepare(&format!("postgresql://u@h1:5433,h2/db?target_session_attrs={text}"));
            assert_eq!(p.attrs, attrs, "{text}");
            assert_eq!(p.attrs.name(), text);
        }
        let p = fx.prepare("postgresql://u@h1:5433,h2:5434/db");
        assert_eq!(p.attrs, SessionAttrs::Any);
        assert!(!p.random);
        let names: Vec<&str> = p.hosts.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["h1:5433", "h2:5434"]);
        for (config, name) in &p.hosts {
            assert_eq!(config.get_hosts().len(), 1, "{name}");
            assert_eq!(config.get_ports().len(), 1, "{name}");
        }
        assert_eq!(p.config.get_hosts().len(), 2);
        // What each value accepts: (in recovery, read-only session).
        assert!(SessionAttrs::Primary.accepts(false, false) && !SessionAttrs::Primary.accepts(true, true));
        assert!(SessionAttrs::Standby.accepts(true, true) && !SessionAttrs::Standby.accepts(false, false));
        assert!(SessionAttrs::ReadWrite.accepts(false, false) && !SessionAttrs::ReadWrite.accepts(false, true));
        assert!(SessionAttrs::ReadOnly.accepts(false, true) && !SessionAttrs::ReadOnly.accepts(false, false));
        assert!(SessionAttrs::PreferStandby.accepts(true, true) && !SessionAttrs::PreferStandby.accepts(false, false));
        assert!(SessionAttrs::Any.accepts(true, false));
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
        assert_eq!(p.attrs, SessionAttrs::ReadWrite);
        assert!(p.random);
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
            (
                "postgresql://u@h/db?target_session_attrs=primaries",
                "any, read-write, read-only, primary, standby or prefer-standby",
            ),
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
}
