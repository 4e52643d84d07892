//! Kinto's INI file (`kinto.ini`, PasteDeploy style): the cache settings of `[app:main]`.
//!
//! Kinto reads this file through PasteDeploy, which uses Python's `configparser.ConfigParser`
//! with `BasicInterpolation` and two defaults, `here` and `__file__`. This module reproduces
//! what that gives for the cache keys, and nothing else: it does not coerce values (the caller
//! applies Kinto's `native_value`), and it never reads a section other than `[app:main]` and,
//! for `%(name)s` look-ups only, `[DEFAULT]`.
//!
//! The `configparser` crate splits the file into sections, keys and (multi-line) values. Three
//! things are added around it:
//! - [`prepare`], a pass over the lines before the crate sees them. It rejects what Python
//!   rejects (text before the first section header, a key line without `=` or `:`, a line with
//!   no key name, and, as Python's default `strict=True` does, a key given twice in one section
//!   or a section header given twice), in any section, with a line number. It also rewrites the few lines
//!   that the crate would read differently from Python: an indented line starting with `[`
//!   that continues a value (the crate would take it for a section header), a `[` line without
//!   a closing `]` (an ordinary key line for Python), and a header that the crate, which
//!   folds section names to lower case and trims them, would confuse with `[app:main]` or
//!   `[DEFAULT]` (Python matches section names exactly).
//! - `%(name)s` interpolation ([`Vars`]), which the crate does not have.
//! - the mapping of `kinto.cache_X` / `cache_X` keys to settings, with Kinto's conflict check.
//!
//! Choices that differ from Kinto on purpose (see `shared/reference/kinto-cache.md` section 6):
//! - Key names are case-insensitive (lowercased), as in plain Python `configparser`. PasteDeploy
//!   itself keeps their case, so Kinto would not see `Kinto.Cache_URL` at all.
//! - Only the values returned are interpolated. Kinto interpolates every key of `[app:main]`,
//!   so a stray `%` in an unrelated key stops Kinto but not kcache.
//! - `[DEFAULT]` values are only used for look-ups, never returned. A key present in both
//!   `[DEFAULT]` and `[app:main]` keeps the `[app:main]` value (PasteDeploy drops such a key from
//!   the application's settings altogether).
//! - A UTF-8 byte-order mark at the start of the text is skipped.
//! - The folder and path that `%(here)s` and `%(__file__)s` give are taken literally (Python
//!   would interpolate them again, and fail on a folder name holding a `%`).
//!
//! Error messages name sections, keys and line numbers, never a value, so that no password can
//! appear in them. They do not name the file: the caller adds it.

use anyhow::{Result, anyhow, bail};
use configparser::ini::{Ini, IniDefault};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// The only section whose keys can be settings: PasteDeploy's main application.
const APP: &str = "app:main";
/// Python's default section, consulted by `%(name)s` after the key's own section.
const DEFAULT: &str = "DEFAULT";
/// The name under which `configparser` (folding names to lower case) stores `[DEFAULT]`.
const CRATE_DEFAULT: &str = "default";
/// Full-line comment prefixes, as in Python (which has no inline comments by default).
const COMMENTS: [char; 2] = ['#', ';'];
/// Key/value delimiters, as in Python.
const DELIMITERS: [char; 2] = ['=', ':'];
/// Python's `configparser.MAX_INTERPOLATION_DEPTH`.
const MAX_DEPTH: usize = 10;
/// Upper bound on an interpolated value. Python has none, but nested placeholders can grow
/// exponentially (`a = %(b)s%(b)s`, `b = %(c)s%(c)s`, ...): stop before memory runs out.
const MAX_VALUE_BYTES: usize = 1 << 20;

/// A section's keys (lowercased) and raw values, in file order.
type Entries = Vec<(String, String)>;

/// Reads the cache settings of a Kinto (PasteDeploy) INI file.
///
/// `text` is the file's content, `path` its path: `%(here)s` gives the file's folder and
/// `%(__file__)s` the file's path, both absolute (made so from the current directory if
/// needed, with `.` and `..` removed as Python's `os.path.abspath` does).
///
/// Returns `(name, key, value)` triples in file order (the place of a setting's first key), where
/// `name` is the setting without its prefix, lowercased (`url`, `prefix`, `hosts`,
/// `max_overflow`, or whatever unknown name the file has), `key` the key as the file spells it
/// (lowercased; the first spelling when there are several), and `value` is the raw string after
/// interpolation. Multi-line values come back as Python joins them: lines separated by `\n`, a
/// value that starts on the next line begins with `\n`.
///
/// Keys `kinto.cache_X` and `cache_X` both give `X`, and `cache_maxoverflow` (the spelling of
/// Kinto's PostgreSQL docstring) gives `max_overflow`. Spellings of one setting with different
/// values are an error, as in Kinto; equal values are fine. A file without `[app:main]` gives an
/// empty list.
///
/// # Errors
/// Text before the first section header; a line without `=` or `:`, or without a key name; a key
/// given twice in one section (compared as Python compares them: lowercased, so `Cache_URL` repeats
/// `cache_url`, while `kinto.cache_url` and `cache_url` are two keys); a section header given
/// twice (`[DEFAULT]` excepted, as in Python); all of these in any section, as Python's
/// `configparser` (strict, as PasteDeploy uses it) refuses them and Kinto cannot load such a
/// file either. In a returned value, a lone `%`, a
/// malformed or unknown `%(name)s`, or placeholders nested more than 10 deep; conflicting
/// spellings. Messages name the line or the key, never a value.
pub fn cache_settings_with_keys(text: &str, path: &Path) -> Result<Vec<(String, String, String)>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Python reads the file with universal newlines: `\r\n` and a lone `\r` end lines too.
    let text = if text.contains('\r') {
        Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(text)
    };
    let marker = marker_for(&text);
    let prepared = prepare(&text, &marker)?;
    let mut ini = Ini::new_from_defaults(crate_options());
    let sections = ini.read(prepared).map_err(|e| anyhow!("{e}"))?;

    // The map keeps file order because of the crate's "indexmap" feature.
    let Some(app) = sections.get(APP) else {
        return Ok(Vec::new());
    };
    let app = entries(app, APP, &marker)?;
    let defaults = match sections.get(CRATE_DEFAULT) {
        Some(section) => entries(section, DEFAULT, &marker)?,
        None => Vec::new(),
    };
    let vars = Vars::new(&app, &defaults, path);

    // (setting, key it was first read from, value)
    let mut found: Vec<(String, &str, String)> = Vec::new();
    for (key, raw) in &app {
        let Some(name) = setting_name(key) else {
            continue;
        };
        let value = vars.interpolate(raw).map_err(|why| anyhow!("[{APP}] {key}: {why}"))?;
        match found.iter().find(|(n, _, _)| *n == name) {
            Some((_, first, v)) if *v != value => {
                bail!("[{APP}] settings '{first}' and '{key}' are in conflict (different values)")
            }
            Some(_) => {}
            None => found.push((name, key, value)),
        }
    }
    Ok(found.into_iter().map(|(name, key, value)| (name, key.to_owned(), value)).collect())
}

/// [`cache_settings_with_keys`] without the keys.
#[cfg(test)]
pub fn cache_settings(text: &str, path: &Path) -> Result<Vec<(String, String)>> {
    Ok(cache_settings_with_keys(text, path)?.into_iter().map(|(name, _, value)| (name, value)).collect())
}

/// The setting named by a lowercased key of `[app:main]`, or `None` for a key that is not a
/// cache setting (including the bare `cache_`).
fn setting_name(key: &str) -> Option<String> {
    let rest = key.strip_prefix("kinto.cache_").or_else(|| key.strip_prefix("cache_"))?;
    match rest {
        "" => None,
        // Kinto's PostgreSQL docstring documents this spelling (reference section 6.3).
        "maxoverflow" => Some("max_overflow".to_owned()),
        other => Some(other.to_owned()),
    }
}

/// The `configparser` options closest to Python's `ConfigParser()`.
fn crate_options() -> IniDefault {
    let mut options = IniDefault::default();
    options.default_section = CRATE_DEFAULT.to_owned();
    options.comment_symbols = COMMENTS.to_vec();
    options.enable_inline_comments = false;
    options.inline_comment_symbols = None;
    options.delimiters = DELIMITERS.to_vec();
    // Keys are folded to lower case as the brief asks; section names are folded too, which
    // `prepare` compensates for.
    options.case_sensitive = false;
    options.multiline = true;
    options.cascade_defaults = false;
    options
}

/// A string that does not occur in `text`, used by [`prepare`] to stand for a `[` that the
/// crate must not see, and as the name of sections that must not be read.
fn marker_for(text: &str) -> String {
    let mut marker = String::from("\u{e000}kcache\u{e000}");
    // Terminates: once the marker is longer than `text`, `text` cannot contain it.
    while text.contains(&marker) {
        marker.push('\u{e000}');
    }
    marker
}

/// Checks the structure of `text` as Python's `configparser` would, and returns the text to
/// give to the `configparser` crate so that it finds the same sections, keys and values.
///
/// Line classes follow Python: full-line comments and blank lines first; then a line indented
/// deeper than the current key continues its value; then a section header (`[` ... last `]`,
/// at least one character between); anything else is a key line. The crate tests for a section
/// header before a continuation and wants a `]` on every `[` line, so a continuation or key
/// line whose text starts with `[` gets that `[` replaced by `marker` (undone by [`entries`]).
/// Indentation is measured in bytes, as the crate does (Python counts characters; they differ
/// only for indentation made of non-ASCII white space).
fn prepare(text: &str, marker: &str) -> Result<String> {
    let mut out = String::with_capacity(text.len() + 64);
    // Python's name of the current section, once a header has been seen.
    let mut section: Option<&str> = None;
    // Indentation of the current key, while following deeper lines continue its value.
    let mut key_indent: Option<usize> = None;
    // Python's `strict=True`: the line each section (but `[DEFAULT]`) and each (section,
    // lowercased key) was first seen on.
    let mut sections_seen: HashMap<&str, usize> = HashMap::new();
    let mut keys_seen: HashMap<(&str, String), usize> = HashMap::new();

    for (number, raw) in (1..).zip(text.lines()) {
        let line = raw.trim();
        let indent = raw.len() - raw.trim_start().len();

        if line.is_empty() || line.starts_with(COMMENTS) {
            // Blank lines inside a value are kept by the crate, comment lines skipped: as Python.
            out.push_str(raw);
        } else if key_indent.is_some_and(|k| indent > k) {
            push_hiding_bracket(&mut out, raw, indent, marker);
        } else if let Some(name) = header_name(line) {
            key_indent = None;
            section = Some(name);
            // Python compares section names exactly, and never counts `[DEFAULT]` as repeated.
            if name != DEFAULT
                && let Some(first) = sections_seen.insert(name, number)
            {
                bail!(
                    "line {number}: section [{}] is given a second time (first on line {first}); \
                     Kinto's configparser refuses a repeated section: merge them",
                    shown_name(name)
                );
            }
            let folded = name.trim().to_lowercase();
            let crate_would_read = folded == APP || folded == CRATE_DEFAULT;
            if crate_would_read && name != APP && name != DEFAULT {
                // `[App:Main]`, `[ app:main ]`, `[default]`: other sections for Python.
                out.push('[');
                out.push_str(marker);
                out.push(']');
            } else {
                out.push_str(raw);
            }
        } else {
            let Some(name) = section else {
                bail!("line {number}: text before the first [section] header");
            };
            let current = shown_name(name);
            // Rejected in every section, as Python does: Kinto cannot load such a file either,
            // and what follows such a line is read differently by Python and by the crate.
            let delimiter = match line.find(DELIMITERS) {
                Some(0) => {
                    bail!("line {number}: [{current}] a line starts with '=' or ':' (no key name)")
                }
                Some(at) => at,
                None => bail!(
                    "line {number}: [{current}] no '=' or ':' on this line \
                     (a line that continues a value must be indented)"
                ),
            };
            // The key as Python's `optionxform` makes it: stripped and lowercased.
            let key = line[..delimiter].trim_end().to_lowercase();
            if let Some(first) = keys_seen.get(&(name, key.clone())) {
                bail!(
                    "line {number}: [{current}] key '{}' is given a second time (first on line {first}); \
                     Kinto's configparser refuses a repeated key: keep one",
                    shown_name(&key)
                );
            }
            keys_seen.insert((name, key), number);
            key_indent = Some(indent);
            // A key such as `[x = 1` (no closing `]`) is a key line for Python.
            push_hiding_bracket(&mut out, raw, indent, marker);
        }
        out.push('\n');
    }
    Ok(out)
}

/// Appends `raw` to `out`, with the `[` that may start its text (after `indent` bytes of
/// white space) replaced by `marker`, so that the crate does not take the line for a header.
fn push_hiding_bracket(out: &mut String, raw: &str, indent: usize, marker: &str) {
    let (leading, text) = raw.split_at_checked(indent).unwrap_or(("", raw));
    match text.trim_end().strip_prefix('[') {
        Some(after) => {
            out.push_str(leading);
            out.push_str(marker);
            out.push_str(after);
        }
        None => out.push_str(raw),
    }
}

/// A section or key name for a message: as written if short and printable, else elided.
fn shown_name(name: &str) -> &str {
    if name.chars().count() <= 64 && !name.chars().any(char::is_control) { name } else { "..." }
}

/// Python's section name for a stripped line (`\[(.+)\]` at its start), or `None` if the line
/// is not a section header. Text after the last `]` is ignored, as in Python.
fn header_name(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let end = rest.rfind(']')?;
    (end > 0).then(|| &rest[..end])
}

/// A section of the crate's result as [`Entries`], with `[` put back where [`prepare`] hid it
/// and line endings made `\n` (the crate joins lines with `\r\n` on Windows).
fn entries<'a>(
    section: impl IntoIterator<Item = (&'a String, &'a Option<String>)>,
    name: &str,
    marker: &str,
) -> Result<Entries> {
    section
        .into_iter()
        .map(|(key, value)| {
            let key = key.replace(marker, "[");
            // `prepare` rejects key lines without a delimiter, so every value is present; stay
            // graceful if the crate ever disagrees.
            let Some(value) = value else {
                bail!("[{name}] {key}: no '=' or ':' after the key");
            };
            Ok((key, value.replace(marker, "[").replace("\r\n", "\n")))
        })
        .collect()
}

/// Where `%(name)s` looks names up: `[app:main]`, then `[DEFAULT]`, then PasteDeploy's
/// `here` and `__file__` (which a `[DEFAULT]` key of the same name overrides, as in Python).
struct Vars<'a> {
    app: &'a Entries,
    defaults: &'a Entries,
    /// Folder of the file, absolute; `None` if the path could not be made absolute.
    here: Option<String>,
    /// The file's absolute path; `None` if the path could not be made absolute.
    file: Option<String>,
}

impl<'a> Vars<'a> {
    fn new(app: &'a Entries, defaults: &'a Entries, path: &Path) -> Self {
        let file = absolute(path);
        let here = file.as_deref().and_then(Path::parent).map(|p| p.to_string_lossy().into_owned());
        let file = file.map(|f| f.to_string_lossy().into_owned());
        Vars { app, defaults, here, file }
    }

    /// The value for a lowercased name, and whether it is raw (to be interpolated in turn) or
    /// literal (`here` and `__file__` as kcache computes them).
    fn get(&self, name: &str) -> Option<(&str, bool)> {
        let find = |entries: &'a Entries| entries.iter().find(|(k, _)| k == name).map(|(_, v)| (v.as_str(), true));
        let builtin = match name {
            "here" => self.here.as_deref(),
            "__file__" => self.file.as_deref(),
            _ => None,
        };
        find(self.app).or_else(|| find(self.defaults)).or(builtin.map(|v| (v, false)))
    }

    /// `raw` after Python's `BasicInterpolation`. The error says what is wrong, without the value.
    fn interpolate(&self, raw: &str) -> Result<String, String> {
        let mut out = String::with_capacity(raw.len());
        self.expand(raw, 1, None, &mut out)?;
        Ok(out)
    }

    /// Appends `value`, interpolated, to `out`. `depth` counts as Python's does (the key's own
    /// value is depth 1); `within` is the placeholder whose value this is, for messages.
    fn expand(&self, value: &str, depth: usize, within: Option<&str>, out: &mut String) -> Result<(), String> {
        let fail = |why: String| match within {
            Some(name) => Err(format!("{why} (in the value of '{name}')")),
            None => Err(why),
        };
        if depth > MAX_DEPTH {
            return fail(format!(
                "placeholders nested more than {MAX_DEPTH} levels deep (does a value refer to itself?)"
            ));
        }
        let mut rest = value;
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                out.push('%');
                rest = tail;
                continue;
            }
            let Some(reference) = after.strip_prefix('(') else {
                return fail("'%' must be followed by '%' or '(' (write a literal % as %%)".to_owned());
            };
            // Python's `%\(([^)]+)\)s`: a name up to the first `)`, then `s`.
            let parsed = reference.split_once(')').and_then(|(name, tail)| {
                let tail = tail.strip_prefix('s')?;
                (!name.is_empty()).then_some((name, tail))
            });
            let Some((name, tail)) = parsed else {
                return fail("malformed placeholder: '%(' must be followed by a name and ')s'".to_owned());
            };
            rest = tail;
            let key = name.to_lowercase();
            let Some((found, raw)) = self.get(&key) else {
                return fail(unknown_placeholder(name, &key));
            };
            if raw && found.contains('%') {
                self.expand(found, depth + 1, Some(&key), out)?;
            } else {
                out.push_str(found);
            }
            if out.len() > MAX_VALUE_BYTES {
                return fail(format!("value longer than {MAX_VALUE_BYTES} bytes after interpolation"));
            }
        }
        out.push_str(rest);
        Ok(())
    }
}

/// The message for a `%(name)s` that names nothing. The name is shown unless it is long or
/// spans lines (then it is more likely text that happens to hold `%(` than a name).
fn unknown_placeholder(name: &str, key: &str) -> String {
    if key == "here" || key == "__file__" {
        return format!("%({name})s is unavailable: the file's path could not be made absolute");
    }
    if name.chars().count() <= 64 && !name.chars().any(char::is_control) {
        format!("unknown placeholder %({name})s")
    } else {
        "unknown placeholder (its name is not shown: it is long or spans lines)".to_owned()
    }
}

/// `path` made absolute and normalized like Python's `os.path.abspath`: relative to the current
/// directory, `.` dropped, `..` removing the previous component (symbolic links not resolved).
fn absolute(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            // At the root, `pop` does nothing: `/..` is `/`, as in Python.
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/srv/kinto/kinto.ini";

    /// The settings of `text` read from [`PATH`], or the test fails with the error.
    fn read(text: &str) -> Vec<(String, String)> {
        match cache_settings(text, Path::new(PATH)) {
            Ok(pairs) => pairs,
            Err(e) => panic!("unexpected error: {e:#}"),
        }
    }

    /// The error message for `text`, or the test fails.
    fn error(text: &str) -> String {
        match cache_settings(text, Path::new(PATH)) {
            Ok(pairs) => panic!("expected an error, got {pairs:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    /// The shape of what `kinto init` writes, with the PostgreSQL backends.
    const KINTO_INI: &str = "\
# Created at Tue, 25 Nov 2026 14:42:00 +0000
# Using Kinto version 26.5.0

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

# Plugins
kinto.includes = kinto.plugins.default_bucket
#                 kinto.plugins.admin
#                 kinto.plugins.accounts

# Backends
#
kinto.storage_backend = kinto.core.storage.postgresql
kinto.storage_url = postgresql://postgres:postgres@localhost/postgres
# kinto.storage_max_fetch_size = 10000
# kinto.storage_pool_size = 25
kinto.cache_backend = kinto.core.cache.postgresql
kinto.cache_url = postgresql://postgres:postgres@localhost/postgres
# kinto.cache_max_size_bytes = 524288
# kinto.cache_pool_size = 25
# kinto.cache_max_overflow = 5
kinto.permission_backend = kinto.core.permission.postgresql
kinto.permission_url = postgresql://postgres:postgres@localhost/postgres

# Auth configuration.
multiauth.policies = basicauth
# kinto.userid_hmac_secret = 3c7a8c9e
kinto.bucket_create_principals = account:admin

[uwsgi]
wsgi-file = app.wsgi
enable-threads = true
socket = /run/uwsgi/kinto.sock
processes =  3

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
";

    #[test]
    fn kinto_init_file() {
        assert_eq!(
            read(KINTO_INI),
            pairs(&[
                ("backend", "kinto.core.cache.postgresql"),
                ("url", "postgresql://postgres:postgres@localhost/postgres"),
            ])
        );
    }

    #[test]
    fn kinto_init_file_with_crlf_line_endings() {
        assert_eq!(read(&KINTO_INI.replace('\n', "\r\n")), read(KINTO_INI));
    }

    #[test]
    fn both_spellings_and_settings_in_file_order() {
        let text = "[app:main]\ncache_prefix = p_\nkinto.cache_backend = redis\ncache_unknown_thing = 1\n\
                    kinto.cache_pool_size = 5\ncache_poolclass = x.y\n";
        assert_eq!(
            read(text),
            pairs(&[
                ("prefix", "p_"),
                ("backend", "redis"),
                ("unknown_thing", "1"),
                ("pool_size", "5"),
                ("poolclass", "x.y"),
            ])
        );
    }

    #[test]
    fn non_cache_keys_are_ignored() {
        let text = "[app:main]\ncache = 1\ncache_ = 2\nkinto.cache_ = 3\nmycache_url = 4\n\
                    kinto.storage_url = 5\nkinto.cache.url = 6\n";
        assert_eq!(read(text), Vec::new());
    }

    #[test]
    fn conflicting_spellings_are_an_error_without_values() {
        let message = error(
            "[app:main]\ncache_url = postgresql://u:secret1@h/db\n\
             kinto.cache_url = postgresql://u:secret2@h/db\n",
        );
        assert_eq!(message, "[app:main] settings 'cache_url' and 'kinto.cache_url' are in conflict (different values)");
        let reversed = error("[app:main]\nkinto.cache_prefix = a\ncache_prefix = b\n");
        assert!(reversed.contains("'kinto.cache_prefix' and 'cache_prefix'"), "{reversed}");
    }

    #[test]
    fn equal_spellings_are_fine() {
        let text = "[app:main]\nkinto.cache_url = redis://h/0\ncache_backend = redis\ncache_url = redis://h/0\n";
        assert_eq!(read(text), pairs(&[("url", "redis://h/0"), ("backend", "redis")]));
    }

    #[test]
    fn spellings_are_compared_after_interpolation() {
        let text = "[app:main]\nbase = /tmp\nkinto.cache_url = %(base)s/x\ncache_url = /tmp/x\n";
        assert_eq!(read(text), pairs(&[("url", "/tmp/x")]));
    }

    #[test]
    fn maxoverflow_spellings() {
        assert_eq!(read("[app:main]\ncache_maxoverflow = 3\n"), pairs(&[("max_overflow", "3")]));
        assert_eq!(read("[app:main]\nkinto.cache_maxoverflow = 3\n"), pairs(&[("max_overflow", "3")]));
        assert_eq!(
            read("[app:main]\ncache_max_overflow = 3\nkinto.cache_maxoverflow = 3\n"),
            pairs(&[("max_overflow", "3")])
        );
        let message = error("[app:main]\nkinto.cache_maxoverflow = 3\ncache_max_overflow = 4\n");
        assert_eq!(
            message,
            "[app:main] settings 'kinto.cache_maxoverflow' and 'cache_max_overflow' are in conflict (different values)"
        );
    }

    // Python 3.11's `configparser.ConfigParser()` (strict) on the same texts:
    // DuplicateOptionError "[line  4]: option 'cache_url' in section 'app:main' already exists".
    #[test]
    fn repeated_key_is_an_error_naming_it_and_its_line() {
        let text = "[app:main]\ncache_url = redis://:pw-one@h/0\ncache_prefix = p\ncache_url = redis://:pw-two@h/0\n";
        let message = error(text);
        assert_eq!(
            message,
            "line 4: [app:main] key 'cache_url' is given a second time (first on line 2); \
             Kinto's configparser refuses a repeated key: keep one"
        );
        assert!(!message.contains("pw-"), "{message}");
        // The same value twice is refused too, as Python does.
        assert!(error("[app:main]\ncache_prefix = p\ncache_prefix = p\n").starts_with("line 3: "));
    }

    #[test]
    fn repeated_key_is_compared_lowercased_and_stripped_as_python_does() {
        let message = error("[app:main]\ncache_url = a\nCACHE_URL = b\n");
        assert!(message.starts_with("line 3: [app:main] key 'cache_url' is given a second time"), "{message}");
        let message = error("[app:main]\ncache_url = a\ncache_url\t: b\n");
        assert!(message.starts_with("line 3: [app:main] key 'cache_url'"), "{message}");
        // Two spellings are two keys for configparser (Kinto's conflict check handles them).
        assert_eq!(read("[app:main]\nkinto.cache_url = a\ncache_url = a\n"), pairs(&[("url", "a")]));
        // An indented line continues the value: not a second key.
        assert_eq!(read("[app:main]\ncache_url = a\n  cache_url = b\n"), pairs(&[("url", "a\ncache_url = b")]));
    }

    #[test]
    fn repeated_key_in_any_section_is_an_error() {
        let message = error("[server:main]\nport = 1\nport = 2\n[app:main]\ncache_url = a\n");
        assert!(message.starts_with("line 3: [server:main] key 'port' is given a second time"), "{message}");
        // `[DEFAULT]` may be repeated, but its keys may not (one section for Python).
        assert_eq!(read("[DEFAULT]\na = 1\n[DEFAULT]\nb = 2\n[app:main]\ncache_prefix = %(a)s%(b)s\n").len(), 1);
        let message = error("[DEFAULT]\na = 1\n[DEFAULT]\na = 2\n[app:main]\n");
        assert!(message.starts_with("line 4: [DEFAULT] key 'a' is given a second time"), "{message}");
        // A key of `[DEFAULT]` may be given again in another section.
        assert_eq!(read("[DEFAULT]\ncache_prefix = d\n[app:main]\ncache_prefix = a\n"), pairs(&[("prefix", "a")]));
    }

    #[test]
    fn repeated_section_is_an_error() {
        let text = "[app:main]\ncache_url = a\n[other]\ncache_url = z\n[app:main]\ncache_prefix = p\n";
        assert_eq!(
            error(text),
            "line 5: section [app:main] is given a second time (first on line 1); \
             Kinto's configparser refuses a repeated section: merge them"
        );
        assert!(error("[a]\nx = 1\n[b]\n[a]\n").starts_with("line 4: section [a]"));
        // Names are compared exactly, as in Python.
        assert_eq!(read("[app:main]\ncache_url = a\n[App:Main]\ncache_url = b\n"), pairs(&[("url", "a")]));
    }

    #[test]
    fn long_repeated_key_names_are_not_shown() {
        let key = "k".repeat(100);
        let message = error(&format!("[app:main]\n{key} = 1\n{key} = 2\n"));
        assert!(message.starts_with("line 3: [app:main] key '...'"), "{message}");
    }

    #[test]
    fn multi_line_hosts() {
        let text =
            "[app:main]\nkinto.cache_hosts =\n    127.0.0.1:11211\n    127.0.0.1:11212\nkinto.cache_prefix = x\n";
        assert_eq!(read(text), pairs(&[("hosts", "\n127.0.0.1:11211\n127.0.0.1:11212"), ("prefix", "x")]));
        let first_line = "[app:main]\ncache_hosts = a:1\n\tb:2\n  c:3\n";
        assert_eq!(read(first_line), pairs(&[("hosts", "a:1\nb:2\nc:3")]));
    }

    #[test]
    fn continuation_is_relative_to_the_key_indentation() {
        // Keys indented alike are separate keys; a line indented deeper than the key before it
        // continues that key's value, even if it looks like a key (as in Python).
        let text = "[app:main]\n  cache_prefix = a\n  cache_url = b\n    more\ncache_backend = memory\n";
        assert_eq!(read(text), pairs(&[("prefix", "a"), ("url", "b\nmore"), ("backend", "memory")]));
        let deeper = "[app:main]\ncache_prefix = a\n  cache_url = b\n";
        assert_eq!(read(deeper), pairs(&[("prefix", "a\ncache_url = b")]));
    }

    #[test]
    fn blank_lines_in_a_value() {
        let text = "[app:main]\ncache_hosts = first line\n\n    after blank line\n\n\ncache_prefix = p\n\n";
        assert_eq!(read(text), pairs(&[("hosts", "first line\n\nafter blank line"), ("prefix", "p")]));
        let leading = "[app:main]\ncache_hosts =\n\n  h:1\n";
        assert_eq!(read(leading), pairs(&[("hosts", "\n\nh:1")]));
    }

    #[test]
    fn comments_including_indented_ones_inside_a_value() {
        let text = "\
; leading comment
[app:main]
# cache_url = commented
; cache_prefix = commented
cache_hosts =
    a:1
    # not a host
      ; nor this
    b:2
  # an indented comment between keys
cache_backend = memcached
";
        assert_eq!(read(text), pairs(&[("hosts", "\na:1\nb:2"), ("backend", "memcached")]));
    }

    #[test]
    fn no_inline_comments() {
        let text = "[app:main]\nkinto.cache_url = postgresql://u:p@h/db#x ; y\ncache_prefix = a # b\n";
        assert_eq!(read(text), pairs(&[("url", "postgresql://u:p@h/db#x ; y"), ("prefix", "a # b")]));
    }

    #[test]
    fn colon_delimiter_and_first_delimiter_wins() {
        let text = "[app:main]\ncache_url: redis://h:6379/0\ncache_prefix = a:b=c\ncache_backend:x=y\n";
        assert_eq!(read(text), pairs(&[("url", "redis://h:6379/0"), ("prefix", "a:b=c"), ("backend", "x=y")]));
    }

    #[test]
    fn here_and_file() {
        let text = "[app:main]\ncache_path = %(here)s/cache.sqlite3\ncache_url = sqlite://%(__file__)s\n";
        assert_eq!(
            read(text),
            pairs(&[("path", "/srv/kinto/cache.sqlite3"), ("url", "sqlite:///srv/kinto/kinto.ini")])
        );
        let dotted = cache_settings("[app:main]\ncache_path = %(HERE)s\n", Path::new("/srv/./a/../kinto/k.ini"));
        assert_eq!(dotted.ok(), Some(pairs(&[("path", "/srv/kinto")])));
        let root = cache_settings("[app:main]\ncache_path = %(here)s\n", Path::new("/kinto.ini"));
        assert_eq!(root.ok(), Some(pairs(&[("path", "/")])));
    }

    #[test]
    fn here_of_a_relative_path_is_absolute() {
        let got = cache_settings("[app:main]\ncache_path = %(here)s\n", Path::new("conf/kinto.ini"));
        let Ok(got) = got else { panic!("{got:?}") };
        let expected = std::env::current_dir().map(|d| d.join("conf").to_string_lossy().into_owned());
        assert_eq!(got.first().map(|(_, v)| v.clone()), expected.ok());
    }

    #[test]
    fn here_is_literal() {
        let got = cache_settings("[app:main]\ncache_path = %(here)s/c\n", Path::new("/tmp/100%/kinto.ini"));
        assert_eq!(got.ok(), Some(pairs(&[("path", "/tmp/100%/c")])));
    }

    #[test]
    fn lone_carriage_returns_end_lines() {
        let text = "[app:main]\rcache_url = a\r  b\r\ncache_prefix = p\r";
        assert_eq!(read(text), pairs(&[("url", "a\nb"), ("prefix", "p")]));
    }

    #[test]
    fn here_without_a_usable_path() {
        let message = cache_settings("[app:main]\ncache_path = %(here)s\n", Path::new(""));
        let Err(message) = message else { panic!("{message:?}") };
        assert!(message.to_string().contains("%(here)s is unavailable"), "{message}");
    }

    #[test]
    fn percent_escapes() {
        let text = "[app:main]\ncache_prefix = 100%%\ncache_url = postgresql://u:p%%40ss@h/db\nliteral = %%(here)s\ncache_x = %(literal)s\n";
        assert_eq!(read(text), pairs(&[("prefix", "100%"), ("url", "postgresql://u:p%40ss@h/db"), ("x", "%(here)s")]));
    }

    #[test]
    fn default_section_is_looked_up_but_not_returned() {
        let text = "\
[DEFAULT]
cache_url = postgresql://from/default
db_host = db.example
http_port = 8888

[app:main]
kinto.cache_url = postgresql://u@%(db_host)s/kinto
cache_prefix = %(http_port)s
";
        assert_eq!(read(text), pairs(&[("url", "postgresql://u@db.example/kinto"), ("prefix", "8888")]));
        // The section's own key comes before [DEFAULT], which comes before `here`.
        let order = "[DEFAULT]\nname = d\nhere = /elsewhere\n[app:main]\nname = a\ncache_prefix = %(name)s\ncache_path = %(here)s\n";
        assert_eq!(read(order), pairs(&[("prefix", "a"), ("path", "/elsewhere")]));
        let only_default = "[DEFAULT]\ncache_url = x\n";
        assert_eq!(read(only_default), Vec::new());
    }

    #[test]
    fn long_or_binary_section_names_are_not_shown() {
        let message = error(&format!("[{}]\nbroken\n", "s".repeat(100)));
        assert_eq!(
            message,
            "line 2: [...] no '=' or ':' on this line (a line that continues a value must be indented)"
        );
        let message = error("[a\u{1b}[31mb]\nbroken\n");
        assert!(message.starts_with("line 2: [...] no '='"), "{message}");
    }

    #[test]
    fn section_names_are_exact() {
        let text = "[App:Main]\ncache_url = a\n[ app:main ]\ncache_prefix = b\n[default]\nx = 1\n\
                    [app:main]\ncache_backend = c\ncache_hosts = %(x)s\n";
        let message = error(text);
        assert_eq!(message, "[app:main] cache_hosts: unknown placeholder %(x)s");
        let text = "[App:Main]\ncache_url = a\n[ app:main ]\ncache_prefix = b\n[app:main]\ncache_backend = c\n";
        assert_eq!(read(text), pairs(&[("backend", "c")]));
        let trailing = "[app:main] ; the application\ncache_backend = c\n";
        assert_eq!(read(trailing), pairs(&[("backend", "c")]));
    }

    #[test]
    fn recursive_placeholders() {
        let text = "\
[DEFAULT]
host = %(user)s@db
[app:main]
user = kinto
scheme = postgresql
base = %(scheme)s://%(host)s
kinto.cache_url = %(base)s/cache?x=100%%
";
        assert_eq!(read(text), pairs(&[("url", "postgresql://kinto@db/cache?x=100%")]));
    }

    #[test]
    fn lone_percent_is_an_error_that_hides_the_value() {
        let message = error("[app:main]\ncache_url = postgresql://u:p%40ss@h/db\n");
        assert_eq!(message, "[app:main] cache_url: '%' must be followed by '%' or '(' (write a literal % as %%)");
        let nested = error("[app:main]\npassword = 50%\nCache_URL = pg://u:%(Password)s@h\n");
        assert_eq!(
            nested,
            "[app:main] cache_url: '%' must be followed by '%' or '(' (write a literal % as %%) \
             (in the value of 'password')"
        );
        assert!(!error("[app:main]\ncache_url = x%").contains('x'));
    }

    #[test]
    fn unknown_and_malformed_placeholders() {
        assert_eq!(
            error("[app:main]\ncache_url = http://h:%(http_port)s/\n"),
            "[app:main] cache_url: unknown placeholder %(http_port)s"
        );
        for bad in ["%(name", "%()s", "%(name)", "%(name)d", "%(a)x%(b)s"] {
            let message = error(&format!("[app:main]\na = 1\nb = 2\ncache_url = {bad}\n"));
            assert_eq!(
                message, "[app:main] cache_url: malformed placeholder: '%(' must be followed by a name and ')s'",
                "{bad}"
            );
        }
        let long = error(&format!("[app:main]\ncache_url = %({})s\n", "n".repeat(100)));
        assert!(long.ends_with("unknown placeholder (its name is not shown: it is long or spans lines)"), "{long}");
    }

    #[test]
    fn placeholder_name_may_span_lines_as_in_python() {
        let text = "[app:main]\nmy\nname = never\ncache_url = %(my\n  name)s\n";
        // `my` alone is a key line without a delimiter: an error before any interpolation.
        assert!(error(text).starts_with("line 2:"));
        let message = error("[app:main]\ncache_url = %(my\n  name)s\n");
        assert!(message.contains("its name is not shown"), "{message}");
    }

    #[test]
    fn depth_limit_matches_python() {
        // v0 -> v1 -> ... -> vN, where vN holds a `%%`: Python accepts N = 9, rejects N = 10.
        let chain = |n: usize| {
            let mut text = String::from("[app:main]\ncache_url = %(v0)s\n");
            for i in 0..n {
                text.push_str(&format!("v{i} = %(v{})s\n", i + 1));
            }
            text.push_str(&format!("v{n} = 100%%\n"));
            text
        };
        assert_eq!(read(&chain(8)), pairs(&[("url", "100%")]));
        let message = error(&chain(9));
        assert_eq!(
            message,
            "[app:main] cache_url: placeholders nested more than 10 levels deep \
             (does a value refer to itself?) (in the value of 'v9')"
        );
        let looping = error("[app:main]\na = %(b)s\nb = %(a)s\ncache_url = %(a)s\n");
        assert!(looping.contains("nested more than 10 levels"), "{looping}");
        // A chain ending in a value without `%` is one level shorter.
        let plain = chain(9).replace("v9 = 100%%", "v9 = plain");
        assert_eq!(read(&plain), pairs(&[("url", "plain")]));
    }

    #[test]
    fn exponential_placeholders_are_bounded() {
        let mut text = String::from("[app:main]\ncache_url = %(a0)s\n");
        for i in 0..7 {
            let next = format!("%(a{})s", i + 1);
            text.push_str(&format!("a{i} = {}\n", next.repeat(16)));
        }
        text.push_str("a7 = xxxxxxxxxxxxxxxx%%\n");
        let message = error(&text);
        assert!(message.contains("longer than"), "{message}");
    }

    #[test]
    fn uppercase_keys() {
        let text =
            "[app:main]\nKinto.Cache_URL = redis://h/0\nCACHE_PREFIX = %(Kinto.CACHE_url)s\nCache_MaxOverflow = 2\n";
        assert_eq!(read(text), pairs(&[("url", "redis://h/0"), ("prefix", "redis://h/0"), ("max_overflow", "2")]));
    }

    #[test]
    fn empty_values() {
        let text = "[app:main]\ncache_prefix =\ncache_url:\ncache_hosts =   \n";
        assert_eq!(read(text), pairs(&[("prefix", ""), ("url", ""), ("hosts", "")]));
    }

    #[test]
    fn files_without_settings() {
        assert_eq!(read(""), Vec::new());
        assert_eq!(read("\n\n# only comments\n; here\n"), Vec::new());
        assert_eq!(read("[server:main]\nport = 8888\n"), Vec::new());
        assert_eq!(read("[app:main]\nuse = egg:kinto\n"), Vec::new());
        assert_eq!(read("[cache]\nbackend = \"redis\"\n"), Vec::new());
    }

    #[test]
    fn other_sections_and_keys_are_ignored_even_when_broken() {
        let text = "\
[server:main]
use = egg:waitress#main
port = %(http_port)s
bad = 100%

[app:main]
use = egg:kinto
kinto.storage_url = postgresql://u:p%40ss@h/db
broken = %(nowhere)s and 50%
cache_backend = memory
";
        assert_eq!(read(text), pairs(&[("backend", "memory")]));
    }

    #[test]
    fn line_without_delimiter_in_app_main() {
        let message = error("[app:main]\ncache_url = a\n127.0.0.1\ncache_prefix = b\n");
        assert_eq!(
            message,
            "line 3: [app:main] no '=' or ':' on this line (a line that continues a value must be indented)"
        );
        let in_default = error("[DEFAULT]\nsecret\n[app:main]\n");
        assert!(in_default.starts_with("line 2: [DEFAULT] no '='"), "{in_default}");
        // In any section, as Python: Kinto could not load the file either.
        let elsewhere = error("[uwsgi]\nmaster\n[app:main]\ncache_url = x\n");
        assert!(elsewhere.starts_with("line 2: [uwsgi] no '='"), "{elsewhere}");
        // A non-indented continuation with a `:` silently becomes a key, as in Python.
        let text = "[app:main]\ncache_hosts = a:1\nb:2\n";
        assert_eq!(read(text), pairs(&[("hosts", "a:1")]));
    }

    #[test]
    fn line_without_key_name() {
        let message = error("[loggers]\n= 1\n");
        assert_eq!(message, "line 2: [loggers] a line starts with '=' or ':' (no key name)");
    }

    #[test]
    fn text_before_the_first_section() {
        assert_eq!(error("cache_url = x\n[app:main]\n"), "line 1: text before the first [section] header");
        assert_eq!(
            error("# comment\n\n   indented = x\n[app:main]\n"),
            "line 3: text before the first [section] header"
        );
    }

    #[test]
    fn bracket_lines_that_are_not_headers() {
        // An indented `[` line continues a value (Python checks continuation first).
        let text = "[app:main]\ncache_hosts =\n    [::1]:11211\n    inet6:[::1]:11212\ncache_prefix = p\n";
        assert_eq!(read(text), pairs(&[("hosts", "\n[::1]:11211\ninet6:[::1]:11212"), ("prefix", "p")]));
        // `[x = 1` has no `]`: a key named `[x` for Python, usable in a placeholder.
        let key = "[app:main]\n[x = 1\ncache_prefix = %([x)s\n[x] = 2\n";
        assert_eq!(read(key), pairs(&[("prefix", "1")]));
        // `[]` is no header for Python (it needs a name), so it is a line without delimiter.
        assert!(error("[app:main]\n[]\ncache_url = y\n").starts_with("line 2: [app:main] no '='"));
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        assert_eq!(read("\u{feff}[app:main]\ncache_prefix = p\n"), pairs(&[("prefix", "p")]));
    }

    #[test]
    fn marker_never_collides() {
        let marker = marker_for("");
        let text = format!("[app:main]\n{marker} = 1\ncache_hosts =\n  [a]\n  {marker}\n");
        assert_eq!(read(&text), pairs(&[("hosts", &format!("\n[a]\n{marker}"))]));
    }

    #[test]
    fn garbage_never_panics() {
        let fixed = [
            "\0\u{1}\u{7f}[\u{fffd}\u{fffd}]",
            "[",
            "]",
            "[]",
            "[]]",
            "=",
            ":",
            "%",
            "[app:main]\n%(",
            "[app:main]\ncache_url = %(",
            "[app:main]\ncache_url = %",
            "[app:main]\ncache_url = %(%(x)s)s",
            "[app:main]\n\u{3000}cache_url = a\n\u{3000}\u{3000}b",
            "[app:main]\ncache_url = a\n\u{3000}b\n \u{2003}c",
            "[app:main]\r\ncache_url = a\r\r\n\rb",
            "\u{feff}\u{feff}[app:main]",
            "[app:main]\n\u{e000}kcache\u{e000} = 1\n",
        ];
        for text in fixed {
            let _ = cache_settings(text, Path::new(PATH));
        }
        // Deterministic pseudo-random texts over the characters that matter to the parser.
        let alphabet: Vec<char> =
            "[]=:%()s#; \t\n\r\n\napp:mainDEFAULTcache_url.kinto\u{0}\u{e000}é\u{3000}\u{feff}".chars().collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            let mut text = String::from(if state & 1 == 0 { "[app:main]\n" } else { "" });
            let len = (state % 120) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if let Some(c) = alphabet.get((state % alphabet.len() as u64) as usize) {
                    text.push(*c);
                }
            }
            let _ = cache_settings(&text, Path::new(PATH));
            let _ = cache_settings(&text, Path::new(""));
        }
    }
}
