//! Currency amounts: a total is rounded to the currency's minor unit (ISO
//! 4217: USD and EUR 2 decimals, JPY 0, KWD 3, …); rows keep their exact
//! amounts at the unit price's scale (DESIGN.md "Billing units").

use rust_decimal::{Decimal, RoundingStrategy};

/// The decimals of `currency`'s minor unit. ISO 4217 gives most currencies
/// two; these are the exceptions in use. An unknown code gets two.
pub fn minor_unit(currency: &str) -> u32 {
    match currency.to_ascii_uppercase().as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        "CLF" | "UYW" => 4,
        _ => 2,
    }
}

/// `total` rounded to `currency`'s minor unit, half away from zero (as
/// invoices round), and shown at that scale (`12.5` USD is `12.50`).
pub fn round_total(total: Decimal, currency: &str) -> Decimal {
    let scale = minor_unit(currency);
    let mut rounded = total.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(scale);
    rounded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn totals_round_to_the_minor_unit() {
        assert_eq!(round_total(d("0.0105"), "USD").to_string(), "0.01");
        assert_eq!(round_total(d("0.015"), "EUR").to_string(), "0.02");
        assert_eq!(round_total(d("12.5"), "usd").to_string(), "12.50");
        assert_eq!(round_total(d("1234.5"), "JPY").to_string(), "1235");
        assert_eq!(round_total(d("1.23456"), "KWD").to_string(), "1.235");
        assert_eq!(round_total(d("0"), "USD").to_string(), "0.00");
    }
}
