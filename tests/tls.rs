//! TLS on the echo pair: a certificate from `sockloop tls-selfsigned`, bytes
//! identical through `echo client --tls`, and a TLS port that shrugs off
//! plain-TCP garbage and half-finished handshakes without delaying anyone.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// A fresh certificate and key in a temporary directory.
fn certificate(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sockloop-tls-{tag}-{}", std::process::id()));
    let out = Command::new(bin())
        .args(["tls-selfsigned", "--out", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("cert.pem"), dir.join("key.pem"))
}

fn tls_echo_server(cert: &Path, key: &Path) -> (Proc, std::net::SocketAddr) {
    echo_server(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
}

/// Runs `echo client ARGS` with `input` on stdin; returns (exit code, stdout, stderr).
fn client(args: &[&str], input: Vec<u8>, within: Duration) -> (i32, Vec<u8>, String) {
    let mut all = vec!["echo", "client"];
    all.extend_from_slice(args);
    run_with_input(&all, input, within)
}

#[test]
fn the_key_is_private_even_when_it_replaces_a_readable_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sockloop-tls-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    std::fs::write(&key, "an old key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, made) = certificate("mode");
    assert_eq!(made, key);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(mode, 0o600, "key.pem left with mode {mode:o}");
}

#[test]
fn echo_over_tls_returns_identical_bytes() {
    let (cert, key) = certificate("echo");
    let (_server, addr) = tls_echo_server(&cert, &key);
    let input = pattern(5 * 1024 * 1024, 11);
    let target = format!("localhost:{}", addr.port());
    let (code, out, err) = client(
        &[
            &target,
            "--tls",
            "--tls-ca",
            cert.to_str().unwrap(),
            "--verify",
        ],
        input.clone(),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out == input, "echoed bytes differ");
    // Empty input: the handshake completes, close_notify follows, exit 0.
    let (code, out, err) = client(
        &[&target, "--tls", "--tls-ca", cert.to_str().unwrap()],
        Vec::new(),
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
}

#[test]
fn a_certificate_the_client_does_not_trust_is_a_clear_error() {
    let (cert, key) = certificate("trusted");
    let (other_cert, _) = certificate("untrusted");
    let (_server, addr) = tls_echo_server(&cert, &key);
    let (code, _out, err) = client(
        &[
            &addr.to_string(),
            "--tls",
            "--tls-ca",
            other_cert.to_str().unwrap(),
        ],
        b"hello".to_vec(),
        Duration::from_secs(20),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("sockloop:") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // And --tls without a trust choice is a usage error.
    let (code, _out, err) = client(
        &[&addr.to_string(), "--tls"],
        Vec::new(),
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-ca"), "{err}");
}

#[test]
fn garbage_and_a_stalled_handshake_do_not_hold_up_a_tls_client() {
    let (cert, key) = certificate("hostile");
    let (mut server, addr) = tls_echo_server(&cert, &key);

    // A plain-TCP client that sends garbage is closed.
    let mut garbage = connect(addr);
    write_all(
        &mut garbage,
        b"GET / HTTP/1.0\r\n\r\nthis is not TLS at all\r\n",
    );
    let mut buf = [0u8; 256];
    let closed = loop {
        match garbage.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // the TLS alert
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("garbage client not closed: {e}"),
        }
    };
    assert!(closed);
    server.wait_line("protocol error: tls", Duration::from_secs(5));

    // A client that stops in the middle of its handshake: a record header
    // announcing a ClientHello, then nothing.
    let mut stalled = connect(addr);
    write_all(&mut stalled, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);

    // Meanwhile a real TLS client is served at once.
    let started = Instant::now();
    let (code, out, err) = client(
        &[&addr.to_string(), "--tls", "--insecure"],
        b"still served\n".to_vec(),
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"still served\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the TLS client waited {:?}",
        started.elapsed()
    );
    drop(stalled);
}
