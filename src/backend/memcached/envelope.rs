//! Kinto's memcached entry: the JSON envelope `{"value":<json>,"ttl":<unix time>}` stored with
//! python-memcached's text flag (reference §4.4), and the expiry arithmetic around it.

use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// python-memcached's `_FLAG_TEXT`: how it stores a `str`, and so every Kinto entry.
pub const FLAG_TEXT: u32 = 16;

/// Flags kcache reads an envelope from: text (Kinto) and plain bytes (other clients).
pub const READABLE_FLAGS: [u32; 2] = [0, FLAG_TEXT];

/// 30 days, in seconds: memcached reads a larger exptime as an absolute unix time (its
/// `REALTIME_MAXDELTA`), so longer TTLs must be sent as one.
pub const MAX_RELATIVE_EXPTIME: u64 = 30 * 24 * 3600;

/// The largest exptime memcached accepts as a time: it parses exptime as a signed 32-bit
/// number, and silently drops an item whose exptime is larger (checked on memcached 1.6.18).
pub const MAX_EXPTIME: u64 = i32::MAX as u64;

/// How far memcached's clock may be behind the real time, in whole seconds: what `mg ... t`
/// leaves out. The clock (`current_time`) is the whole seconds of a reading taken by a timer
/// once a second; items go when it reaches their exptime. A reading is up to a second old and
/// floored, so an item the server gives `t` seconds normally goes between `t - 1` and `t`
/// seconds later. The timer fires a little more than a second apart (1.00085 s on average on
/// memcached 1.6.18 here), so now and then (every twenty minutes or so) the reading crosses a
/// second boundary and the clock moves two seconds at once: for that second every item goes
/// between `t - 2` and `t - 1` seconds later. `t - 2` seconds is what kcache can count on.
pub const SERVER_CLOCK_LAG: u64 = 2;

/// Seconds more than the TTL for the server's own expiry of what kcache writes. The envelope
/// decides when such an entry expires, and the server must not decide earlier, even as `ttl`
/// sees it: an item set with exptime `N` while the server's clock lags by up to
/// [`SERVER_CLOCK_LAG`] seconds, read later with the same lag, shows `t >= N - 2 - elapsed`,
/// of which kcache counts on `t - 2`; so `N = ceil(ttl) + 4` keeps that at or above the
/// envelope's time left. Four seconds more in memory is the whole cost.
pub const EXPTIME_MARGIN: u64 = 2 * SERVER_CLOCK_LAG;

/// An exptime memcached reads as a unix time long past (1970-01-31): an item stored with it is
/// expired at once. `delete` swaps an entry for one with it over its CAS, which makes the
/// delete conditional on the entry being the one it read.
pub const EXPIRED_EXPTIME: u32 = (MAX_RELATIVE_EXPTIME + 1) as u32;

/// What `delete` leaves for the instant before memcached forgets it: an envelope whose value is
/// null and whose time has long passed, so that Kinto (which returns the value, null is None)
/// and kcache (which checks the time) both read it as missing.
pub const TOMBSTONE: &str = r#"{"value":null,"ttl":0}"#;

/// Microseconds since the unix epoch when an entry set at `now` for `ttl` expires, rounded up
/// (an entry never expires before its TTL has passed). Microseconds, not milliseconds: a `ttl`
/// read right after `set` must not show more than was set, and a round trip takes longer than
/// a microsecond, never longer than a millisecond. A float holds them exactly enough (to about
/// 0.2 µs) until the year 2100.
pub fn expires_us(now: SystemTime, ttl: Duration) -> u128 {
    let at = now.duration_since(UNIX_EPOCH).unwrap_or_default() + ttl;
    at.as_nanos().div_ceil(1_000)
}

/// The envelope around `value` (JSON text as Kinto writes it), built as text so that the value's
/// bytes stay exactly Kinto's. The time is written with its fraction of a second
/// (`1795617795.309417`) unless that is zero: Kinto writes `ceil(time.time() + ttl)`, whole
/// seconds, and reads the number back as a Python float, so both forms work for it, and only
/// this one keeps a sub-second TTL.
pub fn encode(value: &str, expires_us: u128) -> String {
    let secs = expires_us / 1_000_000;
    let us = expires_us % 1_000_000;
    let time = if us == 0 {
        secs.to_string()
    } else {
        let frac = format!("{us:06}");
        format!("{secs}.{}", frac.trim_end_matches('0'))
    };
    format!("{{\"value\":{value},\"ttl\":{time}}}")
}

/// The server-side exptime for an entry set at `now` for `ttl`: whole seconds rounded up plus
/// [`EXPTIME_MARGIN`] (never 0, which memcached reads as "never expires"); over 30 days, the
/// unix time instead; past what memcached can hold (2038), 0: the server keeps the item until
/// it needs the room, and the envelope still says when it expires.
pub fn exptime(now: SystemTime, ttl: Duration) -> u32 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0) + EXPTIME_MARGIN;
    if secs <= MAX_RELATIVE_EXPTIME {
        return secs as u32;
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let now_secs = since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0);
    let at = now_secs + secs;
    if at > MAX_EXPTIME { 0 } else { at as u32 }
}

/// A decoded envelope.
#[derive(Debug, PartialEq)]
pub struct Entry {
    /// The value, as Kinto's JSON text.
    pub value: String,
    /// The envelope's unix time, in seconds.
    pub expires: f64,
}

impl Entry {
    /// Time left at `now` by the envelope; `None` once its time has come.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let left = self.expires - now;
        if left > 0.0 { Some(Duration::try_from_secs_f64(left).unwrap_or(Duration::MAX)) } else { None }
    }

    /// Time left at `now` of an item the server just returned with `server_ttl` seconds of its
    /// own left (`mg ... t`; -1: none): the earlier of the envelope's time and the server's.
    /// Kinto sets exptime `int(ttl)` and writes `ceil(now + ttl)` in the envelope, so on its
    /// entries the server's expiry comes first. The server's part counts only on what is
    /// certain, `t - 2` seconds (see [`SERVER_CLOCK_LAG`]), never less than a nanosecond: the
    /// server returned the item, so it is live, and `ttl` shows it as 1 (second or millisecond).
    pub fn remaining_on(&self, now: SystemTime, server_ttl: i64) -> Option<Duration> {
        let left = self.remaining(now)?;
        let Ok(server) = u64::try_from(server_ttl) else { return Some(left) };
        let server = Duration::from_secs(server.saturating_sub(SERVER_CLOCK_LAG));
        Some(left.min(server).max(Duration::from_nanos(1)))
    }
}

/// Reads an entry as Kinto wrote it (or kcache); the error says what is wrong with it.
pub fn decode(bytes: &[u8], flags: u32) -> Result<Entry, String> {
    if !READABLE_FLAGS.contains(&flags) {
        return Err(format!(
            "it has memcached flags {flags}: not an entry Kinto writes (python-memcached uses 16 for text; \
             1, 2, 4 and 8 are its pickled, integer, long and compressed values)"
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())?;
    let doc: Value =
        crate::value::parse_within(text, crate::value::MAX_DEPTH + 1).map_err(|e| format!("it is not JSON ({e})"))?;
    let Value::Object(map) = doc else {
        return Err("it is not a JSON object {\"value\": ..., \"ttl\": ...}".to_string());
    };
    let value = map.get("value").ok_or_else(|| "its JSON object has no \"value\"".to_string())?;
    let expires = map
        .get("ttl")
        .and_then(Value::as_f64)
        .ok_or_else(|| "its JSON object has no numeric \"ttl\" (the unix time it expires)".to_string())?;
    let value = crate::value::encode(value).map_err(|e| format!("its value cannot be read back: {e}"))?;
    Ok(Entry { value, expires })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    }

    #[test]
    fn envelope_is_built_around_the_value_text() {
        assert_eq!(encode(r#""alive""#, 1_795_621_395_000_000), r#"{"value":"alive","ttl":1795621395}"#);
        assert_eq!(encode("[1,2]", 1_795_617_797_250_000), r#"{"value":[1,2],"ttl":1795617797.25}"#);
        assert_eq!(encode("null", 1_795_617_797_000_007), r#"{"value":null,"ttl":1795617797.000007}"#);
        assert_eq!(encode("{}", 1_795_617_797_123_456), r#"{"value":{},"ttl":1795617797.123456}"#);
    }

    #[test]
    fn expiry_is_rounded_up_to_the_microsecond() {
        let now = UNIX_EPOCH + Duration::new(1_795_617_794, 308_937_500);
        assert_eq!(expires_us(now, Duration::from_millis(300)), 1_795_617_794_608_938);
        assert_eq!(expires_us(now, Duration::from_secs(3600)), 1_795_621_394_308_938);
        let whole = UNIX_EPOCH + Duration::from_secs(1_795_617_794);
        assert_eq!(expires_us(whole, Duration::from_secs(1)), 1_795_617_795_000_000);
    }

    #[test]
    fn the_written_time_reads_back_to_the_microsecond() {
        let us = 4_102_444_799_999_999; // 2099-12-31T23:59:59.999999
        let e = decode(encode("1", us).as_bytes(), FLAG_TEXT).unwrap();
        assert!((e.expires - us as f64 / 1e6).abs() < 1e-6, "{}", e.expires);
    }

    #[test]
    fn exptime_is_whole_seconds_up_plus_a_margin_and_never_zero() {
        let now = at(1_795_617_794.3);
        assert_eq!(exptime(now, Duration::from_millis(1)), 5);
        assert_eq!(exptime(now, Duration::from_millis(300)), 5);
        assert_eq!(exptime(now, Duration::from_secs(1)), 5);
        assert_eq!(exptime(now, Duration::from_millis(1900)), 6);
        assert_eq!(exptime(now, Duration::from_secs(3600)), 3604);
        assert_eq!(exptime(now, Duration::from_secs(MAX_RELATIVE_EXPTIME - 4)), MAX_RELATIVE_EXPTIME as u32);
    }

    #[test]
    fn the_servers_expiry_counts_only_what_is_certain_and_the_earlier_one_wins() {
        let now = at(1_000.0);
        // Kinto's 3600 s entry: envelope ceil(now + 3600) = 0.7 s later than the server's int(ttl).
        let kinto = Entry { value: "1".into(), expires: 4_600.7 };
        assert_eq!(kinto.remaining(now), Some(Duration::from_secs_f64(3_600.7)));
        assert_eq!(kinto.remaining_on(now, 3600), Some(Duration::from_secs(3598)));
        assert_eq!(kinto.remaining_on(now, 3599), Some(Duration::from_secs(3597)));
        // No expiry on the server (t-1): the envelope decides.
        assert_eq!(kinto.remaining_on(now, -1), Some(Duration::from_secs_f64(3_600.7)));
        // A server that returned the item with 2 s or less: live, for a nanosecond as far as
        // kcache can promise.
        for t in [0, 1, 2] {
            assert_eq!(kinto.remaining_on(now, t), Some(Duration::from_nanos(1)), "t{t}");
        }
        // The envelope's time has come: expired, whatever the server says.
        let past = Entry { value: "1".into(), expires: 999.0 };
        assert_eq!(past.remaining_on(now, 3600), None);
        assert_eq!(past.remaining_on(now, -1), None);
        // What kcache writes: the server's t minus the lag is never below the envelope's time
        // left, even with the server's clock as far behind as it gets at the set (t read as
        // exptime) and two seconds further behind at the read.
        for ttl_ms in [1u64, 300, 1000, 1900, 60_000, 3_600_000] {
            let ttl = Duration::from_millis(ttl_ms);
            let exptime = i64::from(exptime(now, ttl));
            let ours = Entry { value: "1".into(), expires: 1_000.0 + ttl.as_secs_f64() };
            for elapsed_ms in [0u64, 400, 999, 1000, 1500, ttl_ms.saturating_sub(1)] {
                let then = now + Duration::from_millis(elapsed_ms);
                let Some(left) = ours.remaining(then) else { continue };
                // The server's clock, whole seconds, moved less than the elapsed time plus the
                // lag: by the elapsed whole seconds plus the lag at most.
                let t = exptime - (elapsed_ms / 1000) as i64 - SERVER_CLOCK_LAG as i64;
                assert_eq!(ours.remaining_on(then, t), Some(left), "ttl {ttl_ms} ms, {elapsed_ms} ms later, t{t}");
            }
        }
    }

    #[test]
    fn over_thirty_days_the_exptime_is_a_unix_time() {
        let now = at(1_795_617_794.3);
        assert_eq!(exptime(now, Duration::from_secs(MAX_RELATIVE_EXPTIME - 3)), 1_795_617_795 + 2_592_001);
        assert_eq!(exptime(now, Duration::from_secs(40 * 86400)), 1_795_617_795 + 3_456_004);
        // Beyond 2038 memcached cannot hold the time: the server keeps the item.
        assert_eq!(exptime(now, crate::ttl::MAX_TTL), 0);
    }

    #[test]
    fn the_expired_exptime_is_an_absolute_time_in_the_past() {
        assert!(u64::from(EXPIRED_EXPTIME) > MAX_RELATIVE_EXPTIME);
        assert!(u64::from(EXPIRED_EXPTIME) < 86400 * 365);
    }

    #[test]
    fn decodes_kinto_envelopes() {
        let e = decode(br#"{"value":{"x":"\u00E9\u2603","e":"\uD83D\uDE00"},"ttl":1795617856}"#, 16).unwrap();
        assert_eq!(e.value, r#"{"x":"\u00E9\u2603","e":"\uD83D\uDE00"}"#);
        assert_eq!(e.expires, 1_795_617_856.0);
        let e = decode(br#"{"value":1180591620717411303424,"ttl":1795621395}"#, 0).unwrap();
        assert_eq!(e.value, "1180591620717411303424");
        let e = decode(br#"{"value": "spaced",  "ttl": 1795621395.5}"#, 16).unwrap();
        assert_eq!((e.value.as_str(), e.expires), (r#""spaced""#, 1_795_621_395.5));
    }

    #[test]
    fn remaining_time_comes_from_the_envelope() {
        let e = Entry { value: "1".into(), expires: 1_000.5 };
        let left = e.remaining(at(990.0)).unwrap();
        assert!((left.as_secs_f64() - 10.5).abs() < 1e-6, "{left:?}");
        assert_eq!(e.remaining(at(1_000.5)), None);
        assert_eq!(e.remaining(at(2_000.0)), None);
        let far = Entry { value: "1".into(), expires: 1e300 };
        assert!(far.remaining(at(0.0)).is_some());
    }

    #[test]
    fn other_entries_are_refused_with_a_reason() {
        assert!(decode(b"x", 1).unwrap_err().contains("flags 1"));
        assert!(decode(b"\xff", 16).unwrap_err().contains("UTF-8"));
        assert!(decode(b"nope", 16).unwrap_err().contains("not JSON"));
        assert!(decode(b"[1]", 16).unwrap_err().contains("not a JSON object"));
        assert!(decode(br#"{"ttl":1}"#, 16).unwrap_err().contains("\"value\""));
        assert!(decode(br#"{"value":1}"#, 16).unwrap_err().contains("\"ttl\""));
        assert!(decode(br#"{"value":1,"ttl":"soon"}"#, 16).unwrap_err().contains("\"ttl\""));
    }

    #[test]
    fn the_tombstone_is_an_envelope_already_expired() {
        let e = decode(TOMBSTONE.as_bytes(), FLAG_TEXT).unwrap();
        assert_eq!(e.value, "null");
        assert_eq!(e.remaining(SystemTime::now()), None);
    }
}
