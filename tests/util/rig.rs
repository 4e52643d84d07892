//! The rig: the servers `scripts/test` starts and shares between every test (`KCACHE_TEST_*`),
//! and what the tests build on them.
//!
//! A test that needs one starts with
//!
//! ```ignore
//! let Some(url) = rig::server("KCACHE_TEST_PG_URL") else { return };
//! ```
//!
//! Without the variable the test is skipped with a message on stderr, except in CI (`CI` set),
//! where it fails: CI must never pass by skipping.

use crate::util::Env;

/// The value of the environment variable `var` when it is set and not empty.
///
/// When it is missing: panics if `CI` is set (to anything not empty), else prints a "skipped"
/// line to stderr and returns `None`.
pub fn server(var: &str) -> Option<String> {
    let backend = ["PG", "REDIS", "MEMCACHED"]
        .into_iter()
        .zip(["postgresql", "redis", "memcached"])
        .find_map(|(tag, name)| var.starts_with(&format!("KCACHE_TEST_{tag}")).then_some(name));
    if let Some(name) = backend
        && !compiled(name)
    {
        return None;
    }
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
                panic!("{var} is not set: run the tests through scripts/test");
            }
            eprintln!("skipped: {var} is not set (run scripts/test to start the test servers)");
            None
        }
    }
}

/// Whether this kcache was built with `backend` (`cargo test --no-default-features --features
/// sqlite` builds without the others); a test of a backend not built is skipped, saying so.
pub fn compiled(backend: &str) -> bool {
    let on = kcache::backend::COMPILED.iter().any(|(name, on)| *name == backend && *on);
    if !on {
        eprintln!("skipped: kcache was built without the {backend} backend");
    }
    on
}

// ---- a database of one test's own on the rig's PostgreSQL ------------------------------------

/// A kcache environment on the rig's `backend` under a prefix of its own (PostgreSQL: a fresh,
/// migrated database, returned to outlive the test; sqlite: a migrated file), or `None`
/// (skipped loudly outside CI) when that server is missing.
/// Without the postgresql feature there is no database of a test's own to hold.
#[cfg(not(feature = "postgresql"))]
pub struct RigDb;

pub fn backend_env(backend: &str) -> Option<(Env, Option<RigDb>)> {
    let prefix = format!("{}:", crate::util::unique("e"));
    let env = Env::new().var("KINTO_CACHE_PREFIX", &prefix);
    Some(match backend {
        "sqlite" => {
            // An existing file: the race of first writes on a fresh file has its own test,
            // sqlite_concurrent_first_writes_on_a_fresh_file_never_see_a_locked_database.
            env.run(&["migrate"]).ok();
            (env, None)
        }
        "memory" => (env.var("KINTO_CACHE_BACKEND", "memory"), None),
        #[cfg(feature = "postgresql")]
        "postgresql" => {
            let db = RigDb::create()?;
            db.migrate();
            (env.var("KINTO_CACHE_BACKEND", "postgresql").var("KINTO_CACHE_URL", &db.url()), Some(db))
        }
        "memcached" => {
            let hosts = server("KCACHE_TEST_MEMCACHED")?;
            (env.var("KINTO_CACHE_BACKEND", "memcached").var("KINTO_CACHE_HOSTS", &hosts), None)
        }
        "redis" => {
            let url = server("KCACHE_TEST_REDIS_URL")?;
            (env.var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_URL", &url), None)
        }
        other if !compiled(other) => return None,
        other => panic!("no environment for the backend {other}"),
    })
}

/// A database of one test's own on the rig's server (`KCACHE_TEST_PG_URL`), dropped with the
/// roles the test made when it goes. kcache reaches it through the rig's unix socket (trust,
/// no SCRAM cost) when there is one.
#[cfg(feature = "postgresql")]
pub struct RigDb {
    pub name: String,
    admin: String,
    socket_dir: Option<String>,
    port: u16,
    client: Option<postgres::Client>,
    roles: Vec<String>,
}

#[cfg(feature = "postgresql")]
impl RigDb {
    /// A fresh, empty database (`None`: skipped outside CI without the rig).
    pub fn create() -> Option<RigDb> {
        let admin = server("KCACHE_TEST_PG_URL")?;
        let config: postgres::Config = admin.parse().expect("KCACHE_TEST_PG_URL parses");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let name = crate::util::unique("kcf_");
        let socket_dir = std::env::var("KCACHE_TEST_PG_SOCKET_DIR").ok().filter(|d| !d.is_empty());
        let db = RigDb { name, admin, socket_dir, port, client: None, roles: Vec::new() };
        db.connect_to("postgres").batch_execute(&format!("CREATE DATABASE {}", db.name)).expect("CREATE DATABASE");
        Some(db)
    }

    fn try_connect_to(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        let mut config: postgres::Config = self.admin.parse().expect("url");
        if let Some(dir) = &self.socket_dir {
            config.host_path(dir);
        }
        config.dbname(db).connect_timeout(std::time::Duration::from_secs(5));
        config.connect(postgres::NoTls)
    }

    fn connect_to(&self, db: &str) -> postgres::Client {
        self.try_connect_to(db).unwrap_or_else(|e| panic!("cannot connect to {db}: {e:?}"))
    }

    /// The superuser's session on this database (opened once).
    pub fn sql(&mut self) -> &mut postgres::Client {
        if self.client.is_none() {
            self.client = Some(self.connect_to(&self.name));
        }
        self.client.as_mut().expect("client")
    }

    /// A new session of the superuser (for a second, concurrent transaction).
    pub fn session(&self) -> postgres::Client {
        self.connect_to(&self.name)
    }

    /// kcache's URL for this database as `user` (trusted on the socket), with `query` appended
    /// (`"options=-c%20statement_timeout%3D300"`).
    pub fn url_as(&self, user: Option<&str>, query: &str) -> String {
        let user = user.map_or_else(
            || self.admin.parse::<postgres::Config>().ok().and_then(|c| c.get_user().map(str::to_string)),
            |u| Some(u.to_string()),
        );
        let user = user.unwrap_or_else(|| "postgres".into());
        let amp = if query.is_empty() { String::new() } else { format!("&{query}") };
        match &self.socket_dir {
            Some(dir) => format!("postgresql:///{}?host={dir}&port={}&user={user}{amp}", self.name, self.port),
            None => {
                let base = self.admin.rsplit_once('/').map_or(self.admin.as_str(), |(b, _)| b);
                let q = if query.is_empty() { String::new() } else { format!("?{query}") };
                format!("{base}/{}{q}", self.name)
            }
        }
    }

    /// The superuser's kcache URL for this database.
    pub fn url(&self) -> String {
        self.url_as(None, "")
    }

    /// A login role (no password: the socket trusts it), dropped with the database.
    pub fn role(&mut self) -> String {
        self.role_with_password(None)
    }

    /// A login role with `password` (for TCP, where the rig asks for one), dropped with the
    /// database.
    pub fn role_with_password(&mut self, password: Option<&str>) -> String {
        let role = crate::util::unique("kcf_role_");
        let with = password.map_or(String::new(), |p| format!(" PASSWORD '{}'", p.replace('\'', "''")));
        self.connect_to("postgres").batch_execute(&format!("CREATE ROLE {role} LOGIN{with}")).expect("CREATE ROLE");
        self.roles.push(role.clone());
        role
    }

    /// `host:port` of the rig's server over TCP.
    pub fn tcp_address(&self) -> String {
        let config: postgres::Config = self.admin.parse().expect("url");
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let host = std::env::var("KCACHE_TEST_PG_HOST").ok().filter(|h| !h.is_empty()).unwrap_or(host);
        format!("{host}:{}", self.port)
    }

    /// `postgresql://USERINFO@HOST:PORT/DB?QUERY` over TCP (`userinfo` may hold a password).
    pub fn tcp_url(&self, userinfo: &str, query: &str) -> String {
        let q = if query.is_empty() { String::new() } else { format!("?{query}") };
        format!("postgresql://{userinfo}@{}/{}{q}", self.tcp_address(), self.name)
    }

    /// An environment running kcache on this database with `url`, pool_timeout `timeout`.
    pub fn env_with(&self, url: &str, timeout: &str) -> Env {
        Env::new()
            .var("KINTO_CACHE_BACKEND", "postgresql")
            .var("KINTO_CACHE_URL", url)
            .var("KINTO_CACHE_POOL_TIMEOUT", timeout)
    }

    /// `kcache migrate` as the superuser.
    pub fn migrate(&self) {
        self.env_with(&self.url(), "10").run(&["migrate"]).ok();
    }
}

#[cfg(feature = "postgresql")]
impl Drop for RigDb {
    fn drop(&mut self) {
        self.client = None;
        // Best effort: a failure here must not hide the test's own failure.
        let Ok(mut admin) = self.try_connect_to("postgres") else { return };
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        for role in &self.roles {
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
        }
    }
}
