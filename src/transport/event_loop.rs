//! The mio poll loop: one thread, every socket, no locks.
//!
//! A turn: wait for readiness (or the next timer), then
//! 1. accept, read and parse; every complete message goes to the core at once;
//! 2. run timers (liveness, handshake and close deadlines, pings) when due;
//! 3. let the core deliver owed client lists, within its pacing budget;
//! 4. carry out the closes decided meanwhile (running the core's *leave* procedure);
//! 5. write every connection that has output, once, and ask for WRITABLE only where the
//!    socket would block.
//!
//! Work per turn is bounded: at most [`MESSAGES_PER_READ`] messages per connection (the
//! rest waits for the next turn, which then does not sleep), and the core bounds its
//! client-list work itself. One busy client therefore cannot stall the others.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::SystemTime;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use smallvec::SmallVec;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message, Utf8Bytes};

use super::connection::{Connection, Inbox, Input, Phase, WsIo};
use super::connections::{Connections, Doom, close_frame};
use super::http::{self, Head, Route, UpgradePolicy};
use super::output::Flush;
use super::rate_limit::{RateLimiter, Verdict};
use crate::config::Config;
use crate::metrics::{CloseReason, Metrics};
use crate::protocol::ErrorCode;
use crate::signaling::{ConnId, Signaling};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// Messages read from one connection before the loop moves on to others.
const MESSAGES_PER_READ: usize = 32;
/// Connections accepted per turn; more wait for the next turn (which does not sleep), so a
/// connection flood cannot hold up the clients already connected.
const ACCEPTS_PER_TURN: usize = 256;
/// How long a closing connection may take to acknowledge our close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// After EMFILE and friends, accepting pauses this long instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// tungstenite's own read buffer per connection, and the most it takes from the inbox per
/// call. Small on purpose: thousands of idle clients each hold one; the socket is read in
/// large chunks into the loop's single inbox instead.
const READ_BUFFER: usize = 256;
/// The loop's one socket read buffer (see `Inbox`).
const INBOX_SIZE: usize = 64 << 10;

/// The demo page and the JavaScript client, built into the binary.
const DEMO_PAGE: &str = include_str!("../../web/index.html");
const CLIENT_JS: &str = include_str!("../../web/client.js");

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    event_loop: EventLoop,
    local_addr: SocketAddr,
}

impl Server {
    /// Binds the listener and installs the SIGINT/SIGTERM handlers.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Frames go straight into our own output buffer (see `WsIo`), never held back.
            .write_buffer_size(0)
            .max_message_size(Some(config.max_message))
            .max_frame_size(Some(config.max_message));
        let echo_ws_config = ws_config
            .max_message_size(Some(config.echo_max_message))
            .max_frame_size(Some(config.echo_max_message));
        let now = Instant::now();
        let event_loop = EventLoop {
            echo_ws_config,
            per_ip: HashMap::new(),
            conns: Connections::new(config.max_output),
            core: Signaling::new(config.client_list),
            tick: housekeeping_tick(&config),
            next_tick: now,
            next_ping: now + config.ping_interval,
            config,
            ws_config,
            poll,
            listener: Some(listener),
            signals,
            read_again: Vec::new(),
            inbox: Inbox::new(INBOX_SIZE),
            metrics: Metrics::default(),
            accept_paused_until: None,
            accept_more: false,
            shutdown_deadline: None,
        };
        Ok(Server { event_loop, local_addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until SIGINT or SIGTERM, then closes every connection with 1001 and returns
    /// once they are flushed or the shutdown grace period has passed.
    pub fn run(mut self) -> io::Result<()> {
        info!("serving on {}", self.local_addr);
        self.event_loop.run()
    }
}

/// How often timers are checked: often enough that deadlines are met within a quarter of
/// the shortest one, never more than every 250 ms nor less than every 5 ms.
fn housekeeping_tick(config: &Config) -> Duration {
    (config.ping_interval.min(config.handshake_timeout) / 4)
        .clamp(Duration::from_millis(5), Duration::from_millis(250))
}

struct EventLoop {
    config: Config,
    ws_config: WebSocketConfig,
    echo_ws_config: WebSocketConfig,
    /// Open connections per source address, for `--max-connections-per-ip`.
    per_ip: HashMap<IpAddr, u32>,
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    conns: Connections,
    core: Signaling,
    /// Connections that hit `MESSAGES_PER_READ` and still have data.
    read_again: Vec<ConnId>,
    inbox: Inbox,
    metrics: Metrics,
    accept_paused_until: Option<Instant>,
    /// The listener had more connections than `ACCEPTS_PER_TURN`.
    accept_more: bool,
    tick: Duration,
    next_tick: Instant,
    next_ping: Instant,
    shutdown_deadline: Option<Instant>,
}

impl EventLoop {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let mut wake = self.next_tick;
            // Asked after everything of the last turn, closes included (they change the list).
            if let Some(due) = self.core.client_list_due()
                && self.shutdown_deadline.is_none()
            {
                wake = wake.min(due);
            }
            if let Some(deadline) = self.shutdown_deadline {
                wake = wake.min(deadline);
            }
            let timeout =
                if self.read_again.is_empty() { wake.saturating_duration_since(now) } else { Duration::ZERO };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            let turn_started = now;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => self.on_signal(now),
                    Token(token) => {
                        let key = token - FIRST_CONNECTION;
                        let Some(id) = self.conns.id_of(key) else { continue };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(id, now);
                        }
                        if event.is_writable() {
                            self.conns.queue_flush(id);
                        }
                    }
                }
            }
            if std::mem::take(&mut self.accept_more) {
                self.accept(now);
            }
            for id in std::mem::take(&mut self.read_again) {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.read_queued = false;
                    self.on_readable(id, now);
                }
            }
            if now >= self.next_tick {
                self.housekeeping(now);
            }
            if self.shutdown_deadline.is_none() {
                self.core.poll_client_list(now, &mut self.conns);
                self.settle(now);
            }
            self.flush_dirty(now);
            self.metrics.turn(turn_started.elapsed());
            if let Some(deadline) = self.shutdown_deadline
                && (self.conns.slab.is_empty() || now >= deadline)
            {
                info!("shut down; {} connection(s) cut at the deadline", self.conns.slab.len());
                return Ok(());
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| now < until) {
            return;
        }
        self.accept_paused_until = None;
        let Some(listener) = self.listener.as_mut() else { return };
        for _ in 0..ACCEPTS_PER_TURN {
            let (mut socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) =>
                {
                    continue;
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: keep serving who we have, retry later.
                    warn!("accept failed ({e}); pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            };
            let from_peer = self.per_ip.get(&peer.ip()).copied().unwrap_or(0) as usize;
            let per_ip_cap = self.config.max_connections_per_ip;
            if self.conns.slab.len() >= self.config.max_connections
                || (per_ip_cap > 0 && from_peer >= per_ip_cap)
            {
                debug!("refusing {peer}: {} connections open, {from_peer} from it", self.conns.slab.len());
                self.metrics.connections_refused += 1;
                // Best effort: a fresh socket's send buffer takes this small response.
                let _ = socket.write(http::SERVICE_UNAVAILABLE);
                continue;
            }
            let _ = socket.set_nodelay(true);
            let generation = self.conns.next_generation();
            let entry = self.conns.slab.vacant_entry();
            let token = Token(entry.key() + FIRST_CONNECTION);
            if let Err(e) = self.poll.registry().register(&mut socket, token, Interest::READABLE) {
                warn!("cannot register {peer}: {e}");
                continue;
            }
            debug!("accepted {peer} as {}", entry.key());
            self.metrics.connections_accepted += 1;
            *self.per_ip.entry(peer.ip()).or_default() += 1;
            entry.insert(Connection {
                socket,
                peer: peer.ip(),
                rate: RateLimiter::new(now, self.config.rate_burst),
                generation,
                phase: Phase::Handshake { head: Vec::new(), deadline: now + self.config.handshake_timeout },
                out: Default::default(),
                interest: Interest::READABLE,
                flush_queued: false,
                read_queued: false,
                doomed: false,
                write_shut: false,
                stash: Default::default(),
                output_stalled_since: None,
            });
        }
        // The turn's share is used up; the rest are accepted next turn.
        self.accept_more = true;
    }

    fn on_signal(&mut self, now: Instant) {
        let mut stop = false;
        for signal in self.signals.pending() {
            stop |= signal == SIGINT || signal == SIGTERM;
        }
        if stop && self.shutdown_deadline.is_none() {
            self.begin_shutdown(now);
        }
    }

    fn on_readable(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        match conn.phase {
            // A doomed connection is read again only once `settle` has moved it on.
            _ if conn.doomed && !matches!(conn.phase, Phase::Closing { .. }) => {}
            Phase::Handshake { .. } => self.read_handshake(id, now),
            Phase::Open { .. } => self.read_messages(id, now),
            Phase::Closing { .. } => self.drain_closing(id),
        }
    }

    fn read_handshake(&mut self, id: ConnId, now: Instant) {
        let max_head = self.config.max_request_head;
        let now_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let policy = UpgradePolicy {
            allowed_origins: &self.config.allowed_origins,
            auth_secret: self.config.auth_secret.as_deref(),
            echo_path: self.config.echo_path.as_deref(),
            now_unix,
        };
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Handshake { head, .. } = &mut conn.phase else { return };
        let mut chunk = [0u8; 2048];
        let decision = loop {
            let room = (max_head - head.len()).min(chunk.len());
            let n = match conn.socket.read(&mut chunk[..room]) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break None,
            };
            self.metrics.bytes_received += n as u64;
            let searched_from = head.len().saturating_sub(3);
            head.extend_from_slice(&chunk[..n]);
            let full = head.len() >= max_head;
            // Parse only once the blank line that ends a head may be there: a client that
            // trickles bytes costs a scan of what it sent, not a parse per byte.
            let ends = head[searched_from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r");
            if ends || full {
                match http::read_head(head, full, &policy) {
                    Head::Partial => {}
                    decided => break Some(decided),
                }
            }
        };
        match decision {
            None => {
                self.metrics.closed(CloseReason::ConnectionLost);
                self.remove(id);
            }
            Some(Head::Respond(response)) => self.respond(id, response, now),
            Some(Head::Page { route, head_only }) => {
                let response = self.page(route, head_only);
                self.respond(id, &response, now);
            }
            Some(Head::Upgrade { response, head_len, echo, allowed_sid }) => {
                let early_frames = head.get(head_len..).unwrap_or_default().to_vec();
                conn.out.push_raw(response.as_bytes());
                let config = if echo { self.echo_ws_config } else { self.ws_config };
                let ws = WebSocketContext::from_partially_read(early_frames, Role::Server, Some(config));
                conn.phase = Phase::Open { ws: Box::new(ws), last_seen: now, echo };
                if let Some(sid) = allowed_sid {
                    self.core.restrict_sid(id, &sid);
                }
                self.conns.queue_flush(id);
                self.read_messages(id, now);
            }
            Some(Head::Partial) => {}
        }
    }

    /// Answers a plain HTTP request and closes the connection once the answer is out.
    fn respond(&mut self, id: ConnId, response: &[u8], now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.out.push_raw(response);
        conn.phase = Phase::Closing { ws: None, deadline: now + CLOSE_LINGER, peer_done: false };
        self.conns.queue_flush(id);
        self.metrics.closed(CloseReason::Http);
    }

    fn page(&self, route: Route, head_only: bool) -> Vec<u8> {
        match route {
            Route::Index => http::ok("text/html; charset=utf-8", DEMO_PAGE.as_bytes(), head_only),
            Route::ClientJs => http::ok("text/javascript; charset=utf-8", CLIENT_JS.as_bytes(), head_only),
            Route::Health => http::ok("text/plain; charset=utf-8", b"ok\n", head_only),
            Route::Metrics => {
                let body =
                    self.metrics.render(&self.core.stats(), &self.core.counters(), self.conns.slab.len());
                http::ok("text/plain; version=0.0.4; charset=utf-8", body.as_bytes(), head_only)
            }
        }
    }

    fn read_messages(&mut self, id: ConnId, now: Instant) {
        self.read_messages_from_inbox(id, now);
        self.stash_leftover(id);
    }

    /// Bytes of `id` still in the loop's inbox move to the connection's own stash (or are
    /// dropped with it), so the inbox is free for the next connection.
    fn stash_leftover(&mut self, id: ConnId) {
        let leftover = self.inbox.take_leftover();
        if !leftover.is_empty()
            && let Some(conn) = self.conns.get_mut(id)
            && !conn.doomed
        {
            conn.stash.push(leftover);
        }
    }

    fn read_messages_from_inbox(&mut self, id: ConnId, now: Instant) {
        let mut drained = false;
        for _ in 0..MESSAGES_PER_READ {
            let Some(conn) = self.conns.get_mut(id) else { return };
            if conn.doomed {
                return;
            }
            let Connection { socket, out, phase, stash, .. } = conn;
            let Phase::Open { ws, last_seen, echo } = phase else { return };
            let echo = *echo;
            let cap = if echo { 2 * self.config.echo_max_message } else { self.config.max_output };
            let mut io = WsIo::reading(socket, out, cap, Input { inbox: &mut self.inbox, stash });
            io.drained = drained;
            let result = ws.read(&mut io);
            drained = io.drained;
            if io.received > 0 {
                *last_seen = now;
                self.metrics.bytes_received += io.received as u64;
            }
            if !out.is_empty() {
                self.conns.queue_flush(id);
            }
            match result {
                Ok(Message::Text(text)) if echo => self.echo(id, text.as_bytes(), true, now),
                Ok(Message::Binary(bytes)) if echo => self.echo(id, &bytes, false, now),
                Ok(Message::Text(text)) => self.deliver(id, text.as_bytes(), now),
                Ok(Message::Binary(bytes)) => self.deliver(id, &bytes, now),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => return self.end(id, Doom::PeerClosed, now),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.end(id, doom_for(&e), now),
            }
        }
        if let Some(conn) = self.conns.get_mut(id)
            && !conn.read_queued
        {
            conn.read_queued = true;
            self.read_again.push(id);
        }
    }

    fn deliver(&mut self, id: ConnId, message: &[u8], now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        match conn.rate.check(now, self.config.rate_limit, self.config.rate_burst) {
            Verdict::Allow => self.core.handle_message(id, message, now, &mut self.conns),
            Verdict::Drop => self.core.refuse(id, ErrorCode::RateLimited, &mut self.conns),
            Verdict::Disconnect => self.conns.doom(id, Doom::Close(CloseReason::RateLimit)),
        }
        self.settle(now);
    }

    /// The conformance echo path: the message goes back as it came, text or binary.
    fn echo(&mut self, id: ConnId, message: &[u8], text: bool, now: Instant) {
        let cap = 2 * self.config.echo_max_message;
        let Some(conn) = self.conns.get_mut(id) else { return };
        if conn.out.unsent_counted() + message.len() > cap {
            return self.end(id, Doom::Close(CloseReason::OutputLimit), now);
        }
        if text {
            conn.out.push_text(message);
        } else {
            conn.out.push_binary(message);
        }
        self.conns.queue_flush(id);
    }

    fn end(&mut self, id: ConnId, doom: Doom, now: Instant) {
        self.conns.doom(id, doom);
        self.settle(now);
    }

    /// A closing connection: discard what it still sends, notice when it is done.
    fn drain_closing(&mut self, id: ConnId) {
        let cap = self.config.max_output;
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Connection { socket, out, phase, stash, .. } = conn;
        let Phase::Closing { ws, peer_done, .. } = phase else { return };
        let mut more_to_read = true;
        for _ in 0..MESSAGES_PER_READ {
            let done = match ws {
                Some(ws) => match ws.read(&mut WsIo::reading(
                    socket,
                    out,
                    cap,
                    Input { inbox: &mut self.inbox, stash },
                )) {
                    Ok(Message::Close(_)) => true,
                    Ok(_) => false,
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        more_to_read = false;
                        break;
                    }
                    Err(_) => true,
                },
                None => {
                    let mut sink = [0u8; 1024];
                    match socket.read(&mut sink) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            more_to_read = false;
                            break;
                        }
                        Err(_) => true,
                    }
                }
            };
            if done {
                *peer_done = true;
                more_to_read = false;
                break;
            }
        }
        if more_to_read && !conn.read_queued {
            conn.read_queued = true;
            self.read_again.push(id);
        }
        self.stash_leftover(id);
        self.conns.queue_flush(id);
        self.finish_if_closed(id);
    }

    /// Carries out every close decided so far. Closing a registered client runs the core's
    /// leave procedure, which may decide more closes (an opponent over its output cap).
    fn settle(&mut self, now: Instant) {
        while let Some((id, doom)) = self.conns.doomed.pop() {
            let Some(conn) = self.conns.get_mut(id) else { continue };
            let was_open = conn.is_open();
            debug!("closing {}: {doom:?}", id.index());
            self.metrics.closed(doom.reason());
            match doom {
                Doom::Drop(_) => self.remove(id),
                Doom::PeerClosed => {
                    let Connection { socket, out, phase, .. } = conn;
                    if let Phase::Open { mut ws, .. } = std::mem::replace(phase, placeholder(now)) {
                        // tungstenite queued the close reply internally; move it to our output.
                        let _ = ws.flush(&mut WsIo::new(socket, out, self.config.max_output));
                        *phase =
                            Phase::Closing { ws: Some(ws), deadline: now + CLOSE_LINGER, peer_done: true };
                    }
                    self.conns.queue_flush(id);
                }
                Doom::Close(reason) => self.send_close(id, reason, now + CLOSE_LINGER),
            }
            if was_open {
                self.core.disconnect(id, now, &mut self.conns);
            }
        }
    }

    /// Queues a close frame on an open connection and moves it to `Closing`.
    fn send_close(&mut self, id: ConnId, why: CloseReason, deadline: Instant) {
        let (code, reason) = close_frame(why);
        let cap = self.config.max_output;
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Connection { socket, out, phase, .. } = conn;
        if let Phase::Open { mut ws, .. } = std::mem::replace(phase, placeholder(deadline)) {
            let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
            // Errors here only mean the frame could not be queued; the deadline still ends it.
            let _ = ws.close(&mut WsIo::new(socket, out, cap), Some(frame));
            // After an oversized frame tungstenite still expects that frame's payload: its
            // state is of no use for reading the close reply, so the rest is drained raw.
            let ws = (why != CloseReason::MessageTooBig).then_some(ws);
            *phase = Phase::Closing { ws, deadline, peer_done: false };
        }
        self.conns.queue_flush(id);
    }

    fn housekeeping(&mut self, now: Instant) {
        self.next_tick = now + self.tick;
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept(now);
        }
        let silent_limit = self.config.ping_interval * 2;
        let ping = now >= self.next_ping;
        if ping {
            self.next_ping = now + self.config.ping_interval;
        }
        let cap = self.config.max_output;
        // Usually empty: a tick that finds nothing expired allocates nothing.
        let mut expired: SmallVec<[(ConnId, bool); 8]> = SmallVec::new();
        let mut dooms: SmallVec<[(ConnId, Doom); 8]> = SmallVec::new();
        for (key, conn) in self.conns.slab.iter_mut() {
            let id = ConnId::new(key as u32, conn.generation);
            let stalled_since = conn.output_stalled_since;
            let Connection { socket, out, phase, .. } = conn;
            match phase {
                Phase::Handshake { deadline, .. } if now >= *deadline => expired.push((id, true)),
                Phase::Closing { deadline, .. } if now >= *deadline => expired.push((id, false)),
                Phase::Open { last_seen, .. } if now.duration_since(*last_seen) >= silent_limit => {
                    dooms.push((id, Doom::Drop(CloseReason::LivenessTimeout)));
                }
                // Alive (it pings) but not reading: what it holds queued, a shared client
                // list included, must not stay pinned forever.
                Phase::Open { .. }
                    if stalled_since.is_some_and(|since| now.duration_since(since) >= silent_limit) =>
                {
                    dooms.push((id, Doom::Close(CloseReason::OutputLimit)));
                }
                Phase::Open { ws, .. } if ping && self.shutdown_deadline.is_none() => {
                    let _ = ws.write(&mut WsIo::new(socket, out, cap), Message::Ping(Bytes::new()));
                    if !conn.flush_queued {
                        conn.flush_queued = true;
                        self.conns.dirty.push(id);
                    }
                }
                _ => {}
            }
        }
        for (id, in_handshake) in expired {
            debug!("deadline passed for {}", id.index());
            if in_handshake {
                self.metrics.closed(CloseReason::HandshakeTimeout);
            }
            self.remove(id);
        }
        for (id, doom) in dooms {
            self.conns.doom(id, doom);
        }
        self.settle(now);
    }

    fn flush_dirty(&mut self, now: Instant) {
        while !self.conns.dirty.is_empty() {
            for id in std::mem::take(&mut self.conns.dirty) {
                self.flush(id, now);
            }
            self.settle(now);
        }
    }

    fn flush(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        conn.flush_queued = false;
        let sent_before = self.metrics.bytes_sent;
        let result = conn.out.write_to(&mut conn.socket, &mut self.metrics.bytes_sent);
        let stalled = matches!(result, Ok(Flush::Pending)) && self.metrics.bytes_sent == sent_before;
        conn.output_stalled_since =
            if stalled { Some(conn.output_stalled_since.unwrap_or(now)) } else { None };
        let wanted = match result {
            Ok(Flush::Done) => Interest::READABLE,
            Ok(Flush::Pending) => Interest::READABLE | Interest::WRITABLE,
            Err(_) => {
                if conn.is_open() {
                    self.conns.doom(id, Doom::Drop(CloseReason::ConnectionLost));
                } else {
                    self.remove(id);
                }
                return;
            }
        };
        if conn.interest != wanted {
            let token = Token(id.index() + FIRST_CONNECTION);
            if self.poll.registry().reregister(&mut conn.socket, token, wanted).is_ok() {
                conn.interest = wanted;
            }
        }
        self.finish_if_closed(id);
    }

    /// A closing connection whose output is out: half-close our side, and drop it once
    /// the peer is done too.
    fn finish_if_closed(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else { return };
        let Phase::Closing { peer_done, .. } = conn.phase else { return };
        if !conn.out.is_empty() {
            return;
        }
        if peer_done {
            self.remove(id);
        } else if !conn.write_shut {
            conn.write_shut = true;
            let _ = conn.socket.shutdown(Shutdown::Write);
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        let deadline = now + self.config.shutdown_grace;
        info!("shutting down: closing {} connection(s) with 1001", self.conns.slab.len());
        self.shutdown_deadline = Some(deadline);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let ids: Vec<ConnId> =
            self.conns.slab.iter().map(|(key, conn)| ConnId::new(key as u32, conn.generation)).collect();
        for id in ids {
            let Some(conn) = self.conns.get_mut(id) else { continue };
            match &mut conn.phase {
                Phase::Open { .. } => {
                    self.metrics.closed(CloseReason::Shutdown);
                    self.send_close(id, CloseReason::Shutdown, deadline);
                }
                Phase::Handshake { .. } => {
                    self.metrics.closed(CloseReason::Shutdown);
                    self.remove(id);
                }
                Phase::Closing { deadline: d, .. } => *d = (*d).min(deadline),
            }
        }
    }

    fn remove(&mut self, id: ConnId) {
        if self.conns.get_mut(id).is_none() {
            return;
        }
        let mut conn = self.conns.slab.remove(id.index());
        let _ = self.poll.registry().deregister(&mut conn.socket);
        if let Some(count) = self.per_ip.get_mut(&conn.peer) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&conn.peer);
            }
        }
        debug!("removed {}", id.index());
    }
}

/// A stand-in phase while the real one is moved out of the slot.
fn placeholder(deadline: Instant) -> Phase {
    Phase::Closing { ws: None, deadline, peer_done: true }
}

/// How a read error ends a connection (RFC 6455 close codes).
fn doom_for(error: &tungstenite::Error) -> Doom {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_)
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Doom::Drop(CloseReason::ConnectionLost)
        }
        tungstenite::Error::Capacity(_) => Doom::Close(CloseReason::MessageTooBig),
        tungstenite::Error::Utf8(_) => Doom::Close(CloseReason::InvalidUtf8),
        _ => Doom::Close(CloseReason::ProtocolError),
    }
}
