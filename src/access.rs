//! Who may connect: `--allow CIDR` / `--deny CIDR` lists, checked at accept.
//!
//! A deny match always refuses; when any allow entry exists, an address must
//! match one of them. No I/O here.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block such as `127.0.0.0/8` or `::1/128`. A bare address is a
/// block of one (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` lies in the block. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, what an IPv6 listener sees for IPv4 clients) is
    /// compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_u32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_u128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask_u128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            format!("'{addr}' is not an IP address (expected e.g. 10.0.0.0/8 or ::1/128)")
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("prefix length '/{p}' must be 0-{max}")),
            },
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The allow and deny lists of a server.
#[derive(Debug, Clone, Default)]
pub struct AccessList {
    /// Blocks allowed; empty means everyone not denied.
    pub allow: Vec<Cidr>,
    /// Blocks always refused.
    pub deny: Vec<Cidr>,
}

impl AccessList {
    /// True when no rule is set (every address is permitted).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ip` may connect; `Err` names the rule that refused it.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if let Some(rule) = self.deny.iter().find(|c| c.contains(ip)) {
            return Err(format!("denied by --deny {rule}"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)) {
            return Err("not in any --allow block".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_match_their_addresses() {
        assert!(cidr("127.0.0.0/8").contains("127.1.2.3".parse().unwrap()));
        assert!(!cidr("127.0.0.2/32").contains("127.0.0.1".parse().unwrap()));
        assert!(cidr("127.0.0.2").contains("127.0.0.2".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(cidr("::1/128").contains("::1".parse().unwrap()));
        assert!(cidr("10.0.0.0/8").contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!cidr("::1/128").contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_blocks_are_explained() {
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().contains("0-32"));
        assert!("banana/8"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("not an IP"));
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let list = AccessList {
            allow: vec![cidr("127.0.0.0/8")],
            deny: vec![cidr("127.0.0.2/32")],
        };
        assert!(list.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(list
            .check("127.0.0.2".parse().unwrap())
            .unwrap_err()
            .contains("--deny"));
        assert!(list
            .check("10.0.0.1".parse().unwrap())
            .unwrap_err()
            .contains("--allow"));
        assert!(AccessList::default()
            .check("10.0.0.1".parse().unwrap())
            .is_ok());
    }
}
