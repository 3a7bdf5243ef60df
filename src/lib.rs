//! sockloop: every socket program of the lecture on one thread.
pub mod addr;
pub mod chat_msg;
pub mod error;
pub mod framing;
pub mod lines;
