//! The finance page: the open period's usage with totals and amounts, the
//! closed periods and statements with their downloads, and a chart of
//! messages per integration per day, drawn here as inline SVG. No scripts,
//! no external resources.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::csv::Pricing;
use super::money::round_total;
use crate::clock::{rfc3339, Millis};
use crate::html::html_escape as e;
use crate::store::{Period, Reconciliation, UsageRow};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}\
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}tfoot td{font-weight:bold}\
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}.muted{color:#777}";

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

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        e(title)
    )
}

pub fn login(error: Option<&str>) -> String {
    let error = error
        .map(|m| format!("<p style=\"color:#b00\">{}</p>", e(m)))
        .unwrap_or_default();
    layout(
        "notimeter: sign in",
        &format!(
            "<h1>notimeter billing</h1>{error}<form method=\"post\" action=\"/login\">\
             <label>Finance token <input type=\"password\" name=\"token\" id=\"token\" autofocus></label> \
             <button type=\"submit\" id=\"sign-in\">Sign in</button></form>\n"
        ),
    )
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

pub struct PageData<'a> {
    pub open: &'a Period,
    pub rows: &'a [UsageRow],
    pub pricing: Pricing<'a>,
    pub periods: &'a [Period],
    pub daily: &'a [(Millis, String, i64)],
    pub today: Millis,
    /// Reconciliation with Alertmanager: None when not configured; Some(None)
    /// before its count has begun.
    pub reconciliation: Option<Option<&'a Reconciliation>>,
}

pub fn index(d: &PageData<'_>) -> String {
    let mut body = format!(
        "<h1>notimeter billing</h1><p class=\"muted\">Open period <strong id=\"open-period\">{}</strong> since {} · \
         <a href=\"/v1/ledger/current.csv\">download CSV</a> · <a href=\"/v1/ledger/periods/{}/items.csv\">itemized</a> · \
         <a href=\"/logout\">sign out</a></p>\n",
        e(&d.open.id),
        rfc3339(d.open.start_at),
        e(&d.open.id)
    );
    body.push_str(
        "<table id=\"open-usage\"><thead><tr><th>user_id</th><th>integration</th><th>delivered</th><th>failed</th>\
         <th>units</th><th>unit price</th><th>amount</th></tr></thead><tbody>\n",
    );
    let (mut delivered, mut failed, mut units, mut total) = (0i64, 0i64, 0i64, Decimal::ZERO);
    for r in d.rows {
        let (unit, amount) = d.pricing.price(r);
        let row_units = d.pricing.units(r);
        delivered += r.delivered;
        failed += r.failed;
        units += row_units;
        total += amount;
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{row_units}</td>\
             <td class=\"n\">{unit}</td><td class=\"n\">{amount}</td></tr>\n",
            e(&r.user_id),
            e(r.integration.as_str()),
            r.delivered,
            r.failed
        ));
    }
    body.push_str(&format!(
        "</tbody><tfoot><tr id=\"totals\"><td colspan=\"2\">Total ({currency})</td><td class=\"n\">{delivered}</td>\
         <td class=\"n\">{failed}</td><td class=\"n\">{units}</td><td></td><td class=\"n\">{total} {currency}</td></tr></tfoot></table>\n",
        currency = e(d.pricing.currency()),
        total = round_total(total, d.pricing.currency()),
    ));
    if let Some(count) = d.reconciliation {
        body.push_str(&reconciliation(count));
    }
    body.push_str("<h2>Messages per integration per day (last 30 days)</h2>\n");
    body.push_str(&chart(d.daily, d.today, 30));
    body.push_str(
        "<h2>Closed periods and statements</h2><table id=\"closed\"><thead><tr><th>period</th><th>user</th>\
         <th>start</th><th>end</th><th>downloads</th><th>SHA-256</th></tr></thead><tbody>\n",
    );
    for p in d.periods.iter().rev().filter(|p| p.end_at.is_some()) {
        body.push_str(&format!(
            "<tr><td>{id}</td><td>{user}</td><td>{}</td><td>{}</td><td><a href=\"/v1/ledger/periods/{id}.csv\">CSV</a> · \
             <a href=\"/v1/ledger/periods/{id}/items.csv\">itemized</a></td><td class=\"muted\"><code title=\"{sha}\">{short}…</code></td></tr>\n",
            rfc3339(p.start_at),
            p.end_at.map(rfc3339).unwrap_or_default(),
            sha = e(p.report_sha256.as_deref().unwrap_or("")),
            short = e(p.report_sha256.as_deref().unwrap_or("").get(..16).unwrap_or("")),
            id = e(&p.id),
            user = e(p.user_id.as_deref().unwrap_or("all users")),
        ));
    }
    body.push_str("</tbody></table>\n");
    layout("notimeter billing", &body)
}

/// What the Alertmanagers sent against what notimeter received.
fn reconciliation(count: Option<&Reconciliation>) -> String {
    let mut out = String::from("<h2>Reconciliation with Alertmanager</h2>\n");
    let Some(c) = count else {
        out.push_str("<p class=\"muted\">Waiting for a first reading of every Alertmanager.</p>\n");
        return out;
    };
    let drift = c.drift();
    out.push_str(&format!(
        "<p id=\"reconcile\">Since {}, the Alertmanagers sent <strong>{}</strong> webhook requests and notimeter \
         received <strong>{}</strong>: <strong id=\"reconcile-drift\">{drift} requests lost</strong>{}.</p>\n",
        rfc3339(c.since),
        c.sent(),
        c.received,
        if drift > 0 {
            " on the way (Alertmanager retries them: alerts may have reached users late, or not at all)"
        } else {
            ""
        }
    ));
    out.push_str(
        "<table id=\"alertmanagers\"><thead><tr><th>Alertmanager</th><th>requests</th><th>failed</th>\
         <th>last read</th></tr></thead><tbody>\n",
    );
    for am in &c.alertmanagers {
        out.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>\n",
            e(&am.url),
            am.requests,
            am.failed,
            rfc3339(am.scraped_at)
        ));
    }
    out.push_str("</tbody></table>\n");
    out
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
