//! Everything that touches a socket: the mio event loop, the listener, the slab of
//! connections, the HTTP request head and WebSocket upgrade, framing, bounded write
//! queues, timers and shutdown.
//!
//! A connection's life: accepted → `Handshake` (HTTP head, with a deadline) → either an
//! HTTP response and a close, or `Open` (WebSocket, messages to the core) → `Closing`
//! (close frame out, reply awaited briefly) → removed. The core hears of it only while it
//! is `Open`, and gets `disconnect` exactly once when it leaves that phase (never on
//! server shutdown).

mod connection;
mod connections;
mod event_loop;
mod http;
mod output;
mod rate_limit;

pub use event_loop::Server;

/// The HTTP request-head parser, public only for the fuzz targets in `fuzz/`; not API.
#[doc(hidden)]
pub use http::{Head, Route, UpgradePolicy, read_head};
