//! Egress policy: the operator's host grants (`--allow-host` grammar), the
//! IP ranges no connector reaches, and the checks a guest's URL passes
//! before anything is sent. The HTTP capability (in `sluice-wasm`) applies
//! them, and applies [`forbidden_reason`] again to every resolved address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::limits::MIN_WILDCARD_DOMAIN_LABELS;

/// The host part of a [`HostGrant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantHost {
    /// Exactly this address (the only way to reach a loopback, private or
    /// otherwise forbidden address).
    Ip(IpAddr),
    /// Exactly this DNS name (lower case, ASCII).
    Name(String),
    /// Any name strictly under this domain (`*.example.com` holds
    /// `example.com`): `a.example.com`, `a.b.example.com`, not the apex.
    Subdomains(String),
}

/// A host the operator lets a connector reach, as given to `--allow-host`:
/// `[SCHEME://]HOST[:PORT]` with HOST a DNS name, `*.` + a domain, an IPv4
/// address or a bracketed IPv6 address (`api.example.com`,
/// `https://*.example.com`, `127.0.0.1:8080`, `[::1]:80`). Without a port,
/// any port is granted; without a scheme, http and https.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    /// `http` or `https`, if the grant is limited to one.
    pub scheme: Option<String>,
    pub host: GrantHost,
    pub port: Option<u16>,
}

/// A malformed `--allow-host` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid host grant {input:?}: {reason}")]
pub struct GrantError {
    input: String,
    reason: &'static str,
}

/// Longest DNS name in text form (RFC 1035), in bytes.
const MAX_DNS_NAME_BYTES: usize = 253;
/// Longest DNS label (RFC 1035), in bytes.
const MAX_DNS_LABEL_BYTES: usize = 63;

/// Check a DNS name (already lower case): labels of letters, digits and
/// hyphens, not numeric at the end (that would be an IPv4 spelling).
fn check_domain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty host");
    }
    if !name.is_ascii() {
        return Err("write internationalised names in punycode (xn--…)");
    }
    if name.len() > MAX_DNS_NAME_BYTES {
        return Err("host name longer than 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() || label.len() > MAX_DNS_LABEL_BYTES {
            return Err("each dot-separated label must have 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(
                "host names are letters, digits, - and _ (a wildcard only as a leading *.)",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with -");
        }
    }
    let last = labels[labels.len() - 1];
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if last.bytes().all(|b| b.is_ascii_digit()) || hex {
        return Err("not a host name, and not an IPv4 address written a.b.c.d in decimal");
    }
    Ok(())
}

impl FromStr for HostGrant {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| GrantError {
            input: s.to_string(),
            reason,
        };
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if scheme != "http" && scheme != "https" {
                    return Err(err("the scheme may only be http:// or https://"));
                }
                (Some(scheme), rest)
            }
            None => (None, s),
        };
        if rest.contains(['/', '@', '?', '#', '\\']) || rest.chars().any(char::is_whitespace) {
            return Err(err(
                "give [http(s)://]HOST[:PORT], without path, query or user info",
            ));
        }
        let parse_port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(err("port is not a number 1-65535")),
            Ok(p) => Ok(p),
        };
        let (host_text, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| err("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(parse_port(p)?),
                None if after.is_empty() => None,
                None => return Err(err("junk after ]")),
            };
            let ip: Ipv6Addr = h
                .parse()
                .map_err(|_| err("brackets hold an IPv6 address"))?;
            return Ok(HostGrant {
                scheme,
                host: GrantHost::Ip(IpAddr::V6(ip)),
                port,
            });
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(parse_port(p)?)),
                Some(_) => return Err(err("write IPv6 addresses in brackets: [::1]:8080")),
                None => (rest, None),
            }
        };
        let host_text = host_text.to_ascii_lowercase();
        let host = if let Some(domain) = host_text.strip_prefix("*.") {
            check_domain(domain).map_err(err)?;
            if domain.split('.').count() < MIN_WILDCARD_DOMAIN_LABELS {
                return Err(err(
                    "a wildcard must stand under a domain of at least two labels (*.example.com)",
                ));
            }
            GrantHost::Subdomains(domain.to_string())
        } else if host_text.contains('*') {
            return Err(err(
                "a wildcard may only be a whole leading label: *.example.com",
            ));
        } else if let Ok(ip) = host_text.parse::<Ipv4Addr>() {
            GrantHost::Ip(IpAddr::V4(ip))
        } else {
            check_domain(&host_text).map_err(err)?;
            GrantHost::Name(host_text)
        };
        Ok(HostGrant { scheme, host, port })
    }
}

crate::text::serde_as_text!(HostGrant);

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.scheme {
            write!(f, "{s}://")?;
        }
        match &self.host {
            GrantHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]")?,
            GrantHost::Ip(IpAddr::V4(a)) => write!(f, "{a}")?,
            GrantHost::Name(n) => f.write_str(n)?,
            GrantHost::Subdomains(d) => write!(f, "*.{d}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl HostGrant {
    /// Whether this grant allows `url` (scheme, host and port).
    pub fn matches(&self, url: &url::Url) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != url.scheme()) {
            return false;
        }
        if self
            .port
            .is_some_and(|p| url.port_or_known_default() != Some(p))
        {
            return false;
        }
        match (&self.host, url.host()) {
            (GrantHost::Ip(ip), Some(url::Host::Ipv4(a))) => *ip == IpAddr::V4(a),
            (GrantHost::Ip(ip), Some(url::Host::Ipv6(a))) => *ip == IpAddr::V6(a),
            (GrantHost::Name(n), Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case(n),
            (GrantHost::Subdomains(s), Some(url::Host::Domain(d))) => {
                let d = d.to_ascii_lowercase();
                d.len() > s.len() + 1
                    && d.ends_with(s.as_str())
                    && d[..d.len() - s.len()].ends_with('.')
            }
            _ => false,
        }
    }

    /// Whether this grant names exactly `ip`.
    pub fn is_ip(&self, ip: IpAddr) -> bool {
        self.host == GrantHost::Ip(ip)
    }
}

/// `host` as the URL spells it (IPv6 in brackets) and the effective port.
pub fn host_port(url: &url::Url) -> Option<(String, u16)> {
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => format!("[{a}]"),
    };
    Some((host, url.port_or_known_default()?))
}

/// Whether any grant allows `url`.
pub fn is_granted(grants: &[HostGrant], url: &url::Url) -> bool {
    grants.iter().any(|g| g.matches(url))
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 ranges a connector may not reach unless the operator grants the
/// address itself, most specific first, with why.
const FORBIDDEN_V4: &[(Ipv4Net, &str)] = &[
    (v4(255, 255, 255, 255, 32), "broadcast"),
    (v4(169, 254, 169, 254, 32), "cloud metadata (link-local)"),
    (v4(0, 0, 0, 0, 8), "unspecified (\"this network\")"),
    (v4(10, 0, 0, 0, 8), "private (RFC 1918)"),
    (v4(100, 64, 0, 0, 10), "shared carrier-grade NAT (RFC 6598)"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(172, 16, 0, 0, 12), "private (RFC 1918)"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments (reserved)"),
    (v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)"),
    (v4(192, 88, 99, 0, 24), "6to4 relay anycast (reserved)"),
    (v4(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (v4(198, 18, 0, 0, 15), "benchmarking (reserved)"),
    (v4(198, 51, 100, 0, 24), "documentation (TEST-NET-2)"),
    (v4(203, 0, 113, 0, 24), "documentation (TEST-NET-3)"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
];

/// IPv6 ranges a connector may not reach unless granted, most specific
/// first. IPv4-mapped (`::ffff:0:0/96`) and NAT64 (`64:ff9b::/96`)
/// addresses are judged by the IPv4 address they embed.
const FORBIDDEN_V6: &[(Ipv6Net, &str)] = &[
    (v6(0, 0, 0, 0, 0, 0, 0, 0, 128), "unspecified"),
    (v6(0, 0, 0, 0, 0, 0, 0, 1, 128), "loopback"),
    (
        v6(0, 0, 0, 0, 0, 0, 0, 0, 96),
        "IPv4-compatible (deprecated)",
    ),
    (
        v6(0, 0, 0, 0, 0xffff, 0, 0, 0, 96),
        "IPv4-translated (reserved)",
    ),
    (v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0, 48), "local-use NAT64"),
    (v6(0x100, 0, 0, 0, 0, 0, 0, 0, 64), "discard-only"),
    (
        v6(0x2001, 0, 0, 0, 0, 0, 0, 0, 32),
        "Teredo (embeds an IPv4 address)",
    ),
    (v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0, 32), "documentation"),
    (
        v6(0x2002, 0, 0, 0, 0, 0, 0, 0, 16),
        "6to4 (embeds an IPv4 address)",
    ),
    (v6(0x3fff, 0, 0, 0, 0, 0, 0, 0, 20), "documentation"),
    (v6(0xfc00, 0, 0, 0, 0, 0, 0, 0, 7), "unique-local (private)"),
    (v6(0xfe80, 0, 0, 0, 0, 0, 0, 0, 10), "link-local"),
    (
        v6(0xfec0, 0, 0, 0, 0, 0, 0, 0, 10),
        "site-local (deprecated)",
    ),
    (v6(0xff00, 0, 0, 0, 0, 0, 0, 0, 8), "multicast"),
];

const NAT64: Ipv6Net = v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0, 96);

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    FORBIDDEN_V4
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, why)| *why)
}

/// Why `ip` is forbidden to connectors (loopback, private, link-local and
/// cloud metadata, CGNAT, unique-local, unspecified, multicast, broadcast,
/// documentation and reserved ranges), or `None` for a public address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => forbidden_v4(a),
        IpAddr::V6(a) => {
            let embedded = a.to_ipv4_mapped().or_else(|| {
                NAT64
                    .contains(&a)
                    .then(|| Ipv4Addr::from(a.to_bits() as u32))
            });
            if let Some(v4) = embedded {
                return forbidden_v4(v4).map(|_| "IPv6 embedding a forbidden IPv4 address");
            }
            FORBIDDEN_V6
                .iter()
                .find(|(net, _)| net.contains(&a))
                .map(|(_, why)| *why)
        }
    }
}

/// The URL's host if it is an IP literal.
fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}

/// Why the egress check refused a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressDenied {
    #[error("URL {0} has no host or port")]
    NoHost(String),
    #[error("{host} is a {why} address; only an --allow-host grant of that exact IP reaches it")]
    ForbiddenAddress { host: String, why: &'static str },
    #[error("{scheme}://{host}:{port} is not granted to this connector (the operator grants it with --allow-host)")]
    NotGranted {
        scheme: String,
        host: String,
        port: u16,
    },
}

/// The egress check of one URL (the request's or a redirect's): an IP
/// literal in a forbidden range must be granted as that IP, and some grant
/// must allow the scheme, host and port.
pub fn egress_check(grants: &[HostGrant], url: &url::Url) -> Result<(), EgressDenied> {
    let Some((host, port)) = host_port(url) else {
        return Err(EgressDenied::NoHost(url.to_string()));
    };
    if let Some(ip) = literal_ip(url) {
        if let Some(why) = forbidden_reason(ip) {
            if !grants.iter().any(|g| g.is_ip(ip)) {
                return Err(EgressDenied::ForbiddenAddress { host, why });
            }
        }
    }
    if !is_granted(grants, url) {
        return Err(EgressDenied::NotGranted {
            scheme: url.scheme().to_string(),
            host,
            port,
        });
    }
    Ok(())
}

/// Why a guest's URL is an invalid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUrl {
    #[error("the URL contains whitespace or control characters")]
    Whitespace,
    #[error("the URL must be absolute, http://… or https://…")]
    NotAbsolute,
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("URLs with user info are refused")]
    UserInfo,
    #[error("the URL has no host")]
    NoHost,
    #[error("bad URL: {0}")]
    Parse(url::ParseError),
    #[error("host {raw:?} is an unusual spelling of the IPv4 address {addr}; refused")]
    OddIpv4 { raw: String, addr: Ipv4Addr },
    #[error("percent-encoded host names are refused")]
    PercentEncodedHost,
}

/// Parse a guest's URL, refusing what the `url` crate would silently
/// normalise: the raw host text is checked before parsing, so `2130706433`,
/// `0177.0.0.1`, `0x7f.0.0.1`, `127.1` or a percent-encoded host are
/// invalid requests rather than quiet spellings of `127.0.0.1`.
pub fn parse_request_url(raw: &str) -> Result<url::Url, BadUrl> {
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(BadUrl::Whitespace);
    }
    let (scheme, after) = raw.split_once("://").ok_or(BadUrl::NotAbsolute)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(BadUrl::Scheme(scheme.to_string()));
    }
    let authority = &after[..after.find(['/', '?', '#', '\\']).unwrap_or(after.len())];
    if authority.contains('@') {
        return Err(BadUrl::UserInfo);
    }
    let raw_host = if authority.starts_with('[') {
        &authority[..authority.find(']').map_or(authority.len(), |i| i + 1)]
    } else {
        &authority[..authority.find(':').unwrap_or(authority.len())]
    };
    if raw_host.is_empty() {
        return Err(BadUrl::NoHost);
    }
    let url = url::Url::parse(raw).map_err(BadUrl::Parse)?;
    match url.host() {
        None => return Err(BadUrl::NoHost),
        Some(url::Host::Ipv4(addr)) if raw_host != addr.to_string() => {
            return Err(BadUrl::OddIpv4 {
                raw: raw_host.to_string(),
                addr,
            })
        }
        Some(url::Host::Domain(_)) if raw_host.contains('%') => {
            return Err(BadUrl::PercentEncodedHost)
        }
        _ => {}
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(list: &[&str]) -> Vec<HostGrant> {
        list.iter().map(|g| g.parse().unwrap()).collect()
    }

    fn url(u: &str) -> url::Url {
        url::Url::parse(u).unwrap()
    }

    #[test]
    fn grants_parse() {
        assert_eq!(
            "127.0.0.1:8080".parse::<HostGrant>().unwrap(),
            HostGrant {
                scheme: None,
                host: GrantHost::Ip("127.0.0.1".parse().unwrap()),
                port: Some(8080)
            }
        );
        assert_eq!(
            "API.Example.com".parse::<HostGrant>().unwrap(),
            HostGrant {
                scheme: None,
                host: GrantHost::Name("api.example.com".into()),
                port: None
            }
        );
        assert_eq!(
            "HTTPS://*.Example.com:8443".parse::<HostGrant>().unwrap(),
            HostGrant {
                scheme: Some("https".into()),
                host: GrantHost::Subdomains("example.com".into()),
                port: Some(8443)
            }
        );
        assert_eq!(
            "[::1]:80".parse::<HostGrant>().unwrap().host,
            GrantHost::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            "[0:0:0:0:0:0:0:1]"
                .parse::<HostGrant>()
                .unwrap()
                .to_string(),
            "[::1]"
        );
        for g in [
            "https://*.example.com:8443",
            "http://api.example.com",
            "10.1.2.3:22",
        ] {
            assert_eq!(g.parse::<HostGrant>().unwrap().to_string(), g);
        }
        for bad in [
            "",
            "::1",
            "[::1",
            "[nothost]:80",
            "x:notaport",
            "x:0",
            "x:65536",
            "ftp://x",
            "http://x/path",
            "https://",
            "user@x",
            "x?q",
            "*",
            "*.com",
            "*example.com",
            "a.*.example.com",
            "**.example.com",
            "*.*.example.com",
            "2130706433",
            "127.1",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "exa mple.com",
            "-bad.example.com",
            "a..b",
            "bücher.example",
        ] {
            assert!(
                bad.parse::<HostGrant>().is_err(),
                "{bad:?} should be refused"
            );
        }
        let e = "*.com".parse::<HostGrant>().unwrap_err().to_string();
        assert!(e.contains("*.com") && e.contains("two labels"), "{e}");
    }

    #[test]
    fn grant_matching() {
        let g = grants(&["127.0.0.1:8080", "api.example.com", "[::1]:9"]);
        let ok = |u: &str| is_granted(&g, &url(u));
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(!ok("http://127.0.0.1:8081/x"));
        assert!(ok("https://api.example.com/v1"));
        assert!(ok("http://API.EXAMPLE.COM:9999/"));
        assert!(ok("http://[0::1]:9/"));
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("https://api.example.com.evil.net/"));
        assert!(!ok("http://localhost:8080/"));
    }

    #[test]
    fn wildcard_and_scheme_grants() {
        let g = grants(&["*.example.com", "https://secure.example.org"]);
        let ok = |u: &str| is_granted(&g, &url(u));
        assert!(ok("https://a.example.com/"));
        assert!(ok("http://a.b.example.com:81/"));
        assert!(!ok("https://example.com/"), "the apex is not a subdomain");
        assert!(!ok("https://notexample.com/"));
        assert!(!ok("https://a.example.com.evil.net/"));
        assert!(ok("https://secure.example.org/"));
        assert!(!ok("http://secure.example.org/"), "scheme-limited grant");
    }

    #[test]
    fn ip_classifier() {
        let forbidden = [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "2001::1",
            "fec0::1",
        ];
        for ip in forbidden {
            assert!(
                forbidden_reason(ip.parse().unwrap()).is_some(),
                "{ip} should be forbidden"
            );
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
        ] {
            assert_eq!(forbidden_reason(ip.parse().unwrap()), None, "{ip}");
        }
        assert_eq!(
            forbidden_reason("169.254.169.254".parse().unwrap()),
            Some("cloud metadata (link-local)")
        );
        assert_eq!(
            forbidden_reason("::ffff:127.0.0.1".parse().unwrap()),
            Some("IPv6 embedding a forbidden IPv4 address")
        );
    }

    #[test]
    fn odd_spellings_are_invalid_requests() {
        for raw in [
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://127.0.1/",
            "http://127.0.0.1./",
            "http://%31%32%37.0.0.1/",
            "http://0/",
            "http://user@127.0.0.1/",
            "http://:80/",
            "http:///x",
            "http:/127.0.0.1/",
            "http:127.0.0.1/",
            "ftp://127.0.0.1/",
            "http://127.0.0.1 /",
            "http://exa\tmple.com/",
            "/relative",
        ] {
            assert!(parse_request_url(raw).is_err(), "{raw:?} should be refused");
        }
        for raw in [
            "http://127.0.0.1:8080/x?a=b",
            "https://api.example.com/v1",
            "HTTPS://API.example.com",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(parse_request_url(raw).is_ok(), "{raw:?}");
        }
        assert_eq!(
            parse_request_url("http://2130706433/").unwrap_err(),
            BadUrl::OddIpv4 {
                raw: "2130706433".into(),
                addr: Ipv4Addr::LOCALHOST
            }
        );
        assert_eq!(
            parse_request_url("http://u:p@api.example.com/").unwrap_err(),
            BadUrl::UserInfo
        );
        assert_eq!(
            parse_request_url("http://%61pi.example.com/").unwrap_err(),
            BadUrl::PercentEncodedHost
        );
    }

    #[test]
    fn literal_ips_need_an_exact_ip_grant() {
        let g = grants(&["127.0.0.1:8080", "localhost", "*.example.com", "8.8.8.8"]);
        assert!(egress_check(&g, &url("http://127.0.0.1:8080/")).is_ok());
        assert!(egress_check(&g, &url("http://8.8.8.8/")).is_ok());
        for denied in [
            "http://127.0.0.1:8081/",
            "http://[::ffff:127.0.0.1]:8080/",
            "http://[::1]:8080/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0:8080/",
            "http://8.8.4.4/",
        ] {
            assert!(egress_check(&g, &url(denied)).is_err(), "{denied}");
        }
        assert_eq!(
            egress_check(&g, &url("http://169.254.169.254/")).unwrap_err(),
            EgressDenied::ForbiddenAddress {
                host: "169.254.169.254".into(),
                why: "cloud metadata (link-local)"
            }
        );
        assert!(matches!(
            egress_check(&g, &url("http://127.0.0.1:8081/")).unwrap_err(),
            EgressDenied::NotGranted { port: 8081, .. }
        ));
        assert!(matches!(
            egress_check(&g, &url("https://example.com/")).unwrap_err(),
            EgressDenied::NotGranted { .. }
        ));
    }
}
