//! What HTTP integrations share: sending, classifying the answer into
//! Alertmanager's failure reasons, and reading `Retry-After`.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};

use super::{Reason, SendError, Sent};

/// Reads `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// Maps a non-success status to a reason and whether a retry may help.
pub fn classify_status(status: StatusCode) -> (Reason, bool) {
    match status.as_u16() {
        429 => (Reason::RateLimited, true),
        401 | 403 => (Reason::AuthError, false),
        408 => (Reason::ClientError, true),
        400..=499 => (Reason::ClientError, false),
        500..=599 => (Reason::ServerError, true),
        _ => (Reason::Other, false),
    }
}

/// A transport error with its cause chain, stripped of its URL (which may be a
/// secret). A refusal by the outbound guard is permanent; anything else may
/// pass on a retry.
pub fn transport_error(err: reqwest::Error) -> SendError {
    let reason = if err.is_timeout() {
        Reason::ContextDeadlineExceeded
    } else {
        Reason::Other
    };
    let err = err.without_url();
    let mut detail = err.to_string();
    let mut guarded = false;
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        guarded |= cause.downcast_ref::<crate::outbound::Refused>().is_some();
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    if guarded {
        return SendError::permanent(Reason::ClientError, detail);
    }
    SendError {
        reason,
        retryable: true,
        retry_after: None,
        status: None,
        detail,
    }
}

/// An HTTP answer, read whole (bodies here are small).
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: String,
}

impl Answer {
    /// The answer as a failure, classified by status alone.
    pub fn error(&self) -> SendError {
        let (reason, retryable) = classify_status(self.status);
        SendError {
            reason,
            retryable,
            retry_after: self.retry_after,
            status: Some(self.status.as_u16()),
            detail: format!("unexpected status {}: {}", self.status, self.snippet()),
        }
    }

    pub fn snippet(&self) -> String {
        self.body.chars().take(200).collect()
    }

    pub fn sent(&self) -> Sent {
        Sent {
            status: Some(self.status.as_u16()),
            segments: None,
        }
    }
}

/// Sends a request; only transport failures are errors here.
pub async fn exchange(request: RequestBuilder) -> Result<Answer, SendError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// Sends a request and turns the answer into [`Sent`] or a classified [`SendError`].
/// `check_body` may reject a 2xx answer by its body (Slack answers 200 to some errors).
pub async fn send(
    request: RequestBuilder,
    check_body: impl FnOnce(&str) -> Result<(), String>,
) -> Result<Sent, SendError> {
    let answer = exchange(request).await?;
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    check_body(&answer.body)
        .map(|()| answer.sent())
        .map_err(|detail| SendError {
            reason: Reason::ClientError,
            retryable: false,
            retry_after: None,
            status: Some(answer.status.as_u16()),
            detail,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(
            classify_status(StatusCode::NOT_FOUND),
            (Reason::ClientError, false)
        );
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS),
            (Reason::RateLimited, true)
        );
        assert_eq!(
            classify_status(StatusCode::BAD_GATEWAY),
            (Reason::ServerError, true)
        );
        assert_eq!(
            classify_status(StatusCode::FORBIDDEN),
            (Reason::AuthError, false)
        );
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
