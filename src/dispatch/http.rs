//! What HTTP integrations share: posting JSON, classifying the answer into
//! Alertmanager's failure reasons, reading `Retry-After`, and the outbound guard
//! for user-supplied URLs.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use url::{Host, Url};

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

/// A transport error with its cause chain, stripped of its URL (which may be a secret).
pub fn transport_error(err: reqwest::Error) -> SendError {
    let reason = if err.is_timeout() {
        Reason::ContextDeadlineExceeded
    } else {
        Reason::Other
    };
    let err = err.without_url();
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    SendError {
        reason,
        retryable: true,
        retry_after: None,
        status: None,
        detail,
    }
}

/// Sends a request and turns the answer into [`Sent`] or a classified [`SendError`].
/// `check_body` may reject a 2xx answer by its body (Slack answers 200 to some errors).
pub async fn send(
    request: RequestBuilder,
    check_body: impl FnOnce(&str) -> Result<(), String>,
) -> Result<Sent, SendError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let hint = retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    let snippet: String = body.chars().take(200).collect();
    if status.is_success() {
        return check_body(&body)
            .map(|()| Sent {
                status: Some(status.as_u16()),
            })
            .map_err(|detail| SendError {
                reason: Reason::ClientError,
                retryable: false,
                retry_after: None,
                status: Some(status.as_u16()),
                detail,
            });
    }
    let (reason, retryable) = classify_status(status);
    Err(SendError {
        reason,
        retryable,
        retry_after: hint,
        status: Some(status.as_u16()),
        detail: format!("unexpected status {status}: {snippet}"),
    })
}

fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64/10 CGNAT
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_forbidden_ip(IpAddr::V4(v4)))
        }
    }
}

/// Checks a user-supplied URL when a channel is saved: http(s) only, and no
/// loopback, private, link-local or metadata address unless `allow` lists it.
pub fn check_url(raw: &str, allow: &[IpNet]) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "URL scheme {:?} is not http or https",
            url.scheme()
        ));
    }
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") || d == "metadata.google.internal" {
                return Err(format!("URL host {d:?} is a local or metadata address"));
            }
            return Ok(url);
        }
        None => return Err("URL has no host".into()),
    };
    if is_forbidden_ip(ip) && !allow.iter().any(|net| net.contains(&ip)) {
        return Err(format!(
            "URL address {ip} is loopback, private or link-local; an operator can allow it with outbound_allow"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard() {
        let none: Vec<IpNet> = vec![];
        assert!(check_url("https://hooks.slack.com/services/x", &none).is_ok());
        for bad in [
            "http://127.0.0.1:8080/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://localhost/",
            "ftp://example.com/",
            "not a url",
        ] {
            assert!(check_url(bad, &none).is_err(), "{bad}");
        }
        let allow: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(check_url("http://127.0.0.1:8080/", &allow).is_ok());
        assert!(check_url("http://10.1.2.3/", &allow).is_err());
    }

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
