//! The mio poll loop: one thread, every socket, no locks. A thin shell around the
//! connection machines (`connection/`) and the core (`signaling`).
//!
//! A turn: wait for readiness (or the next timer), then
//! 1. accept, read each ready socket into the shared inbox and feed it to its machine; every
//!    message the machine yields goes to the core at once;
//! 2. on a housekeeping tick, run the timed rules of one slice of the connections;
//! 3. let the core deliver owed client lists, within its pacing budget;
//! 4. write every connection that has output, once, and ask for WRITABLE only where the
//!    socket would block.
//!
//! Work per turn is bounded: at most [`MESSAGES_PER_READ`] messages per connection (the
//! rest waits for the next turn, which then does not sleep), at most [`ACCEPTS_PER_TURN`]
//! accepts, one slice of timers, and the core bounds its client-list work itself.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::ServerConfig;

use super::admission::Admission;
use super::connection::{Close, Connection, Event, Flush, Settings, Wire};
use super::connections::{Connections, Ending, Slot};
use super::housekeeping::{self, SLICES, Sweep};
use super::http::{self, UpgradePolicy};
use super::{pages, tls};
use crate::config::Config;
use crate::metrics::CloseReason;
use crate::protocol::ErrorCode;
use crate::signaling::{ConnId, ResumePolicy, Signaling};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// Messages read from one connection before the loop moves on to others.
const MESSAGES_PER_READ: usize = 32;
/// Socket reads (of up to an inbox each) from one connection per turn. With the message
/// budget, this bounds one client's share of a turn even when its frames yield no events
/// at all (a flood of pings or of empty fragments): the rest waits for the next turn.
const READS_PER_TURN: usize = 2;
/// Connections accepted per turn; more wait for the next turn (which does not sleep), so a
/// connection flood cannot hold up the clients already connected.
const ACCEPTS_PER_TURN: usize = 256;
/// How long a closing connection may take to acknowledge our close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// After EMFILE and friends, accepting pauses this long instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The loop's one socket read buffer.
const INBOX_SIZE: usize = 64 << 10;

/// Connections the kernel may hold completed for us before we accept them. std and mio
/// listen with 128, which a storm of reconnects (every client of a restarted proxy, a
/// network coming back) overflows: the kernel drops the SYN and the client retries a
/// second later. The kernel caps it at `net.core.somaxconn` (4096 on current kernels).
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr` with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (as mio's
/// own `bind` sets it, so a restart does not wait for TIME_WAIT).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Asks a running server to do something, from any thread (signal handlers in `main`,
/// tests). Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    waker: Arc<Waker>,
    requests: Arc<Requests>,
}

#[derive(Default)]
struct Requests {
    shutdown: AtomicBool,
    reload_tls: AtomicBool,
}

impl ServerHandle {
    /// Closes every connection with 1001 and ends [`Server::run`] once their output is out
    /// or the shutdown grace has passed.
    pub fn shutdown(&self) {
        self.requests.shutdown.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    /// Reads `--tls-cert` and `--tls-key` again: new connections get the new pair, open
    /// ones keep theirs. A bad file keeps the current pair (and logs an error).
    pub fn reload_tls(&self) {
        self.requests.reload_tls.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// `--tls-cert` or `--tls-key` is missing, unreadable or wrong (the message names it).
    Tls(String),
    /// The listener could not be set up (address in use, no permission, ...).
    Io(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Tls(message) => f.write_str(message),
            StartError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Io(e)
    }
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    requests: Arc<Requests>,
    waker: Arc<Waker>,
    config: Config,
    /// The TLS setup new connections get (`--tls-cert`), replaced on reload.
    tls: Option<Arc<ServerConfig>>,
    conns: Connections,
    core: Signaling,
    admission: Admission,
    /// Connections that used up their message budget and may have more.
    read_again: Vec<ConnId>,
    inbox: Box<[u8]>,
    /// Wall-clock seconds for token expiry, read once per turn.
    now_unix: u64,
    sweep: Sweep,
    tick: Duration,
    next_tick: Instant,
    accept_paused_until: Option<Instant>,
    /// The listener had more connections than `ACCEPTS_PER_TURN`.
    accept_more: bool,
    shutdown_deadline: Option<Instant>,
}

impl Server {
    /// Binds the listener. Installs no signal handlers: see [`Server::handle`].
    pub fn bind(config: Config) -> Result<Server, StartError> {
        let tls = match &config.tls {
            Some(files) => Some(tls::load_server_config(&files.cert, &files.key).map_err(StartError::Tls)?),
            None => None,
        };
        let poll = Poll::new()?;
        let mut listener = listen(config.listen)?;
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let now = Instant::now();
        let sweep_period = housekeeping::sweep_period(config.ping_interval, config.handshake_timeout);
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            requests: Arc::default(),
            waker,
            tls,
            conns: Connections::new(Settings::new(&config, CLOSE_LINGER), now),
            core: Signaling::new(config.client_list)
                .with_resume(ResumePolicy {
                    grace: config.resume_grace,
                    max_held: config.max_output,
                    max_away: config.max_connections,
                })
                .with_max_room_clients(config.max_room_clients),
            admission: Admission::new(config.max_connections, config.max_connections_per_ip),
            config,
            read_again: Vec::new(),
            inbox: vec![0; INBOX_SIZE].into_boxed_slice(),
            now_unix: 0,
            sweep: Sweep::default(),
            tick: sweep_period / SLICES as u32,
            next_tick: now,
            accept_paused_until: None,
            accept_more: false,
            shutdown_deadline: None,
        })
    }

    /// Binds and runs a server on a thread of its own (the server is not `Send`: it is
    /// built there). For tests and benches; returns once the port is bound.
    pub fn spawn(
        config: Config,
    ) -> Result<(ServerHandle, SocketAddr, std::thread::JoinHandle<io::Result<()>>), StartError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || match Server::bind(config) {
            Ok(server) => {
                let _ = tx.send(Ok((server.handle(), server.local_addr())));
                server.run()
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                Err(io::Error::other("the server did not start"))
            }
        });
        let (handle, addr) = rx.recv().map_err(|_| io::Error::other("server thread ended early"))??;
        Ok((handle, addr, thread))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to stop the server from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle { waker: Arc::clone(&self.waker), requests: Arc::clone(&self.requests) }
    }

    /// Serves until [`ServerHandle::shutdown`], then closes every connection with 1001 and
    /// returns once they are flushed or the shutdown grace period has passed.
    pub fn run(mut self) -> io::Result<()> {
        info!("serving on {}", self.local_addr);
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let timeout = if self.read_again.is_empty() && !self.accept_more {
                self.next_wake().saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            self.conns.now = now;
            self.now_unix =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => self.on_wake(now),
                    Token(token) => {
                        let Some(id) = self.conns.id_of(token - FIRST_CONNECTION) else { continue };
                        if event.is_read_closed() || event.is_error() {
                            if let Some(slot) = self.conns.get_mut(id) {
                                slot.hung_up = true;
                            }
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(id, false);
                        }
                        if event.is_writable() {
                            self.conns.queue_flush(id);
                        }
                    }
                }
            }
            // The listener had more than a turn's accepts: the rest now (edge-triggered, it
            // raises no new event for connections already waiting).
            if std::mem::take(&mut self.accept_more) {
                self.accept(now);
            }
            for id in std::mem::take(&mut self.read_again) {
                if let Some(slot) = self.conns.get_mut(id) {
                    slot.read_queued = false;
                    self.read(id, true);
                }
            }
            if now >= self.next_tick {
                self.housekeeping(now);
            }
            if self.shutdown_deadline.is_none() {
                self.core.poll(now, &mut self.conns);
                self.run_departures(now);
            }
            self.flush_dirty(now);
            self.conns.metrics.turn(now.elapsed());
            if let Some(deadline) = self.shutdown_deadline
                && (self.conns.slab.is_empty() || now >= deadline)
            {
                info!("shut down; {} connection(s) cut at the deadline", self.conns.slab.len());
                return Ok(());
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.next_tick;
        // Asked after everything of the last turn, closes included (they change the list).
        if let Some(due) = self.core.next_deadline()
            && self.shutdown_deadline.is_none()
        {
            wake = wake.min(due);
        }
        if let Some(deadline) = self.shutdown_deadline {
            wake = wake.min(deadline);
        }
        wake
    }

    fn on_wake(&mut self, now: Instant) {
        if self.requests.reload_tls.swap(false, Ordering::SeqCst) {
            self.reload_tls();
        }
        if self.requests.shutdown.swap(false, Ordering::SeqCst) && self.shutdown_deadline.is_none() {
            self.begin_shutdown(now);
        }
    }

    fn reload_tls(&mut self) {
        let Some(files) = &self.config.tls else {
            info!("reload asked for, but no --tls-cert is set: nothing to reload");
            return;
        };
        match tls::load_server_config(&files.cert, &files.key) {
            Ok(config) => {
                info!("TLS certificate reloaded from {}", files.cert.display());
                self.tls = Some(config);
            }
            Err(e) => error!("TLS reload failed, still serving the previous certificate: {e}"),
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
            if !self.admission.admit(peer.ip(), self.conns.slab.len()) {
                self.conns.metrics.connections_refused += 1;
                // Best effort: a fresh socket's send buffer takes this small response (in
                // plain text even on a TLS listener: a refusal costs no handshake).
                let _ = socket.write(http::SERVICE_UNAVAILABLE);
                continue;
            }
            let wire = match &self.tls {
                None => Wire::Plain,
                Some(config) => match Wire::tls(Arc::clone(config)) {
                    Ok(wire) => wire,
                    Err(e) => {
                        warn!("cannot start TLS for {peer}: {e}");
                        self.admission.release(peer.ip());
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            let generation = self.conns.next_generation();
            let entry = self.conns.slab.vacant_entry();
            let token = Token(entry.key() + FIRST_CONNECTION);
            // Edge-triggered: bytes that are already there are reported by the first poll.
            if let Err(e) = self.poll.registry().register(&mut socket, token, Interest::READABLE) {
                warn!("cannot register {peer}: {e}");
                self.admission.release(peer.ip());
                continue;
            }
            self.conns.metrics.connections_accepted += 1;
            // Spread first pings over the second half of the interval, so that a burst of
            // connections does not become a burst of pings every interval after.
            let spread = f64::from(generation % 64) / 128.0;
            let first_ping = self.config.ping_interval.mul_f64(0.5 + spread);
            let machine = Connection::new(now, wire, &self.conns.settings, first_ping);
            entry.insert(Slot {
                socket,
                peer: peer.ip(),
                generation,
                machine,
                interest: Interest::READABLE,
                flush_queued: false,
                read_queued: false,
                hung_up: false,
            });
        }
        self.accept_more = true;
    }

    /// Reads a ready socket and feeds its machine, within the message budget. `resumed`:
    /// the connection used up its budget last turn and may hold unread input.
    fn read(&mut self, id: ConnId, resumed: bool) {
        let mut budget = MESSAGES_PER_READ;
        let mut inbox = std::mem::take(&mut self.inbox);
        // What an earlier turn left unread came before anything the socket holds now.
        if resumed || self.conns.get_mut(id).is_some_and(|slot| slot.machine.has_unread()) {
            self.feed(id, &mut &[][..], &mut budget);
        }
        // The socket may hold more than this turn read of it.
        let mut more = false;
        for _ in 0..READS_PER_TURN {
            more = false;
            let Some(slot) = self.conns.get_mut(id) else { break };
            if budget == 0 || slot.machine.is_finished() || slot.machine.has_unread() {
                break;
            }
            let n = match self.conns.read_socket(id, &mut inbox) {
                Ok(0) => {
                    if let Some(how) = self.conns.get_mut(id).and_then(|slot| slot.machine.on_eof()) {
                        self.close(id, how);
                    }
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.close(id, Close::Drop(CloseReason::ConnectionLost));
                    break;
                }
            };
            self.conns.metrics.bytes_received += n as u64;
            let mut fresh = &inbox[..n];
            self.feed(id, &mut fresh, &mut budget);
            if let Some(slot) = self.conns.get_mut(id) {
                slot.machine.keep_unread(fresh);
            }
            // A short read emptied the socket's receive queue. mio polls edge-triggered
            // (epoll's EPOLLET), so bytes arriving after it raise a new event: the read that
            // would only say EAGAIN is skipped. That is a third of the syscalls when each
            // connection has one message per turn. Not so once the peer has hung up: its
            // FIN raised its event already, so the end of file must be read now.
            more = n == inbox.len() || self.conns.get_mut(id).is_some_and(|slot| slot.hung_up);
            if !more {
                break;
            }
        }
        self.inbox = inbox;
        if (budget == 0 || more)
            && let Some(slot) = self.conns.get_mut(id)
            && !slot.read_queued
        {
            slot.read_queued = true;
            self.read_again.push(id);
        }
        self.reap(id);
    }

    /// Hands `fresh` to `id`'s machine and acts on its events until it has none or the
    /// budget is spent.
    fn feed(&mut self, id: ConnId, fresh: &mut &[u8], budget: &mut usize) {
        let now = self.conns.now;
        while *budget > 0 {
            let event = {
                let policy = UpgradePolicy {
                    allowed_origins: &self.config.allowed_origins,
                    auth_secret: self.config.auth_secret.as_deref(),
                    echo_path: self.config.echo_path.as_deref(),
                    now_unix: self.now_unix,
                };
                self.conns.poll_event(id, fresh, &policy)
            };
            let Some(event) = event else { break };
            // Every event counts, not only messages: a machine can never keep the loop here.
            *budget -= 1;
            match event {
                Event::Opened { entry } => {
                    self.core.admit(id, entry.room.as_deref(), entry.allowed_sid.as_deref())
                }
                Event::Message(message) => {
                    self.core.handle_message(id, &message, now, &mut self.conns);
                    self.run_departures(now);
                }
                Event::Acknowledged { messages } => self.core.acknowledge(id, messages),
                Event::RateLimited => {
                    self.core.refuse(id, ErrorCode::RateLimited, now, &mut self.conns);
                    self.run_departures(now);
                }
                Event::Page { route, head_only } => {
                    let open = self.conns.slab.len();
                    let page = pages::render(route, head_only, &self.conns.metrics, &self.core, open);
                    self.close(id, Close::Http(page.into()));
                }
                Event::Close(how) => self.close(id, how),
            }
        }
        self.conns.queue_flush(id);
    }

    /// Closes `id` and runs the core's *leave* procedure for it (and for any connection
    /// that procedure closes in turn).
    fn close(&mut self, id: ConnId, how: Close) {
        self.conns.close(id, how);
        self.run_departures(self.conns.now);
    }

    fn run_departures(&mut self, now: Instant) {
        if self.shutdown_deadline.is_some() {
            // Shutdown sends no `leave`: every client is told 1001 instead.
            self.conns.departed.clear();
            return;
        }
        while !self.conns.departed.is_empty() {
            for (id, ending) in std::mem::take(&mut self.conns.departed) {
                match ending {
                    Ending::Gone => self.core.disconnect(id, now, &mut self.conns),
                    Ending::Lost => self.core.connection_lost(id, now, &mut self.conns),
                }
            }
        }
    }

    /// One slice of the timed rules (see `housekeeping.rs`).
    fn housekeeping(&mut self, now: Instant) {
        self.next_tick = now + self.tick;
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept(now);
        }
        for key in self.sweep.next_slice(self.conns.slab.capacity()) {
            if let Some(id) = self.conns.id_of(key) {
                self.conns.handle_timeout(id);
                self.reap(id);
            }
        }
        self.run_departures(now);
    }

    fn flush_dirty(&mut self, now: Instant) {
        while !self.conns.dirty.is_empty() {
            for id in std::mem::take(&mut self.conns.dirty) {
                self.flush(id);
            }
            self.run_departures(now);
        }
    }

    fn flush(&mut self, id: ConnId) {
        let wanted = match self.conns.write_socket(id) {
            Ok(None) => return,
            Ok(Some(Flush::Done)) => Interest::READABLE,
            Ok(Some(Flush::Pending)) => Interest::READABLE | Interest::WRITABLE,
            Err(_) => {
                self.close(id, Close::Drop(CloseReason::ConnectionLost));
                self.reap(id);
                return;
            }
        };
        if let Some(slot) = self.conns.get_mut(id)
            && slot.interest != wanted
        {
            let token = Token(id.index() + FIRST_CONNECTION);
            if self.poll.registry().reregister(&mut slot.socket, token, wanted).is_ok() {
                slot.interest = wanted;
            }
        }
        self.reap(id);
    }

    /// Drops the socket of a connection whose machine is done.
    fn reap(&mut self, id: ConnId) {
        if !self.conns.get_mut(id).is_some_and(|slot| slot.machine.is_finished()) {
            return;
        }
        let mut slot = self.conns.slab.remove(id.index());
        let _ = self.poll.registry().deregister(&mut slot.socket);
        self.admission.release(slot.peer);
        log::debug!("removed {}", id.index());
    }

    fn begin_shutdown(&mut self, now: Instant) {
        info!("shutting down: closing {} connection(s) with 1001", self.conns.slab.len());
        self.shutdown_deadline = Some(now + self.config.shutdown_grace);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for id in self.conns.ids() {
            self.conns.close(id, Close::Frame(CloseReason::Shutdown));
            self.reap(id);
        }
        self.run_departures(now);
    }
}
