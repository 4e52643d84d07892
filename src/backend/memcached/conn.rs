//! Connections to one memcached server, for the generic pool (`backend/pool.rs`), and the one
//! place where memcached failures become kcache errors.
//!
//! The `memcache` crate runs commands only through its `Client`, which draws connections from an
//! r2d2 pool of the crate's own manager (its protocol trait is private, so a bare connection
//! cannot run anything; crates.md §1.3). Each pooled connection here is therefore a `Client`
//! over a private pool of exactly one crate connection, opened when ours is:
//! 1. a plain socket connect to the server, bounded by `pool_timeout` (the crate's own connect
//!    has no timeout, and a refused connect inside its pool would be retried until the timeout
//!    instead of failing at once); the socket is closed right away;
//! 2. the crate's connection, then its read and write timeouts (`pool_timeout`, as
//!    python-memcached's `socket_timeout`), which works for unix sockets too.
//!
//! The crate never says that a connection broke (`has_broken` is a TODO upstream), so a
//! connection that saw any error is marked broken here and the pool drops it: a reply left
//! half-read can never be taken for the answer to the next command.

use super::hosts::Address;
use crate::error::{Error, ErrorKind, Result};
use memcache::{ClientError, CommandError, MemcacheError, ServerError};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One pooled connection: a crate client over a single connection.
pub struct Conn {
    pub client: memcache::Client,
    /// Set after any error; the pool then closes this connection instead of reusing it.
    pub broken: bool,
}

/// Opens connections to one server.
pub struct Manager {
    address: Address,
    url: memcache::Url,
    timeout: Duration,
}

impl Manager {
    pub fn new(address: Address, url: memcache::Url, timeout: Duration) -> Manager {
        Manager { address, url, timeout }
    }

    /// Step 1 of the module doc: can the server be reached at all, within the timeout?
    fn probe(&self) -> std::io::Result<()> {
        match &self.address {
            Address::Tcp { host, port } => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, self.timeout) {
                        Ok(_) => return Ok(()),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| std::io::Error::other("the host name has no address")))
            }
            #[cfg(unix)]
            Address::Unix(path) => std::os::unix::net::UnixStream::connect(path).map(drop),
            #[cfg(not(unix))]
            Address::Unix(_) => Err(std::io::Error::other("unix sockets are not supported on this system")),
        }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = MemcacheError;

    fn connect(&self) -> Result<Conn, MemcacheError> {
        self.probe()?;
        let one = r2d2::Pool::builder()
            .max_size(1)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(self.timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(memcache::ConnectionManager::new(self.url.clone()));
        let client = memcache::Client::with_pool(one)?;
        // These open the connection (the pool is empty until now) and set its timeouts.
        client.set_read_timeout(Some(self.timeout))?;
        client.set_write_timeout(Some(self.timeout))?;
        Ok(Conn { client, broken: false })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), MemcacheError> {
        conn.client.version().map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// A failure to connect to `server` (the pool's `classify_connect`): always worth retrying.
pub fn classify_connect(e: MemcacheError, server: &str) -> Error {
    Error::new(ErrorKind::Unavailable, anyhow::anyhow!("cannot connect to memcached at {server}: {}", describe(&e)))
}

/// Sorts a memcached failure into SPEC's statuses, in one place. Every message names the server
/// (the one-line error shows only its last part):
/// - 3: the connection failed, timed out or closed (the command may not have run);
/// - 4: the server refused the command (a value over its item size limit, out of memory, an
///   error reply) or answered something kcache cannot read.
pub fn classify(e: MemcacheError, server: &str) -> Error {
    match &e {
        MemcacheError::IOError(io) if is_timeout(io) => {
            unavailable(format!("memcached at {server} did not answer in time (pool_timeout): {}", describe(&e)))
        }
        MemcacheError::IOError(_) | MemcacheError::PoolError(_) => {
            unavailable(format!("lost the connection to memcached at {server}: {}", describe(&e)))
        }
        MemcacheError::ClientError(ClientError::Error(s)) if !s.starts_with("CLIENT_ERROR") => {
            // The crate's own words for a connection closed mid-reply.
            unavailable(format!("lost the connection to memcached at {server}: {}", s.trim()))
        }
        MemcacheError::ServerError(ServerError::Error(s)) if s.contains("too large") => Error::new(
            ErrorKind::Backend,
            anyhow::anyhow!("the value is over the item size limit of memcached at {server} ({})", s.trim()),
        )
        .with_hint("memcached stores items up to 1 MiB unless it runs with a larger -I (--max-item-size)"),
        MemcacheError::ServerError(ServerError::Error(s)) => {
            backend(format!("memcached at {server} refused the command: {}", s.trim()))
        }
        MemcacheError::ClientError(ClientError::Error(s)) => {
            backend(format!("memcached at {server} refused the command: {}", s.trim()))
        }
        MemcacheError::CommandError(CommandError::ValueTooLarge) => {
            backend(format!("the value is over the item size limit of memcached at {server}"))
        }
        _ => backend(format!("unexpected reply from memcached at {server}: {}", describe(&e))),
    }
}

fn unavailable(message: String) -> Error {
    Error::new(ErrorKind::Unavailable, anyhow::anyhow!(message))
}

fn backend(message: String) -> Error {
    Error::new(ErrorKind::Backend, anyhow::anyhow!(message))
}

fn is_timeout(io: &std::io::Error) -> bool {
    matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

/// The crate's message, on one line, without its trailing CRLF.
fn describe(e: &MemcacheError) -> String {
    match e {
        MemcacheError::IOError(io) if is_timeout(io) => "timed out".to_string(),
        _ => e.to_string().trim().to_string(),
    }
}

/// Makes sure an error's last part names `server`: the pool's own errors (a timeout, a full
/// backlog) name it only in a middle part, which the one-line message leaves out.
pub fn naming(e: Error, server: &str) -> Error {
    let chain = e.chain();
    let Some(root) = chain.last() else { return e };
    if root.contains(server) {
        return e;
    }
    let mut inner = anyhow::anyhow!("{root} (memcached at {server})");
    for level in chain.iter().rev().skip(1) {
        inner = inner.context(level.clone());
    }
    let named = Error::new(e.kind(), inner);
    match e.hint() {
        Some(h) => named.with_hint(h),
        None => named,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        let refused = MemcacheError::IOError(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let e = classify_connect(refused, "127.0.0.1:1");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("cannot connect to memcached at 127.0.0.1:1"), "{e}");

        let slow = MemcacheError::IOError(std::io::Error::from(std::io::ErrorKind::WouldBlock));
        let e = classify(slow, "h:1");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("did not answer in time"), "{e}");

        let eof = MemcacheError::ClientError(ClientError::Error("Ascii protocol no line found".into()));
        assert_eq!(classify(eof, "h:1").kind(), ErrorKind::Unavailable);

        let big = MemcacheError::ServerError(ServerError::Error("SERVER_ERROR object too large for cache\r\n".into()));
        let e = classify(big, "h:1");
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert_eq!(
            e.render(false)[0],
            "kcache: error: the value is over the item size limit of memcached at h:1 \
             (SERVER_ERROR object too large for cache)"
        );
        assert!(e.hint().unwrap().contains("-I"));

        let oom = MemcacheError::ServerError(ServerError::Error("SERVER_ERROR out of memory storing object".into()));
        assert_eq!(classify(oom, "h:1").kind(), ErrorKind::Backend);
        let client = MemcacheError::ClientError(ClientError::Error("CLIENT_ERROR bad data chunk\r\n".into()));
        assert_eq!(classify(client, "h:1").kind(), ErrorKind::Backend);
        let odd = MemcacheError::ServerError(ServerError::BadResponse("WAT".into()));
        assert_eq!(classify(odd, "h:1").kind(), ErrorKind::Backend);
    }

    #[test]
    fn naming_puts_the_server_in_the_last_part() {
        let e = Error::unavailable("no connection to memcached at h:1", anyhow::anyhow!("timed out after 1.0 s"))
            .context("get 'k' on memcached at h:1,h:2");
        let named = naming(e, "h:1");
        assert_eq!(named.kind(), ErrorKind::Unavailable);
        assert_eq!(
            named.render(false),
            vec!["kcache: error: get 'k' on memcached at h:1,h:2: timed out after 1.0 s (memcached at h:1)"]
        );
        assert_eq!(named.chain().len(), 3);
        let already = naming(classify_connect(MemcacheError::BadURL("x".into()), "h:1"), "h:1");
        assert_eq!(already.chain().len(), 1);
    }
}
