//! Bad input is normal input: each kind gets its error or close code, and everyone else is
//! served as before (every test ends with another pair completing a relay).

use std::io::{Read, Write};
use std::net::Shutdown;

use simd_json::prelude::*;
use tungstenite::Message;

use crate::harness::*;

/// Sends each text and expects error `code` for each, in order.
fn expect_errors(client: &mut Client, code: u64, texts: &[&str]) {
    for text in texts {
        client.send(text);
        let error = client.expect("error");
        assert_eq!(error.get_u64("code"), Some(code), "{text:?} got {error:?}");
        assert!(error.get_str("message").is_some_and(|m| !m.is_empty()), "{error:?}");
    }
}

// ---- JSON errors: 9000, 9001, 9002 ---------------------------------------------------------

#[test]
fn invalid_json_gets_9000_and_the_connection_stays_open() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    let mut alice = server.connect();
    let broken = [
        r#"{"cmd":"sId","sId":"alice""#,
        "not json",
        "",
        " ",
        "{,}",
        r#"{"cmd":'sId'}"#,
        "{\"cmd\":\"sId\"}}",
    ];
    expect_errors(&mut alice, 9000, &broken);
    // Still open, still unregistered, and it can register now.
    alice.register_as("alice");
    expect_errors(&mut alice, 9000, &broken);
    alice.send(r#"{"cmd":"notify","opponentId":"carol","type":"still here"}"#);
    assert_eq!(others.a.expect("notify").get_str("type"), Some("still here"));
    others.relay_works();
}

#[test]
fn json_that_is_not_a_command_object_gets_9001() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    let mut alice = server.connect();
    let shapeless = [
        "[]",
        r#"[{"cmd":"sId","sId":"alice"}]"#,
        r#""sId""#,
        "42",
        "null",
        "true",
        "{}",
        r#"{"sId":"alice"}"#,
        r#"{"cmd":null}"#,
        r#"{"cmd":true}"#,
        r#"{"cmd":["sId"]}"#,
        r#"{"cmd":{"cmd":"sId"}}"#,
    ];
    // Shape is checked before registration: no 9100 for these.
    expect_errors(&mut alice, 9001, &shapeless);
    alice.register_as("alice");
    expect_errors(&mut alice, 9001, &shapeless);
    others.relay_works();
}

#[test]
fn unknown_commands_get_9002_server_words_included() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    let mut alice = server.connect();
    let unknown = [
        r#"{"cmd":"dance"}"#,
        r#"{"cmd":""}"#,
        r#"{"cmd":"   "}"#,
        r#"{"cmd":"SID","sId":"alice"}"#,
        r#"{"cmd":5}"#,
        r#"{"cmd":"clu"}"#,
        r#"{"cmd":"ssu","sessionId":"1","state":1}"#,
        r#"{"cmd":"leave","sessionId":"1","opponentId":"carol"}"#,
        r#"{"cmd":"error","code":9000}"#,
    ];
    // The command is checked before registration: no 9100 for these.
    expect_errors(&mut alice, 9002, &unknown);
    alice.register_as("alice");
    expect_errors(&mut alice, 9002, &unknown);
    others.relay_works();
}

// ---- Binary frames -------------------------------------------------------------------------

#[test]
fn binary_frames_carry_commands_like_text() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    let mut alice = server.connect();
    let binary = |text: &str| Message::binary(text.as_bytes().to_vec());
    alice.send_message(binary(r#"{"cmd":"sId","sId":"alice"}"#));
    assert_eq!(alice.expect("sId").get_str("sId"), Some("alice"));
    let mut bob = server.register("bob");
    alice.send_message(binary(r#"{"cmd":"session","opponentId":"bob"}"#));
    let session = alice.expect("session").get_str("sessionId").expect("sessionId").to_owned();
    alice.expect_ssu(&session, 1);
    bob.expect_ssu(&session, 1);
    alice.send_message(binary(&format!(
        r#"{{"cmd":"call","sessionId":"{session}","offer":{{"type":"offer","sdp":"v=0 ü"}}}}"#
    )));
    // Relayed as a text frame (the server sends text only), content intact.
    let call = loop {
        match bob.ws.read().expect("read") {
            Message::Text(text) => {
                let message = simd_json::to_owned_value(&mut text.as_bytes().to_vec()).expect("JSON");
                if message.get_str("cmd") != Some("clu") {
                    break message;
                }
            }
            Message::Ping(_) => {}
            other => panic!("expected the call as a text frame, got {other:?}"),
        }
    };
    assert_eq!(call.get_str("cmd"), Some("call"), "{call:?}");
    assert_eq!(call.get_str("opponentId"), Some("alice"));
    assert_eq!(call.get("offer").and_then(|o| o.get_str("sdp")), Some("v=0 ü"));
    bob.expect_ssu(&session, 2);
    alice.expect_ssu(&session, 2);
    // Errors come the same way: invalid UTF-8 in a binary message is not JSON (9000), and
    // it does not close the connection the way a text frame would (1007).
    alice.send_message(Message::binary(
        b"{\"cmd\":\"notify\",\"opponentId\":\"bob\",\"type\":\"\xff\"}".to_vec(),
    ));
    alice.expect_error(9000);
    alice.send_message(Message::binary(vec![0x00, 0x01, 0xfe, 0xff]));
    alice.expect_error(9000);
    alice.send_message(binary("[]"));
    alice.expect_error(9001);
    alice.send_message(binary(r#"{"cmd":"dance"}"#));
    alice.expect_error(9002);
    // Still in the session.
    alice.send_message(binary(&format!(r#"{{"cmd":"stop","sessionId":"{session}"}}"#)));
    assert_eq!(bob.expect("stop").get_str("opponentId"), Some("alice"));
    bob.expect_ssu(&session, 4);
    alice.expect_ssu(&session, 4);
    others.relay_works();
}

// ---- Invalid UTF-8 in text: 1007 -----------------------------------------------------------

#[test]
fn invalid_utf8_in_a_text_frame_closes_with_1007_and_the_opponent_gets_leave() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    let mut alice = Client::raw(&server);
    alice.register_as("alice");
    let bob = server.register("bob");
    let Pair { a: mut alice, b: mut bob, session, .. } = Pair::join(alice, "alice", bob, "bob");
    alice.send_raw(&frame(
        FIN | OP_TEXT,
        true,
        b"{\"cmd\":\"notify\",\"opponentId\":\"bob\",\"type\":\"\xff\"}",
    ));
    assert_eq!(alice.close_code(), 1007);
    bob.expect_leave(&session, "alice");
    others.relay_works();
}

#[test]
fn invalid_utf8_variants_all_close_with_1007() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    let cases: [(&str, Vec<Vec<u8>>); 6] = [
        ("a lone continuation byte", vec![frame(FIN | OP_TEXT, true, b"{\"cmd\":\"\x80\"}")]),
        ("an overlong encoding of '/'", vec![frame(FIN | OP_TEXT, true, b"\"\xc0\xaf\"")]),
        ("an encoded surrogate", vec![frame(FIN | OP_TEXT, true, b"\"\xed\xa0\x80\"")]),
        ("a truncated sequence at the end", vec![frame(FIN | OP_TEXT, true, b"{}\xe2\x82")]),
        (
            "invalid bytes in the second fragment",
            vec![frame(OP_TEXT, true, b"{\"cmd\":\""), frame(FIN | OP_CONTINUATION, true, b"\xff\"}")],
        ),
        ("a close frame whose reason is not UTF-8", vec![frame(FIN | OP_CLOSE, true, b"\x03\xe8bye \xff")]),
    ];
    for (name, frames) in cases {
        let mut client = Client::raw(&server);
        for frame in frames {
            client.send_raw(&frame);
        }
        assert_eq!(client.close_code(), 1007, "{name}");
    }
    // A multi-byte character split across two fragments is valid.
    let mut alice = Client::raw(&server);
    alice.send_raw(&frame(OP_TEXT, true, b"{\"cmd\":\"sId\",\"sId\":\"\xc3"));
    alice.send_raw(&frame(FIN | OP_CONTINUATION, true, b"\xa9\"}"));
    assert_eq!(alice.expect("sId").get_str("sId"), Some("é"));
    others.relay_works();
}

// ---- RFC 6455 violations: 1002 -------------------------------------------------------------

/// Frames that break RFC 6455, each sent by a registered client on its own connection.
fn protocol_violations() -> Vec<(&'static str, Vec<u8>)> {
    let valid = br#"{"cmd":"notify","opponentId":"nobody","type":"x"}"#;
    vec![
        ("an unmasked frame", frame(FIN | OP_TEXT, false, valid)),
        ("RSV1 set", frame(FIN | RSV1 | OP_TEXT, true, valid)),
        ("RSV2 set", frame(FIN | RSV2 | OP_TEXT, true, valid)),
        ("RSV3 set", frame(FIN | RSV3 | OP_TEXT, true, valid)),
        ("reserved data opcode 0x3", frame(FIN | 0x3, true, valid)),
        ("reserved data opcode 0x7", frame(FIN | 0x7, true, valid)),
        ("reserved control opcode 0xB", frame(FIN | 0xB, true, b"")),
        ("reserved control opcode 0xF", frame(FIN | 0xF, true, b"")),
        ("a continuation with no start", frame(FIN | OP_CONTINUATION, true, valid)),
        ("a fragmented ping", frame(OP_PING, true, b"x")),
        ("a fragmented close", frame(OP_CLOSE, true, &1000u16.to_be_bytes())),
        ("a ping with 126 bytes of payload", frame(FIN | OP_PING, true, &[b'p'; 126])),
        ("a close with a one-byte payload", frame(FIN | OP_CLOSE, true, &[0x03])),
        (
            "a new text message inside a fragmented one",
            [frame(OP_TEXT, true, b"{\"cmd\":"), frame(FIN | OP_TEXT, true, valid)].concat(),
        ),
        ("a close with the reserved code 1005", frame(FIN | OP_CLOSE, true, &1005u16.to_be_bytes())),
        ("a close with the invalid code 999", frame(FIN | OP_CLOSE, true, &999u16.to_be_bytes())),
    ]
}

#[test]
fn rfc6455_violations_close_with_1002() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    for (i, (name, bytes)) in protocol_violations().into_iter().enumerate() {
        let mut client = Client::raw(&server);
        client.register_as(&format!("v{i}"));
        client.send_raw(&bytes);
        assert_eq!(client.close_code(), 1002, "{name}");
    }
    others.relay_works();
    // Every violator was removed from the list.
    let mut eve = server.register("eve");
    eve.wait_for_list(|list| list.iter().map(|(sid, _)| sid.as_str()).eq(["carol", "dave", "eve"]));
}

#[test]
fn a_protocol_violation_in_a_session_runs_leave_for_the_opponent() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    for (i, (name, bytes)) in protocol_violations().into_iter().enumerate().filter(|(i, _)| i % 4 == 0) {
        let mut alice = Client::raw(&server);
        alice.register_as("alice");
        let bob_sid = format!("bob{i}");
        let bob = server.register(&bob_sid);
        let Pair { a: mut alice, b: mut bob, session, .. } = Pair::join(alice, "alice", bob, &bob_sid);
        alice.send_raw(&bytes);
        assert_eq!(alice.close_code(), 1002, "{name}");
        bob.expect_leave(&session, "alice");
    }
    others.relay_works();
}

// ---- Random bytes --------------------------------------------------------------------------

#[test]
fn random_bytes_after_the_upgrade_end_that_connection_only() {
    let mut server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    for seed in 1..=24u64 {
        let mut client = Client::raw(&server);
        if seed % 2 == 0 {
            client.register_as(&format!("r{seed}"));
        }
        client.send_raw(&pseudo_random_bytes(seed, 3000));
        // Our side is done: whatever the bytes meant, the server must end the connection
        // (a close frame, or EOF if the bytes were an unfinished frame).
        client.ws.get_ref().shutdown(Shutdown::Write).expect("shutdown");
        match client.ending() {
            Ending::Close(Some(frame)) => {
                let code = u16::from(frame.code);
                assert!([1002, 1007, 1009].contains(&code), "seed {seed}: close {code}");
            }
            Ending::Close(None) => panic!("seed {seed}: a close frame without a code"),
            Ending::Dropped => {}
        }
    }
    assert!(server.is_running());
    server.register("newcomer");
    others.relay_works();
}

#[test]
fn random_bytes_instead_of_a_request_get_an_http_error_or_a_close() {
    let mut server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    let mut garbage: Vec<Vec<u8>> = (1..=16).map(|seed| pseudo_random_bytes(seed, 2000)).collect();
    // Random bytes with the blank line that ends a head, so the server must parse them.
    garbage.extend((17..=24).map(|seed| [pseudo_random_bytes(seed, 300), b"\r\n\r\n".to_vec()].concat()));
    // A TLS ClientHello, a lone blank line, a WebSocket frame, a NUL flood.
    garbage.push(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec());
    garbage.push(b"\r\n\r\n".to_vec());
    garbage.push(frame(FIN | OP_TEXT, true, br#"{"cmd":"sId","sId":"x"}"#));
    garbage.push(vec![0; 20_000]);
    for (i, bytes) in garbage.iter().enumerate() {
        let mut stream = raw_connect(&server);
        // The server may answer and close before reading everything: a reset then is fine.
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(Shutdown::Write);
        let mut response = Vec::new();
        match stream.read_to_end(&mut response) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("garbage {i}: not closed: {e}"),
        }
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.is_empty()
                || response.starts_with("HTTP/1.1 400 ")
                || response.starts_with("HTTP/1.1 431 "),
            "garbage {i}: {response:?}"
        );
    }
    // The ones that end with a blank line are parsed and refused with 400.
    let response = http_exchange(&server, &[pseudo_random_bytes(99, 300), b"\r\n\r\n".to_vec()].concat());
    assert!(response.starts_with("HTTP/1.1 400 "), "{response:?}");
    assert!(server.is_running());
    server.register("newcomer");
    others.relay_works();
}

// ---- Abrupt TCP close ----------------------------------------------------------------------

#[test]
fn an_abrupt_tcp_close_in_a_session_runs_leave_and_frees_the_sid() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    let Pair { a: alice, b: mut bob, session, .. } = Pair::open(&server, "alice", "bob");
    // No close frame: the socket just goes away.
    drop(alice);
    bob.expect_leave(&session, "alice");
    // Bob is back in WAIT and sees alice gone.
    bob.wait_for_list(|list| {
        list.iter().any(|e| e == &("bob".to_owned(), 1)) && !list.iter().any(|(s, _)| s == "alice")
    });
    bob.send(&format!(r#"{{"cmd":"stop","sessionId":"{session}"}}"#));
    bob.expect_error(9204);
    // The sId is free again, and the two can start over.
    let alice = server.register("alice");
    let mut again = Pair::join(bob, "bob", alice, "alice");
    assert_ne!(again.session, session);
    again.relay_works();
    others.relay_works();
}

#[test]
fn a_tcp_close_in_the_middle_of_a_frame_runs_leave() {
    let server = Server::start();
    let mut others = Pair::open(&server, "carol", "dave");
    let Pair { a: mut alice, b: mut bob, session, .. } = Pair::open(&server, "alice", "bob");
    let whole = frame(FIN | OP_TEXT, true, br#"{"cmd":"notify","opponentId":"bob","type":"never"}"#);
    alice.send_raw(&whole[..whole.len() / 2]);
    alice.ws.get_ref().shutdown(Shutdown::Both).expect("shutdown");
    drop(alice);
    bob.expect_leave(&session, "alice");
    server.register("alice");
    others.relay_works();
}

#[test]
fn an_http_1_0_upgrade_gets_505_and_a_close_not_a_101() {
    let server = Server::start();
    let request = b"GET / HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // http_exchange reads to the end: it returns only because the server closes.
    let response = http_exchange(&server, request);
    assert!(response.starts_with("HTTP/1.1 505 "), "{response:?}");
    // HTTP/1.0 is still fine for the plain pages (probes and old tools send it).
    let health = http_exchange(&server, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200 "), "{health:?}");
}
