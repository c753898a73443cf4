//! The ledger CSV (RFC 4180, UTF-8, CRLF, header row):
//! `period_id,period_start,period_end,user_id,integration,delivered,failed,units,unit_price,amount,currency`,
//! (without `units` for periods closed before billing units existed, so that
//! their reports come out as they were first written),
//! and the itemized export, one row per message. Text cells that a
//! spreadsheet would run as a formula are prefixed with `'`.

use rust_decimal::Decimal;

use crate::clock::rfc3339;
use crate::config::{BillingSettings, SmsUnit};
use crate::domain::IntegrationKind;
use crate::store::{ItemRow, Period, UsageRow};

pub const HEADER: [&str; 11] = [
    "period_id",
    "period_start",
    "period_end",
    "user_id",
    "integration",
    "delivered",
    "failed",
    "units",
    "unit_price",
    "amount",
    "currency",
];

/// The column that periods closed before billing units existed do not have.
const UNITS_COLUMN: usize = 7;

pub const ITEMS_HEADER: [&str; 11] = [
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
    "segments",
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
    Frozen {
        currency: String,
        bill_failed: bool,
        /// None: closed before billing units existed (an SMS was a message).
        sms_unit: Option<SmsUnit>,
    },
    Current(&'a BillingSettings),
}

impl Pricing<'_> {
    /// The pricing of `period`: frozen if it is closed, else `billing`'s.
    pub fn of<'a>(period: &Period, billing: &'a BillingSettings) -> Pricing<'a> {
        match (&period.currency, period.bill_failed) {
            (Some(currency), Some(bill_failed)) if period.end_at.is_some() => Pricing::Frozen {
                currency: currency.clone(),
                bill_failed,
                sms_unit: period.sms_unit.as_deref().and_then(SmsUnit::parse),
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

    /// Whether rows have a `units` column (all but periods closed before
    /// billing units existed).
    pub fn has_units(&self) -> bool {
        !matches!(self, Pricing::Frozen { sms_unit: None, .. })
    }

    fn bill_failed(&self) -> bool {
        match self {
            Pricing::Frozen { bill_failed, .. } => *bill_failed,
            Pricing::Current(b) => b.bill_failed,
        }
    }

    /// What a row bills: its delivered messages (and failed ones with
    /// `bill_failed`); for SMS billed per segment, their segments.
    pub fn units(&self, row: &UsageRow) -> i64 {
        let sms_unit = match self {
            Pricing::Frozen { sms_unit, .. } => sms_unit.unwrap_or(SmsUnit::Message),
            Pricing::Current(b) => b.sms_unit,
        };
        let (delivered, failed) =
            if row.integration == IntegrationKind::Sms && sms_unit == SmsUnit::Segment {
                (row.delivered_segments, row.failed_segments)
            } else {
                (row.delivered, row.failed)
            };
        delivered + if self.bill_failed() { failed } else { 0 }
    }

    /// (unit price, amount) of a row: its units × unit price. The product of
    /// a whole number and a decimal is exact: nothing is rounded (only
    /// totals are, see `money.rs`). The amount is shown at the unit price's
    /// scale (`0.0025` × 0 is `0.0000`). A closed row without a frozen price
    /// (its integration was not among those priced at close) is priced at 0;
    /// a stored price that does not parse never gets here: the store refuses
    /// it as corrupt data.
    pub fn price(&self, row: &UsageRow) -> (Decimal, Decimal) {
        let unit = match self {
            Pricing::Frozen { .. } => row.unit_price.unwrap_or(Decimal::ZERO),
            Pricing::Current(b) => b.unit_price_for(&row.user_id, row.integration),
        };
        let mut amount = unit * Decimal::from(self.units(row));
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
    units: bool,
}

impl<'a, W: std::io::Write> LedgerWriter<'a, W> {
    pub fn new(out: W, period: &Period, pricing: Pricing<'a>) -> Result<Self, ::csv::Error> {
        let mut w = ::csv::WriterBuilder::new()
            .terminator(::csv::Terminator::CRLF)
            .from_writer(out);
        let units = pricing.has_units();
        w.write_record(
            HEADER
                .iter()
                .enumerate()
                .filter(|(i, _)| units || *i != UNITS_COLUMN)
                .map(|(_, h)| h),
        )?;
        // The header reaches `out` now: a report with no rows is still a CSV.
        w.flush()?;
        Ok(Self {
            units,
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
        let units = self.units.then(|| self.pricing.units(row).to_string());
        let user = formula_safe(&row.user_id);
        let fields = [
            Some(self.id.as_str()),
            Some(&self.start),
            Some(&self.end),
            Some(user.as_ref()),
            Some(row.integration.as_str()),
            Some(&row.delivered.to_string()),
            Some(&row.failed.to_string()),
            units.as_deref(),
            Some(&unit.to_string()),
            Some(&amount.to_string()),
            Some(&self.currency),
        ];
        self.w.write_record(fields.into_iter().flatten())
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
        &item.segments.map(|n| n.to_string()).unwrap_or_default(),
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
            delivered_segments: 0,
            failed_segments: 0,
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
            sms_unit: None,
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
            "period_id,period_start,period_end,user_id,integration,delivered,failed,units,unit_price,amount,currency\r\n\
             20261101T000000Z,1970-01-01T00:00:00.000Z,,'=cmd,slack,3,1,3,0.010,0.030,USD\r\n"
        );
    }

    #[test]
    fn frozen_prices_win_over_current_ones() {
        let frozen = Pricing::Frozen {
            currency: "EUR".into(),
            bill_failed: true,
            sms_unit: Some(SmsUnit::Segment),
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

    #[test]
    fn sms_bills_segments_unless_told_otherwise() {
        let sms = UsageRow {
            integration: IntegrationKind::Sms,
            delivered_segments: 7,
            failed_segments: 2,
            ..row("u", 3, 1, Some("0.05"))
        };
        let mut billing = BillingSettings::default();
        billing
            .prices
            .insert(IntegrationKind::Sms, "0.05".parse().unwrap());
        let current = Pricing::Current(&billing);
        assert_eq!(current.units(&sms), 7);
        assert_eq!(current.price(&sms).1.to_string(), "0.35");
        billing.sms_unit = SmsUnit::Message;
        billing.bill_failed = true;
        assert_eq!(Pricing::Current(&billing).units(&sms), 4);
        // A period closed before units existed billed an SMS as one message.
        let legacy = Pricing::Frozen {
            currency: "USD".into(),
            bill_failed: false,
            sms_unit: None,
        };
        assert_eq!((legacy.units(&sms), legacy.has_units()), (3, false));
        assert_eq!(legacy.price(&sms).1.to_string(), "0.15");
    }
}
