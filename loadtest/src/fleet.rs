//! Many non-blocking WebSocket clients on one mio poll: the generator's own event loop.
//!
//! Like the server, every client's frames are appended to its own output buffer and
//! written once per turn, so the generator spends as little CPU per message as the
//! server does and its measurements are not its own queueing.
//!
//! With `wss://` each client has a rustls `ClientConnection` next to its socket. Reads go
//! socket -> the shared inbox -> `read_tls` -> `process_new_packets` -> the plaintext
//! reader -> the same WebSocket framing as plain; writes go the client's plaintext output
//! buffer -> `writer()` -> `write_tls` -> socket, once per turn as on the plain path. The
//! plain path only pays for a `None` check.

use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;
use slab::Slab;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

use crate::Target;
use crate::tls::Tls;

/// What happened to a client during a turn.
#[derive(Debug)]
pub enum ClientEvent {
    /// The WebSocket upgrade completed.
    Opened,
    Text(Utf8Bytes),
    /// The connection ended; the close code if the server sent one.
    Closed(Option<u16>),
}

enum State {
    Connecting { response: Vec<u8> },
    Open(Box<WebSocketContext>),
    Closed,
}

struct Client {
    stream: TcpStream,
    /// `wss://`: the TLS session over `stream`; `out` then holds plaintext.
    tls: Option<Box<ClientConnection>>,
    state: State,
    out: Vec<u8>,
    written: usize,
    interest: Interest,
    flush_queued: bool,
    /// Set by [`Fleet::watch_write`]: the next write's time goes to `written_at`.
    watch_write: bool,
    written_at: Option<Instant>,
}

pub struct Fleet {
    poll: Poll,
    events: Events,
    clients: Slab<Client>,
    dirty: Vec<usize>,
    server: SocketAddr,
    sources: Vec<IpAddr>,
    next_source: usize,
    tls: Option<Tls>,
    /// Bytes of text messages received, for reports.
    pub bytes_in: u64,
    /// Pings received (and answered) by all clients, for reports.
    pub pings_in: u64,
    /// The TLS version the first client negotiated (`wss://` only), for reports.
    pub tls_version: Option<String>,
    inbox: Inbox,
}

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: loadtest\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

impl Fleet {
    /// Clients of `target`: its address, over TLS if it is `wss://`. Connections are
    /// spread over `target.sources` (several loopback addresses give each its own
    /// ephemeral-port range); empty means the OS picks.
    pub fn new(target: &Target) -> io::Result<Fleet> {
        Ok(Fleet {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            clients: Slab::default(),
            dirty: Vec::new(),
            server: target.addr,
            sources: target.sources.clone(),
            next_source: 0,
            tls: target.tls.clone(),
            bytes_in: 0,
            pings_in: 0,
            tls_version: None,
            inbox: Inbox::new(),
        })
    }

    /// Whether clients speak TLS (`wss://`).
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Starts connecting a new client; `Opened` follows once the upgrade completes.
    pub fn connect(&mut self) -> io::Result<usize> {
        let stream = self.open_socket()?;
        let (out, tls) = match &self.tls {
            None => (UPGRADE.as_bytes().to_vec(), None),
            Some(tls) => {
                let mut connection = tls.connection()?;
                // rustls holds it until the handshake is done, then sends it encrypted.
                connection.writer().write_all(UPGRADE.as_bytes())?;
                (Vec::new(), Some(Box::new(connection)))
            }
        };
        let mut client = Client {
            stream,
            tls,
            state: State::Connecting { response: Vec::new() },
            out,
            written: 0,
            interest: Interest::READABLE | Interest::WRITABLE,
            flush_queued: false,
            watch_write: false,
            written_at: None,
        };
        let key = self.clients.vacant_key();
        self.poll.registry().register(&mut client.stream, Token(key), client.interest)?;
        Ok(self.clients.insert(client))
    }

    fn open_socket(&mut self) -> io::Result<TcpStream> {
        use socket2::{Domain, SockAddr, Socket, Type};
        let socket = Socket::new(Domain::for_address(self.server), Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if !self.sources.is_empty() {
            let source = self.sources[self.next_source % self.sources.len()];
            self.next_source += 1;
            socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
        }
        match socket.connect(&SockAddr::from(self.server)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }

    /// Queues a text message; it is written at the end of the turn.
    pub fn send(&mut self, key: usize, text: &str) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let State::Open(ws) = &mut client.state else { return };
        let mut io = OutIo { out: &mut client.out };
        // Frames go to our buffer (write_buffer_size 0 + an always-accepting writer).
        let _ = ws.write(&mut io, Message::text(text));
        if !client.flush_queued {
            client.flush_queued = true;
            self.dirty.push(key);
        }
    }

    /// Queues a binary message (the server parses it like text).
    pub fn send_binary(&mut self, key: usize, bytes: Vec<u8>) {
        self.send_message(key, Message::binary(bytes));
    }

    /// Starts the close handshake: queues a close frame (code 1000). The server's reply
    /// arrives as `Closed`; the caller still drops the client afterwards.
    pub fn close(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let State::Open(ws) = &mut client.state else { return };
        let mut io = OutIo { out: &mut client.out };
        let _ = ws.close(&mut io, None);
        self.queue_flush(key);
    }

    /// Queues bytes for the socket as they are, outside any WebSocket framing (garbage,
    /// truncated frames; over TLS still inside the TLS records). Only on an open client:
    /// the upgrade response has been read.
    pub fn send_raw(&mut self, key: usize, bytes: &[u8]) {
        let Some(client) = self.clients.get_mut(key) else { return };
        if !matches!(client.state, State::Open(_)) {
            return;
        }
        client.out.extend_from_slice(bytes);
        self.queue_flush(key);
    }

    fn send_message(&mut self, key: usize, message: Message) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let State::Open(ws) = &mut client.state else { return };
        let mut io = OutIo { out: &mut client.out };
        let _ = ws.write(&mut io, message);
        self.queue_flush(key);
    }

    /// Closes a client's connection at once (no close handshake: an abrupt leave).
    pub fn drop_client(&mut self, key: usize) {
        if self.clients.contains(key) {
            let mut client = self.clients.remove(key);
            let _ = self.poll.registry().deregister(&mut client.stream);
        }
    }

    /// Notes the time of the next write to this client's socket (of what is queued now, at
    /// the latest), for [`Fleet::written_at`]: when a message really left.
    pub fn watch_write(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            client.watch_write = true;
            client.written_at = None;
        }
    }

    /// The time of the first write since [`Fleet::watch_write`], once it happened.
    pub fn written_at(&self, key: usize) -> Option<Instant> {
        self.clients.get(key).and_then(|client| client.written_at)
    }

    /// Loses a client's connection the way a network does: SO_LINGER 0, then close, so the
    /// kernel sends a TCP reset (no close frame, no FIN; over TLS no close_notify either).
    /// The socket is closed at once: its file descriptor is free for the next connection.
    /// Output not yet written is dropped with it.
    pub fn reset(&mut self, key: usize) {
        if self.clients.contains(key) {
            let mut client = self.clients.remove(key);
            let _ = socket2::SockRef::from(&client.stream).set_linger(Some(Duration::ZERO));
            let _ = self.poll.registry().deregister(&mut client.stream);
        }
    }

    /// Clients (sockets) open, handshakes included.
    pub fn open(&self) -> usize {
        self.clients.len()
    }

    /// One turn: wait up to `timeout`, read everything ready, write everything queued.
    pub fn turn(&mut self, timeout: Duration, events: &mut Vec<(usize, ClientEvent)>) -> io::Result<()> {
        self.turn_stamped(timeout, events, None)
    }

    /// [`Fleet::turn`], and `stamps[i]` the time `events[i]` was read off its socket (a turn
    /// that reads thousands of sockets would otherwise give them all the turn's end).
    pub fn turn_timed(
        &mut self,
        timeout: Duration,
        events: &mut Vec<(usize, ClientEvent)>,
        stamps: &mut Vec<Instant>,
    ) -> io::Result<()> {
        self.turn_stamped(timeout, events, Some(stamps))
    }

    fn turn_stamped(
        &mut self,
        timeout: Duration,
        events: &mut Vec<(usize, ClientEvent)>,
        mut stamps: Option<&mut Vec<Instant>>,
    ) -> io::Result<()> {
        self.flush_all();
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| (e.token().0, e.is_readable() || e.is_read_closed() || e.is_error(), e.is_writable()))
            .collect();
        for (key, readable, writable) in ready {
            if writable {
                self.queue_flush(key);
            }
            if readable {
                self.read(key, events);
                if let Some(stamps) = stamps.as_deref_mut() {
                    stamps.resize(events.len(), Instant::now());
                }
            }
        }
        self.flush_all();
        Ok(())
    }

    fn queue_flush(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key)
            && !client.flush_queued
        {
            client.flush_queued = true;
            self.dirty.push(key);
        }
    }

    fn read(&mut self, key: usize, events: &mut Vec<(usize, ClientEvent)>) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let mut stats = Stats { bytes_in: &mut self.bytes_in, pings_in: &mut self.pings_in };
        if read_client(client, key, &mut self.inbox, &mut stats, events)
            && self.tls_version.is_none()
            && let Some(version) = client.tls.as_ref().and_then(|tls| tls.protocol_version())
        {
            self.tls_version = Some(format!("{version:?}"));
        }
        let unsent =
            client.out.len() > client.written || client.tls.as_ref().is_some_and(|tls| tls.wants_write());
        if unsent && !client.flush_queued {
            client.flush_queued = true;
            self.dirty.push(key);
        }
    }

    fn flush_all(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(client) = self.clients.get_mut(key) else { continue };
            client.flush_queued = false;
            let mut pending = false;
            let unwritten = client.out.len() - client.written;
            if let Some(tls) = client.tls.as_deref_mut() {
                pending = flush_tls(tls, &mut client.stream, &mut client.out, client.written);
                client.written = 0;
            }
            while client.written < client.out.len() {
                match client.stream.write_vectored(&[IoSlice::new(&client.out[client.written..])]) {
                    Ok(0) => break,
                    Ok(n) => client.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        pending = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        pending = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let wrote =
                unwritten > 0 && (client.tls.is_some() || client.out.len() - client.written < unwritten);
            if client.watch_write && wrote {
                client.watch_write = false;
                client.written_at = Some(Instant::now());
            }
            if client.written == client.out.len() {
                client.out.clear();
                client.written = 0;
            }
            let wanted = if pending { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if wanted != client.interest
                && self.poll.registry().reregister(&mut client.stream, Token(key), wanted).is_ok()
            {
                client.interest = wanted;
            }
        }
    }
}

/// Counters a read updates.
struct Stats<'a> {
    bytes_in: &'a mut u64,
    pings_in: &'a mut u64,
}

/// Reads everything `client` has: the upgrade response, then messages, until the socket
/// (and the TLS session) would block. Returns whether the upgrade completed in this call.
fn read_client(
    client: &mut Client,
    key: usize,
    inbox: &mut Inbox,
    stats: &mut Stats<'_>,
    events: &mut Vec<(usize, ClientEvent)>,
) -> bool {
    // Every loop below reads until WouldBlock, which the inbox only reports once it is
    // empty: nothing of this client is left in it for the next one (after a close or an
    // error the rest is dropped with the connection).
    inbox.clear();
    let mut drained = false;
    let mut opened = false;
    if let State::Connecting { response } = &mut client.state {
        let mut chunk = [0u8; 4096];
        loop {
            let mut io = SocketIo {
                stream: &mut client.stream,
                tls: client.tls.as_deref_mut(),
                out: &mut client.out,
                inbox,
                drained,
            };
            let result = io.read(&mut chunk);
            drained = io.drained;
            match result {
                Ok(n) if n > 0 => response.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // End of file or an error before the 101.
                _ => {
                    client.state = State::Closed;
                    events.push((key, ClientEvent::Closed(None)));
                    return false;
                }
            }
        }
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
        if !response.starts_with(b"HTTP/1.1 101") {
            client.state = State::Closed;
            events.push((key, ClientEvent::Closed(None)));
            return false;
        }
        let rest = response[end + 4..].to_vec();
        // Small: tungstenite zero-fills up to this much per read call; the socket itself
        // is read in 64 KiB chunks into the fleet's inbox.
        let config = WebSocketConfig::default().read_buffer_size(512).write_buffer_size(0);
        client.state =
            State::Open(Box::new(WebSocketContext::from_partially_read(rest, Role::Client, Some(config))));
        events.push((key, ClientEvent::Opened));
        opened = true;
    }
    let State::Open(ws) = &mut client.state else { return opened };
    loop {
        let mut io = SocketIo {
            stream: &mut client.stream,
            tls: client.tls.as_deref_mut(),
            out: &mut client.out,
            inbox,
            drained,
        };
        let result = ws.read(&mut io);
        drained = io.drained;
        match result {
            Ok(Message::Text(text)) => {
                *stats.bytes_in += text.len() as u64;
                events.push((key, ClientEvent::Text(text)));
            }
            Ok(Message::Close(frame)) => {
                events.push((key, ClientEvent::Closed(frame.map(|f| f.code.into()))));
                client.state = State::Closed;
                break;
            }
            // tungstenite queues the pong itself; it goes out with the next read or write.
            Ok(Message::Ping(_)) => *stats.pings_in += 1,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                events.push((key, ClientEvent::Closed(None)));
                client.state = State::Closed;
                break;
            }
        }
    }
    opened
}

/// Hands a turn's plaintext (`out[written..]`) to TLS and writes the TLS records to the
/// socket. `out` is left empty: rustls's buffers are unbounded and take all of it. Returns
/// whether records are left for when the socket is writable again.
fn flush_tls(tls: &mut ClientConnection, stream: &mut TcpStream, out: &mut Vec<u8>, written: usize) -> bool {
    if written < out.len() {
        // Encrypted at once, or held until the handshake is done; cannot fail unbounded.
        let _ = tls.writer().write_all(&out[written..]);
    }
    out.clear();
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected) => {
                return true;
            }
            Err(_) => break,
        }
    }
    false
}

fn libc_einprogress() -> i32 {
    // EINPROGRESS on Linux.
    115
}

/// tungstenite's view of a client socket: reads from it (through TLS for `wss://`),
/// writes into our buffer.
struct SocketIo<'a> {
    stream: &'a mut TcpStream,
    tls: Option<&'a mut ClientConnection>,
    out: &'a mut Vec<u8>,
    inbox: &'a mut Inbox,
    /// A short read emptied the socket: the next read would only say EAGAIN, so skip the
    /// syscall (edge-triggered polling reports any data that arrives later).
    drained: bool,
}

/// One read buffer for every client: sockets are read in large chunks, tungstenite takes
/// small pieces from it.
struct Inbox {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Inbox {
    fn new() -> Self {
        Inbox { buf: vec![0; 64 << 10].into_boxed_slice(), start: 0, end: 0 }
    }

    fn clear(&mut self) {
        (self.start, self.end) = (0, 0);
    }
}

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(tls) = self.tls.as_deref_mut() {
            return read_through_tls(tls, self.stream, self.inbox, &mut self.drained, buf);
        }
        let inbox = &mut *self.inbox;
        if inbox.start == inbox.end {
            if self.drained {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.stream.read(&mut inbox.buf)?;
            if n == 0 {
                return Ok(0);
            }
            self.drained = n < inbox.buf.len();
            (inbox.start, inbox.end) = (0, n);
        }
        let n = buf.len().min(inbox.end - inbox.start);
        buf[..n].copy_from_slice(&inbox.buf[inbox.start..inbox.start + n]);
        inbox.start += n;
        Ok(n)
    }
}

/// Plaintext from `tls`; when it has none, ciphertext from the socket (read into the inbox
/// in 64 KiB chunks, as on the plain path) is fed to `read_tls` and decrypted.
fn read_through_tls(
    tls: &mut ClientConnection,
    stream: &mut TcpStream,
    inbox: &mut Inbox,
    drained: &mut bool,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        // Ok(0): close_notify; UnexpectedEof: the TCP connection ended without one.
        match tls.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            result => return result,
        }
        if inbox.start == inbox.end {
            if *drained {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = stream.read(&mut inbox.buf)?;
            *drained = n < inbox.buf.len();
            (inbox.start, inbox.end) = (0, n);
            if n == 0 {
                // Tells rustls about the EOF: the reader then says how the session ended.
                tls.read_tls(&mut io::empty())?;
                continue;
            }
        }
        let mut ciphertext = &inbox.buf[inbox.start..inbox.end];
        inbox.start += tls.read_tls(&mut ciphertext)?;
        tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct OutIo<'a> {
    out: &'a mut Vec<u8>,
}

impl Read for OutIo<'_> {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for OutIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
