//! `sockloop ips`: the machine's IPv4 addresses, one a line (the lecture's `local_ips()`).

use std::io::Write;

use crate::error::{Error, Result};

/// Prints every IPv4 address of every interface, loopback included.
pub fn run() -> Result<()> {
    let interfaces =
        if_addrs::get_if_addrs().map_err(|e| Error::io("listing network interfaces", e))?;
    let mut out = std::io::stdout().lock();
    for interface in interfaces {
        if let std::net::IpAddr::V4(ip) = interface.ip() {
            if writeln!(out, "{ip}").is_err() {
                return Ok(()); // A closed pipe is the reader's choice, not an error.
            }
        }
    }
    Ok(())
}
