//! What members of a `tcp-chat` say to each other besides chat messages: the
//! mesh's control frames, as text, parsed and written here and nowhere else.
//!
//! Members and the course's framed clients share one framing (a length
//! prefix and UTF-8 text), so a control frame is an ordinary frame whose
//! text starts with [`MAGIC`]. A chat message starts with `[` (its
//! timestamp), so the two can never be taken for each other. One line each:
//!
//! ```text
//! sockloop-mesh/1 hello id=00c0ffee00c0ffee dial=3 listen=:5001 name=Bob
//! sockloop-mesh/1 welcome id=1234abcd1234abcd listen=:5000 name=Ann
//! sockloop-mesh/1 member id=5555aaaa5555aaaa addr=192.168.1.7:5002
//! sockloop-mesh/1 retire
//! sockloop-mesh/1 bye retry=yes why=the chat is full (64 members)
//! ```
//!
//! `name=` and `why=` come last and take the rest of the line, so they may
//! hold spaces; a name never holds a control character (it was checked with
//! [`crate::safe_text::check_name`] before it was sent, and is checked again
//! when it arrives). Unknown keys are ignored, so a later version may add some.
//!
//! *Invariant:* no I/O; every text written by [`Control::encode`] parses back
//! to the same value.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// How every control frame starts; a chat message never does (it starts with `[`).
pub const MAGIC: &str = "sockloop-mesh/1";

/// A member's identity for the life of its process: 64 random bits, written
/// as 16 hex digits. Names can repeat and addresses can have aliases; ids do
/// neither, so links, introductions and the tie-break are keyed by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub u64);

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl MemberId {
    fn parse(text: &str) -> Result<MemberId, String> {
        if text.len() != 16 {
            return Err(format!("member id '{text}' is not 16 hex digits"));
        }
        u64::from_str_radix(text, 16)
            .map(MemberId)
            .map_err(|_| format!("member id '{text}' is not 16 hex digits"))
    }
}

/// Where a member accepts connections, as it announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Only a port (`:5000`): the member listens on every address, and the
    /// receiver uses the IP it sees the member at.
    Port(u16),
    /// A full address (`127.0.0.1:5000`): the member listens on that IP only.
    Addr(SocketAddr),
}

impl Listen {
    /// The announcement for a listener bound to `local`.
    pub fn of(local: SocketAddr) -> Listen {
        if local.ip().is_unspecified() {
            Listen::Port(local.port())
        } else {
            Listen::Addr(local)
        }
    }

    /// The address to dial, for a member seen at IP `seen`.
    pub fn resolve(self, seen: IpAddr) -> SocketAddr {
        match self {
            Listen::Port(port) => SocketAddr::new(seen, port),
            Listen::Addr(addr) => addr,
        }
    }

    fn parse(text: &str) -> Result<Listen, String> {
        if let Some(port) = text.strip_prefix(':') {
            return port
                .parse()
                .map(Listen::Port)
                .map_err(|_| format!("listen port '{port}' is not a port"));
        }
        text.parse()
            .map(Listen::Addr)
            .map_err(|_| format!("listen address '{text}' is not IP:PORT"))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Port(port) => write!(f, ":{port}"),
            Listen::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// One control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control<'a> {
    /// The dialer's first frame: who it is, which of its dials this link is,
    /// and where it listens.
    Hello {
        /// The dialer.
        id: MemberId,
        /// The dialer's count of dials so far: with `id`, the link's place in
        /// the tie-break order (see `mesh::DialKey`).
        dial: u64,
        /// Where the dialer listens.
        listen: Listen,
        /// The dialer's name.
        name: &'a str,
    },
    /// The answer to a hello: the accepting member's identity.
    Welcome {
        /// The accepting member.
        id: MemberId,
        /// Where it listens.
        listen: Listen,
        /// Its name.
        name: &'a str,
    },
    /// An introduction: a member of the chat, and where to dial it.
    Member {
        /// That member.
        id: MemberId,
        /// Its listening address, as the introducer dials it.
        addr: SocketAddr,
    },
    /// "I send nothing more on this link": another link to the same member
    /// won the tie-break. The sender's write side closes next; it still reads.
    Retire,
    /// A hello refused, with a notice for the person who started the dialer.
    Bye {
        /// Whether trying again later may work (the chat was full, the name
        /// was taken) or not (the name itself is not acceptable).
        retry: bool,
        /// The notice.
        why: &'a str,
    },
}

impl Control<'_> {
    /// The frame's text.
    pub fn encode(&self) -> String {
        match self {
            Control::Hello {
                id,
                dial,
                listen,
                name,
            } => format!("{MAGIC} hello id={id} dial={dial} listen={listen} name={name}"),
            Control::Welcome { id, listen, name } => {
                format!("{MAGIC} welcome id={id} listen={listen} name={name}")
            }
            Control::Member { id, addr } => format!("{MAGIC} member id={id} addr={addr}"),
            Control::Retire => format!("{MAGIC} retire"),
            Control::Bye { retry, why } => {
                let retry = if *retry { "yes" } else { "no" };
                format!("{MAGIC} bye retry={retry} why={why}")
            }
        }
    }
}

/// True when a frame's text is a control frame rather than a chat message.
pub fn is_control(text: &str) -> bool {
    text.strip_prefix(MAGIC)
        .is_some_and(|rest| rest.starts_with(' '))
}

/// Parses a control frame's text; the error says what is wrong with it.
pub fn parse(text: &str) -> Result<Control<'_>, String> {
    let rest = text
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| format!("not a {MAGIC} control frame"))?;
    if rest.contains('\n') {
        return Err("a control frame is one line".to_string());
    }
    let (verb, fields) = rest.split_once(' ').unwrap_or((rest, ""));
    let fields = Fields::split(fields);
    match verb {
        "hello" => Ok(Control::Hello {
            id: MemberId::parse(fields.get("id")?)?,
            dial: fields
                .get("dial")?
                .parse()
                .map_err(|_| "dial is not a number".to_string())?,
            listen: Listen::parse(fields.get("listen")?)?,
            name: fields.last("name")?,
        }),
        "welcome" => Ok(Control::Welcome {
            id: MemberId::parse(fields.get("id")?)?,
            listen: Listen::parse(fields.get("listen")?)?,
            name: fields.last("name")?,
        }),
        "member" => Ok(Control::Member {
            id: MemberId::parse(fields.get("id")?)?,
            addr: fields
                .get("addr")?
                .parse()
                .map_err(|_| "member addr is not IP:PORT".to_string())?,
        }),
        "retire" => Ok(Control::Retire),
        "bye" => Ok(Control::Bye {
            retry: fields.get("retry")? == "yes",
            why: fields.last("why")?,
        }),
        other => Err(format!("unknown control frame '{other}'")),
    }
}

/// `key=value` fields separated by spaces; the last, free-text field (`name=`
/// or `why=`) runs to the end of the line.
struct Fields<'a> {
    text: &'a str,
}

impl<'a> Fields<'a> {
    fn split(text: &'a str) -> Fields<'a> {
        Fields { text }
    }

    /// A field whose value has no space.
    fn get(&self, key: &str) -> Result<&'a str, String> {
        for word in self.text.split(' ') {
            if let Some(value) = word.strip_prefix(key).and_then(|w| w.strip_prefix('=')) {
                return Ok(value);
            }
            if word.starts_with("name=") || word.starts_with("why=") {
                break;
            }
        }
        Err(format!("the field {key}= is missing"))
    }

    /// The free-text field that ends the line.
    fn last(&self, key: &str) -> Result<&'a str, String> {
        let marker = format!("{key}=");
        let start = if self.text.starts_with(&marker) {
            Some(0)
        } else {
            self.text.find(&format!(" {marker}")).map(|i| i + 1)
        };
        start
            .map(|i| &self.text[i + marker.len()..])
            .ok_or_else(|| format!("the field {key}= is missing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(control: Control<'_>) {
        let text = control.encode();
        assert!(is_control(&text), "{text}");
        assert_eq!(parse(&text), Ok(control), "{text}");
    }

    #[test]
    fn every_frame_parses_back() {
        let id = MemberId(0x00c0_ffee_0000_0001);
        round_trip(Control::Hello {
            id,
            dial: 7,
            listen: Listen::Port(5001),
            name: "Bob the builder",
        });
        round_trip(Control::Welcome {
            id,
            listen: Listen::Addr("[::1]:5000".parse().unwrap()),
            name: "Ann=1 why=x",
        });
        round_trip(Control::Member {
            id,
            addr: "192.168.1.7:5002".parse().unwrap(),
        });
        round_trip(Control::Retire);
        round_trip(Control::Bye {
            retry: true,
            why: "the chat is full (64 members)",
        });
    }

    #[test]
    fn the_text_is_what_the_module_docs_show() {
        let hello = Control::Hello {
            id: MemberId(0x00c0_ffee_00c0_ffee),
            dial: 3,
            listen: Listen::Port(5001),
            name: "Bob",
        };
        assert_eq!(
            hello.encode(),
            "sockloop-mesh/1 hello id=00c0ffee00c0ffee dial=3 listen=:5001 name=Bob"
        );
    }

    #[test]
    fn chat_messages_are_not_control_frames() {
        assert!(!is_control("[2024-02-03T12:15:00] Ann:\n\thi"));
        assert!(!is_control("sockloop-mesh/10 hello"));
        assert!(!is_control("sockloop-mesh/1"));
    }

    #[test]
    fn broken_frames_say_what_is_wrong() {
        let cases = [
            ("sockloop-mesh/1 shout", "unknown control frame 'shout'"),
            (
                "sockloop-mesh/1 hello id=12 dial=1 listen=:1 name=x",
                "not 16 hex digits",
            ),
            (
                "sockloop-mesh/1 hello id=0000000000000001 listen=:1 name=x",
                "dial= is missing",
            ),
            (
                "sockloop-mesh/1 welcome id=0000000000000001 listen=:99999 name=x",
                "not a port",
            ),
            (
                "sockloop-mesh/1 welcome id=0000000000000001 listen=:1",
                "name= is missing",
            ),
            ("sockloop-mesh/1 retire\nmore", "one line"),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_err();
            assert!(got.contains(want), "{text:?}: {got}");
        }
    }

    #[test]
    fn a_port_only_listen_takes_the_ip_the_member_is_seen_at() {
        let seen: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(
            Listen::Port(5000).resolve(seen),
            "10.0.0.9:5000".parse().unwrap()
        );
        let own: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(Listen::Addr(own).resolve(seen), own);
        assert_eq!(
            Listen::of("0.0.0.0:5000".parse().unwrap()),
            Listen::Port(5000)
        );
        assert_eq!(Listen::of(own), Listen::Addr(own));
    }
}
