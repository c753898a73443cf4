//! The template functions: Alertmanager's (`toUpper`, `toLower`, `title`,
//! `trimSpace`, `join`, `safeHtml`, `reReplaceAll`, `stringSlice`, `match`),
//! the stand-ins for its data's Go methods (see `super::rewrite`), `_emit`, and
//! gtmpl's builtins wrapped so that a missing label reads as `""` everywhere,
//! as a Go `map[string]string` gives it.
//!
//! In the email `html` field values are escaped as Alertmanager's
//! `html/template` escapes them (as element text or a quoted attribute):
//! `_emit` escapes what it prints unless `safeHtml` (or `html`, already
//! escaped) marked it safe. The mark is an object of one key that no data
//! has, so it survives being passed along, and every function reads it as its
//! text.

use std::collections::HashMap;

use gtmpl_ng::{Func, FuncError, Value};

/// How what a template prints is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As it is (`text/template`): every field but email's `html`.
    Text,
    /// HTML-escaped unless marked safe (`html/template`): email's `html`.
    Html,
}

/// The key of the object that marks a string as safe HTML.
const SAFE: &str = "\u{0}safeHtml";

/// The functions a template of `mode` is parsed with.
pub fn all(mode: Mode) -> Vec<(&'static str, Func)> {
    let mut funcs: Vec<(&'static str, Func)> = vec![
        ("toUpper", to_upper as Func),
        ("toLower", to_lower),
        ("title", title),
        ("trimSpace", trim_space),
        ("join", join),
        ("reReplaceAll", re_replace_all),
        ("stringSlice", string_slice),
        ("match", matches),
        ("_alertsFiring", alerts_firing),
        ("_alertsResolved", alerts_resolved),
        ("_sortedPairs", sorted_pairs),
        ("_names", names),
        ("_values", values),
    ];
    funcs.extend_from_slice(lenient::ALL);
    match mode {
        Mode::Text => funcs.extend([
            ("safeHtml", to_text as Func),
            (super::rewrite::EMIT, emit_text),
        ]),
        Mode::Html => funcs.extend([
            ("safeHtml", safe_html as Func),
            ("html", html_safe),
            (super::rewrite::EMIT, emit_html),
        ]),
    }
    funcs
}

/// A value as text: a missing one as `""`, safe HTML as its text, anything
/// else as gtmpl prints it.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::NoValue | Value::Nil => String::new(),
        v => safe_text(v).map_or_else(|| v.to_string(), str::to_owned),
    }
}

fn safe_text(v: &Value) -> Option<&str> {
    match v {
        Value::Object(o) if o.len() == 1 => match o.get(SAFE) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn safe(s: String) -> Value {
    Value::Object(HashMap::from([(SAFE.to_owned(), Value::String(s))]))
}

/// The arguments with missing values as `""` and safe HTML as its text.
fn plain(args: &[Value]) -> Vec<Value> {
    args.iter()
        .map(|v| match v {
            Value::NoValue => Value::String(String::new()),
            v => safe_text(v).map_or_else(|| v.clone(), |s| Value::String(s.to_owned())),
        })
        .collect()
}

fn exactly<'a, const N: usize>(name: &str, args: &'a [Value]) -> Result<&'a [Value; N], FuncError> {
    args.try_into()
        .map_err(|_| FuncError::ExactlyXArgs(name.to_owned(), N))
}

fn to_upper(args: &[Value]) -> Result<Value, FuncError> {
    let [s] = exactly("toUpper", args)?;
    Ok(Value::String(text(s).to_uppercase()))
}

fn to_lower(args: &[Value]) -> Result<Value, FuncError> {
    let [s] = exactly("toLower", args)?;
    Ok(Value::String(text(s).to_lowercase()))
}

fn trim_space(args: &[Value]) -> Result<Value, FuncError> {
    let [s] = exactly("trimSpace", args)?;
    Ok(Value::String(text(s).trim().to_owned()))
}

/// Alertmanager's `title` (`cases.Title` since 0.25): each word's first
/// letter in upper case, the rest in lower case; `_` and an apostrophe within
/// a word do not end it.
fn title(args: &[Value]) -> Result<Value, FuncError> {
    let [s] = exactly("title", args)?;
    let mut out = String::new();
    let mut in_word = false;
    for c in text(s).chars() {
        if c.is_alphanumeric() || c == '_' || (in_word && matches!(c, '\'' | '’')) {
            if in_word {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            in_word = true;
        } else {
            out.push(c);
            in_word = false;
        }
    }
    Ok(Value::String(out))
}

/// `join sep list`, as Alertmanager's (`{{ .Names | join ", " }}`).
fn join(args: &[Value]) -> Result<Value, FuncError> {
    let [sep, list] = exactly("join", args)?;
    let items: Vec<String> = match list {
        Value::Array(items) => items.iter().map(text).collect(),
        Value::NoValue | Value::Nil => vec![],
        other => {
            return Err(FuncError::Generic(format!(
                "join: expected a list, got {other}"
            )))
        }
    };
    Ok(Value::String(items.join(&text(sep))))
}

fn regex(name: &str, pattern: &Value) -> Result<regex::Regex, FuncError> {
    regex::RegexBuilder::new(&text(pattern))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| FuncError::Generic(format!("{name}: {e}")))
}

/// `reReplaceAll pattern replacement text`, with Go's `$1`, `${name}` expansion.
fn re_replace_all(args: &[Value]) -> Result<Value, FuncError> {
    let [pattern, replacement, s] = exactly("reReplaceAll", args)?;
    let re = regex("reReplaceAll", pattern)?;
    Ok(Value::String(
        re.replace_all(&text(s), text(replacement).as_str())
            .into_owned(),
    ))
}

/// `match pattern text`: whether the pattern matches anywhere in the text.
fn matches(args: &[Value]) -> Result<Value, FuncError> {
    let [pattern, s] = exactly("match", args)?;
    Ok(Value::Bool(regex("match", pattern)?.is_match(&text(s))))
}

fn string_slice(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::Array(
        args.iter().map(|v| Value::String(text(v))).collect(),
    ))
}

fn to_text(args: &[Value]) -> Result<Value, FuncError> {
    let [s] = exactly("safeHtml", args)?;
    Ok(Value::String(text(s)))
}

fn safe_html(args: &[Value]) -> Result<Value, FuncError> {
    let [s] = exactly("safeHtml", args)?;
    Ok(safe(text(s)))
}

/// `html` in the `html` field: escaped once, so not again when printed.
fn html_safe(args: &[Value]) -> Result<Value, FuncError> {
    Ok(safe(text(&gtmpl_ng::funcs::html(&plain(args))?)))
}

fn emit_text(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = exactly(super::rewrite::EMIT, args)?;
    Ok(match v {
        Value::NoValue => Value::String(String::new()),
        v => safe_text(v).map_or_else(|| v.clone(), |s| Value::String(s.to_owned())),
    })
}

fn emit_html(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = exactly(super::rewrite::EMIT, args)?;
    Ok(Value::String(match safe_text(v) {
        Some(s) => s.to_owned(),
        None => crate::html::html_escape(&text(v)),
    }))
}

/// The alerts of a list whose `.Status` is `status`.
fn alerts_with(name: &str, status: &str, args: &[Value]) -> Result<Value, FuncError> {
    let [alerts] = exactly(name, args)?;
    match alerts {
        Value::Array(list) => Ok(Value::Array(
            list.iter()
                .filter(|a| matches!(a, Value::Object(o) if o.get("Status") == Some(&Value::from(status))))
                .cloned()
                .collect(),
        )),
        Value::NoValue | Value::Nil => Ok(Value::Array(vec![])),
        other => Err(FuncError::Generic(format!(
            "{}: not a list of alerts: {other}",
            &name[1..]
        ))),
    }
}

fn alerts_firing(args: &[Value]) -> Result<Value, FuncError> {
    alerts_with("_alertsFiring", "firing", args)
}

fn alerts_resolved(args: &[Value]) -> Result<Value, FuncError> {
    alerts_with("_alertsResolved", "resolved", args)
}

/// A label set's pairs sorted by name (`.SortedPairs`: each has `.Name` and
/// `.Value`), or the pairs of a list that already holds them.
fn pairs(name: &str, v: &Value) -> Result<Vec<(String, Value)>, FuncError> {
    match v {
        Value::Map(map) => {
            let mut pairs: Vec<(String, Value)> =
                map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(pairs)
        }
        Value::Array(list) => list
            .iter()
            .map(|p| match p {
                Value::Object(o) => Ok((
                    o.get("Name").map(text).unwrap_or_default(),
                    o.get("Value").cloned().unwrap_or(Value::NoValue),
                )),
                other => Err(FuncError::Generic(format!("{name}: not a pair: {other}"))),
            })
            .collect(),
        Value::NoValue | Value::Nil => Ok(vec![]),
        other => Err(FuncError::Generic(format!(
            "{name}: not a label set: {other}"
        ))),
    }
}

fn sorted_pairs(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = exactly("SortedPairs", args)?;
    Ok(Value::Array(
        pairs("SortedPairs", v)?
            .into_iter()
            .map(|(name, value)| {
                Value::Object(HashMap::from([
                    ("Name".to_owned(), Value::String(name)),
                    ("Value".to_owned(), value),
                ]))
            })
            .collect(),
    ))
}

fn names(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = exactly("Names", args)?;
    Ok(Value::Array(
        pairs("Names", v)?
            .into_iter()
            .map(|(n, _)| Value::String(n))
            .collect(),
    ))
}

fn values(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = exactly("Values", args)?;
    Ok(Value::Array(
        pairs("Values", v)?.into_iter().map(|(_, v)| v).collect(),
    ))
}

/// gtmpl's builtins that read their arguments' values, taking a missing
/// value as `""` (`{{ eq .Labels.team "" }}` is true, `{{ printf "%s"
/// .Labels.team }}` prints nothing) and safe HTML as its text.
mod lenient {
    use gtmpl_ng::{Func, FuncError, Value};

    macro_rules! lenient {
        ($($name:ident),+) => {
            $(fn $name(args: &[Value]) -> Result<Value, FuncError> {
                gtmpl_ng::funcs::$name(&super::plain(args))
            })+
            pub const ALL: &[(&str, Func)] = &[$((stringify!($name), $name as Func)),+];
        };
    }

    lenient!(eq, ne, lt, le, gt, ge, len, print, printf, println, html, js, urlquery, slice);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(f: Func, args: &[Value]) -> Value {
        f(args).unwrap()
    }

    fn s(v: &str) -> Value {
        Value::from(v)
    }

    #[test]
    fn strings() {
        assert_eq!(call(to_upper, &[s("db-1")]), s("DB-1"));
        assert_eq!(call(to_lower, &[s("CRITICAL")]), s("critical"));
        assert_eq!(call(trim_space, &[s("  x \n")]), s("x"));
        assert_eq!(
            call(title, &[s("high_cpu on db-1: don't PANIC")]),
            s("High_cpu On Db-1: Don't Panic")
        );
        assert_eq!(call(to_upper, &[Value::NoValue]), s(""));
        assert!(to_upper(&[]).is_err());
    }

    #[test]
    fn lists() {
        let list = call(string_slice, &[s("a"), s("b"), Value::NoValue]);
        assert_eq!(list, Value::Array(vec![s("a"), s("b"), s("")]));
        assert_eq!(call(join, &[s(", "), list]), s("a, b, "));
        assert_eq!(call(join, &[s(","), Value::NoValue]), s(""));
        assert!(join(&[s(","), s("not a list")]).is_err());
    }

    #[test]
    fn regexes() {
        assert_eq!(
            call(
                re_replace_all,
                &[s(r"^(\w+)-(\d+)$"), s("$2 of $1"), s("db-1")]
            ),
            s("1 of db")
        );
        assert_eq!(
            call(re_replace_all, &[s(":.*"), s(""), s("db-1:9100")]),
            s("db-1")
        );
        assert_eq!(
            call(matches, &[s("^crit"), s("critical")]),
            Value::Bool(true)
        );
        assert_eq!(
            call(matches, &[s("warn"), s("critical")]),
            Value::Bool(false)
        );
        let err = matches(&[s("("), s("x")]).unwrap_err().to_string();
        assert!(err.starts_with("match: regex parse error"), "{err}");
    }

    #[test]
    fn safe_html_is_escaped_only_where_it_must_be() {
        assert_eq!(call(to_text, &[s("<b>")]), s("<b>"));
        assert_eq!(call(emit_text, &[s("<b>")]), s("<b>"));
        assert_eq!(call(emit_html, &[s("<b>")]), s("&lt;b&gt;"));
        assert_eq!(call(emit_html, &[call(safe_html, &[s("<b>")])]), s("<b>"));
        assert_eq!(
            call(emit_html, &[call(html_safe, &[s("<b>")])]),
            s("&lt;b&gt;")
        );
        assert_eq!(call(to_upper, &[call(safe_html, &[s("<b>")])]), s("<B>"));
    }

    #[test]
    fn missing_values_read_as_empty() {
        assert_eq!(call(emit_text, &[Value::NoValue]), s(""));
        assert_eq!(call(emit_html, &[Value::NoValue]), s(""));
        let eq = lenient::ALL.iter().find(|(n, _)| *n == "eq").unwrap().1;
        assert_eq!(call(eq, &[Value::NoValue, s("")]), Value::Bool(true));
        let len = lenient::ALL.iter().find(|(n, _)| *n == "len").unwrap().1;
        assert_eq!(call(len, &[Value::NoValue]), Value::from(0));
    }
}
