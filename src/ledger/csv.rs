//! The ledger CSV (RFC 4180, UTF-8, CRLF, header row):
//! `period_id,period_start,period_end,user_id,integration,delivered,failed,unit_price,amount,currency`,
//! and the itemized export, one row per message. Text cells that a
//! spreadsheet would run as a formula are prefixed with `'`.

use rust_decimal::Decimal;

use crate::clock::rfc3339;
use crate::config::BillingSettings;
use crate::store::{ItemRow, Period, UsageRow};

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

pub const ITEMS_HEADER: [&str; 10] = [
    "period_id",
    "message_id",
    "final_at",
    "user_id",
    "integration",
    "channel_id",
    "alertnames",
    "outcome",
    "attempts",
    "last_reason",
];

/// Prefixes `'` to a text cell starting with `=`, `+`, `-`, `@`, tab or CR.
pub fn formula_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// How a period's rows are priced: the prices frozen at close, or (for the
/// open period) those configured now.
pub enum Pricing<'a> {
    Frozen { currency: String, bill_failed: bool },
    Current(&'a BillingSettings),
}

impl Pricing<'_> {
    /// The pricing of `period`: frozen if it is closed, else `billing`'s.
    pub fn of<'a>(period: &Period, billing: &'a BillingSettings) -> Pricing<'a> {
        match (&period.currency, period.bill_failed) {
            (Some(currency), Some(bill_failed)) if period.end_at.is_some() => Pricing::Frozen {
                currency: currency.clone(),
                bill_failed,
            },
            _ => Pricing::Current(billing),
        }
    }

    pub fn currency(&self) -> &str {
        match self {
            Pricing::Frozen { currency, .. } => currency,
            Pricing::Current(b) => &b.currency,
        }
    }

    /// (unit price, amount) of a row: billed messages × unit price, where
    /// failed ones are billed only with `bill_failed`. The product of a whole
    /// number and a decimal is exact: nothing is rounded. The amount is shown
    /// at the unit price's scale (`0.0025` × 0 is `0.0000`). A closed row
    /// without a frozen price (its integration was not among those priced at
    /// close) is priced at 0; a stored price that does not parse never gets
    /// here: the store refuses it as corrupt data.
    pub fn price(&self, row: &UsageRow) -> (Decimal, Decimal) {
        let (unit, bill_failed) = match self {
            Pricing::Frozen { bill_failed, .. } => {
                (row.unit_price.unwrap_or(Decimal::ZERO), *bill_failed)
            }
            Pricing::Current(b) => (
                b.unit_price_for(&row.user_id, row.integration),
                b.bill_failed,
            ),
        };
        let billed = row.delivered + if bill_failed { row.failed } else { 0 };
        let mut amount = unit * Decimal::from(billed);
        amount.rescale(unit.scale());
        (unit, amount)
    }
}

/// Writes a period's ledger rows one by one (the caller streams them in
/// user_id, integration order), so no period is ever held whole in memory.
pub struct LedgerWriter<'a, W: std::io::Write> {
    w: ::csv::Writer<W>,
    pricing: Pricing<'a>,
    id: String,
    start: String,
    end: String,
    currency: String,
}

impl<'a, W: std::io::Write> LedgerWriter<'a, W> {
    pub fn new(out: W, period: &Period, pricing: Pricing<'a>) -> Result<Self, ::csv::Error> {
        let mut w = ::csv::WriterBuilder::new()
            .terminator(::csv::Terminator::CRLF)
            .from_writer(out);
        w.write_record(HEADER)?;
        // The header reaches `out` now: a report with no rows is still a CSV.
        w.flush()?;
        Ok(Self {
            w,
            id: formula_safe(&period.id).into_owned(),
            start: rfc3339(period.start_at),
            end: period.end_at.map(rfc3339).unwrap_or_default(),
            currency: formula_safe(pricing.currency()).into_owned(),
            pricing,
        })
    }

    pub fn row(&mut self, row: &UsageRow) -> Result<(), ::csv::Error> {
        let (unit, amount) = self.pricing.price(row);
        self.w.write_record([
            self.id.as_str(),
            &self.start,
            &self.end,
            formula_safe(&row.user_id).as_ref(),
            row.integration.as_str(),
            &row.delivered.to_string(),
            &row.failed.to_string(),
            &unit.to_string(),
            &amount.to_string(),
            &self.currency,
        ])
    }

    /// Flushes what is buffered into the underlying writer.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }

    pub fn finish(self) -> Result<W, ::csv::Error> {
        self.w
            .into_inner()
            .map_err(|e| ::csv::Error::from(e.into_error()))
    }
}

/// Writes a period's rows (sorted by user_id, integration) in one go.
pub fn write<W: std::io::Write>(
    out: W,
    period: &Period,
    rows: &[UsageRow],
    pricing: Pricing<'_>,
) -> Result<W, ::csv::Error> {
    let mut w = LedgerWriter::new(out, period, pricing)?;
    for row in rows {
        w.row(row)?;
    }
    w.finish()
}

/// A CSV writer for the itemized export, header written.
pub fn items_writer<W: std::io::Write>(out: W) -> Result<::csv::Writer<W>, ::csv::Error> {
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .from_writer(out);
    w.write_record(ITEMS_HEADER)?;
    // The header reaches `out` now: a period with no messages is still a CSV.
    w.flush()?;
    Ok(w)
}

pub fn write_item<W: std::io::Write>(
    w: &mut ::csv::Writer<W>,
    period_id: &str,
    item: &ItemRow,
) -> Result<(), ::csv::Error> {
    w.write_record([
        formula_safe(period_id).as_ref(),
        &item.message_id.to_string(),
        &rfc3339(item.final_at),
        formula_safe(&item.user_id).as_ref(),
        item.integration.as_str(),
        formula_safe(&item.channel_id).as_ref(),
        formula_safe(&item.alertnames).as_ref(),
        item.outcome.as_str(),
        &item.attempts.to_string(),
        formula_safe(item.last_reason.as_deref().unwrap_or("")).as_ref(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IntegrationKind;

    fn row(user: &str, delivered: i64, failed: i64, unit_price: Option<&str>) -> UsageRow {
        UsageRow {
            user_id: user.into(),
            integration: IntegrationKind::Slack,
            delivered,
            failed,
            unit_price: unit_price.map(|p| p.parse().unwrap()),
        }
    }

    #[test]
    fn hostile_cells_are_defused() {
        assert_eq!(formula_safe("@SUM(1)"), "'@SUM(1)");
        assert_eq!(formula_safe("-2"), "'-2");
        assert_eq!(formula_safe("u1"), "u1");
        let mut billing = BillingSettings::default();
        billing
            .prices
            .insert(IntegrationKind::Slack, "0.010".parse().unwrap());
        let period = Period {
            id: "20261101T000000Z".into(),
            user_id: None,
            start_at: 0,
            end_at: None,
            closed_at: None,
            currency: None,
            bill_failed: None,
            report_sha256: None,
        };
        let out = write(
            Vec::new(),
            &period,
            &[row("=cmd", 3, 1, None)],
            Pricing::Current(&billing),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "period_id,period_start,period_end,user_id,integration,delivered,failed,unit_price,amount,currency\r\n\
             20261101T000000Z,1970-01-01T00:00:00.000Z,,'=cmd,slack,3,1,0.010,0.030,USD\r\n"
        );
    }

    #[test]
    fn frozen_prices_win_over_current_ones() {
        let frozen = Pricing::Frozen {
            currency: "EUR".into(),
            bill_failed: true,
        };
        assert_eq!(
            frozen.price(&row("u", 2, 1, Some("0.5"))),
            ("0.5".parse().unwrap(), "1.5".parse().unwrap())
        );
        assert_eq!(frozen.price(&row("u", 2, 1, None)).1, Decimal::ZERO);
        let mut billing = BillingSettings::default();
        billing
            .prices
            .insert(IntegrationKind::Slack, "1".parse().unwrap());
        billing.user_prices.insert(
            "vip".into(),
            [(IntegrationKind::Slack, "0.25".parse().unwrap())].into(),
        );
        let current = Pricing::Current(&billing);
        assert_eq!(
            current.price(&row("u", 2, 1, None)).1,
            "2".parse::<Decimal>().unwrap()
        );
        assert_eq!(
            current.price(&row("vip", 2, 1, None)).1,
            "0.50".parse::<Decimal>().unwrap()
        );
    }
}
