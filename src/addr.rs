//! `HOST:PORT` parsing: every form SPEC.md accepts, with clear error text.
//!
//! The lecture's Python split addresses on `:`, which breaks IPv6. Here the
//! parser knows the three shapes — `v4addr:PORT`, `[v6addr]:PORT` and
//! `hostname:PORT` — and checks the port range. [`parse`] does no I/O;
//! [`resolve`] is the one function that asks the system resolver.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::error::{Error, Result};

/// A parsed but not yet resolved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A literal IP address and port.
    Ip(SocketAddr),
    /// A host name to resolve, and a port.
    Host(String, u16),
}

/// Parses `HOST:PORT`, `[v6addr]:PORT` or `v4addr:PORT`. Port 0 is refused
/// (a client cannot connect to it).
pub fn parse(input: &str) -> Result<Endpoint> {
    let bad = |why: &str| Error::BadAddr {
        input: input.to_string(),
        why: why.to_string(),
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(bad("empty address, expected HOST:PORT"));
    }
    let (host, port_text) = if let Some(rest) = text.strip_prefix('[') {
        let close = rest
            .find(']')
            .ok_or_else(|| bad("missing ']' after an IPv6 address"))?;
        let host = &rest[..close];
        let after = &rest[close + 1..];
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("expected ':PORT' after ']'"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address inside [ ]"));
        }
        (host, port)
    } else {
        let colon = text
            .rfind(':')
            .ok_or_else(|| bad("missing ':PORT', expected HOST:PORT"))?;
        let host = &text[..colon];
        if host.contains(':') {
            return Err(bad("an IPv6 address needs brackets, as in [::1]:PORT"));
        }
        (host, &text[colon + 1..])
    };
    if host.is_empty() {
        return Err(bad("missing host before ':'"));
    }
    let port = parse_port(port_text).map_err(|why| bad(&why))?;
    if port == 0 {
        return Err(bad("port 0 cannot be connected to; use 1-65535"));
    }
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => Endpoint::Ip(SocketAddr::new(ip, port)),
        Err(_) => {
            let valid = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
            if !valid {
                return Err(bad("not an IP address or host name"));
            }
            Endpoint::Host(host.to_string(), port)
        }
    })
}

/// Parses a port number and checks its range, with a message that says which.
pub fn parse_port(text: &str) -> std::result::Result<u16, String> {
    if text.is_empty() {
        return Err("missing port number".to_string());
    }
    if !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("port '{text}' is not a number"));
    }
    match text.parse::<u32>() {
        Ok(port) if port <= 65535 => Ok(port as u16),
        _ => Err(format!("port {text} is out of range 0-65535")),
    }
}

/// Parses and resolves an address to the first socket address the resolver gives.
/// A literal IP address is returned without a lookup.
pub fn resolve(input: &str) -> Result<SocketAddr> {
    Ok(resolve_all(input)?[0])
}

/// Parses and resolves an address to every socket address the resolver gives
/// (never empty), so a client can try them in turn: `localhost` may name
/// `::1` first while the server listens on `127.0.0.1` only.
pub fn resolve_all(input: &str) -> Result<Vec<SocketAddr>> {
    match parse(input)? {
        Endpoint::Ip(addr) => Ok(vec![addr]),
        Endpoint::Host(host, port) => {
            let found: Vec<SocketAddr> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|source| Error::Resolve {
                    input: input.to_string(),
                    source,
                })?
                .collect();
            if found.is_empty() {
                return Err(Error::Resolve {
                    input: input.to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses found"),
                });
            }
            Ok(found)
        }
    }
}

/// The address a server binds: `--bind IP` and `--port P` together.
pub fn bind_addr(bind: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(bind, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> Endpoint {
        parse(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    fn why(input: &str) -> String {
        parse(input).unwrap_err().to_string()
    }

    #[test]
    fn accepts_every_form_in_the_spec() {
        assert_eq!(
            ok("127.0.0.1:8080"),
            Endpoint::Ip("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(ok("[::1]:9"), Endpoint::Ip("[::1]:9".parse().unwrap()));
        assert_eq!(
            ok("localhost:8080"),
            Endpoint::Host("localhost".into(), 8080)
        );
        assert_eq!(
            ok(" example.org:65535 "),
            Endpoint::Host("example.org".into(), 65535)
        );
    }

    #[test]
    fn explains_what_is_wrong() {
        assert!(why("127.0.0.1").contains("missing ':PORT'"));
        assert!(why("::1:80").contains("needs brackets"));
        assert!(why("[::1]80").contains("expected ':PORT'"));
        assert!(why("[zz]:80").contains("not an IPv6"));
        assert!(why("host:99999").contains("out of range"));
        assert!(why("host:http").contains("not a number"));
        assert!(why("host:0").contains("port 0"));
        assert!(why(":80").contains("missing host"));
        assert!(why("").contains("empty"));
        assert!(why("a b:80").contains("not an IP address or host name"));
    }

    #[test]
    fn resolves_localhost_and_literals() {
        assert_eq!(resolve("127.0.0.1:7").unwrap().port(), 7);
        let local = resolve("localhost:7").unwrap();
        assert!(local.ip().is_loopback());
    }
}
