//! Label matchers in Alertmanager's syntax: `name="value"`, `name!=value`,
//! `name=~"regex"`, `name!~"regex"`. Regexes are anchored as Alertmanager
//! anchors them (`^(?:…)$`), and a missing label matches as the empty string.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

/// Where matchers read label values: an alert's labels, or a map in tests.
pub trait LabelLookup {
    fn label(&self, name: &str) -> Option<&str>;
}

impl LabelLookup for BTreeMap<String, String> {
    fn label(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped = self
            .value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        write!(f, "{}{}\"{}\"", self.name, self.op.as_str(), escaped)
    }
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(raw: &str) -> Result<String, String> {
    let Some(inner) = raw.strip_prefix('"') else {
        if raw.contains('"') {
            return Err(format!("unquoted value {raw:?} contains a quote"));
        }
        return Ok(raw.to_owned());
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or_else(|| format!("value {raw:?} has no closing quote"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                // Alertmanager keeps other escapes as written (they matter in regexes).
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return Err(format!("value {raw:?} ends in a lone backslash")),
            },
            '"' => return Err(format!("value {raw:?} has an unescaped quote inside")),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, String> {
        if !is_label_name(name) {
            return Err(format!("{name:?} is not a valid label name"));
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("invalid regex {value:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(Self {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
            regex,
        })
    }

    /// Checks one matcher's syntax without compiling its regex (cheap: for
    /// rendering many stored matchers). Returns its canonical text.
    pub fn check_syntax(input: &str) -> Result<String, String> {
        let (name, op, value) = Self::split(input)?;
        if !is_label_name(name) {
            return Err(format!(
                "matcher {input:?}: {name:?} is not a valid label name"
            ));
        }
        if matches!(op, MatchOp::Regex | MatchOp::NotRegex) {
            regex_syntax::Parser::new()
                .parse(&format!("^(?:{value})$"))
                .map_err(|e| format!("matcher {input:?}: invalid regex {value:?}: {e}"))?;
        }
        Ok(Self {
            name: name.to_owned(),
            op,
            value,
            regex: None,
        }
        .to_string())
    }

    fn split(input: &str) -> Result<(&str, MatchOp, String), String> {
        let s = input.trim();
        let op_at = s
            .find(['=', '!'])
            .ok_or_else(|| format!("matcher {input:?} has no operator (=, !=, =~, !~)"))?;
        let name = s[..op_at].trim();
        let rest = &s[op_at..];
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (MatchOp::Regex, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (MatchOp::Equal, v)
        } else {
            return Err(format!("matcher {input:?} has no operator (=, !=, =~, !~)"));
        };
        let value = unquote(value.trim()).map_err(|e| format!("matcher {input:?}: {e}"))?;
        Ok((name, op, value))
    }

    /// Parses one matcher such as `severity=~"critical|warning"`.
    pub fn parse(input: &str) -> Result<Self, String> {
        let (name, op, value) = Self::split(input)?;
        Self::new(name, op, &value).map_err(|e| format!("matcher {input:?}: {e}"))
    }

    pub fn matches(&self, labels: &(impl LabelLookup + ?Sized)) -> bool {
        let v = labels.label(&self.name).unwrap_or("");
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

/// A channel's matchers: all must match (an empty list matches everything).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matchers(pub Vec<Matcher>);

impl Matchers {
    pub fn parse_all<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        items
            .iter()
            .map(|m| Matcher::parse(m.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Matchers)
    }

    pub fn matches(&self, labels: &(impl LabelLookup + ?Sized)) -> bool {
        self.0.iter().all(|m| m.matches(labels))
    }

    /// The canonical text of each matcher, as stored and shown.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operators() {
        let l = labels(&[("alertname", "high_cpu"), ("severity", "critical")]);
        assert!(Matcher::parse(r#"alertname="high_cpu""#)
            .unwrap()
            .matches(&l));
        assert!(Matcher::parse("alertname=high_cpu").unwrap().matches(&l));
        assert!(!Matcher::parse(r#"alertname!="high_cpu""#)
            .unwrap()
            .matches(&l));
        assert!(Matcher::parse(r#"severity=~"critical|warning""#)
            .unwrap()
            .matches(&l));
        assert!(Matcher::parse(r#"severity!~"info""#).unwrap().matches(&l));
        assert!(Matcher::parse(r#" team = "" "#).unwrap().matches(&l));
    }

    #[test]
    fn regex_is_anchored() {
        let l = labels(&[("severity", "critical-ish")]);
        assert!(!Matcher::parse(r#"severity=~"critical""#)
            .unwrap()
            .matches(&l));
        assert!(Matcher::parse(r#"severity=~"critical.*""#)
            .unwrap()
            .matches(&l));
    }

    #[test]
    fn bad_matchers_say_why() {
        assert!(Matcher::parse("nooperator")
            .unwrap_err()
            .contains("operator"));
        assert!(Matcher::parse(r#"1abc="x""#)
            .unwrap_err()
            .contains("label name"));
        assert!(Matcher::parse(r#"a=~"(""#).unwrap_err().contains("regex"));
        assert!(Matcher::parse(r#"a="x"#)
            .unwrap_err()
            .contains("closing quote"));
    }

    #[test]
    fn syntax_check_agrees_with_parse() {
        for m in [
            r#"a="x""#,
            r#"a=~"crit.*""#,
            "a != b",
            r#"a=~"(""#,
            "1a=x",
            "nope",
            r#"a="x"#,
        ] {
            assert_eq!(
                Matcher::check_syntax(m).ok(),
                Matcher::parse(m).ok().map(|p| p.to_string()),
                "{m}"
            );
        }
    }

    #[test]
    fn display_roundtrips_escapes() {
        let m = Matcher::parse(r#"a="say \"hi\"\n""#).unwrap();
        assert_eq!(m.value, "say \"hi\"\n");
        assert_eq!(Matcher::parse(&m.to_string()).unwrap(), m);
    }

    proptest! {
        #[test]
        fn equal_roundtrips(name in "[a-z_][a-z0-9_]{0,10}", value in "\\PC{0,20}") {
            let m = Matcher::new(&name, MatchOp::Equal, &value).unwrap();
            let back = Matcher::parse(&m.to_string()).unwrap();
            prop_assert_eq!(&back, &m);
            prop_assert!(back.matches(&labels(&[(&name, &value)])));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Matcher::parse(&s);
        }
    }
}
