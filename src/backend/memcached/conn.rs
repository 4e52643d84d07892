//! Connections to one memcached server, for the generic pool (`backend/pool.rs`), and the one
//! place where memcached failures become kcache errors.
//!
//! The commands are the memcache crate's meta commands (`memcache::exp`: `build_get`,
//! `build_set`, `build_delete` write them, `MetaResponse::parse_header` and
//! `parse_meta_result` read the replies). The socket under them is kcache's own, with the
//! framing that needs (a line, a data block), because the crate's `MetaClient` loses what
//! kcache must keep (measured with memcache 0.21.0, see the README's memcached section):
//! - a reply it cannot read is reported with its bytes replaced (`unknown return code "\u{fffd}\u{fffd}"`,
//!   only the first word), where kcache quotes the whole line, escaped;
//! - after a refused command in a batch (`SERVER_ERROR object too large`) every later command
//!   of that server fails too, where one by one they succeed;
//! - it speaks TCP only (no `unix:/path` hosts), and `memcache::Client`, which has unix
//!   sockets and `flush_all`, hides a reply it cannot read as well.
//!
//! - Connecting is bounded by `pool_timeout`, and so is each read and write (python-memcached's
//!   `socket_timeout`). TCP connections send at once (`TCP_NODELAY`): each pipeline is written
//!   in one piece.
//! - A connection whose replies can no longer be trusted to line up with its commands (an I/O
//!   error, a timeout, a reply kcache cannot read, `CLIENT_ERROR`) is marked broken, and the
//!   pool drops it. `SERVER_ERROR` (a value over the item size limit) is not such a failure:
//!   memcached has read and discarded the value, and the next reply is the next command's.
//! - Several commands can be queued ([`Conn::push`]), sent in one write ([`Conn::send`]) and
//!   their replies read in order ([`Conn::receive`]); memcached runs the commands of one
//!   connection in the order it reads them, and every meta command gets one reply. Whoever
//!   pipelines must keep what it sends after a read command small (see `group.rs`): memcached
//!   stops reading while a reply it cannot send yet is pending.

use super::hosts::Address;
use crate::error::{Error, ErrorKind, Result};
use memcache::exp::{MetaCommand, MetaCommandResult, MetaResponse, ReturnCode, parse_meta_result};
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

/// The longest line of a key dump kcache reads: a key of 250 bytes, each written `%XX`, and
/// the other fields, with room to spare.
pub const MAX_DUMP_LINE: usize = 4096;

/// One pooled connection.
pub struct Conn {
    reader: BufReader<Stream>,
    /// Commands queued by [`Conn::push`], not sent yet.
    out: Vec<u8>,
    /// The last reply line read, with its CR LF, as messages quote it.
    line: Vec<u8>,
    /// Set when the replies can no longer be trusted to match the commands; the pool then
    /// closes this connection instead of reusing it.
    pub broken: bool,
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn { reader: BufReader::with_capacity(64 * 1024, stream), out: Vec::new(), line: Vec::new(), broken: false }
    }

    /// Queues a command; the bytes queued so far are [`Conn::queued`].
    pub fn push(&mut self, command: &MetaCommand) {
        // Keys have passed `check_key` (1 to 250 bytes, nothing to encode): this cannot fail.
        let _ = command.encode_into(&mut self.out);
    }

    /// How many bytes are queued.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Drops what was queued from byte `len` on.
    pub fn unqueue(&mut self, len: usize) {
        self.out.truncate(len);
    }

    /// Sends what was queued, in one write.
    pub fn send(&mut self) -> Result<(), Failure> {
        let written = self.reader.get_mut().write_all(&self.out).and_then(|()| self.reader.get_mut().flush());
        self.out.clear();
        if self.out.capacity() > 1024 * 1024 {
            self.out = Vec::new();
        }
        written.map_err(|e| self.fail(e.into()))
    }

    /// Reads the next reply, with its data block. A reply kcache cannot read is quoted whole,
    /// escaped; `CLIENT_ERROR` and `ERROR` give the connection up (memcached may be reading a
    /// value as commands), `SERVER_ERROR` does not.
    pub fn receive(&mut self) -> Result<MetaCommandResult, Failure> {
        self.read_line()?;
        let header = &self.line[..self.line.len() - 2];
        let response = match MetaResponse::parse_header(header) {
            Ok(r) => r,
            Err(memcache::exp::Error::Server(_)) => return Err(Failure::Server(self.quoted())),
            Err(memcache::exp::Error::Rejected(_)) => return Err(self.fail(Failure::Client(self.quoted()))),
            Err(_) => return Err(self.unexpected()),
        };
        let mut data = None;
        if response.rc() == ReturnCode::Va {
            // `parse_header` checked the length (the word after `VA`) but keeps it to itself.
            let len: usize = header
                .split(|b| *b == b' ')
                .nth(1)
                .and_then(|w| std::str::from_utf8(w).ok()?.parse().ok())
                .unwrap_or(0);
            let mut block = vec![0; len + 2];
            if let Err(e) = self.reader.read_exact(&mut block) {
                return Err(self.fail(e.into()));
            }
            if !block.ends_with(b"\r\n") {
                let header = self.quoted();
                return Err(self.fail(Failure::Unexpected(format!("{header} (the data does not end with CR LF)"))));
            }
            block.truncate(len);
            data = Some(block);
        }
        let mut result = parse_meta_result(response).map_err(|_| self.unexpected())?;
        result.value = data;
        Ok(result)
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, command: &MetaCommand) -> Result<MetaCommandResult, Failure> {
        self.push(command);
        self.send()?;
        self.receive()
    }

    /// The last reply as an unexpected one (it answered a command it does not fit): the
    /// connection is given up.
    pub fn unexpected(&mut self) -> Failure {
        let quoted = self.quoted();
        self.fail(Failure::Unexpected(quoted))
    }

    /// `stats`, which is no meta command either: its own line, and `STAT <name> <value>` lines
    /// up to `END`; the pairs in the order the server sent them.
    pub fn stats(&mut self) -> Result<Vec<(String, String)>, Failure> {
        self.out.extend_from_slice(b"stats\r\n");
        self.send()?;
        let mut stats = Vec::new();
        loop {
            self.read_line()?;
            let line = &self.line[..self.line.len() - 2];
            if line == b"END" {
                return Ok(stats);
            }
            if let Some(pair) = line.strip_prefix(b"STAT ") {
                let pair = String::from_utf8_lossy(pair);
                let (name, value) = pair.split_once(' ').unwrap_or((&pair, ""));
                stats.push((name.to_string(), value.to_string()));
            } else if line.starts_with(b"SERVER_ERROR") {
                return Err(self.fail(Failure::Server(self.quoted())));
            } else if line.starts_with(b"CLIENT_ERROR") || line == b"ERROR" {
                return Err(self.fail(Failure::Client(self.quoted())));
            } else {
                return Err(self.unexpected());
            }
        }
    }

    /// `flush_all`, which is no meta command: its own line, and its own reply `OK`.
    pub fn flush_all(&mut self) -> Result<(), Failure> {
        self.out.extend_from_slice(b"flush_all\r\n");
        self.send()?;
        self.read_line()?;
        match &self.line[..] {
            b"OK\r\n" => Ok(()),
            l if l.starts_with(b"SERVER_ERROR") => Err(self.fail(Failure::Server(self.quoted()))),
            l if l.starts_with(b"CLIENT_ERROR") || l == b"ERROR\r\n" => Err(self.fail(Failure::Client(self.quoted()))),
            _ => Err(self.unexpected()),
        }
    }

    /// Sends one text command line (CR LF added) of the classic protocol, alone.
    pub fn send_line(&mut self, line: &str) -> Result<(), Failure> {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.send()
    }

    /// Reads one line of a key dump (`lru_crawler metadump`), without its LF or CR LF: memcached
    /// ends the dump's lines with a bare LF and its `END` (or an error reply) with CR LF.
    ///
    /// This is kcache's own code, as the socket is: the memcache crate has no crawler API. The
    /// read ends safely on a server that sends no terminator: every read is bounded by the
    /// socket's timeout (`pool_timeout`), a line must arrive whole within `limit` (a server
    /// that trickles bytes cannot hold kcache either), and a line over [`MAX_DUMP_LINE`] bytes
    /// is an unexpected reply, so memory stays bounded too. Any failure gives the connection up.
    pub fn dump_line(&mut self, limit: Duration) -> Result<&[u8], Failure> {
        if self.broken {
            return Err(Failure::Abandoned("the connection was given up earlier".into()));
        }
        let started = std::time::Instant::now();
        self.line.clear();
        loop {
            let buf = match self.reader.fill_buf() {
                Ok([]) => return Err(self.fail(Failure::Closed)),
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(e.into())),
            };
            let (taken, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(at) => (at + 1, true),
                None => (buf.len(), false),
            };
            self.line.extend_from_slice(&buf[..taken]);
            self.reader.consume(taken);
            if done {
                break;
            }
            if self.line.len() > MAX_DUMP_LINE {
                self.line.truncate(200);
                let quoted = self.quoted();
                return Err(
                    self.fail(Failure::Unexpected(format!("{quoted}... (a line of over {MAX_DUMP_LINE} bytes)")))
                );
            }
            if started.elapsed() >= limit {
                return Err(self.fail(Failure::Io { timeout: true, message: "the line did not end in time".into() }));
            }
        }
        let end = self.line.len() - if self.line.ends_with(b"\r\n") { 2 } else { 1 };
        Ok(&self.line[..end])
    }

    /// The last line read, quoted as messages quote replies (see [`escape`]).
    pub fn last_line(&self) -> String {
        let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        escape(line.strip_suffix(b"\r").unwrap_or(line))
    }

    /// Marks the connection broken and returns the failure.
    fn fail(&mut self, failure: Failure) -> Failure {
        self.broken = true;
        failure
    }

    /// The last line read, without its CR LF, as a message may quote it (see [`escape`]).
    fn quoted(&self) -> String {
        escape(self.line.strip_suffix(b"\r\n").unwrap_or(&self.line))
    }

    /// Reads one reply line, with its CR LF, into `line`.
    fn read_line(&mut self) -> Result<(), Failure> {
        if self.broken {
            return Err(Failure::Abandoned("the connection was given up earlier".into()));
        }
        self.line.clear();
        match self.reader.read_until(b'\n', &mut self.line) {
            Ok(_) if self.line.ends_with(b"\r\n") => Ok(()),
            Ok(_) => Err(self.fail(Failure::Closed)),
            Err(e) => Err(self.fail(e.into())),
        }
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
        conn.call(&memcache::exp::build_noop()).map(drop)
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
        Failure::Client(s) if s == "ERROR" => backend(format!("memcached at {server} refused the command: ERROR"))
            .with_hint("kcache speaks memcached's meta protocol, which memcached has since version 1.6"),
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

    fn get(key: &str) -> MetaCommand {
        MetaCommand::new(memcache::exp::MetaOp::Get, key).flag("v").flag("f")
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
        use memcache::exp::MetaOp;
        let (mut c, mut server) = pair();
        c.push(&MetaCommand::new(MetaOp::Set, "a").flag("F16").flag("T61").value("{\"v\":1}"));
        c.push(&get("a").flag("t"));
        c.push(&get("b").flag("c"));
        c.push(&MetaCommand::new(MetaOp::Delete, "c").flag("C7"));
        c.push(&MetaCommand::new(MetaOp::Set, "big").flag("F16").flag("T1").value("y"));
        c.send().unwrap();
        let wire = "ms a 7 F16 T61\r\n{\"v\":1}\r\nmg a v f t\r\nmg b v f c\r\nmd c C7\r\nms big 1 F16 T1\r\ny\r\n";
        assert_eq!(sent(&mut server, wire.len()), wire);
        let (mut c, mut server) = pair();
        c.push(&get("a"));
        c.send().unwrap();
        server
            .write_all(b"HD\r\nVA 2 f16 t59\r\nab\r\nEN\r\nEX\r\nSERVER_ERROR object too large for cache\r\nOK\r\n")
            .unwrap();
        assert_eq!(c.receive().unwrap().rc, ReturnCode::Hd);
        let item = c.receive().unwrap();
        assert_eq!(
            (item.rc, item.value.as_deref(), item.client_flags, item.ttl),
            (ReturnCode::Va, Some(&b"ab"[..]), Some(16), Some(59))
        );
        assert_eq!(c.receive().unwrap().rc, ReturnCode::En);
        assert_eq!(c.receive().unwrap().rc, ReturnCode::Ex);
        assert_eq!(c.receive().unwrap_err(), Failure::Server("SERVER_ERROR object too large for cache".into()));
        assert!(!c.broken, "a refused store leaves the connection in step");
        c.flush_all().unwrap();
    }

    #[test]
    fn a_key_dump_is_read_line_by_line_and_never_waits_forever() {
        let (mut c, mut server) = pair();
        c.send_line("lru_crawler metadump hash").unwrap();
        assert_eq!(sent(&mut server, 27), "lru_crawler metadump hash\r\n");
        server.write_all(b"key=a%20b exp=-1 la=1 cas=1 fetch=no cls=1 size=60\nkey=c exp=5").unwrap();
        let limit = Duration::from_secs(5);
        assert_eq!(c.dump_line(limit).unwrap(), b"key=a%20b exp=-1 la=1 cas=1 fetch=no cls=1 size=60");
        server.write_all(b" la=1\nEND\r\n").unwrap();
        assert_eq!(c.dump_line(limit).unwrap(), b"key=c exp=5 la=1");
        assert_eq!(c.dump_line(limit).unwrap(), b"END");
        assert_eq!(c.last_line(), "END");
        assert!(!c.broken);

        // No terminator: a trickle of bytes ends with a timeout once `limit` has passed.
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut c = Conn::new(Stream::Unix(ours));
        let trickle = std::thread::spawn(move || {
            for _ in 0..40 {
                if theirs.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let start = std::time::Instant::now();
        let e = c.dump_line(Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, Failure::Io { timeout: true, .. }), "{e:?}");
        assert!(start.elapsed() < Duration::from_millis(700), "{:?}", start.elapsed());
        assert!(c.broken);
        drop(c);
        trickle.join().unwrap();

        // A line longer than any dump line is an unexpected reply; a closed socket is `Closed`.
        let (mut c, mut server) = pair();
        server.write_all(&vec![b'k'; MAX_DUMP_LINE + 10]).unwrap();
        assert!(matches!(c.dump_line(limit), Err(Failure::Unexpected(_))));
        let (mut c, server) = pair();
        drop(server);
        assert_eq!(c.dump_line(limit), Err(Failure::Closed));
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
            (b"VA 1 f\xff\r\na\r\n", "unexpected reply \"VA 1 f\\xff\""),
        ] {
            let (mut c, mut server) = pair();
            server.write_all(reply).unwrap();
            let e = classify(c.call(&get("a")).unwrap_err(), "h:1");
            let line = &e.render(false)[0];
            assert!(line.contains(says), "{reply:?}: {line}");
            assert!(!line.contains('\u{fffd}') && !line.chars().any(char::is_control), "{line:?}");
        }
    }

    #[test]
    fn replies_that_do_not_line_up_break_the_connection() {
        for reply in [
            &b"VA 2 f0\r\nabc\r\n"[..],
            b"VA x\r\n",
            b"CLIENT_ERROR bad data chunk\r\n",
            b"ERROR\r\n",
            b"VALUE a 0 1\r\n",
            b"VA 5 f0\r\nab",
        ] {
            let (mut c, mut server) = pair();
            server.write_all(reply).unwrap();
            if reply.ends_with(b"ab") {
                drop(server);
            }
            assert!(c.call(&get("a")).is_err(), "{reply:?}");
            assert!(c.broken, "{reply:?}");
            assert!(matches!(c.receive(), Err(Failure::Abandoned(_))));
        }
        let (mut c, server) = pair();
        drop(server);
        assert!(c.call(&get("a")).is_err());
        assert!(c.broken);
    }
}
