//! The ledger CSV (RFC 4180, UTF-8, header row):
//! `period_id,period_start,period_end,user_id,integration,delivered,failed,unit_price,amount,currency`.
//! Text cells that a spreadsheet would run as a formula are prefixed with `'`.

use rust_decimal::Decimal;

use crate::clock::rfc3339;
use crate::config::BillingSettings;
use crate::store::{Period, UsageRow};

pub const HEADER: [&str; 10] = [
    "period_id",
    "period_start",
    "period_end",
    "user_id",
    "integration",
    "delivered",
    "failed",
    "unit_price",
    "amount",
    "currency",
];

/// Prefixes `'` to a text cell starting with `=`, `+`, `-`, `@`, tab or CR.
pub fn formula_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// What a usage row costs: billed messages × unit price (failed ones billed
/// only with `bill_failed`). The product of a whole number and the price is
/// exact, so nothing is rounded; it is shown at the unit price's scale
/// (`0.0025` × 0 is `0.0000`), so a column of amounts lines up.
pub fn price(row: &UsageRow, billing: &BillingSettings) -> (Decimal, Decimal) {
    let unit = billing.unit_price(&row.integration);
    let billed = row.delivered + if billing.bill_failed { row.failed } else { 0 };
    let mut amount = unit * Decimal::from(billed);
    amount.rescale(unit.scale());
    (unit, amount)
}

/// Writes a period's rows (already sorted by user_id, integration).
pub fn write<W: std::io::Write>(
    out: W,
    period: &Period,
    rows: &[UsageRow],
    billing: &BillingSettings,
) -> Result<(), ::csv::Error> {
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .from_writer(out);
    w.write_record(HEADER)?;
    let start = rfc3339(period.start_at);
    let end = period.end_at.map(rfc3339).unwrap_or_default();
    for row in rows {
        let (unit, amount) = price(row, billing);
        w.write_record([
            formula_safe(&period.id).as_ref(),
            &start,
            &end,
            formula_safe(&row.user_id).as_ref(),
            formula_safe(&row.integration).as_ref(),
            &row.delivered.to_string(),
            &row.failed.to_string(),
            &unit.to_string(),
            &amount.to_string(),
            formula_safe(&billing.currency).as_ref(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_cells_are_defused() {
        assert_eq!(formula_safe("@SUM(1)"), "'@SUM(1)");
        assert_eq!(formula_safe("-2"), "'-2");
        assert_eq!(formula_safe("u1"), "u1");
        let mut billing = BillingSettings::default();
        billing
            .prices
            .insert("slack".into(), "0.010".parse().unwrap());
        let period = Period {
            id: "20261101T000000Z".into(),
            user_id: None,
            start_at: 0,
            end_at: None,
        };
        let rows = vec![UsageRow {
            user_id: "=cmd".into(),
            integration: "slack".into(),
            delivered: 3,
            failed: 1,
        }];
        let mut out = Vec::new();
        write(&mut out, &period, &rows, &billing).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "period_id,period_start,period_end,user_id,integration,delivered,failed,unit_price,amount,currency\r\n\
             20261101T000000Z,1970-01-01T00:00:00.000Z,,'=cmd,slack,3,1,0.010,0.030,USD\r\n"
        );
    }
}
