//! The connection pool every networked backend uses: r2d2 with Kinto's pool settings, and the
//! behaviour a command-line tool needs.
//!
//! - `pool_size + max_overflow` connections at most (SQLAlchemy's QueuePool), but never more
//!   than there are workers: a one-shot command has one worker and opens exactly one connection.
//! - No connection is opened before it is needed (`min_idle = 0`) and none is tested on
//!   checkout (r2d2's default would add a round trip to every command).
//! - `pool_timeout` bounds the wait for a connection, and the connect itself. A connection that
//!   is refused fails at once (r2d2 alone would retry until the timeout): the pool's error
//!   handler records the failure and [`Pool::get`] returns it.
//! - `max_backlog`, as Kinto's `QueuePoolWithMaxBacklog` (reference §8): at most that many
//!   callers wait for a connection; the next one fails at once with status 3.
//! - `pool_recycle` closes connections older than that (r2d2's `max_lifetime`).

use crate::error::{Error, Result};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type Connection<M> = r2d2::PooledConnection<M>;

/// The threads that open connections for every pool of the process (r2d2 would start three per
/// pool: a one-shot command would pay for thread start-ups it never needs).
static CONNECTOR_THREADS: std::sync::LazyLock<Arc<scheduled_thread_pool::ScheduledThreadPool>> =
    std::sync::LazyLock::new(|| Arc::new(scheduled_thread_pool::ScheduledThreadPool::new(1)));

/// How often a waiting caller checks whether the connection attempt it waits for has failed.
const POLL: Duration = Duration::from_millis(20);

/// The last connection failure, with when it happened.
type LastError<E> = Arc<Mutex<Option<(Instant, E)>>>;

struct Recorder<E>(LastError<E>);

impl<E> fmt::Debug for Recorder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recorder")
    }
}

impl<E: Send + 'static> r2d2::HandleError<E> for Recorder<E> {
    fn handle_error(&self, error: E) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some((Instant::now(), error));
        }
    }
}

/// Turns a connection failure into an error; gets the failure and the pool's location.
pub type ClassifyConnect<E> = fn(E, &str) -> Error;

/// Settings of the pool, from Kinto's `cache_pool_*` settings.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    pub pool_size: u32,
    pub max_overflow: u32,
    /// `None`: unlimited (Kinto's -1).
    pub max_backlog: Option<u32>,
    pub timeout: Duration,
    /// `None`: never (Kinto's -1).
    pub recycle: Option<Duration>,
    /// How many threads will use the pool at once (1 for a one-shot command).
    pub workers: u32,
}

pub struct Pool<M: r2d2::ManageConnection> {
    pool: r2d2::Pool<M>,
    settings: PoolSettings,
    /// Callers inside [`Pool::get`] right now, as Kinto's backlog counts them.
    in_get: AtomicUsize,
    last_error: LastError<M::Error>,
    /// The last connect failure returned to a caller: while no connection is open, later callers
    /// within `pool_timeout` get it at once instead of each waiting for r2d2's next retry (a
    /// batch whose server died would otherwise wait once per line).
    down: Mutex<Option<(Instant, Error)>>,
    classify_connect: ClassifyConnect<M::Error>,
    name: &'static str,
    location: String,
}

impl<M: r2d2::ManageConnection> Pool<M>
where
    M::Error: Send + 'static,
{
    /// Builds the pool over `manager`. No connection is opened. `name` and `location` are for
    /// messages (`location` must hold no password); `classify_connect` sorts connect failures.
    pub fn new(
        manager: M,
        settings: PoolSettings,
        name: &'static str,
        location: String,
        classify_connect: ClassifyConnect<M::Error>,
    ) -> Pool<M> {
        let max_size = (settings.pool_size + settings.max_overflow).clamp(1, settings.workers.max(1));
        let last_error = LastError::default();
        let pool = r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(settings.timeout)
            .max_lifetime(settings.recycle)
            .idle_timeout(None)
            .error_handler(Box::new(Recorder(Arc::clone(&last_error))))
            .thread_pool(Arc::clone(&CONNECTOR_THREADS))
            .build_unchecked(manager);
        Pool {
            pool,
            settings,
            in_get: AtomicUsize::new(0),
            last_error,
            down: Mutex::new(None),
            classify_connect,
            name,
            location,
        }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// A connection, within `pool_timeout`; see the module doc for the rules. A failure is
    /// marked [`Error::unsent`]: nothing went to the server on this connection.
    pub fn get(&self) -> Result<Connection<M>> {
        self.try_get().map_err(Error::unsent)
    }

    fn try_get(&self) -> Result<Connection<M>> {
        let start = Instant::now();
        let waiting = self.in_get.fetch_add(1, Ordering::SeqCst) + 1;
        let _leave = Leave(&self.in_get);
        if let Some(max) = self.settings.max_backlog
            && waiting > max as usize
        {
            // Over the backlog: only a connection available right now will do.
            if let Some(c) = self.pool.try_get() {
                return Ok(c);
            }
            let state = self.pool.state();
            if state.connections >= self.pool.max_size() {
                return Err(Error::unavailable(
                    format!("no connection to {} at {}", self.name, self.location),
                    anyhow::anyhow!(
                        "the connection pool is exhausted: {} connections in use and max_backlog ({max}) callers already waiting",
                        state.connections
                    ),
                ));
            }
        }
        if self.pool.state().connections == 0
            && let Ok(down) = self.down.lock()
            && let Some((at, e)) = down.as_ref()
            && at.elapsed() < self.settings.timeout
        {
            return Err(e.clone());
        }
        let deadline = start + self.settings.timeout;
        loop {
            let now = Instant::now();
            let wait = deadline.saturating_duration_since(now).min(POLL);
            match self.pool.get_timeout(wait.max(Duration::from_millis(1))) {
                Ok(c) => {
                    if let Ok(mut down) = self.down.lock() {
                        *down = None;
                    }
                    return Ok(c);
                }
                Err(timed_out) => {
                    if let Some(e) = self.take_error_since(start) {
                        let e = (self.classify_connect)(e, &self.location);
                        if let Ok(mut down) = self.down.lock() {
                            *down = Some((Instant::now(), e.clone()));
                        }
                        return Err(e);
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::unavailable(
                            format!("no connection to {} at {}", self.name, self.location),
                            anyhow::anyhow!(
                                "timed out after {:.1} s (pool_timeout) waiting for a connection: {timed_out}",
                                self.settings.timeout.as_secs_f64()
                            ),
                        ));
                    }
                }
            }
        }
    }

    fn take_error_since(&self, start: Instant) -> Option<M::Error> {
        let mut last = self.last_error.lock().ok()?;
        match last.take() {
            Some((at, e)) if at >= start => Some(e),
            _ => None,
        }
    }

    /// Connections open now (for tests).
    pub fn open_connections(&self) -> u32 {
        self.pool.state().connections
    }
}

struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
