//! What `kcache stats` reports ([`Stats`], one [`ServerStats`] per server) and its three
//! renderings: an aligned table for people ([`Stats::table`]), one JSON object
//! ([`Stats::json`]) and the Prometheus text exposition format ([`Stats::prometheus`]).
//!
//! Every figure is an `Option`: absent where the backend cannot know it (it is then left out of
//! the JSON object and of the Prometheus output, and shown as `-` in the table).

use std::fmt::Write;

/// The figures of one cache under one prefix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// The backend's name, as `--backend` takes it.
    pub backend: String,
    /// Where it points, without any password.
    pub location: String,
    pub prefix: String,
    /// Live entries under the prefix.
    pub entries: Option<u64>,
    /// Expired entries under the prefix that the backend has not removed yet.
    pub expired: Option<u64>,
    /// Total size in bytes of the values (their stored JSON text) of the live entries under the
    /// prefix.
    pub value_bytes: Option<u64>,
    /// One per server, for the backends that have servers (absent for sqlite and memory).
    pub servers: Option<Vec<ServerStats>>,
}

/// The figures a server gives about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerStats {
    pub address: String,
    /// `false`: the server could not be reached (only with `--keep-going`); every other figure
    /// is then absent, and `error` says why.
    pub up: bool,
    pub version: Option<String>,
    pub uptime_s: Option<u64>,
    /// Every item the server holds (every key, every row of the cache table).
    pub items: Option<u64>,
    /// Bytes the server uses for them (memory; for PostgreSQL the cache table with its indexes).
    pub bytes: Option<u64>,
    pub max_bytes: Option<u64>,
    pub evictions: Option<u64>,
    pub hits: Option<u64>,
    pub misses: Option<u64>,
    /// Open client connections.
    pub connections: Option<u64>,
    /// PostgreSQL: the size of the cache table's indexes (included in `bytes`).
    pub index_bytes: Option<u64>,
    /// Why the server is down (with `up: false`).
    pub error: Option<String>,
}

impl ServerStats {
    /// A server that answered; the figures are to be filled in.
    pub fn up(address: impl Into<String>) -> ServerStats {
        ServerStats { address: address.into(), up: true, ..ServerStats::default() }
    }

    /// A server that could not be reached, and why (the last part of the error, as the one-line
    /// message shows it).
    pub fn down(address: impl Into<String>, e: &crate::error::Error) -> ServerStats {
        let why = e.chain().last().cloned().unwrap_or_default();
        ServerStats {
            address: address.into(),
            up: false,
            error: Some(crate::error::redact(&why)),
            ..ServerStats::default()
        }
    }

    /// The numeric figures, in the order of the table's columns and of the Prometheus output.
    fn figures(&self) -> [(Figure, Option<u64>); 9] {
        [
            (Figure::UPTIME, self.uptime_s),
            (Figure::ITEMS, self.items),
            (Figure::BYTES, self.bytes),
            (Figure::MAX_BYTES, self.max_bytes),
            (Figure::INDEX_BYTES, self.index_bytes),
            (Figure::EVICTIONS, self.evictions),
            (Figure::HITS, self.hits),
            (Figure::MISSES, self.misses),
            (Figure::CONNECTIONS, self.connections),
        ]
    }
}

/// One numeric figure of a server: its column in the table, its metric.
#[derive(Clone, Copy)]
struct Figure {
    column: &'static str,
    metric: &'static str,
    kind: &'static str,
    help: &'static str,
}

impl Figure {
    const UPTIME: Figure = Figure {
        column: "uptime_s",
        metric: "kcache_server_uptime_seconds",
        kind: "gauge",
        help: "Seconds since the server started.",
    };
    const ITEMS: Figure = Figure {
        column: "items",
        metric: "kcache_server_items",
        kind: "gauge",
        help: "Items the server holds, under every prefix.",
    };
    const BYTES: Figure = Figure {
        column: "bytes",
        metric: "kcache_server_bytes",
        kind: "gauge",
        help: "Bytes the server uses for its items (PostgreSQL: the cache table with its indexes).",
    };
    const MAX_BYTES: Figure = Figure {
        column: "max_bytes",
        metric: "kcache_server_max_bytes",
        kind: "gauge",
        help: "The most bytes the server may use for its items.",
    };
    const INDEX_BYTES: Figure = Figure {
        column: "index_bytes",
        metric: "kcache_server_index_bytes",
        kind: "gauge",
        help: "Bytes of the cache table's indexes (PostgreSQL).",
    };
    const EVICTIONS: Figure = Figure {
        column: "evictions",
        metric: "kcache_server_evictions_total",
        kind: "counter",
        help: "Items the server evicted to make room.",
    };
    const HITS: Figure = Figure {
        column: "hits",
        metric: "kcache_server_hits_total",
        kind: "counter",
        help: "Reads that found their key.",
    };
    const MISSES: Figure = Figure {
        column: "misses",
        metric: "kcache_server_misses_total",
        kind: "counter",
        help: "Reads that did not find their key.",
    };
    const CONNECTIONS: Figure = Figure {
        column: "connections",
        metric: "kcache_server_connections",
        kind: "gauge",
        help: "Client connections open on the server.",
    };
}

/// A Prometheus label value, escaped as the text format requires (`\\`, `\"`, `\n`).
pub fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn shown(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

impl Stats {
    /// One JSON object (compact, one line), the absent figures left out.
    pub fn json(&self) -> String {
        use serde_json::{Map, Value};
        fn put(o: &mut Map<String, Value>, name: &str, v: Option<u64>) {
            if let Some(n) = v {
                o.insert(name.to_string(), n.into());
            }
        }
        let mut o = Map::new();
        o.insert("backend".into(), self.backend.clone().into());
        o.insert("location".into(), self.location.clone().into());
        o.insert("prefix".into(), self.prefix.clone().into());
        put(&mut o, "entries", self.entries);
        put(&mut o, "expired", self.expired);
        put(&mut o, "value_bytes", self.value_bytes);
        if let Some(servers) = &self.servers {
            let list = servers
                .iter()
                .map(|s| {
                    let mut m = Map::new();
                    m.insert("address".into(), s.address.clone().into());
                    m.insert("up".into(), s.up.into());
                    if let Some(v) = &s.version {
                        m.insert("version".into(), v.clone().into());
                    }
                    for (fig, v) in s.figures() {
                        put(&mut m, fig.column, v);
                    }
                    if let Some(e) = &s.error {
                        m.insert("error".into(), e.clone().into());
                    }
                    Value::Object(m)
                })
                .collect();
            o.insert("servers".into(), Value::Array(list));
        }
        Value::Object(o).to_string()
    }

    /// The Prometheus text exposition format: one family per figure that has a value, each
    /// with its `# HELP` and `# TYPE` lines; labels `backend`, `prefix` and, per server, `server`.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let base = format!("backend=\"{}\",prefix=\"{}\"", label_value(&self.backend), label_value(&self.prefix));
        fn family(out: &mut String, metric: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
            if samples.is_empty() {
                return;
            }
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{metric}{{{labels}}} {value}");
            }
        }
        let own = |v: Option<u64>| v.map(|n| vec![(base.clone(), n)]).unwrap_or_default();
        family(&mut out, "kcache_entries", "gauge", "Live entries under the prefix.", &own(self.entries));
        family(
            &mut out,
            "kcache_expired_entries",
            "gauge",
            "Expired entries under the prefix not removed yet.",
            &own(self.expired),
        );
        family(
            &mut out,
            "kcache_value_bytes",
            "gauge",
            "Total size of the stored values of the live entries under the prefix.",
            &own(self.value_bytes),
        );
        let servers = self.servers.as_deref().unwrap_or_default();
        let labels = |s: &ServerStats| format!("{base},server=\"{}\"", label_value(&s.address));
        let up: Vec<(String, u64)> = servers.iter().map(|s| (labels(s), u64::from(s.up))).collect();
        family(&mut out, "kcache_server_up", "gauge", "Whether the server could be reached (1) or not (0).", &up);
        let info: Vec<(String, u64)> = servers
            .iter()
            .filter_map(|s| s.version.as_ref().map(|v| (format!("{},version=\"{}\"", labels(s), label_value(v)), 1)))
            .collect();
        family(&mut out, "kcache_server_info", "gauge", "The server's version, as a label.", &info);
        for (i, (fig, _)) in ServerStats::default().figures().into_iter().enumerate() {
            let samples: Vec<(String, u64)> =
                servers.iter().filter_map(|s| s.figures()[i].1.map(|n| (labels(s), n))).collect();
            family(&mut out, fig.metric, fig.kind, fig.help, &samples);
        }
        out
    }

    /// An aligned table: the cache's own figures, one per line, then (for backends with
    /// servers) one row per server, with only the columns that some server has.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let prefix = if self.prefix.is_empty() { "(none)".to_string() } else { self.prefix.clone() };
        let rows = [
            ("backend", self.backend.clone()),
            ("location", self.location.clone()),
            ("prefix", prefix),
            ("entries", shown(self.entries)),
            ("expired", shown(self.expired)),
            ("value_bytes", shown(self.value_bytes)),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "{name:<12} {value}");
        }
        let Some(servers) = self.servers.as_deref().filter(|s| !s.is_empty()) else { return out };
        let mut header: Vec<&str> = vec!["server", "up", "version"];
        let mut cells: Vec<Vec<String>> = servers
            .iter()
            .map(|s| {
                vec![
                    s.address.clone(),
                    if s.up { "yes" } else { "no" }.to_string(),
                    s.version.clone().unwrap_or_else(|| "-".to_string()),
                ]
            })
            .collect();
        let figures = ServerStats::default().figures();
        for (i, (fig, _)) in figures.iter().enumerate() {
            if servers.iter().any(|s| s.figures()[i].1.is_some()) {
                header.push(fig.column);
                for (row, s) in cells.iter_mut().zip(servers) {
                    row.push(shown(s.figures()[i].1));
                }
            }
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| cells.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0))
            .collect();
        let line = |out: &mut String, row: &[&str]| {
            let mut text = String::new();
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c].saturating_sub(cell.chars().count());
                // Text columns (server, up, version) to the left, numbers to the right.
                if c < 3 {
                    let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
                } else {
                    let _ = write!(text, "{}{cell}  ", " ".repeat(pad));
                }
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        out.push('\n');
        line(&mut out, &header);
        for row in &cells {
            let row: Vec<&str> = row.iter().map(String::as_str).collect();
            line(&mut out, &row);
        }
        for s in servers.iter().filter(|s| !s.up) {
            let _ = writeln!(out, "{}: down: {}", s.address, s.error.as_deref().unwrap_or("unreachable"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        Stats {
            backend: "memcached".into(),
            location: "a:1,b:2".into(),
            prefix: "p\"x\\y\nz:".into(),
            entries: None,
            expired: None,
            value_bytes: None,
            servers: Some(vec![
                ServerStats {
                    version: Some("1.6.18".into()),
                    items: Some(3),
                    bytes: Some(120),
                    max_bytes: Some(1024),
                    evictions: Some(0),
                    hits: Some(7),
                    misses: Some(2),
                    connections: Some(1),
                    uptime_s: Some(10),
                    ..ServerStats::up("a:1")
                },
                ServerStats { up: false, error: Some("refused".into()), ..ServerStats::default() },
            ]),
        }
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        assert_eq!(label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let text = sample().prometheus();
        assert!(text.contains("prefix=\"p\\\"x\\\\y\\nz:\""), "{text}");
        assert!(!text.lines().any(|l| l.is_empty()), "{text}");
    }

    #[test]
    fn absent_figures_are_left_out_everywhere() {
        let s = sample();
        let json: serde_json::Value = serde_json::from_str(&s.json()).unwrap();
        assert!(json.get("entries").is_none());
        assert_eq!(json["servers"][1]["up"], false);
        assert!(json["servers"][1].get("items").is_none());
        let text = s.prometheus();
        assert!(!text.contains("kcache_entries"), "{text}");
        assert!(!text.contains("kcache_server_index_bytes"), "{text}");
        assert_eq!(text.matches("# TYPE kcache_server_up gauge").count(), 1);
        assert!(text.contains("kcache_server_up{backend=\"memcached\",prefix=\"p\\\"x\\\\y\\nz:\",server=\"\"} 0"));
        assert!(text.contains("kcache_server_evictions_total{"), "{text}");
        let table = s.table();
        assert!(table.contains("entries      -"), "{table}");
        assert!(!table.contains("index_bytes"), "{table}");
    }

    #[test]
    fn the_server_table_is_aligned() {
        let table = sample().table();
        let rows: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("server")).take(3).collect();
        assert_eq!(rows.len(), 3, "{table}");
        // Numbers are right-aligned: every row ends its `items` column at the same place.
        let end = |row: &str, n: usize| row.split_whitespace().nth(n).map(|w| row.find(w).unwrap() + w.len());
        assert_eq!(rows[0].find("items").map(|i| i + 5), end(rows[1], 4), "{table}");
    }
}
