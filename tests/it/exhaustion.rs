//! The accept loop survives running out of file descriptors (EMFILE): the server runs with
//! an open-files limit of 64, idle connections use every descriptor it may open, and then
//! the clients it already has must still be served (relay, a new session), and once the
//! idle connections are gone it must accept and serve new clients again (it pauses accepts
//! for 100 ms after EMFILE and retries).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simd_json::prelude::*;

use crate::harness::{Client, PATIENCE, Pair, listening_address};

/// The server's open-files limit in this test (soft and hard).
const NOFILE: usize = 64;
/// Idle connections opened, at most, to exhaust it.
const MAX_HOGS: usize = NOFILE + 64;

/// The server binary started under a low open-files limit, its standard error collected.
struct LimitedServer {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl LimitedServer {
    /// Through `prlimit` (util-linux) if it is installed, else through `sh -c 'ulimit -n'`.
    /// Both exec the server, so the child's pid is the server's.
    fn start(nofile: usize, args: &[&str]) -> LimitedServer {
        let binary = env!("CARGO_BIN_EXE_signaling-server");
        let has_prlimit =
            Command::new("prlimit").arg("--version").output().is_ok_and(|output| output.status.success());
        let mut command = if has_prlimit {
            let mut command = Command::new("prlimit");
            command.arg(format!("--nofile={nofile}:{nofile}")).arg(binary);
            command
        } else {
            let mut command = Command::new("sh");
            command.args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""), binary]);
            command
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server starts under a low open-files limit");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        // Ends when the server exits and the pipe closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("log lock").push(line);
            }
        });
        let addr = listening_address(&mut child);
        LimitedServer { child, addr, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The soft open-files limit of the running server, from /proc.
    fn open_files_limit(&self) -> usize {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).expect("/proc limits");
        let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
        line.split_whitespace().nth(3).and_then(|n| n.parse().ok()).expect("a number")
    }

    /// How many of the descriptors the server may use (numbers below its limit) are open.
    fn descriptors_in_use(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc fd")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|&fd| fd < NOFILE)
            .count()
    }

    fn accept_failures(&self) -> usize {
        self.log.lock().expect("log lock").iter().filter(|line| line.contains("accept failed")).count()
    }

    /// A WebSocket client, as the harness makes them.
    fn connect(&self) -> Client {
        let stream = TcpStream::connect(self.addr).expect("tcp connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let (ws, _) =
            tungstenite::client(format!("ws://{}/", self.addr), stream).expect("websocket handshake");
        Client { ws }
    }

    fn register(&self, sid: &str) -> Client {
        let mut client = self.connect();
        client.register_as(sid);
        client
    }

    /// `GET /metrics`, or `None` if it is not answered within `patience`.
    fn metrics(&self, patience: Duration) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, patience).ok()?;
        stream.set_read_timeout(Some(patience)).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.starts_with("HTTP/1.1 200").then_some(response)
    }
}

impl Drop for LimitedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gauge(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[test]
fn the_accept_loop_survives_fd_exhaustion() {
    // Idle connections stay in the handshake for the whole test.
    let server = LimitedServer::start(NOFILE, &["--handshake-timeout", "60"]);
    assert_eq!(server.open_files_limit(), NOFILE, "the limit applies to the server itself");

    let mut pair = Pair::join(server.register("alice"), "alice", server.register("bob"), "bob");
    pair.relay_works();

    // Idle TCP connections until the server cannot accept any more: it has used every
    // descriptor it may open and says accept failed. The kernel still completes the TCP
    // handshakes (the listen backlog), so connecting succeeds either way.
    let mut hogs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.accept_failures() == 0 {
        assert!(Instant::now() < deadline, "no EMFILE after {} idle connections", hogs.len());
        for _ in 0..8 {
            if hogs.len() < MAX_HOGS {
                hogs.push(TcpStream::connect(server.addr).expect("the kernel completes the handshake"));
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    // A few more wait in the backlog, to be accepted once descriptors are free again.
    for _ in 0..4 {
        hogs.push(TcpStream::connect(server.addr).expect("the backlog takes it"));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.descriptors_in_use(), NOFILE, "every descriptor below the limit is in use");
    assert!(hogs.len() > NOFILE / 2, "{} connections exhausted {NOFILE} descriptors", hogs.len());
    // Not accepted now: no answer (this request may be served later; that is fine).
    assert!(server.metrics(Duration::from_millis(300)).is_none(), "served while out of descriptors");

    // The clients it has are served as before: relays both ways, a notify, and a new
    // session (a fresh random session id needs no descriptor either).
    pair.relay_works();
    pair.a.send(r#"{"cmd":"notify","opponentId":"bob","type":"still-here"}"#);
    assert_eq!(pair.b.expect("notify").get_str("type"), Some("still-here"));
    pair.b.send(&format!(r#"{{"cmd":"stop","sessionId":"{}"}}"#, pair.session));
    pair.a.expect("stop");
    pair.a.expect_ssu(&pair.session, 4);
    pair.b.expect_ssu(&pair.session, 4);
    let Pair { a, b, .. } = pair;
    let mut pair = Pair::join(b, "bob", a, "alice");
    pair.relay_works();
    assert!(server.accept_failures() >= 2, "accept was retried while descriptors were exhausted");
    assert_eq!(server.descriptors_in_use(), NOFILE, "still exhausted");

    // Free the descriptors: the server notices the idle connections end, accepts the ones
    // waiting in the backlog (and sees them end), and serves a new client within seconds.
    let freed = Instant::now();
    drop(hogs);
    let mut carol = server.register("carol");
    let recovered = freed.elapsed();
    assert!(recovered < Duration::from_secs(3), "a new client was served {recovered:?} after fds were freed");
    carol.send(r#"{"cmd":"notify","opponentId":"alice","type":"hello"}"#);
    let notify = pair.b.expect("notify");
    assert_eq!((notify.get_str("opponentId"), notify.get_str("type")), (Some("carol"), Some("hello")));
    pair.relay_works();

    // And plain HTTP again, with every idle connection gone.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let metrics = server.metrics(Duration::from_secs(1)).expect("/metrics is served again");
        let open = gauge(&metrics, "signaling_connections_open");
        // alice, bob, carol and this request.
        if open == 4 {
            assert_eq!(gauge(&metrics, "signaling_clients_registered"), 3);
            break;
        }
        assert!(Instant::now() < deadline, "{open} connections still open: idle ones not cleaned up");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.descriptors_in_use() < NOFILE / 2, "descriptors were released");
}
