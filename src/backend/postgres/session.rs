//! Opening a session on one of several hosts, with libpq's `target_session_attrs` and
//! `load_balance_hosts` (SPEC, PostgreSQL, several hosts).
//!
//! `postgres::Config` tries its hosts in turn and checks `read-write` and `read-only` itself, but
//! knows neither `primary`, `standby` nor `prefer-standby`, and says nothing of the hosts it
//! tried. So the pool's manager holds one config per host and tries them in turn (in a random
//! order with `load_balance_hosts=random`), each through r2d2_postgres's own manager; for any
//! value but `any`, one query on the new session (`pg_is_in_recovery()` and
//! `transaction_read_only`) says whether it will do, as libpq asks. `prefer-standby` takes a
//! standby on a first round, any server on a second. A single host with `any` connects exactly
//! as before: no query, no extra round trip.
//!
//! No host that matches: status 3 naming every host tried and why it was passed over. No host
//! that answers at all: the last connection failure, classified as before (a wrong password
//! stays status 4).

use super::connect::{SessionAttrs, Tls};
use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;

/// Why no session could be had.
#[derive(Debug)]
pub enum ConnectError {
    /// No host answered: the last failure.
    Pg(postgres::Error),
    /// Hosts answered, none matched `target_session_attrs`: what was tried.
    NoMatch { attrs: SessionAttrs, tried: Vec<String> },
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Pg(e) => e.fmt(f),
            ConnectError::NoMatch { attrs, tried } => {
                write!(f, "no server matched target_session_attrs={} (tried {})", attrs.name(), tried.join("; "))
            }
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Pg(e) => Some(e),
            ConnectError::NoMatch { .. } => None,
        }
    }
}

/// The pool's manager: one r2d2_postgres manager per host (see the module doc).
pub struct Manager {
    hosts: Vec<(PostgresConnectionManager<Tls>, String)>,
    attrs: SessionAttrs,
    random: bool,
}

impl Manager {
    pub fn new(hosts: Vec<(postgres::Config, String)>, tls: Tls, attrs: SessionAttrs, random: bool) -> Manager {
        let hosts = hosts
            .into_iter()
            .map(|(config, name)| (PostgresConnectionManager::new(config, tls.clone()), name))
            .collect();
        Manager { hosts, attrs, random }
    }

    /// The order to try the hosts in: as given, or shuffled (Fisher-Yates over the standard
    /// library's randomly keyed hasher: no dependency for a handful of hosts).
    fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.hosts.len()).collect();
        if self.random {
            use std::hash::{BuildHasher, Hasher};
            let state = std::collections::hash_map::RandomState::new();
            for i in (1..order.len()).rev() {
                let mut h = state.build_hasher();
                h.write_usize(i);
                order.swap(i, (h.finish() % (i as u64 + 1)) as usize);
            }
        }
        order
    }
}

/// What the new session is: in recovery (a standby), and read-only.
fn what_it_is(client: &mut postgres::Client) -> Result<(bool, bool), postgres::Error> {
    let rows = client.simple_query("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")?;
    let row = rows.iter().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(r) => Some((r.get(0) == Some("t"), r.get(1) == Some("on"))),
        _ => None,
    });
    Ok(row.unwrap_or((false, false)))
}

impl ManageConnection for Manager {
    type Connection = postgres::Client;
    type Error = ConnectError;

    fn connect(&self) -> Result<postgres::Client, ConnectError> {
        if self.hosts.len() == 1 && self.attrs == SessionAttrs::Any {
            return self.hosts[0].0.connect().map_err(ConnectError::Pg);
        }
        let rounds = match self.attrs {
            SessionAttrs::PreferStandby => vec![SessionAttrs::Standby, SessionAttrs::Any],
            a => vec![a],
        };
        let order = self.order();
        let mut tried = Vec::new();
        let mut last_failure = None;
        let mut answered = false;
        for &round in &rounds {
            for &i in &order {
                let (manager, name) = &self.hosts[i];
                let mut client = match manager.connect() {
                    Ok(c) => c,
                    Err(e) => {
                        if round == rounds[0] {
                            tried.push(format!("{name}: cannot connect"));
                        }
                        last_failure = Some(e);
                        continue;
                    }
                };
                answered = true;
                if round == SessionAttrs::Any {
                    return Ok(client);
                }
                match what_it_is(&mut client) {
                    Ok((standby, read_only)) if round.accepts(standby, read_only) => return Ok(client),
                    Ok((standby, read_only)) => tried.push(format!(
                        "{name}: {}",
                        match (standby, read_only) {
                            (true, _) => "a standby",
                            (false, true) => "a primary with read-only sessions",
                            (false, false) => "a primary",
                        }
                    )),
                    Err(e) => {
                        tried.push(format!("{name}: its state could not be read"));
                        last_failure = Some(e);
                    }
                }
            }
        }
        match (answered, last_failure) {
            (false, Some(e)) => Err(ConnectError::Pg(e)),
            _ => Err(ConnectError::NoMatch { attrs: self.attrs, tried }),
        }
    }

    fn is_valid(&self, client: &mut postgres::Client) -> Result<(), ConnectError> {
        client.simple_query("").map(drop).map_err(ConnectError::Pg)
    }

    fn has_broken(&self, client: &mut postgres::Client) -> bool {
        client.is_closed()
    }
}
