//! libpq's environment variables and the OS defaults; `postgres::Config` reads no environment.
//!
//! - Each keyword of the `KEYWORDS` table falls back on its variable (`PGHOST`, `PGPORT`,
//!   `PGUSER`, `PGPASSWORD`, `PGSSLMODE`...); empty counts as unset. `PGTZ` and `PGDATESTYLE`
//!   are sent as `-c TimeZone=...` / `-c DateStyle=...` after the other options, so that they
//!   win as libpq's startup parameters do (`default` sends nothing). `PGSERVICE` is ignored
//!   with a warning.
//! - The user is `USER`, else `LOGNAME`, else the `/etc/passwd` entry of the effective uid (the
//!   owner of `/proc/self`), else `postgres`: libpq asks passwd first, but tests and containers
//!   without an entry need the environment. The home folder is `HOME`, else the passwd entry.

use crate::settings::conninfo::KEYWORDS;
use std::path::PathBuf;

/// The environment, as [`super::resolve`] is given it.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Environment variables libpq sends as startup parameters, and the setting each one sets.
const ENV_GUCS: [(&str, &str); 2] = [("PGDATESTYLE", "DateStyle"), ("PGTZ", "TimeZone")];

/// The variable `name`; empty counts as unset.
pub(super) fn var(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// The variable libpq reads for the keyword `key`, if it has one.
pub(super) fn keyword(env: Env<'_>, key: &str) -> Option<String> {
    KEYWORDS.iter().find(|(k, _)| *k == key).and_then(|(_, name)| name.and_then(|n| var(env, n)))
}

/// What libpq would print about the environment.
pub(super) fn warnings(env: Env<'_>) -> Vec<String> {
    match var(env, "PGSERVICE") {
        Some(_) => vec!["PGSERVICE is set, but kcache does not read pg_service.conf: it is ignored".to_string()],
        None => Vec::new(),
    }
}

/// `options` followed by the settings `PGDATESTYLE` and `PGTZ` ask for.
pub(super) fn options(options: Option<String>, env: Env<'_>) -> Option<String> {
    let mut options = options;
    for (name, setting) in ENV_GUCS {
        if let Some(v) = var(env, name).filter(|v| !v.eq_ignore_ascii_case("default")) {
            let extra = format!("-c {setting}={}", option_value(&v));
            options = Some(match options {
                Some(o) => format!("{o} {extra}"),
                None => extra,
            });
        }
    }
    options
}

/// Escapes a value for the `options` string (the server splits it on spaces).
fn option_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace(' ', "\\ ")
}

/// The effective uid, as the owner of `/proc/self` (no libc binding needed).
pub(super) fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
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
pub(super) fn os_user(env: Env<'_>) -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| var(env, v))
        .or_else(|| passwd_entry().map(|(name, _)| name))
        .unwrap_or_else(|| "postgres".to_string())
}

/// `HOME`, else the passwd entry's home folder.
pub(super) fn home_dir(env: Env<'_>) -> Option<PathBuf> {
    var(env, "HOME").map(PathBuf::from).or_else(|| passwd_entry().map(|(_, home)| home))
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;

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
        assert_eq!(p.attrs, SessionAttrs::ReadOnly);
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
}
