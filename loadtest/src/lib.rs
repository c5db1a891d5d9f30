//! The load tester for signaling-server. It speaks only the wire protocol (WebSocket +
//! JSON), never the server's internals, so it runs against any server speaking it.
//!
//! Modes: [`relay`] (throughput, latency, fairness, CPU per message), [`idle`] (connect
//! rate, memory per idle client), [`churn`] (client-list convergence under a storm of
//! joins and leaves), [`soak`] (random churn, garbage and abrupt leaves for a fixed time,
//! then: is the server back to idle, did its memory grow?) and [`resume`] (memory of
//! clients away after a TCP reset with messages held for them, and how fast they resume).
//! Every loop is bounded in count and time. Each runs over `ws://` or, with a `wss://` URL, over TLS ([`tls`];
//! the server's certificate is not verified: this is a loopback benchmarking tool).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

pub mod churn;
pub mod fleet;
pub mod idle;
mod pairs;
pub mod procfs;
pub mod relay;
pub mod report;
pub mod resume;
pub mod soak;
pub mod tls;
mod wire;

pub use tls::Tls;

/// Where to connect and what to watch.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Local addresses to spread connections over; empty: let the OS choose.
    pub sources: Vec<IpAddr>,
    /// The server's process id, for its CPU time and memory (same machine only).
    pub server_pid: Option<u32>,
    /// `wss://`: every connection speaks TLS (certificate not verified, see [`tls`]).
    pub tls: Option<Tls>,
}

impl Target {
    /// `url` is `ws://HOST[:PORT][/path]` or `wss://...` (default ports 80 and 443). With a
    /// loopback server, connections are spread over `sources` loopback addresses starting
    /// at 127.0.0.2, so tens of thousands of connections do not exhaust one address's
    /// ephemeral ports.
    pub fn new(url: &str, sources: usize, server_pid: Option<u32>) -> Result<Target, String> {
        let (rest, secure) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err(format!("{url}: only ws:// and wss:// URLs are supported")),
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) =
            split_authority(authority).ok_or_else(|| format!("{authority}: bad host or port"))?;
        let port = port.unwrap_or(if secure { 443 } else { 80 });
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{authority}: no address"))?;
        let sources = if addr.ip().is_loopback() && addr.is_ipv4() {
            (0..sources.min(250)).map(|i| IpAddr::from([127, 0, 0, 2 + i as u8])).collect()
        } else {
            Vec::new()
        };
        let tls = if secure { Some(Tls::new(host)?) } else { None };
        Ok(Target { addr, sources, server_pid, tls })
    }
}

/// `host[:port]` or `[v6]:port` -> (host without brackets, port).
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, if after.is_empty() { None } else { Some(after.strip_prefix(':')?) })
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse().ok()?),
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_address_and_the_transport() {
        let plain = Target::new("ws://127.0.0.1:8080/", 2, None).unwrap();
        assert_eq!(
            (plain.addr, plain.tls.is_none(), plain.sources.len()),
            ("127.0.0.1:8080".parse().unwrap(), true, 2)
        );
        let secure = Target::new("wss://127.0.0.1:8443/path", 0, None).unwrap();
        assert_eq!((secure.addr, secure.tls.is_some()), ("127.0.0.1:8443".parse().unwrap(), true));
        assert_eq!(Target::new("wss://[::1]/", 0, None).unwrap().addr, "[::1]:443".parse().unwrap());
        assert_eq!(Target::new("ws://localhost:9/", 0, None).unwrap().addr.port(), 9);
        for bad in ["http://127.0.0.1:1/", "ws://127.0.0.1:x/", "wss://:443/", "ws://[::1/"] {
            assert!(Target::new(bad, 0, None).is_err(), "{bad}");
        }
    }
}
