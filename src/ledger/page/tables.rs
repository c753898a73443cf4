//! The page's money tables: the open period's rows per customer and
//! integration with each customer's subtotal, and a closed period's bill, a
//! row per customer. Every amount carries its currency: the column headers
//! name it for the rows, and subtotals and totals are written with it
//! (`0.03 USD`), as they are the figures finance copies into invoices.

use rust_decimal::Decimal;

use crate::html::html_escape as e;
use crate::ledger::bill::{Bill, CustomerSums, Sums};
use crate::ledger::csv::Pricing;
use crate::ledger::money::minor_unit;
use crate::store::UsageRow;

/// `d` with `scale` decimals; exact, as `scale` is never below its own.
fn at_scale(mut d: Decimal, scale: u32) -> String {
    d.rescale(scale.max(d.scale()));
    d.to_string()
}

/// A rounded amount and its currency, as HTML: `0.03 USD`.
pub fn money(d: Decimal, currency: &str) -> String {
    format!("{d} {}", e(currency))
}

/// What totals are rounded to, as HTML: `0.01 USD`, `1 JPY`.
fn minor_step(currency: &str) -> String {
    money(Decimal::new(1, minor_unit(currency)), currency)
}

fn count_cells(s: &Sums) -> String {
    format!(
        "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
        s.delivered, s.failed, s.units
    )
}

/// The footer: the total, which adds the customers' rounded amounts and so
/// agrees with the column above it, and, when it differs, the rows' exact
/// sum rounded once (what adding up the CSV gives, and for the open period
/// `/v1/usage`'s `total`), so that a difference of a few minor units is
/// explained on the spot.
fn footer(bill: &Bill, label_span: usize, before_amount: &str, width: usize) -> String {
    let currency = &bill.currency;
    let mut out = format!(
        "<tfoot><tr class=\"total\"><th scope=\"row\" colspan=\"{label_span}\">Total</th>{}{before_amount}\
         <td class=\"n\">{}</td></tr>\n",
        count_cells(&bill.exact),
        money(bill.total(), currency)
    );
    if let Some(once) = bill.rounded_once() {
        out.push_str(&format!(
            "<tr class=\"note\"><td colspan=\"{width}\">The total adds each customer's rounded amount. The rows' \
             exact amounts (the CSV's <code>amount</code> column) add up to {} {}, which rounds to {}.</td></tr>\n",
            bill.exact.amount,
            e(currency),
            money(once, currency)
        ));
    }
    out.push_str("</tfoot>");
    out
}

fn subtotal_row(bill: &Bill, customer: &CustomerSums) -> String {
    format!(
        "<tr class=\"subtotal\"><th scope=\"row\" colspan=\"2\">Subtotal {}</th>{}<td></td>\
         <td class=\"n\">{}</td></tr></tbody>\n",
        e(&customer.user_id),
        count_cells(&customer.sums),
        money(bill.subtotal(customer), &bill.currency)
    )
}

/// The open period's rows, grouped by customer (the store sorts them by
/// user_id), each group closed by the customer's subtotal.
///
/// Rows keep their exact amounts (only totals are rounded: DESIGN.md,
/// "Billing units"), and all the unit prices and amounts of the table are
/// shown at one scale: that of its finest unit price, and never below the
/// currency's minor unit. Widening a decimal never rounds it, so each figure
/// is still exact, while the decimal points line up down the columns
/// (`0.0140`, `0.0105`, `0.1200` rather than `0.014`, `0.0105`, `0.1200`) and
/// no amount has fewer decimals than the currency (`3.00`, not `3`). A fixed
/// number of decimals would round a finer price, or pad every table to the
/// finest price anyone might ever set.
pub fn usage_table(id: &str, caption: &str, rows: &[UsageRow], pricing: &Pricing<'_>) -> String {
    let bill = Bill::of(rows, pricing);
    let currency = e(pricing.currency());
    let scale = rows
        .iter()
        .map(|r| pricing.price(r).0.scale())
        .fold(minor_unit(pricing.currency()), u32::max);
    let mut out = format!(
        "<table id=\"{id}\" class=\"ledger\"><caption>{caption} Amounts in {currency}: rows exact, subtotals and \
         the total rounded to {}.</caption>\n<thead><tr><th scope=\"col\">Customer</th><th scope=\"col\">Integration</th>\
         <th scope=\"col\" class=\"n\">Delivered</th><th scope=\"col\" class=\"n\">Failed</th><th scope=\"col\" class=\"n\">Units</th>\
         <th scope=\"col\" class=\"n\">Unit price ({currency})</th><th scope=\"col\" class=\"n\">Amount ({currency})</th></tr></thead>\n",
        minor_step(pricing.currency())
    );
    if rows.is_empty() {
        out.push_str(
            "<tbody><tr><td colspan=\"7\" class=\"muted\">No messages yet.</td></tr></tbody>\n",
        );
    }
    for (group, customer) in rows
        .chunk_by(|a, b| a.user_id == b.user_id)
        .zip(&bill.customers)
    {
        out.push_str("<tbody>");
        for r in group {
            let (unit, amount) = pricing.price(r);
            out.push_str(&format!(
                "<tr class=\"item\"><th scope=\"row\">{}</th><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
                e(&r.user_id),
                r.integration.as_str(),
                r.delivered,
                r.failed,
                pricing.units(r),
                at_scale(unit, scale),
                at_scale(amount, scale)
            ));
        }
        out.push_str(&subtotal_row(&bill, customer));
    }
    out.push_str(&footer(&bill, 2, "<td></td>", 7));
    out.push_str("</table>\n");
    out
}

/// A closed period's bill: a row per customer, their amount rounded to the
/// currency's minor unit, and the total. The rows per integration, with
/// their unit prices and exact amounts, are the period's CSV.
pub fn bill_table(bill: &Bill) -> String {
    let mut out = format!(
        "<table class=\"bill\"><caption>Per customer, in {}, each amount rounded to {}.</caption>\n\
         <thead><tr><th scope=\"col\">Customer</th><th scope=\"col\" class=\"n\">Delivered</th>\
         <th scope=\"col\" class=\"n\">Failed</th><th scope=\"col\" class=\"n\">Units</th>\
         <th scope=\"col\" class=\"n\">Amount</th></tr></thead>\n<tbody>",
        e(&bill.currency),
        minor_step(&bill.currency)
    );
    if bill.customers.is_empty() {
        out.push_str("<tr><td colspan=\"5\" class=\"muted\">No messages.</td></tr>");
    }
    for c in &bill.customers {
        out.push_str(&format!(
            "<tr><th scope=\"row\">{}</th>{}<td class=\"n\">{}</td></tr>\n",
            e(&c.user_id),
            count_cells(&c.sums),
            money(bill.subtotal(c), &bill.currency)
        ));
    }
    out.push_str("</tbody>");
    out.push_str(&footer(bill, 1, "", 5));
    out.push_str("</table>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BillingSettings;
    use crate::domain::IntegrationKind;

    fn row(user: &str, integration: IntegrationKind, delivered: i64) -> UsageRow {
        UsageRow {
            user_id: user.into(),
            integration,
            delivered,
            failed: 0,
            delivered_segments: delivered * 2,
            failed_segments: 0,
            unit_price: None,
        }
    }

    /// The text of every cell of `class`'s rows, with their tags stripped.
    fn cells(html: &str, class: &str) -> Vec<Vec<String>> {
        let cell = regex::Regex::new(r"<t[hd][^>]*>(.*?)</t[hd]>").unwrap();
        html.lines()
            .filter(|l| l.contains(&format!("<tr class=\"{class}\">")))
            .map(|l| cell.captures_iter(l).map(|c| c[1].to_owned()).collect())
            .collect()
    }

    #[test]
    fn a_table_shows_its_amounts_at_its_finest_price_scale() {
        use IntegrationKind::{Email, Slack, Sms};
        let mut billing = BillingSettings::default();
        billing.prices.insert(Slack, "0.014".parse().unwrap());
        billing.prices.insert(Sms, "0.0105".parse().unwrap());
        billing.prices.insert(Email, "0.12".parse().unwrap());
        let rows = [row("a", Email, 1), row("a", Slack, 3), row("b", Sms, 2)];
        let html = usage_table("t", "Usage.", &rows, &Pricing::Current(&billing));
        let items = cells(&html, "item");
        let prices: Vec<(&str, &str)> = items
            .iter()
            .map(|r| (r[5].as_str(), r[6].as_str()))
            .collect();
        // SMS bills its segments: 4 × 0.0105.
        assert_eq!(
            prices,
            [
                ("0.1200", "0.1200"),
                ("0.0140", "0.0420"),
                ("0.0105", "0.0420")
            ]
        );
        assert_eq!(items[2][4], "4", "units");
        let subtotals = cells(&html, "subtotal");
        assert_eq!(subtotals[0][0], "Subtotal a");
        assert_eq!(subtotals[0].last().unwrap(), "0.16 USD");
        assert_eq!(subtotals[1].last().unwrap(), "0.04 USD");
        let total = cells(&html, "total");
        assert_eq!(total[0], ["Total", "6", "0", "8", "", "0.20 USD"]);
        assert!(html.contains("Amount (USD)") && html.contains("rounded to 0.01 USD"));
        assert!(
            !html.contains("class=\"note\""),
            "0.2040 rounds to the total"
        );
    }

    #[test]
    fn whole_prices_still_show_the_currency_decimals_and_a_difference_is_explained() {
        let mut billing = BillingSettings::default();
        billing
            .prices
            .insert(IntegrationKind::Webhook, "0.005".parse().unwrap());
        billing
            .prices
            .insert(IntegrationKind::Email, "1".parse().unwrap());
        let rows = [
            row("a", IntegrationKind::Email, 1),
            row("b", IntegrationKind::Webhook, 1),
            row("c", IntegrationKind::Webhook, 1),
        ];
        let html = usage_table("t", "Usage.", &rows, &Pricing::Current(&billing));
        assert_eq!(cells(&html, "item")[0][5..], ["1.000", "1.000"]);
        // Each of b and c is billed 0.01; the rows add up to 1.010.
        assert_eq!(cells(&html, "total")[0].last().unwrap(), "1.02 USD");
        let note = &cells(&html, "note")[0][0];
        assert!(
            note.contains("add up to 1.010 USD, which rounds to 1.01 USD."),
            "{note}"
        );
    }

    #[test]
    fn a_bill_has_a_row_per_customer_in_the_minor_unit() {
        let frozen = Pricing::Frozen {
            currency: "JPY".into(),
            bill_failed: false,
            sms_unit: None,
        };
        let mut rows = [
            row("a", IntegrationKind::Sms, 3),
            row("<b>", IntegrationKind::Email, 2),
        ];
        rows[0].unit_price = Some("2.5".parse().unwrap());
        rows[1].unit_price = Some("1.25".parse().unwrap());
        let bill = Bill::of(&rows, &frozen);
        let html = bill_table(&bill);
        let body: Vec<&str> = html
            .lines()
            .filter(|l| l.contains("<th scope=\"row\">"))
            .collect();
        // Billed before units existed: an SMS is one message.
        assert!(body[0].contains(">a</th><td class=\"n\">3</td><td class=\"n\">0</td><td class=\"n\">3</td><td class=\"n\">8 JPY<"), "{html}");
        assert!(
            body[1].contains("&lt;b&gt;") && body[1].contains(">3 JPY<"),
            "{html}"
        );
        assert!(html.contains("rounded to 1 JPY"));
        let empty = bill_table(&Bill::new("EUR"));
        assert!(empty.contains("No messages.") && empty.contains("0.00 EUR"));
    }
}
