//! The TOML config format: one `[cache]` table with SPEC's keys. Anything else, at any level, is
//! an input error that names it, so that a typo (`pool_szie`) never goes unnoticed.

use super::{Layer, Raw, canonical};
use crate::error::{Error, Result};
use std::path::PathBuf;

pub fn layer(text: &str, shown: &str, base: Option<PathBuf>) -> Result<Layer> {
    let doc: ::toml::Table = text.parse().map_err(|e: ::toml::de::Error| {
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map_or(String::new(), |l| format!(" line {l}"));
        Error::input(format!("config file {shown}{at}: {}", e.message().trim()))
    })?;
    let mut layer = Layer::default();
    for (key, value) in doc {
        let ::toml::Value::Table(cache) = value else {
            return Err(Error::input(format!(
                "config file {shown}: unknown key '{key}' (settings go in a [cache] table)"
            )));
        };
        if key != "cache" {
            return Err(Error::input(format!("config file {shown}: unknown table [{key}] (expected [cache])")));
        }
        for (k, v) in cache {
            let name = match canonical(&k) {
                Some(n) if k != "maxoverflow" => n,
                _ => {
                    return Err(Error::input(format!(
                        "config file {shown}: unknown key '{k}' in [cache]; known keys: {}",
                        super::NAMES.join(", ")
                    )));
                }
            };
            let source = format!("config file {shown} ([cache] {k})");
            let raw = match v {
                ::toml::Value::String(s) => Raw::Str(s),
                ::toml::Value::Integer(i) => Raw::Int(i),
                ::toml::Value::Float(f) => Raw::Float(f),
                ::toml::Value::Boolean(b) => Raw::Bool(b),
                ::toml::Value::Array(items) => {
                    let mut list = Vec::new();
                    for item in items {
                        match item {
                            ::toml::Value::String(s) => list.push(s),
                            other => {
                                return Err(Error::input(format!(
                                    "{source}: {k} must be a list of strings, not a list holding {}",
                                    other.type_str()
                                )));
                            }
                        }
                    }
                    Raw::List(list)
                }
                other => {
                    return Err(Error::input(format!("{source}: {k} cannot be a {}", other.type_str())));
                }
            };
            if matches!(raw, Raw::List(_)) && name != "hosts" {
                return Err(Error::input(format!("{source}: {k} cannot be a list")));
            }
            layer.set(name, raw, source, base.clone());
        }
    }
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn settings(text: &str) -> std::result::Result<Settings, String> {
        let l = layer(text, "t.toml", None).map_err(|e| e.to_string())?;
        Settings::from_layer(&l).map_err(|e| e.to_string())
    }

    #[test]
    fn every_key() {
        let s = settings(
            r#"[cache]
backend = "postgresql"
url = "postgresql://u@h/db"
hosts = ["a:1", "b:2"]
prefix = "kinto:"
max_size_bytes = 1000
pool_size = 3
max_overflow = 0
max_backlog = 2
pool_recycle = 60
pool_timeout = 2.5
path = "/tmp/x.sqlite3"
"#,
        )
        .unwrap();
        assert_eq!(s.backend, crate::settings::BackendKind::Postgresql);
        assert_eq!(s.hosts, vec!["a:1", "b:2"]);
        assert_eq!((s.pool_size, s.max_overflow, s.max_backlog), (3, 0, Some(2)));
        assert_eq!(s.pool_timeout, Some(std::time::Duration::from_millis(2500)));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = settings("[cache]\npool_szie = 3\n").unwrap_err();
        assert!(e.contains("'pool_szie'"), "{e}");
        let e = settings("[caches]\nprefix = 'x'\n").unwrap_err();
        assert!(e.contains("[caches]"), "{e}");
        let e = settings("prefix = 'x'\n").unwrap_err();
        assert!(e.contains("'prefix'"), "{e}");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = settings("[cache]\npool_size = \"ten\"\n").unwrap_err();
        assert!(e.contains("pool_size") && e.contains("\"ten\""), "{e}");
        let e = settings("[cache]\nprefix = [\"a\"]\n").unwrap_err();
        assert!(e.contains("prefix"), "{e}");
        let e = settings("[cache]\nhosts = [1]\n").unwrap_err();
        assert!(e.contains("hosts"), "{e}");
    }

    #[test]
    fn syntax_errors_give_a_line() {
        let e = settings("[cache]\nprefix = \n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn empty_file_is_fine() {
        assert!(settings("").is_ok());
    }
}
