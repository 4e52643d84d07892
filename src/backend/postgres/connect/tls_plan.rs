//! What TLS a target needs, decided before any file is parsed: libpq's `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey`. kcache decides it itself: `postgres::Config` knows only `disable`,
//! `prefer` and `require`, and no certificate file.
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
//! others (libpq's rule) and may be PKCS#8, PKCS#1 RSA or SEC1 EC PEM (not encrypted). When
//! every host is a socket folder TLS never applies (libpq ignores `sslmode` there): the mode
//! becomes `Disable` and no file is read. `sslnegotiation=direct` needs a mode that never
//! connects in clear. A build without the `tls` feature connects in clear for `disable`,
//! `allow` and `prefer` and refuses the other modes, except on sockets.

use crate::error::{Error, Result, quote};
use postgres::config::SslMode;
use std::path::{Path, PathBuf};

/// libpq's six `sslmode` values (`postgres::Config` knows the first, third and fourth).
const SSLMODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// The TLS plan for the libpq keywords `value` gives; `direct`: `sslnegotiation=direct`.
pub(super) fn plan(
    value: &dyn Fn(&str) -> Option<String>,
    all_sockets: bool,
    home: Option<&Path>,
    direct: bool,
) -> Result<TlsPlan> {
    let rootcert = value("sslrootcert");
    let rootcert = rootcert.as_deref();
    let mode = match value("sslmode") {
        Some(text) => SSLMODES.into_iter().find(|m| *m == text).ok_or_else(|| {
            Error::input(format!(
                "invalid sslmode {}: expected disable, allow, prefer, require, verify-ca or verify-full",
                quote(&text)
            ))
        })?,
        None if rootcert == Some("system") => "verify-full",
        None => "prefer",
    };
    if rootcert == Some("system") && mode != "verify-full" {
        return Err(Error::input(format!(
            "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
        )));
    }
    if direct && matches!(mode, "disable" | "allow" | "prefer") {
        return Err(Error::input(format!(
            "weak sslmode \"{mode}\" may not be used with sslnegotiation=direct (use \"require\", \"verify-ca\", \
             or \"verify-full\")"
        )));
    }
    let clear = TlsPlan { mode: SslMode::Disable, verify: None, identity: None };
    if all_sockets || mode == "disable" {
        return Ok(clear);
    }
    if !cfg!(feature = "tls") {
        return match mode {
            "allow" | "prefer" => Ok(clear),
            _ => Err(Error::input(format!(
                "sslmode={mode} needs TLS, but this kcache was built without TLS (the \"tls\" feature)"
            ))),
        };
    }
    let default_file = |name: &str| home.map(|h| h.join(".postgresql").join(name));
    let identity = client_identity(value("sslcert").as_deref(), value("sslkey").as_deref(), &default_file)?;
    let plan = match mode {
        "allow" | "prefer" => TlsPlan { mode: SslMode::Prefer, verify: None, identity },
        "require" => {
            let root = match rootcert {
                Some(path) => Some(existing(path, "root certificate file (sslrootcert)")?),
                None => default_file("root.crt").filter(|p| p.is_file()),
            };
            let verify = root.map(|r| Verify { roots: Roots::File(r), hostname: false });
            TlsPlan { mode: SslMode::Require, verify, identity }
        }
        _ => {
            // verify-ca, verify-full
            let roots = match rootcert {
                Some("system") => Roots::System,
                Some(path) => Roots::File(existing(path, "root certificate file (sslrootcert)")?),
                None => match default_file("root.crt") {
                    Some(path) if path.is_file() => Roots::File(path),
                    default => {
                        let shown = default.map_or("~/.postgresql/root.crt".to_string(), |p| p.display().to_string());
                        return Err(Error::input(format!(
                            "sslmode={mode} needs a root certificate, and {shown} does not exist"
                        ))
                        .with_hint(
                            "give the file with sslrootcert, use the system's roots with sslrootcert=system \
                             (and sslmode=verify-full), or choose sslmode=require to skip the check",
                        ));
                    }
                },
            };
            let verify = Verify { roots, hostname: mode == "verify-full" };
            TlsPlan { mode: SslMode::Require, verify: Some(verify), identity }
        }
    };
    Ok(plan)
}

/// Where trusted roots come from when the server certificate is checked.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Roots {
    /// The system's roots (`sslrootcert=system`).
    System,
    /// Only the certificates of this PEM file.
    File(PathBuf),
}

/// How the server certificate is checked.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Verify {
    pub(super) roots: Roots,
    pub(super) hostname: bool,
}

/// What the TLS connector must do, decided before any file is parsed.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(super) struct TlsPlan {
    pub(super) mode: SslMode,
    /// `None`: any certificate and host name are accepted.
    pub(super) verify: Option<Verify>,
    /// Client certificate and key files.
    pub(super) identity: Option<(PathBuf, PathBuf)>,
}

/// The client certificate and key, as libpq finds them.
fn client_identity(
    cert: Option<&str>,
    key: Option<&str>,
    default_file: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>> {
    let cert = match cert {
        Some(path) => existing(path, "client certificate file (sslcert)")?,
        None => match default_file("postgresql.crt").filter(|p| p.is_file()) {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    let key = match key {
        Some(path) => PathBuf::from(path),
        None => default_file("postgresql.key").unwrap_or_else(|| PathBuf::from("postgresql.key")),
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
fn check_key_permissions(key: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    let me = super::env::effective_uid();
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

/// `path` as a path, if it names something that exists.
fn existing(path: &str, what: &str) -> Result<PathBuf> {
    std::fs::metadata(path).map_err(|e| Error::input(format!("cannot read the {what} {path}: {e}")))?;
    Ok(PathBuf::from(path))
}

#[cfg(feature = "tls")]
pub(super) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::input(format!("cannot read the {what} {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;

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
            assert_eq!(target.hosts[0].0.get_ssl_mode(), expected);
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
