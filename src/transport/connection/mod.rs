//! One connection's whole life as a state machine: bytes and time in; events, bytes to send
//! and the next deadline out. It makes no syscalls and reads no clock, so every timed rule
//! (handshake deadline, liveness, output stall, the soft output limit, close linger, the
//! rate limit) is tested with a fake clock (`tests.rs`); the loop only moves bytes between
//! sockets and machines.
//!
//! ```text
//! Handshake ──(HTTP page / refusal)──────────────► Closing(no ws) ─► Closed
//!     │ (deadline: --handshake-timeout)                   ▲
//!     ▼ valid upgrade: 101 queued                         │
//!   Open ──(close(Frame) / close(Answer))──────► Closing(ws) ─┘
//!     └──(close(Drop): reset, EOF, liveness)─────────────────► Closed
//! ```
//!
//! [`Connection::close`] is the only way out of `Handshake` and `Open`. It reports whether
//! the connection left `Open`, which is when the core must run its *leave* procedure; the
//! transport funnels every close through one place that does so (`Connections::close`).

mod input;
mod output;
#[cfg(test)]
mod tests;
mod wire;

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message, Utf8Bytes};

pub use input::Stash;
pub use output::Flush;
pub use wire::{Sink, Wire};

use super::http::{self, Head, Route, UpgradePolicy};
use super::rate_limit::{RateLimiter, Verdict};
use crate::config::Config;
use crate::metrics::CloseReason;
use input::Pending;
use output::Output;

/// Bytes a frame header adds at most.
const FRAME_OVERHEAD: usize = 14;
/// Bytes tungstenite may add on its own (pongs, close replies) past the output cap. Beyond
/// it tungstenite sees a blocked socket and keeps at most one pending control frame.
const CONTROL_SLACK: usize = 4096;

/// What the machine needs to know of the configuration; one per server, shared by all.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ws: WebSocketConfig,
    /// For connections on the conformance echo path (larger messages).
    pub echo_ws: WebSocketConfig,
    /// Unsent messages allowed (hard limit, client lists not counted): past it, 1008.
    pub max_output: usize,
    /// The echo path's own output bound.
    pub echo_max_output: usize,
    /// Unsent bytes, client lists included, tolerated for `max_output_soft_for`.
    pub max_output_soft: usize,
    pub max_output_soft_for: Duration,
    pub ping_interval: Duration,
    pub handshake_timeout: Duration,
    pub max_request_head: usize,
    /// Commands per second (0: unlimited) and back to back.
    pub rate_limit: f64,
    pub rate_burst: u32,
    /// How long a closing connection may take to acknowledge our close frame.
    pub close_linger: Duration,
}

/// tungstenite's own read buffer per connection, and the most it takes from the input per
/// call. Small on purpose: thousands of idle clients each hold one; sockets are read in
/// large chunks into the loop's single inbox instead.
const READ_BUFFER: usize = 256;

impl Settings {
    /// The machines' share of the configuration.
    pub fn new(config: &Config, close_linger: Duration) -> Settings {
        let ws = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Frames go straight into the connection's own output, never held back.
            .write_buffer_size(0)
            .max_message_size(Some(config.max_message))
            .max_frame_size(Some(config.max_message));
        let echo_ws =
            ws.max_message_size(Some(config.echo_max_message)).max_frame_size(Some(config.echo_max_message));
        Settings {
            ws,
            echo_ws,
            max_output: config.max_output,
            echo_max_output: 2 * config.echo_max_message,
            max_output_soft: config.max_output_soft,
            max_output_soft_for: config.max_output_soft_for,
            ping_interval: config.ping_interval,
            handshake_timeout: config.handshake_timeout,
            max_request_head: config.max_request_head,
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            close_linger,
        }
    }

    /// A connection silent this long is gone; one whose writes take nothing this long is
    /// not reading.
    fn silence_limit(&self) -> Duration {
        self.ping_interval * 2
    }
}

/// How a connection ends.
#[derive(Clone, PartialEq, Eq)]
pub enum Close {
    /// Answer a plain HTTP request (or refuse a bad head) with this response, then close.
    Http(Cow<'static, [u8]>),
    /// Send our close frame for this reason and await the peer's reply briefly.
    Frame(CloseReason),
    /// The peer sent a close frame: send tungstenite's reply, then close.
    Answer,
    /// Gone without a closing handshake: reset, EOF, liveness timeout, write error.
    Drop(CloseReason),
}

impl std::fmt::Debug for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The status line, not a whole page, in the debug log.
            Close::Http(response) => {
                let line = response.split(|&b| b == b'\r').next().unwrap_or_default();
                write!(f, "Http({:?})", String::from_utf8_lossy(line))
            }
            Close::Frame(reason) => write!(f, "Frame({reason:?})"),
            Close::Answer => f.write_str("Answer"),
            Close::Drop(reason) => write!(f, "Drop({reason:?})"),
        }
    }
}

impl Close {
    /// The `reason` label this close is counted under.
    pub fn reason(&self) -> CloseReason {
        match self {
            Close::Http(_) => CloseReason::Http,
            Close::Frame(reason) | Close::Drop(reason) => *reason,
            Close::Answer => CloseReason::ClientClose,
        }
    }
}

/// Whether a close took the connection out of `Open`: the core must then run *leave*.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    Left,
    NotOpen,
}

/// What the transport must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The WebSocket upgrade is done; `allowed_sid` is the one sId a token allows.
    Opened { allowed_sid: Option<String> },
    /// A complete message for the core.
    Message(Bytes),
    /// A command over the rate limit: answer it with error 9500.
    RateLimited,
    /// A plain HTTP request for one of the server's pages: answer with `close(Http(..))`.
    Page { route: Route, head_only: bool },
    /// The connection must end this way (a protocol violation, a close frame, a refusal).
    Close(Close),
}

/// What became of a message queued for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// It would pass the hard output limit; nothing was queued.
    OverLimit,
    /// The connection is not open (handshake, closing or closed).
    NotOpen,
}

/// What became of a client list offered to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListQueued {
    Yes,
    /// An earlier list is partly written; offer the newest again later.
    Busy,
    NotOpen,
}

enum Phase {
    /// Reading the HTTP request head.
    Handshake { head: Vec<u8>, deadline: Instant },
    /// A WebSocket connection serving signaling, or (`echo`) echoing every message back.
    Open { ws: Box<WebSocketContext>, echo: bool },
    /// On the way out: the remaining output is flushed (a close frame, an HTTP response),
    /// incoming data is discarded, and it is over when the peer is done too, or at
    /// `deadline`. `ws` is kept to read the peer's close reply.
    Closing { ws: Option<Box<WebSocketContext>>, deadline: Instant, peer_done: bool, write_shut: bool },
    /// Nothing left to do: the transport drops the socket.
    Closed,
}

pub struct Connection {
    phase: Phase,
    wire: Wire,
    out: Output,
    stash: Stash,
    rate: RateLimiter,
    /// Last time any byte arrived: the liveness rule.
    last_seen: Instant,
    next_ping: Instant,
    /// Since when writes have taken nothing at all while output waits.
    stalled_since: Option<Instant>,
    /// Since when held output (lists included) has been over the soft limit.
    over_soft_since: Option<Instant>,
}

impl Connection {
    /// A just-accepted connection. `first_ping_after` staggers pings across connections
    /// (the transport spreads it over the interval), so they do not all fall in one turn.
    pub fn new(now: Instant, wire: Wire, settings: &Settings, first_ping_after: Duration) -> Self {
        Connection {
            phase: Phase::Handshake { head: Vec::new(), deadline: now + settings.handshake_timeout },
            wire,
            out: Output::default(),
            stash: Stash::default(),
            rate: RateLimiter::new(now, settings.rate_burst),
            last_seen: now,
            next_ping: now + first_ping_after.min(settings.ping_interval),
            stalled_since: None,
            over_soft_since: None,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// Closing or closed: [`close`](Self::close) has been called (or the peer finished).
    pub fn is_ending(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. } | Phase::Closed)
    }

    /// Done: the transport drops the socket.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// There are bytes to write to the socket.
    pub fn wants_write(&self) -> bool {
        !self.is_finished() && (!self.out.is_empty() || self.wire.wants_write())
    }

    /// Input left over from an earlier turn is waiting in the stash (the per-turn budget
    /// ran out). Complete frames may also wait inside tungstenite's small buffer: a
    /// connection that used up its budget is polled again without new bytes either way.
    pub fn has_unread(&self) -> bool {
        !self.stash.is_empty()
    }

    /// Bytes held for this connection: output (client lists included) and unread input.
    pub fn held_bytes(&self) -> usize {
        self.out.held() + self.stash.len() + self.wire.held()
    }

    /// Takes the next event from `fresh` (bytes just read from the socket) and whatever
    /// was left from earlier turns. `None`: nothing more until more bytes arrive. Bytes
    /// left in `fresh` at the end of the turn go to [`keep_unread`](Self::keep_unread).
    pub fn poll_event(
        &mut self,
        fresh: &mut &[u8],
        now: Instant,
        settings: &Settings,
        policy: &UpgradePolicy<'_>,
    ) -> Option<Event> {
        if self.is_finished() {
            // The transport drops the socket; whatever arrived is of no use.
            *fresh = &[];
            return None;
        }
        if !fresh.is_empty() {
            self.last_seen = now;
        }
        let Connection { phase, wire, out, stash, rate, .. } = self;
        let mut pending = Pending { stash, fresh };
        let mut input = wire.plaintext(&mut pending);
        let event = match phase {
            Phase::Handshake { head, .. } => match read_head(head, &mut input, out, settings, policy) {
                Some(Decided::Event(event)) => Some(event),
                Some(Decided::Upgrade { ws, echo, allowed_sid }) => {
                    *phase = Phase::Open { ws, echo };
                    Some(Event::Opened { allowed_sid })
                }
                None => None,
            },
            Phase::Open { ws, echo } => read_messages(ws, *echo, &mut input, out, rate, now, settings),
            Phase::Closing { ws, peer_done, .. } => {
                drain_closing(ws.as_deref_mut(), peer_done, &mut input, out, settings.max_output);
                None
            }
            Phase::Closed => {
                discard(&mut input);
                None
            }
        };
        if event.is_none() && wire.is_broken() && !matches!(phase, Phase::Closing { .. }) {
            // Not TLS, or a TLS violation: nothing more can be read or answered.
            return Some(Event::Close(Close::Drop(CloseReason::ProtocolError)));
        }
        self.finish_if_done();
        event
    }

    /// Keeps what is left of this turn's fresh bytes for the next turn.
    pub fn keep_unread(&mut self, fresh: &[u8]) {
        if !self.is_finished() {
            self.stash.push(fresh);
        }
    }

    /// The socket reached end of file (after everything before it was taken).
    pub fn on_eof(&mut self) -> Option<Close> {
        match &mut self.phase {
            Phase::Handshake { .. } | Phase::Open { .. } => Some(Close::Drop(CloseReason::ConnectionLost)),
            Phase::Closing { peer_done, .. } => {
                *peer_done = true;
                self.finish_if_done();
                None
            }
            Phase::Closed => None,
        }
    }

    /// The one transition out of `Handshake` and `Open`. Closing again is harmless.
    pub fn close(&mut self, how: Close, now: Instant, settings: &Settings) -> Departure {
        let departure = if self.is_open() { Departure::Left } else { Departure::NotOpen };
        let deadline = now + settings.close_linger;
        self.phase = match (std::mem::replace(&mut self.phase, Phase::Closed), how) {
            (Phase::Closed, _) | (_, Close::Drop(_)) => Phase::Closed,
            (closing @ Phase::Closing { .. }, _) => closing,
            (Phase::Handshake { .. }, Close::Http(response)) => {
                self.out.push_raw(&response);
                Phase::Closing { ws: None, deadline, peer_done: false, write_shut: false }
            }
            // Nothing to answer to: a handshake that ends any other way just ends.
            (Phase::Handshake { .. }, Close::Frame(_) | Close::Answer) => Phase::Closed,
            (Phase::Open { mut ws, .. }, Close::Frame(reason)) => {
                let (code, text) = close_frame(reason);
                let frame = CloseFrame { code, reason: Utf8Bytes::from_static(text) };
                let mut input = Pending { stash: &mut self.stash, fresh: &mut &[][..] };
                // An error only means the frame could not be queued; the deadline ends it.
                let _ = ws.close(
                    &mut WsIo { input: &mut input, out: &mut self.out, cap: settings.max_output },
                    Some(frame),
                );
                // After an oversized frame tungstenite still expects that frame's payload:
                // its state is of no use for reading the reply, so the rest is discarded.
                let ws = (reason != CloseReason::MessageTooBig).then_some(ws);
                Phase::Closing { ws, deadline, peer_done: false, write_shut: false }
            }
            (Phase::Open { mut ws, .. }, Close::Answer) => {
                let mut input = Pending { stash: &mut self.stash, fresh: &mut &[][..] };
                // tungstenite queued the close reply when it read the peer's close frame.
                let _ =
                    ws.flush(&mut WsIo { input: &mut input, out: &mut self.out, cap: settings.max_output });
                Phase::Closing { ws: Some(ws), deadline, peer_done: true, write_shut: false }
            }
            (Phase::Open { .. }, Close::Http(_)) => Phase::Closed,
        };
        if self.is_finished() {
            self.out = Output::default();
            self.stash = Stash::default();
        } else {
            self.wire.close_notify();
        }
        departure
    }

    /// Runs the timed rules due at `now`: handshake and close deadlines, liveness, output
    /// stall, the soft output limit, and the next ping. Returns the close a rule calls for.
    pub fn handle_timeout(&mut self, now: Instant, settings: &Settings) -> Option<Close> {
        self.track_output(now, settings);
        match &mut self.phase {
            Phase::Handshake { deadline, .. } if now >= *deadline => {
                Some(Close::Drop(CloseReason::HandshakeTimeout))
            }
            Phase::Closing { deadline, .. } if now >= *deadline => {
                self.phase = Phase::Closed;
                self.out = Output::default();
                None
            }
            Phase::Open { ws, .. } => {
                let silence = settings.silence_limit();
                if now.saturating_duration_since(self.last_seen) >= silence {
                    return Some(Close::Drop(CloseReason::LivenessTimeout));
                }
                // Alive (it pings) but not reading: what it holds, a shared client list
                // included, must not stay pinned forever.
                if self.stalled_since.is_some_and(|since| now.saturating_duration_since(since) >= silence) {
                    return Some(Close::Frame(CloseReason::OutputLimit));
                }
                // Reading, but too slowly for what it is sent.
                if self
                    .over_soft_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= settings.max_output_soft_for)
                {
                    return Some(Close::Frame(CloseReason::OutputSoftLimit));
                }
                if now >= self.next_ping {
                    self.next_ping = now + settings.ping_interval;
                    let mut input = Pending { stash: &mut self.stash, fresh: &mut &[][..] };
                    let mut io = WsIo { input: &mut input, out: &mut self.out, cap: settings.max_output };
                    let _ = ws.write(&mut io, Message::Ping(Bytes::new()));
                }
                None
            }
            _ => None,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do.
    pub fn next_deadline(&self, settings: &Settings) -> Option<Instant> {
        match &self.phase {
            Phase::Handshake { deadline, .. } | Phase::Closing { deadline, .. } => Some(*deadline),
            Phase::Open { .. } => {
                let silence = settings.silence_limit();
                let mut next = self.next_ping.min(self.last_seen + silence);
                if let Some(since) = self.stalled_since {
                    next = next.min(since + silence);
                }
                if let Some(since) = self.over_soft_since {
                    next = next.min(since + settings.max_output_soft_for);
                }
                Some(next)
            }
            Phase::Closed => None,
        }
    }

    /// Queues one text message from the core, unless it would pass the hard output limit.
    pub fn queue_message(&mut self, message: &[u8], now: Instant, settings: &Settings) -> Queued {
        if !self.is_open() {
            return Queued::NotOpen;
        }
        if !self.fits(message.len(), settings) {
            return Queued::OverLimit;
        }
        self.out.push_text(message);
        self.track_output(now, settings);
        Queued::Yes
    }

    /// Whether a message of `len` bytes fits under the hard output limit.
    pub fn fits(&self, len: usize, settings: &Settings) -> bool {
        self.out.unsent_counted() + len + FRAME_OVERHEAD <= settings.max_output
    }

    /// Queues the current client list (shared, not copied); see [`Output::push_list`].
    pub fn queue_list(&mut self, list: &std::rc::Rc<[u8]>, now: Instant, settings: &Settings) -> ListQueued {
        if !self.is_open() {
            return ListQueued::NotOpen;
        }
        if !self.out.push_list(list) {
            return ListQueued::Busy;
        }
        self.track_output(now, settings);
        ListQueued::Yes
    }

    /// Writes what the socket takes. Returns how it went and the bytes written.
    pub fn write_to(
        &mut self,
        sink: &mut impl Sink,
        now: Instant,
        settings: &Settings,
    ) -> io::Result<(Flush, usize)> {
        if self.is_finished() {
            return Ok((Flush::Done, 0));
        }
        let mut sent = 0u64;
        let result = self.wire.write(&mut self.out, sink, &mut sent);
        // A write error ends the connection, but through `close`, like every end.
        let flush = result?;
        let stalled = flush == Flush::Pending && sent == 0;
        self.stalled_since = if stalled { Some(self.stalled_since.unwrap_or(now)) } else { None };
        self.track_output(now, settings);
        if let Phase::Closing { write_shut, .. } = &mut self.phase
            && flush == Flush::Done
            && !*write_shut
        {
            // Everything we will ever send is out: say so, and wait for the peer's end.
            *write_shut = true;
            sink.shutdown_write();
        }
        self.finish_if_done();
        Ok((flush, sent as usize))
    }

    fn finish_if_done(&mut self) {
        if let Phase::Closing { peer_done: true, .. } = self.phase
            && self.out.is_empty()
            && !self.wire.wants_write()
        {
            self.phase = Phase::Closed;
        }
    }

    /// Starts or stops the soft-limit clock.
    fn track_output(&mut self, now: Instant, settings: &Settings) {
        if self.out.held() + self.wire.held() > settings.max_output_soft {
            self.over_soft_since.get_or_insert(now);
        } else {
            self.over_soft_since = None;
        }
    }
}

/// How a complete request head is answered.
enum Decided {
    Event(Event),
    Upgrade { ws: Box<WebSocketContext>, echo: bool, allowed_sid: Option<String> },
}

/// Reads the HTTP request head; decides once it is complete (or too large).
fn read_head(
    head: &mut Vec<u8>,
    input: &mut dyn Read,
    out: &mut Output,
    settings: &Settings,
    policy: &UpgradePolicy<'_>,
) -> Option<Decided> {
    let max_head = settings.max_request_head;
    let mut chunk = [0u8; 2048];
    loop {
        let room = (max_head - head.len()).min(chunk.len());
        let n = match input.read(&mut chunk[..room]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let full = head.len() >= max_head;
        // Parse only once the blank line that ends a head may be there: a client that
        // trickles bytes costs a scan of what it sent, not a parse per byte.
        let ends = head[searched_from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r");
        if !ends && !full {
            continue;
        }
        return match http::read_head(head, full, policy) {
            Head::Partial => continue,
            Head::Respond(response) => {
                Some(Decided::Event(Event::Close(Close::Http(Cow::Borrowed(response)))))
            }
            Head::Page { route, head_only } => Some(Decided::Event(Event::Page { route, head_only })),
            Head::Upgrade { response, head_len, echo, allowed_sid } => {
                out.push_raw(response.as_bytes());
                let early_frames = head.get(head_len..).unwrap_or_default().to_vec();
                let config = if echo { settings.echo_ws } else { settings.ws };
                let ws = WebSocketContext::from_partially_read(early_frames, Role::Server, Some(config));
                Some(Decided::Upgrade { ws: Box::new(ws), echo, allowed_sid })
            }
        };
    }
}

/// Reads WebSocket frames until a message for the core, a close, or no more input.
fn read_messages(
    ws: &mut WebSocketContext,
    echo: bool,
    input: &mut dyn Read,
    out: &mut Output,
    rate: &mut RateLimiter,
    now: Instant,
    settings: &Settings,
) -> Option<Event> {
    let cap = if echo { settings.echo_max_output } else { settings.max_output };
    loop {
        let message = match ws.read(&mut WsIo { input, out, cap }) {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => return Some(Event::Close(close_for(&e))),
        };
        let (bytes, text) = match message {
            Message::Text(text) => (Bytes::from(text), true),
            Message::Binary(bytes) => (bytes, false),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => return Some(Event::Close(Close::Answer)),
        };
        if !echo {
            return Some(admit(rate, now, settings, bytes));
        }
        if !echo_back(out, &bytes, text, cap) {
            return Some(Event::Close(Close::Frame(CloseReason::OutputLimit)));
        }
    }
}

/// A command passes the rate limiter, or becomes what the limiter calls for.
fn admit(rate: &mut RateLimiter, now: Instant, settings: &Settings, message: Bytes) -> Event {
    match rate.check(now, settings.rate_limit, settings.rate_burst) {
        Verdict::Allow => Event::Message(message),
        Verdict::Drop => Event::RateLimited,
        Verdict::Disconnect => Event::Close(Close::Frame(CloseReason::RateLimit)),
    }
}

/// The conformance echo path: the message goes back as it came. `false`: over the cap.
fn echo_back(out: &mut Output, message: &[u8], text: bool, cap: usize) -> bool {
    if out.unsent_counted() + message.len() > cap {
        return false;
    }
    if text {
        out.push_text(message);
    } else {
        out.push_binary(message);
    }
    true
}

/// A closing connection: discard what the peer still sends, notice when it is done.
fn drain_closing(
    ws: Option<&mut WebSocketContext>,
    peer_done: &mut bool,
    input: &mut dyn Read,
    out: &mut Output,
    cap: usize,
) {
    let Some(ws) = ws else { return discard(input) };
    while !*peer_done {
        match ws.read(&mut WsIo { input, out, cap }) {
            Ok(Message::Close(_)) => *peer_done = true,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => *peer_done = true,
        }
    }
    discard(input);
}

fn discard(input: &mut dyn Read) {
    let mut sink = [0u8; 1024];
    while matches!(input.read(&mut sink), Ok(n) if n > 0) {}
}

/// What tungstenite reads from and writes to. Writes go into the connection's output, so
/// frames tungstenite makes (pongs, close frames) and frames the core's messages become can
/// never interleave mid-frame.
struct WsIo<'a> {
    input: &'a mut dyn Read,
    out: &'a mut Output,
    cap: usize,
}

impl Read for WsIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
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

/// How a read error ends a connection (RFC 6455 close codes).
fn close_for(error: &tungstenite::Error) -> Close {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_)
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Close::Drop(CloseReason::ConnectionLost)
        }
        tungstenite::Error::Capacity(_) => Close::Frame(CloseReason::MessageTooBig),
        tungstenite::Error::Utf8(_) => Close::Frame(CloseReason::InvalidUtf8),
        _ => Close::Frame(CloseReason::ProtocolError),
    }
}

/// The close frame the server sends for a reason it closes a connection for.
pub fn close_frame(reason: CloseReason) -> (CloseCode, &'static str) {
    match reason {
        CloseReason::MessageTooBig => (CloseCode::Size, "message too big"),
        CloseReason::OutputLimit => (CloseCode::Policy, "output limit exceeded: not reading"),
        CloseReason::OutputSoftLimit => (CloseCode::Policy, "output limit exceeded: reading too slowly"),
        CloseReason::RateLimit => (CloseCode::Policy, "rate limit exceeded, repeatedly"),
        CloseReason::InvalidUtf8 => (CloseCode::Invalid, "invalid UTF-8 in a text message"),
        CloseReason::Shutdown => (CloseCode::Away, "server shutting down"),
        _ => (CloseCode::Protocol, "WebSocket protocol violation"),
    }
}
