//! Values as Kinto stores them: JSON text byte-identical to what Kinto 26.5 writes
//! (`rapidjson.dumps`: compact, ASCII only, `\uXXXX` escapes in uppercase hex, Python's
//! int/float distinction), and the way `get` prints them back.
//!
//! See `reference/kinto-cache.md` §1.3. Numbers follow Python: an integer literal stays exact at
//! any size (Python ints are unbounded); a literal with a fraction or an exponent is a float and is
//! written as Python's `repr` writes it (`100000.0`, `1e+16`, `1.5e-07`). `NaN` and `Infinity` are refused: Kinto stores them and then cannot read them back.

use serde_json::Value;
use std::fmt::Write as _;

/// Why a value cannot be stored.
#[derive(Debug, PartialEq, Eq)]
pub struct ValueError(pub String);

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Encodes a plain string value (`kcache set KEY VALUE TTL`).
pub fn encode_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_string(&mut out, s);
    out
}

/// Parses `text` as any JSON document (`set --json`) and encodes it as Kinto would.
pub fn encode_json(text: &str) -> Result<String, ValueError> {
    let doc = parse(text).map_err(|e| ValueError(format!("invalid JSON: {e}")))?;
    encode(&doc)
}

/// How deeply arrays and objects may nest in a value kcache reads or writes. Python's `json`
/// (Kinto's reader) stops near 1,000 levels (its recursion limit: 995 read, 1,000 refused, on
/// Python 3.11); serde_json's default stops at 128. Every path (one-shot, batch, memcached's
/// envelope) parses through [`parse`], so they all accept the same documents. The stack this
/// needs (under 2 MiB in a release build) is checked by a test on a batch worker's stack.
pub const MAX_DEPTH: usize = 2048;

/// Parses any JSON document up to [`MAX_DEPTH`] levels deep. The depth is checked first by a
/// scan that does not recurse, so that a hostile value cannot overflow the stack.
pub fn parse(text: &str) -> Result<Value, ValueError> {
    parse_within(text, MAX_DEPTH)
}

/// [`parse`] for a document that wraps a value in `levels - MAX_DEPTH` levels of its own (the
/// memcached envelope: one).
pub fn parse_within(text: &str, levels: usize) -> Result<Value, ValueError> {
    check_depth(text, levels)
        .map_err(|_| ValueError(format!("arrays and objects nest more than {MAX_DEPTH} levels deep")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let doc = <Value as serde::Deserialize>::deserialize(&mut de).and_then(|doc| de.end().map(|()| doc));
    doc.map_err(|e| ValueError(e.to_string()))
}

/// Whether `text` nests no deeper than `levels` (a document around a value: one more).
pub fn within_depth_of(text: &str, levels: usize) -> bool {
    check_depth(text, levels).is_ok()
}

/// Whether `text` nests no deeper than [`MAX_DEPTH`] (what [`parse`] checks first).
pub fn within_depth(text: &str) -> bool {
    check_depth(text, MAX_DEPTH).is_ok()
}

/// Whether stored `text` is one JSON document on one line (no raw line break), nesting no deeper
/// than [`MAX_DEPTH`]: then a dump can carry it byte for byte. Checked without building it.
pub fn is_one_line_json(text: &str) -> bool {
    if text.bytes().any(|b| b == b'\n' || b == b'\r') || check_depth(text, MAX_DEPTH).is_err() {
        return false;
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de).and_then(|_| de.end()).is_ok()
}

/// `Err(depth)` when arrays and objects in `text` nest deeper than `max`. Brackets
/// inside strings do not count; the text need not be valid JSON (the parser says so after).
fn check_depth(text: &str, max: usize) -> Result<(), usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Encodes a parsed document as Kinto would.
pub fn encode(doc: &Value) -> Result<String, ValueError> {
    let mut out = String::new();
    write_value(&mut out, doc)?;
    Ok(out)
}

fn write_value(out: &mut String, v: &Value) -> Result<(), ValueError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, &n.to_string())?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, item)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// rapidjson's string escaping: `"`, `\\`, the short escapes `\b \f \n \r \t`, other control
/// characters and every non-ASCII character as `\uXXXX` (uppercase hex, surrogate pairs above
/// U+FFFF). `/` and DEL are written as they are.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e && c != '\u{7f}' => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes a JSON number literal the way Python + rapidjson would after `json.loads`.
fn write_number(out: &mut String, literal: &str) -> Result<(), ValueError> {
    let is_float = literal.contains(['.', 'e', 'E']);
    if !is_float {
        // A Python int: exact at any size; "-0" is the int 0.
        let digits = literal.strip_prefix('-').unwrap_or(literal);
        if digits.bytes().all(|b| b == b'0') {
            out.push('0');
        } else {
            out.push_str(literal);
        }
        return Ok(());
    }
    let f: f64 = literal.parse().map_err(|_| ValueError(format!("invalid number {literal}")))?;
    if !f.is_finite() {
        return Err(ValueError(format!(
            "the number {literal} is out of range (Kinto would store it as Infinity and then fail to read it)"
        )));
    }
    write_double(out, f);
    Ok(())
}

/// A Python float as python-rapidjson writes it, which is Python's `repr`: the shortest
/// round-trip digits, in fixed notation with at least one decimal (`100000.0`) when the decimal
/// exponent is from -4 to 15, else in exponent notation with a sign and at least two exponent
/// digits (`1e+16`, `1.5e-07`). Recorded from Kinto 26.5: `tests/data/kinto/values.json`.
fn write_double(out: &mut String, f: f64) {
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    if f < 0.0 {
        out.push('-');
    }
    // `{:e}` gives the shortest digits that round-trip, as d.ddde±x.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let len = digits.len() as i32;
    let decpt = exp + 1; // value = 0.DIGITS x 10^decpt
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if len > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-decpt) as usize));
        out.push_str(&digits);
    } else if decpt < len {
        out.push_str(&digits[..decpt as usize]);
        out.push('.');
        out.push_str(&digits[decpt as usize..]);
    } else {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (decpt - len) as usize));
        out.push_str(".0");
    }
}

/// How `get` and `delete` print a stored value.
pub enum Shown {
    /// A JSON string, printed as its raw text.
    Raw(String),
    /// Any other document, printed as compact JSON.
    Json(String),
}

/// Decodes stored JSON text for printing. With `as_json`, every document is printed as JSON.
pub fn show(stored: &str, as_json: bool) -> Result<Shown, ValueError> {
    let doc = parse_stored(stored)?;
    match doc {
        Value::String(s) if !as_json => Ok(Shown::Raw(s)),
        doc => Ok(Shown::Json(doc.to_string())),
    }
}

/// The stored JSON document itself, for batch output.
pub fn parse_stored(stored: &str) -> Result<Value, ValueError> {
    parse(stored).map_err(|e| ValueError(format!("the stored value is not valid JSON ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(text: &str) -> String {
        encode_json(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn strings_are_ascii_with_uppercase_escapes() {
        assert_eq!(encode_string("é☃"), r#""\u00E9\u2603""#);
        assert_eq!(encode_string("😀"), r#""\uD83D\uDE00""#);
        assert_eq!(encode_string("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(encode_string("\u{1}\t\n\r\u{8}\u{c}\u{1f}\u{7f}"), "\"\\u0001\\t\\n\\r\\b\\f\\u001F\u{7f}\"");
        assert_eq!(encode_string(""), r#""""#);
        assert_eq!(encode_string("\u{80}\u{a0}"), r#""\u0080\u00A0""#);
    }

    #[test]
    fn documents_are_compact_and_keep_key_order() {
        assert_eq!(enc(r#" { "b" : 1 , "a" : [ true, false, null ] } "#), r#"{"b":1,"a":[true,false,null]}"#);
        assert_eq!(enc(r#"{"é":{"x":"ü"}}"#), r#"{"\u00E9":{"x":"\u00FC"}}"#);
        assert_eq!(enc("[]"), "[]");
        assert_eq!(enc("{}"), "{}");
    }

    #[test]
    fn integers_are_exact() {
        assert_eq!(enc("0"), "0");
        assert_eq!(enc("-0"), "0");
        assert_eq!(enc("-42"), "-42");
        assert_eq!(enc("1180591620717411303424"), "1180591620717411303424");
    }

    #[test]
    fn floats_follow_python_repr() {
        assert_eq!(enc("3.14"), "3.14");
        assert_eq!(enc("100000.0"), "100000.0");
        assert_eq!(enc("1e5"), "100000.0");
        assert_eq!(enc("1.50"), "1.5");
        assert_eq!(enc("1e15"), "1000000000000000.0");
        assert_eq!(enc("1e16"), "1e+16");
        assert_eq!(enc("1.5e-7"), "1.5e-07");
        assert_eq!(enc("0.0001"), "0.0001");
        assert_eq!(enc("0.00001"), "1e-05");
        assert_eq!(enc("-0.0"), "-0.0");
        assert_eq!(enc("0.0"), "0.0");
        assert_eq!(enc("1.7976931348623157e308"), "1.7976931348623157e+308");
        assert_eq!(enc("-2.5e-300"), "-2.5e-300");
        assert_eq!(enc("123456.789"), "123456.789");
    }

    #[test]
    fn non_finite_and_invalid_are_refused() {
        for bad in ["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "{", "'x'", "", "[1,]", "01"] {
            assert!(encode_json(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// A document as deep as kcache reads, nested arrays and objects, from Python's limit to
    /// [`MAX_DEPTH`]: parsed, shown, encoded and dropped on the stack of a batch worker thread
    /// (in a debug build, which needs several times the stack of a release build).
    #[test]
    fn deep_documents_read_like_python_and_within_a_worker_stack() {
        fn nested(levels: usize) -> String {
            let mut s = String::new();
            for i in 0..levels {
                s.push_str(if i % 2 == 0 { "[" } else { "{\"a\":" });
            }
            s.push_str("\"x]}\\\"[{\"");
            for i in (0..levels).rev() {
                s.push(if i % 2 == 0 { ']' } else { '}' });
            }
            s
        }
        let worker = std::thread::Builder::new().stack_size(crate::batch::WORKER_STACK);
        worker
            .spawn(|| {
                for levels in [128, 200, 995, MAX_DEPTH] {
                    let text = nested(levels);
                    assert_eq!(enc(&text), text, "{levels} levels");
                    assert!(matches!(show(&text, false), Ok(Shown::Json(ref s)) if *s == text), "{levels} levels");
                }
                let too_deep = nested(MAX_DEPTH + 1);
                let e = encode_json(&too_deep).unwrap_err();
                assert!(e.0.contains("nest more than 2048 levels"), "{e}");
                assert!(show(&too_deep, true).is_err());
                assert!(!within_depth(&too_deep) && within_depth(&nested(MAX_DEPTH)));
                // Brackets inside strings do not count.
                let flat = format!("\"{}\"", "[".repeat(5000));
                assert_eq!(enc(&flat), flat);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn encoding_round_trips() {
        for text in
            [r#"{"a":[1,2.5,"é😀",null,{"b":false}]}"#, r#""\u0000""#, "-1.25e-10", "123456789012345678901234567890"]
        {
            let once = enc(text);
            assert_eq!(enc(&once), once, "encoding is stable for {text}");
            assert!(once.is_ascii(), "{once}");
        }
    }

    /// Every value recorded from Kinto 26.5 (`tests/data/kinto/values.json`) encodes to exactly
    /// the bytes Kinto wrote.
    #[test]
    fn matches_vectors_recorded_from_kinto() {
        let cases: Vec<Value> = serde_json::from_str(include_str!("../tests/data/kinto/values.json")).unwrap();
        assert!(cases.len() > 40);
        for case in &cases {
            let name = &case["name"];
            let Some(expected) = case["encoded"].as_str() else { panic!("{name}: no encoded text") };
            assert_eq!(encode(&case["value_json"]).unwrap(), expected, "{name}");
            assert_eq!(enc(expected), expected, "{name}: re-encoding what Kinto wrote is stable");
        }
    }

    #[test]
    fn show_prints_strings_raw() {
        assert!(matches!(show(r#""\u00E9""#, false), Ok(Shown::Raw(s)) if s == "é"));
        assert!(matches!(show(r#""x""#, true), Ok(Shown::Json(s)) if s == r#""x""#));
        assert!(matches!(show(r#"{"a":1}"#, false), Ok(Shown::Json(s)) if s == r#"{"a":1}"#));
        assert!(show("NaN", false).is_err());
    }
}
