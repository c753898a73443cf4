//! The outbound guard: user-supplied URLs may not reach loopback, private,
//! link-local, unique-local or metadata addresses unless the operator lists
//! them in `outbound_allow`. Checked when a channel is saved (the URL), and at
//! send time against what DNS answers then (the resolver) and on every
//! redirect (the redirect policy), so neither a DNS change nor a redirect gets
//! around it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// A destination the guard refused; its presence in an error's source chain
/// makes a send fail permanently.
#[derive(Debug, thiserror::Error)]
#[error("outbound guard: {0}")]
pub struct Refused(pub String);

fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local() // includes 169.254.169.254, the cloud metadata address
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // 192.0.0.0/24, IETF protocol assignments
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7 (fd00:ec2::254 is AWS metadata)
                || (first & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_forbidden(IpAddr::V4(v4)))
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Guard {
    allow: Arc<Vec<IpNet>>,
}

impl Guard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow: Arc::new(allow),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        !is_forbidden(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Checks a URL: http(s) only, and a host that is not a forbidden address
    /// literal or a local or metadata name. Names are checked again at send
    /// time against what they resolve to.
    pub fn check_url(&self, raw: &str) -> Result<Url, String> {
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
                let local = d == "localhost"
                    || d.ends_with(".localhost")
                    || d.ends_with(".local")
                    || d.ends_with(".internal");
                if local
                    && !self
                        .allow
                        .iter()
                        .any(|net| net.contains(&IpAddr::from([127, 0, 0, 1])))
                {
                    return Err(format!("URL host {d:?} is a local or metadata name"));
                }
                return Ok(url);
            }
            None => return Err("URL has no host".into()),
        };
        if !self.allows(ip) {
            return Err(format!(
                "URL address {ip} is loopback, private or link-local; an operator can allow it with outbound_allow"
            ));
        }
        Ok(url)
    }

    /// Follows up to 5 redirects, none of them to a forbidden address.
    pub fn redirect_policy(&self) -> reqwest::redirect::Policy {
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error(Refused("more than 5 redirects".into()));
            }
            match guard.check_url(attempt.url().as_str()) {
                Ok(_) => attempt.follow(),
                Err(why) => attempt.error(Refused(format!("redirect refused: {why}"))),
            }
        })
    }

    /// Keeps the allowed addresses of a DNS answer, or says why none are left.
    pub fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let total = addrs.len();
        let kept: Vec<SocketAddr> = addrs.into_iter().filter(|a| self.allows(a.ip())).collect();
        if kept.is_empty() {
            return Err(Refused(if total == 0 {
                format!("{host} did not resolve")
            } else {
                format!("{host} resolves only to loopback, private or link-local addresses")
            }));
        }
        Ok(kept)
    }
}

/// reqwest's resolver, filtered by the guard: checked at connect time, so the
/// answer that is used is the answer that was checked.
impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = guard.filter(&host, addrs)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let g = Guard::new(vec![]);
        assert!(g.check_url("https://hooks.slack.com/services/x").is_ok());
        for bad in [
            "http://127.0.0.1:8080/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://localhost/",
            "http://metadata.google.internal/",
            "ftp://example.com/",
            "not a url",
        ] {
            assert!(g.check_url(bad).is_err(), "{bad}");
        }
        let allowed = Guard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(allowed.check_url("http://127.0.0.1:8080/").is_ok());
        assert!(allowed.check_url("http://10.1.2.3/").is_err());
    }

    #[tokio::test]
    async fn dns_answers_are_filtered() {
        // localhost resolves (from /etc/hosts) to loopback addresses only.
        let refused = Guard::new(vec![])
            .resolve(Name::from_str_unchecked("localhost"))
            .await;
        let err = refused.err().expect("loopback answer refused").to_string();
        assert!(err.contains("resolves only to"), "{err}");
        let allowed = Guard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        let addrs: Vec<_> = allowed
            .resolve(Name::from_str_unchecked("localhost"))
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn mixed_answers_keep_public_addresses() {
        let g = Guard::new(vec![]);
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.5:443".parse().unwrap();
        assert_eq!(g.filter("x", vec![private, public]).unwrap(), vec![public]);
    }

    trait FromStrUnchecked {
        fn from_str_unchecked(s: &str) -> Self;
    }
    impl FromStrUnchecked for Name {
        fn from_str_unchecked(s: &str) -> Self {
            s.parse().expect("valid name")
        }
    }
}
