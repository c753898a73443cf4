//! Time as the store keeps it: milliseconds since the Unix epoch, UTC.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

pub fn to_datetime(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// RFC 3339 in UTC with a `Z` suffix, as the ledger CSV and the API show times.
pub fn rfc3339(ms: Millis) -> String {
    to_datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn duration_ms(d: std::time::Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
