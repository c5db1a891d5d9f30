//! signaling-server: a WebRTC signaling server on one mio event loop.
//!
//! The crate is three layers; dependencies point one way, downwards:
//!
//! * [`transport`] owns every socket: the mio poll loop, the listener, the slab of
//!   connections, the HTTP request head and WebSocket upgrade, framing, bounded write
//!   queues, timers and shutdown. It turns socket events into calls on the core and the
//!   core's output into frames.
//! * [`signaling`] is the sans-IO core: clients, sessions and the client list. Commands in,
//!   addressed messages out; time is passed in, never read.
//! * [`protocol`] is the wire format: bytes to commands and server messages to bytes.
//!
//! [`config`] holds every limit and default, and parses the command line.

pub mod auth;
pub mod config;
mod indexed_enum;
pub mod metrics;
pub mod protocol;
pub mod signaling;
pub mod transport;
