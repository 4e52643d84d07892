//! The configuration matrix (SPEC "Configuration"): config files (TOML and Kinto INI), the
//! environment, command-line options, their precedence, `-v`'s account of where each setting came
//! from, and bad input, which is refused with status 2 before anything is written.

use crate::util::{self, Env, Out};
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The keys of an sqlite cache file, sorted; empty when the file does not exist.
fn keys(path: &Path) -> Vec<String> {
    if !path.exists() {
        return Vec::new();
    }
    let conn = util::db(path);
    let mut stmt = conn.prepare("SELECT key FROM cache ORDER BY key").expect("select keys");
    stmt.query_map([], |r| r.get::<_, String>(0)).expect("query keys").map(|k| k.expect("key")).collect()
}

/// Every row of an sqlite cache file, or `None` when the file does not exist.
fn snapshot(path: &Path) -> Option<Vec<(String, String)>> {
    if !path.exists() {
        return None;
    }
    let conn = util::db(path);
    let mut stmt = conn.prepare("SELECT key, value FROM cache ORDER BY key").expect("select rows");
    Some(stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query rows").map(|r| r.expect("row")).collect())
}

/// Asserts SPEC's bad-input outcome: status 2, one error line naming every `needle`, nothing on
/// stdout, and the default sqlite file as it was (absent, or the same rows).
#[track_caller]
fn rejects(env: &Env, args: &[&str], needles: &[&str]) -> Out {
    let before = snapshot(&env.default_db());
    let out = env.run(args);
    out.code(2).one_error_line();
    for n in needles {
        out.stderr_has(n);
    }
    assert_eq!(out.stdout, "", "kcache {args:?} printed on stdout");
    assert_eq!(snapshot(&env.default_db()), before, "kcache {args:?} changed the sqlite file");
    out
}

/// The `-v` line that says where `setting` came from.
#[track_caller]
fn origin<'a>(out: &'a Out, setting: &str) -> &'a str {
    out.stderr
        .lines()
        .find(|l| l.contains(&format!(" {setting} ")) && l.contains("(from "))
        .unwrap_or_else(|| panic!("-v does not say where {setting} came from:\n{}", out.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A `kinto.ini` as `kinto init` writes it (Kinto 26), with `cache` in place of the commented
/// cache settings of the template.
fn kinto_ini(cache: &str) -> String {
    format!(
        r#"# Created at Thu, 06 Mar 2025 10:12:44 +0000
#  Using Kinto version 26.5.0
# Full options list for .ini file
# https://kinto.readthedocs.io/en/latest/configuration/settings.html


[server:main]
use = egg:waitress#main
host = 0.0.0.0
port = %(http_port)s


[app:main]
use = egg:kinto

# Feature settings
# https://kinto.readthedocs.io/en/latest/configuration/settings.html#feature-settings
#
# kinto.readonly = false
# kinto.batch_max_requests = 25
# kinto.paginate_by =
# Experimental JSON-schema on collection
# kinto.experimental_collection_schema_validation = false
#
# kinto.trailing_slash_redirect_enabled = true
# kinto.heartbeat_timeout_seconds = 10

# Plugins
# https://kinto.readthedocs.io/en/latest/configuration/settings.html#plugins
kinto.includes = kinto.plugins.default_bucket
                 kinto.plugins.admin
                 kinto.plugins.accounts
#                kinto.plugins.history
#                kinto.plugins.quotas

# Backends
# https://kinto.readthedocs.io/en/latest/configuration/settings.html#storage
#
kinto.storage_backend = kinto.core.storage.postgresql
kinto.storage_url = postgresql://postgres:postgres@localhost/postgres
# kinto.storage_max_fetch_size = 10000
# kinto.storage_pool_size = 25
# kinto.storage_max_overflow = 5
# kinto.storage_pool_recycle = -1
# kinto.storage_pool_timeout = 30
{cache}
# kinto.cache_max_size_bytes = 524288
# kinto.cache_pool_size = 25
# kinto.cache_max_overflow = 5
# kinto.cache_pool_recycle = -1
# kinto.cache_pool_timeout = 30
kinto.permission_backend = kinto.core.permission.postgresql
kinto.permission_url = postgresql://postgres:postgres@localhost/postgres

#
# Auth configuration.
#
# https://kinto.readthedocs.io/en/latest/configuration/settings.html#authentication
#
kinto.userid_hmac_secret = 4e2a6e7c9f0b1d3a5c7e9f1b3d5a7c9e1f3b5d7a9c1e3f5b7d9a1c3e5f7b9d1a
multiauth.policies = account

; Accounts API configuration
kinto.account_create_principals = system.Everyone
kinto.account_write_principals = account:admin
kinto.account_read_principals = account:admin
kinto.bucket_create_principals = account:admin
multiauth.policy.account.use = kinto.plugins.accounts.authentication.AccountsAuthenticationPolicy

# kinto.http_scheme = https
# kinto.http_host = kinto.example.com
# kinto.cors_origins = *

[uwsgi]
wsgi-file = app.wsgi
enable-threads = true
socket = /run/uwsgi/kinto.sock
chmod-socket = 666
processes =  3
master = true
module = kinto

# Begin logging configuration

[loggers]
keys = root, kinto

[handlers]
keys = console

[formatters]
keys = color

[logger_root]
level = INFO
handlers = console

[logger_kinto]
level = DEBUG
handlers = console
qualname = kinto

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = color

[formatter_color]
class = logging_color_formatter.ColorFormatter
format = %(asctime)s %(levelname)-5.5s [%(name)s] %(message)s

# End logging configuration
"#
    )
}

/// The backends `kcache --version` marks as not built (`-name`).
fn missing_backends(env: &Env) -> Vec<String> {
    let out = env.run(&["--version"]);
    out.ok();
    let list = out.stdout.split("backends:").nth(1).unwrap_or_default();
    list.split(|c: char| c.is_whitespace() || c == ')')
        .filter_map(|w| w.strip_prefix('-'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TOML

#[test]
fn toml_via_config_flag() {
    let env = Env::new();
    let cfg = env.write("etc/kcache.toml", "[cache]\nprefix = \"toml:\"\n");
    env.run(&["--config", s(&cfg), "set", "k", "v", "60"]).ok();
    env.run(&["-c", s(&cfg), "set", "k2", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["toml:k", "toml:k2"]);
    env.run(&["-c", s(&cfg), "get", "k"]).ok().stdout_is("v\n");
    env.run(&["get", "k"]).code(1);
}

#[test]
fn toml_via_kcache_config() {
    let env = Env::new();
    let cfg = env.write("etc/kcache.toml", "[cache]\nprefix = \"viaenv:\"\n");
    let env = env.var("KCACHE_CONFIG", s(&cfg));
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["viaenv:k"]);
    // --config wins over KCACHE_CONFIG.
    let other = env.write("etc/other.toml", "[cache]\nprefix = \"flag:\"\n");
    env.run(&["--config", s(&other), "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["flag:k", "viaenv:k"]);
}

#[test]
fn toml_at_the_default_location() {
    let env = Env::new();
    env.write("config/kcache/config.toml", "[cache]\nprefix = \"xdg:\"\n");
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["xdg:k"]);
    // An explicit file replaces the default one entirely.
    let cfg = env.write("etc/kcache.toml", "[cache]\npath = \"mine.sqlite3\"\n");
    env.run(&["--config", s(&cfg), "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.path("etc/mine.sqlite3")), ["k"]);
    let env = env.var("KCACHE_CONFIG", s(&cfg));
    env.run(&["set", "k2", "v", "60"]).ok();
    assert_eq!(keys(&env.path("etc/mine.sqlite3")), ["k", "k2"]);
    assert_eq!(keys(&env.default_db()), ["xdg:k"]);
}

#[test]
fn default_location_is_optional_and_only_toml() {
    let env = Env::new();
    // No config file anywhere: the embedded default.
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["k"]);
    // A kcache.ini or config.ini in the config folder is not looked for.
    env.write("config/kcache/config.ini", &kinto_ini("kinto.cache_prefix = ini:"));
    env.run(&["set", "k2", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["k", "k2"]);
}

#[test]
fn empty_kcache_config_counts_as_unset() {
    // SPEC: an empty variable counts as unset; `KCACHE_CONFIG= kcache ...` must fall back to the
    // default config file, not fail.
    let env = Env::new();
    env.write("config/kcache/config.toml", "[cache]\nprefix = \"xdg:\"\n");
    let env = env.var("KCACHE_CONFIG", "");
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["xdg:k"]);
    env.run(&["completions", "bash"]).ok();
}

#[test]
fn toml_relative_path_resolves_against_the_file_folder() {
    let env = Env::new();
    let cfg = env.write("etc/kcache/kcache.toml", "[cache]\nbackend = \"sqlite\"\npath = \"data/c.sqlite3\"\n");
    // Run from the env folder, and from a folder elsewhere: the file lands next to the config.
    env.run(&["-c", s(&cfg), "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.path("etc/kcache/data/c.sqlite3")), ["k"]);
    assert!(!env.path("data").exists(), "the path was resolved against the working folder");
    assert!(!env.default_db().exists());
    // A relative --config is relative to the working folder, and its `path` to the file's folder.
    env.run(&["-c", "etc/kcache/kcache.toml", "set", "k2", "v", "60"]).ok();
    assert_eq!(keys(&env.path("etc/kcache/data/c.sqlite3")), ["k", "k2"]);
}

#[test]
fn toml_absolute_path_and_every_key() {
    let env = Env::new();
    let db = env.path("elsewhere/abs.sqlite3");
    let cfg = env.write(
        "kcache.toml",
        &format!(
            r#"# a comment
[cache]
backend = "sqlite"
url = ""
hosts = []
prefix = "all:"
max_size_bytes = 1000
pool_size = 3
max_overflow = 0
max_backlog = 2
pool_recycle = -1
pool_timeout = 2.5
path = "{}"
"#,
            s(&db)
        ),
    );
    let out = env.run(&["-v", "-c", s(&cfg), "set", "k", "v", "60"]);
    out.ok();
    assert_eq!(keys(&db), ["all:k"]);
    assert!(origin(&out, "pool_size").contains("= 3 "), "{}", out.stderr);
    assert!(origin(&out, "max_overflow").contains("= 0 "), "{}", out.stderr);
}

#[test]
fn toml_backend_memory_writes_no_file() {
    let env = Env::new();
    let cfg = env.write("kcache.toml", "[cache]\nbackend = \"memory\"\n");
    env.run(&["-c", s(&cfg), "set", "k", "v", "60"]).ok();
    // The memory backend lives as long as the process.
    env.run(&["-c", s(&cfg), "get", "k"]).code(1);
    env.run(&["-c", s(&cfg), "ping"]).ok().stdout_is("ok\n");
    assert!(!env.default_db().exists());
}

// ---------------------------------------------------------------------------------------------
// Kinto INI

#[test]
fn kinto_ini_with_sqlite_and_here() {
    let env = Env::new();
    let ini = env.write(
        "deploy/kinto.ini",
        &kinto_ini(
            "kinto.cache_backend = sqlite\n\
             kinto.cache_prefix = kinto:\n\
             kinto.cache_path = %(here)s/x.sqlite3",
        ),
    );
    let out = env.run(&["--config", s(&ini), "set", "k", "v", "60"]);
    out.ok();
    // A file without unknown cache settings gives no warning.
    assert_eq!(out.stderr, "", "warnings for a plain kinto.ini");
    assert_eq!(keys(&env.path("deploy/x.sqlite3")), ["kinto:k"]);
    assert!(!env.default_db().exists());
    env.run(&["--config", s(&ini), "get", "k"]).ok().stdout_is("v\n");
}

#[test]
fn kinto_ini_via_kcache_config_and_bare_spelling() {
    let env = Env::new();
    let ini = env.write(
        "deploy/kinto.ini",
        &kinto_ini("cache_backend = kinto.core.cache.memory\ncache_prefix = bare:\ncache_path = %(here)s/y.sqlite3"),
    );
    let env = env.var("KCACHE_CONFIG", s(&ini));
    let out = env.run(&["-v", "set", "k", "v", "60"]);
    out.ok();
    assert!(origin(&out, "backend").contains("memory"), "{}", out.stderr);
    assert!(origin(&out, "prefix").contains("bare:"), "{}", out.stderr);
    assert!(origin(&out, "prefix").contains("from config file"), "{}", out.stderr);
    // Memory: nothing on disk, neither the configured path nor the default one.
    assert!(!env.path("deploy/y.sqlite3").exists());
    assert!(!env.default_db().exists());
    // Switch the backend from the command line: the file's prefix and path still apply.
    env.run(&["--backend", "sqlite", "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.path("deploy/y.sqlite3")), ["bare:k"]);
}

#[test]
fn kinto_ini_memory_backend_module_path() {
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_backend = kinto.core.cache.memory\nkinto.cache_prefix ="));
    env.run(&["-c", s(&ini), "set", "k", "v", "60"]).ok();
    env.run(&["-c", s(&ini), "get", "k"]).code(1);
    assert!(!env.default_db().exists(), "the memory backend wrote the sqlite file");
}

#[test]
fn kinto_ini_relative_cache_path_is_relative_to_the_file() {
    let env = Env::new();
    let ini =
        env.write("srv/kinto/kinto.ini", &kinto_ini("kinto.cache_backend = sqlite\nkinto.cache_path = rel.sqlite3"));
    env.run(&["-c", s(&ini), "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.path("srv/kinto/rel.sqlite3")), ["k"]);
    assert!(!env.path("rel.sqlite3").exists());
}

#[test]
fn kinto_ini_without_extension_is_recognised() {
    let env = Env::new();
    let ini = env.write("deploy/kinto-prod", &kinto_ini("kinto.cache_prefix = noext:"));
    env.run(&["-c", s(&ini), "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["noext:k"]);
}

#[test]
fn kinto_ini_multi_line_values() {
    let env = Env::new();
    let ini = env.write(
        "kinto.ini",
        &kinto_ini(
            "kinto.cache_backend = memory\n\
             kinto.cache_hosts = 127.0.0.1:11211\n    \
             127.0.0.1:11212\n\
             # a comment between two lines of a value\n    \
             cache.example.com:11213\n\
             kinto.cache_prefix = multi:",
        ),
    );
    let out = env.run(&["-v", "-c", s(&ini), "set", "k", "v", "60"]);
    out.ok();
    let hosts = origin(&out, "hosts");
    for h in ["127.0.0.1:11211", "127.0.0.1:11212", "cache.example.com:11213"] {
        assert!(hosts.contains(h), "{h} missing: {hosts}");
    }
    assert!(origin(&out, "prefix").contains("multi:"), "{}", out.stderr);
    // A multi-line value ends at the next key.
    assert!(!origin(&out, "prefix").contains("11211"), "{}", out.stderr);
}

#[test]
fn kinto_ini_multi_line_prefix_continues_the_value() {
    // A continuation line belongs to the value, as in Kinto: here it makes the prefix hold a
    // new line, which is not a valid prefix.
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_prefix = first\n    second"));
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["prefix"]);
}

#[test]
fn kinto_ini_maxoverflow_spellings() {
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_backend = memory\nkinto.cache_maxoverflow = 3"));
    let out = env.run(&["-v", "-c", s(&ini), "ping"]);
    out.ok();
    let line = origin(&out, "max_overflow");
    assert!(line.contains("= 3") && line.contains("from config file"), "{line}");
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    let ini = env.write("kinto2.ini", &kinto_ini("cache_backend = memory\ncache_max_overflow = 4"));
    let out = env.run(&["-v", "-c", s(&ini), "ping"]);
    out.ok();
    let line = origin(&out, "max_overflow");
    assert!(line.contains("= 4") && line.contains("from config file"), "{line}");

    // A bad value under the documented spelling is named.
    let ini = env.write("kinto3.ini", &kinto_ini("kinto.cache_maxoverflow = lots"));
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["maxoverflow", "lots"]);
}

#[test]
fn kinto_ini_numbers_are_native_values() {
    let env = Env::new();
    let ini = env.write(
        "kinto.ini",
        &kinto_ini("kinto.cache_backend = memory\nkinto.cache_pool_size = 7\nkinto.cache_max_size_bytes = 2048"),
    );
    let out = env.run(&["-v", "-c", s(&ini), "ping"]);
    out.ok();
    assert!(origin(&out, "pool_size").contains("= 7"), "{}", out.stderr);
    assert!(origin(&out, "max_size_bytes").contains("= 2048"), "{}", out.stderr);
}

#[test]
fn kinto_ini_conflicting_spellings_are_an_error() {
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_prefix = one:\ncache_prefix = two:"));
    let out = rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["kinto.cache_prefix"]);
    // Both spellings are named: `cache_prefix` again, outside `kinto.cache_prefix`.
    let rest = out.stderr.replace("kinto.cache_prefix", "");
    assert!(rest.contains("cache_prefix"), "the message names only one spelling: {}", out.stderr);
    assert!(!env.default_db().exists());
}

#[test]
fn kinto_ini_same_value_twice_is_fine() {
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_prefix = same:\ncache_prefix = same:"));
    let out = env.run(&["-c", s(&ini), "set", "k", "v", "60"]);
    out.ok();
    assert_eq!(out.stderr, "");
    assert_eq!(keys(&env.default_db()), ["same:k"]);
}

/// Kinto reads its INI with Python's `configparser` (strict): a key given twice in a section, or
/// a section given twice, stops it; kcache refuses the file too, naming the key or section and
/// the line of the second occurrence, without ever showing a value.
#[test]
fn kinto_ini_repeated_key_or_section_is_refused_with_its_line() {
    let env = Env::new();
    let text = kinto_ini(
        "kinto.cache_backend = sqlite\nkinto.cache_url = postgresql://u:FirstSecret@h/db\nkinto.cache_prefix = a:\nKinto.Cache_URL = postgresql://u:OtherSecret@h/db",
    );
    let line = text.lines().position(|l| l.starts_with("Kinto.Cache_URL")).expect("the repeated key") + 1;
    let ini = env.write("kinto.ini", &text);
    let out = rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["kinto.cache_url", &format!("line {line}:")]);
    assert!(!out.stderr.contains("Secret"), "{}", out.stderr);
    // The same value twice, and a key of another section: refused as well.
    let ini = env.write("same.ini", &kinto_ini("kinto.cache_prefix = a:\nkinto.cache_prefix = a:"));
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["kinto.cache_prefix", "second time"]);
    let ini = env.write("server.ini", "[server:main]\nport = 1\nport = 2\n[app:main]\ncache_backend = sqlite\n");
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["line 3:", "[server:main]", "'port'"]);
    // A repeated section.
    let ini = env.write("sections.ini", "[app:main]\ncache_prefix = a:\n[other]\n[app:main]\ncache_url = x\n");
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["line 4:", "section [app:main]"]);
    assert!(!env.default_db().exists());
}

#[test]
fn kinto_ini_unknown_cache_setting_warns() {
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_prefix = w:\nkinto.cache_foo = bar"));
    let out = env.run(&["-c", s(&ini), "set", "k", "v", "60"]);
    out.ok();
    out.stderr_has("warning").stderr_has("cache_foo");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_eq!(keys(&env.default_db()), ["w:k"]);
    // -q silences it, and the command still runs.
    let out = env.run(&["-q", "-c", s(&ini), "set", "k2", "v", "60"]);
    out.ok();
    assert_eq!(out.stderr, "", "-q did not silence the warning");
    assert_eq!(keys(&env.default_db()), ["w:k", "w:k2"]);
    // Kinto's own `poolclass` is accepted and ignored without a warning.
    let ini = env.write("kinto2.ini", &kinto_ini("cache_poolclass = sqlalchemy.pool.QueuePool"));
    let out = env.run(&["-c", s(&ini), "set", "k3", "v", "60"]);
    out.ok();
    assert_eq!(out.stderr, "", "a warning for poolclass");
}

#[test]
fn kinto_ini_percent_escapes() {
    let env = Env::new();
    // `%%` is a literal percent sign, as in Python's configparser.
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_prefix = 100%%:"));
    env.run(&["-c", s(&ini), "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["100%:k"]);
}

#[test]
fn kinto_ini_lone_percent_is_an_error() {
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_backend = sqlite\nkinto.cache_prefix = 100%off:"));
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["kinto.ini", "cache_prefix"]);
    // An unknown placeholder in a cache value, too.
    let ini = env.write("kinto2.ini", &kinto_ini("kinto.cache_prefix = %(nothere)s:"));
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["kinto2.ini"]);
    // With data already there, nothing changes.
    env.run(&["set", "seed", "v", "60"]).ok();
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["kinto2.ini"]);
    rejects(&env, &["-c", s(&ini), "flush"], &["kinto2.ini"]);
    assert_eq!(keys(&env.default_db()), ["seed"]);
}

#[test]
fn kinto_ini_other_sections_and_keys_are_ignored() {
    // Placeholders, percent signs and odd values outside the cache settings are not Kinto's
    // cache settings: kcache ignores them.
    let env = Env::new();
    let text = kinto_ini("kinto.cache_prefix = ign:\nkinto.project_name = 100% Kinto\nkinto.storage_pool_size = ten")
        + "\n[app:other]\nkinto.cache_prefix = wrong:\nkinto.cache_pool_size = %(nope)s\n";
    let ini = env.write("kinto.ini", &text);
    let out = env.run(&["-c", s(&ini), "set", "k", "v", "60"]);
    out.ok();
    assert_eq!(out.stderr, "");
    assert_eq!(keys(&env.default_db()), ["ign:k"]);
}

#[test]
fn kinto_ini_inline_text_after_a_value_is_part_of_it() {
    // Kinto (Python's configparser, as PasteDeploy uses it) has no inline comments: everything
    // after `=` is the value.
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_prefix = app ; not a comment\n; a comment\n# another"));
    env.run(&["-c", s(&ini), "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["app ; not a commentk"]);
}

#[test]
fn kinto_ini_without_cache_settings_uses_the_defaults() {
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("# kinto.cache_backend = kinto.core.cache.memory"));
    let out = env.run(&["-c", s(&ini), "set", "k", "v", "60"]);
    out.ok();
    assert_eq!(out.stderr, "");
    assert_eq!(keys(&env.default_db()), ["k"]);
}

// ---------------------------------------------------------------------------------------------
// Environment

#[test]
fn env_prefix_bare_then_kinto() {
    let env = Env::new().var("CACHE_PREFIX", "bare:");
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["bare:k"]);
    let env = env.var("KINTO_CACHE_PREFIX", "kinto:");
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["bare:k", "kinto:k"]);
}

#[test]
fn empty_env_variable_counts_as_unset() {
    let env = Env::new();
    let cfg = env.write("kcache.toml", "[cache]\nprefix = \"file:\"\n");
    let env = env.var("KINTO_CACHE_PREFIX", "").var("KINTO_CACHE_BACKEND", "");
    // The empty variable hides neither the file's value...
    env.run(&["-c", s(&cfg), "set", "a", "v", "60"]).ok();
    // ...nor the bare spelling...
    let env = env.var("CACHE_PREFIX", "bare:");
    env.run(&["set", "b", "v", "60"]).ok();
    // ...nor the default.
    let env = env.var("CACHE_PREFIX", "");
    env.run(&["set", "c", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["bare:b", "c", "file:a"]);
}

#[test]
fn env_over_file() {
    let env = Env::new();
    let cfg = env.write("kcache.toml", "[cache]\nprefix = \"file:\"\nbackend = \"memory\"\n");
    let env = env.var("KINTO_CACHE_PREFIX", "env:").var("KINTO_CACHE_BACKEND", "sqlite");
    env.run(&["-c", s(&cfg), "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["env:k"]);
}

#[test]
fn env_applies_whether_or_not_the_file_has_the_key() {
    // Kinto ignores variables for keys missing from its file (#1544); kcache does not.
    let env = Env::new();
    let ini = env.write("kinto.ini", &kinto_ini("# no cache settings"));
    let env = env.var("KINTO_CACHE_PREFIX", "env:");
    env.run(&["-c", s(&ini), "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["env:k"]);
}

#[test]
fn flags_over_env() {
    let env = Env::new().var("KINTO_CACHE_PREFIX", "env:").var("KINTO_CACHE_BACKEND", "memory");
    // Env says memory: nothing on disk.
    env.run(&["set", "k", "v", "60"]).ok();
    assert!(!env.default_db().exists(), "KINTO_CACHE_BACKEND=memory was ignored");
    env.run(&["--backend", "sqlite", "--prefix", "flag:", "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["flag:k"]);
    env.run(&["--backend", "sqlite", "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["env:k", "flag:k"]);
}

#[test]
fn merging_is_per_setting() {
    let env = Env::new();
    let cfg = env.write("etc/kcache.toml", "[cache]\npath = \"merged.sqlite3\"\nprefix = \"file:\"\n");
    let env = env.var("KINTO_CACHE_PREFIX", "env:");
    let out = env.run(&["-v", "-c", s(&cfg), "set", "k", "v", "60"]);
    out.ok();
    // The env's prefix and the file's path both apply.
    assert_eq!(keys(&env.path("etc/merged.sqlite3")), ["env:k"]);
    assert!(!env.default_db().exists());
    assert!(origin(&out, "prefix").contains("KINTO_CACHE_PREFIX"), "{}", out.stderr);
    assert!(origin(&out, "path").contains("from config file"), "{}", out.stderr);
    // And a flag for one setting keeps the others.
    env.run(&["-c", s(&cfg), "--prefix", "flag:", "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.path("etc/merged.sqlite3")), ["env:k", "flag:k"]);
}

#[test]
fn env_path_is_used() {
    let env = Env::new();
    let db = env.path("from-env/e.sqlite3");
    let env = env.var("KINTO_CACHE_PATH", s(&db));
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&db), ["k"]);
    assert!(!env.default_db().exists());
}

#[test]
fn env_bad_value_names_the_variable() {
    let env = Env::new().var("KINTO_CACHE_POOL_SIZE", "ten");
    rejects(&env, &["set", "k", "v", "60"], &["KINTO_CACHE_POOL_SIZE"]);
    let env = Env::new().var("CACHE_POOL_TIMEOUT", "soon");
    rejects(&env, &["set", "k", "v", "60"], &["CACHE_POOL_TIMEOUT"]);
    let env = Env::new().var("KINTO_CACHE_MAX_SIZE_BYTES", "-5");
    rejects(&env, &["set", "k", "v", "60"], &["KINTO_CACHE_MAX_SIZE_BYTES"]);
    // Even with data there, nothing changes.
    let env = Env::new();
    env.run(&["set", "seed", "v", "60"]).ok();
    let env = env.var("KINTO_CACHE_POOL_SIZE", "0");
    rejects(&env, &["set", "k", "v", "60"], &["KINTO_CACHE_POOL_SIZE"]);
    rejects(&env, &["flush"], &["KINTO_CACHE_POOL_SIZE"]);
    assert_eq!(keys(&env.default_db()), ["seed"]);
}

#[test]
fn env_bad_backend_names_the_variable() {
    let env = Env::new().var("KINTO_CACHE_BACKEND", "kinto.core.cache.mongodb");
    rejects(&env, &["set", "k", "v", "60"], &["KINTO_CACHE_BACKEND", "kinto.core.cache.mongodb"]);
}

#[test]
fn kinto_module_paths_as_backend_names() {
    let env = Env::new().var("KINTO_CACHE_BACKEND", "kinto.core.cache.memory");
    let out = env.run(&["-v", "set", "k", "v", "60"]);
    out.ok();
    assert!(origin(&out, "backend").contains("memory"), "{}", out.stderr);
    assert!(!env.default_db().exists());

    // The other module paths are recognised (built or not, they are never "unknown"). Unreachable
    // servers make a built backend fail with status 3.
    let missing = missing_backends(&env);
    for (module, name, extra) in [
        ("kinto.core.cache.postgresql", "postgresql", ["--url", "postgresql://u@127.0.0.1:1/db"]),
        ("kinto.core.cache.memcached", "memcached", ["--hosts", "127.0.0.1:1"]),
        ("kinto.core.cache.redis", "redis", ["--url", "redis://127.0.0.1:1/0"]),
        ("kinto_redis.cache", "redis", ["--url", "redis://127.0.0.1:1/0"]),
    ] {
        let env = Env::new().var("KINTO_CACHE_BACKEND", module);
        let mut args = vec!["-v"];
        args.extend(extra);
        args.extend(["set", "k", "v", "60"]);
        let out = env.run(&args);
        assert!(!out.stderr.contains("unknown backend"), "{module}: {}", out.stderr);
        let line = origin(&out, "backend");
        assert!(line.contains(name) && line.contains("KINTO_CACHE_BACKEND"), "{module}: {line}");
        if missing.iter().any(|m| m == name) {
            out.code(2).stderr_has(name);
        } else {
            out.code(3);
        }
        assert!(!env.default_db().exists());
    }
}

// ---------------------------------------------------------------------------------------------
// -v

#[test]
fn verbose_says_where_each_setting_came_from() {
    let env = Env::new();
    let cfg = env.write("etc/kcache.toml", "[cache]\nmax_size_bytes = 4096\nprefix = \"file:\"\n");
    let env = env.var("KINTO_CACHE_PREFIX", "env:").var("CACHE_POOL_SIZE", "5");
    let out = env.run(&["-v", "-c", s(&cfg), "set", "k", "v", "60"]);
    out.ok();
    assert!(origin(&out, "prefix").contains("from KINTO_CACHE_PREFIX"), "{}", out.stderr);
    assert!(origin(&out, "pool_size").contains("from CACHE_POOL_SIZE"), "{}", out.stderr);
    let line = origin(&out, "max_size_bytes");
    assert!(line.contains("from config file") && line.contains(s(&cfg)), "{line}");
    assert!(origin(&out, "backend").contains("default"), "{}", out.stderr);
    assert!(out.stderr.contains(s(&cfg)), "-v does not name the config file: {}", out.stderr);

    let out = env.run(&["-v", "-c", s(&cfg), "--prefix", "flag:", "-b", "sqlite", "set", "k", "v", "60"]);
    out.ok();
    assert!(origin(&out, "prefix").contains("from --prefix"), "{}", out.stderr);
    assert!(origin(&out, "backend").contains("from --backend"), "{}", out.stderr);
    assert_eq!(keys(&env.default_db()), ["env:k", "flag:k"]);

    // Without -v, nothing is said.
    let out = env.run(&["-c", s(&cfg), "set", "k", "v", "60"]);
    out.ok();
    assert_eq!(out.stderr, "");
}

#[test]
fn verbose_never_shows_a_password() {
    let env = Env::new();
    let check = |out: &Out| {
        for secret in ["SeCrEt", "Se%43rEt", "PaSsWoRd"] {
            assert!(
                !out.stdout.contains(secret) && !out.stderr.contains(secret),
                "kcache {:?} shows {secret}:\n{}\n{}",
                out.args,
                out.stdout,
                out.stderr
            );
        }
    };
    // The URL is given but the sqlite backend runs.
    let out = env.run(&["-v", "--url", "postgresql://u:SeCrEt@h/db", "set", "k", "v", "60"]);
    out.ok();
    check(&out);
    assert!(origin(&out, "url").contains("from --url"), "{}", out.stderr);
    // The backend that would use it (built or not).
    let out = env.run(&["-v", "--url", "postgresql://u:SeCrEt@127.0.0.1:1/db", "-b", "postgresql", "ping"]);
    assert_ne!(out.status, 0);
    check(&out);
    // Percent-encoded, from the environment.
    let env2 = Env::new().var("KINTO_CACHE_URL", "redis://:Se%43rEt@127.0.0.1:1/0").var("KINTO_CACHE_BACKEND", "redis");
    let out = env2.run(&["-v", "ping"]);
    assert_ne!(out.status, 0);
    check(&out);
    // From a config file, with another error in the same run.
    let cfg = env.write("kcache.toml", "[cache]\nurl = \"postgresql://u:SeCrEt@h/db\"\npool_size = \"ten\"\n");
    let out = env.run(&["-v", "-c", s(&cfg), "set", "k", "v", "60"]);
    out.code(2);
    check(&out);
    // A TOML syntax error on the line after a URL with a password.
    let cfg = env.write("bad.toml", "[cache]\nurl = \"postgresql://u:SeCrEt@h/db\"\nprefix = \n");
    let out = env.run(&["-v", "-c", s(&cfg), "set", "k", "v", "60"]);
    out.code(2);
    check(&out);
    // Conflicting INI spellings of a URL with passwords.
    let ini = env.write(
        "kinto.ini",
        &kinto_ini("kinto.cache_url = postgresql://u:SeCrEt@h/db\ncache_url = postgresql://u:PaSsWoRd@h/db"),
    );
    let out = env.run(&["-v", "-c", s(&ini), "set", "k", "v", "60"]);
    out.code(2);
    check(&out);
}

/// `-v` shows a libpq connection string read with libpq's rules and written again with the
/// password as `***`, however it was quoted, and a `password=` query parameter of a URL as
/// `***`. The whole line is checked, so that nothing depends on the secret registry.
#[test]
fn verbose_hides_a_connection_string_password_however_it_is_quoted() {
    let env = Env::new();
    let port = crate::util::servers::free_port(); // nothing listens there: refused
    let cases = [
        (
            format!("host=127.0.0.1 port={port} user=u password='alpha beta gamma'"),
            format!("host=127.0.0.1 port={port} user=u password=***"),
        ),
        (
            format!("host=127.0.0.1 port={port} password = 'alpha beta'"),
            format!("host=127.0.0.1 port={port} password=***"),
        ),
        (
            format!("password=alpha\\ beta host=127.0.0.1 port={port}"),
            format!("password=*** host=127.0.0.1 port={port}"),
        ),
        (
            format!("host = 127.0.0.1 port={port} password=gamma application_name='my app'"),
            format!("host=127.0.0.1 port={port} password=*** application_name='my app'"),
        ),
        (
            format!("postgresql://u@127.0.0.1:{port}/db?password=alpha%20beta&application_name=x"),
            format!("postgresql://u@127.0.0.1:{port}/db?password=***&application_name=x"),
        ),
        // Unreadable: a password with spaces and no quotes. Nothing of it is shown.
        (
            format!("host=127.0.0.1 port={port} password=alpha beta gamma"),
            kcache::settings::UNREADABLE_CONNECTION_STRING.to_string(),
        ),
    ];
    for (url, shown) in cases {
        let out = env.run(&["-v", "-b", "postgresql", "--url", &url, "get", "k"]);
        assert!(out.status == 2 || out.status == 3, "{url}: status {}:\n{}", out.status, out.stderr);
        let line = origin(&out, "url");
        assert_eq!(line, format!("kcache: setting url = {shown} (from --url)"), "{url}");
        for word in ["alpha", "beta", "gamma"] {
            assert!(!out.stderr.contains(word) && !out.stdout.contains(word), "{url} shows {word}:\n{}", out.stderr);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Precedence: flags > env > file > defaults

#[test]
fn precedence_for_prefix() {
    let env = Env::new();
    // Defaults.
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["k"]);
    // File over defaults.
    env.write("config/kcache/config.toml", "[cache]\nprefix = \"file:\"\n");
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["file:k", "k"]);
    // Env over file.
    let env = env.var("CACHE_PREFIX", "env:");
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["env:k", "file:k", "k"]);
    // Flag over env.
    env.run(&["--prefix", "flag:", "set", "k", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["env:k", "file:k", "flag:k", "k"]);
    // An empty flag is a value: no prefix at all.
    env.run(&["--prefix", "", "set", "k2", "v", "60"]).ok();
    assert_eq!(keys(&env.default_db()), ["env:k", "file:k", "flag:k", "k", "k2"]);
}

#[test]
fn precedence_for_backend() {
    let env = Env::new();
    let db = env.default_db();
    // Defaults: sqlite.
    env.run(&["set", "a", "v", "60"]).ok();
    assert_eq!(keys(&db), ["a"]);
    // File: memory, over the default.
    env.write("config/kcache/config.toml", "[cache]\nbackend = \"memory\"\n");
    env.run(&["set", "b", "v", "60"]).ok();
    assert_eq!(keys(&db), ["a"], "the file's backend was ignored");
    // Env: sqlite, over the file.
    let env = env.var("KINTO_CACHE_BACKEND", "sqlite");
    env.run(&["set", "c", "v", "60"]).ok();
    assert_eq!(keys(&db), ["a", "c"], "the env's backend was ignored");
    // Flag: memory, over the env.
    env.run(&["--backend", "memory", "set", "d", "v", "60"]).ok();
    env.run(&["-b", "kinto.core.cache.memory", "set", "e", "v", "60"]).ok();
    assert_eq!(keys(&db), ["a", "c"], "the flag's backend was ignored");
    let out = env.run(&["-v", "--backend", "memory", "ping"]);
    out.ok();
    assert!(origin(&out, "backend").contains("from --backend"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Bad input: status 2, one line naming the culprit, nothing written

#[test]
fn unknown_backend_name() {
    let env = Env::new();
    rejects(&env, &["--backend", "mongodb", "set", "k", "v", "60"], &["mongodb"]);
    rejects(&env, &["-b", "kinto.core.cache", "set", "k", "v", "60"], &["kinto.core.cache"]);
    let cfg = env.write("kcache.toml", "[cache]\nbackend = \"kinto.core.cache.sqlite\"\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["kinto.core.cache.sqlite"]);
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_backend = kinto.core.cache.mongo"));
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["kinto.core.cache.mongo"]);
    env.run(&["set", "seed", "v", "60"]).ok();
    rejects(&env, &["--backend", "mongodb", "set", "k", "v", "60"], &["mongodb"]);
    rejects(&env, &["--backend", "mongodb", "flush"], &["mongodb"]);
    assert_eq!(keys(&env.default_db()), ["seed"]);
}

#[test]
fn toml_unknown_key() {
    let env = Env::new();
    let cfg = env.write("kcache.toml", "[cache]\nprefix = \"p:\"\npool_szie = 3\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["pool_szie", "kcache.toml"]);
    let cfg = env.write("kcache2.toml", "[cache]\nprefix = \"p:\"\n[storage]\nurl = \"x\"\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["storage"]);
    let cfg = env.write("kcache3.toml", "prefix = \"p:\"\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["prefix"]);
    // Kinto's INI-only spelling is not a TOML key.
    let cfg = env.write("kcache4.toml", "[cache]\nmaxoverflow = 3\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["maxoverflow"]);
}

#[test]
fn toml_wrong_type() {
    let env = Env::new();
    let cfg = env.write("kcache.toml", "[cache]\npool_size = \"ten\"\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["pool_size", "ten"]);
    let cfg = env.write("kcache2.toml", "[cache]\nprefix = [\"a\"]\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["prefix"]);
    let cfg = env.write("kcache3.toml", "[cache]\nhosts = [1, 2]\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["hosts"]);
    let cfg = env.write("kcache4.toml", "[cache]\npool_timeout = true\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["pool_timeout"]);
    let cfg = env.write("kcache5.toml", "[cache]\nbackend = 1\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["backend"]);
}

#[test]
fn toml_syntax_error() {
    let env = Env::new();
    let cfg = env.write("kcache.toml", "[cache]\nprefix = \"p:\"\npath = \n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["kcache.toml", "line 3"]);
    let cfg = env.write("kcache2.toml", "[cache\nprefix = \"p:\"\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["kcache2.toml"]);
    // At the default location too.
    env.write("config/kcache/config.toml", "[cache]\nprefix = 'unterminated\n");
    rejects(&env, &["set", "k", "v", "60"], &["config.toml"]);
}

#[test]
fn missing_explicit_config_file() {
    let env = Env::new();
    let missing = env.path("etc/nope.toml");
    rejects(&env, &["--config", s(&missing), "set", "k", "v", "60"], &[s(&missing)]);
    let env = env.var("KCACHE_CONFIG", s(&missing));
    rejects(&env, &["set", "k", "v", "60"], &[s(&missing)]);
    rejects(&env, &["get", "k"], &[s(&missing)]);
}

#[test]
fn config_path_is_a_directory() {
    let env = Env::new();
    let dir = env.path("etc");
    std::fs::create_dir_all(&dir).unwrap();
    let out = rejects(&env, &["--config", s(&dir), "set", "k", "v", "60"], &[s(&dir)]);
    out.stderr_has("directory");
}

#[test]
fn config_file_not_utf8() {
    let env = Env::new();
    let cfg = env.path("kcache.toml");
    std::fs::write(&cfg, b"[cache]\nprefix = \"caf\xe9:\"\n").unwrap();
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["kcache.toml", "UTF-8"]);
    let ini = env.path("kinto.ini");
    let mut bytes = kinto_ini("kinto.cache_prefix = p:").into_bytes();
    bytes.extend_from_slice(b"\n# \xff\xfe latin-1 comment\n");
    std::fs::write(&ini, bytes).unwrap();
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["kinto.ini", "UTF-8"]);
}

#[test]
fn backend_not_built() {
    let env = Env::new();
    let missing = missing_backends(&env);
    let Some(name) = missing.first() else {
        eprintln!("skipped: this build has every backend");
        return;
    };
    rejects(&env, &["--backend", name, "set", "k", "v", "60"], &[name]);
    let env = env.var("KINTO_CACHE_BACKEND", name);
    rejects(&env, &["set", "k", "v", "60"], &[name]);
    rejects(&env, &["migrate"], &[name]);
}

#[test]
fn sqlite_path_is_a_directory() {
    let env = Env::new();
    let dir = env.path("store");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = env.write("kcache.toml", "[cache]\npath = \"store\"\n");
    rejects(&env, &["-c", s(&cfg), "set", "k", "v", "60"], &["store"]);
    let ini = env.write("kinto.ini", &kinto_ini("kinto.cache_backend = sqlite\nkinto.cache_path = %(here)s/store"));
    rejects(&env, &["-c", s(&ini), "set", "k", "v", "60"], &["store"]);
    let env = env.var("KINTO_CACHE_PATH", s(&dir));
    rejects(&env, &["set", "k", "v", "60"], &["store"]);
    rejects(&env, &["migrate"], &["store"]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "something was written in the directory");
}

#[test]
fn quiet_keeps_errors() {
    let env = Env::new();
    let out = rejects(&env, &["-q", "--backend", "mongodb", "set", "k", "v", "60"], &["mongodb"]);
    assert!(out.stderr.starts_with("kcache: error: "), "{}", out.stderr);
}

#[test]
fn tiny_pool_timeouts_and_recycles_become_a_millisecond_not_a_panic() {
    // Found by hostile::toml_loader_never_panics_and_checks_every_setting: 2.2e-308 s rounded to
    // a zero duration, which r2d2 and socket timeouts refuse with a panic.
    let closed = crate::util::servers::free_port();
    for backend in ["redis", "postgresql", "memcached"] {
        if !crate::util::rig::compiled(backend) {
            continue;
        }
        for (var, value) in [("KINTO_CACHE_POOL_TIMEOUT", "1e-12"), ("KINTO_CACHE_POOL_RECYCLE", "0")] {
            let (url_var, url) = match backend {
                "memcached" => ("KINTO_CACHE_HOSTS", format!("127.0.0.1:{closed}")),
                "redis" => ("KINTO_CACHE_URL", format!("redis://127.0.0.1:{closed}/0")),
                _ => ("KINTO_CACHE_URL", format!("postgresql://u@127.0.0.1:{closed}/db")),
            };
            let env = Env::new().var("KINTO_CACHE_BACKEND", backend).var(url_var, &url).var(var, value);
            env.run(&["get", "k"]).code(3).one_error_line();
            env.run(&["-v", "get", "k"])
                .code(3)
                .stderr_has(&format!("setting {} = ", var.trim_start_matches("KINTO_CACHE_").to_lowercase()));
        }
    }
}
