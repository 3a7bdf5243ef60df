//! The two options both peers take: `--port P` (default 0) and `--bind IP`
//! (default 127.0.0.1). A mistake prints one line and exits 2.

use std::net::IpAddr;

/// Parses `--bind IP --port P` from the command line.
pub fn bind_and_port(program: &str) -> (IpAddr, u16) {
    let mut bind: IpAddr = [127, 0, 0, 1].into();
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        let ok = match (flag.as_str(), value.as_deref()) {
            ("--port", Some(v)) => v.parse().map(|p| port = p).is_ok(),
            ("--bind", Some(v)) => v.parse().map(|b| bind = b).is_ok(),
            _ => false,
        };
        if !ok {
            eprintln!("{program}: usage: {program} [--port P] [--bind IP]");
            std::process::exit(2);
        }
    }
    (bind, port)
}
