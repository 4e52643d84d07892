//! The environment layer, read as Kinto reads it: for each setting, `CACHE_<NAME>`, overridden
//! by `KINTO_CACHE_<NAME>`. Unlike Kinto (#1544), a variable counts whether or not the config file
//! has that key. An empty variable counts as unset (as in ripgrep and sccache: `FOO= kcache ...`
//! is the usual way to switch a variable off). Values go through Kinto's `native_value`.

use super::{Layer, NAMES, Raw};

/// Builds the environment layer through `get` (the real environment, or a map in tests).
pub fn env_layer(get: &dyn Fn(&str) -> Option<String>) -> Layer {
    let mut layer = Layer::default();
    for &name in NAMES {
        // Kinto's documented `maxoverflow` spelling is read too, below the canonical one.
        let spellings: &[&str] = if name == "max_overflow" { &["maxoverflow", "max_overflow"] } else { &[name] };
        for spelling in spellings {
            for var in
                [format!("CACHE_{}", spelling.to_uppercase()), format!("KINTO_CACHE_{}", spelling.to_uppercase())]
            {
                if let Some(v) = get(&var).filter(|v| !v.is_empty()) {
                    layer.set(name, Raw::native(&v), var, None);
                }
            }
        }
    }
    layer
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn layer(vars: &[(&str, &str)]) -> Layer {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env_layer(&|k| map.get(k).cloned())
    }

    #[test]
    fn kinto_prefixed_wins_over_bare() {
        let l = layer(&[("CACHE_URL", "redis://a/0"), ("KINTO_CACHE_URL", "redis://b/0")]);
        let e = &l.entries["url"];
        assert_eq!(e.raw, Raw::Str("redis://b/0".into()));
        assert_eq!(e.source, "KINTO_CACHE_URL");
    }

    #[test]
    fn bare_name_alone_counts() {
        let l = layer(&[("CACHE_PREFIX", "p:")]);
        assert_eq!(l.entries["prefix"].raw, Raw::Str("p:".into()));
    }

    #[test]
    fn empty_counts_as_unset() {
        let l = layer(&[("CACHE_BACKEND", "redis"), ("KINTO_CACHE_BACKEND", "")]);
        assert_eq!(l.entries["backend"].source, "CACHE_BACKEND");
        assert!(layer(&[("KINTO_CACHE_URL", "")]).entries.is_empty());
    }

    #[test]
    fn values_are_native() {
        let l = layer(&[("KINTO_CACHE_POOL_SIZE", "3"), ("KINTO_CACHE_PREFIX", "\"q\"")]);
        assert_eq!(l.entries["pool_size"].raw, Raw::Int(3));
        assert_eq!(l.entries["prefix"].raw, Raw::Str("q".into()));
    }

    #[test]
    fn maxoverflow_spelling() {
        let l = layer(&[("KINTO_CACHE_MAXOVERFLOW", "3")]);
        assert_eq!(l.entries["max_overflow"].raw, Raw::Int(3));
        let l = layer(&[("KINTO_CACHE_MAXOVERFLOW", "3"), ("CACHE_MAX_OVERFLOW", "4")]);
        assert_eq!(l.entries["max_overflow"].raw, Raw::Int(4));
    }

    #[test]
    fn unrelated_variables_are_ignored() {
        assert!(layer(&[("KINTO_STORAGE_URL", "x"), ("CACHE", "y"), ("KINTO_CACHE_FOO", "z")]).entries.is_empty());
    }
}
