//! Starting the server binary and talking to it.

// Shared by every test module; not each helper is used by each test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use simd_json::OwnedValue;
use simd_json::prelude::*;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// How long any single expected message may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// The server binary, running on a free loopback port. Killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts the binary with `--listen 127.0.0.1:0` and `args`, and waits for the
    /// `listening on ADDR` line (no sleeps: the line is printed once the port is bound).
    pub fn start_with(args: &[&str]) -> Server {
        Server::start_with_stderr(args, Stdio::inherit())
    }

    /// Like [`Server::start_with`], with the server's standard error (its log) sent to
    /// `stderr`, e.g. a file the test reads.
    pub fn start_with_stderr(args: &[&str], stderr: Stdio) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_signaling-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("server binary starts");
        let addr = listening_address(&mut child);
        Server { child, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait works").is_none()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self)
    }

    /// A connected client registered as `sid`, its registration reply consumed.
    pub fn register(&self, sid: &str) -> Client {
        let mut client = self.connect();
        client.send(&format!(r#"{{"cmd":"sId","sId":{}}}"#, json_string(sid)));
        let reply = client.recv_skip_clu();
        assert_eq!(reply.get_str("cmd"), Some("sId"), "{reply:?}");
        assert_eq!(reply.get_str("sId"), Some(sid));
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the server's first stdout line, `listening on ADDR`, and returns ADDR.
pub fn listening_address(child: &mut Child) -> SocketAddr {
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("server prints its address");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("a socket address")
}

pub fn json_string(text: &str) -> String {
    simd_json::to_string(&text).expect("a string serialises")
}

/// What a client saw when it stopped receiving.
#[derive(Debug)]
pub enum Ending {
    Close(Option<CloseFrame>),
    /// The TCP connection ended without a close frame.
    Dropped,
}

/// The byte stream under a [`Client`]: plain TCP here, TLS over TCP in tls_client.rs.
/// Timeouts and blocking mode are set on the TCP socket underneath.
pub trait Stream: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Stream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A blocking WebSocket client, over plain TCP unless `S` says otherwise.
pub struct Client<S = TcpStream> {
    pub ws: WebSocket<S>,
}

impl Client {
    pub fn connect(server: &Server) -> Client {
        let stream = TcpStream::connect(server.addr).expect("tcp connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let (ws, _) = tungstenite::client(server.url(), stream).expect("websocket handshake");
        Client { ws }
    }
}

impl<S: Stream> Client<S> {
    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn send_message(&mut self, message: Message) {
        self.ws.send(message).expect("send");
    }

    /// The next server message (pings are answered by tungstenite and skipped).
    pub fn recv(&mut self) -> OwnedValue {
        // Pings keep arriving, so the read timeout alone would never end a wait.
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "no message within {PATIENCE:?}");
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return simd_json::to_owned_value(&mut text.as_bytes().to_vec())
                        .unwrap_or_else(|e| panic!("server sent invalid JSON {text:?}: {e}"));
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                // A signal (a child process exiting) may interrupt the read: read again.
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next message that is not a `clu`.
    pub fn recv_skip_clu(&mut self) -> OwnedValue {
        loop {
            let message = self.recv();
            if message.get_str("cmd") != Some("clu") {
                return message;
            }
        }
    }

    /// The next non-`clu` message, which must have `cmd`.
    pub fn expect(&mut self, cmd: &str) -> OwnedValue {
        let message = self.recv_skip_clu();
        assert_eq!(message.get_str("cmd"), Some(cmd), "{message:?}");
        message
    }

    /// The next non-`clu` message, which must be error `code`.
    pub fn expect_error(&mut self, code: u64) {
        let message = self.expect("error");
        assert_eq!(message.get_u64("code"), Some(code), "{message:?}");
    }

    /// Reads `clu` messages until one satisfies `wanted` (list as (sId, state) pairs).
    pub fn wait_for_list(&mut self, wanted: impl Fn(&[(String, u64)]) -> bool) -> Vec<(String, u64)> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "no matching clu in time");
            let message = self.recv();
            if message.get_str("cmd") != Some("clu") {
                panic!("expected clu, got {message:?}");
            }
            let list = list_of(&message);
            if wanted(&list) {
                return list;
            }
        }
    }

    /// Asserts that nothing but `clu` or pings arrives within `window`.
    pub fn expect_quiet(&mut self, window: Duration) {
        self.set_timeout(window);
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) if text.contains(r#""cmd":"clu""#) => {}
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                other => panic!("expected quiet, got {other:?}"),
            }
        }
        self.set_timeout(PATIENCE);
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.ws.get_ref().tcp().set_read_timeout(Some(timeout)).expect("timeout");
    }

    /// Reads until the connection ends, skipping messages.
    pub fn ending(&mut self) -> Ending {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "connection still open after {PATIENCE:?}");
            match self.ws.read() {
                Ok(Message::Close(frame)) => return Ending::Close(frame),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    panic!("connection still open after {PATIENCE:?}")
                }
                Err(_) => return Ending::Dropped,
            }
        }
    }

    /// Reads until the connection ends and returns the close code the server sent.
    pub fn close_code(&mut self) -> u16 {
        match self.ending() {
            Ending::Close(Some(frame)) => frame.code.into(),
            other => panic!("expected a close frame with a code, got {other:?}"),
        }
    }
}

pub fn list_of(message: &OwnedValue) -> Vec<(String, u64)> {
    message
        .get_array("list")
        .expect("clu has a list")
        .iter()
        .map(|entry| (entry.get_str("sId").expect("sId").to_owned(), entry.get_u64("state").expect("state")))
        .collect()
}

/// A raw TCP connection, for bytes no WebSocket library would send.
pub fn raw_connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.addr).expect("tcp connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
}

/// Sends an HTTP request and returns the whole response (the server closes after it).
pub fn http_exchange(server: &Server, request: &[u8]) -> String {
    let mut stream = raw_connect(server);
    stream.write_all(request).expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

// ---- Process control, silence and a hand-written WebSocket client (lifecycle tests) ----

impl Server {
    /// Sends `signal` (a name `kill` knows: "TERM", "INT", ...) and returns at once.
    pub fn send_signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (bounded: 10 s) for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "server did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGINT and waits (bounded) for the process to exit.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.send_signal("INT");
        self.wait_exit()
    }
}

/// Runs the binary with exactly `args` (no `--listen` added) until it exits (bounded: 10 s)
/// and returns its status and output. For flags that make it exit at once.
pub fn run_binary(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_signaling-server"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server binary starts");
    let started = Instant::now();
    while child.try_wait().expect("wait works").is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("signaling-server {args:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output is collected")
}

impl<S: Stream> Client<S> {
    /// Asserts that nothing at all (not even a `clu`; pings are fine) arrives within `window`.
    pub fn expect_nothing(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.set_timeout(left);
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                other => panic!("expected nothing for {window:?}, got {other:?}"),
            }
        }
        self.set_timeout(PATIENCE);
    }
}

/// A WebSocket client written by hand on a raw TCP stream. It completes the upgrade and
/// sends masked frames, and does nothing on its own: it never answers a ping or a close.
pub struct RawWs {
    pub stream: TcpStream,
    /// Bytes read but not yet returned as a frame.
    pending: Vec<u8>,
}

/// Opcodes of RFC 6455.
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

impl RawWs {
    /// Connects and performs the upgrade (RFC 6455's sample key), checking the 101 reply.
    pub fn connect(server: &Server) -> RawWs {
        let mut stream = raw_connect(server);
        stream.set_nodelay(true).expect("nodelay");
        let request = format!(
            "GET /raw HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        );
        stream.write_all(request.as_bytes()).expect("write request");
        let mut pending = Vec::new();
        let head_end = loop {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).expect("the upgrade response arrives");
            assert!(n > 0, "connection closed during the upgrade: {:?}", String::from_utf8_lossy(&pending));
            pending.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "not an upgrade: {head:?}");
        assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "bad accept: {head:?}");
        pending.drain(..head_end);
        RawWs { stream, pending }
    }

    /// Sends one masked frame with FIN set.
    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        self.stream.write_all(&frame).expect("write frame");
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(OP_TEXT, text.as_bytes());
    }

    /// The next frame from the server as (opcode, payload); `None` once the connection has
    /// ended (EOF or reset). Panics if nothing arrives within the read timeout.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, payload, used)) = parse_server_frame(&self.pending) {
                self.pending.drain(..used);
                return Some((opcode, payload));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    panic!("no frame within the read timeout")
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// The next text message, skipping (and never answering) pings.
    pub fn recv_text(&mut self) -> OwnedValue {
        loop {
            match self.read_frame() {
                Some((OP_TEXT, mut payload)) => {
                    return simd_json::to_owned_value(&mut payload).expect("server sent JSON");
                }
                Some((OP_PING, _)) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }
}

/// One whole unmasked, unfragmented frame at the start of `bytes`: (opcode, payload, length).
fn parse_server_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let [first, second, ..] = *bytes else { return None };
    assert_eq!(first & 0x80, 0x80, "the server sent a fragmented frame");
    assert_eq!(second & 0x80, 0, "the server sent a masked frame");
    let (len, header) = match second & 0x7f {
        126 => (u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = bytes.get(header..header + len)?.to_vec();
    Some((first & 0x0f, payload, header + len))
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket frames and ready-made sessions (used by limits.rs and garbage.rs).

/// A valid upgrade request, written by hand.
pub const UPGRADE_REQUEST: &str = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// First-byte bits of a frame: FIN, the three reserved bits, and more opcodes.
pub const FIN: u8 = 0x80;
pub const RSV1: u8 = 0x40;
pub const RSV2: u8 = 0x20;
pub const RSV3: u8 = 0x10;
// OP_TEXT, OP_CLOSE, OP_PING and OP_PONG are defined above.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_BINARY: u8 = 0x2;

/// One WebSocket frame as bytes. `first` is the first byte (FIN, RSV bits, opcode); the
/// payload is masked with a fixed key when `masked` (clients must mask).
pub fn frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => bytes.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            bytes.push(mask_bit | 127);
            bytes.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        bytes.extend_from_slice(&key);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

/// Reads an HTTP response head byte by byte (nothing after the blank line is consumed).
pub fn read_response_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("response head cut short ({other:?}) after {:?}", String::from_utf8_lossy(&head)),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A TCP connection upgraded to WebSocket by hand: the 101 head is consumed, the rest of
/// the stream is WebSocket frames.
pub fn raw_upgrade(server: &Server) -> TcpStream {
    let mut stream = raw_connect(server);
    stream.set_nodelay(true).expect("nodelay");
    stream.write_all(UPGRADE_REQUEST.as_bytes()).expect("write upgrade");
    let head = read_response_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    stream
}

/// A tiny deterministic byte generator (xorshift64*), for reproducible garbage.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

impl Client {
    /// A client over a hand-made upgrade: it writes raw bytes with [`Client::send_raw`] and
    /// reads the server with tungstenite as usual.
    pub fn raw(server: &Server) -> Client {
        let stream = raw_upgrade(server);
        Client { ws: WebSocket::from_raw_socket(stream, tungstenite::protocol::Role::Client, None) }
    }
}

impl<S: Stream> Client<S> {
    /// Like [`Server::register`], on an existing connection.
    pub fn register_as(&mut self, sid: &str) {
        self.send(&format!(r#"{{"cmd":"sId","sId":{}}}"#, json_string(sid)));
        let reply = self.recv_skip_clu();
        assert_eq!(reply.get_str("cmd"), Some("sId"), "{reply:?}");
        assert_eq!(reply.get_str("sId"), Some(sid));
    }

    /// Writes bytes straight to the stream (through TLS, if any), bypassing tungstenite's framing.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.ws.get_mut().write_all(bytes).expect("raw write");
    }

    /// A non-`clu` message if one has already arrived; never waits.
    pub fn try_recv(&mut self) -> Option<OwnedValue> {
        self.ws.get_ref().tcp().set_nonblocking(true).expect("nonblocking");
        let message = loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let value = simd_json::to_owned_value(&mut text.as_bytes().to_vec())
                        .unwrap_or_else(|e| panic!("server sent invalid JSON {text:?}: {e}"));
                    if value.get_str("cmd") != Some("clu") {
                        break Some(value);
                    }
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break None,
                other => panic!("expected a text message or nothing, got {other:?}"),
            }
        };
        self.ws.get_ref().tcp().set_nonblocking(false).expect("blocking");
        message
    }

    /// Sends a close frame and reads until the server has answered it.
    pub fn close_cleanly(&mut self) {
        self.ws.close(None).expect("close");
        loop {
            match self.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(e) => panic!("close handshake did not complete: {e}"),
            }
        }
    }

    /// The *leave* procedure as seen by the opponent of `gone`: `leave` with the session
    /// and the gone client's id, then `ssu` 4.
    pub fn expect_leave(&mut self, session: &str, gone: &str) {
        let leave = self.expect("leave");
        assert_eq!(leave.get_str("sessionId"), Some(session), "{leave:?}");
        assert_eq!(leave.get_str("opponentId"), Some(gone), "{leave:?}");
        self.expect_ssu(session, 4);
    }

    /// The next non-`clu` message, which must be `ssu` for `session` with `state`.
    pub fn expect_ssu(&mut self, session: &str, state: u64) {
        let ssu = self.expect("ssu");
        assert_eq!((ssu.get_str("sessionId"), ssu.get_u64("state")), (Some(session), Some(state)), "{ssu:?}");
    }
}

/// Two registered clients in a NEW session that `a` opened with `b`.
pub struct Pair<S = TcpStream> {
    pub a: Client<S>,
    pub b: Client<S>,
    pub a_sid: String,
    pub b_sid: String,
    pub session: String,
    relays: u32,
}

impl Pair {
    pub fn open(server: &Server, a_sid: &str, b_sid: &str) -> Pair {
        let a = server.register(a_sid);
        let b = server.register(b_sid);
        Pair::join(a, a_sid, b, b_sid)
    }
}

impl<S: Stream> Pair<S> {
    /// Opens a session between two already registered clients, `a` calling `b`.
    pub fn join(mut a: Client<S>, a_sid: &str, mut b: Client<S>, b_sid: &str) -> Pair<S> {
        a.send(&format!(r#"{{"cmd":"session","opponentId":{}}}"#, json_string(b_sid)));
        let session = a.expect("session").get_str("sessionId").expect("sessionId").to_owned();
        a.expect_ssu(&session, 1);
        b.expect_ssu(&session, 1);
        Pair { a, b, a_sid: a_sid.to_owned(), b_sid: b_sid.to_owned(), session, relays: 0 }
    }

    /// An `icecandidate` each way, checked field by field on arrival.
    pub fn relay_works(&mut self) {
        self.relays += 1;
        let n = self.relays;
        relay_one(&mut self.a, &mut self.b, &self.a_sid, &self.session, n);
        relay_one(&mut self.b, &mut self.a, &self.b_sid, &self.session, n);
    }
}

fn relay_one<S: Stream>(from: &mut Client<S>, to: &mut Client<S>, from_sid: &str, session: &str, n: u32) {
    from.send(&format!(
        r#"{{"cmd":"icecandidate","sessionId":"{session}","icecandidate":{{"candidate":"c{n}","sdpMLineIndex":0}}}}"#
    ));
    let ice = to.expect("icecandidate");
    assert_eq!(ice.get_str("sessionId"), Some(session), "{ice:?}");
    assert_eq!(ice.get_str("opponentId"), Some(from_sid), "{ice:?}");
    let candidate = ice.get("icecandidate").and_then(|c| c.get_str("candidate"));
    assert_eq!(candidate, Some(format!("c{n}").as_str()), "{ice:?}");
}
