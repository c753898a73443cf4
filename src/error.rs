//! The API's error type: a clean JSON message for the client, the cause chain
//! in the log (once, here, where the error is handled).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error and its causes on one line (`outer: cause: root cause`), as a
/// log field: `error = %Causes(&e)`.
///
/// Not `{:?}` of an `anyhow::Error`: with `RUST_BACKTRACE` set, that prints
/// a backtrace of some 170 lines per error, and resolving the first one
/// loads the binary's debug information (about 60 MB, kept for the life of
/// the process).
pub struct Causes<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token may not do that")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    RequestTimeout(std::time::Duration),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    /// Answered with `Retry-After: retry_after` (seconds).
    #[error("too many failed attempts; try again in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error("the store cannot take the request right now; try again")]
    Unavailable(#[source] anyhow::Error),
    /// Too many requests of this kind in progress: a short wait, then retry.
    #[error("{0}; try again")]
    Busy(&'static str),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn unavailable(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Unavailable(e.into())
    }

    /// Seconds a client should wait before retrying, for a 503.
    fn retry_after(&self) -> Option<&'static str> {
        match self {
            ApiError::Unavailable(_) => Some("5"),
            ApiError::Busy(_) => Some("1"),
            _ => None,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Unavailable(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Unavailable(cause) => {
                tracing::error!(error = %Causes(&**cause), "store unavailable")
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = %Causes(&**cause), "internal error")
            }
            ApiError::Busy(what) => tracing::warn!(what, "busy: request refused with 503"),
            _ => tracing::debug!(status = status.as_u16(), error = %self, "request refused"),
        }
        let mut response = (status, Json(json!({"error": self.to_string()}))).into_response();
        if let Some(seconds) = self.retry_after() {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(seconds),
            );
        }
        if let ApiError::TooManyRequests { retry_after } = self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after.into());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::Causes;
    use crate::store::StoreError;

    #[test]
    fn causes_are_one_line_without_a_backtrace() {
        let e = StoreError::Database(sqlx::Error::PoolTimedOut);
        assert_eq!(
            Causes(&e).to_string(),
            format!("database error: {}", sqlx::Error::PoolTimedOut)
        );
        let e = anyhow::Error::from(e).context("claiming messages");
        let line = Causes(&*e).to_string();
        assert!(
            line.starts_with("claiming messages: database error: "),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }
}
