//! Who may connect: `--allow CIDR` / `--deny CIDR` lists, checked at accept.
//!
//! A deny match always refuses; when any allow entry exists, an address must
//! match one of them. No I/O here.
//!
//! IPv4 and IPv6 blocks live in one space: an IPv4 address is compared as
//! the IPv4-mapped IPv6 address it is to a dual-stack listener
//! (`::ffff:a.b.c.d`). So `127.0.0.0/8` and `::ffff:127.0.0.0/104` are the
//! same block, whichever kind of socket saw the client, and a block wider
//! than the mapped range (`::/0`) takes in IPv4 clients too.

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
    /// True when `ip` lies in the block. An IPv4 address and its IPv4-mapped
    /// IPv6 form (`::ffff:a.b.c.d`, what a dual-stack listener sees for an
    /// IPv4 client) are the same address here, whichever form the block or
    /// the client is written in.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (network, prefix) = as_v6(self.network, self.prefix);
        let (ip, _) = as_v6(ip, 0);
        let mask = mask_u128(prefix);
        network & mask == ip & mask
    }
}

/// An address (and a prefix length over it) in the one IPv6 space: an IPv4
/// address is its IPv4-mapped form, 96 bits further in.
fn as_v6(ip: IpAddr, prefix: u8) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), prefix + 96),
        IpAddr::V6(v6) => (u128::from(v6), prefix),
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
    fn an_ipv4_mapped_block_is_the_ipv4_block_it_carries() {
        let mapped = cidr("::ffff:127.0.0.0/104");
        assert!(mapped.contains("127.0.0.1".parse().unwrap()));
        assert!(mapped.contains("::ffff:127.9.9.9".parse().unwrap()));
        assert!(!mapped.contains("10.0.0.1".parse().unwrap()));
        assert!(!mapped.contains("::1".parse().unwrap()));
        assert!(cidr("127.0.0.0/8").contains("::ffff:127.0.0.1".parse().unwrap()));
        // Blocks wider than the mapped range hold IPv4 clients as well; a
        // block beside it holds none.
        assert!(cidr("::/0").contains("192.0.2.1".parse().unwrap()));
        assert!(cidr("::ffff:0:0/96").contains("192.0.2.1".parse().unwrap()));
        assert!(!cidr("2001:db8::/32").contains("192.0.2.1".parse().unwrap()));
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
