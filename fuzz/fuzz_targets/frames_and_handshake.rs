//! Arbitrary bytes as everything a client sends on one connection (the tungstenite
//! `read_message_server.rs` pattern, with the server's own settings and I/O shape).
//!
//! * WebSocket frames go through `WebSocketContext::read` in the server role, configured as
//!   `transport::event_loop` configures it (tungstenite read buffer 256 bytes — the server's
//!   value since the shared-inbox change — or 4096, write buffer 0, max frame and message
//!   64 KiB), reading from an in-memory peer that delivers the bytes in fuzz-chosen chunks
//!   with `WouldBlock` between turns, and writing into an in-memory output with the server's
//!   cap (`max_output` + 4096 of control slack, then `WouldBlock`). As the event loop does, at
//!   most 32 messages are read per turn, the server may send pings and may start a close, and
//!   the connection ends on the first error.
//! * With the `http-head` feature (which needs the `read_head` re-export proposed in
//!   docs/FUZZING.md), the stream first goes through the HTTP request-head parser, fed the way
//!   `read_handshake` feeds it (2 KiB reads, 8 KiB head limit, parse once a blank line may
//!   have arrived); an upgrade hands the bytes after the head to the WebSocket as
//!   already-read data.
//!
//! Checks: nothing panics; every data message is at most the message limit; the bytes the
//! server writes are bounded by the bytes it read (pongs and close replies never amplify);
//! heap growth while serving the connection stays under a fixed bound (a counting global
//! allocator), so no length field makes the server reserve more than its limits allow; the
//! loop ends (every turn consumes input or the connection ends).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message};

/// `Config::default().max_message`.
const MAX_MESSAGE: usize = 64 << 10;
/// `Config::default().echo_max_message` (the conformance echo path).
#[cfg(feature = "http-head")]
const ECHO_MAX_MESSAGE: usize = 16 << 20;
/// `Config::default().max_output`, and the control slack of `WsIo`.
const MAX_OUTPUT: usize = 256 << 10;
const CONTROL_SLACK: usize = 4096;
/// `event_loop::MESSAGES_PER_READ`.
const MESSAGES_PER_READ: usize = 32;
/// `event_loop::INBOX_SIZE`: the most one socket read returns.
const INBOX_SIZE: usize = 64 << 10;

/// Counts live heap bytes, so a target can bound what one connection makes the server hold.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the fuzz input's first bytes choose.
struct Flags {
    /// tungstenite read buffer: 256 (the server now) or 4096 (before the shared inbox).
    read_buffer: usize,
    /// At the end of the input the peer closes (EOF) rather than going quiet (WouldBlock).
    eof_at_end: bool,
    /// The stream starts with an HTTP request head (only with the `http-head` feature).
    http_head: bool,
    /// The server pings every few turns, as its ping timer does.
    pings: bool,
    /// The server starts a close (1008) after this many turns, then drains like
    /// `drain_closing`.
    close_after: Option<usize>,
    /// The peer reads what the server writes (else output piles up to the cap and blocks).
    peer_reads: bool,
    /// Bytes the socket has for each read turn.
    chunk: usize,
    /// Upgrade policy variant for the head parser.
    #[cfg_attr(not(feature = "http-head"), allow(dead_code))]
    policy: u8,
}

impl Flags {
    fn read(input: &[u8]) -> (Flags, &[u8]) {
        let [a, b, c, rest @ ..] = input else {
            return (Flags::read(&[0, 0, 0]).0, &[]);
        };
        let flags = Flags {
            read_buffer: if a & 1 == 0 { 256 } else { 4096 },
            eof_at_end: a & 2 != 0,
            http_head: a & 4 != 0,
            pings: a & 8 != 0,
            close_after: (a & 16 != 0).then_some(usize::from(c & 7)),
            peer_reads: a & 32 == 0,
            // 1..=256 bytes, or bigger steps up to a whole inbox.
            chunk: (if a & 64 == 0 { usize::from(*b) + 1 } else { (usize::from(*b) + 1) * 256 })
                .min(INBOX_SIZE),
            policy: c >> 3,
        };
        (flags, rest)
    }
}

/// The client side of the socket: `data` arrives `chunk` bytes per turn.
struct Peer<'a> {
    data: &'a [u8],
    at: usize,
    chunk: usize,
    turn_left: usize,
    eof_at_end: bool,
    /// For write-only calls (close, ping): reads block, as `WsIo::new` makes them.
    reads_blocked: bool,
    /// What the server wrote and the peer has not taken yet.
    out: Vec<u8>,
    written: usize,
}

impl Peer<'_> {
    fn exhausted(&self) -> bool {
        self.at == self.data.len()
    }

    fn new_turn(&mut self, peer_reads: bool) {
        self.turn_left = self.chunk;
        if peer_reads {
            self.out.clear();
        }
    }
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reads_blocked {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.exhausted() {
            return if self.eof_at_end { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        if self.turn_left == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.turn_left).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        self.turn_left -= n;
        Ok(n)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len() > MAX_OUTPUT + CONTROL_SLACK {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.out.extend_from_slice(buf);
        self.written += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn ws_config(read_buffer: usize, max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

fuzz_target!(|input: &[u8]| {
    let (flags, stream) = Flags::read(input);
    let mut peer = Peer {
        data: stream,
        at: 0,
        chunk: flags.chunk,
        turn_left: 0,
        eof_at_end: flags.eof_at_end,
        reads_blocked: false,
        // Preallocated so the peer's own buffer does not count as the server's growth.
        out: Vec::with_capacity(MAX_OUTPUT + CONTROL_SLACK + 4096),
        written: 0,
    };
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);

    let (early, max_message) = if flags.http_head {
        match handshake(&mut peer, &flags) {
            Some(upgrade) => upgrade,
            None => return,
        }
    } else {
        // No head: a fuzz-chosen prefix stands for frame bytes that came with the head.
        let early_len = usize::from(input.get(2).copied().unwrap_or(0) & 7) * 16;
        let early_len = early_len.min(stream.len());
        peer.at = early_len;
        (stream[..early_len].to_vec(), MAX_MESSAGE)
    };
    let config = ws_config(flags.read_buffer, max_message);
    let mut ws = WebSocketContext::from_partially_read(early, Role::Server, Some(config));

    let mut pings = 0usize;
    let mut closing = false;
    let mut turn = 0usize;
    'connection: loop {
        turn += 1;
        let consumed_before = peer.at;
        let mut messages = 0;
        peer.new_turn(flags.peer_reads);
        for _ in 0..MESSAGES_PER_READ {
            let read = ws.read(&mut peer);
            messages += usize::from(read.is_ok());
            match read {
                Ok(Message::Text(text)) => assert!(text.len() <= max_message, "text of {}", text.len()),
                Ok(Message::Binary(data)) => assert!(data.len() <= max_message, "binary of {}", data.len()),
                Ok(Message::Ping(data) | Message::Pong(data)) => assert!(data.len() <= 125),
                Ok(Message::Frame(_)) => {}
                // The event loop dooms the connection; tungstenite has queued the reply.
                Ok(Message::Close(_)) => break 'connection,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break 'connection,
            }
        }
        peer.reads_blocked = true;
        if flags.pings && !closing && turn.is_multiple_of(3) {
            // event_loop's ping timer; its result is ignored there too.
            let _ = ws.write(&mut peer, Message::Ping(Bytes::new()));
            pings += 1;
        }
        if flags.close_after == Some(turn) && !closing {
            let frame = CloseFrame { code: CloseCode::Policy, reason: "".into() };
            let _ = ws.close(&mut peer, Some(frame));
            closing = true;
        }
        peer.reads_blocked = false;
        let progressed = peer.at != consumed_before || messages > 0;
        if peer.exhausted() && !progressed {
            break;
        }
        // A turn with input left always makes progress: the chunk is at least one byte and
        // tungstenite reads whenever it has no complete frame. (Otherwise: a stall.)
        assert!(progressed, "a turn consumed nothing with input left");
    }

    let grown = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    // A frame payload and a message being assembled may each reach the limit; Vec/BytesMut
    // growth can double them. Everything else is a few KiB.
    let bound = 6 * max_message + (256 << 10);
    assert!(grown <= bound, "serving one connection grew the heap by {grown} bytes (bound {bound})");
    // Pong and close replies are never larger than the ping or close that asked for them
    // (a client frame carries 4 mask bytes the reply lacks); our own pings are 2 bytes and
    // our close 4.
    let bound = peer.at + 2 * pings + 64;
    assert!(peer.written <= bound, "wrote {} bytes for {} read", peer.written, peer.at);
    drop(ws);
});

/// The request head, read as `read_handshake` reads it. `Some` on an upgrade: the bytes after
/// the head and the message limit of the chosen path.
#[cfg(feature = "http-head")]
fn handshake(peer: &mut Peer<'_>, flags: &Flags) -> Option<(Vec<u8>, usize)> {
    use signaling_server::transport::{Head, UpgradePolicy, read_head};

    const MAX_HEAD: usize = 8 << 10; // Config::default().max_request_head
    const NOW_UNIX: u64 = 1_000_000;
    let origins = ["https://app.example".to_owned()];
    let policy = UpgradePolicy {
        allowed_origins: if flags.policy & 1 != 0 { &origins } else { &[] },
        auth_secret: (flags.policy & 2 != 0).then_some(SECRET),
        echo_path: (flags.policy & 4 != 0).then_some("/echo"),
        now_unix: NOW_UNIX,
    };
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        peer.new_turn(true);
        let room = (MAX_HEAD - head.len()).min(chunk.len());
        let n = match peer.read(&mut chunk[..room]) {
            Ok(0) => return None,
            Ok(n) => n,
            // A quiet peer: the handshake deadline ends it.
            Err(_) if peer.exhausted() => return None,
            Err(_) => continue,
        };
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let full = head.len() >= MAX_HEAD;
        let ends = head[searched_from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r");
        if !(ends || full) {
            continue;
        }
        match read_head(&head, full, &policy) {
            Head::Partial => assert!(!full, "a full head still partial"),
            Head::Respond(response) => {
                assert!(response.starts_with(b"HTTP/1.1 "));
                return None;
            }
            Head::Page { .. } => return None,
            Head::Upgrade { response, head_len, echo, allowed_sid } => {
                assert!(head_len <= head.len(), "head_len {head_len} past {} bytes", head.len());
                assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
                assert!(response.ends_with("\r\n\r\n"));
                assert!(!echo || policy.echo_path.is_some(), "echo without an echo path");
                if let Some(sid) = &allowed_sid {
                    assert!(policy.auth_secret.is_some() && !echo, "an sId without auth");
                    assert!(!sid.is_empty() && sid.len() <= signaling_server::protocol::MAX_ID_BYTES);
                } else {
                    assert!(policy.auth_secret.is_none() || echo, "auth passed without an sId");
                }
                let max_message = if echo { ECHO_MAX_MESSAGE } else { MAX_MESSAGE };
                return Some((head[head_len..].to_vec(), max_message));
            }
        }
    }
}

/// The auth secret of the fuzzed policy; seeds carry tokens minted with it.
#[cfg(feature = "http-head")]
const SECRET: &[u8] = b"fuzzing secret";

#[cfg(not(feature = "http-head"))]
fn handshake(_: &mut Peer<'_>, _: &Flags) -> Option<(Vec<u8>, usize)> {
    // Without the re-export the head parser is out of reach: the bytes are frames only.
    Some((Vec::new(), MAX_MESSAGE))
}
