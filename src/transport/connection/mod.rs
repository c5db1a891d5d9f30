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
//!
//! This file is the machine and its phases. Around it: `handshake` (the HTTP request head),
//! `websocket` (frames to events, the echo path, close codes), `input` (the stash), `output`
//! (the bounded queue), `wire` (plain or TLS underneath), `settings`.

mod handshake;
mod input;
mod output;
mod settings;
#[cfg(test)]
mod tests;
mod websocket;
mod wire;

use std::borrow::Cow;
use std::io;
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocketContext;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::{Bytes, Message, Utf8Bytes};

pub use input::Stash;
pub use output::Flush;
pub use settings::Settings;
pub use websocket::close_frame;
pub use wire::{Sink, Wire};

use super::http::{Entry, Route, UpgradePolicy};
use super::rate_limit::RateLimiter;
use crate::metrics::CloseReason;
use handshake::{Decided, read_head};
use input::Pending;
use output::Output;
use websocket::{WsIo, discard, drain_closing, read_messages};

/// Bytes a frame header adds at most.
const FRAME_OVERHEAD: usize = 14;
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
    /// The WebSocket upgrade is done, into a room and with what a token allows.
    Opened { entry: Entry },
    /// A complete message for the core.
    Message(Bytes),
    /// A command over the rate limit: answer it with error 9500.
    RateLimited,
    /// A pong answered a ping sent after the first `messages` messages were queued: the
    /// client has read them all.
    Acknowledged { messages: u64 },
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
    peer: Peer,
    /// Last time any byte arrived: the liveness rule.
    last_seen: Instant,
    next_ping: Instant,
    /// Since when writes have taken nothing at all while output waits.
    stalled_since: Option<Instant>,
    /// Since when held output (lists included) has been over the soft limit.
    over_soft_since: Option<Instant>,
    /// Until when the replay after a resume does not count against the soft limit: long
    /// enough to drain on a slow link, too short to pin it.
    replay_exempt_until: Option<Instant>,
}

/// What the machine tracks of the client's side of the conversation.
pub(super) struct Peer {
    /// How fast it sends commands.
    pub rate: RateLimiter,
    /// How much of what it was sent it has read.
    pub receipts: Receipts,
}

/// Which of the core's messages the client has read. Each ping carries the count of
/// messages queued before it; its pong proves they were all read (the ping came after them
/// on the same stream).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Receipts {
    /// Messages (lists included) queued so far.
    pub queued: u64,
    /// The highest count a pong has confirmed.
    pub acknowledged: u64,
}

impl Receipts {
    /// The ping payload for the messages queued so far.
    fn ping_payload(&self) -> [u8; 8] {
        self.queued.to_be_bytes()
    }

    /// A pong with `payload`: the count it confirms, if it is one of ours and news. A pong
    /// the client made up can only confirm messages that were queued, which costs only the
    /// client that lies (it loses their replay).
    pub fn confirm(&mut self, payload: &[u8]) -> Option<u64> {
        let count = u64::from_be_bytes(payload.try_into().ok()?);
        if count <= self.acknowledged || count > self.queued {
            return None;
        }
        self.acknowledged = count;
        Some(count)
    }
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
            peer: Peer { rate: RateLimiter::new(now, settings.rate_burst), receipts: Receipts::default() },
            last_seen: now,
            next_ping: now + first_ping_after.min(settings.ping_interval),
            stalled_since: None,
            over_soft_since: None,
            replay_exempt_until: None,
        }
    }

    /// Messages (client lists included) queued so far: the scale of
    /// [`Event::Acknowledged`].
    pub fn messages_queued(&self) -> u64 {
        self.peer.receipts.queued
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
        let Connection { phase, wire, out, stash, peer, .. } = self;
        let mut pending = Pending { stash, fresh };
        let mut input = wire.plaintext(&mut pending);
        let event = match phase {
            Phase::Handshake { head, .. } => match read_head(head, &mut input, out, settings, policy) {
                Some(Decided::Event(event)) => Some(event),
                Some(Decided::Upgrade { ws, echo, entry }) => {
                    *phase = Phase::Open { ws, echo };
                    Some(Event::Opened { entry })
                }
                None => None,
            },
            Phase::Open { ws, echo } => read_messages(ws, *echo, &mut input, out, peer, now, settings),
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
            (Phase::Open { mut ws, echo }, Close::Frame(reason)) => {
                if reason == CloseReason::TakenOver {
                    // What this connection has not started to send reaches the client
                    // through the replay on the connection that took over; sent here too,
                    // it could arrive twice (an old path that still works).
                    self.out.discard_unstarted();
                }
                let cap = settings.output_cap(echo);
                let (code, text) = close_frame(reason);
                let frame = CloseFrame { code, reason: Utf8Bytes::from_static(text) };
                let mut input = Pending { stash: &mut self.stash, fresh: &mut &[][..] };
                // An error only means the frame could not be queued; the deadline ends it.
                let _ = ws.close(&mut WsIo { input: &mut input, out: &mut self.out, cap }, Some(frame));
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
            Phase::Open { ws, echo } => {
                let cap = settings.output_cap(*echo);
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
                    let mut io = WsIo { input: &mut input, out: &mut self.out, cap };
                    let payload = Bytes::copy_from_slice(&self.peer.receipts.ping_payload());
                    let _ = ws.write(&mut io, Message::Ping(payload));
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
                if let Some(until) = self.replay_exempt_until.filter(|_| self.out.unsent_replay() > 0) {
                    next = next.min(until);
                }
                Some(next)
            }
            Phase::Closed => None,
        }
    }

    /// Queues one text message from the core, unless it would pass the hard output limit.
    /// `replay`: part of the replay after a resume, which the core has bounded instead; it
    /// counts against neither limit, so the messages after it are judged on their own.
    pub fn queue_message(
        &mut self,
        message: &[u8],
        replay: bool,
        now: Instant,
        settings: &Settings,
    ) -> Queued {
        if !self.is_open() {
            return Queued::NotOpen;
        }
        if replay {
            self.replay_exempt_until.get_or_insert(now + settings.max_output_soft_for);
            self.out.push_replay(message);
        } else if self.fits(message.len(), settings) {
            self.out.push_text(message);
        } else {
            return Queued::OverLimit;
        }
        self.peer.receipts.queued += 1;
        self.track_output(now, settings);
        Queued::Yes
    }

    /// Whether a message of `len` bytes fits under the hard output limit.
    pub fn fits(&self, len: usize, settings: &Settings) -> bool {
        self.out.unsent_counted() + len + FRAME_OVERHEAD <= settings.max_output
    }

    /// Queues the current client list (shared, not copied); see [`Output::push_list`].
    /// `may_withdraw`: an unsent earlier list may be withdrawn (not for a client that
    /// counts its messages).
    pub fn queue_list(
        &mut self,
        list: &std::rc::Rc<[u8]>,
        may_withdraw: bool,
        now: Instant,
        settings: &Settings,
    ) -> ListQueued {
        if !self.is_open() {
            return ListQueued::NotOpen;
        }
        if !self.out.push_list(list, may_withdraw) {
            return ListQueued::Busy;
        }
        self.peer.receipts.queued += 1;
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
        // Output only: what a TLS wire holds of incoming records is input, like the stash.
        let exempt = match self.replay_exempt_until {
            Some(until) if now < until => self.out.unsent_replay(),
            _ => 0,
        };
        let held = self.out.held() - exempt + self.wire.held_output();
        if held > settings.max_output_soft {
            self.over_soft_since.get_or_insert(now);
        } else {
            self.over_soft_since = None;
        }
    }
}
