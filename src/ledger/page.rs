//! The finance page, what finance closes a month on: the open period's usage
//! per customer and integration with subtotals and its total; the
//! reconciliation with Alertmanager; a chart of messages per integration per
//! day (inline SVG); and the most recent closed periods and statements, each
//! with its total, a row per customer and its downloads. Periods are named,
//! and times shown, in the page's time zone (`names`); amounts carry their
//! currency (`tables`). Server-rendered: no scripts, no external resources.

mod chart;
mod names;
mod tables;

use chrono_tz::Tz;

use self::names::{moment, period_name, span};
use self::tables::{bill_table, money, usage_table};
use super::bill::Bill;
use super::csv::Pricing;
use crate::clock::Millis;
use crate::html::html_escape as e;
use crate::store::{Period, Reconciliation, UsageRow};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}\
header{padding:1rem 2rem .6rem;background:#f4f5f7;border-bottom:1px solid #dde}main{padding:0 2rem 2rem}\
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.2rem;margin:2rem 0 .3rem}h3{font-size:1.05rem;margin:1.6rem 0 .2rem}\
nav a{margin-right:1.2rem}.meta{color:#555;margin:.2rem 0}.muted{color:#777}code{font-size:.85em}\
table{border-collapse:collapse;margin:.5rem 0 1rem}caption{caption-side:top;text-align:left;color:#555;padding:.2rem 0}\
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}thead th{background:#eef0f3}tbody th{font-weight:normal}\
.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.downloads{white-space:nowrap}table.bill{min-width:40rem}\
tr.subtotal>*{background:#f7f7f7;font-weight:600}tfoot tr.total>*{font-weight:bold;border-top:2px solid #888}\
tr.note td{color:#555;font-size:.9rem;max-width:40rem}section.period{border-top:1px solid #e4e4e4;margin-top:1.2rem}";

/// Closed periods and statements shown with their bills, the most recent
/// first; older ones are listed by `GET /v1/ledger/periods`.
pub const CLOSED_SHOWN: i64 = 24;

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
            "<main><h1>notimeter billing</h1>{error}<form method=\"post\" action=\"/login\">\
             <label>Finance token <input type=\"password\" name=\"token\" id=\"token\" autofocus></label> \
             <button type=\"submit\" id=\"sign-in\">Sign in</button></form></main>\n"
        ),
    )
}

/// A closed period or statement and its bill.
pub struct ClosedPeriod {
    pub period: Period,
    pub bill: Bill,
}

pub struct PageData<'a> {
    /// The zone periods are named and times shown in.
    pub tz: Tz,
    pub open: &'a Period,
    /// When the open period closes on the schedule.
    pub next_close: Option<Millis>,
    pub rows: &'a [UsageRow],
    pub pricing: Pricing<'a>,
    /// The most recent closed periods and statements, newest first.
    pub closed: &'a [ClosedPeriod],
    /// How many closed periods and statements there are in all.
    pub closed_count: i64,
    pub daily: &'a [(Millis, String, i64)],
    pub today: Millis,
    /// Reconciliation with Alertmanager: None when not configured; Some(None)
    /// before its count has begun.
    pub reconciliation: Option<Option<&'a Reconciliation>>,
}

pub fn index(d: &PageData<'_>) -> String {
    let mut body = header(d);
    body.push_str("<main>\n");
    body.push_str(&open_section(d));
    if let Some(count) = d.reconciliation {
        body.push_str(&reconciliation(d.tz, count));
    }
    body.push_str(
        "<section id=\"activity\"><h2>Messages per integration per day</h2>\
         <p class=\"meta\">The last 30 days, by UTC day; a bar's tooltip gives its count.</p>\n",
    );
    body.push_str(&chart::chart(d.daily, d.today, 30));
    body.push_str("</section>\n");
    body.push_str(&closed_section(d));
    body.push_str("</main>\n");
    layout("notimeter billing", &body)
}

fn header(d: &PageData<'_>) -> String {
    let reconciliation = if d.reconciliation.is_some() {
        "<a href=\"#reconciliation\">Reconciliation</a>"
    } else {
        ""
    };
    format!(
        "<header><h1>notimeter billing</h1><p class=\"meta\">Times in {} · <a href=\"/logout\">Sign out</a></p>\
         <nav aria-label=\"Sections\"><a href=\"#open\">Open period</a>{reconciliation}\
         <a href=\"#activity\">Messages per day</a><a href=\"#closed-periods\">Closed periods and statements</a></nav>\
         </header>\n",
        e(d.tz.name())
    )
}

/// The CSV downloads of a period: its ledger (for the open period, the
/// ledger so far) and its itemized messages.
fn downloads(p: &Period) -> String {
    let id = e(&p.id);
    let ledger = match p.end_at {
        Some(_) => format!("<a href=\"/v1/ledger/periods/{id}.csv\">ledger (CSV)</a>"),
        None => "<a href=\"/v1/ledger/current.csv\">ledger so far (CSV)</a>".to_owned(),
    };
    format!("{ledger} · <a href=\"/v1/ledger/periods/{id}/items.csv\">itemized (CSV)</a>")
}

fn open_section(d: &PageData<'_>) -> String {
    // Named by its span up to the scheduled close ("December 2026").
    let (name, closes) = match d.next_close {
        Some(end) => (
            span(d.tz, d.open.start_at, end),
            format!(", closes on schedule at {}", moment(d.tz, end)),
        ),
        None => (period_name(d.tz, d.open), String::new()),
    };
    format!(
        "<section id=\"open\"><h2 id=\"open-name\">Open period: {}</h2>\
         <p class=\"meta\">Counting since {}{closes} · id <code id=\"open-period\">{}</code> · {}</p>\n{}</section>\n",
        e(&name),
        moment(d.tz, d.open.start_at),
        e(&d.open.id),
        downloads(d.open),
        usage_table(
            "open-usage",
            "Usage so far, per customer and integration.",
            d.rows,
            &d.pricing
        )
    )
}

fn closed_section(d: &PageData<'_>) -> String {
    let mut out =
        String::from("<section id=\"closed-periods\"><h2>Closed periods and statements</h2>\n");
    let all = "<a href=\"/v1/ledger/periods\">/v1/ledger/periods</a> lists every period and statement with \
               the links to its CSVs";
    let shown = d.closed.len() as i64;
    out.push_str(&if shown < d.closed_count {
        format!(
            "<p class=\"meta\" id=\"closed-note\">The {shown} most recent of {}, newest first. Older ones are left \
             out to keep this page fast: {all}.</p>\n",
            d.closed_count
        )
    } else if shown == 0 {
        "<p class=\"meta\" id=\"closed-note\">None yet.</p>\n".to_owned()
    } else {
        format!("<p class=\"meta\" id=\"closed-note\">All {shown}, newest first; {all}.</p>\n")
    });
    if shown > 0 {
        out.push_str(&closed_overview(d));
    }
    for c in d.closed {
        out.push_str(&closed_detail(d.tz, c));
    }
    out.push_str("</section>\n");
    out
}

/// A row per closed period: its name (a link to its bill below), counts,
/// total and downloads.
fn closed_overview(d: &PageData<'_>) -> String {
    let mut out = String::from(
        "<table id=\"closed\"><caption>Totals per period, each in its currency, rounded to its minor unit.</caption>\n\
         <thead><tr><th scope=\"col\">Period</th><th scope=\"col\" class=\"n\">Customers</th>\
         <th scope=\"col\" class=\"n\">Delivered</th><th scope=\"col\" class=\"n\">Failed</th>\
         <th scope=\"col\" class=\"n\">Units</th><th scope=\"col\" class=\"n\">Total</th>\
         <th scope=\"col\">Downloads</th></tr></thead><tbody>\n",
    );
    for ClosedPeriod { period: p, bill } in d.closed {
        out.push_str(&format!(
            "<tr><th scope=\"row\"><a href=\"#period-{id}\">{}</a></th><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"downloads\">{}</td></tr>\n",
            e(&period_name(d.tz, p)),
            bill.customers.len(),
            bill.exact.delivered,
            bill.exact.failed,
            bill.exact.units,
            money(bill.total(), &bill.currency),
            downloads(p),
            id = e(&p.id),
        ));
    }
    out.push_str("</tbody></table>\n");
    out
}

/// A closed period's bill: its name, when it was closed, its id, downloads
/// and report hash, and a row per customer.
fn closed_detail(tz: Tz, c: &ClosedPeriod) -> String {
    let p = &c.period;
    let name = e(&period_name(tz, p));
    let closed = p
        .closed_at
        .map(|t| format!("Closed {} · ", moment(tz, t)))
        .unwrap_or_default();
    let sha = p.report_sha256.as_deref().unwrap_or("");
    format!(
        "<section class=\"period\" id=\"period-{id}\"><h3>{name}</h3><p class=\"meta\">{closed}id <code>{id}</code> · {} · \
         SHA-256 <code title=\"{sha}\">{}…</code></p>\n{}</section>\n",
        downloads(p),
        e(sha.get(..16).unwrap_or(sha)),
        bill_table(&c.bill),
        id = e(&p.id),
        sha = e(sha),
    )
}

/// What the Alertmanagers sent against what notimeter received.
fn reconciliation(tz: Tz, count: Option<&Reconciliation>) -> String {
    let mut out =
        String::from("<section id=\"reconciliation\"><h2>Reconciliation with Alertmanager</h2>\n");
    let Some(c) = count else {
        out.push_str(
            "<p class=\"muted\">Waiting for a first reading of every Alertmanager.</p></section>\n",
        );
        return out;
    };
    let drift = c.drift();
    let verdict = match drift {
        0 => "<strong id=\"reconcile-drift\">0 requests lost</strong>".to_owned(),
        1.. => format!(
            "<strong id=\"reconcile-drift\">{drift} requests lost</strong> on the way (Alertmanager retries them: \
             alerts may have reached users late, or not at all)"
        ),
        _ => format!(
            "<strong id=\"reconcile-drift\">{} requests more received than sent</strong> (notimeter also receives \
             them from elsewhere)",
            -drift
        ),
    };
    out.push_str(&format!(
        "<p id=\"reconcile\">Since {}, the Alertmanagers sent <strong>{}</strong> webhook requests and notimeter \
         received <strong>{}</strong>: {verdict}.</p>\n",
        moment(tz, c.since),
        c.sent(),
        c.received,
    ));
    out.push_str(
        "<table id=\"alertmanagers\"><caption>Webhook requests each Alertmanager sent to notimeter.</caption>\n\
         <thead><tr><th scope=\"col\">Alertmanager</th><th scope=\"col\" class=\"n\">Requests</th>\
         <th scope=\"col\" class=\"n\">Failed</th><th scope=\"col\">Last read</th></tr></thead><tbody>\n",
    );
    for am in &c.alertmanagers {
        out.push_str(&format!(
            "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>\n",
            e(&am.url),
            am.requests,
            am.failed,
            moment(tz, am.scraped_at)
        ));
    }
    out.push_str("</tbody></table></section>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BillingSettings;
    use crate::domain::IntegrationKind;
    use crate::store::AlertmanagerCount;

    const DAY: Millis = 86_400_000;
    /// 1 Nov 2026 00:00 UTC.
    const NOV: Millis = 1_793_491_200_000;

    fn period(id: &str, user: Option<&str>, start: Millis, end: Option<Millis>) -> Period {
        Period {
            id: id.into(),
            user_id: user.map(Into::into),
            start_at: start,
            end_at: end,
            closed_at: end.map(|t| t + 2_500),
            currency: end.map(|_| "EUR".into()),
            bill_failed: end.map(|_| false),
            report_sha256: end.map(|_| "ab".repeat(32)),
            sms_unit: end.map(|_| "segment".into()),
        }
    }

    fn closed(p: Period, users: &[&str]) -> ClosedPeriod {
        let mut bill = Bill::new("EUR");
        let billing = BillingSettings::default();
        let pricing = Pricing::of(&p, &billing);
        for u in users {
            bill.add(
                &UsageRow {
                    user_id: (*u).into(),
                    integration: IntegrationKind::Webhook,
                    delivered: 4,
                    failed: 0,
                    delivered_segments: 0,
                    failed_segments: 0,
                    unit_price: Some("0.25".parse().unwrap()),
                },
                &pricing,
            );
        }
        ClosedPeriod { period: p, bill }
    }

    fn reconciliation(drift: i64) -> Reconciliation {
        Reconciliation {
            urls: "http://am:9093".into(),
            since: NOV + 3_600_000,
            received: 10 - drift,
            alertmanagers: vec![AlertmanagerCount {
                url: "http://am:9093".into(),
                requests: 10,
                failed: drift.max(0),
                scraped_at: NOV + 30 * DAY,
            }],
        }
    }

    fn render(closed: &[ClosedPeriod], count: i64, reconcile: Option<&Reconciliation>) -> String {
        let open = period("20261201T000000Z", None, NOV + 30 * DAY, None);
        let billing = BillingSettings::default();
        index(&PageData {
            tz: chrono_tz::Europe::Berlin,
            open: &open,
            next_close: Some(NOV + 61 * DAY),
            rows: &[],
            pricing: Pricing::Current(&billing),
            closed,
            closed_count: count,
            daily: &[],
            today: NOV + 31 * DAY,
            reconciliation: Some(reconcile),
        })
    }

    #[test]
    fn closed_periods_are_named_totalled_and_linked() {
        let hours = 3_600_000;
        let periods = [
            closed(
                period(
                    "20261201T000000Z-u&1",
                    Some("u&1"),
                    NOV + 30 * DAY,
                    Some(NOV + 30 * DAY + 9 * hours),
                ),
                &["u&1"],
            ),
            closed(
                period("20261101T000000Z", None, NOV, Some(NOV + 30 * DAY)),
                &["a", "b"],
            ),
        ];
        let html = render(&periods, 30, None);
        // Billed in UTC, shown in Berlin: an hour later.
        assert!(
            html.contains(">1 Nov 2026 01:00 – 1 Dec 2026 01:00 CET</a></th>"),
            "{html}"
        );
        assert!(
            html.contains(">Statement for u&amp;1, 1 Dec 2026 01:00 – 10:00 CET</a></th>"),
            "{html}"
        );
        assert!(
            html.contains("<td class=\"n\">2.00 EUR</td>")
                && html.contains("<td class=\"n\">1.00 EUR</td>")
        );
        assert!(html.contains("href=\"/v1/ledger/periods/20261101T000000Z.csv\""));
        assert!(html.contains("href=\"/v1/ledger/periods/20261201T000000Z-u&amp;1/items.csv\""));
        assert!(html.contains("The 2 most recent of 30, newest first."));
        assert!(
            html.contains("Open period: 1 Dec 2026 01:00 – 1 Jan 2027 01:00 CET<"),
            "{html}"
        );
        assert!(html.contains("Closed 1 Dec 2026 01:00:02 CET"), "{html}");
        assert!(html.contains("No messages yet."));
        for tag in ["<script", "https://", "<th>", "<table>"] {
            assert!(
                !html.contains(tag),
                "{tag}: every header has a scope, every table a caption"
            );
        }
        assert_eq!(
            html.matches("<table").count(),
            html.matches("<caption>").count()
        );
    }

    #[test]
    fn reconciliation_says_what_was_lost() {
        let html = render(&[], 0, Some(&reconciliation(3)));
        assert!(html.contains("<strong id=\"reconcile-drift\">3 requests lost</strong> on the way"));
        assert!(html.contains("Since 1 Nov 2026 02:00 CET,"), "{html}");
        assert!(
            html.contains("<td>1 Dec 2026 01:00 CET</td>"),
            "last read: {html}"
        );
        assert!(html.contains("None yet."));
        let html = render(&[], 0, Some(&reconciliation(-2)));
        assert!(html.contains("2 requests more received than sent"));
        let html = render(&[], 0, Some(&reconciliation(0)));
        assert!(html.contains("0 requests lost</strong>."));
        assert!(render(&[], 0, None).contains("Waiting for a first reading"));
    }
}
