//! The password file, libpq's way (`postgres::Config` reads none): `passfile=`, else
//! `PGPASSFILE`, else `~/.pgpass`; used only when it is a regular file without group or other
//! permission bits (otherwise libpq's warning). Lines are `host:port:database:user:password`,
//! `*` matches anything, `\` escapes `:` and `\`, `#` lines and lines with fewer than five
//! fields are skipped, the first match wins (an empty password there means none), ports are
//! compared as text. A socket folder matches `localhost` as well as its own path (libpq: only its
//! compiled-in folder); a host given only as `hostaddr` matches on the address. With several
//! hosts, the first one with an entry gives the password (a `postgres::Config` holds one).

use super::hosts::Slot;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The password the file at `path` holds for the first of `slots` that has one.
pub(super) fn password(
    path: &Path,
    slots: &[Slot],
    dbname: &str,
    user: &str,
    warnings: &mut Vec<String>,
) -> Option<Vec<u8>> {
    let content = read(path, warnings)?;
    slots.iter().find_map(|slot| lookup(&content, &slot.name(), &slot.port_text, dbname, user, slot.is_socket()))
}

/// The password file's content, if libpq would use it; otherwise a warning says why not.
fn read(path: &Path, warnings: &mut Vec<String>) -> Option<Vec<u8>> {
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
    if meta.permissions().mode() & 0o077 != 0 {
        warnings.push(format!(
            "password file \"{shown}\" has group or world access; permissions should be u=rw (0600) or less"
        ));
        return None;
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
fn split_fields(line: &[u8]) -> Vec<Field> {
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
fn lookup(content: &[u8], host: &str, port: &str, dbname: &str, user: &str, socket: bool) -> Option<Vec<u8>> {
    for line in content.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let fields = split_fields(line);
        let [h, p, d, u, password, ..] = fields.as_slice() else { continue };
        let matches = |f: &Field, want: &str| f.any || f.text == want.as_bytes();
        let host_ok = matches(h, host) || (socket && h.text == b"localhost");
        if host_ok && matches(p, port) && matches(d, dbname) && matches(u, user) {
            return (!password.text.is_empty()).then(|| password.text.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;

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
}
