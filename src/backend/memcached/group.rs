//! A group of keyed operations (`kcache batch`) in as few round trips as memcached allows.
//!
//! The operations are split by server (each key on the server python-memcached picks, as for a
//! single operation), keeping their order. On each server:
//! - `get`, `ttl` and `set` go out in one pipeline: every command written at once, then every
//!   reply read. memcached runs the commands of a connection in the order it reads them, so a
//!   `get` after a `set` of the same key sees that `set`, as one by one. Each operation is the
//!   meta command it is alone (`mg <key> v f`, `mg <key> v f t`, `ms`), with one reply each.
//! - `expire` and `delete` read the entry, then write it over its CAS (see the module above):
//!   they run alone, in their place, on the same connection.
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

use super::conn::{self, Failure, Manager};
use super::{Memcached, Server, delete_on, done, expire_on, found, live_value, mg, remaining, set_command};
use crate::backend::pool::Connection;
use crate::backend::{GroupOp, GroupResult};
use crate::error::{Error, ErrorKind, Result};
use std::time::SystemTime;

/// Bytes a pipeline may hold after its first read command (see the module doc). Linux takes at
/// least 64 KiB in socket buffers before a writer blocks, on TCP and unix sockets.
pub const AFTER_READ_BYTES: usize = 32 * 1024;

/// Commands in one pipeline at most (so that the replies of stores stay small too).
pub const MAX_PIPELINE: usize = 1024;

/// One server's share of the group.
struct Lane<'m> {
    /// The server's index in `servers`.
    index: usize,
    server: &'m Server,
    /// Its operations (indices into the group), in order.
    ops: Vec<usize>,
    /// The first of `ops` that has no result yet.
    next: usize,
    conn: Option<Connection<Manager>>,
    /// How many of `ops` (from `next`) the pipeline in flight holds.
    sent: usize,
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
    let mut lanes: Vec<Lane<'_>> = Vec::new();
    let mut lane_of: Vec<Option<usize>> = vec![None; m.shared.servers.len()];
    let patience = m.shared.pool.timeout;
    for (i, op) in ops.iter().enumerate() {
        let s = m.server_index(op.key());
        let l = *lane_of[s].get_or_insert_with(|| {
            let server = &m.shared.servers[s];
            lanes.push(Lane { index: s, server, ops: Vec::new(), next: 0, conn: None, sent: 0 });
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
            lane.sent = 0;
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
            if lane.sent == 0 {
                continue;
            }
            let sent = lane.conn.as_mut().map_or(Ok(()), |c| c.send());
            if let Err(f) = sent {
                lane.fail_rest(&follow_up(&f), &mut results);
            }
        }
        if !active {
            break;
        }
        for lane in &mut lanes {
            if lane.sent > 0 {
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

impl Lane<'_> {
    /// Queues the next pipeline on the connection: from `next`, up to an `expire` or `delete`,
    /// or as much as the limits allow.
    fn build(&mut self, ops: &[GroupOp<'_>]) {
        let Some(c) = self.conn.as_mut() else { return };
        // Where the first read command starts, once there is one.
        let mut first_read: Option<usize> = None;
        for &i in &self.ops[self.next..] {
            if self.sent >= MAX_PIPELINE {
                break;
            }
            let before = c.queued();
            match ops[i] {
                GroupOp::Expire(..) | GroupOp::Delete(_) => break,
                GroupOp::Get(k) => c.push(&mg(k, &[])),
                GroupOp::Ttl(k) => c.push(&mg(k, &["t"])),
                GroupOp::Set(k, v, ttl) => c.push(&set_command(k, v, ttl)),
            }
            if first_read.is_some_and(|at| c.queued() - at > AFTER_READ_BYTES) {
                c.unqueue(before);
                break;
            }
            if first_read.is_none() && matches!(ops[i], GroupOp::Get(_) | GroupOp::Ttl(_)) {
                first_read = Some(before);
            }
            self.sent += 1;
        }
    }

    /// Reads the replies of the pipeline in flight and sets its operations' results.
    fn receive(&mut self, ops: &[GroupOp<'_>], results: &mut [Option<Result<GroupResult>>]) {
        let Some(c) = self.conn.as_mut() else { return };
        let server = self.server;
        let mut fatal: Option<Failure> = None;
        for &i in &self.ops[self.next..self.next + self.sent] {
            let reply = match &fatal {
                Some(f) => Err(follow_up(f)),
                None => c.receive(),
            };
            let at = SystemTime::now();
            let result = reply.and_then(|reply| match ops[i] {
                GroupOp::Set(..) => done(c, reply).map(|_| None),
                _ => found(c, reply),
            });
            if let Err(f) = &result
                && c.broken
                && fatal.is_none()
            {
                fatal = Some(f.clone());
            }
            let key = ops[i].key();
            results[i] = Some(match (ops[i], result) {
                (_, Err(f)) => Err(conn::classify(f, &server.location)),
                (GroupOp::Ttl(_), Ok(item)) => remaining(item.as_ref(), key, server, at).map(GroupResult::Remaining),
                (GroupOp::Get(_), Ok(item)) => live_value(item.as_ref(), key, server, at).map(GroupResult::Value),
                (_, Ok(_)) => Ok(GroupResult::Stored),
            });
        }
        self.next += self.sent;
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
        self.sent = 0;
        if let Some(c) = self.conn.as_mut() {
            c.broken = true;
        }
        self.conn = None;
    }
}

/// What a `load --no-overwrite` found under a key before writing it.
#[derive(Clone, Copy)]
enum Found {
    /// Nothing: the entry goes in with `ms ... ME` (add), which another writer's entry, or an
    /// earlier line's of the same group, wins over.
    Nothing,
    /// A live entry (or an item that is not Kinto's envelope): kept.
    Live,
    /// An entry whose time has passed, which the server still holds (kcache's items stay a few
    /// seconds past their envelope's time, Kinto's until their own exptime): replaced over its
    /// CAS, so only if nobody changed it meanwhile. `ME` alone would keep it.
    Expired(u64),
}

/// `load`: each server's share of `entries` in pipelines of `ms`, every server's pipeline
/// written before any reply is read. The envelope holds the entry's own expiry; the server's
/// exptime is its time left (see `envelope::exptime`); an entry that never expires gets
/// [`crate::ttl::MAX_TTL`]. With `keep_live`, the keys are read first (`mg`, one pipeline per
/// server, see [`Found`]). Adds each stored entry to `written`; the first failure (a value over
/// the item size limit, a lost server) is returned after every reply that could be read.
pub fn load(m: &Memcached, entries: &[crate::backend::Entry], keep_live: bool, written: &mut u64) -> Result<()> {
    use super::{envelope, ms};
    let mut lanes: Vec<Vec<&crate::backend::Entry>> = (0..m.shared.servers.len()).map(|_| Vec::new()).collect();
    for e in entries {
        lanes[m.server_index(&e.key)].push(e);
    }
    let mut first_failure: Option<Error> = None;
    let mut conns = Vec::new();
    for (index, lane) in lanes.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let server = &m.shared.servers[index];
        match m.connection(server) {
            Ok(c) => conns.push((c, server, lane)),
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    let mut found: Vec<Vec<Found>> = Vec::with_capacity(conns.len());
    for (c, server, lane) in &mut conns {
        let state = if keep_live { look_up(c, lane) } else { Ok(vec![Found::Nothing; lane.len()]) };
        match state {
            Ok(s) => found.push(s),
            Err(f) => {
                first_failure.get_or_insert(conn::classify(f, &server.location));
                found.push(vec![Found::Live; lane.len()]); // nothing of this lane is written
            }
        }
    }
    // Every server's commands are sent before any reply is read.
    let now = SystemTime::now();
    let unix = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let mut sent: Vec<usize> = Vec::with_capacity(conns.len());
    for ((c, server, lane), found) in conns.iter_mut().zip(&found) {
        let mut count = 0;
        for (e, state) in lane.iter().zip(found) {
            let left = match e.expires {
                None => crate::ttl::MAX_TTL,
                Some(at) => match std::time::Duration::try_from_secs_f64(at - unix) {
                    Ok(d) if !d.is_zero() => d.min(crate::ttl::MAX_TTL),
                    _ => continue,
                },
            };
            let expires_us = match e.expires {
                Some(at) => (at * 1e6).ceil() as u128,
                None => envelope::expires_us(now, left),
            };
            let envelope = envelope::encode(&e.value, expires_us);
            let command = match state {
                Found::Live => continue,
                Found::Nothing if keep_live => ms(&e.key, envelope, envelope::exptime(now, left), None).flag("ME"),
                Found::Nothing => ms(&e.key, envelope, envelope::exptime(now, left), None),
                Found::Expired(cas) => ms(&e.key, envelope, envelope::exptime(now, left), Some(*cas)),
            };
            c.push(&command);
            count += 1;
        }
        if count > 0
            && let Err(f) = c.send()
        {
            first_failure.get_or_insert(conn::classify(f, &server.location));
            count = 0;
        }
        sent.push(count);
    }
    for ((c, server, _), count) in conns.iter_mut().zip(sent) {
        for _ in 0..count {
            match c.receive().and_then(|reply| done(c, reply)) {
                Ok(true) => *written += 1,
                Ok(false) => {}
                Err(f) => {
                    let fatal = c.broken;
                    first_failure.get_or_insert(conn::classify(f, &server.location));
                    if fatal {
                        break;
                    }
                }
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

/// What each key of `lane` holds (see [`Found`]), read by [`super::crawl::read_held`].
fn look_up(c: &mut Connection<Manager>, lane: &[&crate::backend::Entry]) -> Result<Vec<Found>, Failure> {
    use super::crawl::{Held, read_held};
    let keys: Vec<&str> = lane.iter().map(|e| e.key.as_str()).collect();
    let mut out = Vec::with_capacity(lane.len());
    read_held(c, &keys, &mut |_, held| {
        out.push(match held {
            Held::Nothing => Found::Nothing,
            Held::Entry { left: None, cas: Some(cas), .. } => Found::Expired(cas),
            // Live, or not Kinto's: left alone.
            Held::Entry { .. } | Held::Foreign => Found::Live,
        })
    })?;
    Ok(out)
}
