//! TEMPORARY stub until the real connection-target module lands.
use crate::error::{Error, Result};
use std::str::FromStr;

#[cfg(feature = "tls")]
pub type Tls = postgres_native_tls::MakeTlsConnector;
#[cfg(not(feature = "tls"))]
pub type Tls = postgres::NoTls;

pub struct Target {
    pub config: postgres::Config,
    pub tls: Tls,
    pub location: String,
}

pub fn resolve(url: Option<&str>, _env: &dyn Fn(&str) -> Option<String>) -> Result<Target> {
    let url = url.unwrap_or("postgresql:///postgres?host=/var/run/postgresql").replacen(
        "postgresql+psycopg2://",
        "postgresql://",
        1,
    );
    let config = postgres::Config::from_str(&url).map_err(|e| Error::input(format!("bad url: {e}")))?;
    let connector = native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .map_err(|e| Error::input(format!("tls: {e}")))?;
    Ok(Target {
        config,
        tls: postgres_native_tls::MakeTlsConnector::new(connector),
        location: crate::settings::redact_url(&url),
    })
}
