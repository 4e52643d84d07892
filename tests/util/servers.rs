//! Servers a test starts, stops, kills and restarts for itself, raw clients to read and write
//! what kcache does ([`MemcachedClient`], [`redis_client`]), and `kcache batch` run as a
//! coprocess (lines written while replies are read).
//!
//! The rig's servers (`KCACHE_TEST_*`) are shared by every test, so a test that stops one must
//! start its own: [`OwnPostgres`] (initdb + pg_ctl in a temp dir; as root through
//! `runuser -u postgres --`, with the binaries of `$KCACHE_TEST_PG_BIN` or the newest
//! `/usr/lib/postgresql/*/bin`), [`OwnMemcached`] and [`OwnRedis`], each on a free loopback port
//! and killed by `Drop` whatever happens. A server restarts on the same port and, for PostgreSQL
//! and an append-only Redis, with the same data.
//!
//! When a server's binaries are missing, [`require`] skips the test with a `skipped:` line, or
//! fails it when `CI` is set, as `crate::util::rig::server` does for the rig's servers.

use crate::util::Env;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to start or stop.
const STARTUP: Duration = Duration::from_secs(15);
/// How long a raw client waits for a reply.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `true` when `found`; else skips the test loudly (`false`), or fails it under CI.
pub fn require(found: bool, what: &str) -> bool {
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
        panic!("{what} is not installed: run the tests through scripts/test");
    }
    eprintln!("skipped: {what} is not installed (scripts/test installs it)");
    false
}

fn installed(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A loopback port nobody listens on, and that no other test of this run is handed: for a
/// server of a test's own, or as a closed port (connecting to it is refused).
///
/// Ports come in turn from 23000-31999, below Linux's ephemeral range (32768-60999, where
/// `bind(0)` and outgoing connections take theirs), skipping any that something already holds
/// (the rig's servers). Asking the kernel for a free port instead (`bind(0)`, then release)
/// can hand the same port to two tests: a test's "dead" server address then reached another
/// test's live server.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    port_in(23_000, 9_000, &NEXT, &[0])
}

/// The next port of `first`..`first + count` (taken in turn through `next`) that is free, with
/// each `port + offset` of `offsets` free too.
fn port_in(first: u32, count: u32, next: &AtomicU32, offsets: &[u16]) -> u16 {
    // Another test binary running at the same time starts elsewhere in the range.
    let start = std::process::id().wrapping_mul(7_919) % count;
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        assert!(n < count, "no free loopback port left in {first}-{}", first + count - 1);
        let port = (first + (start + n) % count) as u16;
        if offsets.iter().all(|o| free(port + o)) {
            return port;
        }
    }
}

/// Sends `request` to `address` (`host:port`, or `unix:PATH`) and returns the first line of the
/// reply, `\r\n` included; `None` without a connection (500 ms) or a reply (2 s).
pub fn probe(address: &str, request: &[u8]) -> Option<String> {
    fn first_line(mut stream: impl Read + Write, request: &[u8]) -> Option<String> {
        stream.write_all(request).ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        Some(line)
    }
    let wait = Some(Duration::from_secs(2));
    if let Some(path) = address.strip_prefix("unix:") {
        let stream = std::os::unix::net::UnixStream::connect(path).ok()?;
        stream.set_read_timeout(wait).ok()?;
        return first_line(stream, request);
    }
    let stream = std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()?
        .find_map(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok())?;
    stream.set_read_timeout(wait).ok()?;
    first_line(stream, request)
}

/// Polls `ready` until it holds or `child` died or [`STARTUP`] passed; `Ok` when ready.
fn wait_ready(child: &mut Child, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready after {STARTUP:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `which` (`-STOP`, `-CONT`) to every process of `pids` (a server's, to freeze it): the
/// first (the server itself: memcached, redis-server, the postmaster) must get it; the others
/// (PostgreSQL's children) may have exited meanwhile: a child that was exiting when it was
/// frozen is reaped by the postmaster as soon as the postmaster runs again, before `kill` gets
/// to it.
pub fn signal(which: &str, pids: &[u32]) {
    let send = |pids: &[u32]| {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        Command::new("kill").arg(which).args(&pids).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    let Some((server, children)) = pids.split_first() else { return };
    assert!(send(&[*server]), "kill {which} {server}");
    if !children.is_empty() {
        let _ = send(children);
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A deliberately broken "server" of this test's own on a loopback port (`127.0.0.1:PORT`, held
/// from the start): it accepts every connection and answers whatever it reads with `reply`, or
/// never answers at all (`None`: it holds the socket open, as a hung server does). It lives as
/// long as the test process.
pub fn fake_server(reply: Option<&'static [u8]>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            match reply {
                None => held.push(client),
                Some(reply) => {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = client.read(&mut buf) {
                            if n == 0 || client.write_all(reply).is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        }
    });
    host
}

// ---- memcached -------------------------------------------------------------------------------

/// A memcached of one test's own, on a free loopback port or a unix socket; SIGKILLed on
/// [`OwnMemcached::kill`] and on drop.
pub struct OwnMemcached {
    child: Option<Child>,
    /// The TCP port (0 on a unix socket).
    pub port: u16,
    socket: Option<PathBuf>,
}

impl OwnMemcached {
    /// Starts one on a free port (`None`: skipped, memcached is not installed).
    pub fn start() -> Option<OwnMemcached> {
        Self::start_on(None)
    }

    /// `N` of them (`None`: skipped, memcached is not installed).
    pub fn several<const N: usize>() -> Option<[OwnMemcached; N]> {
        let servers: Option<Vec<OwnMemcached>> = (0..N).map(|_| OwnMemcached::start()).collect();
        servers?.try_into().ok()
    }

    /// Starts one listening on the unix socket `path` only.
    pub fn unix(path: &Path) -> Option<OwnMemcached> {
        Self::start_on(Some(path.to_path_buf()))
    }

    fn start_on(socket: Option<PathBuf>) -> Option<OwnMemcached> {
        if !crate::util::rig::compiled("memcached") || !require(installed("memcached", "-V"), "memcached") {
            return None;
        }
        let mut last = String::new();
        for _ in 0..3 {
            let port = if socket.is_some() { 0 } else { free_port() };
            let mut server = OwnMemcached { child: None, port, socket: socket.clone() };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("memcached did not start: {last}");
    }

    /// Ready once it has answered `version` (a connection that only connected may not be
    /// counted in `total_connections` yet: memcached hands it to a worker thread first).
    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("memcached");
        match &self.socket {
            Some(path) => cmd.arg("-s").arg(path).args(["-a", "0766"]),
            None => cmd.args(["-l", "127.0.0.1", "-p", &self.port.to_string()]),
        };
        cmd.args(["-U", "0", "-m", "64"]);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?;
        let address = self.host();
        let ready =
            wait_ready(&mut child, || probe(&address, b"version\r\n").is_some_and(|l| l.starts_with("VERSION")));
        self.child = Some(child);
        if ready.is_err() {
            kill(&mut self.child);
        }
        ready
    }

    /// `127.0.0.1:PORT`, or `unix:PATH`.
    pub fn host(&self) -> String {
        match &self.socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL) and waits until it is gone. Its data is lost.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// The server's process (to freeze it with SIGSTOP).
    pub fn pids(&self) -> Vec<u32> {
        self.child.iter().map(Child::id).collect()
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("memcached did not restart on port {}: {e}", self.port));
    }

    /// A raw client on a connection of its own (`total_connections` counts it).
    pub fn client(&self) -> MemcachedClient {
        MemcachedClient::to(&self.host())
    }

    /// One raw command on a connection of its own ([`MemcachedClient::command`]).
    pub fn raw(&self, command: &str) -> Vec<String> {
        self.client().command(command)
    }

    /// One number of `stats`, on a connection of its own (`total_connections` counts it).
    pub fn stat(&self, name: &str) -> u64 {
        self.client().stat(name)
    }
}

impl Drop for OwnMemcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Raw ASCII commands to one memcached server over one connection, as python-memcached sends
/// them.
pub struct MemcachedClient {
    reader: BufReader<TcpStream>,
}

impl MemcachedClient {
    pub fn to(host: &str) -> MemcachedClient {
        let stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        MemcachedClient { reader: BufReader::new(stream) }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    /// The next line of the reply, `\r\n` included.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read");
        line
    }

    /// Sends `command` and returns the reply's lines without their `\r\n`: up to `END` for
    /// `get` and `stats`, else the one line.
    pub fn command(&mut self, command: &str) -> Vec<String> {
        self.send(command.as_bytes());
        let many = command.starts_with("get") || command.starts_with("stats");
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let line = line.trim_end().to_string();
            let done = !many || line == "END";
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    }

    /// `get`: the flags and bytes stored under `key`.
    pub fn get(&mut self, key: &str) -> Option<(u32, Vec<u8>)> {
        self.send(format!("get {key}\r\n").as_bytes());
        let header = self.line();
        if header == "END\r\n" {
            return None;
        }
        let parts: Vec<&str> = header.trim_end().split(' ').collect();
        assert_eq!(parts[..2], ["VALUE", key], "{header:?}");
        let flags = parts[2].parse().unwrap();
        let len: usize = parts[3].parse().unwrap();
        let mut data = vec![0; len + 2];
        self.reader.read_exact(&mut data).unwrap();
        data.truncate(len);
        assert_eq!(self.line(), "END\r\n");
        Some((flags, data))
    }

    /// `set`, with python-memcached's trailing space.
    pub fn set(&mut self, key: &str, flags: u32, exptime: u32, data: &[u8]) {
        self.send(format!("set {key} {flags} {exptime} {} \r\n", data.len()).as_bytes());
        self.send(data);
        self.send(b"\r\n");
        assert_eq!(self.line(), "STORED\r\n");
    }

    /// The server's own seconds left for `key` (meta get): -1 for never, `None` if missing.
    pub fn server_ttl(&mut self, key: &str) -> Option<i64> {
        let reply = self.command(&format!("mg {key} t\r\n")).concat();
        if reply.starts_with("EN") {
            return None;
        }
        let t = reply.split(' ').find_map(|f| f.strip_prefix('t')).expect("t flag");
        Some(t.parse().unwrap())
    }

    /// One number of `stats`.
    pub fn stat(&mut self, name: &str) -> u64 {
        self.command("stats\r\n")
            .iter()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")).map(|v| v.parse().expect("a number")))
            .unwrap_or_else(|| panic!("no stat {name}"))
    }
}

// ---- redis -----------------------------------------------------------------------------------

/// A redis-server of one test's own, in a temp dir; SIGKILLed on [`OwnRedis::kill`] and on
/// drop. With `--appendonly yes --appendfsync always` among its arguments, every write it
/// acknowledged survives a kill and a restart.
pub struct OwnRedis {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Its unix socket, in `dir` (asked for with a bare `--unixsocket`; always there with TLS).
    pub socket: Option<PathBuf>,
    tls: bool,
    args: Vec<String>,
}

impl OwnRedis {
    /// Starts one with `extra` arguments (`None`: skipped, redis-server is not installed).
    pub fn start(extra: &[&str]) -> Option<OwnRedis> {
        Self::start_with(extra, false, |_| Vec::new())
    }

    /// Starts a cluster node, with `extra`, on a port of [`cluster_port`]'s: another one when
    /// something took the port or its bus port before redis-server bound them (three tries).
    pub fn start_cluster_node(extra: &[&str]) -> Option<OwnRedis> {
        if !crate::util::rig::compiled("redis") || !require(installed("redis-server", "--version"), "redis-server") {
            return None;
        }
        let mut tries = Vec::new();
        for _ in 0..3 {
            let port = cluster_port();
            let dir = tempfile::tempdir().expect("temp dir");
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            args.extend(["--cluster-config-file".into(), dir.path().join("nodes.conf").display().to_string()]);
            let mut server = OwnRedis { child: None, dir, port, socket: None, tls: false, args };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => tries.push(format!("port {port}: {e}")),
            }
        }
        panic!("redis-server did not start as a cluster node: {}", tries.join("; "))
    }

    /// A sentinel watching the master on `master_port` as the service `kcache` (quorum 2,
    /// down after 1 s), from a config file of its own (sentinels rewrite theirs).
    /// `passwords`: the master's (`sentinel auth-pass`) and the sentinel's own (`requirepass`).
    pub fn start_sentinel(master_port: u16, passwords: (Option<&str>, Option<&str>)) -> Option<OwnRedis> {
        if !crate::util::rig::compiled("redis") || !require(installed("redis-server", "--version"), "redis-server") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor kcache 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds kcache 1000\n\
                 sentinel failover-timeout kcache 10000\n\
                 sentinel parallel-syncs kcache 1\n{}{}",
                passwords.0.map(|p| format!("sentinel auth-pass kcache {p}\n")).unwrap_or_default(),
                passwords.1.map(|p| format!("requirepass {p}\n")).unwrap_or_default(),
            ),
        )
        .expect("write sentinel.conf");
        let args = vec![conf.display().to_string(), "--sentinel".to_string()];
        let mut server = OwnRedis { child: None, dir, port: free_port(), socket: None, tls: false, args };
        server.spawn().unwrap_or_else(|e| panic!("redis-server --sentinel did not start: {e}"));
        Some(server)
    }

    /// `tls`: the port is a TLS port (the plain one is off, and readiness is asked over the
    /// unix socket). `more` adds arguments that need the server's folder (certificates).
    pub fn start_with(extra: &[&str], tls: bool, more: impl Fn(&Path) -> Vec<String>) -> Option<OwnRedis> {
        if !crate::util::rig::compiled("redis") || !require(installed("redis-server", "--version"), "redis-server") {
            return None;
        }
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("redis.sock");
            let unix = tls || extra.contains(&"--unixsocket");
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            match args.iter().position(|a| a == "--unixsocket") {
                Some(i) => args.insert(i + 1, path.display().to_string()),
                None if tls => args.extend(["--unixsocket".into(), path.display().to_string()]),
                None => {}
            }
            args.extend(more(dir.path()));
            let socket = unix.then_some(path);
            let mut server = OwnRedis { child: None, dir, port: free_port(), socket, tls, args };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        // A config file comes first (a sentinel's).
        let (conf, args) = match self.args.split_first() {
            Some((first, rest)) if first.ends_with(".conf") => (Some(first), rest),
            _ => (None, &self.args[..]),
        };
        cmd.args(conf);
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]);
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.arg("--dir").arg(self.dir.path()).arg("--logfile").arg(self.dir.path().join("redis.log")).args(args);
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?;
        let address = match (&self.socket, self.tls) {
            (Some(path), true) => format!("unix:{}", path.display()),
            _ => format!("127.0.0.1:{}", self.port),
        };
        // PING answers -LOADING while an append-only file is read back: wait for +PONG (or
        // -NOAUTH, from a server with a password).
        let ready = wait_ready(&mut child, || {
            probe(&address, b"PING\r\n").is_some_and(|l| l.starts_with("+PONG") || l.starts_with("-NOAUTH"))
        });
        self.child = Some(child);
        if ready.is_err() {
            kill(&mut self.child);
        }
        ready.map_err(|e| {
            format!("{e}: {}", std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default())
        })
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        self.url_as("", 0)
    }

    /// `redis://[auth@]127.0.0.1:PORT/db`, `auth` with its `@`.
    pub fn url_as(&self, auth: &str, db: u32) -> String {
        format!("redis://{auth}127.0.0.1:{}/{db}", self.port)
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// The server's process (to freeze it with SIGSTOP).
    pub fn pids(&self) -> Vec<u32> {
        self.child.iter().map(Child::id).collect()
    }

    /// Starts it again on the same port, in the same folder (an append-only file is reloaded).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("redis-server did not restart on port {}: {e}", self.port));
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw connection (the redis crate) to `url`, with 5 s timeouts: to write as Kinto does and
/// read what kcache wrote.
#[cfg(feature = "redis")]
pub fn redis_client(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("bad redis URL {url}: {e}"));
    let conn = client.get_connection_with_timeout(TIMEOUT).unwrap_or_else(|e| panic!("cannot connect: {e}"));
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    conn
}

// ---- redis cluster and sentinel --------------------------------------------------------------

/// A port for a cluster node, and its bus port (+10000), both free: from 11000-12999 (buses
/// 21000-22999). Both ranges are apart from [`free_port`]'s, so that no bus port is another
/// test's server, and below the ephemeral range, where an outgoing connection could take a bus
/// port between the check and redis-server's bind (a CI run failed that way).
fn cluster_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    port_in(11_000, 2_000, &NEXT, &[0, 10_000])
}

/// Runs `redis-cli` with `args`; its standard output (panics when it fails).
pub fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(args).stdin(Stdio::null()).output().expect("run redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "redis-cli {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// One `redis-cli -p PORT ARGS...` answer, trimmed.
fn ask(port: u16, args: &[&str]) -> String {
    ask_as(port, None, args)
}

/// The same, with `password`.
fn ask_as(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", port.as_str(), "--no-auth-warning"];
    if let Some(p) = password {
        all.extend(["-a", p]);
    }
    all.extend_from_slice(args);
    redis_cli(&all).trim().to_string()
}

/// Polls `ready` every 50 ms for up to `limit`; panics with `what` when it never holds.
#[track_caller]
fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster of one test's own: N masters, no replicas, made by `redis-cli --cluster
/// create`; every node killed on drop.
pub struct OwnRedisCluster {
    nodes: Vec<OwnRedis>,
}

impl OwnRedisCluster {
    /// `None`: redis-server is not installed (skipped, or failed under CI).
    pub fn start(masters: usize) -> Option<OwnRedisCluster> {
        if !require(installed("redis-cli", "--version"), "redis-cli") {
            return None;
        }
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            nodes.push(OwnRedis::start_cluster_node(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])?);
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(&args);
        let cluster = OwnRedisCluster { nodes };
        wait_until(Duration::from_secs(30), "the cluster is not ok", || {
            cluster.nodes.iter().all(|n| ask(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && (0..masters).map(|i| cluster.slots_of(i)).sum::<usize>() == 16_384
        });
        Some(cluster)
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// How many hash slots node `i` serves, as it sees the cluster.
    pub fn slots_of(&self, i: usize) -> usize {
        let port = self.nodes[i].port;
        let nodes = ask(port, &["CLUSTER", "NODES"]);
        let Some(line) = nodes.lines().find(|l| l.contains("myself")) else { return 0 };
        line.split_whitespace()
            .skip(8)
            .filter(|r| !r.starts_with('['))
            .map(|r| match r.split_once('-') {
                Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
                None => 1,
            })
            .sum()
    }

    /// How many keys node `i` holds.
    pub fn dbsize(&self, i: usize) -> u64 {
        ask(self.nodes[i].port, &["DBSIZE"]).parse().expect("DBSIZE")
    }

    /// Moves `slots` slots from node `from` to node `to` (`redis-cli --cluster reshard`) on a
    /// thread: the handle ends when the resharding has.
    pub fn reshard_in_background(&self, from: usize, to: usize, slots: u32) -> std::thread::JoinHandle<()> {
        let id = |i: usize| ask(self.nodes[i].port, &["CLUSTER", "MYID"]);
        let (from_id, to_id) = (id(from), id(to));
        let seed = format!("127.0.0.1:{}", self.nodes[from].port);
        std::thread::spawn(move || {
            let n = slots.to_string();
            redis_cli(&[
                "--cluster",
                "reshard",
                &seed,
                "--cluster-from",
                &from_id,
                "--cluster-to",
                &to_id,
                "--cluster-slots",
                &n,
                "--cluster-yes",
                "--cluster-pipeline",
                "100",
            ]);
        })
    }
}

/// A master, one replica and three sentinels (quorum 2, `down-after-milliseconds 1000`) of one
/// test's own, watching the service `kcache`; all killed on drop.
pub struct OwnSentinels {
    servers: Vec<OwnRedis>,
    sentinels: Vec<OwnRedis>,
    /// The sentinels' own password.
    sentinel_password: Option<String>,
}

impl OwnSentinels {
    pub fn start() -> Option<OwnSentinels> {
        Self::start_with_passwords(None, None)
    }

    /// With `master` as the master's and replica's `requirepass` (and the replica's
    /// `masterauth`), and `sentinel` as the sentinels' own.
    pub fn start_with_passwords(master: Option<&str>, sentinel: Option<&str>) -> Option<OwnSentinels> {
        if !require(installed("redis-cli", "--version"), "redis-cli") {
            return None;
        }
        let auth: Vec<&str> = master.map(|p| vec!["--requirepass", p, "--masterauth", p]).unwrap_or_default();
        let master_server = OwnRedis::start(&auth)?;
        let of = master_server.port.to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", &of];
        args.extend(&auth);
        let replica = OwnRedis::start(&args)?;
        wait_until(Duration::from_secs(20), "the replica is not in sync", || {
            ask_as(replica.port, master, &["INFO", "replication"]).contains("master_link_status:up")
        });
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(OwnRedis::start_sentinel(master_server.port, (master, sentinel))?);
        }
        let group = OwnSentinels {
            servers: vec![master_server, replica],
            sentinels,
            sentinel_password: sentinel.map(Into::into),
        };
        wait_until(Duration::from_secs(30), "the sentinels do not know each other and the replica", || {
            group.sentinels.iter().all(|s| {
                let ask = |args: &[&str]| ask_as(s.port, sentinel, args);
                ask(&["SENTINEL", "CKQUORUM", "kcache"]).starts_with("OK")
                    && ask(&["SENTINEL", "REPLICAS", "kcache"]).contains("ip")
                    && ask(&["SENTINEL", "SENTINELS", "kcache"]).matches("runid").count() >= 2
            })
        });
        Some(group)
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/kcache/0`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+sentinel://{}/kcache/0", hosts.join(","))
    }

    /// The master's port, as the first sentinel names it.
    pub fn master_port(&self) -> u16 {
        let pw = self.sentinel_password.as_deref();
        let addr = ask_as(self.sentinels[0].port, pw, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "kcache"]);
        addr.lines().nth(1).and_then(|p| p.trim().parse().ok()).expect("a master port")
    }

    /// `SENTINEL FAILOVER kcache` on a thread; the handle ends when every sentinel names the other
    /// server as master and that server says it is one.
    pub fn failover_in_background(&self) -> std::thread::JoinHandle<()> {
        let old = self.master_port();
        let sentinels: Vec<u16> = self.sentinels.iter().map(|s| s.port).collect();
        std::thread::spawn(move || {
            assert_eq!(ask(sentinels[0], &["SENTINEL", "FAILOVER", "kcache"]), "OK");
            wait_until(Duration::from_secs(30), "no new master", || {
                sentinels.iter().all(|s| {
                    let addr = ask(*s, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "kcache"]);
                    let port: u16 = addr.lines().nth(1).and_then(|p| p.trim().parse().ok()).unwrap_or(old);
                    port != old && ask(port, &["ROLE"]).starts_with("master")
                })
            });
        })
    }
}

// ---- postgresql ------------------------------------------------------------------------------

/// The PostgreSQL server binaries: `$KCACHE_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `initdb`'s folder on `PATH`.
fn pg_bin() -> Option<PathBuf> {
    let complete = |d: &Path| ["postgres", "initdb", "pg_ctl"].iter().all(|t| d.join(t).is_file());
    if let Some(d) = std::env::var_os("KCACHE_TEST_PG_BIN").map(PathBuf::from).filter(|d| complete(d)) {
        return Some(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| complete(d))
}

/// A PostgreSQL cluster of one test's own: `initdb` in a temp dir (trust authentication,
/// loopback only), started with `pg_ctl`. [`OwnPostgres::crash`] stops it the way a crash
/// would (`pg_ctl stop -m immediate`: no checkpoint, recovery at the next start);
/// [`OwnPostgres::restart`] starts it again on the same port with the same data.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    running: bool,
}

impl OwnPostgres {
    /// Creates and starts a cluster (`None`: skipped, PostgreSQL is not installed).
    pub fn start() -> Option<OwnPostgres> {
        let bin = pg_bin();
        if !crate::util::rig::compiled("postgresql") || !require(bin.is_some(), "PostgreSQL (initdb, pg_ctl)") {
            return None;
        }
        let bin = bin.expect("found");
        if is_root() {
            let ok = installed("runuser", "--version")
                && Command::new("id").arg("postgres").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
            assert!(ok, "running as root: PostgreSQL needs the postgres user and runuser");
        }
        let server = OwnPostgres::unstarted(bin);
        let out = server
            .tool("initdb")
            .args(["-D", "data", "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8", "--locale=C"])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb failed:\n{}", String::from_utf8_lossy(&out.stderr));
        Some(server.started("postgresql"))
    }

    /// A cluster folder of its own, nothing in it yet. The postgres user must reach it: /tmp,
    /// not a root-only $TMPDIR.
    fn unstarted(bin: PathBuf) -> OwnPostgres {
        let dir = tempfile::Builder::new().prefix("kcache-pg.").tempdir_in("/tmp").expect("temp dir");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        OwnPostgres { dir, bin, port: 0, running: false }
    }

    /// Starts the cluster on a free port (three tries: a port may be taken meanwhile).
    fn started(mut self, what: &str) -> OwnPostgres {
        let mut last = String::new();
        for _ in 0..3 {
            self.port = free_port();
            match self.pg_ctl_start() {
                Ok(()) => return self,
                Err(e) => last = e,
            }
        }
        panic!("{what} did not start: {last}");
    }

    /// A streaming standby of `primary`, of this test's own (`pg_basebackup -R`), started.
    pub fn standby_of(primary: &OwnPostgres) -> OwnPostgres {
        let server = OwnPostgres::unstarted(primary.bin.clone());
        let out = server
            .tool("pg_basebackup")
            .arg("-h")
            .arg(primary.dir.path())
            .args(["-p", &primary.port.to_string(), "-U", "postgres", "-D", "data", "-R", "-X", "stream"])
            .output()
            .expect("pg_basebackup");
        assert!(out.status.success(), "pg_basebackup failed:\n{}", String::from_utf8_lossy(&out.stderr));
        server.started("the standby")
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) {
        let out =
            self.tool("pg_ctl").args(["-w", "-t", "30", "-D", "data", "promote"]).output().expect("pg_ctl promote");
        assert!(out.status.success(), "pg_ctl promote failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    /// A PostgreSQL tool, as the postgres user when root, run in the cluster's folder.
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c shared_buffers=16MB -c max_connections=60",
            self.port,
            self.dir.path().display()
        );
        let out = self
            .tool("pg_ctl")
            .args(["-w", "-t", "15", "-D", "data", "-l", "log", "-o", &options, "start"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            ))
        }
    }

    /// `postgresql://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server as a crash would: every backend dies at once, nothing is checkpointed.
    pub fn crash(&mut self) {
        if !self.running {
            return;
        }
        let ok = self
            .tool("pg_ctl")
            .args(["-w", "-t", "15", "-D", "data", "-m", "immediate", "stop"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            self.kill_postmaster();
        }
        self.running = false;
    }

    /// Starts the server again on the same port; committed data is there (after recovery).
    pub fn restart(&mut self) {
        self.crash();
        self.pg_ctl_start().unwrap_or_else(|e| panic!("postgresql did not restart on port {}: {e}", self.port));
    }

    /// The postmaster and every process it started (to freeze them all with SIGSTOP).
    pub fn pids(&self) -> Vec<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).unwrap_or_default();
        let Some(postmaster) = text.lines().next().and_then(|p| p.trim().parse::<u32>().ok()) else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the command may hold spaces, so read after the last ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    fn kill_postmaster(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid")).unwrap_or_default();
        if let Some(pid) = pid.lines().next().filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.crash();
    }
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("id postgres");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

// ---- bounded runs ----------------------------------------------------------------------------

/// Runs kcache like [`Env::run_stdin`], but kills it and fails the test if it has not ended
/// within `limit`: where a server is down or a lock is held, a hang must fail, not hang.
#[track_caller]
pub fn run_within(env: &Env, args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> crate::util::Out {
    let mut cmd = env.command();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn kcache");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kcache {args:?} did not end within {limit:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = crate::util::Out {
        status: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!out.stderr.contains(bad), "kcache {args:?} panicked:\n{}", out.stderr);
    }
    out
}

// ---- kcache batch as a coprocess -------------------------------------------------------------

/// `kcache batch` with its standard input open: lines are written while replies are read, so
/// a test can stop or restart a server between (or during) them. Killed on drop.
pub struct Batch {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    pub args: Vec<String>,
}

/// How a batch ended.
#[derive(Debug)]
pub struct BatchEnd {
    pub status: i32,
    /// The replies not read before the end.
    pub replies: Vec<Value>,
    pub stderr: String,
}

impl Batch {
    pub fn spawn(env: &Env, args: &[&str]) -> Batch {
        let mut cmd = env.command();
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kcache batch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        let stdin = child.stdin.take();
        Batch { child, stdin, replies, stderr, args: args.iter().map(|s| s.to_string()).collect() }
    }

    /// Writes `text` (whole lines) and flushes it.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("standard input still open");
        stdin.write_all(text.as_bytes()).expect("write to kcache batch");
        stdin.flush().expect("flush");
    }

    /// Writes `text` from a thread, then closes standard input (for input larger than a pipe).
    pub fn send_all_and_close(&mut self, text: String) -> std::thread::JoinHandle<()> {
        let mut stdin = self.stdin.take().expect("standard input still open");
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        })
    }

    /// Standard input, for a writer of the test's own (dropping it closes the input).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("standard input still open")
    }

    /// The next `n` replies, which must all come within `within`.
    #[track_caller]
    pub fn read(&mut self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(line) => out.push(parse_reply(&line)),
                Err(_) => panic!(
                    "kcache {:?}: {} of {n} replies within {within:?}; got {:?}; stderr so far unknown",
                    self.args,
                    out.len(),
                    out
                ),
            }
        }
        out
    }

    /// Closes standard input and waits for the end, at most `within` (then the batch is killed
    /// and the test fails: a batch must never hang).
    #[track_caller]
    pub fn finish(mut self, within: Duration) -> BatchEnd {
        drop(self.stdin.take());
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                panic!("kcache {:?} did not end within {within:?} (killed); stderr:\n{stderr}", self.args);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let mut replies = Vec::new();
        // The reader thread ends at EOF, after the process: everything it read is queued.
        while let Ok(line) = self.replies.recv_timeout(Duration::from_secs(2)) {
            replies.push(parse_reply(&line));
        }
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(!stderr.contains(bad), "kcache {:?} panicked:\n{stderr}", self.args);
        }
        BatchEnd { status: status.code().unwrap_or(-1), replies, stderr }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[track_caller]
pub fn parse_reply(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("a batch reply is not JSON: {line:?}: {e}"))
}

/// Every reply of `stdout`, one JSON object a line.
#[track_caller]
pub fn replies(stdout: &str) -> Vec<Value> {
    stdout.lines().map(parse_reply).collect()
}

/// The `status` of a reply.
#[track_caller]
pub fn status(reply: &Value) -> u64 {
    reply["status"].as_u64().unwrap_or_else(|| panic!("no status in {reply}"))
}

/// A word quoted for a batch line as a POSIX shell reads it: `'...'`, with `'\''` for a quote.
pub fn sq(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}
