//! Finding a service's master through Redis Sentinel, for `redis+sentinel://` URLs.
//!
//! The redis crate does the asking ([`redis::sentinel::SentinelClient`]): each sentinel in turn
//! until one answers (`SENTINEL MASTERS`), a master flagged down skipped, the master found asked
//! `ROLE` to check that it is one. kcache asks at every new connection, so that after a failover
//! the next connection goes to the new master; the crate's client (and its connections to the
//! sentinels) is kept between askings.
//!
//! What kcache adds:
//! - a time limit: the crate's sync sentinel connections have no timeout (a sentinel that
//!   accepts the connection and never answers would hang kcache for ever), so the asking runs on
//!   a thread of its own and is given up after the connect timeout (the thread is left to end by
//!   itself; its client is not reused);
//! - messages: "no master" is told apart from "no such service" by asking one sentinel the list
//!   of services it watches, so that a typo in SERVICE is status 4 naming it (and the services the
//!   sentinels know), and a master being failed over is status 3.

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, ErrorKind, RedisError, RedisResult};
use std::sync::Mutex;
use std::time::Duration;

/// What a connection needs to know to find the master.
pub struct Lookup {
    pub sentinels: Vec<ConnectionAddr>,
    pub service: String,
    /// The master's user, password and database (the crate checks the master's role with them).
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// The sentinels' own user and password.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// TLS (to the sentinels and to the master): `Some(insecure)`.
    pub tls: Option<bool>,
    /// The CA bundle (PEM) that TLS certificates are checked against, instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// The crate's client, kept between askings (with its connections to the sentinels).
    pub client: Mutex<Option<SentinelClient>>,
}

/// Why no master was found, for [`super::classify_connect`].
pub const NO_MASTER: &str = "the sentinels know no master for service";

impl Lookup {
    fn build(&self) -> RedisResult<SentinelClient> {
        let mut b =
            SentinelClientBuilder::new(self.sentinels.iter().cloned(), &self.service, SentinelServerType::Master)?;
        if let Some(u) = &self.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &self.password {
            b = b.set_client_to_redis_password(p);
        }
        b = b.set_client_to_redis_db(i64::from(self.db));
        if let Some(u) = &self.sentinel_username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &self.sentinel_password {
            b = b.set_client_to_sentinel_password(p);
        }
        if let Some(insecure) = self.tls {
            let mode = if insecure { redis::TlsMode::Insecure } else { redis::TlsMode::Secure };
            b = b.set_client_to_redis_tls_mode(mode).set_client_to_sentinel_tls_mode(mode);
            #[cfg(feature = "tls")]
            if let Some(pem) = &self.ca_pem {
                let certs = || redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
                b = b.set_client_to_redis_certificates(certs()).set_client_to_sentinel_certificates(certs());
            }
        }
        b.build()
    }

    /// The master's address, asked of the sentinels within `timeout`.
    pub fn master(&self, timeout: Duration) -> RedisResult<ConnectionAddr> {
        let kept = self.client.lock().ok().and_then(|mut c| c.take());
        let mut client = match kept {
            Some(c) => c,
            None => self.build()?,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let found = client.get_client();
            let _ = tx.send((client, found));
        });
        let (client, found) = rx.recv_timeout(timeout).map_err(|_| {
            let secs = timeout.as_secs_f64();
            RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no sentinel named a master within {secs:.1} s"),
            ))
        })?;
        if let Ok(mut kept) = self.client.lock() {
            *kept = Some(client);
        }
        match found {
            Ok(master) => Ok(master.get_connection_info().addr().clone()),
            Err(e) if e.kind() == ErrorKind::MasterNameNotFoundBySentinel => Err(self.why_no_master(timeout)),
            // The crate gives the last sentinel's failure alone: say that every one was tried.
            Err(e) if e.is_io_error() => {
                let tried: Vec<String> = self.sentinels.iter().map(ToString::to_string).collect();
                let kind = if e.is_connection_refusal() {
                    std::io::ErrorKind::ConnectionRefused
                } else if e.is_timeout() {
                    std::io::ErrorKind::TimedOut
                } else {
                    std::io::ErrorKind::Other
                };
                Err(RedisError::from(std::io::Error::new(
                    kind,
                    format!("no sentinel answered (tried {}): {e}", tried.join(", ")),
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Tells "no such service" from "no master now" by asking a sentinel which services it knows.
    fn why_no_master(&self, timeout: Duration) -> RedisError {
        let known = self.sentinels.iter().find_map(|addr| self.services_of(addr.clone(), timeout).ok());
        match known {
            Some(names) if !names.contains(&self.service) => {
                let names = if names.is_empty() { "none".to_string() } else { names.join(", ") };
                RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "unknown service",
                    format!("no sentinel watches a service named '{}' (they watch: {names})", self.service),
                ))
            }
            _ => RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::MasterDown),
                "no master",
                format!("{NO_MASTER} '{}' now (a failover may be under way)", self.service),
            )),
        }
    }

    /// The names of the services that the sentinel at `addr` watches.
    fn services_of(&self, addr: ConnectionAddr, timeout: Duration) -> RedisResult<Vec<String>> {
        use redis::IntoConnectionInfo;
        let mut info = addr.into_connection_info()?;
        let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
        if let Some(u) = &self.sentinel_username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.sentinel_password {
            settings = settings.set_password(p);
        }
        info = info.set_redis_settings(settings);
        let mut conn = redis::Client::open(info)?.get_connection_with_timeout(timeout)?;
        conn.set_read_timeout(Some(timeout))?;
        let masters: Vec<std::collections::HashMap<String, String>> =
            redis::cmd("SENTINEL").arg("MASTERS").query(&mut conn)?;
        let mut names: Vec<String> = masters.into_iter().filter_map(|mut m| m.remove("name")).collect();
        names.sort();
        Ok(names)
    }
}
