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
    /// Bytes read from the socket but not yet taken by tungstenite (see [`Inbox`]);
    /// empty, and unallocated, nearly always.
    pub stash: Stash,
    /// Since when a write has taken nothing at all: a client that pings but never reads is
    /// closed after two ping intervals of that, so what it has queued (a shared client
    /// list included) is not pinned forever.
    pub output_stalled_since: Option<Instant>,
}

impl Connection {
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }
}

/// The loop's one read buffer. Sockets are read into it in large chunks (one syscall per
/// connection per turn, usually), and tungstenite takes its frames from it in small pieces,
/// so no connection needs a read buffer of its own while it is idle. Bytes a connection
/// leaves unread at the end of its turn move to that connection's `stash`.
pub struct Inbox {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Inbox {
    pub fn new(size: usize) -> Self {
        Inbox { buf: vec![0; size].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Hands over what is left unread and empties the inbox.
    pub fn take_leftover(&mut self) -> &[u8] {
        let leftover = &self.buf[self.start..self.end];
        (self.start, self.end) = (0, 0);
        leftover
    }
}

/// Where tungstenite reads from: first the connection's stash, then the inbox, then the
/// socket (into the inbox).
pub struct Input<'a> {
    pub inbox: &'a mut Inbox,
    pub stash: &'a mut Stash,
}

/// A connection's unread leftover bytes, read from the front without moving the rest.
#[derive(Default)]
pub struct Stash {
    bytes: Vec<u8>,
    read: usize,
}

impl Stash {
    pub fn push(&mut self, leftover: &[u8]) {
        self.bytes.drain(..self.read);
        self.read = 0;
        self.bytes.extend_from_slice(leftover);
    }

    fn take_into(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.bytes.len() - self.read);
        buf[..n].copy_from_slice(&self.bytes[self.read..self.read + n]);
        self.read += n;
        if self.read == self.bytes.len() {
            *self = Stash::default();
        }
        n
    }

    fn is_empty(&self) -> bool {
        self.read == self.bytes.len()
    }
}

/// What tungstenite reads from and writes to. Writes go into the connection's output
/// buffer (flushed once per turn with everything else), so frames tungstenite makes and
/// frames the loop makes can never interleave mid-frame.
pub struct WsIo<'a> {
    pub socket: &'a mut TcpStream,
    pub out: &'a mut Output,
    pub cap: usize,
    /// `None` for calls that only write (close, ping, flush): reads then block.
    pub input: Option<Input<'a>>,
    /// Bytes read from the socket: any is a sign of life for the liveness check.
    pub received: usize,
    /// A socket read returned less than asked: the socket is empty for now, so the next
    /// read reports `WouldBlock` without a syscall. Safe with edge-triggered polling: data
    /// arriving after that read raises a new event. Saves one `read` per wake-up, which
    /// is a third of the syscalls when each connection has one message per turn.
    pub drained: bool,
}

impl<'a> WsIo<'a> {
    /// For calls that only write.
    pub fn new(socket: &'a mut TcpStream, out: &'a mut Output, cap: usize) -> Self {
        WsIo { socket, out, cap, input: None, received: 0, drained: false }
    }

    pub fn reading(socket: &'a mut TcpStream, out: &'a mut Output, cap: usize, input: Input<'a>) -> Self {
        WsIo { socket, out, cap, input: Some(input), received: 0, drained: false }
    }
}

impl Read for WsIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(Input { inbox, stash }) = self.input.as_mut() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if !stash.is_empty() {
            return Ok(stash.take_into(buf));
        }
        if inbox.start == inbox.end {
            if self.drained {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.socket.read(&mut inbox.buf)?;
            if n == 0 {
                return Ok(0);
            }
            self.received += n;
            self.drained = n < inbox.buf.len();
            (inbox.start, inbox.end) = (0, n);
        }
        let n = buf.len().min(inbox.end - inbox.start);
        buf[..n].copy_from_slice(&inbox.buf[inbox.start..inbox.start + n]);
        inbox.start += n;
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
