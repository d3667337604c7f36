//! The egress decision: a pure function of the allow/deny lists, the host,
//! the port and (after resolution) the address. Every deny says why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// One `allow`/`deny` entry: `name`, `*.suffix` or a literal IP, optional `:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPattern {
    /// Lowercase name or suffix (without `*.`), or the IP's text.
    host: String,
    /// `*.suffix`: matches names under the suffix, not the suffix itself.
    wildcard: bool,
    /// `None`: ports 80 and 443.
    port: Option<u16>,
    /// The entry as written.
    text: String,
}

impl HostPattern {
    /// Parses an entry already validated by the profile room.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim().to_ascii_lowercase();
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (ip, after) = rest.split_once(']')?;
            (
                ip.to_owned(),
                after.strip_prefix(':').map(str::parse).transpose().ok()?,
            )
        } else {
            match t.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_owned(), Some(p.parse().ok()?)),
                _ => (t.clone(), None),
            }
        };
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(s) => (s.to_owned(), true),
            None => (host, false),
        };
        (!host.is_empty()).then_some(Self {
            host,
            wildcard,
            port,
            text: text.trim().to_owned(),
        })
    }

    /// Whether this entry covers `host:port` (name and port, no address check).
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.matches_name(host) && self.matches_port(port)
    }

    fn matches_port(&self, port: u16) -> bool {
        self.port.map_or(port == 80 || port == 443, |p| p == port)
    }

    fn matches_name(&self, host: &str) -> bool {
        if self.wildcard {
            host.strip_suffix(&self.host)
                .is_some_and(|rest| rest.ends_with('.'))
        } else {
            host == self.host
        }
    }

    /// Whether this entry is `localhost` or a literal loopback address.
    pub fn is_loopback_literal(&self) -> bool {
        !self.wildcard
            && (self.host == "localhost"
                || self
                    .host
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| canonical(ip).is_loopback()))
    }

    /// Whether this entry names `ip` literally (or is `localhost` and `ip` is loopback).
    fn names_ip(&self, ip: IpAddr, port: u16) -> bool {
        if !self.matches_port(port) || self.wildcard {
            return false;
        }
        if self.host == "localhost" {
            return ip.is_loopback();
        }
        self.host
            .parse::<IpAddr>()
            .is_ok_and(|p| canonical(p) == canonical(ip))
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason", content = "detail")]
pub enum DenyReason {
    /// A `deny` entry matched.
    DenyListed(String),
    /// No `allow` entry matches host and port.
    NotAllowed,
    /// The name resolved to a loopback, private, link-local or metadata
    /// address that no literal `allow` entry names.
    PrivateAddress(String),
    /// A credential placeholder was sent where its grant does not allow, or
    /// after its lease ended.
    Credential(String),
    /// The request asked for something the proxy does not do (a SOCKS5
    /// BIND or UDP ASSOCIATE, say).
    Unsupported(String),
}

/// The verdict on one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    /// Go ahead; `rule` is the `allow` entry that matched.
    Allow {
        /// The entry.
        rule: String,
    },
    /// Refused.
    Deny {
        /// The entry that refused, if one did.
        rule: Option<String>,
        /// Why.
        reason: DenyReason,
    },
}

/// The task's egress policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<HostPattern>,
    deny: Vec<HostPattern>,
}

impl Policy {
    /// From the profile's `allow` and `deny` entries.
    pub fn new(allow: &[String], deny: &[String]) -> Self {
        Self {
            allow: allow.iter().filter_map(|a| HostPattern::parse(a)).collect(),
            deny: deny.iter().filter_map(|d| HostPattern::parse(d)).collect(),
        }
    }

    /// Decides on a host name (or literal IP) and port, before resolution.
    pub fn decide(&self, host: &str, port: u16) -> Decision {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Some(d) = self
            .deny
            .iter()
            .find(|d| d.matches_name(host) && (d.port.is_none() || d.port == Some(port)))
        {
            return Decision::Deny {
                rule: Some(d.text.clone()),
                reason: DenyReason::DenyListed(d.text.clone()),
            };
        }
        match self
            .allow
            .iter()
            .find(|a| a.matches_name(host) && a.matches_port(port))
        {
            Some(a) => Decision::Allow {
                rule: a.text.clone(),
            },
            None => Decision::Deny {
                rule: None,
                reason: DenyReason::NotAllowed,
            },
        }
    }

    /// Checks a resolved address: special-purpose addresses need a literal entry.
    pub fn check_addr(&self, ip: IpAddr, port: u16) -> Result<(), Decision> {
        match special(ip) {
            None => Ok(()),
            Some(kind) if self.allow.iter().any(|a| a.names_ip(ip, port)) => {
                let _ = kind;
                Ok(())
            }
            Some(kind) => Err(Decision::Deny {
                rule: None,
                reason: DenyReason::PrivateAddress(format!("{ip} is {kind}")),
            }),
        }
    }
}

/// IPv4-mapped and NAT64-embedded IPv6 addresses, as the IPv4 they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// What kind of special-purpose address `ip` is, if any.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if o[0] == 169 && o[1] == 254 {
                Some("link-local (cloud metadata lives here)")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("carrier-grade NAT")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("multicast or reserved")
            } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
                Some("IETF protocol assignments")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6 == Ipv6Addr::LOCALHOST {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("unique-local (includes fd00:ec2::254 metadata)")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] & 0xff00 == 0xff00 {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(allow: &[&str], deny: &[&str]) -> Policy {
        let v = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Policy::new(&v(allow), &v(deny))
    }

    fn allowed(d: &Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    #[test]
    fn exact_names_default_to_80_and_443() {
        let pol = p(&["crates.io"], &[]);
        assert!(allowed(&pol.decide("crates.io", 443)));
        assert!(allowed(&pol.decide("CRATES.IO.", 80)));
        assert!(!allowed(&pol.decide("crates.io", 22)));
        assert!(!allowed(&pol.decide("static.crates.io", 443)));
        assert!(!allowed(&pol.decide("evilcrates.io", 443)));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let pol = p(&["*.crates.io:443"], &[]);
        assert!(allowed(&pol.decide("static.crates.io", 443)));
        assert!(allowed(&pol.decide("a.b.crates.io", 443)));
        assert!(!allowed(&pol.decide("crates.io", 443)));
        assert!(!allowed(&pol.decide("static.crates.io", 80)));
        assert!(!allowed(&pol.decide("xcrates.io", 443)));
    }

    #[test]
    fn deny_beats_allow_and_names_the_rule() {
        let pol = p(&["*.github.com", "github.com"], &["gist.github.com"]);
        assert!(allowed(&pol.decide("api.github.com", 443)));
        assert_eq!(
            pol.decide("gist.github.com", 443),
            Decision::Deny {
                rule: Some("gist.github.com".into()),
                reason: DenyReason::DenyListed("gist.github.com".into())
            }
        );
        assert_eq!(
            pol.decide("example.com", 443),
            Decision::Deny {
                rule: None,
                reason: DenyReason::NotAllowed
            }
        );
    }

    #[test]
    fn special_addresses_need_a_literal_entry() {
        let pol = p(&["example.test"], &[]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(pol.check_addr(ip, 443).is_err(), "{ip} passed");
        }
        assert!(
            pol.check_addr("93.184.216.34".parse().unwrap(), 443)
                .is_ok()
        );
        assert!(
            pol.check_addr("2606:2800:220:1::1".parse().unwrap(), 443)
                .is_ok()
        );
    }

    #[test]
    fn literal_ip_and_localhost_entries_open_exactly_themselves() {
        let pol = p(&["127.0.0.1:8080", "localhost:9000", "[::1]:7000"], &[]);
        assert!(pol.check_addr("127.0.0.1".parse().unwrap(), 8080).is_ok());
        assert!(
            pol.check_addr("::ffff:127.0.0.1".parse().unwrap(), 8080)
                .is_ok()
        );
        assert!(pol.check_addr("127.0.0.1".parse().unwrap(), 8081).is_err());
        assert!(pol.check_addr("127.0.0.2".parse().unwrap(), 9000).is_ok());
        assert!(pol.check_addr("::1".parse().unwrap(), 7000).is_ok());
        assert!(pol.check_addr("10.0.0.1".parse().unwrap(), 8080).is_err());
        assert!(allowed(&pol.decide("127.0.0.1", 8080)));
        assert!(allowed(&pol.decide("[::1]", 7000)));
    }
}
