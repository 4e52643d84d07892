//! Glob patterns for `keys`, `flush --match`, `dump`, `copy` and `diff` (SPEC, "Patterns"),
//! parsed once, matched against the whole key with the prefix stripped.
//!
//! `*` any run of characters, `?` one character, `[abc]`, `[a-z]`, `[!a]` and `[^a]` one
//! character of a set, `\` makes the next character literal; every other character (`%` and `_`
//! included) is literal. Matching is on characters (Unicode scalar values), not bytes.
//!
//! Backends do not translate the whole pattern into their own language (SQL `LIKE`, Redis's glob,
//! which differ in details): each walks the keys that start with the prefix and the pattern's
//! [`Pattern::literal_prefix`], which is exact in every language once escaped, and kcache checks
//! every key it walks with [`Pattern::matches`]. So the same pattern selects the same keys
//! everywhere, whatever each backend's glob does with `[`, `\` or `^`.

use crate::error::{Error, Result, excerpt};

/// One element of a pattern.
#[derive(Clone, Debug, PartialEq)]
enum Token {
    /// A literal character.
    Char(char),
    /// `?`
    One,
    /// `*`
    Any,
    /// `[...]`: ranges (a single character is a range of one), negated with `!` or `^`.
    Set { negated: bool, ranges: Vec<(char, char)> },
}

/// A parsed glob pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

impl Default for Pattern {
    /// `*`: every key.
    fn default() -> Pattern {
        Pattern { tokens: vec![Token::Any] }
    }
}

impl std::str::FromStr for Pattern {
    type Err = String;

    /// Parses a glob; a malformed one (an unclosed `[`, an empty set `[]`, a trailing `\`, a
    /// reversed range `[z-a]`) is an error saying what is wrong.
    fn from_str(text: &str) -> std::result::Result<Pattern, String> {
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => {
                    if tokens.last() == Some(&Token::Any) {
                        continue; // `**` is `*`
                    }
                    Token::Any
                }
                '?' => Token::One,
                '\\' => Token::Char(chars.next().ok_or("the pattern ends with a lone '\\'")?),
                '[' => {
                    let negated = chars.next_if(|c| matches!(c, '!' | '^')).is_some();
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    // A `]` right after `[` or `[!` is a member, as in shell globs.
                    let mut first = true;
                    while let Some(c) = chars.next() {
                        let low = match c {
                            ']' if !first => {
                                closed = true;
                                break;
                            }
                            '\\' => chars.next().ok_or("the pattern ends with a lone '\\'")?,
                            c => c,
                        };
                        first = false;
                        let high = if chars.peek() == Some(&'-') {
                            let mut ahead = chars.clone();
                            ahead.next();
                            match ahead.peek() {
                                Some(']') | None => low, // `[a-]`: `-` is a member
                                Some(_) => {
                                    chars.next();
                                    match chars.next() {
                                        Some('\\') => chars.next().ok_or("the pattern ends with a lone '\\'")?,
                                        Some(h) => h,
                                        None => low,
                                    }
                                }
                            }
                        } else {
                            low
                        };
                        if high < low {
                            return Err(format!("the range '{low}-{high}' is reversed"));
                        }
                        ranges.push((low, high));
                    }
                    if !closed {
                        return Err("a '[' is never closed by ']'".into());
                    }
                    Token::Set { negated, ranges }
                }
                c => Token::Char(c),
            });
        }
        Ok(Pattern { tokens })
    }
}

impl Pattern {
    /// Parses `text` (a command's PATTERN argument); the error is an input error (status 2).
    pub fn parse(text: &str) -> Result<Pattern> {
        text.parse().map_err(|why| Error::input(format!("the pattern {} is malformed: {why}", excerpt(text))))
    }

    /// The literal characters the pattern starts with: every key it matches starts with them.
    pub fn literal_prefix(&self) -> String {
        self.tokens.iter().map_while(|t| if let Token::Char(c) = t { Some(*c) } else { None }).collect()
    }

    /// Whether every key that starts with [`Pattern::literal_prefix`] matches (`*`, `abc*`):
    /// then a walk from that prefix needs no further check, and a count of it is exact.
    pub fn is_prefix_glob(&self) -> bool {
        let literal = self.tokens.iter().take_while(|t| matches!(t, Token::Char(_))).count();
        self.tokens.len() == literal + 1 && self.tokens.last() == Some(&Token::Any)
    }

    /// Whether `key` (prefix stripped) matches the whole pattern.
    pub fn matches(&self, key: &str) -> bool {
        let key: Vec<char> = key.chars().collect();
        // Classic glob matching with backtracking to the last `*`: linear in practice, at worst
        // the product of the lengths (never exponential).
        let (mut t, mut k) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while k < key.len() {
            match self.tokens.get(t) {
                Some(Token::Any) => {
                    star = Some((t, k));
                    t += 1;
                    continue;
                }
                Some(token) if one(token, key[k]) => {
                    t += 1;
                    k += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((st, sk)) => {
                    t = st + 1;
                    k = sk + 1;
                    star = Some((st, sk + 1));
                }
                None => return false,
            }
        }
        self.tokens[t..].iter().all(|t| *t == Token::Any)
    }
}

/// Whether a token that matches exactly one character matches `c`.
fn one(token: &Token, c: char) -> bool {
    match token {
        Token::Char(x) => *x == c,
        Token::One => true,
        Token::Set { negated, ranges } => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated,
        Token::Any => false,
    }
}

/// `text` escaped for SQL `LIKE ... ESCAPE '\'`: `%`, `_` and `\` are literal.
pub fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn pattern_semantics() {
        for (pattern, key, expected) in [
            ("*", "", true),
            ("*", "anything", true),
            ("a*", "abc", true),
            ("a*", "ba", false),
            ("*c", "abc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a?c", "aéc", true),
            ("[abc]x", "bx", true),
            ("[abc]x", "dx", false),
            ("[a-c]", "b", true),
            ("[!a-c]", "b", false),
            ("[^a-c]", "d", true),
            ("[]]", "]", true),
            ("[!]]", "a", true),
            ("[a-]", "-", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("a\\?b", "a?b", true),
            ("100%", "100%", true),
            ("a_b", "axb", false),
            ("a_b", "a_b", true),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b*", "xxbxxaxx", false),
            ("user:*:session", "user:42:session", true),
            ("user:*:session", "user:42:sessions", false),
            ("é*", "éa", true),
        ] {
            assert_eq!(p(pattern).matches(key), expected, "{pattern} ~ {key}");
        }
    }

    #[test]
    fn malformed_patterns_say_why() {
        for (bad, why) in [("[abc", "never closed"), ("a\\", "lone"), ("[z-a]", "reversed"), ("[", "never closed")] {
            let e = bad.parse::<Pattern>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert_eq!(Pattern::parse(bad).unwrap_err().kind(), crate::error::ErrorKind::Input);
        }
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(p("user:42:*").literal_prefix(), "user:42:");
        assert_eq!(p("a\\*b*").literal_prefix(), "a*b");
        assert_eq!(p("*x").literal_prefix(), "");
        assert_eq!(p("[a]x").literal_prefix(), "");
        assert_eq!(Pattern::default().literal_prefix(), "");
    }

    #[test]
    fn escapes_make_every_special_character_literal() {
        assert_eq!(like_escape("a%b_c\\d"), "a\\%b\\_c\\\\d");
    }
}
