//! Hostile input: generated input for every parser (proptest), keys and prefixes made to attack
//! each backend's query language or protocol, and passwords that must never be printed.
//!
//! The property tests are bounded (`cases`) to run in a few seconds; a failure they find is
//! kept in `proptest-regressions/hostile.txt` and replayed first on every later run.
// Helpers of the PostgreSQL and Redis tests go unused in a build without those backends.
#![cfg_attr(not(all(feature = "postgresql", feature = "redis")), allow(dead_code, unused_imports))]

#[cfg(feature = "postgresql")]
use crate::util::rig::RigDb;
#[cfg(feature = "redis")]
use crate::util::servers::OwnRedis;
use crate::util::servers::{Batch, OwnMemcached, replies, run_within, sq, status};
use crate::util::{Env, Out, encode, unique};
use kcache::batch::{Op, parse_line};
use kcache::ttl::{MAX_TTL, Ttl};
use kcache::value;
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// `n` cases, times `KCACHE_TEST_FUZZ_SCALE` (default 1) for a longer hunt.
fn cases(n: u32) -> ProptestConfig {
    let scale = std::env::var("KCACHE_TEST_FUZZ_SCALE").ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(1);
    let default = ProptestConfig::default();
    let scale = scale.max(1);
    ProptestConfig {
        cases: n.saturating_mul(scale),
        max_global_rejects: default.max_global_rejects.saturating_mul(scale),
        ..default
    }
}

// ---- TTL -------------------------------------------------------------------------------------

const UNITS: [(&str, u128); 6] = [
    ("", 1_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// `nanos` as plain decimal seconds with nine fraction digits.
fn decimal_seconds(nanos: u128) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// What SPEC accepts: digits with at most one `.` (and at least one digit), then a unit.
fn ttl_grammar(s: &str) -> bool {
    let number = ["ms", "s", "m", "h", "d"].iter().find_map(|u| s.strip_suffix(u)).unwrap_or(s);
    number.bytes().any(|b| b.is_ascii_digit())
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.matches('.').count() <= 1
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn ttl_parser_never_panics_and_accepts_only_its_grammar(s in prop_oneof![
        any::<String>(),
        "[-+ .0-9eE_x]{0,12}(ms|s|m|h|d|S|us|)",
        "[0-9]{0,22}\\.?[0-9]{0,22}(ms|s|m|h|d)?",
    ]) {
        if let Ok(t) = s.parse::<Ttl>() {
            prop_assert!(ttl_grammar(&s), "{s:?} was accepted");
            prop_assert!(t.duration() <= MAX_TTL, "{s:?} gives {t:?}");
        }
    }

    #[test]
    fn ttl_exact_decimals_round_trip_and_display_reparses(nanos in 0..=MAX_TTL.as_nanos()) {
        let t: Ttl = decimal_seconds(nanos).parse().map_err(TestCaseError::fail)?;
        prop_assert_eq!(t.duration().as_nanos(), nanos);
        // What kcache prints for a TTL is itself a TTL, within float precision.
        let again: Ttl = t.to_string().parse().map_err(TestCaseError::fail)?;
        let diff = again.duration().abs_diff(t.duration());
        prop_assert!(diff <= Duration::from_micros(1), "{t} re-parses {diff:?} away");
    }

    #[test]
    fn ttl_units_scale_and_order_exactly(
        a in 0u64..4_000_000_000_000, ua in 0..UNITS.len(),
        b in 0u64..4_000_000_000_000, ub in 0..UNITS.len(),
    ) {
        let parse = |n: u64, u: usize| -> (String, Result<Ttl, String>) {
            // Scale the number down so every unit gets values around its whole range.
            let n = u128::from(n) * 1_000_000_000 / UNITS[u].1.max(1);
            let text = format!("{n}{}", UNITS[u].0);
            let parsed = text.parse::<Ttl>();
            (text, parsed)
        };
        let ((ta, pa), (tb, pb)) = (parse(a, ua), parse(b, ub));
        let exact = |text: &str, u: usize| -> u128 {
            text.trim_end_matches(char::is_alphabetic).parse::<u128>().expect("digits") * UNITS[u].1
        };
        let (na, nb) = (exact(&ta, ua), exact(&tb, ub));
        for (text, parsed, nanos) in [(&ta, &pa, na), (&tb, &pb, nb)] {
            match parsed {
                Ok(t) => prop_assert_eq!(t.duration().as_nanos(), nanos, "{}", text),
                Err(e) => {
                    prop_assert!(nanos > MAX_TTL.as_nanos(), "{text:?} refused: {e}");
                    prop_assert!(e.contains(text.as_str()), "the message names the input: {}", e);
                }
            }
        }
        if let (Ok(x), Ok(y)) = (pa, pb) {
            prop_assert_eq!(x.cmp(&y), na.cmp(&nb), "{} vs {}", ta, tb);
        }
    }
}

// ---- INI (Kinto's kinto.ini) -----------------------------------------------------------------

fn ini_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("kinto.cache_url"),
        Just("cache_url"),
        Just("kinto.cache_prefix"),
        Just("cache_prefix"),
        Just("kinto.cache_backend"),
        Just("kinto.cache_hosts"),
        Just("kinto.cache_pool_size"),
        Just("Kinto.Cache_URL"),
        Just("kinto.cache_"),
        Just("here"),
        Just("x"),
        Just(""),
    ];
    let value = "[a-zA-Z0-9 %()_:/@.#;=\\[\\]-]{0,24}";
    prop_oneof![
        3 => (key, prop_oneof![Just(" = "), Just("="), Just(": "), Just(" ")], value)
            .prop_map(|(k, d, v)| format!("{k}{d}{v}")),
        1 => prop_oneof![
            Just("[app:main]".to_string()),
            Just("[DEFAULT]".to_string()),
            Just("[server:main]".to_string()),
            Just("[app:main".to_string()),
            Just(" [app:main]".to_string()),
        ],
        1 => value.prop_map(|v| format!("    {v}")),
        1 => "[#;][ -~]{0,20}",
        1 => Just(String::new()),
    ]
}

fn ini_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(ini_line(), 0..12).prop_map(|lines| {
            let mut text = String::from("[app:main]\n");
            text.push_str(&lines.join("\n"));
            text
        }),
        prop::collection::vec(ini_line(), 0..12).prop_map(|lines| lines.join("\r\n")),
    ]
}

/// A value the INI reader must give back as it is: no `%`, no line break, no comment or
/// delimiter at the edges, no surrounding spaces.
fn plain_value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:/.@+-]([A-Za-z0-9_:/.@+= -]{0,30}[A-Za-z0-9_:/.@+-])?"
}

proptest! {
    #![proptest_config(cases(1500))]

    #[test]
    fn ini_reader_never_panics(text in ini_text()) {
        if let Ok(found) = kcache::settings::ini::cache_settings_with_keys(&text, Path::new("/etc/kinto/kinto.ini")) {
            for (name, key, _) in found {
                prop_assert!(!name.is_empty());
                prop_assert!(key.starts_with("kinto.cache_") || key.starts_with("cache_"), "{key}");
            }
        }
    }

    #[test]
    fn ini_plain_values_come_back_as_they_are(url in plain_value(), prefix in plain_value(), percent in plain_value()) {
        let text = format!(
            "[DEFAULT]\nother = 1\n\n[app:main]\nuse = egg:kinto\nkinto.cache_url = {url}\n# a comment\n\
             cache_prefix = {prefix}\nkinto.cache_backend = a%%{percent}\n\n[server:main]\nport = %(http_port)s\n"
        );
        let found = kcache::settings::ini::cache_settings_with_keys(&text, Path::new("/etc/kinto/kinto.ini"))
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let expected = vec![
            ("url".to_string(), "kinto.cache_url".to_string(), url),
            ("prefix".to_string(), "cache_prefix".to_string(), prefix),
            ("backend".to_string(), "kinto.cache_backend".to_string(), format!("a%{percent}")),
        ];
        prop_assert_eq!(found, expected);
    }

    #[test]
    fn ini_errors_never_show_a_value(secret in "[A-Za-z0-9]{10,16}", bad in prop_oneof![
        Just("%"), Just("%(nope)s"), Just("%("), Just("%(here"), Just("%x"),
    ]) {
        let text = format!("[app:main]\nkinto.cache_url = postgresql://u:{secret}@h/db{bad}\n");
        let e = kcache::settings::ini::cache_settings_with_keys(&text, Path::new("/k.ini"))
            .expect_err("a bad placeholder is an error");
        let shown = format!("{e:#}");
        prop_assert!(!shown.contains(&secret), "{}", shown);
        prop_assert!(shown.contains("kinto.cache_url"), "the message names the key: {}", shown);
    }
}

// ---- TOML ------------------------------------------------------------------------------------

/// A TOML value: any type, strings without `@` or `=` (so that no URL password is registered
/// as a secret in this test process, where other tests render messages).
fn toml_value() -> impl Strategy<Value = String> {
    let text = "[a-z0-9 ./:%_é-]{0,16}";
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop_oneof![Just(-1i64), Just(0), Just(1), Just(25), Just(10_000), Just(10_001)].prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        text.prop_map(|s| serde_json::to_string(&s).expect("json")),
        prop::collection::vec(text, 0..3).prop_map(|v| format!(
            "[{}]",
            v.iter().map(|s| serde_json::to_string(s).expect("json")).collect::<Vec<_>>().join(", ")
        )),
        Just("{}".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
    ]
}

fn toml_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("backend"),
        Just("url"),
        Just("hosts"),
        Just("prefix"),
        Just("max_size_bytes"),
        Just("pool_size"),
        Just("max_overflow"),
        Just("maxoverflow"),
        Just("max_backlog"),
        Just("pool_recycle"),
        Just("pool_timeout"),
        Just("path"),
        Just("pool_szie"),
    ];
    prop_oneof![
        any::<String>().prop_filter("no secret-looking URL", |s| !s.contains('@') && !s.contains('=')),
        (prop_oneof![Just("[cache]"), Just("[kinto]"), Just("")], prop::collection::vec((key, toml_value()), 0..8))
            .prop_map(|(table, entries)| {
                let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{table}\n{}\n", body.join("\n"))
            }),
    ]
}

proptest! {
    #![proptest_config(cases(1500))]

    #[test]
    fn toml_loader_never_panics_and_checks_every_setting(text in toml_text()) {
        let Ok(layer) = kcache::settings::toml::layer(&text, "t.toml", None) else { return Ok(()) };
        if let Ok(s) = kcache::settings::Settings::from_layer(&layer) {
            prop_assert!((1..=10_000).contains(&s.pool_size), "{text}");
            prop_assert!(s.max_overflow <= 10_000, "{text}");
            prop_assert!(s.pool_timeout.is_none_or(|t| t >= Duration::from_millis(1)), "{text}");
            prop_assert!(s.pool_recycle.is_none_or(|t| t >= Duration::from_millis(1)), "{text}");
            prop_assert!(!s.prefix.chars().any(char::is_control), "{text}");
        }
    }

    #[test]
    fn toml_unknown_keys_are_named(key in "[a-z_]{1,12}", value in toml_value()) {
        prop_assume!(kcache::settings::canonical(&key).is_none() || key == "maxoverflow");
        let text = format!("[cache]\n{key} = {value}\n");
        if let Err(e) = kcache::settings::toml::layer(&text, "t.toml", None) {
            let shown = e.to_string();
            prop_assert!(shown.contains(&format!("'{key}'")) || shown.contains("line"), "{}", shown);
        } else {
            prop_assert!(false, "unknown key {key} was accepted");
        }
    }
}

// ---- batch lines -----------------------------------------------------------------------------

/// Text for a batch word: anything but control characters (a key refuses them; a line cannot
/// hold a line break) and NUL.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| s.chars().filter(|c| !c.is_control()).collect::<String>()),
        "[-'\" \\\\#$*?;&|<>(){}\\[\\]~`!%=a-z]{0,12}",
    ]
}

fn ttl_text() -> impl Strategy<Value = (String, Ttl)> {
    (0..=MAX_TTL.as_nanos()).prop_map(|n| {
        let text = decimal_seconds(n);
        let ttl = text.parse().expect("a valid TTL");
        (text, ttl)
    })
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn batch_parser_never_panics(line in prop_oneof![
        any::<String>(),
        "(get|set|ttl|expire|delete|flush|purge|ping|migrate)( [-'\" \\\\#a-z0-9.]{0,10}){0,4}",
    ]) {
        let _ = parse_line(&line);
    }

    #[test]
    fn batch_words_are_split_as_a_posix_shell_splits_them(key in word(), value in word(), (ttl_s, ttl) in ttl_text()) {
        prop_assume!(!key.is_empty());
        let (k, v) = (sq(&key), sq(&value));
        let set = parse_line(&format!("set -- {k} {v} {ttl_s}"));
        if value == "-" {
            // Standard input is the batch's own input: refused, as SPEC says.
            prop_assert!(set.is_err_and(|e| e.contains("not allowed in a batch")));
        } else {
            let set = set.map_err(TestCaseError::fail)?;
            prop_assert_eq!(set, Some(Op::Set { key: key.clone(), value: value::encode_string(&value), ttl }));
        }
        let json = serde_json::to_string(&value).expect("json");
        let set = parse_line(&format!("  set --json -- {k} {} {ttl_s}  ", sq(&json))).map_err(TestCaseError::fail)?;
        prop_assert_eq!(set, Some(Op::Set { key: key.clone(), value: value::encode_string(&value), ttl }));
        prop_assert_eq!(parse_line(&format!("get -- {k}")), Ok(Some(Op::Get { key: key.clone() })));
        prop_assert_eq!(parse_line(&format!("delete --json -- {k}")), Ok(Some(Op::Delete { key: key.clone() })));
        prop_assert_eq!(parse_line(&format!("ttl --ms -- {k}")), Ok(Some(Op::Ttl { key: key.clone(), ms: true })));
        prop_assert_eq!(parse_line(&format!("expire -- {k} {ttl_s}")), Ok(Some(Op::Expire { key, ttl })));
        // Double quotes and backslashes, as a shell reads them, give the same word.
        let dq = format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "\\$").replace('`', "\\`"));
        if value != "-" {
            let set = parse_line(&format!("set -- k {dq} 1")).map_err(TestCaseError::fail)?;
            let one = "1".parse().expect("ttl");
            prop_assert_eq!(set, Some(Op::Set { key: "k".into(), value: value::encode_string(&value), ttl: one }));
        }
    }

    /// The shortcut for plain lines (`get K`, `set K V T`...) reads every line exactly as the
    /// clap definitions do: the same command, or the error clap gives.
    #[test]
    fn batch_plain_lines_parse_as_clap_parses_them(
        command in "(get|set|ttl|expire|delete|flush|purge|ping|gett|sett)",
        words in proptest::collection::vec(prop_oneof![
            word(),
            "[0-9]{1,4}(\\.[0-9]{1,3})?(ms|s|m|h|d|x)?",
            "-{1,2}[a-z]{0,5}",
            Just("-".to_string()),
            Just("--".to_string()),
        ], 0..5),
    ) {
        let mut all = vec![command];
        all.extend(words);
        let line = all.iter().map(|w| sq(w)).collect::<Vec<_>>().join(" ");
        prop_assume!(all.iter().all(|w| !w.is_empty()));
        let through_clap = kcache::batch::parse_words_with_clap(&all);
        let parsed = parse_line(&line);
        match through_clap {
            Ok(op) => prop_assert_eq!(parsed, Ok(Some(op)), "{}", line),
            Err(e) => prop_assert_eq!(parsed, Err(e), "{}", line),
        }
    }

    /// A command line parsed on its command alone (the fast path of `kcache::cli::parse`) gives
    /// what the whole tree gives: the same command and options, or clap's same error.
    #[test]
    fn one_command_parses_as_the_whole_tree_parses(
        command in "(get|set|ttl|expire|delete|flush|keys|stats|batch|dump|load|copy|diff|memo|migrate|ping|purge|completions|gett|help)",
        words in proptest::collection::vec(prop_oneof![
            word(),
            "[0-9]{1,4}(\\.[0-9]{1,3})?(ms|s|m|h|d|x)?",
            "-{1,2}[a-z]{0,5}",
            prop_oneof![
                Just("-q"), Just("-v"), Just("-c"), Just("--prefix"), Just("--prefix=p:"), Just("--url"),
                Just("-b"), Just("--json"), Just("-n"), Just("--ms"), Just("--key"), Just("--stale"),
                Just("--force"), Just("--env"), Just("--wait"), Just("--lease"), Just("--cwd"),
                Just("--discard-failures"), Just("--match"), Just("--dry-run"), Just("-j"), Just("-k"),
                Just("--to"), Just("--help"), Just("-V"), Just("--version"), Just("bash"),
            ].prop_map(str::to_string),
            Just("-".to_string()),
            Just("--".to_string()),
        ], 0..7),
    ) {
        use clap::CommandFactory;
        let mut args = vec![std::ffi::OsString::from("kcache"), command.into()];
        args.extend(words.into_iter().map(std::ffi::OsString::from));
        let fast = kcache::cli::parse(&args);
        let whole = kcache::cli::parse_whole(&mut kcache::cli::Cli::command(), &args);
        match (fast, whole) {
            (Ok(a), Ok(b)) => prop_assert_eq!(format!("{a:?}"), format!("{b:?}"), "{:?}", args),
            (Err(a), Err(b)) => {
                prop_assert_eq!(a.kind(), b.kind(), "{:?}", args);
                prop_assert_eq!(a.to_string(), b.to_string(), "{:?}", args);
            }
            (a, b) => prop_assert!(false, "{:?}: {:?} against {:?}", args, a.map(|_| ()), b.map(|_| ())),
        }
    }

    #[test]
    fn batch_comments_and_blank_lines_are_skipped(indent in "[ \t]{0,4}", rest in "[ -~]{0,30}") {
        prop_assert_eq!(parse_line(&format!("{indent}#{rest}")), Ok(None));
        prop_assert_eq!(parse_line(&indent), Ok(None));
    }
}

// ---- values ----------------------------------------------------------------------------------

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "-?[1-9][0-9]{15,40}".prop_map(|digits| serde_json::from_str(&digits).expect("a big integer")),
        "-?[0-9]\\.[0-9]{1,20}[eE][-+]?[0-9]{1,3}".prop_filter_map("finite", |t| serde_json::from_str::<Value>(&t)
            .ok()
            .filter(|_| t.parse::<f64>().is_ok_and(f64::is_finite))),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// The same document, numbers compared as Python compares them after `json.loads`: integers
/// exactly (`-0` is 0), floats by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.to_string(), y.to_string());
            let float = |s: &str| s.contains(['.', 'e', 'E']);
            if float(&x) || float(&y) {
                float(&x) == float(&y) && x.parse::<f64>().ok() == y.parse::<f64>().ok()
            } else {
                let norm = |s: &str| {
                    if s.trim_start_matches('-').bytes().all(|b| b == b'0') { "0".to_string() } else { s.to_string() }
                };
                norm(&x) == norm(&y)
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
        }
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(cases(1500))]

    #[test]
    fn encoded_values_are_ascii_and_parse_back_to_the_same_document(doc in json_value()) {
        let encoded = value::encode(&doc).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(encoded.is_ascii(), "{}", encoded);
        let parsed: Value = serde_json::from_str(&encoded).map_err(|e| TestCaseError::fail(format!("{encoded}: {e}")))?;
        prop_assert!(same(&doc, &parsed), "{doc} became {encoded}");
        prop_assert_eq!(value::encode(&parsed).map_err(|e| TestCaseError::fail(e.to_string()))?, encoded.clone());
        // What `get --json` and a batch print of it is the same document again.
        let stored = value::parse_stored(&encoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(same(&doc, &stored));
    }

    #[test]
    fn encode_json_never_panics_and_is_stable(text in prop_oneof![
        any::<String>(),
        "[\\[\\]{}\",:0-9.eE+ tfnrul\\\\-]{0,30}",
        "-?[0-9]{1,3}(\\.[0-9]{0,3})?([eE][-+]?[0-9]{1,4})?",
    ]) {
        if let Ok(encoded) = value::encode_json(&text) {
            prop_assert!(encoded.is_ascii(), "{}", encoded);
            prop_assert_eq!(value::encode_json(&encoded).map_err(|e| TestCaseError::fail(e.to_string()))?, encoded);
        }
    }

    #[test]
    fn plain_strings_round_trip_exactly(s in any::<String>()) {
        let encoded = value::encode_string(&s);
        prop_assert!(encoded.is_ascii());
        prop_assert_eq!(serde_json::from_str::<String>(&encoded).map_err(|e| TestCaseError::fail(e.to_string()))?, s.clone());
        prop_assert!(matches!(value::show(&encoded, false), Ok(value::Shown::Raw(shown)) if shown == s));
    }
}

// ---- keys and prefixes that attack a backend -------------------------------------------------

/// Prefixes made of what SQL quoting, LIKE and Redis globs give a meaning to.
const HOSTILE_PREFIXES: &[&str] = &[
    "%",
    "_",
    "\\",
    "'",
    "\"",
    ";",
    "*",
    "?",
    "[",
    "]",
    "[a-z]",
    "[^x]",
    "a\\",
    "\\*",
    "\\%",
    "\\_",
    "%_\\*?[",
    "'; DELETE FROM cache; --",
    "\" OR 1=1 --",
    "') OR ('1'='1",
    "$1",
    "$$",
    "E'\\''",
    "é%",
    "{a,b}",
    "^",
    "-",
    ".*",
    "|",
    "(",
    ")",
    "/*",
    "--",
    "%%",
    "__",
];

/// Keys a wildcard reading of `p` (LIKE, a glob, a regex, case folding, escapes) would take.
fn decoys(stem: &str, p: &str) -> Vec<String> {
    let mut out = vec![format!("{stem}{p}"), format!("{stem}{p}k"), format!("{stem}{p}{p}")];
    for (i, c) in p.char_indices() {
        let (before, after) = (&p[..i], &p[i + c.len_utf8()..]);
        out.push(format!("{stem}{before}Z{after}k"));
        out.push(format!("{stem}{before}{after}k"));
        out.push(format!("{stem}{before}ZZ{after}k"));
        out.push(format!("{stem}{before}\\{c}{after}k"));
    }
    out.push(format!("{stem}{}k", p.to_uppercase()));
    out.push(format!("{stem}x{p}k"));
    out.push(format!("{stem}k"));
    out
}

/// Sets every key, then flushes each hostile prefix in turn: each flush must remove exactly the
/// keys that start with it, and nothing else.
fn prefixed_flush_removes_exactly_the_prefix(env: &Env) {
    let stem = format!("{}:", unique("hp"));
    let mut keys: Vec<String> = HOSTILE_PREFIXES.iter().flat_map(|p| decoys(&stem, p)).collect();
    keys.push(format!("{}:other", unique("hp")));
    keys.sort();
    keys.dedup();
    let input: String = keys.iter().map(|k| format!("set {} {} 600\n", sq(k), sq(k))).collect();
    env.run_stdin(&["batch"], Some(input.as_bytes())).ok();
    let gets: String = keys.iter().map(|k| format!("get {}\n", sq(k))).collect();
    let mut left: Vec<&String> = keys.iter().collect();
    for p in HOSTILE_PREFIXES {
        let prefix = format!("{stem}{p}");
        env.run(&["--prefix", &prefix, "flush"]).ok().stdout_is("");
        left.retain(|k| !k.starts_with(&prefix));
        let out = env.run_stdin(&["batch"], Some(gets.as_bytes()));
        out.ok();
        let present: Vec<&String> =
            keys.iter().zip(replies(&out.stdout)).filter(|(_, r)| status(r) == 0).map(|(k, _)| k).collect();
        assert_eq!(present, left, "after flushing the prefix {prefix:?}");
        for (k, r) in keys.iter().zip(replies(&out.stdout)) {
            if status(&r) == 0 {
                assert_eq!(r["value"].as_str(), Some(k.as_str()), "the value of {k:?}");
            }
        }
    }
}

#[test]
fn hostile_prefixed_flush_sqlite() {
    prefixed_flush_removes_exactly_the_prefix(&Env::new());
}

#[cfg(feature = "postgresql")]
#[test]
fn hostile_prefixed_flush_postgresql() {
    let Some(db) = RigDb::create() else { return };
    db.migrate();
    prefixed_flush_removes_exactly_the_prefix(&db.env());
}

#[cfg(feature = "redis")]
#[test]
fn hostile_prefixed_flush_redis() {
    let Some(url) = crate::util::rig::server("KCACHE_TEST_REDIS_URL") else { return };
    prefixed_flush_removes_exactly_the_prefix(
        &Env::new().var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_URL", &url),
    );
}

/// Keys and values that break naive quoting: SQL, shell, JSON, escapes.
const HOSTILE_WORDS: &[&str] = &[
    "'",
    "''",
    "\\",
    "\\'",
    "\\\\'",
    "'; DROP TABLE cache; --",
    "\"; DROP TABLE cache; --",
    "\"",
    "$$",
    "$1",
    "E'x'",
    "%",
    "_",
    "a b",
    "/*",
    "*/",
    "--",
    "NULL",
    "\\x00",
    "\\n",
    "?",
    "*",
    "[",
    "{}",
    "é",
    "😀",
    "\u{2028}",
    "\u{feff}",
];

/// Every hostile word as a key and a value, one-shot and through batch groups: each reads back
/// exactly, and nothing else changed.
fn hostile_keys_round_trip(env: &Env, with_spaces: bool) -> Vec<String> {
    let words: Vec<&str> = HOSTILE_WORDS.iter().copied().filter(|w| with_spaces || !w.contains(' ')).collect();
    let key = |w: &str| format!("k{w}");
    for w in words.iter().take(6) {
        env.run(&["set", "--", &key(w), w, "600"]).ok();
        env.run(&["get", "--", &key(w)]).ok().stdout_is(&format!("{w}\n"));
        env.run(&["set", "--json", "--", &format!("j{w}"), &serde_json::to_string(w).expect("json"), "600"]).ok();
        env.run(&["delete", "--", &format!("j{w}")]).ok().stdout_is(&format!("{w}\n"));
    }
    for jobs in ["1", "3"] {
        let mut input = String::new();
        for w in &words {
            // `--`: a word `--` (quoted or not, the same word) ends the options, as for the CLI.
            input.push_str(&format!("set -- {} {} 600\n", sq(&key(w)), sq(w)));
            let json = serde_json::to_string(w).expect("json");
            input.push_str(&format!("set --json -- {} {} 600\n", sq(&format!("j{w}")), sq(&json)));
        }
        for w in &words {
            let (k, j) = (sq(&key(w)), sq(&format!("j{w}")));
            input.push_str(&format!("get -- {k}\nttl -- {k}\ndelete -- {j}\nget -- {j}\n"));
        }
        let out = env.run_stdin(&["batch", "--jobs", jobs], Some(input.as_bytes()));
        out.ok();
        let r = replies(&out.stdout);
        assert_eq!(r.len(), words.len() * 6);
        let reads = &r[words.len() * 2..];
        for (i, w) in words.iter().enumerate() {
            let [get, ttl, delete, gone] = &reads[i * 4..i * 4 + 4] else { unreachable!() };
            assert_eq!(get["value"].as_str(), Some(*w), "jobs {jobs}: get {w:?}: {get}");
            assert!((590..=600).contains(&ttl["value"].as_i64().unwrap_or(0)), "jobs {jobs}: ttl {w:?}: {ttl}");
            assert_eq!(delete["value"].as_str(), Some(*w), "jobs {jobs}: delete j{w:?}: {delete}");
            assert_eq!(status(gone), 1, "jobs {jobs}: j{w:?} deleted: {gone}");
        }
    }
    words.iter().map(|w| key(w)).collect()
}

#[test]
fn hostile_keys_and_values_sqlite() {
    let env = Env::new();
    let keys = hostile_keys_round_trip(&env, true);
    let rows = crate::util::rows(&env.default_db());
    assert_eq!(rows, keys.len() as i64, "exactly the keys written, no table dropped");
}

#[cfg(feature = "postgresql")]
#[test]
fn hostile_keys_and_values_postgresql() {
    let Some(mut db) = RigDb::create() else { return };
    db.migrate();
    // Batch groups send literals in the query text: safe whatever the quoting settings say.
    let name = db.name.clone();
    db.sql()
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET standard_conforming_strings = off; \
             ALTER DATABASE {name} SET backslash_quote = on"
        ))
        .expect("settings");
    let env = db.env();
    let keys = hostile_keys_round_trip(&env, true);
    let mut stored: Vec<String> =
        db.sql().query("SELECT key FROM cache", &[]).expect("keys").iter().map(|r| r.get(0)).collect();
    stored.sort();
    let mut expected = keys;
    expected.sort();
    assert_eq!(stored, expected, "exactly the keys written, byte for byte");
}

#[cfg(feature = "redis")]
#[test]
fn hostile_keys_and_values_redis() {
    let Some(url) = crate::util::rig::server("KCACHE_TEST_REDIS_URL") else { return };
    let prefix = format!("{}:", unique("hk"));
    let env =
        Env::new().var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_URL", &url).var("KINTO_CACHE_PREFIX", &prefix);
    let keys = hostile_keys_round_trip(&env, true);
    let mut conn = crate::util::servers::redis_client(&url);
    let pattern = format!("{prefix}*");
    let mut stored: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).expect("keys");
    stored.sort();
    let mut expected: Vec<String> = keys.iter().map(|k| format!("{prefix}{k}")).collect();
    expected.sort();
    assert_eq!(stored, expected);
}

#[test]
fn hostile_keys_and_values_memcached() {
    let Some(server) = OwnMemcached::start() else { return };
    let env = Env::new().var("KINTO_CACHE_BACKEND", "memcached").var("KINTO_CACHE_HOSTS", &server.host());
    let keys = hostile_keys_round_trip(&env, false);
    assert_eq!(server.stat("curr_items"), keys.len() as u64);
}

// ---- memcached: nothing hostile reaches the wire ---------------------------------------------

#[test]
fn memcached_protocol_injection_never_reaches_the_wire_through_a_batch() {
    let Some(server) = OwnMemcached::start() else { return };
    assert_eq!(server.raw("set victim 16 0 39\r\n{\"value\":\"still here\",\"ttl\":9999999999}\r\n"), ["STORED"]);
    let env = Env::new().var("KINTO_CACHE_BACKEND", "memcached").var("KINTO_CACHE_HOSTS", &server.host());
    let long = "k".repeat(251);
    let bad_lines = [
        "get 'x delete victim'".to_string(),
        "set 'x delete victim' v 60".to_string(),
        "delete 'a b'".to_string(),
        "ttl ' '".to_string(),
        "expire 'tab\there' 10".to_string(),
        "get 'x\rdelete victim'".to_string(),
        "set 'x\r\ndelete victim' v 60".replace("\r\n", "\r"),
        "get 'del\u{7f}'".to_string(),
        "get ''".to_string(),
        format!("get {long}"),
        "set 'flush_all' v 60".replace("flush_all", "a flush_all"),
    ];
    let connections = server.stat("total_connections");
    for jobs in ["1", "2"] {
        let input: String = bad_lines.iter().map(|l| format!("{l}\n")).collect();
        let out = env.run_stdin(&["batch", "--keep-going", "--jobs", jobs], Some(input.as_bytes()));
        out.code(2);
        let r = replies(&out.stdout);
        assert_eq!(r.len(), bad_lines.len());
        for reply in &r {
            assert_eq!(status(reply), 2, "{reply}");
        }
    }
    // (Each `stat` opens a connection of its own, counted.)
    assert_eq!(server.stat("total_connections"), connections + 1, "no bad line opened a connection");
    // Good lines among bad ones: only the good ones are sent.
    let input =
        "set good1 v 60\nget 'x delete victim'\nset good2 v 60\ndelete 'a b'\nget good1\nset 'x\rflush_all' v 1\n";
    let out = env.run_stdin(&["batch", "--keep-going"], Some(input.as_bytes()));
    out.code(2);
    let r = replies(&out.stdout);
    assert_eq!(r.iter().map(status).collect::<Vec<_>>(), [0, 2, 0, 2, 0, 2], "{}", out.stdout);
    assert_eq!(server.stat("cmd_flush"), 0);
    assert_eq!(server.stat("delete_hits") + server.stat("delete_misses"), 0);
    assert!(server.raw("get victim\r\n").len() > 1, "the victim is still there");
    // A prefix with a space: refused before anything is sent.
    let before = server.stat("total_connections");
    let spaced = env.var("KINTO_CACHE_PREFIX", "a delete victim ");
    let out = spaced.run_stdin(&["batch", "--keep-going"], Some(b"get k\nset k v 60\n"));
    out.code(2);
    assert_eq!(server.stat("total_connections"), before + 1);
}

// ---- secrets ---------------------------------------------------------------------------------

/// Asserts that no form of `secret` appears in what a run printed.
#[track_caller]
fn never_printed(out: &Out, secret: &str, what: &str) {
    for form in [secret.to_string(), encode(secret)] {
        assert!(
            !out.stdout.contains(&form) && !out.stderr.contains(&form),
            "{what}: kcache {:?} printed a password:\n--- stdout\n{}\n--- stderr\n{}",
            out.args,
            out.stdout,
            out.stderr
        );
    }
}

/// Runs `get k` with and without `-v`, and a batch of two lines, and checks each failed with one
/// of `statuses` and printed no form of any of `secrets`.
#[track_caller]
#[cfg(any(feature = "postgresql", feature = "redis"))]
fn fails_without_secrets(env: &Env, extra: &[&str], statuses: &[i32], secrets: &[&str], what: &str) {
    let mut runs = Vec::new();
    for verbose in [false, true] {
        let mut args: Vec<&str> = if verbose { vec!["-v"] } else { vec![] };
        args.extend_from_slice(extra);
        args.extend_from_slice(&["get", "k"]);
        let out = run_within(env, &args, None, Duration::from_secs(15));
        if !verbose {
            out.one_error_line();
        }
        runs.push(out);
    }
    let mut batch = extra.to_vec();
    batch.push("batch");
    runs.push(run_within(env, &batch, Some(b"get k\nset k v 60\n"), Duration::from_secs(15)));
    for out in &runs {
        assert!(
            statuses.contains(&out.status),
            "{what}: kcache {:?} ended with {}:\n{}",
            out.args,
            out.status,
            out.stderr
        );
        for secret in secrets {
            never_printed(out, secret, what);
        }
    }
}

/// A password that is an ordinary word (`postgres`, as in the README's INI example, or `cache`)
/// is hidden where it is written (the URL's password field) and nowhere else: the message keeps
/// its words (`kcache: error:`, `postgresql://postgres@...`) and so does not show the password by
/// blanking it out everywhere it occurs.
#[cfg(all(feature = "postgresql", feature = "redis"))]
#[test]
fn a_password_that_is_an_ordinary_word_leaves_messages_intact() {
    let port = crate::util::servers::free_port();
    for password in ["postgres", "cache", "error"] {
        let url = format!("postgresql://postgres:{password}@127.0.0.1:{port}/postgres");
        let env = Env::new().var("KINTO_CACHE_BACKEND", "postgresql").var("KINTO_CACHE_URL", &url);
        let out = run_within(&env, &["get", "a"], None, Duration::from_secs(15));
        out.code(3).one_error_line();
        let expected =
            format!("kcache: error: get 'a' on postgresql at postgresql://postgres@127.0.0.1:{port}/postgres: ");
        assert!(out.stderr.starts_with(&expected), "{password}: {}", out.stderr);
        assert!(!out.stderr.contains("***"), "{password}: {}", out.stderr);
        let out = run_within(&env, &["-v", "get", "a"], None, Duration::from_secs(15));
        out.code(3);
        assert!(out.stderr.contains(&format!("postgresql://postgres:***@127.0.0.1:{port}/postgres")), "{}", out.stderr);
        assert!(!out.stderr.contains(&format!(":{password}@")), "{}", out.stderr);
        for line in out.stderr.lines() {
            assert!(line.starts_with("kcache: "), "{password}: {line}");
        }

        let url = format!("redis://:{password}@127.0.0.1:{port}/0");
        let env = Env::new().var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_URL", &url);
        let out = run_within(&env, &["get", "a"], None, Duration::from_secs(15));
        out.code(3).one_error_line();
        let expected = format!("kcache: error: get 'a' on redis at redis://:***@127.0.0.1:{port}/0: ");
        assert!(out.stderr.starts_with(&expected), "{password}: {}", out.stderr);
        assert!(!out.stderr.contains(&format!(":{password}@")), "{}", out.stderr);
    }
}

#[cfg(feature = "postgresql")]
#[test]
fn postgresql_passwords_never_appear_in_any_failure() {
    let Some(mut db) = RigDb::create() else { return };
    let right = format!("R1ght:{}@/%?", unique("pw"));
    let wrong = format!("Wr0ng:{}@/%?", unique("pw"));
    let role = db.role(Some(&right));
    let closed = format!("127.0.0.1:{}", crate::util::servers::free_port());
    let address = db.tcp_address();
    let name = db.name.clone();
    let url = |pw: &str, at: &str, query: &str| {
        let q = if query.is_empty() { String::new() } else { format!("?{query}") };
        format!("postgresql://{role}:{}@{at}/{name}{q}", encode(pw))
    };
    let bare = |at: &str, query: &str| {
        let q = if query.is_empty() { String::new() } else { format!("?{query}") };
        format!("postgresql://{role}@{at}/{name}{q}")
    };
    let tls = "sslmode=verify-full&sslrootcert=system";
    let localhost = address.replace("127.0.0.1", "localhost");
    // (failure, URL with the password, URL without it, password to give, statuses)
    let cases: Vec<(&str, String, String, &str, &[i32])> = vec![
        ("refused", url(&right, &closed, ""), bare(&closed, ""), &right, &[3]),
        ("wrong password", url(&wrong, &address, ""), bare(&address, ""), &wrong, &[4]),
        ("bad port", url(&right, "127.0.0.1:99999", ""), bare("127.0.0.1:99999", ""), &right, &[2]),
        ("bad sslmode", url(&right, &address, "sslmode=bogus"), bare(&address, "sslmode=bogus"), &right, &[2]),
        ("TLS failure", url(&right, &localhost, tls), bare(&localhost, tls), &right, &[3, 4]),
        ("missing table", url(&right, &address, ""), bare(&address, ""), &right, &[4]),
    ];
    let secrets = [right.as_str(), wrong.as_str()];
    for (failure, with_password, without, password, statuses) in &cases {
        let base = Env::new().var("KINTO_CACHE_BACKEND", "postgresql").var("KINTO_CACHE_POOL_TIMEOUT", "2");
        // KINTO_CACHE_URL
        let env = Env::new().var("KINTO_CACHE_BACKEND", "postgresql").var("KINTO_CACHE_URL", with_password);
        fails_without_secrets(&env, &[], statuses, &secrets, &format!("{failure}, KINTO_CACHE_URL"));
        // --url
        fails_without_secrets(&base, &["--url", with_password], statuses, &secrets, &format!("{failure}, --url"));
        // PGPASSWORD
        let env = Env::new()
            .var("KINTO_CACHE_BACKEND", "postgresql")
            .var("KINTO_CACHE_URL", without)
            .var("PGPASSWORD", password);
        fails_without_secrets(&env, &[], statuses, &secrets, &format!("{failure}, PGPASSWORD"));
        // ~/.pgpass
        let env = Env::new().var("KINTO_CACHE_BACKEND", "postgresql").var("KINTO_CACHE_URL", without);
        let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
        set_mode(&env.write(".pgpass", &format!("*:*:*:{role}:{escaped}\n")), 0o600);
        fails_without_secrets(&env, &[], statuses, &secrets, &format!("{failure}, .pgpass"));
        // A config file (TOML and Kinto's INI), mode 0600.
        let env = Env::new();
        let toml = private_toml(&env, "postgresql", with_password);
        fails_without_secrets(
            &env,
            &["-c", toml.to_str().expect("utf-8")],
            statuses,
            &secrets,
            &format!("{failure}, TOML"),
        );
        let ini = env.write(
            "kinto.ini",
            &format!(
                "[app:main]\nkinto.cache_backend = kinto.core.cache.postgresql\nkinto.cache_url = {}\n",
                with_password.replace('%', "%%")
            ),
        );
        set_mode(&ini, 0o600);
        fails_without_secrets(
            &env,
            &["-c", ini.to_str().expect("utf-8")],
            statuses,
            &secrets,
            &format!("{failure}, INI"),
        );
    }
}

#[cfg(any(feature = "postgresql", feature = "redis"))]
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("json")
}

/// `c.toml` in `env`'s home for `backend` at `url`, readable by its owner only.
#[cfg(any(feature = "postgresql", feature = "redis"))]
fn private_toml(env: &Env, backend: &str, url: &str) -> std::path::PathBuf {
    let path = env.write("c.toml", &format!("[cache]\nbackend = \"{backend}\"\nurl = {}\n", toml_string(url)));
    set_mode(&path, 0o600);
    path
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(feature = "redis")]
#[test]
fn redis_passwords_never_appear_in_any_failure() {
    let right = format!("R1ght:{}@/%?", unique("rpw"));
    let wrong = format!("Wr0ng:{}@/%?", unique("rpw"));
    let Some(server) = OwnRedis::start(&["--requirepass", &right]) else { return };
    let closed = crate::util::servers::free_port();
    let url = |scheme: &str, pw: &str, port: &str| format!("{scheme}://:{}@127.0.0.1:{port}/0", encode(pw));
    let port = server.port.to_string();
    let cases: Vec<(&str, String, &[i32])> = vec![
        ("refused", url("redis", &right, &closed.to_string()), &[3]),
        ("wrong password", url("redis", &wrong, &port), &[4]),
        ("bad db", url("redis", &right, &port).replace("/0", "/zero"), &[2]),
        ("bad port", url("redis", &right, "99999"), &[2]),
        ("TLS to a plain port", url("rediss", &right, &port), &[3, 4]),
    ];
    let secrets = [right.as_str(), wrong.as_str()];
    for (failure, with_password, statuses) in &cases {
        let env = Env::new()
            .var("KINTO_CACHE_BACKEND", "redis")
            .var("KINTO_CACHE_URL", with_password)
            .var("KINTO_CACHE_POOL_TIMEOUT", "1");
        fails_without_secrets(&env, &[], statuses, &secrets, &format!("{failure}, KINTO_CACHE_URL"));
        if failure.starts_with("TLS") {
            continue; // the same message as above, after a whole pool_timeout each time
        }
        let env = Env::new().var("KINTO_CACHE_BACKEND", "redis").var("KINTO_CACHE_POOL_TIMEOUT", "1");
        fails_without_secrets(&env, &["--url", with_password], statuses, &secrets, &format!("{failure}, --url"));
        let env = Env::new().var("KINTO_CACHE_POOL_TIMEOUT", "1");
        let toml = private_toml(&env, "redis", with_password);
        fails_without_secrets(
            &env,
            &["-c", toml.to_str().expect("utf-8")],
            statuses,
            &secrets,
            &format!("{failure}, TOML"),
        );
    }
}

// ---- a config file that others can read ------------------------------------------------------

#[cfg(feature = "redis")]
#[test]
fn a_config_file_with_a_password_readable_by_others_is_warned_about_as_ssh_does() {
    let secret = format!("Cfg-{}", unique("pw"));
    let closed = crate::util::servers::free_port();
    let url = format!("redis://:{secret}@127.0.0.1:{closed}/0");
    let env = Env::new().var("KINTO_CACHE_POOL_TIMEOUT", "1");
    let toml = env.write("conf/c.toml", &format!("[cache]\nbackend = \"redis\"\nurl = \"{url}\"\n"));
    let ini =
        env.write("conf/kinto.ini", &format!("[app:main]\nkinto.cache_backend = redis\nkinto.cache_url = {url}\n"));
    let plain = env
        .write("conf/plain.toml", &format!("[cache]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{closed}/0\"\n"));
    let warning = |path: &Path, mode: u32| {
        format!(
            "kcache: warning: config file {0} holds a password and is readable by others (mode {mode:04o}); run: chmod 600 {0}\n",
            path.display()
        )
    };
    for file in [&toml, &ini] {
        let path = file.to_str().expect("utf-8");
        for mode in [0o644, 0o640, 0o604, 0o444] {
            set_mode(file, mode);
            let out = env.run(&["-c", path, "get", "k"]);
            out.code(3);
            assert!(out.stderr.starts_with(&warning(file, mode)), "mode {mode:o}:\n{}", out.stderr);
            assert_eq!(out.stderr.matches("kcache: warning:").count(), 1, "{}", out.stderr);
            never_printed(&out, &secret, "the warning");
            // -q silences it, and only it.
            let quiet = env.run(&["-q", "-c", path, "get", "k"]);
            quiet.code(3).one_error_line();
            assert!(!quiet.stderr.contains("warning"), "{}", quiet.stderr);
        }
        for mode in [0o600, 0o400, 0o700] {
            set_mode(file, mode);
            let out = env.run(&["-c", path, "get", "k"]);
            out.code(3).one_error_line();
            assert!(!out.stderr.contains("warning"), "mode {mode:o}:\n{}", out.stderr);
        }
    }
    // No password, nothing to warn about.
    set_mode(&plain, 0o644);
    let out = env.run(&["-c", plain.to_str().expect("utf-8"), "get", "k"]);
    out.code(3).one_error_line();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    // Found through $KCACHE_CONFIG and the default location too.
    set_mode(&toml, 0o644);
    let out = env.var("KCACHE_CONFIG", toml.to_str().expect("utf-8")).run(&["get", "k"]);
    out.code(3).stderr_has(&warning(&toml, 0o644));
    let env = Env::new().var("KINTO_CACHE_POOL_TIMEOUT", "1");
    let default = env.write("config/kcache/config.toml", &format!("[cache]\nbackend = \"redis\"\nurl = \"{url}\"\n"));
    set_mode(&default, 0o644);
    env.run(&["get", "k"]).code(3).stderr_has(&warning(&default, 0o644));
    set_mode(&default, 0o600);
    let out = env.run(&["get", "k"]);
    out.code(3).one_error_line();
    assert!(!out.stderr.contains("warning"));
}

/// Batch lines with a password-bearing failure report it redacted too (the `error` field).
#[cfg(feature = "redis")]
#[test]
fn batch_error_fields_never_hold_a_password() {
    let secret = format!("Bt-{}", unique("pw"));
    let closed = crate::util::servers::free_port();
    let env = Env::new()
        .var("KINTO_CACHE_BACKEND", "redis")
        .var("KINTO_CACHE_URL", &format!("redis://u:{secret}@127.0.0.1:{closed}/0"))
        .var("KINTO_CACHE_POOL_TIMEOUT", "1");
    let mut batch = Batch::spawn(&env, &["batch", "--keep-going", "--jobs", "2"]);
    batch.send("get a\nset b v 60\nping\nflush\n");
    let r = batch.read(4, Duration::from_secs(20));
    let end = batch.finish(Duration::from_secs(20));
    assert_eq!(end.status, 3);
    for reply in &r {
        assert_eq!(status(reply), 3, "{reply}");
        let e = reply["error"].as_str().expect("error");
        assert!(!e.contains(&secret) && e.contains("u:***@"), "{e}");
    }
    assert!(!end.stderr.contains(&secret));
}

// ---- values kcache cannot show ---------------------------------------------------------------

/// Writes `text` as the stored value of `key` (prefix included) the way another program might,
/// bypassing kcache; returns the environment to run kcache with and what must outlive it.
fn with_raw_value(backend: &str, key: &str, text: &str) -> Option<(Env, Box<dyn std::any::Any>)> {
    let prefix = format!("{}:", unique("raw"));
    let full = format!("{prefix}{key}");
    match backend {
        "sqlite" => {
            let env = Env::new().var("KINTO_CACHE_PREFIX", &prefix);
            env.run(&["migrate"]).ok();
            let expires =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() + 600.0;
            crate::util::db(&env.default_db())
                .execute(
                    "INSERT OR REPLACE INTO cache (key, value, ttl) VALUES (?1, ?2, ?3)",
                    rusqlite::params![full, text, expires],
                )
                .expect("insert");
            Some((env, Box::new(())))
        }
        #[cfg(feature = "postgresql")]
        "postgresql" => {
            let mut db = RigDb::create()?;
            db.migrate();
            db.sql()
                .execute(
                    "INSERT INTO cache (key, value, ttl) VALUES ($1, $2, now() + interval '10 minutes')",
                    &[&full, &text],
                )
                .expect("insert");
            let env = Env::new()
                .var("KINTO_CACHE_BACKEND", "postgresql")
                .var("KINTO_CACHE_URL", &db.url())
                .var("KINTO_CACHE_PREFIX", &prefix);
            Some((env, Box::new(db)))
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let url = crate::util::rig::server("KCACHE_TEST_REDIS_URL")?;
            let mut c = crate::util::servers::redis_client(&url);
            redis::cmd("SET").arg(&full).arg(text).arg("PX").arg(600_000).query::<()>(&mut c).expect("SET");
            let env = Env::new()
                .var("KINTO_CACHE_BACKEND", "redis")
                .var("KINTO_CACHE_URL", &url)
                .var("KINTO_CACHE_PREFIX", &prefix);
            Some((env, Box::new(())))
        }
        "memcached" => {
            let server = OwnMemcached::start()?;
            let reply = server.raw(&format!("set {full} 16 600 {}\r\n{text}\r\n", text.len()));
            assert_eq!(reply, ["STORED"]);
            let env = Env::new()
                .var("KINTO_CACHE_BACKEND", "memcached")
                .var("KINTO_CACHE_HOSTS", &server.host())
                .var("KINTO_CACHE_PREFIX", &prefix);
            Some((env, Box::new(server)))
        }
        other if !crate::util::rig::compiled(other) => None,
        other => panic!("{other}"),
    }
}

/// An entry kcache cannot show (not JSON; for memcached, not Kinto's envelope) is removed by
/// `delete` all the same, on every backend, one-shot and in a batch, and status 5 says so:
/// status 4 would tell a script that nothing changed. `get` leaves it alone (status 4).
#[test]
fn delete_of_a_value_that_cannot_be_shown_removes_it_and_says_so() {
    for backend in ["sqlite", "postgresql", "redis", "memcached"] {
        for in_batch in [false, true] {
            let Some((env, _guard)) = with_raw_value(backend, "bad", "not json {") else { continue };
            env.run(&["get", "bad"]).code(4).one_error_line();
            if in_batch {
                let out = env.run_stdin(&["batch"], Some(b"delete bad\nget bad\n"));
                out.code(5);
                let r = replies(&out.stdout);
                // `get bad` went out in the same group as the delete (it ran, so it is reported).
                assert_eq!(r.iter().map(status).collect::<Vec<_>>(), [5, 1], "{backend}: {}", out.stdout);
                let error = r[0]["error"].as_str().unwrap_or_default();
                assert!(error.starts_with("delete 'bad'"), "{backend}: {error}");
                assert!(error.contains("the entry was removed, but its value cannot be shown"), "{backend}: {error}");
            } else {
                let out = env.run(&["delete", "bad"]);
                out.code(5).one_error_line().stdout_is("");
                assert!(out.stderr.starts_with("kcache: error: delete 'bad'"), "{backend}: {}", out.stderr);
                assert!(
                    out.stderr.contains("the entry was removed, but its value cannot be shown"),
                    "{backend}: {}",
                    out.stderr
                );
            }
            env.run(&["get", "bad"]).code(1);
        }
    }
}

// ---- patterns --------------------------------------------------------------------------------

/// A second matcher, written differently (recursion over the pattern text), to hold
/// `Pattern::matches` to: `*`, `?`, sets with ranges and `!`/`^`, `\`.
fn reference_match(p: &[char], k: &[char]) -> bool {
    match p.first() {
        None => k.is_empty(),
        Some('*') => (0..=k.len()).any(|i| reference_match(&p[1..], &k[i..])),
        Some('?') => !k.is_empty() && reference_match(&p[1..], &k[1..]),
        Some('\\') => p.len() > 1 && k.first() == Some(&p[1]) && reference_match(&p[2..], &k[1..]),
        Some('[') => {
            let Some(&c) = k.first() else { return false };
            let mut i = 1;
            let negated = matches!(p.get(i), Some('!' | '^'));
            if negated {
                i += 1;
            }
            let mut hit = false;
            let mut first = true;
            loop {
                match p.get(i) {
                    None => return false,
                    Some(']') if !first => break,
                    Some(_) => {}
                }
                first = false;
                let mut lo = p[i];
                if lo == '\\' {
                    i += 1;
                    lo = p[i];
                }
                let mut hi = lo;
                if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|c| *c != ']') {
                    hi = p[i + 2];
                    if hi == '\\' {
                        hi = p[i + 3];
                        i += 1;
                    }
                    i += 2;
                }
                hit |= lo <= c && c <= hi;
                i += 1;
            }
            hit != negated && reference_match(&p[i + 1..], &k[1..])
        }
        Some(&c) => k.first() == Some(&c) && reference_match(&p[1..], &k[1..]),
    }
}

proptest! {
    #![proptest_config(cases(3000))]

    /// Parsing never panics; a parsed pattern matches exactly what the reference matcher
    /// matches, and every key it matches starts with its literal prefix (what each backend's
    /// walk is limited to, so the walk never misses a match).
    #[test]
    fn patterns_match_as_the_reference_and_never_outside_their_literal_prefix(
        pattern in "([a-c%_*?\\\\é]|\\[!?[a-c]\\]|\\[a-c\\]){0,6}",
        keys in proptest::collection::vec("[a-c%_*?\\\\é\\[\\]]{0,6}", 1..8),
        junk in any::<String>(),
    ) {
        let _ = junk.parse::<kcache::pattern::Pattern>();
        let Ok(p) = pattern.parse::<kcache::pattern::Pattern>() else { return Ok(()) };
        let chars: Vec<char> = pattern.chars().collect();
        for key in keys {
            let k: Vec<char> = key.chars().collect();
            let m = p.matches(&key);
            prop_assert_eq!(m, reference_match(&chars, &k), "{} ~ {}", pattern, key);
            if m {
                prop_assert!(key.starts_with(&p.literal_prefix()), "{} ~ {}", pattern, key);
            }
        }
    }
}
