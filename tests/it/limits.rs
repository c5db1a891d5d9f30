//! Every limit, the close code or HTTP status it answers with, and the *leave* procedure
//! it runs for a session opponent. Servers run with small limits so the tests are quick.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use simd_json::prelude::*;
use tungstenite::Message;

use crate::harness::*;

/// The `notify` from `alice` to `bob` whose JSON text is exactly `len` bytes long.
fn notify_of_len(len: usize) -> String {
    let empty = r#"{"cmd":"notify","opponentId":"bob","type":"t","data":""}"#;
    let padding = "x".repeat(len - empty.len());
    let text = format!(r#"{{"cmd":"notify","opponentId":"bob","type":"t","data":"{padding}"}}"#);
    assert_eq!(text.len(), len);
    text
}

/// Reads the notify that [`notify_of_len`] built and checks its padding arrived whole.
fn expect_notify_data_len(client: &mut Client, data_len: usize) {
    let notify = client.expect("notify");
    assert_eq!(notify.get_str("opponentId"), Some("alice"), "{notify:?}");
    assert_eq!(notify.get_str("data").map(str::len), Some(data_len));
}

const NOTIFY_OVERHEAD: usize = r#"{"cmd":"notify","opponentId":"bob","type":"t","data":""}"#.len();

// ---- --max-message: 1009 ------------------------------------------------------------------

#[test]
fn a_message_exactly_at_max_message_is_relayed_whole() {
    let server = Server::start_with(&["--max-message", "1024"]);
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    alice.send(&notify_of_len(1024));
    expect_notify_data_len(&mut bob, 1024 - NOTIFY_OVERHEAD);
    // The same size as a binary message, and fragmented in two (512 + 512 bytes).
    alice.send_message(Message::binary(notify_of_len(1024).into_bytes()));
    expect_notify_data_len(&mut bob, 1024 - NOTIFY_OVERHEAD);
    let text = notify_of_len(1024);
    alice.send_raw(&frame(OP_TEXT, true, &text.as_bytes()[..512]));
    alice.send_raw(&frame(FIN | OP_CONTINUATION, true, &text.as_bytes()[512..]));
    expect_notify_data_len(&mut bob, 1024 - NOTIFY_OVERHEAD);
    // Alice's connection is still open and in sync.
    alice.send(r#"{"cmd":"notify","opponentId":"bob","type":"after"}"#);
    assert_eq!(bob.expect("notify").get_str("type"), Some("after"));
}

#[test]
fn one_frame_over_max_message_closes_with_1009_and_the_opponent_gets_leave() {
    let server = Server::start_with(&["--max-message", "1024"]);
    let mut others = Pair::open(&server, "carol", "dave");
    let Pair { a: mut alice, b: mut bob, session, .. } = Pair::open(&server, "alice", "bob");
    // One byte over: the notify is valid JSON, only its size is wrong.
    alice.send(&notify_of_len(1025));
    assert_eq!(alice.close_code(), 1009);
    bob.expect_leave(&session, "alice");
    // The limit freed the sId at once, and everyone else is served as before.
    let mut alice = server.register("alice");
    others.relay_works();
    bob.send(r#"{"cmd":"notify","opponentId":"alice","type":"hi"}"#);
    assert_eq!(alice.expect("notify").get_str("opponentId"), Some("bob"));
}

#[test]
fn a_fragmented_message_over_max_message_closes_with_1009() {
    let server = Server::start_with(&["--max-message", "1024"]);
    let mut others = Pair::open(&server, "carol", "dave");
    let mut alice = Client::raw(&server);
    alice.register_as("alice");
    let bob = server.register("bob");
    let Pair { a: mut alice, b: mut bob, session, .. } = Pair::join(alice, "alice", bob, "bob");
    // Each frame is under the limit; together they pass it by one byte.
    let text = notify_of_len(1025);
    alice.send_raw(&frame(OP_TEXT, true, &text.as_bytes()[..512]));
    alice.send_raw(&frame(FIN | OP_CONTINUATION, true, &text.as_bytes()[512..]));
    assert_eq!(alice.close_code(), 1009);
    bob.expect_leave(&session, "alice");
    others.relay_works();
}

#[test]
fn many_small_fragments_add_up_to_1009() {
    let server = Server::start_with(&["--max-message", "1024"]);
    let mut others = Pair::open(&server, "carol", "dave");
    let mut alice = Client::raw(&server);
    alice.register_as("alice");
    // 11 fragments of 100 bytes: no frame is big, the message is.
    alice.send_raw(&frame(OP_TEXT, true, &[b' '; 100]));
    for _ in 0..9 {
        alice.send_raw(&frame(OP_CONTINUATION, true, &[b' '; 100]));
    }
    alice.send_raw(&frame(FIN | OP_CONTINUATION, true, &[b' '; 100]));
    assert_eq!(alice.close_code(), 1009);
    others.relay_works();
}

// ---- --max-output: 1008 -------------------------------------------------------------------

#[test]
fn a_maximal_message_relayed_fits_the_smallest_output_cap() {
    // max-output = max-message + 1024, the smallest the server accepts. The relay adds the
    // sender's id: make it as long as allowed (64 bytes) and as costly to escape as a
    // printable sId can be (a quote: two bytes each; control characters are refused).
    let server = Server::start_with(&["--max-message", "1024", "--max-output", "2048"]);
    let sid: String = "\"".repeat(64);
    let alice = server.register(&sid);
    let bob = server.register("bob");
    let mut pair = Pair::join(bob, "bob", alice, &sid);
    let session = pair.session.clone();
    let empty = format!(r#"{{"cmd":"icecandidate","sessionId":"{session}","icecandidate":""}}"#);
    let padding = "x".repeat(1024 - empty.len());
    let text = format!(r#"{{"cmd":"icecandidate","sessionId":"{session}","icecandidate":"{padding}"}}"#);
    assert_eq!(text.len(), 1024);
    // Alice (the long id) sends; bob reads and must get it whole, not a 1008.
    pair.b.send(&text);
    let ice = pair.a.expect("icecandidate");
    assert_eq!(ice.get_str("opponentId"), Some(sid.as_str()));
    assert_eq!(ice.get_str("icecandidate").map(str::len), Some(padding.len()));
    pair.relay_works();
}

#[test]
fn a_client_that_does_not_read_is_closed_and_its_opponent_is_told() {
    // The smallest allowed cap for 64 KiB messages; a long ping interval keeps the liveness
    // check out of the way (the non-reader sends nothing, so it would be dropped after 2).
    let server =
        Server::start_with(&["--max-message", "65536", "--max-output", "70000", "--ping-interval", "60"]);
    let mut others = Pair::open(&server, "carol", "dave");
    let Pair { a: mut bob, b: mut alice, session, .. } = Pair::open(&server, "bob", "alice");
    // From here on alice reads nothing. Bob floods her with ~60 KB candidates until the
    // server gives up on her; her kernel buffers take a few MB first.
    let candidate = "a".repeat(60_000);
    let relay = format!(
        r#"{{"cmd":"icecandidate","sessionId":"{session}","icecandidate":{{"candidate":"{candidate}"}}}}"#
    );
    let mut sent = 0;
    let verdict = loop {
        assert!(sent < 2000, "no reaction after {sent} relays ({} MB)", (sent * relay.len()) >> 20);
        bob.send(&relay);
        sent += 1;
        if let Some(message) = bob.try_recv() {
            break message;
        }
    };
    eprintln!("max-output: the server reacted after {sent} relays of {} bytes: {verdict:?}", relay.len());
    match verdict.get_str("cmd") {
        // The relay that found alice over her cap: 9401, then the session closes.
        Some("error") => {
            assert_eq!(verdict.get_u64("code"), Some(9401), "{verdict:?}");
            bob.expect_ssu(&session, 4);
        }
        // Or alice was closed first, and the leave procedure ran.
        Some("leave") => {
            assert_eq!(verdict.get_str("sessionId"), Some(session.as_str()), "{verdict:?}");
            assert_eq!(verdict.get_str("opponentId"), Some("alice"), "{verdict:?}");
            bob.expect_ssu(&session, 4);
        }
        _ => panic!("unexpected reaction {verdict:?}"),
    }
    // Alice now reads: what was buffered, then a 1008 close (or the connection is gone).
    let mut relayed = 0;
    let ending = loop {
        match alice.ws.read() {
            Ok(Message::Text(text)) if text.contains(r#""cmd":"icecandidate""#) => relayed += 1,
            Ok(Message::Close(frame)) => break Ending::Close(frame),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                panic!("alice's connection is still open after {PATIENCE:?}")
            }
            Err(_) => break Ending::Dropped,
        }
    };
    eprintln!("max-output: alice read {relayed} relays, then {ending:?}");
    assert!(relayed < sent, "alice got all {sent} relays: nothing was cut");
    match ending {
        Ending::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1008, "{frame:?}"),
        Ending::Close(None) => panic!("close frame without a code"),
        Ending::Dropped => {}
    }
    // Bob is back in WAIT, alone with the others; alice's sId is free; others are served.
    loop {
        let message = bob.recv();
        match message.get_str("cmd") {
            Some("clu") if !list_of(&message).iter().any(|(sid, _)| sid == "alice") => {
                assert!(list_of(&message).contains(&("bob".to_owned(), 1)), "{message:?}");
                break;
            }
            Some("clu") => {}
            // Relays bob sent after the session closed.
            Some("error") => assert_eq!(message.get_u64("code"), Some(9204), "{message:?}"),
            _ => panic!("unexpected {message:?}"),
        }
    }
    sync(&mut bob, "bob");
    let alice = server.register("alice");
    let mut again = Pair::join(bob, "bob", alice, "alice");
    again.relay_works();
    others.relay_works();
}

/// A barrier: a `notify` to oneself answers 9300 after everything sent before it. Errors
/// 9204 (relays to a session that has closed) may come first.
fn sync(client: &mut Client, sid: &str) {
    client.send(&format!(r#"{{"cmd":"notify","opponentId":"{sid}","type":"sync"}}"#));
    loop {
        let error = client.expect("error");
        match error.get_u64("code") {
            Some(9300) => return,
            Some(9204) => {}
            _ => panic!("unexpected {error:?}"),
        }
    }
}

// ---- --max-connections: 503 ----------------------------------------------------------------

fn expect_503(server: &Server) {
    let mut stream = raw_connect(server);
    let mut response = Vec::new();
    // The server answers at accept, without waiting for a request, then closes.
    stream.read_to_end(&mut response).expect("the refused connection ends cleanly");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 503 "), "{response:?}");
}

#[test]
fn connections_past_max_connections_get_503_until_one_leaves() {
    let server = Server::start_with(&["--max-connections", "3"]);
    let alice = server.register("alice");
    let bob = server.register("bob");
    // A connection still in its handshake counts too.
    let idle = raw_connect(&server);
    expect_503(&server);
    expect_503(&server);
    // The refusals disturbed nobody.
    let Pair { a: mut alice, b: mut bob, session, .. } = {
        let mut pair = Pair::join(alice, "alice", bob, "bob");
        pair.relay_works();
        pair
    };
    // One leaves with a close handshake: the next one is accepted (the server has freed
    // the slot before it answers the close).
    alice.close_cleanly();
    bob.expect_leave(&session, "alice");
    let mut carol = server.register("carol");
    expect_503(&server);
    // A connection that leaves during its handshake frees its slot too. The server sees its
    // FIN on its own schedule (possibly after our next connect), so retry, bounded.
    drop(idle);
    let deadline = Instant::now() + PATIENCE;
    let mut dave = loop {
        assert!(Instant::now() < deadline, "the idle connection's slot was never freed");
        match tungstenite::client(server.url(), raw_connect(&server)) {
            Ok((ws, _)) => break Client { ws },
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                assert_eq!(response.status(), 503);
            }
            // The 503 came before the request was read: a reset is possible.
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Io(_))) => {}
            Err(e) => panic!("{e:?}"),
        }
    };
    dave.register_as("dave");
    expect_503(&server);
    dave.send(r#"{"cmd":"notify","opponentId":"carol","type":"hello"}"#);
    assert_eq!(carol.expect("notify").get_str("opponentId"), Some("dave"));
    bob.send(r#"{"cmd":"notify","opponentId":"dave","type":"hello"}"#);
    assert_eq!(dave.expect("notify").get_str("opponentId"), Some("bob"));
}

// ---- --max-request-head: 431; --handshake-timeout ------------------------------------------

#[test]
fn an_oversized_request_head_gets_431_and_one_under_the_limit_upgrades() {
    let server = Server::start_with(&["--max-request-head", "256"]);
    let upgrade_with =
        |pad: usize| UPGRADE_REQUEST.replace("\r\n\r\n", &format!("\r\nX-Pad: {}\r\n\r\n", "p".repeat(pad)));
    // Just under: 256 bytes in all.
    let fits = upgrade_with(256 - UPGRADE_REQUEST.len() - "X-Pad: \r\n".len());
    assert_eq!(fits.len(), 256);
    let mut stream = raw_connect(&server);
    stream.write_all(fits.as_bytes()).expect("write");
    let head = read_response_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // The head and the first frame in one write: the frame is not part of the head.
    let mut early = raw_connect(&server);
    let register = frame(FIN | OP_TEXT, true, br#"{"cmd":"sId","sId":"early"}"#);
    early.write_all(&[fits.as_bytes(), &register].concat()).expect("write");
    let head = read_response_head(&mut early);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut early = Client {
        ws: tungstenite::WebSocket::from_raw_socket(early, tungstenite::protocol::Role::Client, None),
    };
    assert_eq!(early.expect("sId").get_str("sId"), Some("early"));
    // One byte over: 431, then the server closes.
    let over = upgrade_with(257 - UPGRADE_REQUEST.len() - "X-Pad: \r\n".len());
    assert_eq!(over.len(), 257);
    let response = http_exchange(&server, over.as_bytes());
    assert!(response.starts_with("HTTP/1.1 431 "), "{response:?}");
    let response = http_exchange(&server, upgrade_with(1000).as_bytes());
    assert!(response.starts_with("HTTP/1.1 431 "), "{response:?}");
    // A head that never ends (no blank line) is cut at the limit too.
    let response = http_exchange(&server, format!("GET /{} HTTP/1.1\r\n", "a".repeat(5000)).as_bytes());
    assert!(response.starts_with("HTTP/1.1 431 "), "{response:?}");
    let mut pair = Pair::open(&server, "alice", "bob");
    pair.relay_works();
}

/// Reads until the server closes `stream`, returning what came and how long it took.
fn wait_for_close(stream: &mut std::net::TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("not closed within {PATIENCE:?}: {e}"),
    }
    (received, started.elapsed())
}

#[test]
fn a_silent_or_slow_handshake_is_dropped_after_the_timeout() {
    let server = Server::start_with(&["--handshake-timeout", "0.3"]);
    let mut pair = Pair::open(&server, "alice", "bob");
    let connected = Instant::now();
    let mut silent = raw_connect(&server);
    let mut partial = raw_connect(&server);
    partial.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n").expect("write");
    for (name, stream) in [("silent", &mut silent), ("partial", &mut partial)] {
        let (received, _) = wait_for_close(stream);
        let waited = connected.elapsed();
        assert!(received.is_empty(), "{name}: {:?}", String::from_utf8_lossy(&received));
        assert!(waited >= Duration::from_millis(300), "{name}: closed after {waited:?}, before the timeout");
        assert!(waited < Duration::from_secs(3), "{name}: closed only after {waited:?}");
    }
    // The registered pair has been idle longer than the handshake timeout: unaffected.
    pair.relay_works();
    // A handshake that completes in time is fine.
    let mut carol = server.register("carol");
    carol.send(r#"{"cmd":"notify","opponentId":"alice","type":"x"}"#);
    assert_eq!(pair.a.expect("notify").get_str("opponentId"), Some("carol"));
}

#[test]
fn a_trickling_handshake_is_cut_at_the_timeout_counted_from_accept() {
    let server = Server::start_with(&["--handshake-timeout", "0.3"]);
    let mut stream = raw_connect(&server);
    let connected = Instant::now();
    // One byte of a valid head every 20 ms: activity does not extend the deadline. (The
    // pauses pace this client; they do not wait for the server.)
    let mut sent = 0;
    for byte in UPGRADE_REQUEST.as_bytes() {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(20));
        if connected.elapsed() > Duration::from_millis(400) {
            break;
        }
    }
    assert!(sent < UPGRADE_REQUEST.len(), "the whole head went out: pace too fast for the test");
    let (received, _) = wait_for_close(&mut stream);
    let waited = connected.elapsed();
    assert!(received.is_empty(), "{:?}", String::from_utf8_lossy(&received));
    assert!(waited >= Duration::from_millis(300), "closed after {waited:?}, before the timeout");
    assert!(waited < Duration::from_secs(3), "closed only after {waited:?}");
}

// ---- Plain HTTP ---------------------------------------------------------------------------

#[test]
fn plain_http_requests_get_http_errors_and_a_close() {
    let server = Server::start();
    let mut pair = Pair::open(&server, "alice", "bob");
    let status_of = |request: &str| {
        let response = http_exchange(&server, request.as_bytes());
        let status = response.split(' ').nth(1).unwrap_or_default().to_owned();
        assert!(response.starts_with("HTTP/1.1 "), "{request:?} got {response:?}");
        assert!(response.contains("\r\n\r\n"), "{response:?}");
        (status, response)
    };
    // http_exchange reads to EOF: each of these returns only because the server closed.
    // `/`, `/client.js`, `/healthz` and `/metrics` are the server's own pages; others are 404.
    let (status, _) = status_of("GET /nothing-here HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, "404");
    let (status, _) = status_of("GET /index.htm HTTP/1.0\r\n\r\n");
    assert_eq!(status, "404");
    let (status, _) = status_of("POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    assert!(status.starts_with('4'), "POST got {status}");
    let (status, _) = status_of(&UPGRADE_REQUEST.replace("GET", "POST"));
    assert_eq!(status, "400", "a POST upgrade");
    let (status, response) = status_of(&UPGRADE_REQUEST.replace("Version: 13", "Version: 8"));
    assert_eq!(status, "426", "{response}");
    assert!(response.contains("Sec-WebSocket-Version: 13\r\n"), "{response}");
    let (status, _) = status_of(&UPGRADE_REQUEST.replace("Sec-WebSocket-Key", "X-Key"));
    assert_eq!(status, "400", "an upgrade without a key");
    let many: String = (0..60).map(|i| format!("X-{i}: y\r\n")).collect();
    let (status, _) = status_of(&UPGRADE_REQUEST.replace("\r\n\r\n", &format!("\r\n{many}\r\n")));
    assert_eq!(status, "431", "60 headers");
    pair.relay_works();
}

#[test]
fn a_request_split_into_tiny_writes_still_upgrades() {
    let server = Server::start();
    let mut stream = raw_connect(&server);
    stream.set_nodelay(true).expect("nodelay");
    for chunk in UPGRADE_REQUEST.as_bytes().chunks(7) {
        stream.write_all(chunk).expect("write");
    }
    let head = read_response_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
    stream.shutdown(Shutdown::Both).expect("shutdown");
}

// ---- Defaults never touch ordinary use -----------------------------------------------------

#[test]
fn two_hundred_messages_back_to_back_all_arrive_in_order() {
    let server = Server::start();
    let Pair { a: mut alice, b: mut bob, session, .. } = Pair::open(&server, "alice", "bob");
    // A burst of realistic ICE candidates written without waiting, one flush at the end,
    // so the server finds them all at once in its socket buffer.
    for i in 0..200 {
        let candidate = format!(
            "candidate:{i} 1 udp 2122260223 192.168.1.{} {} typ host generation 0 ufrag abcd network-id 1",
            i % 250,
            50000 + i
        );
        let text = format!(
            r#"{{"cmd":"icecandidate","sessionId":"{session}","icecandidate":{{"candidate":"{candidate}","sdpMid":"0","sdpMLineIndex":0,"n":{i}}}}}"#
        );
        alice.ws.write(Message::text(text)).expect("write");
    }
    alice.ws.flush().expect("flush");
    for i in 0..200u64 {
        let ice = bob.expect("icecandidate");
        assert_eq!(ice.get_str("opponentId"), Some("alice"));
        assert_eq!(ice.get("icecandidate").and_then(|c| c.get_u64("n")), Some(i), "{ice:?}");
    }
    // The same for a chat over notify, in both directions at once.
    for i in 0..200 {
        alice
            .ws
            .write(Message::text(format!(
                r#"{{"cmd":"notify","opponentId":"bob","type":"chat","data":{i}}}"#
            )))
            .expect("write");
        bob.ws
            .write(Message::text(format!(
                r#"{{"cmd":"notify","opponentId":"alice","type":"chat","data":{i}}}"#
            )))
            .expect("write");
    }
    alice.ws.flush().expect("flush");
    bob.ws.flush().expect("flush");
    for i in 0..200u64 {
        let at_bob = bob.expect("notify");
        assert_eq!(
            (at_bob.get_str("opponentId"), at_bob.get_u64("data")),
            (Some("alice"), Some(i)),
            "{at_bob:?}"
        );
        let at_alice = alice.expect("notify");
        assert_eq!(
            (at_alice.get_str("opponentId"), at_alice.get_u64("data")),
            (Some("bob"), Some(i)),
            "{at_alice:?}"
        );
    }
    // No error, no rate limit, nothing else was sent.
    bob.expect_quiet(Duration::from_millis(100));
    alice.expect_quiet(Duration::from_millis(100));
}

#[test]
fn several_hundred_messages_a_second_are_sustained() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    // 400 notifies a second for 1.5 s: 600 in all, more than one burst's worth, at a rate a
    // chat or a call's ICE gathering may reach. Batches of 20 every 50 ms, on a schedule
    // (the pauses pace this client; they do not wait for the server).
    let started = Instant::now();
    for batch in 0..30u32 {
        let due = started + Duration::from_millis(50) * batch;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for i in batch * 20..(batch + 1) * 20 {
            let text = format!(r#"{{"cmd":"notify","opponentId":"bob","type":"chat","data":{i}}}"#);
            alice.ws.write(Message::text(text)).expect("write");
        }
        alice.ws.flush().expect("flush");
    }
    for i in 0..600u64 {
        let notify = bob.expect("notify");
        assert_eq!(notify.get_u64("data"), Some(i), "{notify:?}");
    }
    // Not one was refused (9500) and alice is still connected.
    alice.expect_quiet(Duration::from_millis(100));
    bob.send(r#"{"cmd":"notify","opponentId":"alice","type":"ok"}"#);
    assert_eq!(alice.expect("notify").get_str("type"), Some("ok"));
}
