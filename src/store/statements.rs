//! The text of the outbox's multi-row statements, in PostgreSQL's numbered
//! form (`$1`, `$2`, …): what a writer's cycle runs (see `outbox.rs`). Public
//! so that `notimeter-bench floor` runs the very same statements against the
//! bare SQLite engine and PostgreSQL, without the service around them.

/// `($1, $2), ($3, $4), …`: `rows` rows of `cols` placeholders each.
pub fn placeholders(rows: usize, cols: usize) -> String {
    placeholders_from(1, rows, cols)
}

/// [`placeholders`] numbered from `first`.
pub fn placeholders_from(first: usize, rows: usize, cols: usize) -> String {
    let mut sql = String::with_capacity(rows * cols * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..cols {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(first + row * cols + col).to_string());
        }
        sql.push(')');
    }
    sql
}

/// `sql` with each `$N` replaced by `?`, if they run `$1, $2, …` in the
/// text's order (then `?`, numbered by position, binds the same values);
/// None otherwise. SQLite looks a numbered parameter up by name in a list,
/// once when it prepares the statement and once more each time it is bound:
/// for a statement of hundreds of parameters that cost more than the
/// statement itself. Anonymous `?` parameters are in no list.
pub fn positional(sql: &str) -> Option<String> {
    let mut out = String::with_capacity(sql.len());
    let mut next = 1;
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        if rest[at + 1..at + 1 + digits].parse::<usize>().ok()? != next {
            return None;
        }
        next += 1;
        out.push('?');
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    Some(out)
}

/// Inserts `rows` dedupe keys (key, expires_at), renewing those expired by
/// the last parameter (now); returns the keys that were fresh.
pub fn insert_dedupe(rows: usize) -> String {
    format!(
        "INSERT INTO dedupe (key, expires_at) VALUES {} \
         ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at \
         WHERE dedupe.expires_at <= ${} RETURNING key",
        placeholders(rows, 2),
        rows * 2 + 1
    )
}

/// Which of `rows` (user, channel, group key) have a message pending; with
/// `first`, at most one of them. A subquery per row, so that each is an index
/// look-up whatever the planner believes of the pending rows: a join was
/// planned as a scan of every pending message, seconds for a backlog on
/// PostgreSQL.
pub fn pending_groups(rows: usize, first: bool) -> String {
    format!(
        "SELECT v.column1, v.column2, v.column3 FROM (VALUES {}) AS v \
         WHERE (SELECT 1 FROM messages m WHERE m.user_id = v.column1 \
                  AND m.channel_id = v.column2 AND m.group_key = v.column3 \
                  AND m.state = 'pending' LIMIT 1) IS NOT NULL{}",
        placeholders(rows, 3),
        if first { " LIMIT 1" } else { "" }
    )
}

/// Inserts `rows` pending messages: (user_id, channel_id, integration,
/// group_key, payload, alert_count, alertnames, created_at, due_at,
/// lease_owner, lease_until) each; returns their ids.
pub fn insert_messages(rows: usize) -> String {
    format!(
        "INSERT INTO messages (user_id, channel_id, integration, group_key, payload, \
           alert_count, alertnames, created_at, due_at, lease_owner, lease_until) VALUES {} \
         RETURNING id",
        placeholders(rows, 11)
    )
}

/// Makes `rows` leased messages final: `$1` final_at, `$2` period, then per
/// row (id, state, attempts, last_reason, last_error, segments), then the
/// lease's owner; returns (id, user_id, channel_id, group_key) of each
/// applied. Numbered in the text's order, so that SQLite runs it with `?`.
pub fn finish_messages(rows: usize) -> String {
    format!(
        "UPDATE messages SET state = v.column2, attempts = v.column3, last_reason = v.column4, \
           last_error = v.column5, segments = v.column6, final_at = $1, period_id = $2, \
           paced = FALSE, lease_owner = NULL, lease_until = NULL \
         FROM (VALUES {}) AS v \
         WHERE messages.id = v.column1 AND messages.state = 'pending' AND messages.lease_owner = ${} \
         RETURNING messages.id, messages.user_id, messages.channel_id, messages.group_key",
        placeholders_from(3, rows, 6),
        rows * 6 + 3
    )
}

/// Inserts `rows` attempts: (message_id, attempt, started_at, duration_ms,
/// result, status_code, error, segments) each.
pub fn insert_attempts(rows: usize) -> String {
    format!(
        "INSERT INTO attempts (message_id, attempt, started_at, duration_ms, result, status_code, error, segments) \
         VALUES {}",
        placeholders(rows, 8)
    )
}

/// Adds `rows` counts to usage: (period_id, user_id, integration, delivered,
/// failed, delivered_segments, failed_segments) each.
pub fn count_usage(rows: usize) -> String {
    format!(
        "INSERT INTO usage (period_id, user_id, integration, delivered, failed, \
           delivered_segments, failed_segments) VALUES {} \
         ON CONFLICT (period_id, user_id, integration) DO UPDATE SET \
           delivered = usage.delivered + excluded.delivered, failed = usage.failed + excluded.failed, \
           delivered_segments = usage.delivered_segments + excluded.delivered_segments, \
           failed_segments = usage.failed_segments + excluded.failed_segments",
        placeholders(rows, 7)
    )
}

#[cfg(test)]
mod tests {
    use super::{placeholders_from, positional};

    #[test]
    fn numbered_parameters_in_order_become_anonymous() {
        let sql = format!(
            "UPDATE t SET a = $1 FROM (VALUES {}) AS v WHERE b = $6",
            placeholders_from(2, 2, 2)
        );
        assert_eq!(
            positional(&sql).as_deref(),
            Some("UPDATE t SET a = ? FROM (VALUES (?, ?), (?, ?)) AS v WHERE b = ?")
        );
        assert_eq!(positional("SELECT 1").as_deref(), Some("SELECT 1"));
    }

    #[test]
    fn numbered_parameters_out_of_order_are_left_alone() {
        assert_eq!(positional("SELECT $2, $1"), None);
        assert_eq!(positional("SELECT $1, $1"), None);
        assert_eq!(positional("SELECT $1, $3"), None);
        assert_eq!(positional("SELECT $x"), None);
    }
}
