//! The HTTP API besides ingest: channels (admin), usage and ledger (finance),
//! metrics and health.

pub mod access;
pub mod channels;
pub mod health;
pub mod ledger;
pub mod log;
pub mod openapi;
pub mod page;
mod router;
pub mod stream;
pub mod test_send;
pub mod throttle;
pub mod usage;

pub use router::router;

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::http::StatusCode;

use crate::error::ApiError;

/// A JSON body whose rejections use the API's error format: malformed JSON
/// is 400, a body of the wrong shape 422, each saying what is wrong.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(r.body_text()),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(0),
            _ => ApiError::BadRequest(r.body_text()),
        }
    }
}
