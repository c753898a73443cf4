//! HTML text: escaping, and cutting escaped HTML to a length. Shared by the
//! email and Telegram messages and the finance page.

/// Escapes text for HTML (element content and quoted attribute values).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Cuts HTML to at most `max` characters, ending in `…`, never inside a tag
/// or an entity, and closing the tags left open.
pub fn truncate_html(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    // Walk the text, remembering the last place that is outside tags and
    // entities and the tags open there.
    let mut open: Vec<String> = Vec::new();
    let mut best = (0usize, Vec::<String>::new()); // (byte index, open tags)
    let mut chars = 0usize;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let closing: usize = open.iter().map(|t| t.len() + 3).sum();
        if chars + 1 + closing > max {
            break;
        }
        best = (i, open.clone());
        match c {
            '<' => {
                let end = s[i..].find('>').map(|e| i + e);
                let Some(end) = end else { break };
                let tag = &s[i + 1..end];
                let name: String = tag
                    .trim_start_matches('/')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                if tag.starts_with('/') {
                    if let Some(pos) = open.iter().rposition(|t| *t == name) {
                        open.remove(pos);
                    }
                } else if !tag.ends_with('/') && !name.is_empty() {
                    open.push(name);
                }
                let len = s[i..=end].chars().count();
                chars += len;
                while iter.peek().is_some_and(|(j, _)| *j <= end) {
                    iter.next();
                }
            }
            '&' => {
                let end = s[i..]
                    .find(';')
                    .filter(|e| *e <= 10)
                    .map(|e| i + e)
                    .unwrap_or(i);
                chars += s[i..=end].chars().count();
                while iter.peek().is_some_and(|(j, _)| *j <= end) {
                    iter.next();
                }
            }
            _ => chars += 1,
        }
    }
    let (cut, still_open) = best;
    let mut out = s[..cut].to_owned();
    out.push('…');
    for tag in still_open.iter().rev() {
        out.push_str(&format!("</{tag}>"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_truncation_keeps_entities_and_tags_whole() {
        let s = format!("<b>{}</b>", "a&amp;b".repeat(10));
        for max in 8..s.chars().count() {
            let t = truncate_html(&s, max);
            assert!(t.chars().count() <= max, "{max}: {t}");
            assert!(t.ends_with("…</b>"), "{t}");
            let body = t.trim_start_matches("<b>").trim_end_matches("…</b>");
            assert!(!body.contains('<'), "{t}");
            assert_eq!(
                body.matches('&').count(),
                body.matches("&amp;").count(),
                "{t}"
            );
        }
        assert_eq!(truncate_html("short", 10), "short");
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_truncates_to_the_limit(text in "[a-z<>&\"' ]{0,300}", max in 8usize..200) {
            let t = truncate_html(&html_escape(&text), max);
            proptest::prop_assert!(t.chars().count() <= max);
            // Every entity is whole: each '&' starts one of the escapes we made.
            let body = t.trim_end_matches('…');
            for (i, _) in body.match_indices('&') {
                let rest = &body[i..];
                proptest::prop_assert!(["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].iter().any(|e| rest.starts_with(e)), "{}", t);
            }
        }
    }
}
