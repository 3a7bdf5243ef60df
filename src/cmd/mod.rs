//! The commands. Each file holds one command's protocol logic as a
//! [`Handler`](crate::reactor::Handler) plus the function that sets up its
//! reactor; none of them touches readiness or `WouldBlock`.

pub mod access_args;
pub mod chat;
pub mod chat_client;
pub mod chat_server;
pub mod chat_udp;
pub mod echo_client;
pub mod echo_server;
pub mod ips;
pub mod rand;
pub mod stress;
pub mod udp_chat;
pub mod udp_sink;
pub mod udp_stream;
