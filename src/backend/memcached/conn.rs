//! Connections to one memcached server, for the generic pool (`backend/pool.rs`): memcached's
//! ASCII protocol (the one python-memcached speaks) on a socket of our own, and the one place
//! where memcached failures become kcache errors.
//!
//! kcache talks the protocol itself rather than through the `memcache` crate: the crate sends
//! one command and waits for its reply, it cannot pipeline (`kcache batch` sends a whole group
//! of commands, then reads every reply: one round trip instead of one per command), and it does
//! not say when a connection broke. The part of the protocol used here is small: `get` (several
//! keys at once), `gets`, `set`, `cas`, `flush_all` and `version`, and one meta command, `mg`
//! (memcached 1.6 and newer), for the server's own time left on an item.
//!
//! - Connecting is bounded by `pool_timeout`, and so is each read and write (python-memcached's
//!   `socket_timeout`). TCP connections send at once (`TCP_NODELAY`): each pipeline is written
//!   in one piece.
//! - A connection whose replies can no longer be trusted to line up with its commands (an I/O
//!   error, a timeout, a reply kcache cannot read, an error in the middle of a `get`) is marked
//!   broken, and the pool drops it. A refused store (`SERVER_ERROR object too large for cache`)
//!   is not such a failure: memcached reads and discards the value, and the next reply is the
//!   next command's.
//! - Several commands can be sent at once ([`Conn::send`]) and their replies read in order
//!   ([`Conn::receive`]); memcached runs the commands of one connection in the order it reads
//!   them. Whoever pipelines must keep what it sends after a read command small (see
//!   `group.rs`): memcached stops reading while a reply it cannot send yet is pending.

use super::hosts::Address;
use crate::error::{Error, ErrorKind, Result};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The socket under a connection.
pub enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// What went wrong talking to a server. Cloneable: when a connection fails, every command of a
/// pipeline that was not answered gets the failure.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The socket failed (connect, read or write); `timeout` when it did not answer in time.
    Io { timeout: bool, message: String },
    /// The server closed the connection.
    Closed,
    /// `SERVER_ERROR ...`: the server refused the command. Replies are kept as [`escape`] gives
    /// them, here and below: a message quotes them as they are.
    Server(String),
    /// `CLIENT_ERROR ...` or `ERROR`: the server refused the command as malformed.
    Client(String),
    /// A reply kcache cannot read.
    Unexpected(String),
    /// The command was not answered: the connection failed before (the cause).
    Abandoned(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io { timeout: true, .. } => f.write_str("timed out"),
            Failure::Io { message, .. } => f.write_str(message),
            Failure::Closed => f.write_str("the server closed the connection"),
            Failure::Server(s) | Failure::Client(s) => f.write_str(s),
            Failure::Unexpected(s) => write!(f, "unexpected reply \"{s}\""),
            Failure::Abandoned(cause) => write!(f, "the connection failed before this command was answered ({cause})"),
        }
    }
}

impl std::error::Error for Failure {}

/// A server's reply as a message may quote it: UTF-8 text without control characters, from
/// which the bytes can be read back. Bytes that are not UTF-8 and ASCII control characters are
/// written `\xNN`, other control characters `\u{NNNN}`, a backslash `\\`; everything else
/// is kept.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Failure::Closed,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                Failure::Io { timeout: true, message: e.to_string() }
            }
            _ => Failure::Io { timeout: false, message: e.to_string() },
        }
    }
}

/// One command. Keys have passed `check_key` (no space, no control character).
#[derive(Debug)]
pub enum Request<'a> {
    /// `get k1 k2 ...`: the items, one per key, in this order. The keys are distinct.
    Get(Vec<&'a str>),
    /// `gets k`: the item with its CAS token.
    Gets(&'a str),
    /// `mg k v f t`: the item with the server's own seconds left on it (meta get).
    MetaGet(&'a str),
    /// `set`.
    Set { key: &'a str, flags: u32, exptime: u32, data: String },
    /// `cas`: stores only if the entry is still the one `cas` was read with.
    Cas { key: &'a str, flags: u32, exptime: u32, data: String, cas: u64 },
    /// `flush_all`.
    FlushAll,
    /// `version`.
    Version,
}

impl Request<'_> {
    /// How many bytes this command takes on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Request::Get(keys) => 5 + keys.iter().map(|k| k.len() + 1).sum::<usize>(),
            Request::Gets(key) => 7 + key.len(),
            Request::MetaGet(key) => 11 + key.len(),
            Request::Set { key, data, .. } => 40 + key.len() + data.len(),
            Request::Cas { key, data, .. } => 60 + key.len() + data.len(),
            Request::FlushAll => 11,
            Request::Version => 9,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = match self {
            Request::Get(keys) => {
                out.extend_from_slice(b"get");
                for k in keys {
                    out.push(b' ');
                    out.extend_from_slice(k.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
            Request::Gets(key) => write!(out, "gets {key}\r\n"),
            Request::MetaGet(key) => write!(out, "mg {key} v f t\r\n"),
            Request::Set { key, flags, exptime, data } => write!(out, "set {key} {flags} {exptime} {}\r\n", data.len())
                .and_then(|()| out.write_all(data.as_bytes()))
                .and_then(|()| out.write_all(b"\r\n")),
            Request::Cas { key, flags, exptime, data, cas } => {
                write!(out, "cas {key} {flags} {exptime} {} {cas}\r\n", data.len())
                    .and_then(|()| out.write_all(data.as_bytes()))
                    .and_then(|()| out.write_all(b"\r\n"))
            }
            Request::FlushAll => out.write_all(b"flush_all\r\n"),
            Request::Version => out.write_all(b"version\r\n"),
        };
    }
}

/// One stored item.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub flags: u32,
    pub data: Vec<u8>,
    /// The CAS token (`gets` only).
    pub cas: Option<u64>,
    /// The server's own seconds left, as `mg ... t` gives them (`mg` only): -1 when the item
    /// never expires on the server.
    pub server_ttl: Option<i64>,
}

/// The reply to one [`Request`].
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// `get`, `gets`, `mg`: one per key asked, `None` when the server has no such item.
    Items(Vec<Option<Item>>),
    /// `set`, `cas`: stored, or not (`NOT_STORED`, `EXISTS`, `NOT_FOUND`).
    Stored(bool),
    /// `flush_all`.
    Done,
    /// `version`.
    Version(String),
}

/// One pooled connection.
pub struct Conn {
    reader: BufReader<Stream>,
    out: Vec<u8>,
    line: Vec<u8>,
    /// Set when the replies can no longer be trusted to match the commands; the pool then
    /// closes this connection instead of reusing it.
    pub broken: bool,
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn { reader: BufReader::with_capacity(64 * 1024, stream), out: Vec::new(), line: Vec::new(), broken: false }
    }

    /// Sends every command, in one write.
    pub fn send(&mut self, requests: &[Request<'_>]) -> Result<(), Failure> {
        self.out.clear();
        for r in requests {
            r.encode(&mut self.out);
        }
        let written = self.reader.get_mut().write_all(&self.out).and_then(|()| self.reader.get_mut().flush());
        if self.out.capacity() > 1024 * 1024 {
            self.out = Vec::new();
        }
        written.map_err(|e| self.fail(e.into()))
    }

    /// Reads the reply to `request`, the next one due on this connection.
    pub fn receive(&mut self, request: &Request<'_>) -> Result<Reply, Failure> {
        if self.broken {
            return Err(Failure::Abandoned("the connection was given up earlier".into()));
        }
        match request {
            Request::Get(keys) => self.items(keys, false),
            Request::Gets(key) => self.items(&[key], true),
            Request::MetaGet(_) => self.meta_item(),
            Request::Set { .. } | Request::Cas { .. } => {
                let line = self.read_line()?;
                match line.as_str() {
                    "STORED" => Ok(Reply::Stored(true)),
                    "NOT_STORED" | "EXISTS" | "NOT_FOUND" => Ok(Reply::Stored(false)),
                    // memcached has read and discarded the value: the connection is in step.
                    _ if line.starts_with("SERVER_ERROR") => Err(Failure::Server(self.quoted())),
                    _ => Err(self.refused(line)),
                }
            }
            Request::FlushAll => match self.read_line()? {
                line if line == "OK" => Ok(Reply::Done),
                line => Err(self.refused(line)),
            },
            Request::Version => match self.read_line()? {
                line if line.starts_with("VERSION ") => Ok(Reply::Version(line["VERSION ".len()..].to_string())),
                line => Err(self.refused(line)),
            },
        }
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, request: &Request<'_>) -> Result<Reply, Failure> {
        self.send(std::slice::from_ref(request))?;
        self.receive(request)
    }

    /// `get key`.
    pub fn get(&mut self, key: &str) -> Result<Option<Item>, Failure> {
        let request = Request::Get(vec![key]);
        match self.call(&request)? {
            Reply::Items(mut items) if items.len() == 1 => Ok(items.pop().flatten()),
            other => Err(self.fail(Failure::Unexpected(format!("{other:?}")))),
        }
    }

    /// `gets key`.
    pub fn gets(&mut self, key: &str) -> Result<Option<Item>, Failure> {
        match self.call(&Request::Gets(key))? {
            Reply::Items(mut items) if items.len() == 1 => Ok(items.pop().flatten()),
            other => Err(self.fail(Failure::Unexpected(format!("{other:?}")))),
        }
    }

    /// `mg key v f t`: the item with the server's seconds left. A server without meta commands
    /// (older than 1.6) answers `ERROR`: [`Failure::Client`], the connection still in step.
    pub fn meta_get(&mut self, key: &str) -> Result<Option<Item>, Failure> {
        match self.call(&Request::MetaGet(key))? {
            Reply::Items(mut items) if items.len() == 1 => Ok(items.pop().flatten()),
            other => Err(self.fail(Failure::Unexpected(format!("{other:?}")))),
        }
    }

    /// `set` or `cas` (with `cas`): whether it was stored.
    pub fn store(
        &mut self,
        key: &str,
        flags: u32,
        exptime: u32,
        data: &str,
        cas: Option<u64>,
    ) -> Result<bool, Failure> {
        let data = data.to_string();
        let request = match cas {
            Some(cas) => Request::Cas { key, flags, exptime, data, cas },
            None => Request::Set { key, flags, exptime, data },
        };
        match self.call(&request)? {
            Reply::Stored(stored) => Ok(stored),
            other => Err(self.fail(Failure::Unexpected(format!("{other:?}")))),
        }
    }

    /// `flush_all`.
    pub fn flush_all(&mut self) -> Result<(), Failure> {
        self.call(&Request::FlushAll).map(drop)
    }

    /// Marks the connection broken and returns the failure.
    fn fail(&mut self, failure: Failure) -> Failure {
        self.broken = true;
        failure
    }

    /// An error reply where a normal one was due; after anything but a `SERVER_ERROR` to a store
    /// command, what memcached reads next is unknown: the connection is given up.
    fn refused(&mut self, line: String) -> Failure {
        let quoted = self.quoted();
        self.fail(if line.starts_with("SERVER_ERROR") {
            Failure::Server(quoted)
        } else if line.starts_with("CLIENT_ERROR") || line == "ERROR" {
            Failure::Client(quoted)
        } else {
            Failure::Unexpected(quoted)
        })
    }

    /// The last line read, without its CR LF, as a message may quote it (see [`escape`]).
    fn quoted(&self) -> String {
        escape(self.line.strip_suffix(b"\r\n").unwrap_or(&self.line))
    }

    /// One reply line, without its CR LF, for parsing: bytes that are not UTF-8 become U+FFFD,
    /// which no reply kcache expects holds. Messages quote [`Conn::quoted`] instead.
    fn read_line(&mut self) -> Result<String, Failure> {
        self.line.clear();
        let read = self.reader.read_until(b'\n', &mut self.line);
        match read {
            Ok(0) => Err(self.fail(Failure::Closed)),
            Ok(_) if self.line.ends_with(b"\r\n") => {
                let text = String::from_utf8_lossy(&self.line[..self.line.len() - 2]).into_owned();
                Ok(text)
            }
            Ok(_) => Err(self.fail(Failure::Closed)),
            Err(e) => Err(self.fail(e.into())),
        }
    }

    /// The reply to `get`/`gets`: `VALUE <key> <flags> <bytes> [<cas>]`, the data, ..., `END`.
    /// Hits come in the order of the keys asked; the others are misses.
    fn items(&mut self, keys: &[&str], with_cas: bool) -> Result<Reply, Failure> {
        let mut items: Vec<Option<Item>> = vec![None; keys.len()];
        let mut next = 0;
        loop {
            let line = self.read_line()?;
            if line == "END" {
                return Ok(Reply::Items(items));
            }
            let Some(header) = line.strip_prefix("VALUE ") else {
                // An error instead of (or in the middle of) the items: give the connection up.
                return Err(self.refused(line));
            };
            let parts: Vec<&str> = header.split(' ').collect();
            let parsed = match (parts.as_slice(), with_cas) {
                ([key, flags, len], false) => Some((*key, flags.parse().ok(), len.parse().ok(), None)),
                ([key, flags, len, cas], true) => Some((*key, flags.parse().ok(), len.parse().ok(), cas.parse().ok())),
                _ => None,
            };
            let Some((key, Some(flags), Some(len), cas)) = parsed else {
                return Err(self.fail(Failure::Unexpected(self.quoted())));
            };
            if with_cas && cas.is_none() {
                return Err(self.fail(Failure::Unexpected(self.quoted())));
            }
            let Some(at) = keys[next..].iter().position(|k| *k == key).map(|p| next + p) else {
                return Err(self.fail(Failure::Unexpected(self.quoted())));
            };
            let len: usize = len;
            let mut data = vec![0; len + 2];
            if let Err(e) = self.reader.read_exact(&mut data) {
                return Err(self.fail(e.into()));
            }
            if !data.ends_with(b"\r\n") {
                let header = self.quoted();
                return Err(self.fail(Failure::Unexpected(format!("{header} (the data does not end with CR LF)"))));
            }
            data.truncate(len);
            items[at] = Some(Item { flags, data, cas, server_ttl: None });
            next = at + 1;
        }
    }

    /// The reply to `mg <key> v f t`: `EN` (a miss), or `VA <bytes> f<flags> t<seconds>`, the
    /// data. `ERROR` (no meta commands) leaves the connection in step: `mg` is one line.
    fn meta_item(&mut self) -> Result<Reply, Failure> {
        let line = self.read_line()?;
        if line == "EN" {
            return Ok(Reply::Items(vec![None]));
        }
        if line == "ERROR" {
            return Err(Failure::Client(self.quoted()));
        }
        let Some(header) = line.strip_prefix("VA ") else { return Err(self.refused(line)) };
        let mut words = header.split(' ');
        let len: Option<usize> = words.next().and_then(|w| w.parse().ok());
        let (mut flags, mut server_ttl) = (None, None);
        for word in words {
            if let Some(f) = word.strip_prefix('f') {
                flags = f.parse::<u32>().ok();
            } else if let Some(t) = word.strip_prefix('t') {
                server_ttl = t.parse::<i64>().ok();
            }
        }
        let (Some(len), Some(flags), Some(server_ttl)) = (len, flags, server_ttl) else {
            return Err(self.fail(Failure::Unexpected(self.quoted())));
        };
        let mut data = vec![0; len + 2];
        if let Err(e) = self.reader.read_exact(&mut data) {
            return Err(self.fail(e.into()));
        }
        if !data.ends_with(b"\r\n") {
            let header = self.quoted();
            return Err(self.fail(Failure::Unexpected(format!("{header} (the data does not end with CR LF)"))));
        }
        data.truncate(len);
        Ok(Reply::Items(vec![Some(Item { flags, data, cas: None, server_ttl: Some(server_ttl) })]))
    }
}

/// Opens connections to one server.
pub struct Manager {
    address: Address,
    timeout: Duration,
}

impl Manager {
    pub fn new(address: Address, timeout: Duration) -> Manager {
        Manager { address, timeout }
    }

    fn open(&self) -> io::Result<Stream> {
        match &self.address {
            Address::Tcp { host, port } => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, self.timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| io::Error::other("the host name has no address")))
            }
            #[cfg(unix)]
            Address::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            #[cfg(not(unix))]
            Address::Unix(_) => Err(io::Error::other("unix sockets are not supported on this system")),
        }
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = Failure;

    fn connect(&self) -> Result<Conn, Failure> {
        let stream = self.open()?;
        stream.set_timeouts(self.timeout)?;
        Ok(Conn::new(stream))
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), Failure> {
        conn.call(&Request::Version).map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// A failure to connect to `server` (the pool's `classify_connect`): always worth retrying.
pub fn classify_connect(e: Failure, server: &str) -> Error {
    Error::new(ErrorKind::Unavailable, anyhow::anyhow!("cannot connect to memcached at {server}: {e}"))
}

/// Sorts a memcached failure into SPEC's statuses, in one place. Every message names the server
/// (the one-line error shows only its last part):
/// - 3: the connection failed, timed out or closed (the command may not have run);
/// - 4: the server refused the command (a value over its item size limit, out of memory, an
///   error reply) or answered something kcache cannot read.
pub fn classify(e: Failure, server: &str) -> Error {
    match e {
        Failure::Io { timeout: true, .. } => {
            unavailable(format!("memcached at {server} did not answer in time (pool_timeout): timed out"))
        }
        Failure::Io { .. } | Failure::Closed | Failure::Abandoned(_) => {
            unavailable(format!("lost the connection to memcached at {server}: {e}"))
        }
        Failure::Server(s) if s.contains("too large") => Error::new(
            ErrorKind::Backend,
            anyhow::anyhow!("the value is over the item size limit of memcached at {server} ({})", s.trim()),
        )
        .with_hint("memcached stores items up to 1 MiB unless it runs with a larger -I (--max-item-size)"),
        Failure::Server(s) | Failure::Client(s) => {
            backend(format!("memcached at {server} refused the command: {}", s.trim()))
        }
        Failure::Unexpected(_) => backend(format!("unexpected reply from memcached at {server}: {e}")),
    }
}

fn unavailable(message: String) -> Error {
    Error::new(ErrorKind::Unavailable, anyhow::anyhow!(message))
}

fn backend(message: String) -> Error {
    Error::new(ErrorKind::Backend, anyhow::anyhow!(message))
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
    let mut named = Error::new(e.kind(), inner);
    if e.is_unsent() {
        named = named.unsent();
    }
    match e.hint() {
        Some(h) => named.with_hint(h),
        None => named,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection over one end of a socket pair, and the other end (the "server").
    fn pair() -> (Conn, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Conn::new(Stream::Unix(ours)), theirs)
    }

    fn sent(server: &mut UnixStream, len: usize) -> String {
        let mut buf = vec![0; len];
        server.read_exact(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn statuses_and_messages() {
        let refused = Failure::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        let e = classify_connect(refused, "127.0.0.1:1");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("cannot connect to memcached at 127.0.0.1:1"), "{e}");

        let slow = Failure::from(io::Error::from(io::ErrorKind::WouldBlock));
        let e = classify(slow, "h:1");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("did not answer in time"), "{e}");

        assert_eq!(classify(Failure::Closed, "h:1").kind(), ErrorKind::Unavailable);
        let e = classify(Failure::Abandoned("timed out".into()), "h:1");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("lost the connection to memcached at h:1"), "{e}");

        let big = Failure::Server("SERVER_ERROR object too large for cache".into());
        let e = classify(big, "h:1");
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert_eq!(
            e.render(false)[0],
            "kcache: error: the value is over the item size limit of memcached at h:1 \
             (SERVER_ERROR object too large for cache)"
        );
        assert!(e.hint().unwrap().contains("-I"));

        let oom = Failure::Server("SERVER_ERROR out of memory storing object".into());
        assert_eq!(classify(oom, "h:1").kind(), ErrorKind::Backend);
        let client = Failure::Client("CLIENT_ERROR bad data chunk".into());
        assert_eq!(classify(client, "h:1").kind(), ErrorKind::Backend);
        let odd = Failure::Unexpected("WAT".into());
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
        let already = naming(classify_connect(Failure::Closed, "h:1"), "h:1");
        assert_eq!(already.chain().len(), 1);
        let copy = named.clone();
        assert_eq!((copy.kind(), copy.render(true)), (named.kind(), named.render(true)));
    }

    #[test]
    fn a_pipeline_is_one_write_and_its_replies_are_read_in_order() {
        let (mut c, mut server) = pair();
        let requests = [
            Request::Set { key: "a", flags: 16, exptime: 61, data: "{\"v\":1}".into() },
            Request::Get(vec!["a", "b", "c"]),
            Request::Gets("c"),
            Request::Cas { key: "c", flags: 16, exptime: 2592001, data: "x".into(), cas: 7 },
            Request::Set { key: "big", flags: 16, exptime: 1, data: "y".into() },
            Request::FlushAll,
        ];
        c.send(&requests).unwrap();
        let wire = "set a 16 61 7\r\n{\"v\":1}\r\nget a b c\r\ngets c\r\ncas c 16 2592001 1 7\r\nx\r\n\
                    set big 16 1 1\r\ny\r\nflush_all\r\n";
        assert_eq!(sent(&mut server, wire.len()), wire);
        server
            .write_all(
                b"STORED\r\nVALUE a 16 2\r\nab\r\nVALUE c 0 0\r\n\r\nEND\r\nVALUE c 0 1 99\r\nz\r\nEND\r\nEXISTS\r\n\
                  SERVER_ERROR object too large for cache\r\nOK\r\n",
            )
            .unwrap();
        let item = |flags, data: &[u8], cas| Some(Item { flags, data: data.to_vec(), cas, server_ttl: None });
        assert_eq!(c.receive(&requests[0]), Ok(Reply::Stored(true)));
        assert_eq!(c.receive(&requests[1]), Ok(Reply::Items(vec![item(16, b"ab", None), None, item(0, b"", None)])));
        assert_eq!(c.receive(&requests[2]), Ok(Reply::Items(vec![item(0, b"z", Some(99))])));
        assert_eq!(c.receive(&requests[3]), Ok(Reply::Stored(false)));
        assert_eq!(c.receive(&requests[4]), Err(Failure::Server("SERVER_ERROR object too large for cache".into())));
        assert!(!c.broken, "a refused store leaves the connection in step");
        assert_eq!(c.receive(&requests[5]), Ok(Reply::Done));
    }

    #[test]
    fn replies_are_quoted_escaped_and_valid_utf8() {
        assert_eq!(escape(b"SERVER_ERROR out of memory"), "SERVER_ERROR out of memory");
        assert_eq!(escape(b"\xff\xfe junk"), "\\xff\\xfe junk");
        assert_eq!(escape("é☃ \u{85}".as_bytes()), "é☃ \\u{0085}");
        assert_eq!(escape(b"a\\b\x1b[31m\t\x00\xc3"), "a\\\\b\\x1b[31m\\x09\\x00\\xc3");
        for (reply, says) in [
            (&b"\xff\xfe junk\r\n"[..], "unexpected reply \"\\xff\\xfe junk\""),
            (b"SERVER_ERROR \xff\x1b[2J\r\n", "SERVER_ERROR \\xff\\x1b[2J"),
            (b"VALUE a 0 \xff\r\n", "unexpected reply \"VALUE a 0 \\xff\""),
        ] {
            let (mut c, mut server) = pair();
            let get = Request::Get(vec!["a"]);
            c.send(std::slice::from_ref(&get)).unwrap();
            server.write_all(reply).unwrap();
            let e = classify(c.receive(&get).unwrap_err(), "h:1");
            let line = &e.render(false)[0];
            assert!(line.contains(says), "{reply:?}: {line}");
            assert!(!line.contains('\u{fffd}') && !line.chars().any(char::is_control), "{line:?}");
        }
        let (mut c, mut server) = pair();
        let set = Request::Set { key: "a", flags: 16, exptime: 5, data: "1".into() };
        c.send(std::slice::from_ref(&set)).unwrap();
        server.write_all(b"SERVER_ERROR object too large \xfe\r\n").unwrap();
        assert_eq!(c.receive(&set), Err(Failure::Server("SERVER_ERROR object too large \\xfe".into())));
    }

    #[test]
    fn replies_that_do_not_line_up_break_the_connection() {
        for reply in [
            &b"VALUE zz 0 1\r\nz\r\nEND\r\n"[..],
            b"VALUE a 0 2\r\nabc\r\nEND\r\n",
            b"VALUE a 0 x\r\n",
            b"SERVER_ERROR out of memory writing get response\r\n",
            b"ERROR\r\n",
            b"VALUE a 0 5\r\nab",
        ] {
            let (mut c, mut server) = pair();
            let get = Request::Get(vec!["a"]);
            c.send(std::slice::from_ref(&get)).unwrap();
            server.write_all(reply).unwrap();
            if reply.ends_with(b"ab") {
                drop(server);
            }
            assert!(c.receive(&get).is_err(), "{reply:?}");
            assert!(c.broken, "{reply:?}");
            assert!(matches!(c.receive(&Request::Version), Err(Failure::Abandoned(_))));
        }
        let (mut c, server) = pair();
        drop(server);
        assert!(c.get("a").is_err());
        assert!(c.broken);
    }
}
