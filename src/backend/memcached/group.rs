//! A group of keyed operations (`kcache batch`) in as few round trips as memcached allows.
//!
//! The operations are split by server (each key on the server python-memcached picks, as for a
//! single operation), keeping their order. On each server:
//! - `get`, `ttl` and `set` go out in one pipeline: every command written at once, then every
//!   reply read. memcached runs the commands of a connection in the order it reads them, so a
//!   `get` after a `set` of the same key sees that `set`, as one by one. Consecutive `get`s
//!   become one `get k1 k2 ...` (each key asked once); a `ttl` is an `mg <key> v f t` of its
//!   own, as one by one, for the server's own time left.
//! - `expire` and `delete` read the entry, then write it with `cas` (see the module above): they
//!   run alone, in their place, on the same connection.
//! - The pipelines of every server are written before any reply is read, so the servers work
//!   at the same time: a group costs about one round trip, not one per server. A group holds a
//!   connection to each of its servers until it is done; they are taken in the order of the
//!   servers, so that workers sharing small pools cannot each hold what another waits for.
//!
//! memcached stops reading a connection while it cannot send a reply, and kcache reads no reply
//! before it has written the whole pipeline: past a read command (whose reply may be large) a
//! pipeline holds at most [`AFTER_READ_BYTES`] more, which the sockets' buffers always take, so
//! neither side can wait for the other forever. The rest goes in the next pipeline.
//!
//! Results are those of the single operations: the same envelope, the same exact expiry (each
//! reply is judged when it arrives), the same errors. A refused command (a value over the item
//! size limit) fails alone. When a connection fails, every operation on that server that has
//! no answer yet fails with status 3 naming the server: some may have run, as with a single
//! operation whose connection fails.

use super::conn::{self, Failure, Manager, Reply, Request};
use super::{FLAG_TEXT, Memcached, Server, delete_on, envelope, expire_on, live_value, remaining};
use crate::backend::pool::Connection;
use crate::backend::{GroupOp, GroupResult};
use crate::error::{Error, ErrorKind, Result};
use std::time::SystemTime;

/// Bytes a pipeline may hold after its first read command (see the module doc). Linux takes at
/// least 64 KiB in socket buffers before a writer blocks, on TCP and unix sockets.
pub const AFTER_READ_BYTES: usize = 32 * 1024;

/// Commands in one pipeline at most (so that the replies of stores stay small too).
pub const MAX_PIPELINE: usize = 1024;

/// Where the result of one operation is in a pipeline's replies.
struct Slot {
    /// The operation, an index into the group.
    op: usize,
    /// Its command, an index into the pipeline.
    request: usize,
    /// For a read: the key's position in the `get`.
    key: usize,
}

/// One server's share of the group.
struct Lane<'m, 'o> {
    /// The server's index in `servers`.
    index: usize,
    server: &'m Server,
    /// Its operations (indices into the group), in order.
    ops: Vec<usize>,
    /// The first of `ops` that has no result yet.
    next: usize,
    conn: Option<Connection<Manager>>,
    /// The pipeline in flight.
    requests: Vec<Request<'o>>,
    slots: Vec<Slot>,
}

fn key_of<'o>(op: &GroupOp<'o>) -> &'o str {
    match *op {
        GroupOp::Get(k) | GroupOp::Set(k, ..) | GroupOp::Ttl(k) | GroupOp::Expire(k, _) | GroupOp::Delete(k) => k,
    }
}

/// A server without meta commands (older than 1.6) answered a `ttl`'s `mg`: one by one, `ttl`
/// falls back to `get` there; in a pipeline the later commands have run by then, so the `get`
/// could see what they wrote.
fn no_meta(server: &str) -> Error {
    Error::new(
        ErrorKind::Backend,
        anyhow::anyhow!("memcached at {server} does not know the meta command mg, which a batch's ttl uses"),
    )
    .with_hint("run that ttl on its own ('kcache ttl KEY'), or use memcached 1.6 or newer")
}

/// What the rest of a pipeline gets after its connection failed on a command: the same failure
/// when it was the connection itself, else "not answered" with that cause.
fn follow_up(f: &Failure) -> Failure {
    match f {
        Failure::Io { .. } | Failure::Closed | Failure::Abandoned(_) => f.clone(),
        other => Failure::Abandoned(other.to_string()),
    }
}

/// Runs `ops` (see the module doc); one result per operation, in order.
pub fn run(m: &Memcached, ops: &[GroupOp<'_>]) -> Vec<Result<GroupResult>> {
    let mut results: Vec<Option<Result<GroupResult>>> = (0..ops.len()).map(|_| None).collect();
    let mut lanes: Vec<Lane<'_, '_>> = Vec::new();
    let mut lane_of: Vec<Option<usize>> = vec![None; m.shared.servers.len()];
    let patience = m.shared.pool.timeout;
    for (i, op) in ops.iter().enumerate() {
        let s = m.server_index(key_of(op));
        let l = *lane_of[s].get_or_insert_with(|| {
            lanes.push(Lane {
                index: s,
                server: &m.shared.servers[s],
                ops: Vec::new(),
                next: 0,
                conn: None,
                requests: Vec::new(),
                slots: Vec::new(),
            });
            lanes.len() - 1
        });
        lanes[l].ops.push(i);
    }
    // Connections are taken in the order of the servers, the same for every worker: a worker
    // that holds one never waits for one that another worker, waiting for the first, holds.
    lanes.sort_by_key(|l| l.index);
    loop {
        let mut active = false;
        // Every server gets its next pipeline before any reply is read.
        for lane in &mut lanes {
            lane.requests.clear();
            lane.slots.clear();
            if lane.next >= lane.ops.len() {
                continue;
            }
            active = true;
            if lane.conn.is_none() {
                match m.connection(lane.server) {
                    Ok(c) => lane.conn = Some(c),
                    Err(e) => {
                        for &i in &lane.ops[lane.next..] {
                            results[i] = Some(Err(e.clone()));
                        }
                        lane.next = lane.ops.len();
                        continue;
                    }
                }
            }
            lane.build(ops);
            if lane.requests.is_empty() {
                continue;
            }
            let sent = lane.conn.as_mut().map_or(Ok(()), |c| c.send(&lane.requests));
            if let Err(f) = sent {
                lane.fail_rest(&follow_up(&f), &mut results);
            }
        }
        if !active {
            break;
        }
        for lane in &mut lanes {
            if !lane.requests.is_empty() {
                lane.receive(ops, &mut results);
            }
        }
        // An `expire` or `delete` due next runs alone.
        for lane in &mut lanes {
            let Some(&i) = lane.ops.get(lane.next) else { continue };
            let Some(c) = lane.conn.as_mut() else { continue };
            let server = lane.server;
            let result = match ops[i] {
                GroupOp::Expire(k, ttl) => expire_on(c, server, k, ttl, patience).map(GroupResult::Existed),
                GroupOp::Delete(k) => delete_on(c, server, k, patience).map(GroupResult::Value),
                _ => continue,
            };
            let broken = c.broken;
            results[i] = Some(result);
            lane.next += 1;
            if broken {
                lane.fail_rest(&Failure::Abandoned("the connection failed on an earlier command".into()), &mut results);
            }
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(Error::new(ErrorKind::Backend, anyhow::anyhow!("kcache did not run this command (internal error)")))
            })
        })
        .collect()
}

impl<'o> Lane<'_, 'o> {
    /// Fills the next pipeline: from `next`, up to an `expire` or `delete`, or as much as the
    /// limits allow.
    fn build(&mut self, ops: &[GroupOp<'o>]) {
        let now = SystemTime::now();
        // Bytes since the first read command, once there is one.
        let mut after_read: Option<usize> = None;
        for &i in &self.ops[self.next..] {
            if self.slots.len() >= MAX_PIPELINE {
                break;
            }
            match ops[i] {
                GroupOp::Expire(..) | GroupOp::Delete(_) => break,
                GroupOp::Ttl(k) => {
                    let mg = Request::MetaGet(k);
                    let cost = mg.wire_len();
                    if after_read.is_some_and(|b| b + cost > AFTER_READ_BYTES) {
                        break;
                    }
                    after_read = Some(after_read.unwrap_or(0) + cost);
                    self.requests.push(mg);
                    self.slots.push(Slot { op: i, request: self.requests.len() - 1, key: 0 });
                }
                GroupOp::Get(k) => {
                    let joins = matches!(self.requests.last(), Some(Request::Get(_)));
                    let cost = if joins { k.len() + 1 } else { k.len() + 6 };
                    if after_read.is_some_and(|b| b + cost > AFTER_READ_BYTES) {
                        break;
                    }
                    after_read = Some(after_read.unwrap_or(0) + cost);
                    if !joins {
                        self.requests.push(Request::Get(Vec::new()));
                    }
                    let request = self.requests.len() - 1;
                    let Some(Request::Get(keys)) = self.requests.last_mut() else { unreachable!() };
                    let key = match keys.iter().position(|x| *x == k) {
                        Some(p) => p,
                        None => {
                            keys.push(k);
                            keys.len() - 1
                        }
                    };
                    self.slots.push(Slot { op: i, request, key });
                }
                GroupOp::Set(k, v, ttl) => {
                    let data = envelope::encode(v, envelope::expires_us(now, ttl.duration()));
                    let exptime = envelope::exptime(now, ttl.duration());
                    let set = Request::Set { key: k, flags: FLAG_TEXT, exptime, data };
                    let cost = set.wire_len();
                    if after_read.is_some_and(|b| b + cost > AFTER_READ_BYTES) {
                        break;
                    }
                    if let Some(b) = after_read.as_mut() {
                        *b += cost;
                    }
                    self.requests.push(set);
                    self.slots.push(Slot { op: i, request: self.requests.len() - 1, key: 0 });
                }
            }
        }
    }

    /// Reads the replies of the pipeline in flight and sets its operations' results.
    fn receive(&mut self, ops: &[GroupOp<'_>], results: &mut [Option<Result<GroupResult>>]) {
        let Some(c) = self.conn.as_mut() else { return };
        let mut replies: Vec<(Result<Reply, Failure>, SystemTime)> = Vec::with_capacity(self.requests.len());
        let mut fatal: Option<Failure> = None;
        for r in &self.requests {
            let reply = match &fatal {
                Some(f) => Err(follow_up(f)),
                None => c.receive(r),
            };
            if let Err(f) = &reply
                && c.broken
                && fatal.is_none()
            {
                fatal = Some(f.clone());
            }
            replies.push((reply, SystemTime::now()));
        }
        let server = self.server;
        for slot in &self.slots {
            let (reply, at) = &replies[slot.request];
            let op = &ops[slot.op];
            let key = key_of(op);
            let result = match (op, reply) {
                (GroupOp::Ttl(_), Err(Failure::Client(line))) if line == "ERROR" => Err(no_meta(&server.location)),
                (_, Err(f)) => Err(conn::classify(f.clone(), &server.location)),
                (GroupOp::Get(_), Ok(Reply::Items(items))) => {
                    live_value(items.get(slot.key).and_then(Option::as_ref), key, server, *at).map(GroupResult::Value)
                }
                (GroupOp::Ttl(_), Ok(Reply::Items(items))) => {
                    remaining(items.get(slot.key).and_then(Option::as_ref), key, server, *at)
                        .map(GroupResult::Remaining)
                }
                (GroupOp::Set(..), Ok(Reply::Stored(_))) => Ok(GroupResult::Stored),
                (_, Ok(other)) => Err(conn::classify(Failure::Unexpected(format!("{other:?}")), &server.location)),
            };
            results[slot.op] = Some(result);
        }
        self.next += self.slots.len();
        if let Some(f) = fatal {
            self.fail_rest(&follow_up(&f), results);
        }
    }

    /// Fails every operation of this lane without a result yet, and gives up the connection.
    fn fail_rest(&mut self, f: &Failure, results: &mut [Option<Result<GroupResult>>]) {
        for &i in &self.ops[self.next..] {
            results[i] = Some(Err(conn::classify(f.clone(), &self.server.location)));
        }
        self.next = self.ops.len();
        self.requests.clear();
        self.slots.clear();
        if let Some(c) = self.conn.as_mut() {
            c.broken = true;
        }
        self.conn = None;
    }
}
