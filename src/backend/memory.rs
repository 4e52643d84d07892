//! The `memory` backend: entries live in the process. Useful in tests and in `kcache batch`.
//!
//! `max_size_bytes` bounds the cache as Kinto's does (oldest write evicted first), with the
//! accounting Kinto gets wrong done right (reference §3.3): overwriting a key replaces its size
//! instead of adding to it, deleting a missing key changes nothing, `expire` on a missing key
//! creates nothing, and eviction makes room *before* inserting, so the total never exceeds the
//! limit. An entry larger than the whole limit is refused (status 4) instead of being stored
//! over the limit.

use super::{Backend, FlushScope};
use crate::error::{Error, Result};
use crate::ttl::{Remaining, Ttl};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Entry {
    value: String,
    expires: Option<Instant>,
    /// Order of the last write, for eviction.
    seq: u64,
    size: u64,
}

/// The entries; shared by every [`Memory`] handle made with [`Backend::fork`].
struct Store {
    entries: HashMap<String, Entry>,
    by_age: BTreeMap<u64, String>,
    next_seq: u64,
    used: u64,
    max: Option<u64>,
}

/// Kinto's size estimate: `3 * len(key) + len(value) + 48`, in characters; the value is counted
/// as its stored JSON text.
fn size_of(key: &str, value: &str) -> u64 {
    3 * key.chars().count() as u64 + value.chars().count() as u64 + 48
}

pub struct Memory {
    store: Arc<Mutex<Store>>,
}

impl Memory {
    pub fn new(max: Option<u64>) -> Memory {
        let store = Store { entries: HashMap::new(), by_age: BTreeMap::new(), next_seq: 0, used: 0, max };
        Memory { store: Arc::new(Mutex::new(store)) }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that matters
        // more than losing the cache, so a poisoned lock is simply taken over.
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `value` under `key` until `expires` (`None`: never), within `max_size_bytes`.
    fn put(&self, key: &str, value: &str, expires: Option<Instant>, now: Instant) -> Result<()> {
        let size = size_of(key, value);
        let mut s = self.store();
        if let Some(max) = s.max
            && size > max
        {
            return Err(Error::backend(
                "store the value",
                anyhow::anyhow!("the entry takes {size} bytes, more than max_size_bytes ({max})"),
            ));
        }
        s.remove(key);
        if let Some(max) = s.max {
            if s.used + size > max {
                s.remove_expired(now);
            }
            while s.used + size > max {
                let Some((_, oldest)) = s.by_age.pop_first() else { break };
                s.remove(&oldest);
            }
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.by_age.insert(seq, key.to_string());
        s.used += size;
        s.entries.insert(key.to_string(), Entry { value: value.to_string(), expires, seq, size });
        Ok(())
    }

    /// Bytes accounted for now (for tests of the quota).
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.store().used
    }
}

impl Store {
    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.expires.is_none_or(|t| t > now))
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.by_age.remove(&e.seq);
        self.used -= e.size;
        Some(e)
    }

    fn remove_expired(&mut self, now: Instant) {
        let expired: Vec<String> =
            self.entries.iter().filter(|(_, e)| e.expires.is_some_and(|t| t <= now)).map(|(k, _)| k.clone()).collect();
        for k in expired {
            self.remove(&k);
        }
    }
}

impl Backend for Memory {
    fn fork(&self) -> Result<Box<dyn Backend>> {
        Ok(Box::new(Memory { store: Arc::clone(&self.store) }))
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn location(&self) -> String {
        "this process".to_string()
    }

    fn get(&mut self, key: &str) -> Result<Option<String>> {
        Ok(self.store().live(key, Instant::now()).map(|e| e.value.clone()))
    }

    fn set(&mut self, key: &str, value: &str, ttl: Ttl) -> Result<()> {
        let now = Instant::now();
        self.put(key, value, now.checked_add(ttl.duration()), now)
    }

    /// In the process: the matching keys are collected under the lock (no other way to walk a
    /// map that others may change), then given.
    fn walk(&mut self, start: &str, each: &mut dyn FnMut(&str, Remaining) -> bool) -> Result<()> {
        let now = Instant::now();
        let found: Vec<(String, Remaining)> = self
            .store()
            .entries
            .iter()
            .filter(|(k, e)| k.starts_with(start) && e.expires.is_none_or(|t| t > now))
            .map(|(k, e)| (k.clone(), e.expires.map_or(Remaining::NoExpiry, |t| Remaining::Left(t - now))))
            .collect();
        for (key, left) in found {
            if !each(&key, left) {
                break;
            }
        }
        Ok(())
    }

    /// The matching entries are collected under the lock, as for `walk`.
    fn entries(&mut self, start: &str, each: &mut super::EachEntry<'_>) -> Result<()> {
        let (now, unix) = (Instant::now(), super::unix_now());
        let found: Vec<(String, String, Option<f64>)> = self
            .store()
            .entries
            .iter()
            .filter(|(k, e)| k.starts_with(start) && e.expires.is_none_or(|t| t > now))
            .map(|(k, e)| (k.clone(), e.value.clone(), e.expires.map(|t| unix + (t - now).as_secs_f64())))
            .collect();
        for (key, value, expires) in found {
            if !each(&key, &value, expires)? {
                break;
            }
        }
        Ok(())
    }

    fn load(&mut self, entries: &[super::Entry], keep_live: bool, written: &mut u64) -> Result<()> {
        let (now, unix) = (Instant::now(), super::unix_now());
        for e in entries {
            if keep_live && self.store().live(&e.key, now).is_some() {
                continue;
            }
            let expires = match e.expires {
                None => None,
                Some(at) if at <= unix => continue,
                Some(at) => now.checked_add(std::time::Duration::from_secs_f64(
                    (at - unix).min(crate::ttl::MAX_TTL.as_secs_f64()),
                )),
            };
            self.put(&e.key, &e.value, expires, now)?;
            *written += 1;
        }
        Ok(())
    }

    fn count(&mut self, start: &str) -> Option<u64> {
        let now = Instant::now();
        Some(
            self.store()
                .entries
                .iter()
                .filter(|(k, e)| k.starts_with(start) && e.expires.is_none_or(|t| t > now))
                .count() as u64,
        )
    }

    fn ttl(&mut self, key: &str) -> Result<Remaining> {
        let now = Instant::now();
        Ok(match self.store().live(key, now) {
            None => Remaining::Missing,
            Some(Entry { expires: None, .. }) => Remaining::NoExpiry,
            Some(Entry { expires: Some(t), .. }) => Remaining::Left(*t - now),
        })
    }

    fn expire(&mut self, key: &str, ttl: Ttl) -> Result<bool> {
        let now = Instant::now();
        let mut s = self.store();
        if s.live(key, now).is_none() {
            return Ok(false);
        }
        if let Some(e) = s.entries.get_mut(key) {
            e.expires = now.checked_add(ttl.duration());
        }
        Ok(true)
    }

    fn delete(&mut self, key: &str) -> Result<Option<String>> {
        let now = Instant::now();
        let mut s = self.store();
        let live = s.live(key, now).is_some();
        Ok(s.remove(key).filter(|_| live).map(|e| e.value))
    }

    fn flush(&mut self, scope: FlushScope<'_>) -> Result<()> {
        let mut s = self.store();
        match scope {
            FlushScope::All => {
                s.entries.clear();
                s.by_age.clear();
                s.used = 0;
            }
            FlushScope::Prefix(p) => {
                let keys: Vec<String> = s.entries.keys().filter(|k| k.starts_with(p)).cloned().collect();
                for k in keys {
                    s.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn purge(&mut self) -> Result<u64> {
        let mut s = self.store();
        let before = s.entries.len();
        s.remove_expired(Instant::now());
        Ok((before - s.entries.len()) as u64)
    }

    /// Counted in the store: entries and value bytes (the stored JSON text) under the prefix,
    /// and the expired entries not removed yet. No server.
    fn stats(&mut self, prefix: &str, _keep_going: bool) -> Result<crate::stats::Stats> {
        let now = Instant::now();
        let s = self.store();
        let (mut entries, mut expired, mut bytes) = (0u64, 0u64, 0u64);
        for (_, e) in s.entries.iter().filter(|(k, _)| k.starts_with(prefix)) {
            if e.expires.is_none_or(|t| t > now) {
                entries += 1;
                bytes += e.value.len() as u64;
            } else {
                expired += 1;
            }
        }
        Ok(crate::stats::Stats {
            entries: Some(entries),
            expired: Some(expired),
            value_bytes: Some(bytes),
            ..crate::stats::Stats::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Ttl {
        Ttl::from_duration(std::time::Duration::from_secs(n))
    }

    #[test]
    fn dump_and_load_keep_values_expiry_and_live_entries() {
        use crate::backend::Entry;
        let mut m = Memory::new(None);
        let now = crate::backend::unix_now();
        let entries = [
            Entry { key: "p:a".into(), value: "\"v\"".into(), expires: Some(now + 60.0) },
            Entry { key: "p:never".into(), value: "1".into(), expires: None },
            Entry { key: "p:gone".into(), value: "2".into(), expires: Some(now - 1.0) },
            Entry { key: "q:other".into(), value: "3".into(), expires: None },
        ];
        let mut written = 0;
        m.load(&entries, false, &mut written).unwrap();
        assert_eq!(written, 3, "the expired entry is skipped");
        let mut seen = Vec::new();
        m.entries("p:", &mut |k, v, e| {
            seen.push((k.to_string(), v.to_string(), e));
            Ok(true)
        })
        .unwrap();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!((seen[0].0.as_str(), seen[0].1.as_str()), ("p:a", "\"v\""));
        assert!((seen[0].2.unwrap() - (now + 60.0)).abs() < 0.01, "{:?}", seen[0].2);
        assert_eq!(seen[1], ("p:never".to_string(), "1".to_string(), None));
        assert_eq!(m.count("p:"), Some(2));
        // --no-overwrite keeps the live entry.
        let again = [Entry { key: "p:a".into(), value: "\"new\"".into(), expires: None }];
        let mut written = 0;
        m.load(&again, true, &mut written).unwrap();
        assert_eq!((written, m.get("p:a").unwrap().as_deref()), (0, Some("\"v\"")));
        m.load(&again, false, &mut written).unwrap();
        assert_eq!((written, m.get("p:a").unwrap().as_deref()), (1, Some("\"new\"")));
    }

    // Kinto counts an overwritten key twice (reference §3.3, quirk 14).
    #[test]
    fn overwriting_replaces_the_size() {
        let mut m = Memory::new(Some(1000));
        m.set("a", "\"x\"", secs(10)).unwrap();
        let once = m.used();
        m.set("a", "\"x\"", secs(10)).unwrap();
        assert_eq!(m.used(), once);
        assert_eq!(once, 3 + 3 + 48);
    }

    // Kinto drives the quota negative when deleting a missing key (quirk 15).
    #[test]
    fn deleting_a_missing_key_changes_nothing() {
        let mut m = Memory::new(Some(1000));
        assert_eq!(m.delete("missing").unwrap(), None);
        assert_eq!(m.used(), 0);
    }

    // Kinto's expire on a missing key creates a phantom TTL (quirk 16).
    #[test]
    fn expire_on_a_missing_key_creates_nothing() {
        let mut m = Memory::new(None);
        assert!(!m.expire("ghost", secs(10)).unwrap());
        assert_eq!(m.ttl("ghost").unwrap(), Remaining::Missing);
    }

    // Kinto evicts before inserting and ends above the limit (quirk 17).
    #[test]
    fn eviction_keeps_the_total_within_the_limit_oldest_first() {
        let mut m = Memory::new(Some(500));
        for i in 0..10 {
            m.set(&format!("k{i}"), &format!("\"{}\"", "v".repeat(28)), secs(60)).unwrap();
            assert!(m.used() <= 500, "used {} after {i}", m.used());
        }
        assert_eq!(m.get("k0").unwrap(), None, "oldest evicted");
        assert!(m.get("k9").unwrap().is_some(), "newest kept");
    }

    #[test]
    fn an_entry_larger_than_the_limit_is_refused() {
        let mut m = Memory::new(Some(100));
        let e = m.set("k", &format!("\"{}\"", "v".repeat(100)), secs(60)).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Backend);
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn expired_entries_are_invisible_and_not_resurrected() {
        let mut m = Memory::new(None);
        m.set("k", "1", Ttl::from_duration(std::time::Duration::from_millis(20))).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(m.get("k").unwrap(), None);
        assert!(!m.expire("k", secs(10)).unwrap());
        assert_eq!(m.get("k").unwrap(), None);
        assert_eq!(m.delete("k").unwrap(), None);
    }

    #[test]
    fn prefixed_flush_keeps_other_prefixes() {
        let mut m = Memory::new(None);
        m.set("a:1", "1", secs(10)).unwrap();
        m.set("b:1", "1", secs(10)).unwrap();
        m.flush(FlushScope::Prefix("a:")).unwrap();
        assert_eq!(m.get("a:1").unwrap(), None);
        assert!(m.get("b:1").unwrap().is_some());
        assert_eq!(m.used(), size_of("b:1", "1"));
    }
}
