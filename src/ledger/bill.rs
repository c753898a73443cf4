//! A period's amounts per customer, as they are invoiced: each customer's
//! exact row amounts are summed, then rounded once to the currency's minor
//! unit (their subtotal); the period's total is the sum of those subtotals.
//! Beside it the exact sum of every row is kept, which is what adding up the
//! CSV's `amount` column gives: rounded once, it can differ from the total by
//! less than half a minor unit per customer, and the page says so when it does.

use futures::StreamExt;
use rust_decimal::Decimal;

use super::csv::Pricing;
use super::money::round_total;
use crate::config::BillingSettings;
use crate::store::{Period, Result, Store, UsageRow};

/// Counts and the exact amount of some rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    pub delivered: i64,
    pub failed: i64,
    pub units: i64,
    pub amount: Decimal,
}

/// One customer's sums in a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerSums {
    pub user_id: String,
    pub sums: Sums,
}

/// A period's sums per customer, in the order the rows came (by user_id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bill {
    pub currency: String,
    pub customers: Vec<CustomerSums>,
    /// Every row's sums, the amount exact.
    pub exact: Sums,
}

impl Bill {
    pub fn new(currency: &str) -> Self {
        Self {
            currency: currency.to_owned(),
            customers: Vec::new(),
            exact: Sums::default(),
        }
    }

    /// The bill of `rows` (sorted by user_id, as the store gives them).
    pub fn of<'r>(rows: impl IntoIterator<Item = &'r UsageRow>, pricing: &Pricing<'_>) -> Self {
        let mut bill = Bill::new(pricing.currency());
        for row in rows {
            bill.add(row, pricing);
        }
        bill
    }

    /// Adds a row, priced by `pricing`. Rows of one user come one after
    /// another (the store sorts them by user_id).
    pub fn add(&mut self, row: &UsageRow, pricing: &Pricing<'_>) {
        let (_, amount) = pricing.price(row);
        let sums = Sums {
            delivered: row.delivered,
            failed: row.failed,
            units: pricing.units(row),
            amount,
        };
        match self.customers.last_mut() {
            Some(last) if last.user_id == row.user_id => last.sums.add(&sums),
            _ => self.customers.push(CustomerSums {
                user_id: row.user_id.clone(),
                sums: sums.clone(),
            }),
        }
        self.exact.add(&sums);
    }

    /// A customer's amount, rounded to the currency's minor unit.
    pub fn subtotal(&self, customer: &CustomerSums) -> Decimal {
        round_total(customer.sums.amount, &self.currency)
    }

    /// What is invoiced: the customers' subtotals added up.
    pub fn total(&self) -> Decimal {
        let sum: Decimal = self.customers.iter().map(|c| self.subtotal(c)).sum();
        round_total(sum, &self.currency)
    }

    /// The exact sum of the rows, rounded once (what `/v1/usage` answers and
    /// what adding up the CSV gives); `None` when it is the total.
    pub fn rounded_once(&self) -> Option<Decimal> {
        let once = round_total(self.exact.amount, &self.currency);
        (once != self.total()).then_some(once)
    }
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.units += other.units;
        self.amount += other.amount;
    }
}

/// The bill of a period, its rows streamed from the store and priced as its
/// CSV is: frozen prices for a closed period, `billing`'s for the open one.
pub async fn of_period(store: &Store, period: &Period, billing: &BillingSettings) -> Result<Bill> {
    let pricing = Pricing::of(period, billing);
    let mut bill = Bill::new(pricing.currency());
    let mut rows = store.usage_rows(&period.id);
    while let Some(row) = rows.next().await {
        bill.add(&row?, &pricing);
    }
    Ok(bill)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IntegrationKind;

    fn row(user: &str, integration: IntegrationKind, delivered: i64, price: &str) -> UsageRow {
        UsageRow {
            user_id: user.into(),
            integration,
            delivered,
            failed: 1,
            delivered_segments: 0,
            failed_segments: 0,
            unit_price: Some(price.parse().unwrap()),
        }
    }

    fn frozen(currency: &str) -> Pricing<'static> {
        Pricing::Frozen {
            currency: currency.into(),
            bill_failed: false,
            sms_unit: Some(crate::config::SmsUnit::Segment),
        }
    }

    #[test]
    fn customers_are_rounded_once_each_and_the_total_adds_them() {
        use IntegrationKind::{Slack, Webhook};
        let rows = [
            row("a", Slack, 1, "0.005"),
            row("a", Webhook, 1, "0.0025"),
            row("b", Webhook, 1, "0.005"),
            row("c", Webhook, 3, "0.0125"),
        ];
        let bill = Bill::of(&rows, &frozen("USD"));
        let subtotals: Vec<(&str, String, i64)> = bill
            .customers
            .iter()
            .map(|c| {
                (
                    c.user_id.as_str(),
                    bill.subtotal(c).to_string(),
                    c.sums.units,
                )
            })
            .collect();
        assert_eq!(
            subtotals,
            [
                ("a", "0.01".into(), 2),
                ("b", "0.01".into(), 1),
                ("c", "0.04".into(), 3)
            ]
        );
        assert_eq!(bill.total().to_string(), "0.06");
        assert_eq!(bill.exact.amount.to_string(), "0.0500");
        assert_eq!((bill.exact.delivered, bill.exact.failed), (6, 4));
        // 0.0500 rounds to 0.05: one cent less than the customers are billed.
        assert_eq!(
            bill.rounded_once().map(|d| d.to_string()),
            Some("0.05".into())
        );
    }

    #[test]
    fn the_total_is_in_the_minor_unit_and_said_once_when_it_agrees() {
        let rows = [row("a", IntegrationKind::Email, 3, "12.5")];
        let bill = Bill::of(&rows, &frozen("JPY"));
        assert_eq!(bill.total().to_string(), "38");
        assert_eq!(bill.rounded_once(), None);
        let empty = Bill::of(&[], &frozen("EUR"));
        assert_eq!(
            (empty.total().to_string(), empty.customers.len()),
            ("0.00".into(), 0)
        );
    }
}
