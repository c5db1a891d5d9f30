//! The load tester for signaling-server. It speaks only the wire protocol (WebSocket +
//! JSON), never the server's internals, so it runs against any server speaking it.
//!
//! Modes: [`relay`] (throughput, latency, fairness, CPU per message), [`idle`] (connect
//! rate, memory per idle client), [`churn`] (client-list convergence under a storm of
//! joins and leaves) and [`soak`] (random churn, garbage and abrupt leaves for a fixed
//! time, then: is the server back to idle, did its memory grow?). Every loop is bounded
//! in count and time.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

pub mod churn;
pub mod fleet;
pub mod idle;
mod pairs;
pub mod procfs;
pub mod relay;
pub mod report;
pub mod soak;
mod wire;

/// Where to connect and what to watch.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Local addresses to spread connections over; empty: let the OS choose.
    pub sources: Vec<IpAddr>,
    /// The server's process id, for its CPU time and memory (same machine only).
    pub server_pid: Option<u32>,
}

impl Target {
    /// `url` is `ws://HOST:PORT[/path]`. With a loopback server, connections are spread
    /// over `sources` loopback addresses starting at 127.0.0.2, so tens of thousands of
    /// connections do not exhaust one address's ephemeral ports.
    pub fn new(url: &str, sources: usize, server_pid: Option<u32>) -> Result<Target, String> {
        let rest =
            url.strip_prefix("ws://").ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("{authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{authority}: no address"))?;
        let sources = if addr.ip().is_loopback() && addr.is_ipv4() {
            (0..sources.min(250)).map(|i| IpAddr::from([127, 0, 0, 2 + i as u8])).collect()
        } else {
            Vec::new()
        };
        Ok(Target { addr, sources, server_pid })
    }
}
