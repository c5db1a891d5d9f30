//! Arbitrary bytes as everything a client sends on one connection, fed to the server's own
//! connection machine (`signaling_server::transport::connection`) exactly as the event loop
//! feeds it: in fuzz-chosen chunks (one socket read each), at most 32 events per turn with
//! the rest kept for the next turn, every `Event::Close` acted on with `close`, timers run
//! on a fake clock, and the output written into an in-memory socket that may stop reading.
//!
//! * Without the `http-head` flag bit the stream is preceded by a valid upgrade, so the
//!   bytes are WebSocket frames; with it, the stream starts with the HTTP request head
//!   itself (the upgrade policy is fuzz-chosen: origins, token auth, echo path).
//!
//! Checks: nothing panics; every message for the core is at most the message limit; the
//! bytes the server writes are bounded by the bytes it read (pongs and close replies never
//! amplify); heap growth while serving the connection stays under a fixed bound (a counting
//! global allocator), so no length field makes the server reserve more than its limits
//! allow; the loop ends (every turn consumes input, or the connection has nothing left).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use signaling_server::config::Config;
use signaling_server::metrics::CloseReason;
use signaling_server::transport::UpgradePolicy;
use signaling_server::transport::connection::{Close, Connection, Event, Settings, Sink, Wire};

/// `server::MESSAGES_PER_READ`.
const MESSAGES_PER_READ: usize = 32;
/// `server::INBOX_SIZE`: the most one socket read returns.
const INBOX_SIZE: usize = 64 << 10;
/// The auth secret of the fuzzed policy; seeds carry tokens minted with it.
const SECRET: &[u8] = b"fuzzing secret";
const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

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
    /// At the end of the input the peer closes (EOF) rather than going quiet.
    eof_at_end: bool,
    /// The stream starts with an HTTP request head (else a valid upgrade precedes it).
    http_head: bool,
    /// Time passes between turns, so pings and deadlines fire.
    timers: bool,
    /// The server starts a close (1008) after this many turns.
    close_after: Option<usize>,
    /// The peer reads what the server writes (else output piles up and blocks).
    peer_reads: bool,
    /// Bytes the socket has for each read turn.
    chunk: usize,
    /// Upgrade policy variant for the head parser.
    policy: u8,
}

impl Flags {
    fn read(input: &[u8]) -> (Flags, &[u8]) {
        let [a, b, c, rest @ ..] = input else {
            return (Flags::read(&[0, 0, 0]).0, &[]);
        };
        let flags = Flags {
            eof_at_end: a & 2 != 0,
            http_head: a & 4 != 0,
            timers: a & 8 != 0,
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

/// The client's side of the socket, as far as the server's writes go.
struct Peer {
    reads: bool,
    /// Written and not yet taken by the peer.
    unread: usize,
    written: usize,
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A peer that does not read fills the socket's buffers, then blocks.
        if !self.reads && self.unread > 512 << 10 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.unread += buf.len();
        self.written += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for Peer {
    fn shutdown_write(&mut self) {}
}

fuzz_target!(|input: &[u8]| {
    let (flags, stream) = Flags::read(input);
    let config = Config::default();
    let settings = Settings::new(&config, Duration::from_secs(1));
    let origins = ["https://app.example".to_owned()];
    let policy = UpgradePolicy {
        allowed_origins: if flags.policy & 1 != 0 { &origins } else { &[] },
        auth_secret: (flags.policy & 2 != 0).then_some(SECRET),
        echo_path: (flags.policy & 4 != 0).then_some("/echo"),
        now_unix: 1_000_000,
    };
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);

    let t0 = Instant::now();
    let mut now = t0;
    let mut conn = Connection::new(t0, Wire::Plain, &settings, Duration::from_secs(2));
    let mut peer = Peer { reads: flags.peer_reads, unread: 0, written: 0 };
    let mut max_message = config.max_message;
    let prefix: &[u8] = if flags.http_head { &[] } else { UPGRADE };
    let mut chunks = prefix.chunks(UPGRADE.len()).chain(stream.chunks(flags.chunk));
    let mut timer_writes = 0usize;
    let mut turn = 0usize;
    loop {
        turn += 1;
        let chunk = chunks.next();
        let mut fresh = chunk.unwrap_or_default();
        let mut events = 0;
        while events < MESSAGES_PER_READ {
            let Some(event) = conn.poll_event(&mut fresh, now, &settings, &policy) else { break };
            events += 1;
            match event {
                Event::Opened { entry } => {
                    if let Some(sid) = entry.allowed_sid {
                        assert!(policy.auth_secret.is_some(), "an sId without auth");
                        assert!(!sid.is_empty() && sid.len() <= signaling_server::protocol::MAX_ID_BYTES);
                    }
                    if let Some(room) = entry.room {
                        assert!(signaling_server::transport::is_room_name(&room), "room {room:?}");
                    }
                    if policy.echo_path.is_some() {
                        max_message = max_message.max(config.echo_max_message);
                    }
                }
                Event::Message(message) => assert!(message.len() <= max_message, "message of {}", message.len()),
                Event::RateLimited | Event::Acknowledged { .. } => {}
                // The loop renders the page; here a stand-in answer of the same kind.
                Event::Page { .. } => {
                    let _ = conn.close(Close::Http(Cow::Borrowed(b"HTTP/1.1 200 OK\r\n\r\n")), now, &settings);
                }
                Event::Close(how) => {
                    let _ = conn.close(how, now, &settings);
                }
            }
        }
        conn.keep_unread(fresh);
        if flags.timers {
            now += Duration::from_millis(700);
            let before = conn.held_bytes();
            if let Some(how) = conn.handle_timeout(now, &settings) {
                let _ = conn.close(how, now, &settings);
            }
            timer_writes += usize::from(conn.held_bytes() > before);
        }
        if flags.close_after == Some(turn) {
            let _ = conn.close(Close::Frame(CloseReason::OutputLimit), now, &settings);
        }
        if conn.write_to(&mut peer, now, &settings).is_err() {
            break;
        }
        if flags.peer_reads {
            peer.unread = 0;
        }
        if conn.is_finished() {
            break;
        }
        if chunk.is_none() && events == 0 {
            if flags.eof_at_end
                && let Some(how) = conn.on_eof()
            {
                let _ = conn.close(how, now, &settings);
            }
            break;
        }
        assert!(turn <= input.len() + prefix.len() + 4 * MESSAGES_PER_READ + 8, "no progress");
    }
    drop(conn);

    let grown = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    // A frame payload and a message being assembled may each reach the limit; Vec/BytesMut
    // growth can double them. Everything else is a few KiB.
    let bound = 6 * max_message + (256 << 10);
    assert!(grown <= bound, "serving one connection grew the heap by {grown} bytes (bound {bound})");
    // Pong and close replies are never larger than the ping or close that asked for them;
    // our own pings are 2 bytes, and a response head (101 or a refusal) a few hundred.
    let read = prefix.len() + stream.len();
    let bound = read + 2 * timer_writes + 512;
    assert!(peer.written <= bound, "wrote {} bytes for {read} read", peer.written);
});
