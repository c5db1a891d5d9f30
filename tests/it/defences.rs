//! The defences a server on the open internet needs, each against the flag that sets it:
//! rate limiting, per-IP connection caps, the Origin allowlist, token auth, sId hygiene,
//! and the conformance echo path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use simd_json::prelude::*;
use tungstenite::Message;

use crate::harness::*;

/// A WebSocket client with extra request headers or query, from a given source address.
fn connect_with(server: &Server, target: &str, origin: Option<&str>) -> Result<Client, u16> {
    let stream = TcpStream::connect(server.addr).expect("tcp connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut request = format!("ws://{}{target}", server.addr).into_client_request_or_panic();
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", origin.parse().expect("header value"));
    }
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tungstenite::handshake::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("handshake failed oddly: {e}"),
    }
}

trait IntoRequest {
    fn into_client_request_or_panic(self) -> tungstenite::handshake::client::Request;
}

impl IntoRequest for String {
    fn into_client_request_or_panic(self) -> tungstenite::handshake::client::Request {
        use tungstenite::client::IntoClientRequest;
        self.into_client_request().expect("a valid URL")
    }
}

#[test]
fn a_burst_within_the_limit_passes_and_excess_gets_9500() {
    let server = Server::start_with(&["--rate-limit", "1", "--rate-burst", "20"]);
    let mut alice = server.register("alice");
    let _bob = server.register("bob");
    // Registration used one token; 19 notifies fit in the burst, the rest are dropped.
    for i in 0..25 {
        alice.send(&format!(r#"{{"cmd":"notify","opponentId":"nobody","type":"t{i}"}}"#));
    }
    let mut codes = Vec::new();
    for _ in 0..25 {
        codes.push(alice.expect("error").get_u64("code").expect("code"));
    }
    assert_eq!(codes.iter().filter(|&&c| c == 9301).count(), 19, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 9500).count(), 6, "{codes:?}");
    assert!(codes[..19].iter().all(|&c| c == 9301), "the burst comes first: {codes:?}");
}

#[test]
fn a_client_that_keeps_flooding_is_closed_with_1008_and_its_opponent_told() {
    let server = Server::start_with(&["--rate-limit", "1", "--rate-burst", "10"]);
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    alice.send(r#"{"cmd":"session","opponentId":"bob"}"#);
    let session = alice.expect("session").get_str("sessionId").expect("id").to_owned();
    bob.expect("ssu");
    // 10 tokens at most, 10 more are dropped with 9500, the 11th drop closes.
    for _ in 0..40 {
        if alice.ws.send(Message::text(r#"{"cmd":"notify","opponentId":"bob","type":"spam"}"#)).is_err() {
            break;
        }
    }
    assert_eq!(alice.close_code(), 1008);
    // Bob got the notifies that were within the limit, then the leave.
    let leave = loop {
        let message = bob.recv_skip_clu();
        match message.get_str("cmd") {
            Some("notify") => continue,
            Some("leave") => break message,
            other => panic!("unexpected {other:?}: {message:?}"),
        }
    };
    assert_eq!(leave.get_str("sessionId"), Some(session.as_str()));
    assert_eq!(leave.get_str("opponentId"), Some("alice"));
}

#[test]
fn the_default_limit_lets_a_call_burst_of_candidates_through() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    alice.send(r#"{"cmd":"session","opponentId":"bob"}"#);
    let session = alice.expect("session").get_str("sessionId").expect("id").to_owned();
    bob.expect("ssu");
    for i in 0..200 {
        alice.send(&format!(
            r#"{{"cmd":"icecandidate","sessionId":"{session}","icecandidate":{{"candidate":"c{i}"}}}}"#
        ));
    }
    for i in 0..200 {
        let ice = bob.expect("icecandidate");
        let candidate = ice.get("icecandidate").and_then(|c| c.get_str("candidate")).map(str::to_owned);
        assert_eq!(candidate, Some(format!("c{i}")));
    }
}

#[test]
fn connections_past_the_per_ip_cap_get_503() {
    let server = Server::start_with(&["--max-connections-per-ip", "2"]);
    let mut first = server.register("one");
    let _second = server.register("two");
    let refused = http_exchange(&server, crate::harness::UPGRADE_REQUEST.as_bytes());
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused:?}");
    // Another source address has its own allowance.
    let other = std::net::SocketAddr::from(([127, 0, 0, 2], 0));
    let socket = socket_from(other, server.addr);
    let (mut ws, _) = tungstenite::client(server.url(), socket).expect("another address is let in");
    ws.send(Message::text(r#"{"cmd":"sId","sId":"three"}"#)).expect("send");
    // When one leaves, its address may connect again.
    first.ws.close(None).expect("close");
    let _ = first.ending();
    let mut again = false;
    for _ in 0..50 {
        if let Ok(stream) = TcpStream::connect(server.addr)
            && tungstenite::client(server.url(), stream).is_ok()
        {
            again = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(again, "a freed slot is reusable");
}

/// A TCP connection from a chosen local address (std has no bind-before-connect; socket2
/// is already in the tree through the load tester).
fn socket_from(local: SocketAddr, server: SocketAddr) -> TcpStream {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.bind(&SockAddr::from(local)).expect("bind 127.0.0.2");
    socket.connect(&SockAddr::from(server)).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
}

#[test]
fn origins_outside_the_allowlist_get_403() {
    let server = Server::start_with(&[
        "--allowed-origin",
        "https://app.example",
        "--allowed-origin",
        "http://127.0.0.1:9",
    ]);
    assert!(connect_with(&server, "/", Some("https://app.example")).is_ok());
    assert!(connect_with(&server, "/", Some("http://127.0.0.1:9")).is_ok());
    assert_eq!(connect_with(&server, "/", Some("https://evil.example")).err(), Some(403));
    // Native clients send no Origin: allowed.
    let mut native = connect_with(&server, "/", None).expect("no Origin is allowed");
    native.send(r#"{"cmd":"sId","sId":"native"}"#);
    assert_eq!(native.expect("sId").get_str("sId"), Some("native"));
}

fn token(secret: &str, sid: &str, ttl: &str) -> String {
    let output = run_binary(&["token", "--secret", secret, "--sid", sid, "--ttl", ttl]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
}

#[test]
fn with_auth_a_token_is_required_and_names_the_only_sid() {
    const SECRET: &str = "a secret of at least 16 bytes";
    let server = Server::start_with(&["--auth-secret", SECRET]);
    assert_eq!(connect_with(&server, "/", None).err(), Some(401), "no token");
    let forged = token("another secret, 16 bytes+", "alice", "60");
    assert_eq!(connect_with(&server, &format!("/?token={forged}"), None).err(), Some(401), "forged");
    let expired = token(SECRET, "alice", "0.001");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(connect_with(&server, &format!("/?token={expired}"), None).err(), Some(401), "expired");

    let good = token(SECRET, "alice", "60");
    let mut alice = connect_with(&server, &format!("/ws?token={good}"), None).expect("a valid token");
    alice.send(r#"{"cmd":"sId","sId":"mallory"}"#);
    alice.expect_error(9103);
    alice.send(r#"{"cmd":"sId","sId":" alice "}"#);
    assert_eq!(alice.expect("sId").get_str("sId"), Some("alice"));
}

#[test]
fn sids_with_control_characters_are_refused_with_9003() {
    let server = Server::start();
    let mut client = server.connect();
    for bad in [r#""a\u0000b""#, r#""tab\there""#, r#""bell\u0007""#, r#""del\u007f""#] {
        client.send(&format!(r#"{{"cmd":"sId","sId":{bad}}}"#));
        client.expect_error(9003);
    }
    client.send(r#"{"cmd":"sId","sId":"zoë 🙂"}"#);
    assert_eq!(client.expect("sId").get_str("sId"), Some("zoë 🙂"));
}

#[test]
fn the_echo_path_is_off_by_default_and_echoes_when_on() {
    let server = Server::start();
    let mut plain = connect_with(&server, "/echo", None).expect("upgrade");
    plain.send(r#"{"cmd":"nope"}"#);
    plain.expect_error(9002);

    let server = Server::start_with(&["--echo-path", "/echo", "--echo-max-message", "200000"]);
    let mut echo = connect_with(&server, "/echo", None).expect("upgrade");
    echo.send_message(Message::text("not json at all"));
    assert_eq!(echo.ws.read().expect("echo"), Message::text("not json at all"));
    let big = vec![7u8; 150_000];
    echo.send_message(Message::binary(big.clone()));
    assert_eq!(echo.ws.read().expect("echo"), Message::binary(big));
    // Other paths still speak signaling.
    let mut signaling = connect_with(&server, "/echo/not", None).expect("upgrade");
    signaling.send(r#"{"cmd":"nope"}"#);
    signaling.expect_error(9002);
}

#[test]
fn slowloris_is_dropped_at_the_handshake_deadline_without_stalling_others() {
    let server = Server::start_with(&["--handshake-timeout", "0.5"]);
    let mut slow = raw_connect(&server);
    let started = std::time::Instant::now();
    let mut alice = server.register("alice");
    let _bob = server.register("bob");
    let mut closed = false;
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle().take(400) {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        // Other clients are served while the slow one dribbles.
        alice.send(r#"{"cmd":"notify","opponentId":"bob","type":"ping"}"#);
        std::thread::sleep(Duration::from_millis(5));
        let mut probe = [0u8; 1];
        slow.set_nonblocking(true).expect("nonblocking");
        if let Ok(0) = slow.read(&mut probe) {
            closed = true;
            break;
        }
        slow.set_nonblocking(false).expect("blocking");
    }
    assert!(closed, "the slow client was never dropped");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(2), "{took:?}");
}

/// A masked client frame with a short payload.
fn small_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    frame(first, true, payload)
}

/// Frames that never make a message still cost the loop; they must not keep it from the
/// other clients. The attacker writes as fast as loopback takes it until the other clients
/// have been served a few times, or for at most `FLOOD_LIMIT`. A loop held by the attacker
/// would serve nobody until the flood ends, so a round lasting as long as the flood is a
/// stall; anything shorter is only this shared machine being busy (CI runs the browser tests
/// beside this one), which no fixed bound of a second or so survives.
fn a_flood_of_frames_without_messages_does_not_stall_others(stream: Vec<u8>, repeat_from: usize) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const FLOOD_LIMIT: Duration = Duration::from_secs(20);
    const ROUNDS: usize = 5;

    let server = Server::start_with(&["--rate-limit", "0"]);
    let mut pair = Pair::open(&server, "alice", "bob");
    let mut attacker = raw_upgrade(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut first = true;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_LIMIT {
                let chunk = if first { &stream[..] } else { &stream[repeat_from..] };
                first = false;
                if attacker.write_all(chunk).is_err() {
                    return false;
                }
            }
            // Still flooding when told to stop: the rounds were served during the flood.
            stop.load(Ordering::Relaxed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for round in 0..ROUNDS {
        let started = Instant::now();
        pair.relay_works();
        server.register(&format!("newcomer-{round}"));
        worst = worst.max(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let flooded_throughout = flooding.join().expect("flooder");
    assert!(
        flooded_throughout,
        "the flood ended (closed, or ran {FLOOD_LIMIT:?}) before the rounds did; worst round {worst:?}"
    );
    assert!(worst < FLOOD_LIMIT / 4, "a relay and a registration took {worst:?} during the flood");
}

#[test]
fn a_ping_flood_does_not_stall_other_clients() {
    let pings: Vec<u8> = (0..20_000).flat_map(|_| small_frame(0x89, b"")).collect();
    a_flood_of_frames_without_messages_does_not_stall_others(pings, 0);
}

#[test]
fn a_flood_of_empty_fragments_does_not_stall_other_clients() {
    // A text message that never ends: FIN clear, then empty continuation frames forever.
    let mut fragments = small_frame(0x01, b"");
    let start_len = fragments.len();
    for _ in 0..20_000 {
        fragments.extend(small_frame(0x00, b""));
    }
    a_flood_of_frames_without_messages_does_not_stall_others(fragments, start_len);
}
