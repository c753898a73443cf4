//! The chart of messages per integration per day, drawn here as inline SVG
//! (no scripts): a stacked bar per UTC day, one colour per integration.

use std::collections::BTreeMap;

use crate::clock::{rfc3339, Millis};
use crate::html::html_escape as e;

const COLORS: [(&str, &str); 5] = [
    ("email", "#4e79a7"),
    ("slack", "#f28e2b"),
    ("sms", "#e15759"),
    ("telegram", "#76b7b2"),
    ("webhook", "#59a14f"),
];

fn color(integration: &str) -> &'static str {
    COLORS
        .iter()
        .find(|(i, _)| *i == integration)
        .map(|(_, c)| *c)
        .unwrap_or("#999")
}

/// A stacked bar per day (the last `days` days up to `today`), one colour per integration.
pub fn chart(daily: &[(Millis, String, i64)], today: Millis, days: i64) -> String {
    let day = 86_400_000;
    let first = (today / day - days + 1) * day;
    let mut per_day: BTreeMap<Millis, BTreeMap<&str, i64>> = BTreeMap::new();
    for (d, integration, n) in daily.iter().filter(|(d, _, _)| *d >= first) {
        *per_day
            .entry(*d)
            .or_default()
            .entry(integration.as_str())
            .or_default() += n;
    }
    let max = per_day
        .values()
        .map(|m| m.values().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h, bar) = (30 * days + 60, 200, 24);
    let mut svg = format!(
        "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=\"img\" \
         aria-label=\"Messages per integration per day\">\
         <text x=\"0\" y=\"12\" font-size=\"11\">{max}</text><line x1=\"40\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#999\"/>",
        h + 40
    );
    for i in 0..days {
        let d = first + i * day;
        let x = 44 + i * 30;
        let mut y = h;
        if let Some(m) = per_day.get(&d) {
            for (integration, n) in m {
                let height = ((*n as f64 / max as f64) * (h - 20) as f64)
                    .round()
                    .max(1.0) as i64;
                y -= height;
                svg.push_str(&format!(
                    "<rect x=\"{x}\" y=\"{y}\" width=\"{bar}\" height=\"{height}\" fill=\"{}\"><title>{} {}: {n}</title></rect>",
                    color(integration),
                    &rfc3339(d)[..10],
                    e(integration)
                ));
            }
        }
        if i % 5 == 0 || i == days - 1 {
            svg.push_str(&format!(
                "<text x=\"{x}\" y=\"{}\" font-size=\"10\">{}</text>",
                h + 14,
                &rfc3339(d)[5..10]
            ));
        }
    }
    for (k, (integration, c)) in COLORS.iter().enumerate() {
        let x = 44 + k as i64 * 100;
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{integration}</text>",
            h + 24,
            x + 14,
            h + 33
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_scales_to_the_busiest_day() {
        let today = 20_000 * 86_400_000;
        let daily = vec![
            (today, "slack".to_owned(), 10),
            (today - 86_400_000, "webhook".to_owned(), 5),
        ];
        let svg = chart(&daily, today, 30);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(
            svg.contains("height=\"180\""),
            "the busiest day fills the chart"
        );
        assert!(svg.contains("height=\"90\""), "half as many, half as high");
        assert!(!svg.contains("<script"));
    }
}
