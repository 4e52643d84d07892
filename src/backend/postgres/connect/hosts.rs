//! libpq's lists of hosts, addresses and ports paired into the hosts to try, and the printable
//! location. kcache pairs them because `postgres::Config` takes the lists as they are, while
//! libpq fills an empty entry with the default socket folder, refuses port 0 and lists of
//! different lengths, and the password file needs each port as it was written.

use crate::error::{Error, Result, quote};
use std::net::IpAddr;
use std::path::Path;

const DEFAULT_PORT: &str = "5432";
/// Socket folders tried, in order, when no host is given; the last one is used if none exists
/// (libpq's compiled-in folder differs between builds).
pub(super) const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// One host to try: a name or socket folder, an address, or both.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) host: Option<String>,
    pub(super) hostaddr: Option<IpAddr>,
    pub(super) port: u16,
    /// The port as given (`5432` by default), for the password file.
    pub(super) port_text: String,
}

impl Slot {
    pub(super) fn is_socket(&self) -> bool {
        self.hostaddr.is_none() && self.host.as_deref().is_some_and(|h| h.starts_with('/'))
    }

    /// The host name, else the address.
    pub(super) fn name(&self) -> String {
        self.host.clone().or_else(|| self.hostaddr.map(|a| a.to_string())).unwrap_or_default()
    }
}

/// Pairs libpq's comma lists of hosts, addresses and ports, with libpq's rules.
pub(super) fn slots(host: Option<&str>, hostaddr: Option<&str>, port: Option<&str>) -> Result<Vec<Slot>> {
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
        let text = if text.is_empty() { DEFAULT_PORT } else { text };
        let port =
            text.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Error::input(format!("invalid port {}: expected a number from 1 to 65535", quote(text)))
            })?;
        slots.push(Slot { host, hostaddr, port, port_text: text.to_string() });
    }
    if slots.iter().any(|s| s.hostaddr.is_some()) && slots.iter().any(|s| s.hostaddr.is_none()) {
        return Err(Error::input("hostaddr has an empty entry: give an address for every host"));
    }
    Ok(slots)
}

fn default_socket_dir() -> String {
    let found = DEFAULT_SOCKET_DIRS.iter().find(|d| Path::new(d).is_dir());
    found.unwrap_or(&DEFAULT_SOCKET_DIRS[DEFAULT_SOCKET_DIRS.len() - 1]).to_string()
}

/// Gives `config` the hosts, addresses and ports of `slots`.
pub(super) fn configure(config: &mut postgres::Config, slots: &[Slot]) {
    let any_addr = slots.iter().any(|s| s.hostaddr.is_some());
    for addr in slots.iter().filter_map(|s| s.hostaddr) {
        config.hostaddr(addr);
    }
    // tokio-postgres pairs names with addresses by position: a name for every host, or none.
    if !any_addr || slots.iter().any(|s| s.host.is_some()) {
        for slot in slots {
            config.host(&slot.name());
        }
    }
    match slots {
        [first, rest @ ..] if rest.iter().all(|s| s.port == first.port) => {
            config.port(first.port);
        }
        _ => {
            for slot in slots {
                config.port(slot.port);
            }
        }
    }
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
pub(super) fn location(user: &str, dbname: &str, slots: &[Slot]) -> String {
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

#[cfg(test)]
mod tests {
    use super::super::tests::*;

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
    fn locations_are_readable_and_safe() {
        let fx = Fx::new();
        let p = fx.prepare("postgresql://a%0Ab:kc-loc-pw@h/d%1Bb");
        assert_eq!(p.location, "postgresql://a%0Ab@h:5432/d%1Bb");
        let p = fx.prepare("postgresql://u@/db?host=/s%26x,db.example");
        assert_eq!(p.location, "postgresql://u@%2Fs%26x:5432,db.example:5432/db");
        let p = fx.prepare("postgresql://u@/db?host=/s%26x");
        assert_eq!(p.location, "postgresql://u@/db?host=/s%26x&port=5432");
    }
}
