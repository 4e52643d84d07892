//! The connection under a pooled [`super::Conn`]: one server (named by the URL, or found through
//! Sentinel), or a whole Redis Cluster.
//!
//! For a cluster the redis crate does the routing: a command goes to its key's hash-slot master,
//! `MOVED` and `ASK` are followed (the slot map refreshed), `TRYAGAIN` and `CLUSTERDOWN` waited
//! out, and a pipeline is split into one pipeline per node, all sent before any reply is read
//! ([`redis::cluster::cluster_pipe`]). kcache adds two things the crate's sync pipeline lacks:
//! - it reads a pipeline's replies one per command (`ignore_errors`), so that one refused command
//!   is that command's error and not the whole group's;
//! - a command answered by a redirection inside a pipeline (redis 1.8.1 follows `MOVED` and `ASK`
//!   for single commands only: in a pipeline the reply comes back as it is) is sent again alone,
//!   through the crate's single-command path, which follows it. During a resharding, a group thus
//!   costs one more round trip per moved key, and no line fails.
//!
//! Commands that walk the keyspace (`SCAN`, `INFO`) go to each master in turn ([`Link::masters`],
//! [`Link::on`]); `DBSIZE`, `FLUSHDB` and multi-key `UNLINK` are sent to every master by the crate
//! itself (its routing table), so they need nothing here.

use redis::cluster::{ClusterConnection, ClusterPipeline};
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ConnectionLike, ErrorKind, RedisResult, ServerErrorKind, Value};
use std::time::Duration;

/// A connection: to one server, or to every node of a cluster.
pub enum Link {
    One(redis::Connection),
    Cluster(Box<ClusterConnection>),
}

/// A server to send a keyspace command to: the one server of the connection, or a cluster
/// master by address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Here,
    At(String, u16),
}

impl Node {
    /// `host:port`, for messages and `stats` (`None` for [`Node::Here`]).
    pub fn address(&self) -> Option<String> {
        match self {
            Node::Here => None,
            Node::At(host, port) if host.contains(':') => Some(format!("[{host}]:{port}")),
            Node::At(host, port) => Some(format!("{host}:{port}")),
        }
    }
}

impl Link {
    pub fn set_read_timeout(&self, d: Option<Duration>) -> RedisResult<()> {
        match self {
            Link::One(c) => c.set_read_timeout(d),
            Link::Cluster(c) => c.set_read_timeout(d),
        }
    }

    pub fn set_write_timeout(&self, d: Option<Duration>) -> RedisResult<()> {
        match self {
            Link::One(c) => c.set_write_timeout(d),
            Link::Cluster(c) => c.set_write_timeout(d),
        }
    }

    /// The one server's connection (for what only a single server can do: see
    /// [`super::Redis`]'s dump).
    pub fn one(&mut self) -> RedisResult<&mut redis::Connection> {
        match self {
            Link::One(c) => Ok(c),
            Link::Cluster(_) => Err(odd("a single-server exchange on a cluster")),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// The servers a walk of the keyspace must visit: this one, or every cluster master (sorted,
    /// so that walks are repeatable).
    pub fn masters(&mut self) -> RedisResult<Vec<Node>> {
        let Link::Cluster(c) = self else { return Ok(vec![Node::Here]) };
        let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let Value::Map(replies) = c.route_command(&redis::cmd("PING"), all)? else {
            return Err(odd("the cluster's masters"));
        };
        let mut nodes = Vec::with_capacity(replies.len());
        for (address, _) in replies {
            let address: String = redis::from_redis_value(address)?;
            let node = address.rsplit_once(':').and_then(|(h, p)| Some(Node::At(h.to_string(), p.parse().ok()?)));
            nodes.push(node.ok_or_else(|| odd("a cluster node's address"))?);
        }
        nodes.sort_by_key(Node::address);
        Ok(nodes)
    }

    /// Sends `cmd` to `node` (its reply, a server error as an error).
    pub fn on(&mut self, node: &Node, cmd: &Cmd) -> RedisResult<Value> {
        match (self, node) {
            (Link::Cluster(c), Node::At(host, port)) => {
                let to = SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port };
                c.route_command(cmd, RoutingInfo::SingleNode(to))?.extract_error()
            }
            (link, _) => link.req_command(cmd)?.extract_error(),
        }
    }

    /// Sends a cluster pipeline: one reply per command (see the module's notes for what is sent
    /// again, and why). No `GETDEL` may be in it: its value could be lost.
    pub fn send_cluster(&mut self, pipe: &ClusterPipeline) -> RedisResult<Vec<Value>> {
        let Link::Cluster(c) = self else { return Err(odd("a cluster pipeline on a single server")) };
        if pipe.cmd_iter().next().is_none() {
            return Ok(Vec::new());
        }
        let refused = match pipe.query::<Vec<Value>>(c) {
            Ok(replies) => return Ok(replies),
            Err(e) => match e.clone().into_server_errors() {
                Some(refused) => refused,
                None => return Err(e),
            },
        };
        // Some command was refused (a redirection, most likely: a resharding is under way), and
        // the crate kept none of the other replies. Each command again, in order: a refused one
        // alone (the crate follows its redirection; another refusal is its reply), one that ran
        // and is known to answer OK is not sent again, a read or an `PEXPIRE` is.
        let mut replies = Vec::new();
        for (i, cmd) in pipe.cmd_iter().enumerate() {
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => b.to_ascii_uppercase(),
                    _ => Vec::new(),
                })
                .collect();
            let name = args.first().map(Vec::as_slice).unwrap_or_default();
            let refusal = refused.iter().find(|(at, _)| *at == i).map(|(_, e)| e);
            let redirected = refusal.is_some_and(|e| {
                matches!(
                    e.kind(),
                    Some(
                        ServerErrorKind::Moved
                            | ServerErrorKind::Ask
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                    )
                )
            });
            let ok_known = name == b"PSETEX" || (name == b"SET" && !args.iter().skip(3).any(|a| a == b"NX"));
            replies.push(match refusal {
                Some(e) if !redirected => Value::ServerError(e.clone()),
                None if ok_known => Value::Okay,
                None if name == b"GETDEL" => return Err(odd("a GETDEL in a cluster pipeline")),
                _ => match c.req_command(cmd) {
                    Ok(v) => v,
                    Err(e) => server_error(&e).ok_or(e)?,
                },
            });
        }
        Ok(replies)
    }
}

/// A server's refusal as the reply value it came in (to be read with the others), or `None`
/// when `e` is not a server's reply (a connection failure).
fn server_error(e: &redis::RedisError) -> Option<Value> {
    Some(refusal(e.code()?, e.detail()))
}

/// The reply a server sends to refuse a command: `-CODE detail` (the redis crate has no other
/// way to make one), read as every reply is.
pub fn refusal(code: &str, detail: Option<&str>) -> Value {
    let resp = match detail {
        Some(detail) => format!("-{code} {}\r\n", detail.replace(['\r', '\n'], " ")),
        None => format!("-{code}\r\n"),
    };
    redis::parse_redis_value(resp.as_bytes()).unwrap_or(Value::Nil)
}

fn odd(what: &str) -> redis::RedisError {
    redis::RedisError::from((ErrorKind::UnexpectedReturnType, "unexpected reply", format!("for {what}")))
}

impl ConnectionLike for Link {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Link::One(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        match self {
            Link::One(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Link::One(c) => c.req_command(cmd),
            Link::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::One(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Link::One(c) => c.check_connection(),
            Link::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Link::One(c) => c.is_open(),
            Link::Cluster(c) => c.is_open(),
        }
    }
}
