//! Everything that touches a socket. The loop is plumbing; what a connection does lives in
//! its sans-IO machine.
//!
//! * `server`: the mio poll loop, the listener and the [`ServerHandle`]: readiness in,
//!   bytes moved between sockets and machines, timers from the machines' rules.
//! * `connection/`: one connection's life as a state machine (handshake, open, closing,
//!   closed): bytes and time in; events, output and deadlines out. Its input buffers, its
//!   bounded output queue, and the wire under it (plain TCP or TLS) are its own files.
//! * `connections`: the slab, the single close path (which owes the core its *leave*), and
//!   the [`Outbox`](crate::signaling::Outbox) the core writes into.
//! * `admission`, `housekeeping`, `http`, `pages`, `rate_limit`, `tls`: the connection
//!   caps, the sliced timer sweep, the HTTP request head, the built-in pages, the command
//!   rate limit, and the certificate files behind `--tls-cert`.

mod admission;
#[doc(hidden)]
pub mod connection;
mod connections;
mod housekeeping;
mod http;
mod pages;
mod rate_limit;
mod server;
pub mod tls;

pub use http::{MAX_ROOM_BYTES, is_room_name};
pub use server::{Server, ServerHandle, StartError};

/// The HTTP request-head parser, public only for the fuzz targets in `fuzz/`; not API.
#[doc(hidden)]
pub use http::{Head, Route, UpgradePolicy, read_head};
