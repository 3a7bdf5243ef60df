//! What a NATS server says about itself (`INFO`), and where servers are
//! (`nats://` addresses). No I/O: a host name is parsed, never looked up.

use std::fmt;
use std::net::SocketAddr;

use super::{DEFAULT_MAX_PAYLOAD, DEFAULT_PORT};
use crate::addr::{self, Endpoint};

/// The parts of a server's `INFO` a client acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerInfo {
    /// The server's name (its id when it has none).
    pub server_name: String,
    /// Its version.
    pub version: String,
    /// The largest message it accepts, headers included.
    pub max_payload: usize,
    /// It understands `HPUB`/`HMSG`.
    pub headers: bool,
    /// It wants TLS before anything else.
    pub tls_required: bool,
    /// It wants credentials in `CONNECT`.
    pub auth_required: bool,
    /// Other servers of its cluster that take clients, `HOST:PORT` each.
    pub connect_urls: Vec<String>,
    /// It is about to shut down ("lame duck mode"): move elsewhere.
    pub lame_duck: bool,
}

impl ServerInfo {
    /// Reads the JSON of an `INFO` line. A missing field takes its protocol default.
    pub fn parse(json: &str) -> Result<ServerInfo, String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("INFO is not JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or_else(|| "INFO is not a JSON object".to_string())?;
        let text = |key: &str| {
            object
                .get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let flag = |key: &str| {
            object
                .get(key)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        let mut server_name = text("server_name");
        if server_name.is_empty() {
            server_name = text("server_id");
        }
        let max_payload = object
            .get("max_payload")
            .and_then(serde_json::Value::as_u64)
            .map_or(DEFAULT_MAX_PAYLOAD, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            });
        let connect_urls = object
            .get("connect_urls")
            .and_then(serde_json::Value::as_array)
            .map(|urls| {
                urls.iter()
                    .filter_map(serde_json::Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ServerInfo {
            server_name,
            version: text("version"),
            max_payload,
            headers: flag("headers"),
            tls_required: flag("tls_required"),
            auth_required: flag("auth_required"),
            connect_urls,
            lame_duck: flag("ldm"),
        })
    }
}

/// A server address, `nats://[USER:PASS@|TOKEN@]HOST[:PORT]`, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Where it is (an IP address, or a name still to resolve).
    pub endpoint: Endpoint,
    /// User and password from the address, if it has both.
    pub user: Option<(String, String)>,
    /// A token from the address (`nats://TOKEN@HOST`), if it has one.
    pub token: Option<String>,
}

impl fmt::Debug for ServerUrl {
    /// Never shows credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ServerUrl {
    /// `nats://HOST:PORT`, credentials left out (it goes into logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Ip(addr) => write!(f, "nats://{addr}"),
            Endpoint::Host(host, port) => write!(f, "nats://{host}:{port}"),
        }
    }
}

impl ServerUrl {
    /// Parses `nats://HOST:PORT` (the scheme and the port may be left out;
    /// an `INFO`'s `connect_urls` name servers as bare `HOST:PORT`).
    /// `USER:PASS@` or `TOKEN@` before the host are credentials. Does no I/O.
    pub fn parse(text: &str) -> Result<ServerUrl, String> {
        let text = text.trim();
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("nats") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "'{scheme}://' is not supported: use nats://HOST:PORT (plain TCP)"
                ))
            }
            None => text,
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (user, token) = match userinfo {
            None => (None, None),
            Some("") => return Err("empty credentials before '@'".into()),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (Some((user.to_string(), pass.to_string())), None),
                None => (None, Some(info.to_string())),
            },
        };
        let has_port = if let Some(v6) = hostport.strip_prefix('[') {
            v6.contains("]:")
        } else {
            hostport.contains(':')
        };
        let with_port = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:{DEFAULT_PORT}")
        };
        let endpoint = addr::parse(&with_port).map_err(|e| e.to_string())?;
        Ok(ServerUrl {
            endpoint,
            user,
            token,
        })
    }

    /// The address, when the URL names an IP address (no lookup needed).
    pub fn ip(&self) -> Option<SocketAddr> {
        match self.endpoint {
            Endpoint::Ip(addr) => Some(addr),
            Endpoint::Host(..) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_gives_what_a_client_acts_on() {
        let info = ServerInfo::parse(
            r#"{"server_id":"ID","version":"2.9.10","headers":true,"max_payload":4096,
               "connect_urls":["127.0.0.1:4222","127.0.0.1:4223"],"ldm":true}"#,
        )
        .unwrap();
        assert_eq!(info.server_name, "ID");
        assert_eq!(info.max_payload, 4096);
        assert!(info.headers && info.lame_duck && !info.tls_required);
        assert_eq!(info.connect_urls.len(), 2);
        assert_eq!(
            ServerInfo::parse("{}").unwrap().max_payload,
            DEFAULT_MAX_PAYLOAD
        );
        assert!(ServerInfo::parse("[1]").is_err());
        assert!(ServerInfo::parse("{").is_err());
    }

    #[test]
    fn urls_take_credentials_and_a_default_port() {
        let url = ServerUrl::parse("nats://ann:secret@127.0.0.1:4333").unwrap();
        assert_eq!(url.ip(), Some("127.0.0.1:4333".parse().unwrap()));
        assert_eq!(url.user, Some(("ann".into(), "secret".into())));
        assert_eq!(url.to_string(), "nats://127.0.0.1:4333");
        assert_eq!(format!("{url:?}"), "nats://127.0.0.1:4333");
        let url = ServerUrl::parse("nats://tok@[::1]").unwrap();
        assert_eq!(url.ip(), Some("[::1]:4222".parse().unwrap()));
        assert_eq!(url.token.as_deref(), Some("tok"));
        let url = ServerUrl::parse("localhost").unwrap();
        assert_eq!(url.endpoint, Endpoint::Host("localhost".into(), 4222));
        assert_eq!(
            ServerUrl::parse("10.0.0.5:4222").unwrap().ip(),
            Some("10.0.0.5:4222".parse().unwrap())
        );
        assert!(ServerUrl::parse("tls://127.0.0.1:4222").is_err());
        assert!(ServerUrl::parse("nats://@127.0.0.1").is_err());
        assert!(ServerUrl::parse("nats://127.0.0.1:99999").is_err());
    }
}
