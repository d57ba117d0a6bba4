//! Account policies: the lifetime, expiry, quota, unused-token and network
//! rules an account's admin sets for its tokens, and the pure checks that
//! Issue, Duplicate, Rotate and Update apply. A request that breaks a rule is
//! refused, naming the rule; it is never silently adjusted (an expiry is
//! never shortened to fit). Tightening a policy changes no existing token.

use std::{fmt, net::IpAddr, time::Duration};

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use super::FieldViolation;

/// Most CIDR ranges in a policy's defaults (and on one token).
pub const MAX_CIDRS: usize = 32;
/// Most expiry-notice horizons in a policy.
pub const MAX_NOTICES: usize = 8;

/// An IPv4 or IPv6 range (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a
/// single-address range, `/32` or `/128`), over `ipnet`'s `IpNet`. Always in
/// normal form: an IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) is held as
/// its IPv4 range, and `Display` writes the canonical text with the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Parses one range; host bits must be zero, so `10.1.2.3/8` (most likely
    /// a typo) is refused rather than widened or narrowed.
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldViolation> {
        let bad =
            |why: &str| FieldViolation::new(field, format!("{s:?} is not a CIDR range: {why}"));
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("expected an IPv4 or IPv6 address"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only: `u8::from_str` would take a `+`.
            Some(p) => Some(p)
                .filter(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be 0..={max}")))?,
        };
        let net = IpNet::new(addr, prefix)
            .map_err(|_| bad(&format!("the prefix length must be 0..={max}")))?;
        if net.trunc() != net {
            return Err(bad(&format!(
                "host bits are set (the range is {})",
                net.trunc()
            )));
        }
        Ok(Self(normal(net)))
    }

    /// Parses a list, naming each bad entry by its index (`field[i]`); at
    /// most `MAX_CIDRS`; duplicates (after normalising) are dropped, the
    /// first kept in place.
    pub fn parse_list(field: &str, items: &[String]) -> Result<Vec<Self>, FieldViolation> {
        if items.len() > MAX_CIDRS {
            return Err(FieldViolation::new(
                field,
                format!("must have at most {MAX_CIDRS} ranges"),
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, s) in items.iter().enumerate() {
            let c = Self::parse(&format!("{field}[{i}]"), s)?;
            if !out.contains(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Whether `ip` is in this range. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`, as a dual-stack socket reports IPv4 peers) counts
    /// as its IPv4 address. Runs on every Validate of a bound token.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical_ip(ip))
    }

    /// Whether any of `ranges` contains `ip`.
    pub fn any_contains(ranges: &[Self], ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        ranges.iter().any(|c| c.0.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 address; others unchanged.
#[inline]
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IPv4-mapped IPv6 range of at least /96 as its IPv4 range.
fn normal(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A client address as a caller sends it (`ValidateRequest.client_ip`):
/// empty means none; anything else must be an IPv4 or IPv6 address (no
/// port, no brackets, no zone).
pub fn client_ip(field: &str, s: &str) -> Result<Option<IpAddr>, FieldViolation> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        FieldViolation::new(
            field,
            "must be an IPv4 or IPv6 address (no port, brackets or zone), or empty",
        )
    })
}

/// An account's rules for its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountPolicy {
    /// Longest a token may stay valid, counted from the request that sets its
    /// expiry (Issue, Update, Duplicate, Rotate); `None`: no cap.
    pub max_lifetime: Option<Duration>,
    /// Every token must have an expiry.
    pub require_expiry: bool,
    /// Live tokens per owner; `None`: the server's default.
    pub max_tokens_per_owner: Option<u32>,
    /// Tokens unused this long are disabled by the sweeper; `None`: never.
    pub disable_unused_after: Option<Duration>,
    /// Ranges a new token is bound to when its request names none.
    pub default_allowed_cidrs: Vec<Cidr>,
    /// Horizons before expiry at which a notice event is recorded, longest first.
    pub expiry_notice_before: Vec<Duration>,
}

/// An account's own policy as stored, with who changed it last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub account_id: String,
    pub policy: AccountPolicy,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// One settable field of a policy, as named in an update mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyField {
    MaxLifetime,
    RequireExpiry,
    MaxTokensPerOwner,
    DisableUnusedAfter,
    DefaultAllowedCidrs,
    ExpiryNoticeBefore,
}

impl PolicyField {
    pub const ALL: [Self; 6] = [
        Self::MaxLifetime,
        Self::RequireExpiry,
        Self::MaxTokensPerOwner,
        Self::DisableUnusedAfter,
        Self::DefaultAllowedCidrs,
        Self::ExpiryNoticeBefore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxLifetime => "max_lifetime",
            Self::RequireExpiry => "require_expiry",
            Self::MaxTokensPerOwner => "max_tokens_per_owner",
            Self::DisableUnusedAfter => "disable_unused_after",
            Self::DefaultAllowedCidrs => "default_allowed_cidrs",
            Self::ExpiryNoticeBefore => "expiry_notice_before",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// A request that breaks a policy rule: the rule's name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    pub rule: PolicyField,
    pub message: String,
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the account policy's {} rule: {}",
            self.rule.as_str(),
            self.message
        )
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl AccountPolicy {
    /// The per-owner limit on live tokens, given the server's default.
    pub fn per_owner_limit(&self, server_default: u32) -> u32 {
        self.max_tokens_per_owner.unwrap_or(server_default)
    }

    /// The expiries that break this policy at `now`: a missing one (when
    /// the first is true) and any later than the second. The same judgement
    /// as `check_expiry`, as a filter.
    pub fn breaking_expiries(&self, now: DateTime<Utc>) -> (bool, Option<DateTime<Utc>>) {
        let missing = self.require_expiry || self.max_lifetime.is_some();
        let later_than = self
            .max_lifetime
            .and_then(|m| chrono::Duration::from_std(m).ok())
            .and_then(|m| now.checked_add_signed(m));
        (missing, later_than)
    }

    /// Checks an expiry a request asks for (or keeps) at `now`. A missing one
    /// breaks `require_expiry` and, when a lifetime cap is set, `max_lifetime`
    /// too (an unexpiring token outlives every cap).
    pub fn check_expiry(
        &self,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), Breach> {
        match expires_at {
            None if self.require_expiry => Err(Breach {
                rule: PolicyField::RequireExpiry,
                message: "every token of this account must have an expiry".into(),
            }),
            None => match self.max_lifetime {
                Some(max) => Err(Breach {
                    rule: PolicyField::MaxLifetime,
                    message: format!(
                        "tokens of this account live at most {}, so an expiry is required",
                        human(max)
                    ),
                }),
                None => Ok(()),
            },
            Some(at) => match self.max_lifetime {
                Some(max) => {
                    let latest = chrono::Duration::from_std(max)
                        .ok()
                        .and_then(|m| now.checked_add_signed(m));
                    match latest {
                        Some(latest) if at > latest => Err(Breach {
                            rule: PolicyField::MaxLifetime,
                            message: format!(
                                "tokens of this account live at most {}: the expiry must be at or before {}",
                                human(max),
                                latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            ),
                        }),
                        _ => Ok(()),
                    }
                }
                None => Ok(()),
            },
        }
    }
}

/// Parses a policy duration: positive, whole seconds, at most 100 years
/// (`None` in, `None` out: unset means "no rule").
pub fn duration(field: &str, d: Option<Duration>) -> Result<Option<Duration>, FieldViolation> {
    const MAX: Duration = Duration::from_secs(100 * 366 * 24 * 3600);
    match d {
        None => Ok(None),
        Some(d) if d.is_zero() => Err(FieldViolation::new(
            field,
            "must be positive (leave it unset for no limit)",
        )),
        Some(d) if d.subsec_nanos() != 0 => {
            Err(FieldViolation::new(field, "must be whole seconds"))
        }
        Some(d) if d > MAX => Err(FieldViolation::new(field, "must be at most 100 years")),
        Some(d) => Ok(Some(d)),
    }
}

/// Parses notice horizons: each a positive whole number of seconds; sorted
/// longest first, duplicates dropped.
pub fn notices(field: &str, items: &[Duration]) -> Result<Vec<Duration>, FieldViolation> {
    if items.len() > MAX_NOTICES {
        return Err(FieldViolation::new(
            field,
            format!("must have at most {MAX_NOTICES} horizons"),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, d) in items.iter().enumerate() {
        if let Some(d) = duration(&format!("{field}[{i}]"), Some(*d))? {
            out.push(d);
        }
    }
    out.sort_unstable_by(|a, b| b.cmp(a));
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse("c", s).unwrap()
    }

    #[test]
    fn cidrs_parse_contain_and_refuse_typos() {
        assert!(cidr("10.0.0.0/8").contains("10.200.1.1".parse().unwrap()));
        assert!(!cidr("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(cidr("10.0.0.0/8").contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(cidr("2001:db8::/32").contains("2001:db8:1::5".parse().unwrap()));
        assert!(!cidr("2001:db8::/32").contains("10.0.0.1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(cidr("192.168.1.7").contains("192.168.1.7".parse().unwrap()));
        assert!(!cidr("192.168.1.7").contains("192.168.1.8".parse().unwrap()));
        for bad in [
            "",
            "10.1.2.3/8",
            "10.0.0.0/33",
            "::/129",
            "host/8",
            "10.0.0.0/x",
        ] {
            let e = Cidr::parse("default_allowed_cidrs[0]", bad).unwrap_err();
            assert_eq!(e.field, "default_allowed_cidrs[0]", "{bad}");
        }
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
    }

    #[test]
    fn cidrs_are_normalised_and_deduplicated() {
        assert_eq!(cidr("192.168.1.7").to_string(), "192.168.1.7/32");
        assert_eq!(cidr("2001:DB8::1").to_string(), "2001:db8::1/128");
        assert_eq!(cidr("2001:0db8:0000::/48").to_string(), "2001:db8::/48");
        // An IPv4-mapped range is its IPv4 range.
        assert_eq!(cidr("::ffff:10.0.0.0/104"), cidr("10.0.0.0/8"));
        assert!(cidr("::ffff:10.0.0.0/104").contains("10.9.9.9".parse().unwrap()));
        let list: Vec<String> = ["10.0.0.1", "10.0.0.1/32", "::1", "::0:1/128", "10.0.0.0/8"]
            .map(String::from)
            .to_vec();
        let parsed = Cidr::parse_list("allowed_cidrs", &list).unwrap();
        assert_eq!(
            parsed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.1/32", "::1/128", "10.0.0.0/8"]
        );
        assert!(Cidr::any_contains(
            &parsed,
            "::ffff:10.200.0.1".parse().unwrap()
        ));
        assert!(!Cidr::any_contains(&parsed, "::2".parse().unwrap()));
    }

    #[test]
    fn bad_cidr_lists_name_the_entry() {
        let list: Vec<String> = ["10.0.0.0/8", "::/0", "10.0.0.300"]
            .map(String::from)
            .to_vec();
        let e = Cidr::parse_list("allowed_cidrs", &list).unwrap_err();
        assert_eq!(e.field, "allowed_cidrs[2]");
        assert!(e.description.contains("10.0.0.300"), "{}", e.description);
        for bad in [
            "10.0.0.0/+8",
            "10.0.0.0/",
            "10.0.0.0/0008",
            " 10.0.0.1",
            "[::1]",
            "fe80::1%eth0",
        ] {
            assert!(Cidr::parse("c", bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_CIDRS).map(|i| format!("10.0.0.{i}")).collect();
        assert_eq!(
            Cidr::parse_list("allowed_cidrs", &many).unwrap_err().field,
            "allowed_cidrs"
        );
    }

    #[test]
    fn client_addresses_parse_strictly() {
        assert_eq!(client_ip("client_ip", "").unwrap(), None);
        assert_eq!(
            client_ip("client_ip", "2001:db8::7").unwrap(),
            Some("2001:db8::7".parse().unwrap())
        );
        for bad in ["10.0.0.1:80", "[::1]", "localhost", " 10.0.0.1", "10.0.0"] {
            assert_eq!(
                client_ip("client_ip", bad).unwrap_err().field,
                "client_ip",
                "{bad}"
            );
        }
    }

    #[test]
    fn expiry_rules_name_the_rule_and_never_shorten() {
        let now = Utc::now();
        let day = Duration::from_secs(86_400);
        let p = AccountPolicy {
            max_lifetime: Some(30 * day),
            ..Default::default()
        };
        assert!(
            p.check_expiry(Some(now + chrono::Duration::days(30)), now)
                .is_ok()
        );
        let e = p
            .check_expiry(Some(now + chrono::Duration::days(31)), now)
            .unwrap_err();
        assert_eq!(e.rule, PolicyField::MaxLifetime);
        assert_eq!(
            p.check_expiry(None, now).unwrap_err().rule,
            PolicyField::MaxLifetime
        );
        let r = AccountPolicy {
            require_expiry: true,
            ..Default::default()
        };
        assert_eq!(
            r.check_expiry(None, now).unwrap_err().rule,
            PolicyField::RequireExpiry
        );
        assert!(
            r.check_expiry(Some(now + chrono::Duration::days(900)), now)
                .is_ok()
        );
        assert!(AccountPolicy::default().check_expiry(None, now).is_ok());
    }

    #[test]
    fn durations_and_notices_are_checked() {
        assert_eq!(duration("d", None).unwrap(), None);
        assert!(duration("d", Some(Duration::ZERO)).is_err());
        assert!(duration("d", Some(Duration::from_millis(1500))).is_err());
        let n = notices(
            "n",
            &[
                Duration::from_secs(60),
                Duration::from_secs(3600),
                Duration::from_secs(60),
            ],
        )
        .unwrap();
        assert_eq!(n, vec![Duration::from_secs(3600), Duration::from_secs(60)]);
        assert_eq!(notices("n", &[Duration::ZERO]).unwrap_err().field, "n[0]");
    }

    #[test]
    fn fields_round_trip() {
        for f in PolicyField::ALL {
            assert_eq!(PolicyField::parse(f.as_str()), Some(f));
        }
    }
}
