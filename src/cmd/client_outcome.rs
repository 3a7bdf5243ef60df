//! What a client concludes from the way its server answered: turned away
//! because the server is full, answered in TLS while we speak plain text,
//! answered in plain text while we speak TLS, a certificate that someone
//! other than `--tls-ca` signed. Each becomes one `sockloop:` line and exit
//! code 1 — never bytes on stdout as if they were data, never a library's
//! name for the problem.
//!
//! Invariant: a server that answers normally sees its bytes passed on
//! unchanged and in order; at most the first [`FULL_NOTICE`]'s length of
//! them is held back, and only while they could still be a notice.

use std::path::Path;

use crate::conn::CloseReason;
use crate::error::Error;
use crate::reactor::FULL_NOTICE;
use crate::tls::ClientTlsArgs;

/// Bytes sent that are remembered to tell an echo from a notice.
const SENT_HEAD: usize = 64;

/// The header of a TLS alert record: content type 21, version 3.x, length 2.
/// A TLS server answers plain text with one before it closes.
fn is_tls_alert(head: &[u8]) -> bool {
    matches!(head, [0x15, 0x03, 0..=0x04, 0x00, 0x02, ..])
}

/// Whether `head` could still grow into a TLS alert header.
fn may_be_tls_alert(head: &[u8]) -> bool {
    let header: [&[u8]; 5] = [&[0x15], &[0x03], &[0, 1, 2, 3, 4], &[0x00], &[0x02]];
    head.len() < header.len() && head.iter().zip(header).all(|(b, ok)| ok.contains(b))
}

/// What [`Opening::feed`] made of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Data, to be used as it came (the opening was settled before).
    Pass,
    /// Data: these bytes (what was held, then what came) are to be used now.
    Release(Vec<u8>),
    /// Nothing to use yet: the bytes may still be a notice.
    Hold,
    /// The server speaks TLS: it answered our plain text with an alert.
    SpeaksTls,
}

/// The first bytes of a plain-text stream from a server, watched until they
/// are known to be data, a full server's notice or a TLS alert.
#[derive(Debug, Default)]
pub struct Opening {
    /// What arrived and is not yet known to be data.
    held: Vec<u8>,
    /// The first bytes we sent: an echo server sends them back, and an
    /// echo is data, whatever it looks like.
    sent: Vec<u8>,
    /// The bytes are known to be data; everything passes from now on.
    settled: bool,
    /// Watch for [`FULL_NOTICE`] (plain-text servers; a chat client sees
    /// its server's notice as a frame instead).
    notice: bool,
    /// The server turned out to speak TLS: nothing it sends is data.
    tls: bool,
}

impl Opening {
    /// Watches for [`FULL_NOTICE`] as well as for a TLS alert.
    pub fn with_notice() -> Opening {
        Opening {
            notice: true,
            ..Opening::default()
        }
    }

    /// Watches for a TLS alert only.
    pub fn tls_alert_only() -> Opening {
        Opening::default()
    }

    /// Watches for nothing: every byte is data (a TLS session's plaintext).
    pub fn settled() -> Opening {
        Opening {
            settled: true,
            ..Opening::default()
        }
    }

    /// Notes bytes we sent, so that their echo is taken for data.
    pub fn sent(&mut self, bytes: &[u8]) {
        if !self.settled && self.sent.len() < SENT_HEAD {
            let room = SENT_HEAD - self.sent.len();
            self.sent.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    /// Looks at bytes from the server.
    pub fn feed(&mut self, bytes: &[u8]) -> Seen {
        if self.tls {
            return Seen::Hold;
        }
        if self.settled {
            return Seen::Pass;
        }
        self.held.extend_from_slice(bytes);
        let head = &self.held;
        let same = head.len().min(self.sent.len());
        let echo = same > 0 && head[..same] == self.sent[..same];
        if !echo {
            if is_tls_alert(head) {
                self.tls = true;
                self.held.clear();
                return Seen::SpeaksTls;
            }
            let notice = self.notice && FULL_NOTICE.starts_with(head);
            if notice || may_be_tls_alert(head) {
                return Seen::Hold;
            }
        }
        self.settled = true;
        Seen::Release(std::mem::take(&mut self.held))
    }

    /// The connection ended: true when all that came was the full notice.
    /// Otherwise whatever was held is data, returned to be used.
    pub fn at_end(&mut self) -> Result<Vec<u8>, Refused> {
        if !self.settled && self.notice && self.held == FULL_NOTICE {
            return Err(Refused);
        }
        self.settled = true;
        Ok(std::mem::take(&mut self.held))
    }
}

/// The server said it is full and closed the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// The error for a client turned away by a full server.
pub fn full(server: &str) -> Error {
    Error::Failed(format!(
        "{server} is full: it turned this connection away (--max-conns); try again later"
    ))
}

/// The error for a plain-text client whose server speaks TLS.
pub fn speaks_tls() -> Error {
    Error::Failed(
        "the server speaks TLS: add --tls (with --tls-ca FILE to check its certificate, \
         or --insecure)"
            .into(),
    )
}

/// What a TLS client tells its user when its connection ended with
/// `reason`, `handshaking` saying whether the handshake had finished; `None`
/// when the connection was not a TLS failure.
pub fn tls_failure(reason: &CloseReason, handshaking: bool, tls: &ClientTlsArgs) -> Option<Error> {
    if !tls.tls {
        return None;
    }
    let text = match reason {
        CloseReason::Tls(e) => tls_error_text(e, handshaking, tls.tls_ca.as_deref()),
        CloseReason::Protocol(why) if handshaking => {
            format!("the server does not speak TLS: {why} (drop --tls, or check the port)")
        }
        CloseReason::Done | CloseReason::Io(_) if handshaking => {
            "the server closed the connection during the TLS handshake: it does not speak \
             TLS on this port, or refused us"
                .to_string()
        }
        _ => return None,
    };
    Some(Error::Failed(text))
}

/// A rustls error in the words of someone who typed `--tls`.
fn tls_error_text(e: &rustls::Error, handshaking: bool, ca: Option<&Path>) -> String {
    use rustls::{CertificateError as Cert, Error as Tls};
    match e {
        Tls::InvalidCertificate(Cert::BadSignature | Cert::UnknownIssuer) => match ca {
            Some(ca) => format!(
                "the server's certificate is not signed by --tls-ca {}: give the file of the \
                 certificate (or the CA) the server uses",
                ca.display()
            ),
            None => "the server's certificate is not signed by a trusted CA".to_string(),
        },
        Tls::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            format!(
                "the server's certificate is not valid for the name connected to ({e}): \
                 connect by a name it lists"
            )
        }
        Tls::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_string()
        }
        Tls::InappropriateHandshakeMessage { .. }
        | Tls::InappropriateMessage { .. }
        | Tls::InvalidMessage(_)
            if handshaking =>
        {
            "the server does not speak TLS: it answered the handshake in plain text \
             (drop --tls, or check the port)"
                .to_string()
        }
        Tls::AlertReceived(alert) => {
            format!("the server refused the TLS session (its alert: {alert:?})")
        }
        other => format!("tls: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_notice_then_the_end_is_a_refusal() {
        let mut opening = Opening::with_notice();
        opening.sent(b"hello\n");
        let (a, b) = FULL_NOTICE.split_at(10);
        assert_eq!(opening.feed(a), Seen::Hold);
        assert_eq!(opening.feed(b), Seen::Hold);
        assert_eq!(opening.at_end(), Err(Refused));
    }

    #[test]
    fn data_passes_at_once_and_an_echo_of_a_notice_is_data() {
        let mut opening = Opening::with_notice();
        opening.sent(b"hello\n");
        assert_eq!(opening.feed(b"hel"), Seen::Release(b"hel".to_vec()));
        assert_eq!(opening.feed(b"lo\n"), Seen::Pass);

        let mut opening = Opening::with_notice();
        opening.sent(FULL_NOTICE);
        assert_eq!(
            opening.feed(FULL_NOTICE),
            Seen::Release(FULL_NOTICE.to_vec())
        );
        assert_eq!(opening.at_end(), Ok(Vec::new()));
    }

    #[test]
    fn a_notice_followed_by_more_is_data() {
        let mut opening = Opening::with_notice();
        assert_eq!(opening.feed(FULL_NOTICE), Seen::Hold);
        let mut all = FULL_NOTICE.to_vec();
        all.extend_from_slice(b"more");
        assert_eq!(opening.feed(b"more"), Seen::Release(all));
    }

    #[test]
    fn a_tls_alert_is_recognised_even_in_pieces() {
        let mut opening = Opening::tls_alert_only();
        opening.sent(b"hello\n");
        assert_eq!(opening.feed(&[0x15, 0x03]), Seen::Hold);
        assert_eq!(
            opening.feed(&[0x03, 0x00, 0x02, 0x02, 0x32]),
            Seen::SpeaksTls
        );
        // Nothing of it is data, then or at the end.
        assert_eq!(opening.feed(b"more"), Seen::Hold);
        assert_eq!(opening.at_end(), Ok(Vec::new()));
        let mut opening = Opening::tls_alert_only();
        assert_eq!(opening.feed(&[0x15, b'x']), Seen::Release(vec![0x15, b'x']));
    }
}
