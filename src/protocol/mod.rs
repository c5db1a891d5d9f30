//! The wire format: bytes to [`Request`] and server messages to bytes. No I/O and no state.
//!
//! The JSON codec knows nothing of clients or sessions; the signaling core decides what to
//! send and calls the encoders here to write it.

pub mod encode;
mod error_code;
mod json;
mod parse;
mod session_id;
mod state;

pub use error_code::ErrorCode;
pub use json::{EscapedJson, RawJson};
pub use parse::{Command, CommandKind, MAX_ID_BYTES, OptIn, Parser, PresenceField, Relay, Request};
pub use session_id::{SessionId, SessionIdText};
pub use state::{ClientState, Presence, SessionState};
