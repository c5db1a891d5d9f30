//! Integration tests: the real `signaling-server` binary on 127.0.0.1:0, driven by real
//! WebSocket clients (tungstenite, blocking) over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cdp;
mod harness;
mod tls_client;

mod browser;
mod defences;
mod exhaustion;

mod flows;
mod garbage;
mod http_endpoints;
mod in_process;
mod lifecycle;
mod limits;
mod loadtest_smoke;
mod output_limits;
mod resume;
mod tls;
