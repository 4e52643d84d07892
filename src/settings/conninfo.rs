//! libpq's `key=value` connection strings (`host=/tmp dbname=x password='a b'`): the one reader
//! of their syntax, and libpq's list of keywords.
//!
//! It lives with the settings, which every build has, because two places need it: the PostgreSQL
//! backend reads a connection string with it, and [`super::redact_url`] shows one with its
//! password hidden (in any build, the `postgresql` feature or not).
//!
//! The syntax is libpq's (`conninfo_parse`): pairs separated by white space; white space is
//! allowed around `=`; a value is either a run of characters up to the next white space, or
//! `'...'`; in both, `\` makes the next character literal.

/// The libpq keywords kcache honours, with the environment variable libpq reads for each.
pub(crate) const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("dbname", Some("PGDATABASE")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("options", Some("PGOPTIONS")),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    ("client_encoding", None),
    ("gssencmode", None),
];

/// libpq keywords kcache knows but cannot honour: named as such in the error.
pub(crate) const UNSUPPORTED: &[&str] = &[
    "service",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslcompression",
    "sslsni",
    "sslcertmode",
    "sslkeylogfile",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "min_protocol_version",
    "max_protocol_version",
    "requirepeer",
    "require_auth",
    "requiressl",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "replication",
    "scram_client_key",
    "scram_server_key",
];

/// Names a connection string may use besides the keywords: aliases kcache reads.
const ALIASES: &[&str] = &["ssl", "keepalives_retries"];

/// Whether `key` is a name libpq (or kcache, for [`ALIASES`]) knows in a connection string.
pub fn is_keyword(key: &str) -> bool {
    KEYWORDS.iter().any(|(k, _)| *k == key) || UNSUPPORTED.contains(&key) || ALIASES.contains(&key)
}

/// Why a connection string cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// A word with no `=` after it; the word is given (callers decide whether to show it).
    MissingEquals(String),
    /// A `'` that is never closed.
    Unterminated,
}

/// The `(key, value)` pairs of a connection string, in order, values unquoted and unescaped.
/// Stops after the first problem.
pub struct Pairs<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    failed: bool,
}

impl<'a> Pairs<'a> {
    pub fn new(text: &'a str) -> Self {
        Pairs { chars: text.chars().peekable(), failed: false }
    }

    fn skip_space(&mut self) {
        while self.chars.next_if(|c| c.is_whitespace()).is_some() {}
    }
}

impl Iterator for Pairs<'_> {
    type Item = Result<(String, String), Problem>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        self.skip_space();
        self.chars.peek()?;
        let mut key = String::new();
        while let Some(c) = self.chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        self.skip_space();
        if self.chars.next_if_eq(&'=').is_none() {
            self.failed = true;
            return Some(Err(Problem::MissingEquals(key)));
        }
        self.skip_space();
        let mut value = String::new();
        if self.chars.next_if_eq(&'\'').is_some() {
            loop {
                match self.chars.next() {
                    None => {
                        self.failed = true;
                        return Some(Err(Problem::Unterminated));
                    }
                    Some('\\') => value.extend(self.chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = self.chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(self.chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        Some(Ok((key, value)))
    }
}

/// `value` written so that [`Pairs`] reads it back as it is: bare when it can be, else in
/// quotes with `'` and `\` escaped.
pub fn quote_value(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Result<Vec<(String, String)>, Problem> {
        Pairs::new(text).collect()
    }

    fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn libpq_syntax() {
        assert_eq!(pairs("host=h port = 1\tuser=u"), Ok(owned(&[("host", "h"), ("port", "1"), ("user", "u")])));
        assert_eq!(pairs("password='a b\\'c\\\\' x=a\\ b"), Ok(owned(&[("password", "a b'c\\"), ("x", "a b")])));
        assert_eq!(pairs("a='' b=''"), Ok(owned(&[("a", ""), ("b", "")])));
        assert_eq!(pairs("  "), Ok(Vec::new()));
        assert_eq!(pairs("host=h alone"), Err(Problem::MissingEquals("alone".into())));
        assert_eq!(pairs("password='open"), Err(Problem::Unterminated));
    }

    #[test]
    fn quoted_values_read_back_as_they_were() {
        for value in ["plain", "", "a b", "it's", "back\\slash", "tab\there", "='x'", "é ü"] {
            let text = format!("k={} next=1", quote_value(value));
            assert_eq!(pairs(&text), Ok(owned(&[("k", value), ("next", "1")])), "{text}");
        }
        assert_eq!(quote_value("plain"), "plain");
        assert_eq!(quote_value("a b"), "'a b'");
    }

    #[test]
    fn keywords_and_aliases() {
        assert!(is_keyword("password") && is_keyword("sslpassword") && is_keyword("ssl"));
        assert!(!is_keyword("pasword") && !is_keyword("beta"));
    }
}
