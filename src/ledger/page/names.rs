//! Period names and times as finance reads them, in the page's time zone: a
//! period that is whole calendar months there is named by them ("November
//! 2026"), one of whole days by its dates ("23–29 Nov 2026"), any other by
//! its range ("25 Nov 2026 09:08 – 1 Dec 2026 00:00 CET"). Times are to the
//! minute, with seconds when they have any (closes and settles made by hand
//! do), never milliseconds, and carry the zone's abbreviation.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;

use crate::clock::Millis;
use crate::store::Period;

fn local(tz: Tz, t: Millis) -> DateTime<Tz> {
    DateTime::<Utc>::from_timestamp_millis(t)
        .unwrap_or_default()
        .with_timezone(&tz)
}

/// "25 Nov 2026".
fn date(d: NaiveDate) -> String {
    d.format("%-d %b %Y").to_string()
}

/// "09:08", or "09:08:15" when it has seconds.
fn time(t: &DateTime<Tz>) -> String {
    let format = if t.second() == 0 { "%H:%M" } else { "%H:%M:%S" };
    t.format(format).to_string()
}

/// The zone's abbreviation at `t`: "CET", "CEST", "UTC" (or an offset such
/// as "+04" where the zone has no abbreviation).
fn zone(t: &DateTime<Tz>) -> String {
    t.format("%Z").to_string()
}

/// A moment: "25 Nov 2026 09:08 CET".
pub fn moment(tz: Tz, t: Millis) -> String {
    let t = local(tz, t);
    format!("{} {} {}", date(t.date_naive()), time(&t), zone(&t))
}

/// Midnight, to the millisecond.
fn is_midnight(t: &DateTime<Tz>) -> bool {
    t.num_seconds_from_midnight() == 0 && t.nanosecond() == 0
}

/// Whole calendar months from `first` to `last` (both days included, the
/// first day a 1st and the last one the end of its month): "November 2026",
/// "October – December 2026", "December 2026 – February 2027".
fn months(first: NaiveDate, last: NaiveDate) -> Option<String> {
    let next = last.succ_opt()?;
    if first.day() != 1 || next.day() != 1 {
        return None;
    }
    Some(
        if (first.year(), first.month()) == (last.year(), last.month()) {
            first.format("%B %Y").to_string()
        } else if first.year() == last.year() {
            format!("{} – {}", first.format("%B"), last.format("%B %Y"))
        } else {
            format!("{} – {}", first.format("%B %Y"), last.format("%B %Y"))
        },
    )
}

/// Whole days from `first` to `last`, both included: "25 Nov 2026",
/// "23–29 Nov 2026", "28 Nov – 4 Dec 2026", "28 Dec 2026 – 3 Jan 2027".
fn days(first: NaiveDate, last: NaiveDate) -> String {
    if first == last {
        date(first)
    } else if (first.year(), first.month()) == (last.year(), last.month()) {
        format!("{}–{}", first.day(), date(last))
    } else if first.year() == last.year() {
        format!("{} – {}", first.format("%-d %b"), date(last))
    } else {
        format!("{} – {}", date(first), date(last))
    }
}

/// From `start` to `end` (not included), in `tz`: by its calendar months or
/// days when it is whole ones, else by its range, the date said once when
/// both ends are on the same day, the zone once when it is the same at both.
pub fn span(tz: Tz, start: Millis, end: Millis) -> String {
    let (s, e) = (local(tz, start), local(tz, end));
    if end > start && is_midnight(&s) && is_midnight(&e) {
        let (first, last) = (
            s.date_naive(),
            e.date_naive().pred_opt().unwrap_or_default(),
        );
        return months(first, last).unwrap_or_else(|| days(first, last));
    }
    let from = format!("{} {}", date(s.date_naive()), time(&s));
    let to = if s.date_naive() == e.date_naive() {
        time(&e)
    } else {
        format!("{} {}", date(e.date_naive()), time(&e))
    };
    let (zs, ze) = (zone(&s), zone(&e));
    if zs == ze {
        format!("{from} – {to} {ze}")
    } else {
        format!("{from} {zs} – {to} {ze}")
    }
}

/// A closed period's or statement's name: "November 2026", "Statement for
/// globex, 25 Nov 2026 09:08:15 – 1 Dec 2026 00:00 CET". An open one (which
/// has no end yet) is named by its start: "since 1 Dec 2026 00:00 CET".
pub fn period_name(tz: Tz, p: &Period) -> String {
    let span = match p.end_at {
        Some(end) => span(tz, p.start_at, end),
        None => format!("since {}", moment(tz, p.start_at)),
    };
    match &p.user_id {
        Some(user) => format!("Statement for {user}, {span}"),
        None => span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use chrono_tz::{Europe::Berlin, UTC};

    /// Milliseconds at a wall-clock time in `tz`.
    fn at(tz: Tz, y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> Millis {
        tz.with_ymd_and_hms(y, m, d, h, min, s)
            .single()
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn whole_months_in_the_zone_are_named_by_them() {
        let nov = at(Berlin, 2026, 11, 1, 0, 0, 0);
        let dec = at(Berlin, 2026, 12, 1, 0, 0, 0);
        assert_eq!(span(Berlin, nov, dec), "November 2026");
        let oct = at(Berlin, 2026, 10, 1, 0, 0, 0);
        assert_eq!(span(Berlin, oct, dec), "October – November 2026");
        let jan = at(Berlin, 2027, 1, 1, 0, 0, 0);
        assert_eq!(span(Berlin, oct, jan), "October – December 2026");
        let mar = at(Berlin, 2027, 3, 1, 0, 0, 0);
        assert_eq!(span(Berlin, dec, mar), "December 2026 – February 2027");
        // March holds the change to summer time: still a whole month.
        let apr = at(Berlin, 2026, 4, 1, 0, 0, 0);
        assert_eq!(
            span(Berlin, at(Berlin, 2026, 3, 1, 0, 0, 0), apr),
            "March 2026"
        );
    }

    #[test]
    fn a_month_of_another_zone_is_a_range_here() {
        // A month closed at midnight UTC is one hour into the day in Berlin.
        let (nov, dec) = (at(UTC, 2026, 11, 1, 0, 0, 0), at(UTC, 2026, 12, 1, 0, 0, 0));
        assert_eq!(span(UTC, nov, dec), "November 2026");
        assert_eq!(
            span(Berlin, nov, dec),
            "1 Nov 2026 01:00 – 1 Dec 2026 01:00 CET"
        );
        // Summer time at the start, winter time at the end: both said.
        let (oct, nov) = (at(UTC, 2026, 10, 1, 0, 0, 0), at(UTC, 2026, 11, 1, 0, 0, 0));
        assert_eq!(
            span(Berlin, oct, nov),
            "1 Oct 2026 02:00 CEST – 1 Nov 2026 01:00 CET"
        );
    }

    #[test]
    fn ranges_drop_milliseconds_and_say_seconds_only_when_there_are_some() {
        // A manual close at 09:08:15.086 UTC, to the schedule's next month.
        let start = at(UTC, 2026, 11, 25, 9, 8, 15) + 86;
        let end = at(Berlin, 2026, 12, 1, 0, 0, 0);
        assert_eq!(
            span(Berlin, start, end),
            "25 Nov 2026 10:08:15 – 1 Dec 2026 00:00 CET"
        );
        // Two settles on one day: the date once.
        let later = at(Berlin, 2026, 11, 25, 17, 30, 0);
        assert_eq!(
            span(Berlin, start, later),
            "25 Nov 2026 10:08:15 – 17:30 CET"
        );
        assert_eq!(moment(Berlin, start), "25 Nov 2026 10:08:15 CET");
        assert_eq!(moment(UTC, end), "30 Nov 2026 23:00 UTC");
    }

    #[test]
    fn whole_days_are_named_by_their_dates() {
        let day = |d| at(Berlin, 2026, 11, d, 0, 0, 0);
        assert_eq!(span(Berlin, day(25), day(26)), "25 Nov 2026");
        assert_eq!(span(Berlin, day(23), day(30)), "23–29 Nov 2026");
        let dec4 = at(Berlin, 2026, 12, 5, 0, 0, 0);
        assert_eq!(span(Berlin, day(28), dec4), "28 Nov – 4 Dec 2026");
        let jan3 = at(Berlin, 2027, 1, 4, 0, 0, 0);
        let dec28 = at(Berlin, 2026, 12, 28, 0, 0, 0);
        assert_eq!(span(Berlin, dec28, jan3), "28 Dec 2026 – 3 Jan 2027");
    }

    #[test]
    fn periods_and_statements_are_named() {
        let period = |user: Option<&str>, start, end| Period {
            id: "20261125T090815.086Z-globex".into(),
            user_id: user.map(Into::into),
            start_at: start,
            end_at: end,
            closed_at: end,
            currency: None,
            bill_failed: None,
            report_sha256: None,
            sms_unit: None,
        };
        let (nov, dec) = (
            at(Berlin, 2026, 11, 1, 0, 0, 0),
            at(Berlin, 2026, 12, 1, 0, 0, 0),
        );
        assert_eq!(
            period_name(Berlin, &period(None, nov, Some(dec))),
            "November 2026"
        );
        let settled = at(UTC, 2026, 11, 25, 9, 8, 15) + 86;
        assert_eq!(
            period_name(Berlin, &period(Some("globex"), nov, Some(settled))),
            "Statement for globex, 1 Nov 2026 00:00 – 25 Nov 2026 10:08:15 CET"
        );
        assert_eq!(
            period_name(Berlin, &period(None, dec, None)),
            "since 1 Dec 2026 00:00 CET"
        );
    }
}
