//! The access-control options every TCP server shares: `--allow`, `--deny`,
//! `--max-conns-per-ip` (checked by the reactor at accept) and `--rate-limit`
//! (enforced by the reactor's read path).

use clap::Args as ClapArgs;

use crate::access::{AccessList, Cidr};
use crate::ratelimit::RateLimit;
use crate::reactor::Config;

/// Who may connect, and how often from one address.
#[derive(Debug, Clone, Default, ClapArgs)]
pub struct AccessArgs {
    /// Accept clients only from this block (CIDR such as 127.0.0.0/8 or ::1/128).
    /// Repeatable; default: everyone not denied.
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// Refuse clients from this block (repeatable). A deny always wins over an allow.
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<Cidr>,
    /// Most connections at once from one IP address (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_conns_per_ip: u32,
    /// Per-client limit, MSGS/s[,BYTES/s] (e.g. 100/s,65536/s): a client over it is
    /// slowed (reads paused until it is within its rate), never disconnected.
    /// Echo counts each read as a message; chat counts each frame or line, and
    /// holds back the ones over the rate (in order) instead of letting a burst through.
    /// A client may burst one second's worth (at least one message or byte), so
    /// rates below 1/s work: 0.5/s lets one message through every two seconds.
    #[arg(long, value_name = "RATE")]
    pub rate_limit: Option<RateLimit>,
}

impl AccessArgs {
    /// Copies the rules into a reactor configuration.
    pub fn apply(&self, config: &mut Config) {
        config.access = AccessList {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
        };
        config.max_conns_per_ip = self.max_conns_per_ip as usize;
        config.rate_limit = self.rate_limit;
    }
}
