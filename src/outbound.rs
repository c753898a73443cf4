//! The outbound guard: user-supplied URLs may not reach addresses that are not
//! the public internet (loopback, private, link-local, multicast, reserved,
//! this host's own interfaces, and IPv6 forms that embed such an IPv4
//! address) unless the operator lists them in `outbound_allow`.
//!
//! One classification, [`classify`], decides at save time (the URL) and at send
//! time: against what DNS answers then (the resolver), on every redirect (the
//! redirect policy), and, when an `outbound_proxy` is configured, against the
//! target's name resolved here before the request is handed to the proxy.
//!
//! No message of the guard names the host or address it refused: they end up
//! in logs, and a user's URL is a secret.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// A destination the guard refused; its presence in an error's source chain
/// makes a send fail permanently.
#[derive(Debug, thiserror::Error)]
#[error("outbound guard: {0}")]
pub struct Refused(pub String);

/// Why an address is refused: a range, possibly embedded in an IPv6 form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Why {
    /// The IPv6 form that embeds a forbidden IPv4 address, if any.
    pub form: Option<&'static str>,
    pub range: &'static str,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.form {
            Some(form) => write!(f, "the {form} form of {}", self.range),
            None => f.write_str(self.range),
        }
    }
}

/// The reason given for an address of one of this host's interfaces.
pub const THIS_HOST: &str = "an address of this host's own interfaces";

/// IPv4 ranges that are never the public internet.
const V4_RANGES: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "private (10.0.0.0/8)"),
    ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64.0.0/10)"),
    ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
    (
        [169, 254, 0, 0],
        16,
        "link-local (169.254.0.0/16, cloud metadata)",
    ),
    ([172, 16, 0, 0], 12, "private (172.16.0.0/12)"),
    (
        [192, 0, 0, 0],
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    ([192, 168, 0, 0], 16, "private (192.168.0.0/16)"),
    ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
    ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
    ([240, 0, 0, 0], 4, "reserved or broadcast (240.0.0.0/4)"),
];

/// IPv6 ranges refused whole. `::/96` (IPv4-compatible), `::ffff:0:0/96`
/// (IPv4-mapped), `::ffff:0:0:0/96` (IPv4-translated), `64:ff9b::/96`
/// (NAT64), `2002::/16` (6to4) and `2001::/32` (Teredo) are refused when the
/// IPv4 address they embed is (see [`embedded_v4`]).
const V6_RANGES: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified (::/128)"),
    (Ipv6Addr::LOCALHOST, 128, "loopback (::1/128)"),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        // RFC 8215: the IPv4 address sits where the operator's prefix length
        // puts it (RFC 6052), which we cannot know, and the range is for local
        // use only: refused whole.
        "local-use NAT64 (64:ff9b:1::/48)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only (100::/64)",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique-local (fc00::/7)",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local (fe80::/10)",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local (fec0::/10)",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast (ff00::/8)",
    ),
];

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from_be_bytes(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The IPv4 addresses an IPv6 address embeds, by the form that embeds them.
pub fn embedded_v4(ip: Ipv6Addr) -> Vec<(&'static str, Ipv4Addr)> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    let mut found = Vec::new();
    if bits >> 32 == 0 {
        found.push(("IPv4-compatible", low32));
    }
    if bits >> 32 == 0xffff {
        found.push(("IPv4-mapped", low32));
    }
    if bits >> 32 == 0xffff_0000 {
        found.push(("IPv4-translated", low32));
    }
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        found.push(("NAT64", low32));
    }
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        found.push(("6to4", Ipv4Addr::from((bits >> 80) as u32)));
    }
    if in_v6(ip, Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32) {
        // Teredo: the server at bits 32-63, the client obfuscated in the last 32.
        found.push(("Teredo", Ipv4Addr::from((bits >> 64) as u32)));
        found.push(("Teredo", Ipv4Addr::from(!(bits as u32))));
    }
    found
}

/// Why a user-supplied URL may not reach `ip`, if it may not: the one
/// classification behind the save-time and the send-time checks. `own` are the
/// addresses of this host's interfaces. `outbound_allow` is applied on top
/// (by [`Guard`]), to the address as it is written.
pub fn classify(ip: IpAddr, own: &[IpAddr]) -> Option<Why> {
    let direct = |ip: IpAddr| {
        match ip {
            IpAddr::V4(v4) => V4_RANGES
                .iter()
                .find(|(net, len, _)| in_v4(v4, *net, *len))
                .map(|r| r.2),
            IpAddr::V6(v6) => V6_RANGES
                .iter()
                .find(|(net, len, _)| in_v6(v6, *net, *len))
                .map(|r| r.2),
        }
        .or_else(|| own.contains(&ip).then_some(THIS_HOST))
    };
    if let Some(range) = direct(ip) {
        return Some(Why { form: None, range });
    }
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    embedded_v4(v6).into_iter().find_map(|(form, v4)| {
        direct(IpAddr::V4(v4)).map(|range| Why {
            form: Some(form),
            range,
        })
    })
}

/// How long a reading of this host's interface addresses is used.
const OWN_ADDRESSES_TTL: Duration = Duration::from_secs(10);

/// The addresses of this host's interfaces, read at most every
/// [`OWN_ADDRESSES_TTL`]; a failed reading keeps the last good one.
pub fn own_addresses() -> Arc<Vec<IpAddr>> {
    type Cache = Option<(Instant, Arc<Vec<IpAddr>>)>;
    static CACHE: Mutex<Cache> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((read_at, addrs)) = &*cache {
        if read_at.elapsed() < OWN_ADDRESSES_TTL {
            return addrs.clone();
        }
    }
    let addrs = match if_addrs::get_if_addrs() {
        Ok(interfaces) => Arc::new(interfaces.iter().map(|i| i.ip()).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "reading this host's interface addresses failed; using the last reading");
            cache.as_ref().map(|(_, a)| a.clone()).unwrap_or_default()
        }
    };
    *cache = Some((Instant::now(), addrs.clone()));
    addrs
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

    /// Why `ip` is refused, unless `outbound_allow` covers it.
    pub fn refusal(&self, ip: IpAddr) -> Option<Why> {
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        classify(ip, &own_addresses())
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
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
                    return Err("URL host is a local or metadata name".into());
                }
                return Ok(url);
            }
            None => return Err("URL has no host".into()),
        };
        match self.refusal(ip) {
            Some(why) => Err(format!(
                "URL address is {why}; an operator can allow it with outbound_allow"
            )),
            None => Ok(url),
        }
    }

    /// Follows up to 5 redirects, none of them to a forbidden address. With a
    /// proxy (`resolve_names`), a redirect target's name is resolved and
    /// checked here, since the proxy, not our resolver, will connect to it.
    pub fn redirect_policy(&self, resolve_names: bool) -> reqwest::redirect::Policy {
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error(Refused("more than 5 redirects".into()));
            }
            let checked = guard
                .check_url(attempt.url().as_str())
                .map_err(|why| Refused(format!("redirect refused: {why}")))
                .and_then(|url| match resolve_names {
                    true => guard.check_name_blocking(&url),
                    false => Ok(()),
                });
            match checked {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        })
    }

    /// Keeps the allowed addresses of a DNS answer, or says why none are left.
    pub fn filter(&self, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let mut first_refusal = None;
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.refusal(a.ip()) {
                None => true,
                Some(why) => {
                    first_refusal.get_or_insert(why);
                    false
                }
            })
            .collect();
        if kept.is_empty() {
            return Err(Refused(match first_refusal {
                None => "the URL's host did not resolve".into(),
                Some(why) => format!("the URL's host resolves only to forbidden addresses ({why})"),
            }));
        }
        Ok(kept)
    }

    /// For a request handed to a proxy, which resolves the name itself: every
    /// answer must be allowed, since we cannot choose the one it connects to.
    pub fn check_all(&self, addrs: &[SocketAddr]) -> Result<(), Refused> {
        if addrs.is_empty() {
            return Err(Refused("the URL's host did not resolve".into()));
        }
        match addrs.iter().find_map(|a| self.refusal(a.ip())) {
            Some(why) => Err(Refused(format!(
                "the URL's host resolves to a forbidden address ({why})"
            ))),
            None => Ok(()),
        }
    }

    /// Resolves a URL's host name (an address literal was checked by
    /// [`Guard::check_url`]) and checks every answer: for requests that go
    /// through a proxy. A failed lookup is an `io::Error` (it may pass later).
    pub async fn check_name(&self, url: &Url) -> Result<Result<(), Refused>, std::io::Error> {
        let Some(Host::Domain(name)) = url.host() else {
            return Ok(Ok(()));
        };
        let port = url.port_or_known_default().unwrap_or(0);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port)).await?.collect();
        Ok(self.check_all(&addrs))
    }

    /// [`Guard::check_name`] for the redirect policy, which cannot wait:
    /// resolves on this thread (telling the runtime so where it can).
    fn check_name_blocking(&self, url: &Url) -> Result<(), Refused> {
        let Some(Host::Domain(name)) = url.host() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(0);
        let lookup = || (name, port).to_socket_addrs().map(Iterator::collect);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let addrs: Vec<SocketAddr> = match multi_thread {
            true => tokio::task::block_in_place(lookup),
            false => lookup(),
        }
        .map_err(|e| {
            Refused(format!(
                "redirect refused: the target's name did not resolve: {e}"
            ))
        })?;
        self.check_all(&addrs)
            .map_err(|Refused(why)| Refused(format!("redirect refused: {why}")))
    }
}

/// reqwest's resolver, filtered by the guard: checked at connect time, so the
/// answer that is used is the answer that was checked.
impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let kept = guard.filter(addrs)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for the operator's own services (Alertmanager, Consul),
/// which the guard does not apply to: they are configured, not user-supplied;
/// no request outlives `timeout`, so a hung service cannot hold a render (or
/// the renderer's task) forever. Without a proxy: notimeter never takes one
/// from `HTTP_PROXY` and the like, and `outbound_proxy` is for deliveries.
pub fn operator_client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("the HTTP client builds, as reqwest::Client::new() would")
}

/// The samples of a Prometheus exporter's `/metrics` under `base` (an
/// Alertmanager's URL, say), through an [`operator_client`].
pub async fn scrape_metrics(
    http: &reqwest::Client,
    base: &str,
) -> Result<prometheus_parse::Scrape, String> {
    let response = http
        .get(format!("{}/metrics", base.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("/metrics answered {}", response.status()));
    }
    let text = response.text().await.map_err(|e| e.to_string())?;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .map_err(|e| e.to_string())
}

/// The value of the first sample named `name` in `scrape` (a counter, a
/// gauge or an untyped one).
pub fn sample_value(scrape: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .and_then(|s| match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v)
            | prometheus_parse::Value::Counter(v) => Some(v),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn why(s: &str) -> Option<String> {
        classify(ip(s), &[]).map(|w| w.to_string())
    }

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
            "http://0.0.0.1/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://224.0.0.1/",
            "http://240.0.0.1/",
            "http://198.18.0.1/",
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
        // The allow list applies to the address as written, not to what it embeds.
        assert!(allowed.check_url("http://[64:ff9b::7f00:1]/").is_err());
    }

    #[test]
    fn refusals_never_name_the_host() {
        let g = Guard::new(vec![]);
        for url in [
            "http://10.9.8.7/x",
            "http://[64:ff9b::a09:807]/",
            "http://secrethost.localhost/",
        ] {
            let e = g.check_url(url).unwrap_err();
            assert!(!e.contains("10.9.8.7") && !e.contains("secrethost"), "{e}");
        }
        let e = g.filter(vec!["10.9.8.7:80".parse().unwrap()]).unwrap_err();
        assert!(!e.to_string().contains("10.9.8.7"), "{e}");
        assert!(e.to_string().contains("private (10.0.0.0/8)"), "{e}");
    }

    #[test]
    fn ranges_named() {
        assert_eq!(why("0.0.0.1").unwrap(), "\"this network\" (0.0.0.0/8)");
        assert_eq!(why("224.0.0.1").unwrap(), "multicast (224.0.0.0/4)");
        assert_eq!(
            why("255.255.255.255").unwrap(),
            "reserved or broadcast (240.0.0.0/4)"
        );
        assert_eq!(
            why("198.19.255.255").unwrap(),
            "benchmarking (198.18.0.0/15)"
        );
        assert_eq!(
            why("100.127.0.1").unwrap(),
            "carrier-grade NAT (100.64.0.0/10)"
        );
        assert_eq!(
            why("::127.0.0.1").unwrap(),
            "the IPv4-compatible form of loopback (127.0.0.0/8)"
        );
        assert_eq!(
            why("::ffff:10.0.0.1").unwrap(),
            "the IPv4-mapped form of private (10.0.0.0/8)"
        );
        assert_eq!(
            why("64:ff9b::7f00:1").unwrap(),
            "the NAT64 form of loopback (127.0.0.0/8)"
        );
        assert_eq!(
            why("64:ff9b:1:abcd::1").unwrap(),
            "local-use NAT64 (64:ff9b:1::/48)"
        );
        assert_eq!(
            why("2002:a9fe:a9fe::1").unwrap(),
            "the 6to4 form of link-local (169.254.0.0/16, cloud metadata)"
        );
        assert_eq!(
            why("2001:0:4136:e378:8000:63bf:80ff:fffe").unwrap(), // client 127.0.0.1
            "the Teredo form of loopback (127.0.0.0/8)"
        );
        assert_eq!(why("ff02::1").unwrap(), "multicast (ff00::/8)");
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "64:ff9b:2::1",
        ] {
            assert_eq!(why(public), None, "{public}");
        }
    }

    #[test]
    fn own_addresses_are_refused_in_every_form() {
        let own = [ip("203.0.113.7"), ip("2001:db8::7")];
        for addr in [
            "203.0.113.7",
            "2001:db8::7",
            "::ffff:203.0.113.7",
            "64:ff9b::cb00:7107",
        ] {
            assert_eq!(
                classify(ip(addr), &own).map(|w| w.range),
                Some(THIS_HOST),
                "{addr}"
            );
        }
        assert_eq!(classify(ip("203.0.113.8"), &own), None);
    }

    #[test]
    fn this_hosts_interfaces_are_read() {
        let own = own_addresses();
        assert!(own.iter().any(|a| a.is_loopback()), "{own:?}");
        for a in own.iter() {
            assert!(Guard::new(vec![]).refusal(*a).is_some(), "{a}");
        }
    }

    /// The forbidden IPv4 ranges as CIDRs, parsed independently of the bit math.
    fn reference_v4(ip: Ipv4Addr) -> bool {
        [
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "224.0.0.0/4",
            "240.0.0.0/4",
        ]
        .iter()
        .any(|n| n.parse::<ipnet::Ipv4Net>().unwrap().contains(&ip))
    }

    fn v4_in_ranges() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            any::<u32>().prop_map(Ipv4Addr::from),
            (0..V4_RANGES.len(), any::<u32>()).prop_map(|(i, host)| {
                let (net, len, _) = V4_RANGES[i];
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Ipv4Addr::from(u32::from_be_bytes(net) & mask | host & !mask)
            }),
        ]
    }

    proptest! {
        #[test]
        fn v4_matches_the_reference(v4 in v4_in_ranges()) {
            prop_assert_eq!(classify(IpAddr::V4(v4), &[]).is_some(), reference_v4(v4));
        }

        #[test]
        fn embeddings_follow_their_ipv4_address(v4 in v4_in_ranges()) {
            let forbidden = reference_v4(v4);
            let n = u128::from(u32::from(v4));
            let forms = [
                ("IPv4-mapped", Ipv6Addr::from(0xffff_u128 << 32 | n)),
                ("IPv4-translated", Ipv6Addr::from(0xffff_0000_u128 << 32 | n)),
                ("NAT64", Ipv6Addr::from(0x0064_ff9b_u128 << 96 | n)),
                ("6to4", Ipv6Addr::from(0x2002_u128 << 112 | n << 80 | 1)),
            ];
            for (form, v6) in forms {
                let got = classify(IpAddr::V6(v6), &[]);
                prop_assert_eq!(got.is_some(), forbidden, "{} {}", form, v6);
                if let Some(w) = got {
                    prop_assert_eq!(w.form, Some(form));
                }
            }
            // IPv4-compatible: :: and ::1 are refused in their own right.
            let compat = IpAddr::V6(Ipv6Addr::from(n));
            prop_assert_eq!(classify(compat, &[]).is_some(), forbidden || n <= 1);
            // Teredo, with a public server: refused by its (obfuscated) client.
            let teredo = Ipv6Addr::from(0x2001_0000_u128 << 96 | 0x0808_0808_u128 << 64 | u128::from(!u32::from(v4)));
            prop_assert_eq!(classify(IpAddr::V6(teredo), &[]).is_some(), forbidden);
        }

        #[test]
        fn v6_ranges_are_refused_whole(low in any::<u128>()) {
            for (net, len, _) in V6_RANGES {
                let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                let v6 = Ipv6Addr::from(u128::from(*net) & mask | low & !mask);
                prop_assert!(classify(IpAddr::V6(v6), &[]).is_some(), "{}", v6);
            }
        }

        #[test]
        fn allow_overrides_everything(bits in any::<u128>()) {
            let v6 = Ipv6Addr::from(bits);
            let g = Guard::new(vec![IpNet::new(IpAddr::V6(v6), 128).unwrap()]);
            prop_assert!(g.allows(IpAddr::V6(v6)));
        }
    }

    #[tokio::test]
    async fn dns_answers_are_filtered() {
        // localhost resolves (from /etc/hosts) to loopback addresses only.
        let refused = Guard::new(vec![])
            .resolve(Name::from_str_unchecked("localhost"))
            .await;
        let err = refused.err().expect("loopback answer refused").to_string();
        assert!(err.contains("resolves only to"), "{err}");
        assert!(!err.contains("localhost"), "{err}");
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

    #[tokio::test]
    async fn names_for_a_proxy_are_resolved_and_checked() {
        let url = Url::parse("http://localhost:8080/").unwrap();
        let refused = Guard::new(vec![]).check_name(&url).await.unwrap();
        let err = refused.unwrap_err().to_string();
        assert!(
            err.contains("loopback") && !err.contains("localhost"),
            "{err}"
        );
        let allowed = Guard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        assert!(allowed.check_name(&url).await.unwrap().is_ok());
        assert!(allowed.check_name_blocking(&url).is_ok());
        assert!(Guard::new(vec![]).check_name_blocking(&url).is_err());
    }

    #[test]
    fn mixed_answers_keep_public_addresses() {
        let g = Guard::new(vec![]);
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.5:443".parse().unwrap();
        assert_eq!(g.filter(vec![private, public]).unwrap(), vec![public]);
        assert!(g.check_all(&[public]).is_ok());
        assert!(
            g.check_all(&[private, public]).is_err(),
            "a proxy might pick the private one"
        );
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
