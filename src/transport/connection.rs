//! One accepted socket and the phase it is in.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::time::Instant;

use mio::Interest;
use mio::net::TcpStream;
use tungstenite::protocol::WebSocketContext;

use super::output::Output;
use super::rate_limit::RateLimiter;

/// Bytes tungstenite may add on its own (pongs, close replies) past the output cap. Beyond
/// it tungstenite sees a blocked socket and keeps at most one pending control frame.
const CONTROL_SLACK: usize = 4096;

pub enum Phase {
    /// Reading the HTTP request head.
    Handshake { head: Vec<u8>, deadline: Instant },
    /// A WebSocket connection serving signaling, or (`echo`) echoing every message back.
    Open { ws: Box<WebSocketContext>, last_seen: Instant, echo: bool },
    /// On the way out: the remaining output is flushed (a close frame, an HTTP response),
    /// incoming data is discarded, and the socket is dropped when `done` or at `deadline`.
    Closing { ws: Option<Box<WebSocketContext>>, deadline: Instant, peer_done: bool },
}

pub struct Connection {
    pub socket: TcpStream,
    pub peer: IpAddr,
    pub rate: RateLimiter,
    pub generation: u32,
    pub phase: Phase,
    pub out: Output,
    /// The interest currently registered with the poll.
    pub interest: Interest,
    /// Already on the dirty list of this turn.
    pub flush_queued: bool,
    /// Already on the list of connections with more to read next turn.
    pub read_queued: bool,
    /// Its close has been decided (see `Connections::doom`).
    pub doomed: bool,
    /// `shutdown(Write)` was done: everything we will ever send has been sent.
    pub write_shut: bool,
}

impl Connection {
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }
}

/// What tungstenite reads from and writes to: reads come from the socket, writes go into
/// the connection's output buffer (flushed once per turn with everything else), so frames
/// tungstenite makes and frames the loop makes can never interleave mid-frame.
pub struct WsIo<'a> {
    pub socket: &'a mut TcpStream,
    pub out: &'a mut Output,
    pub cap: usize,
    /// Bytes read: any is a sign of life for the liveness check.
    pub received: usize,
    /// A read returned less than asked: the socket is empty for now, so the next read
    /// reports `WouldBlock` without a syscall. Safe with edge-triggered polling: data
    /// arriving after that read raises a new event. Saves one `read` per wake-up, which
    /// is a third of the syscalls when each connection has one message per turn.
    pub drained: bool,
}

impl<'a> WsIo<'a> {
    pub fn new(socket: &'a mut TcpStream, out: &'a mut Output, cap: usize) -> Self {
        WsIo { socket, out, cap, received: 0, drained: false }
    }
}

impl Read for WsIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.socket.read(buf)?;
        self.received += n;
        self.drained = n > 0 && n < buf.len();
        Ok(n)
    }
}

impl Write for WsIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.unsent_counted() > self.cap + CONTROL_SLACK {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.out.push_raw(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
