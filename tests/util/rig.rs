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

/// Without the postgresql feature there is no database of a test's own to hold.
#[cfg(not(feature = "postgresql"))]
pub struct RigDb;

/// A kcache environment on the rig's `backend` under a prefix of its own (PostgreSQL: a fresh,
/// migrated database, returned to outlive the test; sqlite: a migrated file), or `None`
/// (skipped loudly outside CI) when that server is missing.
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
        "redis" | "redis_cluster" | "redis_sentinel" => {
            let var = match backend {
                "redis_cluster" => "KCACHE_TEST_REDIS_CLUSTER_URL",
                "redis_sentinel" => "KCACHE_TEST_REDIS_SENTINEL_URL",
                _ => "KCACHE_TEST_REDIS_URL",
            };
            let url = server(var)?;
            (env.var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_URL", &url), None)
        }
        other if !compiled(other) => return None,
        other => panic!("no environment for the backend {other}"),
    })
}

/// The rig's PostgreSQL (`KCACHE_TEST_PG_URL`, a superuser URL): where it listens and as whom.
#[cfg(feature = "postgresql")]
#[derive(Clone)]
pub struct RigPostgres {
    /// Its TCP host (`KCACHE_TEST_PG_HOST` when set, else the URL's).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The rig's unix socket folder (`KCACHE_TEST_PG_SOCKET_DIR`), where login is trusted.
    pub socket_dir: Option<String>,
}

#[cfg(feature = "postgresql")]
impl RigPostgres {
    /// The rig's server (`None`: skipped, loudly, outside CI).
    pub fn get() -> Option<RigPostgres> {
        let url = server("KCACHE_TEST_PG_URL")?;
        let config: postgres::Config = url.parse().expect("KCACHE_TEST_PG_URL parses");
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            other => panic!("KCACHE_TEST_PG_URL must name a TCP host, not {other:?}"),
        };
        let host = std::env::var("KCACHE_TEST_PG_HOST").ok().filter(|h| !h.is_empty()).unwrap_or(host);
        let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
        Some(RigPostgres {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_string(),
            password,
            socket_dir: std::env::var("KCACHE_TEST_PG_SOCKET_DIR").ok().filter(|d| !d.is_empty()),
        })
    }

    /// A superuser session on `db` (through the socket when there is one: no SCRAM cost).
    pub fn try_connect(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        let mut config = postgres::Config::new();
        match &self.socket_dir {
            Some(dir) => config.host_path(dir),
            None => config.host(&self.host).password(&self.password),
        };
        config.port(self.port).user(&self.user).dbname(db).connect_timeout(std::time::Duration::from_secs(5));
        config.connect(postgres::NoTls)
    }

    pub fn connect(&self, db: &str) -> postgres::Client {
        self.try_connect(db).unwrap_or_else(|e| panic!("cannot connect to database {db}: {e:?}"))
    }

    /// `postgresql://<userinfo>@host:port/<db><query>`, over TCP.
    pub fn url(&self, userinfo: &str, db: &str, query: &str) -> String {
        format!("postgresql://{userinfo}@{}:{}/{db}{query}", self.host, self.port)
    }

    /// `user:password` of the superuser.
    pub fn superuser(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

/// A database of one test's own on the rig's server, dropped with the roles the test made when
/// it goes. kcache reaches it through the rig's unix socket (trust, no SCRAM cost) when there is
/// one.
#[cfg(feature = "postgresql")]
pub struct RigDb {
    pub name: String,
    pub server: RigPostgres,
    client: Option<postgres::Client>,
    roles: Vec<String>,
}

#[cfg(feature = "postgresql")]
impl RigDb {
    /// A fresh, empty database (`None`: skipped outside CI without the rig).
    pub fn create() -> Option<RigDb> {
        let server = RigPostgres::get()?;
        let name = crate::util::unique("kc_");
        server.connect("postgres").batch_execute(&format!("CREATE DATABASE {name}")).expect("CREATE DATABASE");
        Some(RigDb { name, server, client: None, roles: Vec::new() })
    }

    /// The superuser's session on this database, opened once (before any connection count).
    pub fn sql(&mut self) -> &mut postgres::Client {
        if self.client.is_none() {
            self.client = Some(self.server.connect(&self.name));
        }
        self.client.as_mut().expect("client")
    }

    /// Closes the session of [`RigDb::sql`] (so that the next one sees database settings).
    pub fn reconnect(&mut self) {
        self.client = None;
    }

    /// A new session of the superuser (for a second, concurrent transaction).
    pub fn session(&self) -> postgres::Client {
        self.server.connect(&self.name)
    }

    /// kcache's URL for this database as `user` (the superuser by default; trusted on the
    /// socket), with `query` appended (`"options=-c%20statement_timeout%3D300"`).
    pub fn url_as(&self, user: Option<&str>, query: &str) -> String {
        let s = &self.server;
        match &s.socket_dir {
            Some(dir) => {
                let amp = if query.is_empty() { String::new() } else { format!("&{query}") };
                let user = user.unwrap_or(&s.user);
                format!("postgresql:///{}?host={dir}&port={}&user={user}{amp}", self.name, s.port)
            }
            None => {
                let q = if query.is_empty() { String::new() } else { format!("?{query}") };
                s.url(user.map_or(s.superuser(), str::to_string).as_str(), &self.name, &q)
            }
        }
    }

    /// The superuser's kcache URL for this database (through the socket when there is one).
    pub fn url(&self) -> String {
        self.url_as(None, "")
    }

    /// The superuser's URL for this database over TCP, with the password.
    pub fn tcp_url(&self) -> String {
        self.server.url(&self.server.superuser(), &self.name, "")
    }

    /// `host:port` of the rig's server over TCP.
    pub fn tcp_address(&self) -> String {
        format!("{}:{}", self.server.host, self.server.port)
    }

    /// A login role, with `password` (for TCP, where the rig asks for one) or without (the
    /// socket trusts it), dropped with the database.
    pub fn role(&mut self, password: Option<&str>) -> String {
        let role = crate::util::unique("kc_role_");
        let with = password.map_or(String::new(), |p| format!(" PASSWORD '{}'", p.replace('\'', "''")));
        self.server.connect("postgres").batch_execute(&format!("CREATE ROLE {role} LOGIN{with}")).expect("CREATE ROLE");
        self.roles.push(role.clone());
        role
    }

    /// kcache against this database as the superuser, pool_timeout 10 s.
    pub fn env(&self) -> Env {
        pg_env(&self.url(), "10")
    }

    /// `kcache migrate` as the superuser.
    pub fn migrate(&self) {
        self.env().run(&["migrate"]).ok();
    }

    /// How many of the table, the index and the function exist in `schema`.
    pub fn objects(&mut self, schema: &str) -> (i64, i64, i64) {
        let row = self
            .sql()
            .query_one(
                "SELECT \
                   (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                    WHERE n.nspname = $1 AND c.relname = 'cache' AND c.relkind = 'r'), \
                   (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                    WHERE n.nspname = $1 AND c.relname = 'idx_cache_ttl' AND c.relkind = 'i'), \
                   (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                    WHERE n.nspname = $1 AND p.proname = 'sec2ttl')",
                &[&schema],
            )
            .expect("catalog query");
        (row.get(0), row.get(1), row.get(2))
    }

    /// Every key of `cache`, sorted.
    pub fn keys(&mut self) -> Vec<String> {
        let rows = self.sql().query("SELECT key FROM cache ORDER BY key", &[]).expect("keys");
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// The `value` column of `key`.
    pub fn stored(&mut self, key: &str) -> Option<String> {
        let rows = self.sql().query("SELECT value FROM cache WHERE key = $1", &[&key]).expect("value");
        rows.first().map(|r| r.get(0))
    }

    /// `count(*)` of the rows matching `condition`.
    pub fn count(&mut self, condition: &str) -> i64 {
        self.sql().query_one(&format!("SELECT count(*) FROM cache WHERE {condition}"), &[]).expect("count").get(0)
    }
}

#[cfg(feature = "postgresql")]
impl Drop for RigDb {
    fn drop(&mut self) {
        self.client = None;
        // Best effort: a failure here must not hide the test's own failure.
        let Ok(mut admin) = self.server.try_connect("postgres") else { return };
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        for role in &self.roles {
            let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
        }
    }
}

/// kcache's postgresql backend at `url`, with `pool_timeout` (seconds).
pub fn pg_env(url: &str, pool_timeout: &str) -> Env {
    Env::new()
        .var("KINTO_CACHE_BACKEND", "postgresql")
        .var("KINTO_CACHE_URL", url)
        .var("KINTO_CACHE_POOL_TIMEOUT", pool_timeout)
}
