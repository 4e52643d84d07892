//! kcache's error type: every failure carries the kind that decides the exit status, a chain of
//! causes (through `anyhow`), and an optional hint. Rendering (one line, or the whole chain with
//! `-v`) and the last line of defence against leaking secrets live here too.

use std::fmt;
use std::sync::Mutex;

/// What went wrong, in the terms of SPEC's exit statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad usage or bad input (arguments, config, key, value, TTL); nothing was sent. Status 2.
    Input,
    /// The backend could not be reached: refused, timed out, pool exhausted. Status 3.
    Unavailable,
    /// The backend refused the operation: permissions, missing schema, value too large. Status 4.
    Backend,
    /// Standard output was closed early (`kcache get k | head -c0`): ends quietly with status 0.
    BrokenPipe,
    /// The command was carried out (the backend may have been changed), but what it had to
    /// print could not be given: `delete` removed an entry whose value cannot be shown, or
    /// standard output failed after the command ran. Status 5.
    Unshown,
}

impl ErrorKind {
    /// The process exit status for this kind.
    pub fn status(self) -> u8 {
        match self {
            ErrorKind::Input => 2,
            ErrorKind::Unavailable => 3,
            ErrorKind::Backend => 4,
            ErrorKind::BrokenPipe => 0,
            ErrorKind::Unshown => 5,
        }
    }
}

/// A kcache failure: a kind, a message chain and perhaps a hint.
pub struct Error {
    kind: ErrorKind,
    inner: anyhow::Error,
    hint: Option<String>,
    /// Nothing of the operation reached the server (no connection could be had): a batch that
    /// stops here reports this line only, not the lines of its group that shared the failure.
    unsent: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, inner: anyhow::Error) -> Self {
        Error { kind, inner, hint: None, unsent: false }
    }
    /// Bad input: `what` says what is wrong and names the culprit.
    pub fn input(what: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Input, anyhow::anyhow!("{what}"))
    }
    /// The backend is unreachable while doing `what`.
    pub fn unavailable(what: impl fmt::Display, cause: impl Into<anyhow::Error>) -> Self {
        Self::new(ErrorKind::Unavailable, cause.into().context(what.to_string()))
    }
    /// The backend refused `what`.
    pub fn backend(what: impl fmt::Display, cause: impl Into<anyhow::Error>) -> Self {
        Self::new(ErrorKind::Backend, cause.into().context(what.to_string()))
    }
    pub fn broken_pipe() -> Self {
        Self::new(ErrorKind::BrokenPipe, anyhow::anyhow!("broken pipe"))
    }
    /// Marks a failure that happened before anything was sent (see [`Error::is_unsent`]).
    pub fn unsent(mut self) -> Self {
        self.unsent = true;
        self
    }
    /// Whether nothing of the failed operation reached the server.
    pub fn is_unsent(&self) -> bool {
        self.unsent
    }
    /// Adds a second line `kcache: hint: ...`.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// Wraps the message chain in one more level of context.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.inner = self.inner.context(what.to_string());
        self
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    /// The messages of the chain, outermost first.
    pub fn chain(&self) -> Vec<String> {
        self.inner.chain().map(|e| e.to_string()).collect()
    }

    /// The lines `kcache` prints for this error: `kcache: error: <what>: <root cause>`, or with
    /// `verbose` every level of the chain; then the hint. Secrets are removed from every line.
    pub fn render(&self, verbose: bool) -> Vec<String> {
        let chain = self.chain();
        let mut lines = Vec::new();
        let first = chain.first().cloned().unwrap_or_default();
        if verbose {
            lines.push(format!("kcache: error: {first}"));
            for cause in chain.iter().skip(1) {
                lines.push(format!("kcache:   caused by: {cause}"));
            }
        } else if chain.len() > 1 {
            let root = chain.last().cloned().unwrap_or_default();
            lines.push(format!("kcache: error: {first}: {root}"));
        } else {
            lines.push(format!("kcache: error: {first}"));
        }
        if let Some(hint) = &self.hint {
            lines.push(format!("kcache: hint: {hint}"));
        }
        lines.into_iter().map(|l| redact(&one_line(&l))).collect()
    }
}

impl Clone for Error {
    /// The same chain of messages, kind, hint and mark (the causes' own types are not kept:
    /// `anyhow::Error` cannot be cloned).
    fn clone(&self) -> Error {
        let chain = self.chain();
        let mut causes = chain.iter().rev();
        let mut inner = anyhow::anyhow!("{}", causes.next().map(String::as_str).unwrap_or_default());
        for what in causes {
            inner = inner.context(what.clone());
        }
        Error { kind: self.kind, inner, hint: self.hint.clone(), unsent: self.unsent }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", redact(&format!("{:#}", self.inner)))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self)
    }
}

/// Keeps an error on one line of plain text: a server message with new lines must not break the
/// format, and one with control characters (a terminal escape sequence, from any server or
/// library) must not reach the terminal: they are written escaped (`\u{1b}`).
fn one_line(s: &str) -> String {
    let joined = s.split(['\n', '\r']).filter(|p| !p.trim().is_empty()).collect::<Vec<_>>().join(" ");
    if !joined.contains(char::is_control) {
        return joined;
    }
    joined.chars().flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect()
}

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Registers a secret (a password) for the safety net of [`redact`]: a server or a library may
/// echo it in a message kcache did not build. Messages kcache builds hide passwords where they
/// write them (a URL is shown with `***` in its password field), so this net only has to catch
/// what slips through, and it must not garble messages: a password that is an ordinary word
/// (`postgres`, `cache`) would turn `kcache: error:` into `k***: error:`, and show the password
/// by its absence. So only a distinctive secret is registered (see [`distinctive`]).
pub fn register_secret(secret: &str) {
    if !distinctive(secret) {
        return;
    }
    if let Ok(mut secrets) = SECRETS.lock()
        && !secrets.iter().any(|s| s == secret)
    {
        secrets.push(secret.to_string());
        // Longest first, so that a secret containing another one is removed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Whether `secret` is unusual enough to be searched for in finished text without hitting
/// ordinary words: at least 8 characters with something other than letters in it (a digit, a
/// sign, a space), or at least 16 characters.
pub fn distinctive(secret: &str) -> bool {
    let n = secret.chars().count();
    n >= 16 || (n >= 8 && !secret.chars().all(char::is_alphabetic))
}

/// Replaces every registered secret in `text` with `***`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    if let Ok(secrets) = SECRETS.lock() {
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
    }
    out
}

/// [`quote`] of at most the first 100 characters of `s`, with its length when it was cut: a
/// message never repeats a huge argument or batch line.
pub fn excerpt(s: &str) -> String {
    const MAX_CHARS: usize = 100;
    match s.char_indices().nth(MAX_CHARS) {
        None => quote(s),
        Some((cut, _)) => format!("{}... ({} bytes)", quote(&s[..cut]), s.len()),
    }
}

/// Escapes control characters of a key or value echoed in a message, so that a hostile key
/// cannot move the cursor or rewrite the terminal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_default());
        } else if c == '\'' {
            out.push_str("\\'");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_by_default_whole_chain_with_verbose() {
        let e =
            Error::unavailable("cannot reach postgresql at 127.0.0.1:1", anyhow::anyhow!("refused")).context("get 'k'");
        assert_eq!(e.kind().status(), 3);
        assert_eq!(e.render(false), vec!["kcache: error: get 'k': refused"]);
        let v = e.render(true);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], "kcache: error: get 'k'");
        assert_eq!(v[2], "kcache:   caused by: refused");
    }

    #[test]
    fn hint_is_a_second_line() {
        let e = Error::backend("set 'k'", anyhow::anyhow!("relation \"cache\" does not exist"))
            .with_hint("run 'kcache migrate' first");
        assert_eq!(e.kind().status(), 4);
        assert_eq!(e.render(false)[1], "kcache: hint: run 'kcache migrate' first");
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        register_secret("s3cr3t-xyz");
        let e = Error::input("bad url postgresql://u:s3cr3t-xyz@h/db");
        assert!(!e.render(true).concat().contains("s3cr3t-xyz"));
        assert!(!e.to_string().contains("s3cr3t-xyz"));
        assert!(!format!("{e:?}").contains("s3cr3t-xyz"));
    }

    #[test]
    fn ordinary_words_are_never_taken_for_secrets() {
        for word in ["postgres", "cache", "kcache", "error", "redis", "x", "secret"] {
            register_secret(word);
        }
        let e = Error::unavailable(
            "get 'a' on postgresql at postgresql://postgres@127.0.0.1:1/postgres",
            anyhow::anyhow!("refused"),
        );
        assert_eq!(
            e.render(false),
            vec!["kcache: error: get 'a' on postgresql at postgresql://postgres@127.0.0.1:1/postgres: refused"]
        );
        assert!(!distinctive("postgres") && !distinctive("abcdefghijklmno"));
        assert!(distinctive("pass-word") && distinctive("s3cr3t-x") && distinctive("abcdefghijklmnop"));
    }

    #[test]
    fn control_characters_from_a_server_are_escaped() {
        let e = Error::backend("x", anyhow::anyhow!("bad \u{1b}[2J reply\t\u{7}"));
        assert_eq!(e.render(false), vec!["kcache: error: x: bad \\u{1b}[2J reply\\t\\u{7}"]);
    }

    #[test]
    fn multi_line_causes_stay_on_one_line() {
        let e = Error::backend("x", anyhow::anyhow!("line one\nline two"));
        assert_eq!(e.render(false), vec!["kcache: error: x: line one line two"]);
    }

    #[test]
    fn excerpts_are_short() {
        assert_eq!(excerpt("10x"), "'10x'");
        let long = "é".repeat(1000);
        assert_eq!(excerpt(&long), format!("'{}'... (2000 bytes)", "é".repeat(100)));
    }

    #[test]
    fn quote_escapes_control_characters() {
        assert_eq!(quote("a\u{1b}[2Jb\n"), "'a\\u{1b}[2Jb\\n'");
        assert_eq!(quote("é"), "'é'");
    }
}
