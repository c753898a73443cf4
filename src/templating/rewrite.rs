//! What a template's source becomes before gtmpl parses it, for the two things
//! Go's `text/template` does over Alertmanager's data that gtmpl's values
//! cannot carry:
//!
//! - **Methods.** `.Alerts.Firing`, `.Alerts.Resolved` and a label set's
//!   `.SortedPairs`, `.Names` and `.Values` are Go methods; a gtmpl list has no
//!   fields, and a method stored in a map would show up in `range`. A field
//!   chain naming one becomes a call of a registered function on what precedes
//!   it: `.Alerts.Firing` → `(_alertsFiring .Alerts)`,
//!   `$.CommonLabels.SortedPairs` → `(_sortedPairs $.CommonLabels)`. Only
//!   chains are rewritten: `{{ with .Alerts }}{{ .Firing }}` works, since
//!   `.Firing` is a chain on dot; `(.Alerts).Firing` does not.
//! - **Missing keys.** Labels and annotations are `map[string]string` in Go, so
//!   a missing key reads as `""`; gtmpl renders it as `<no value>`. Each action
//!   that prints (not `if`, `range`, `end`, …, and not a variable declaration)
//!   ends in `| _emit`, which prints a missing value as `""` (and, in the email
//!   `html` field, escapes what it prints; see `super::funcs`).
//!
//! Rewriting the source rather than the parsed tree: gtmpl's tree is private.
//! The scan knows enough of the lexer to be safe: it skips quoted strings, raw
//! strings, characters and comments, and text outside `{{ }}` is never
//! touched. A parse error's column may be off by what was inserted before it
//! on its line.

/// The function every printing action's value passes through.
pub const EMIT: &str = "_emit";

/// Go methods of Alertmanager's data, and the functions standing in for them.
const METHODS: &[(&str, &str)] = &[
    ("Firing", "_alertsFiring"),
    ("Resolved", "_alertsResolved"),
    ("SortedPairs", "_sortedPairs"),
    ("Names", "_names"),
    ("Values", "_values"),
];

/// Keywords of actions that print nothing themselves.
const KEYWORDS: &[&str] = &[
    "block", "break", "continue", "define", "else", "end", "if", "range", "template", "with",
];

/// The source with method chains made calls and printing actions ending in
/// [`EMIT`]. An unterminated action is left for the parser to report.
pub fn rewrite(src: &str) -> String {
    let mut out = String::with_capacity(src.len() + 32);
    let mut rest = src;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(len) = action_len(after) else {
            out.push_str(&rest[open..]);
            return out;
        };
        out.push_str("{{");
        out.push_str(&action(&after[..len]));
        out.push_str("}}");
        rest = &after[len + 2..];
    }
    out.push_str(rest);
    out
}

/// The length of an action's body: up to the first `}}` outside quotes and
/// comments.
fn action_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_quoted(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = s[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2)
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the quoted literal starting at `start`.
fn skip_quoted(b: &[u8], start: usize) -> usize {
    let quote = b[start];
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if quote != b'`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// One action's body rewritten, its trim markers (`{{- ` and ` -}}`) kept.
fn action(body: &str) -> String {
    let lead = if body.starts_with('-') && body[1..].starts_with(char::is_whitespace) {
        "-"
    } else {
        ""
    };
    let inner = &body[lead.len()..];
    let (inner, trail) = match inner.strip_suffix('-') {
        Some(i) if i.ends_with(char::is_whitespace) => (i, "-"),
        _ => (inner, ""),
    };
    if inner.trim_start().starts_with("/*") {
        return body.to_owned();
    }
    let inner = methods(inner);
    if prints(&inner) {
        format!("{lead}{} | {EMIT} {trail}", inner.trim_end())
    } else {
        format!("{lead}{inner}{trail}")
    }
}

/// Whether an action's pipeline is printed: not a keyword's, not empty, and
/// not a variable's declaration or assignment.
fn prints(inner: &str) -> bool {
    let inner = inner.trim_start();
    let word: String = inner
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if inner.is_empty() || KEYWORDS.contains(&word.as_str()) {
        return false;
    }
    if inner.starts_with('$') {
        let after_vars = inner.trim_start_matches(|c: char| {
            c == '$' || c == ',' || c == '_' || c.is_alphanumeric() || c.is_whitespace()
        });
        if after_vars.starts_with(":=") || after_vars.starts_with('=') {
            return false;
        }
    }
    true
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// An action's body with each field chain that names a method rewritten.
fn methods(inner: &str) -> String {
    let b = inner.as_bytes();
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            let end = skip_quoted(b, i);
            out.push_str(&inner[i..end]);
            i = end;
            continue;
        }
        let starts_chain = matches!(c, b'$' | b'.')
            && (i == 0 || !(is_ident(b[i - 1]) || matches!(b[i - 1], b')' | b'.')));
        if !starts_chain {
            let end = i + inner[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&inner[i..end]);
            i = end;
            continue;
        }
        let end = chain_end(b, i);
        out.push_str(&chain(&inner[i..end]));
        i = end.max(i + 1);
    }
    out
}

/// The end of the chain starting at `start`: `$name`, `$` or nothing, then
/// `.field`s.
fn chain_end(b: &[u8], start: usize) -> usize {
    let mut j = start;
    if b[j] == b'$' {
        j += 1;
        while j < b.len() && is_ident(b[j]) {
            j += 1;
        }
    }
    while j + 1 < b.len() && b[j] == b'.' && is_ident(b[j + 1]) && !b[j + 1].is_ascii_digit() {
        j += 1;
        while j < b.len() && is_ident(b[j]) {
            j += 1;
        }
    }
    // A lone `.` is dot itself.
    if j == start && b[start] == b'.' {
        j += 1;
    }
    j
}

/// A chain with its methods made calls: `.A.Firing` → `(_alertsFiring .A)`.
fn chain(text: &str) -> String {
    let (prefix, fields) = match text.find('.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => return text.to_owned(),
    };
    if fields.is_empty() {
        return text.to_owned();
    }
    let mut expr = prefix.to_owned();
    for field in fields.split('.') {
        match METHODS.iter().find(|(m, _)| *m == field) {
            Some((_, func)) => {
                let receiver = if expr.is_empty() { "." } else { &expr };
                expr = format!("({func} {receiver})");
            }
            None => {
                expr.push('.');
                expr.push_str(field);
            }
        }
    }
    expr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_actions_end_in_emit() {
        assert_eq!(rewrite("a {{ .X }} b"), "a {{ .X | _emit }} b");
        assert_eq!(rewrite("{{- .X -}}"), "{{- .X | _emit -}}");
        assert_eq!(rewrite("{{-3}}"), "{{-3 | _emit }}");
        assert_eq!(
            rewrite("{{ if .X }}y{{ else }}n{{ end }}"),
            "{{ if .X }}y{{ else }}n{{ end }}"
        );
        assert_eq!(
            rewrite("{{ $x := .X }}{{ $x }}"),
            "{{ $x := .X }}{{ $x | _emit }}"
        );
        assert_eq!(rewrite("{{ $i, $a = 1 }}"), "{{ $i, $a = 1 }}");
        assert_eq!(rewrite("{{/* {{ .X }} */}}"), "{{/* {{ .X }} */}}");
        assert_eq!(rewrite(r#"{{ "}}" }}"#), r#"{{ "}}" | _emit }}"#);
        assert_eq!(rewrite("{{ .X "), "{{ .X ");
        assert_eq!(
            rewrite("no actions: .Alerts.Firing"),
            "no actions: .Alerts.Firing"
        );
    }

    #[test]
    fn methods_become_calls() {
        assert_eq!(
            rewrite("{{ range .Alerts.Firing }}{{ end }}"),
            "{{ range (_alertsFiring .Alerts) }}{{ end }}"
        );
        assert_eq!(
            rewrite("{{ .Alerts.Resolved | len }}"),
            "{{ (_alertsResolved .Alerts) | len | _emit }}"
        );
        assert_eq!(
            rewrite("{{ $.CommonLabels.SortedPairs.Names }}"),
            "{{ (_names (_sortedPairs $.CommonLabels)) | _emit }}"
        );
        assert_eq!(
            rewrite("{{ len .Firing }}"),
            "{{ len (_alertsFiring .) | _emit }}"
        );
        assert_eq!(
            rewrite("{{ $a.Labels.SortedPairs }}"),
            "{{ (_sortedPairs $a.Labels) | _emit }}"
        );
        assert_eq!(
            rewrite(r#"{{ printf ".Alerts.Firing %s" .Labels.alertname }}"#),
            r#"{{ printf ".Alerts.Firing %s" .Labels.alertname | _emit }}"#
        );
        assert_eq!(rewrite("{{ 1.5 }}"), "{{ 1.5 | _emit }}");
        assert_eq!(rewrite("{{ (.X).Firing }}"), "{{ (.X).Firing | _emit }}");
    }
}
