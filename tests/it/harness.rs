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
        let mut child = Command::new(env!("CARGO_BIN_EXE_signaling-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("server binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("server prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("a socket address");
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

pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(server: &Server) -> Client {
        let stream = TcpStream::connect(server.addr).expect("tcp connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let (ws, _) = tungstenite::client(server.url(), stream).expect("websocket handshake");
        Client { ws }
    }

    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn send_message(&mut self, message: Message) {
        self.ws.send(message).expect("send");
    }

    /// The next server message (pings are answered by tungstenite and skipped).
    pub fn recv(&mut self) -> OwnedValue {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return simd_json::to_owned_value(&mut text.as_bytes().to_vec())
                        .unwrap_or_else(|e| panic!("server sent invalid JSON {text:?}: {e}"));
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
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
        self.ws.get_ref().set_read_timeout(Some(timeout)).expect("timeout");
    }

    /// Reads until the connection ends, skipping messages.
    pub fn ending(&mut self) -> Ending {
        loop {
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
