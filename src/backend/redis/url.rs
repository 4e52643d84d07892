//! Redis URLs, as SPEC gives them, parsed by hand so that every form Kinto users write works and
//! every error names the problem without ever echoing the password.
//!
//! Forms (the scheme is case-insensitive; `valkey`, `valkeys` and `valkey+unix` are aliases):
//! - `redis://[[user]:password@]host[:port][/db]`: TCP; no host means `localhost`, no port 6379,
//!   no db (or a bare trailing `/`, which crashes Kinto: reference §5.1) db 0;
//! - `rediss://...`: the same over TLS, verifying the certificate against the system's trust
//!   store (found as OpenSSL finds it, so `SSL_CERT_FILE` and `SSL_CERT_DIR` work), or against
//!   `?ssl_ca_certs=/path/ca.pem`
//!   (redis-py's name); `#insecure` (the redis crate's spelling) or `?ssl_cert_reqs=none`
//!   (redis-py's) skips the check;
//! - `redis+unix:///path/to/socket[?db=N]` and `unix:///path/to/socket[?db=N]`: a unix socket;
//!   user and password may be given as `unix://[user]:password@/path` or as `?password=...`;
//! - `redis+cluster://[[user]:password@]host[:port][,host[:port]...]` (`rediss+cluster://` for
//!   TLS): the seed nodes of a Redis Cluster (database 0 only; a `/0` path is accepted);
//! - `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/SERVICE[/db]`
//!   (`rediss+sentinel://` for TLS, port 26379 by default): the sentinels watching SERVICE's
//!   master; user and password are the master's, `?sentinel_username=` and
//!   `?sentinel_password=` the sentinels' own when they have one.
//!
//! The user information ends at the LAST `@` before the host, so a password may hold unencoded
//! `@`, `/`, `?` and `#` (`redis://:ab@cd/EF@127.0.0.1:6379/0` is the password `ab@cd/EF` on
//! 127.0.0.1:6379, db 0); an `@` in the query must then be percent-encoded. Messages show the URL
//! through [`crate::settings::redact_url`] and quote only text from after that last `@`.
//!
//! User and password are percent-decoded (Kinto does not decode them: reference §5.1, §11.33).
//! A username without a password is sent as `AUTH user ""`, as redis-py does. The query may
//! also hold `db`, `username` and `password` (redis-py's names) in every form; other query
//! parameters are ignored, as Kinto ignores the whole query.

use crate::error::{Error, Result, register_secret};
use crate::settings::percent_decode;
use std::path::PathBuf;

/// Redis's default port.
pub const DEFAULT_PORT: u16 = 6379;

/// Sentinel's default port.
pub const SENTINEL_PORT: u16 = 26379;

/// The URL used when none is configured (Kinto's `localhost`, 6379, db 0).
pub const DEFAULT_URL: &str = "redis://localhost:6379/0";

/// How the server's TLS certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// Skip every check (`#insecure`, `ssl_cert_reqs=none`).
    pub insecure: bool,
    /// Trust only this CA bundle (PEM) instead of the system's trust store.
    pub ca_file: Option<PathBuf>,
}

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    Tcp { host: String, port: u16, tls: Option<Tls> },
    Unix(PathBuf),
}

/// Which servers the URL names, past one.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server, at [`Target::addr`].
    Single,
    /// A Redis Cluster, known by these seed nodes ([`Target::addr`] is the first, with the TLS
    /// settings of all).
    Cluster { nodes: Vec<(String, u16)> },
    /// The master of `service`, asked of these sentinels ([`Target::addr`] is the first, with the
    /// TLS settings of all); `username` and `password` are the sentinels' own.
    Sentinel { sentinels: Vec<(String, u16)>, service: String, username: Option<String>, password: Option<String> },
}

/// A parsed URL. No `Debug`: it holds the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: Addr,
    pub topology: Topology,
    pub db: u32,
    /// `?wait_replicas=N` of a Sentinel URL: how many replicas must have a write before it is
    /// reported done (`None`: the default, 1).
    pub wait_replicas: Option<u32>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The URL as messages show it: normalised, the password replaced by `***`.
    pub location: String,
}

fn bad(shown: &str, why: impl std::fmt::Display) -> Error {
    Error::input(format!("bad redis URL {shown}: {why}"))
}

/// Registers a password (raw and percent-decoded) so that no message can show it.
fn secret(raw: &str) {
    register_secret(raw);
    register_secret(&percent_decode(raw));
}

/// Parses `url` (`None`: [`DEFAULT_URL`]). Passwords are registered as secrets first.
pub fn parse(url: Option<&str>) -> Result<Target> {
    let url = url.map(str::trim).filter(|u| !u.is_empty()).unwrap_or(DEFAULT_URL);
    let shown = crate::settings::redact_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad(
            &shown,
            "it does not start with redis://, rediss://, redis+unix:// or unix:// (redis://host:6379/0)",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    let (base, many) = match scheme.split_once('+') {
        Some((base, "cluster")) => (base, Many::Cluster),
        Some((base, "sentinel")) => (base, Many::Sentinel),
        _ => (scheme.as_str(), Many::One),
    };
    let (unix, tls) = match base {
        "redis" | "valkey" => (false, false),
        "rediss" | "valkeys" => (false, true),
        "redis+unix" | "valkey+unix" | "unix" if many == Many::One => (true, false),
        // Only a real scheme is quoted: the text before "://" might be anything.
        _ if scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-')) => {
            return Err(bad(
                &shown,
                format!(
                    "unknown scheme '{scheme}://'; expected redis://, rediss://, redis+unix://, unix://, \
                     redis+cluster:// or redis+sentinel://"
                ),
            ));
        }
        _ => return Err(bad(&shown, "unknown scheme; expected redis://, rediss://, redis+unix:// or unix://")),
    };

    let (userinfo, after) = split_userinfo(rest, unix);
    // The host ends at the first '/', '?' or '#' after the user information.
    let (host_port, tail) = after.split_at(after.find(['/', '?', '#']).unwrap_or(after.len()));
    let (mut username, mut password) = (None, None);
    if let Some(userinfo) = userinfo {
        let (user, pass) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if pass.is_none() && user.contains(['/', '?', '#']) {
            // `redis://h/0?password=a@b`: an '@' in the query makes the text before it look like
            // user information; nothing of it is shown, it may hold a password.
            return Err(bad(
                &shown,
                "an '@' follows a '/', '?' or '#' with no ':' before it; \
                 percent-encode an '@' in the path or query (%40)",
            ));
        }
        if let Some(p) = pass {
            secret(p);
            password = Some(percent_decode(p));
        }
        if !user.is_empty() {
            username = Some(percent_decode(user));
        }
    }

    let (path, query, fragment) = split_tail(tail);
    let mut query_db = None;
    let (mut sentinel_username, mut sentinel_password, mut wait_replicas) = (None, None, None);
    for (key, value) in query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))) {
        let value = percent_decode(value);
        match key {
            "db" => query_db = Some(parse_db(&shown, &value)?),
            "sentinel_password" => {
                secret(&value);
                sentinel_password = Some(value);
            }
            "sentinel_username" => sentinel_username = Some(value).filter(|u| !u.is_empty()),
            "wait_replicas" => match value.parse::<u32>() {
                Ok(n) => wait_replicas = Some(n),
                Err(_) => {
                    return Err(bad(&shown, format!("wait_replicas must be a number (0, 1, ...), not '{value}'")));
                }
            },
            // Only redis-py's names: `settings` registers `password=` as a secret before any
            // `-v` line shows the URL (the redis crate's `pass=` would be printed).
            "password" => {
                secret(&value);
                password = Some(value);
            }
            "username" => username = Some(value).filter(|u| !u.is_empty()),
            _ => {}
        }
    }
    // redis-py's TLS options, read here so that the query loop stays simple.
    let query_value = |name: &str| {
        query.split('&').filter_map(|p| p.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| percent_decode(v))
    };

    let insecure = match fragment {
        None | Some("") => false,
        Some("insecure") if tls => true,
        Some("insecure") => {
            return Err(bad(&shown, "#insecure only applies to TLS; use rediss:// for a TLS connection"));
        }
        Some(_) => return Err(bad(&shown, "the only fragment kcache knows is #insecure (with rediss://)")),
    };

    let mut topology = Topology::Single;
    let (addr, path_db) = if unix {
        if !host_port.is_empty() && host_port != "localhost" {
            return Err(bad(&shown, "a unix-socket URL has no host: write unix:///path/to/redis.sock"));
        }
        let socket = percent_decode(path);
        if !socket.starts_with('/') || socket.len() < 2 {
            return Err(bad(&shown, "no socket path: write unix:///path/to/redis.sock (an absolute path)"));
        }
        (Addr::Unix(PathBuf::from(socket)), None)
    } else {
        let default_port = if many == Many::Sentinel { SENTINEL_PORT } else { DEFAULT_PORT };
        let hosts: Vec<(String, u16)> = if many == Many::One {
            vec![parse_host_port(&shown, host_port, default_port)?]
        } else {
            host_port.split(',').map(|h| parse_host_port(&shown, h.trim(), default_port)).collect::<Result<_>>()?
        };
        let (host, port) = hosts[0].clone();
        let tls = if tls {
            let reqs = query_value("ssl_cert_reqs").map(|v| v.to_ascii_lowercase());
            let insecure = match reqs.as_deref() {
                None | Some("required") => insecure,
                Some("none") => true,
                Some(other) => {
                    return Err(bad(&shown, format!("ssl_cert_reqs must be 'none' or 'required', not '{other}'")));
                }
            };
            let ca_file = query_value("ssl_ca_certs").filter(|p| !p.is_empty()).map(PathBuf::from);
            Some(Tls { insecure, ca_file })
        } else {
            None
        };
        let path = path.trim_matches('/');
        let db = match many {
            Many::Sentinel => {
                let (service, db) = path.split_once('/').unwrap_or((path, ""));
                let service = percent_decode(service);
                if service.is_empty() {
                    return Err(bad(
                        &shown,
                        "name the master's service after the sentinels: redis+sentinel://host:26379/SERVICE/0",
                    ));
                }
                topology = Topology::Sentinel {
                    sentinels: hosts,
                    service,
                    username: sentinel_username.take(),
                    password: sentinel_password.take(),
                };
                (!db.is_empty()).then(|| parse_db(&shown, db)).transpose()?
            }
            Many::Cluster => {
                topology = Topology::Cluster { nodes: hosts };
                (!path.is_empty()).then(|| parse_db(&shown, path)).transpose()?
            }
            Many::One => (!path.is_empty()).then(|| parse_db(&shown, path)).transpose()?,
        };
        (Addr::Tcp { host, port, tls }, db)
    };
    let db = match (path_db, query_db) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(&shown, format!("the path says database {a} but ?db= says {b}")));
        }
        (a, b) => a.or(b).unwrap_or(0),
    };
    if db != 0 && matches!(topology, Topology::Cluster { .. }) {
        return Err(bad(&shown, format!("a Redis Cluster has database 0 only, not {db}")));
    }
    if (sentinel_username.is_some() || sentinel_password.is_some() || wait_replicas.is_some())
        && !matches!(topology, Topology::Sentinel { .. })
    {
        return Err(bad(
            &shown,
            "sentinel_username, sentinel_password and wait_replicas go with redis+sentinel:// URLs",
        ));
    }
    let location = location(&scheme, &addr, &topology, db, username.as_deref(), password.is_some());
    if username.is_some() && password.is_none() {
        // redis-py sends `AUTH user ""` for a user without a password (an ACL `nopass` user).
        password = Some(String::new());
    }
    Ok(Target { addr, topology, db, wait_replicas, username, password, location })
}

/// What the scheme's `+cluster` or `+sentinel` asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Many {
    One,
    Cluster,
    Sentinel,
}

/// The user information (before the `@` that ends it) and what follows that `@`.
///
/// It ends at the LAST `@` before the host, so that a password may hold unencoded `@`, `/`,
/// `?` and `#`: for TCP the host is what follows the last `@` of the URL. A socket path may hold
/// an `@` itself (`unix:///run/redis@main.sock`), so for a unix socket it is the last `@` that
/// is followed by the path (`/...`) or by `localhost`, and there is none when the URL starts
/// with the path (`unix:///...`).
fn split_userinfo(rest: &str, unix: bool) -> (Option<&str>, &str) {
    let at = if !unix {
        rest.rfind('@')
    } else if rest.starts_with('/') {
        None
    } else {
        rest.match_indices('@').map(|(i, _)| i).rfind(|&i| {
            let after = &rest[i + 1..];
            let after = after.strip_prefix("localhost").unwrap_or(after);
            after.is_empty() || after.starts_with(['/', '?', '#'])
        })
    };
    match at {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    }
}

/// `(path, query, fragment)` of what follows the authority.
fn split_tail(tail: &str) -> (&str, &str, Option<&str>) {
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (tail, None),
    };
    let (path, query) = before_fragment.split_once('?').unwrap_or((before_fragment, ""));
    (path, query, fragment)
}

fn parse_db(shown: &str, s: &str) -> Result<u32> {
    match s.parse::<u32>() {
        Ok(n) if n <= i32::MAX as u32 => Ok(n),
        // `s` comes from after the last '@': it holds no part of the password.
        _ => Err(bad(shown, format!("the database must be a number (0, 1, ...), not '{s}'"))),
    }
}

fn parse_host_port(shown: &str, s: &str, default_port: u16) -> Result<(String, u16)> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(bad(shown, "an IPv6 address lacks its closing ']'"));
        };
        match after {
            "" => (host, None),
            p if p.starts_with(':') => (host, Some(&p[1..])),
            _ => return Err(bad(shown, "unexpected text after the IPv6 address")),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => return Err(bad(shown, "an IPv6 address must be written in brackets: redis://[::1]:6379/0")),
            None => (s, None),
        }
    };
    if host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(bad(shown, "the host name contains a space or a control character"));
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad(shown, format!("the port must be a number from 1 to 65535, not '{p}'"))),
        },
    };
    let host = if host.is_empty() { "localhost".to_string() } else { host.to_string() };
    Ok((host, port))
}

/// The normalised URL for messages: scheme, user (password as `***`), host(s), port(s), the
/// service of a sentinel URL, and db (none for a cluster, which has only 0).
fn location(
    scheme: &str,
    addr: &Addr,
    topology: &Topology,
    db: u32,
    username: Option<&str>,
    has_password: bool,
) -> String {
    let userinfo = match (username, has_password) {
        (Some(u), true) => format!("{u}:***@"),
        (Some(u), false) => format!("{u}@"),
        (None, true) => ":***@".to_string(),
        (None, false) => String::new(),
    };
    let hosts = |list: &[(String, u16)]| {
        let one = |(h, p): &(String, u16)| if h.contains(':') { format!("[{h}]:{p}") } else { format!("{h}:{p}") };
        list.iter().map(one).collect::<Vec<_>>().join(",")
    };
    match addr {
        Addr::Tcp { host, port, tls } => {
            let insecure = if tls.as_ref().is_some_and(|t| t.insecure) { "#insecure" } else { "" };
            match topology {
                Topology::Single => format!("{scheme}://{userinfo}{}/{db}{insecure}", hosts(&[(host.clone(), *port)])),
                Topology::Cluster { nodes } => format!("{scheme}://{userinfo}{}{insecure}", hosts(nodes)),
                Topology::Sentinel { sentinels, service, .. } => {
                    format!("{scheme}://{userinfo}{}/{service}/{db}{insecure}", hosts(sentinels))
                }
            }
        }
        Addr::Unix(path) => format!("{scheme}://{userinfo}{}?db={db}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Target {
        parse(Some(url)).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn err(url: &str) -> String {
        match parse(Some(url)) {
            Ok(t) => panic!("{url} parsed as {}", t.location),
            Err(e) => {
                assert_eq!(e.kind(), crate::error::ErrorKind::Input, "{url}");
                e.to_string()
            }
        }
    }

    fn tcp(t: &Target) -> (&str, u16, Option<&Tls>) {
        match &t.addr {
            Addr::Tcp { host, port, tls } => (host.as_str(), *port, tls.as_ref()),
            Addr::Unix(p) => panic!("unix {}", p.display()),
        }
    }

    #[test]
    fn default_and_plain_forms() {
        let t = parse(None).unwrap();
        assert_eq!((tcp(&t), t.db), (("localhost", 6379, None), 0));
        assert_eq!(t.location, "redis://localhost:6379/0");
        assert_eq!(parse(Some("  ")).unwrap().location, "redis://localhost:6379/0");
        let t = ok("redis://127.0.0.1:6380/3");
        assert_eq!((tcp(&t), t.db), (("127.0.0.1", 6380, None), 3));
        assert_eq!(ok("redis://h").location, "redis://h:6379/0");
        assert_eq!(ok("REDIS://h:1/").location, "redis://h:1/0", "a trailing slash is db 0 (Kinto crashes)");
        assert_eq!(ok("redis://h/2/").db, 2);
        assert_eq!(ok("redis:///5").location, "redis://localhost:6379/5", "no host: localhost, as Kinto");
        assert_eq!(ok("redis://[::1]:7000/1").location, "redis://[::1]:7000/1");
        assert_eq!(tcp(&ok("redis://[::1]")).0, "::1");
        assert_eq!(ok("redis://h?db=4").db, 4);
        assert_eq!(ok("redis://h/4?db=4&socket_timeout=5").db, 4, "other query parameters are ignored");
        assert_eq!(ok("valkey://h/1").location, "valkey://h:6379/1");
    }

    #[test]
    fn users_and_passwords_are_decoded_and_hidden() {
        let t = ok("redis://:p%40ss%2Fw0rd@h:1/2");
        assert_eq!(t.password.as_deref(), Some("p@ss/w0rd"));
        assert_eq!(t.username, None);
        assert_eq!(t.location, "redis://:***@h:1/2");
        let t = ok("redis://app%2B1:s3cret@h/0");
        assert_eq!((t.username.as_deref(), t.password.as_deref()), (Some("app+1"), Some("s3cret")));
        assert_eq!(t.location, "redis://app+1:***@h:6379/0");
        let t = ok("redis://p@ss@h/0");
        assert_eq!(t.username.as_deref(), Some("p@ss"), "the last '@' ends the user information");
        assert_eq!(t.password.as_deref(), Some(""), "a user alone is AUTH user \"\", as redis-py");
        assert_eq!(t.location, "redis://p@ss@h:6379/0");
        assert_eq!(ok("redis://h/0?pass=x1&user=y1").password, None, "only redis-py's names");
        let t = ok("redis://h/0?password=qu%26ery-pw");
        assert_eq!(t.password.as_deref(), Some("qu&ery-pw"));
        assert!(!crate::error::redact("x qu&ery-pw y").contains("qu&ery-pw"), "registered as a secret");
        assert!(!crate::error::redact("p%40ss%2Fw0rd and p@ss/w0rd").contains("w0rd"));
    }

    #[test]
    fn the_user_information_ends_at_the_last_at_sign() {
        let t = ok("redis://:ab@cd/SECRETPART@127.0.0.1:6379/0");
        assert_eq!(t.password.as_deref(), Some("ab@cd/SECRETPART"));
        assert_eq!((tcp(&t), t.db), (("127.0.0.1", 6379, None), 0));
        assert_eq!(t.location, "redis://:***@127.0.0.1:6379/0");
        let t = ok("redis://:ab@cd?SECRET@host/0");
        assert_eq!((t.password.as_deref(), tcp(&t).0), (Some("ab@cd?SECRET"), "host"), "never the host cd");
        for (url, password) in [
            ("redis://:hid/den-pw@h:1/0", "hid/den-pw"),
            ("redis://u:hid#den-pw@h/0", "hid#den-pw"),
            ("redis://:hid?den-pw@h/0", "hid?den-pw"),
            ("rediss://:a@b/c?d#e@h:7/3#insecure", "a@b/c?d#e"),
        ] {
            assert_eq!(ok(url).password.as_deref(), Some(password), "{url}");
        }
        let t = ok("unix://:p@ss/w0rd@/tmp/r@main.sock?db=2");
        assert_eq!(t.password.as_deref(), Some("p@ss/w0rd"));
        assert_eq!((t.addr, t.db), (Addr::Unix(PathBuf::from("/tmp/r@main.sock")), 2));
        assert_eq!(ok("unix://:p@ss@localhost/tmp/r.sock").password.as_deref(), Some("p@ss"));
    }

    #[test]
    fn errors_never_quote_text_from_before_the_last_at_sign() {
        for url in [
            "redis://:ab@cd/SECRETPART@127.0.0.1:port/0",
            "redis://:ab@cd/SECRETPART@127.0.0.1:6379/x",
            "redis://:ab@cd/SECRETPART@h/0#other",
            "redis://SECRET@PART/x@h/0?db=z",
            "redis://h/0?password=SECRET@PART",
            "redis://h/0?password=SECRET@PART:1",
            "SECRET:PART@h://x/0",
            "SECRETPART@h:6379",
            "unix://:SECRET/PART@host/tmp/r.sock",
            "redis://:SECRET@PART@[::1/0",
        ] {
            let msg = err(url);
            assert!(!msg.contains("SECRET") && !msg.contains("PART"), "{url}: {msg}");
        }
        assert!(err("redis://h/0?password=a@b").contains("%40"));
    }

    #[test]
    fn tls_forms() {
        let t = ok("rediss://h:6380/1");
        assert_eq!(tcp(&t).2, Some(&Tls { insecure: false, ca_file: None }));
        assert_eq!(t.location, "rediss://h:6380/1");
        let t = ok("rediss://:pw-x@h/0#insecure");
        assert_eq!(tcp(&t).2, Some(&Tls { insecure: true, ca_file: None }));
        assert_eq!(t.location, "rediss://:***@h:6379/0#insecure");
        let t = ok("rediss://h/0?ssl_cert_reqs=none");
        assert!(tcp(&t).2.unwrap().insecure);
        let t = ok("rediss://h/0?ssl_ca_certs=%2Fetc%2Fca.pem");
        assert_eq!(tcp(&t).2.unwrap().ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert!(err("redis://h/0#insecure").contains("rediss://"));
        assert!(err("rediss://h/0#other").contains("#insecure"));
        assert!(err("rediss://h/0?ssl_cert_reqs=maybe").contains("ssl_cert_reqs"));
    }

    #[test]
    fn unix_forms() {
        for url in ["unix:///run/redis/redis.sock?db=3", "redis+unix:///run/redis/redis.sock?db=3"] {
            let t = ok(url);
            assert_eq!(t.addr, Addr::Unix(PathBuf::from("/run/redis/redis.sock")));
            assert_eq!(t.db, 3);
        }
        let t = ok("unix:///tmp/a%20b/redis@main.sock");
        assert_eq!(t.addr, Addr::Unix(PathBuf::from("/tmp/a b/redis@main.sock")));
        assert_eq!(t.location, "unix:///tmp/a b/redis@main.sock?db=0");
        let t = ok("unix://:sock-pw@/tmp/r.sock");
        assert_eq!(t.password.as_deref(), Some("sock-pw"));
        assert_eq!(t.location, "unix://:***@/tmp/r.sock?db=0");
        let t = ok("redis+unix:///tmp/r.sock?password=pw2&db=1");
        assert_eq!((t.password.as_deref(), t.db), (Some("pw2"), 1));
        assert!(err("unix://").contains("socket path"));
        assert!(err("unix://host/tmp/r.sock").contains("no host"));
    }

    #[test]
    fn bad_urls_name_the_problem() {
        assert!(err("localhost:6379").contains("does not start with"));
        assert!(err("http://h/0").contains("unknown scheme 'http://'"));
        assert!(err("redis://h:port/0").contains("'port'"));
        assert!(err("redis://h:0/0").contains("from 1 to 65535"));
        assert!(err("redis://h:70000/0").contains("from 1 to 65535"));
        assert!(err("redis://h/x").contains("not 'x'"));
        assert!(err("redis://h/-1").contains("not '-1'"));
        assert!(err("redis://h/1/2").contains("not '1/2'"));
        assert!(err("redis://h/1?db=2").contains("database 1"));
        assert!(err("redis://::1/0").contains("brackets"));
        assert!(err("redis://[::1/0").contains("']'"));
        let msg = err("redis://:pw-secret-1@h:x/0");
        assert!(!msg.contains("pw-secret-1") && msg.contains(":***@"), "{msg}");
    }

    #[test]
    fn cluster_and_sentinel_forms() {
        let t = ok("redis+cluster://:pw-c@10.0.0.1:7000, 10.0.0.2 ,[::1]:7002");
        let Topology::Cluster { nodes } = &t.topology else { panic!("not a cluster") };
        let want = [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)].map(|(h, p)| (h.to_string(), p));
        assert_eq!(nodes, &want);
        assert_eq!((tcp(&t), t.db, t.password.as_deref()), (("10.0.0.1", 7000, None), 0, Some("pw-c")));
        assert_eq!(t.location, "redis+cluster://:***@10.0.0.1:7000,10.0.0.2:6379,[::1]:7002");
        assert_eq!(ok("redis+cluster://h/0").location, "redis+cluster://h:6379");
        assert!(tcp(&ok("rediss+cluster://h:7000#insecure")).2.unwrap().insecure);
        assert!(err("redis+cluster://h/3").contains("database 0 only"));
        assert!(err("redis+cluster://h:1,h:x").contains("'x'"));

        let t =
            ok("redis+sentinel://u:pw-m@s1,s2:26380/my%20master/2?sentinel_username=su&sentinel_password=pw-sentinel");
        let Topology::Sentinel { sentinels, service, username, password } = &t.topology else { panic!("not sentinel") };
        assert_eq!(sentinels, &[("s1".to_string(), 26379), ("s2".to_string(), 26380)]);
        assert_eq!(
            (service.as_str(), username.as_deref(), password.as_deref()),
            ("my master", Some("su"), Some("pw-sentinel"))
        );
        assert_eq!((t.username.as_deref(), t.password.as_deref(), t.db), (Some("u"), Some("pw-m"), 2));
        assert_eq!(t.location, "redis+sentinel://u:***@s1:26379,s2:26380/my master/2");
        assert!(
            !crate::error::redact("x pw-sentinel").contains("pw-sentinel"),
            "the sentinels' password is a secret too"
        );
        assert_eq!(ok("redis+sentinel://s/mymaster").db, 0);
        assert_eq!(ok("redis+sentinel://s/m?wait_replicas=0").wait_replicas, Some(0));
        assert_eq!(ok("redis+sentinel://s/m").wait_replicas, None);
        assert!(err("redis+sentinel://s/m?wait_replicas=x").contains("not 'x'"));
        assert!(err("redis://h/0?wait_replicas=1").contains("redis+sentinel://"));
        assert!(tcp(&ok("rediss+sentinel://s/m/0")).2.is_some());
        assert!(err("redis+sentinel://s1,s2").contains("SERVICE"));
        assert!(err("redis+sentinel://s/m/x").contains("not 'x'"));
        assert!(err("redis://h/0?sentinel_password=x").contains("redis+sentinel://"));
        assert!(err("redis+unix+cluster:///tmp/s").contains("unknown scheme"));
        assert!(matches!(ok("redis://h/0").topology, Topology::Single));
    }
}
