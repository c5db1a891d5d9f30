//! How connections and the process begin and end: departures mid-session, liveness,
//! shutdown on signals, the startup line and the command line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use simd_json::OwnedValue;
use simd_json::prelude::*;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::*;

/// Opens a session from `caller` to `callee_sid` (both registered); every message up to
/// both `ssu 1` is consumed. Returns the session id.
fn open_session(caller: &mut Client, callee: &mut Client, callee_sid: &str) -> String {
    caller.send(&format!(r#"{{"cmd":"session","opponentId":"{callee_sid}"}}"#));
    let session = caller.expect("session");
    let sid = session.get_str("sessionId").expect("sessionId").to_owned();
    for client in [caller, callee] {
        let ssu = client.expect("ssu");
        assert_eq!(
            (ssu.get_str("sessionId"), ssu.get_u64("state")),
            (Some(sid.as_str()), Some(1)),
            "{ssu:?}"
        );
    }
    sid
}

fn pair_in_session(alice: &mut Client, bob: &mut Client) -> String {
    open_session(alice, bob, "bob")
}

/// The opponent of a client that has gone: the very next messages are `leave` and `ssu 4`,
/// exactly as PROTOCOL.md spells them.
fn expect_leave(client: &mut Client, session_id: &str, gone: &str) {
    let leave = client.recv();
    assert_eq!(leave.get_str("cmd"), Some("leave"), "{leave:?}");
    assert_eq!(leave.get_str("sessionId"), Some(session_id), "{leave:?}");
    assert_eq!(leave.get_str("opponentId"), Some(gone), "{leave:?}");
    assert_eq!(leave.as_object().map(|o| o.len()), Some(3), "extra fields: {leave:?}");
    let ssu = client.recv();
    assert_eq!(ssu.get_str("cmd"), Some("ssu"), "{ssu:?}");
    assert_eq!(ssu.get_str("sessionId"), Some(session_id), "{ssu:?}");
    assert_eq!(ssu.get_u64("state"), Some(4), "{ssu:?}");
    assert_eq!(ssu.as_object().map(|o| o.len()), Some(3), "extra fields: {ssu:?}");
}

/// After a departure: `client` (back in WAIT) gets a list without `gone`, the session is
/// gone, and `gone` can be registered again (and lands at the end of the list).
fn expect_departure_complete(server: &Server, client: &mut Client, session_id: &str, gone: &str) {
    let me = client.wait_for_list(|list| !list.iter().any(|(sid, _)| sid == gone));
    assert!(me.iter().all(|(_, state)| *state == 1), "everyone left is in WAIT: {me:?}");
    client.send(&format!(r#"{{"cmd":"stop","sessionId":"{session_id}"}}"#));
    client.expect_error(9204);
    let mut again = server.register(gone);
    let mut expected = me.clone();
    expected.push((gone.to_owned(), 1));
    again.wait_for_list(|list| list == expected);
    client.wait_for_list(|list| list == expected);
}

/// alice, bob and carol registered; alice and bob in an ACTIVE session (leave must work
/// from any session state, not just NEW). Returns the session id.
fn three_with_an_active_session(server: &Server) -> (Client, Client, Client, String) {
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    let mut carol = server.register("carol");
    carol.wait_for_list(|list| list.len() == 3);
    let sid = pair_in_session(&mut alice, &mut bob);
    alice.send(&format!(r#"{{"cmd":"call","sessionId":"{sid}","offer":{{"sdp":"o"}}}}"#));
    bob.expect("call");
    assert_eq!(bob.expect("ssu").get_u64("state"), Some(2));
    assert_eq!(alice.expect("ssu").get_u64("state"), Some(2));
    bob.send(&format!(r#"{{"cmd":"accept","sessionId":"{sid}","answer":{{"sdp":"a"}}}}"#));
    alice.expect("accept");
    assert_eq!(alice.expect("ssu").get_u64("state"), Some(3));
    assert_eq!(bob.expect("ssu").get_u64("state"), Some(3));
    (alice, bob, carol, sid)
}

/// bob's socket is gone (however `vanish` does it): alice gets leave + ssu 4, bob's sId is
/// free at once, and the lists (a WAIT bystander's and alice's) end up without the old bob.
fn departure_runs_leave(vanish: impl FnOnce(Client, &mut Client)) {
    let server = Server::start();
    let (mut alice, bob, mut carol, sid) = three_with_an_active_session(&server);

    vanish(bob, &mut alice);

    expect_leave(&mut alice, &sid, "bob");
    // The sId is free at once: registering it right after the leave succeeds (no 9102).
    let mut new_bob = server.register("bob");
    // The old bob's entry is gone; the new one is last in registration order.
    let expected = [("alice".to_owned(), 1), ("carol".to_owned(), 1), ("bob".to_owned(), 1)];
    assert_eq!(carol.wait_for_list(|list| list.len() == 3 && list[2].0 == "bob"), expected);
    assert_eq!(alice.wait_for_list(|list| list == expected), expected);
    assert_eq!(new_bob.wait_for_list(|list| list == expected), expected);
    alice.send(&format!(r#"{{"cmd":"stop","sessionId":"{sid}"}}"#));
    alice.expect_error(9204);
    // The new bob is an ordinary client.
    open_session(&mut new_bob, &mut alice, "alice");
}

#[test]
fn a_tcp_close_without_a_close_frame_mid_session_runs_leave() {
    // FIN without any WebSocket close.
    departure_runs_leave(|bob, _| drop(bob));
}

#[test]
fn a_tcp_reset_mid_session_runs_leave() {
    departure_runs_leave(|bob, alice| {
        // Closing a socket with unread received data makes the kernel send RST, not FIN.
        alice.send(r#"{"cmd":"notify","opponentId":"bob","type":"unread"}"#);
        bob.ws.get_ref().peek(&mut [0u8; 1]).expect("the notify reaches bob's socket");
        drop(bob);
    });
}

#[test]
fn a_close_frame_mid_session_runs_leave_for_the_opponent() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    let sid = pair_in_session(&mut alice, &mut bob);

    // This time the caller goes.
    alice.ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).expect("close");
    // The close reply is the next test's business; here only the departure counts.
    alice.ending();

    expect_leave(&mut bob, &sid, "alice");
    expect_departure_complete(&server, &mut bob, &sid, "alice");
}

#[test]
fn a_close_frame_gets_a_close_reply_then_the_tcp_close() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    pair_in_session(&mut alice, &mut bob);

    bob.ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).expect("close");
    match bob.ending() {
        Ending::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal, "the reply echoes the code"),
        other => panic!("expected a close reply (RFC 6455 5.5.1), got {other:?}"),
    }
    // The server then ends the TCP connection as well.
    let mut rest = Vec::new();
    match bob.ws.get_mut().read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "bytes after the close reply: {rest:?}"),
        Err(e) => assert!(!is_timeout(&e), "the server kept the TCP connection open"),
    }
}

#[test]
fn a_close_frame_from_a_raw_client_gets_a_close_reply() {
    let server = Server::start();
    let mut raw = RawWs::connect(&server);
    raw.send_text(r#"{"cmd":"sId","sId":"raw"}"#);
    assert_eq!(raw.recv_text().get_str("cmd"), Some("sId"));
    // Close 1000 with reason "bye".
    raw.send_frame(OP_CLOSE, b"\x03\xe8bye");
    let mut frames = Vec::new();
    while let Some(frame) = raw.read_frame() {
        frames.push(frame);
    }
    let close = frames.iter().find(|(opcode, _)| *opcode == OP_CLOSE);
    assert_eq!(
        close.map(|(_, payload)| &payload[..2]),
        Some(&[0x03, 0xe8][..]),
        "frames before EOF: {frames:?}"
    );
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

#[test]
fn a_client_that_answers_pings_stays_connected() {
    let server = Server::start_with(&["--ping-interval", "0.2"]);
    let mut alice = server.register("alice");
    // Read (and so answer pings, which tungstenite does) for six intervals, sending nothing
    // else: the pongs alone must keep the connection alive.
    let watch = Duration::from_millis(1200);
    let deadline = Instant::now() + watch;
    let mut pings = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        alice.set_timeout(left);
        match alice.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Text(text)) if text.contains(r#""cmd":"clu""#) => {}
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => break,
            // A signal (a child process exiting) may interrupt the read: read again.
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => panic!("expected pings only, got {other:?}"),
        }
    }
    alice.set_timeout(PATIENCE);
    assert!((4..=8).contains(&pings), "{pings} pings in {watch:?} at a 0.2 s interval");
    // Still connected and still registered.
    alice.send(r#"{"cmd":"notify","opponentId":"alice","type":"x"}"#);
    alice.expect_error(9300);
    let bob = server.register("bob");
    alice.wait_for_list(|list| list == [("alice".to_owned(), 1), ("bob".to_owned(), 1)]);
    drop(bob);
}

#[test]
fn a_client_that_never_answers_pings_is_dropped_and_its_opponent_gets_leave() {
    let interval = Duration::from_millis(200);
    let server = Server::start_with(&["--ping-interval", "0.2"]);
    let mut alice = server.register("alice");
    let mut mute = RawWs::connect(&server);
    mute.send_text(r#"{"cmd":"sId","sId":"mute"}"#);
    let last_sign_of_life = Instant::now();
    let reply = mute.recv_text();
    assert_eq!((reply.get_str("cmd"), reply.get_str("sId")), (Some("sId"), Some("mute")), "{reply:?}");
    alice.send(r#"{"cmd":"session","opponentId":"mute"}"#);
    let sid = alice.expect("session").get_str("sessionId").expect("sessionId").to_owned();
    assert_eq!(alice.expect("ssu").get_u64("state"), Some(1));

    // alice answers pings while waiting; mute never does.
    alice.set_timeout(Duration::from_secs(2));
    expect_leave(&mut alice, &sid, "mute");
    let dropped_after = last_sign_of_life.elapsed();
    alice.set_timeout(PATIENCE);
    assert!(
        dropped_after >= interval * 2,
        "dropped after {dropped_after:?}, before two intervals of silence"
    );
    assert!(dropped_after <= interval * 4, "dropped only after {dropped_after:?}");

    // What mute saw: pings, then the end of the connection without a close frame.
    let mut pings = 0;
    while let Some((opcode, payload)) = mute.read_frame() {
        match opcode {
            OP_PING => pings += 1,
            OP_TEXT => {}
            OP_CLOSE => panic!("a liveness drop sends no close frame, got one: {payload:?}"),
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert!(pings >= 1, "the server never pinged");
    expect_departure_complete(&server, &mut alice, &sid, "mute");
}

#[test]
fn pings_from_a_client_are_answered_and_count_as_signs_of_life() {
    let server = Server::start_with(&["--ping-interval", "0.2"]);
    let mut raw = RawWs::connect(&server);
    raw.send_text(r#"{"cmd":"sId","sId":"pinger"}"#);
    assert_eq!(raw.recv_text().get_str("sId"), Some("pinger"));
    // Never a pong, but a ping of its own every half interval, for six intervals.
    for round in 0..12u8 {
        raw.send_frame(OP_PING, &[b'p', round]);
        std::thread::sleep(Duration::from_millis(100));
    }
    raw.send_text(r#"{"cmd":"notify","opponentId":"pinger","type":"x"}"#);
    let mut pongs = Vec::new();
    let error = loop {
        match raw.read_frame() {
            Some((OP_PONG, payload)) => pongs.push(payload),
            Some((OP_PING, _)) => {}
            Some((OP_TEXT, mut payload)) => {
                let message = simd_json::to_owned_value(&mut payload).expect("JSON");
                if message.get_str("cmd") != Some("clu") {
                    break message;
                }
            }
            other => panic!("the connection should be alive and well, got {other:?}"),
        }
    };
    assert_eq!(error.get_u64("code"), Some(9300), "still registered and served: {error:?}");
    let expected: Vec<Vec<u8>> = (0..12u8).map(|round| vec![b'p', round]).collect();
    assert_eq!(pongs, expected, "every ping answered with its payload, in order");
}

/// Reads everything until the connection ends: the messages, and how it ended.
fn messages_until_end(client: &mut Client) -> (Vec<OwnedValue>, Ending) {
    let mut messages = Vec::new();
    loop {
        match client.ws.read() {
            Ok(Message::Text(text)) => {
                messages.push(simd_json::to_owned_value(&mut text.as_bytes().to_vec()).expect("JSON"))
            }
            Ok(Message::Close(frame)) => return (messages, Ending::Close(frame)),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {
                panic!("connection still open after {PATIENCE:?}")
            }
            Err(_) => return (messages, Ending::Dropped),
        }
    }
}

/// Every client gets close 1001 and no `leave`, and the process exits with status 0. The
/// clients read (and so answer the close) on their own threads while `stop` signals the
/// server and waits for it to exit.
fn shutdown_closes_everyone_with_1001(stop: fn(&mut Server) -> ExitStatus) {
    let mut server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    let mut carol = server.register("carol");
    carol.wait_for_list(|list| list.len() == 3);
    pair_in_session(&mut alice, &mut bob);
    let unregistered = server.connect();

    let readers: Vec<_> = [("alice", alice), ("bob", bob), ("carol", carol), ("unregistered", unregistered)]
        .into_iter()
        .map(|(name, mut client)| (name, std::thread::spawn(move || messages_until_end(&mut client))))
        .collect();
    let started = Instant::now();
    let status = stop(&mut server);
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // Every client answered the close at once, so the 2 s grace period is not waited out.
    assert!(took < Duration::from_millis(1500), "exit took {took:?}");
    for (name, reader) in readers {
        let (messages, ending) = reader.join().expect("reader thread");
        match ending {
            Ending::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away, "{name}: {frame:?}"),
            other => panic!("{name}: expected close 1001, got {other:?}"),
        }
        assert!(
            messages.iter().all(|m| m.get_str("cmd") != Some("leave") && m.get_str("cmd") != Some("ssu")),
            "{name} was told about a departure on shutdown: {messages:?}"
        );
    }
}

#[test]
fn sigterm_closes_every_connection_with_1001_and_exits_0() {
    shutdown_closes_everyone_with_1001(Server::terminate);
}

#[test]
fn sigint_closes_every_connection_with_1001_and_exits_0() {
    shutdown_closes_everyone_with_1001(Server::interrupt);
}

#[test]
fn shutdown_refuses_new_connections_and_does_not_wait_past_the_grace_period() {
    let mut server = Server::start_with(&["--shutdown-grace", "0.5"]);
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    let mut carol = server.register("carol");
    pair_in_session(&mut alice, &mut bob);
    // A connection still in its HTTP handshake.
    let mut half = raw_connect(&server);
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").expect("write");

    let started = Instant::now();
    server.send_signal("TERM");
    // carol reads her close frame (shutdown has begun) but never answers it; alice and bob
    // never read at all. Nobody releases the server: only the grace period ends it.
    assert_eq!(carol.close_code(), 1001);
    match TcpStream::connect(server.addr) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a new connection was accepted during shutdown"),
    }
    // The half-done handshake is cut without a response.
    let mut response = Vec::new();
    match half.read_to_end(&mut response) {
        Ok(_) => assert!(response.is_empty(), "{:?}", String::from_utf8_lossy(&response)),
        Err(e) => assert!(!is_timeout(&e), "the handshake connection stayed open"),
    }
    let status = server.wait_exit();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(took < Duration::from_millis(2000), "shutdown took {took:?} with a 0.5 s grace period");
    // The close frames were written before the process went.
    for client in [&mut alice, &mut bob] {
        let (messages, ending) = messages_until_end(client);
        assert!(matches!(&ending, Ending::Close(Some(frame)) if frame.code == CloseCode::Away), "{ending:?}");
        assert!(messages.iter().all(|m| m.get_str("cmd") != Some("leave")), "{messages:?}");
    }
}

#[test]
fn an_idle_server_exits_0_at_once_on_sigterm() {
    let mut server = Server::start();
    let started = Instant::now();
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1000), "no connections, yet exiting took {took:?}");
}

#[test]
fn a_port_in_use_exits_1_naming_the_address() {
    let server = Server::start();
    let addr = server.addr.to_string();
    let output = run_binary(&["--listen", &addr]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&addr), "{stderr:?}");
    assert!(
        output.stdout.is_empty(),
        "no `listening on` line: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn the_first_line_on_stdout_names_the_bound_address() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_signaling-server"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server binary starts");
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    read.expect("a line");
    let port: u16 = line
        .strip_prefix("listening on 127.0.0.1:")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("not a port in {line:?}: {e}"));
    assert_ne!(port, 0, "the real port, not the requested 0");

    // And the address printed is where it serves.
    let server = Server::start();
    assert_eq!(server.addr.ip().to_string(), "127.0.0.1");
    assert_ne!(server.addr.port(), 0);
    let mut client = server.register("alice");
    client.wait_for_list(|list| list.len() == 1);
}

/// The flags and defaults documented in `--help`, as (flag, default) pairs.
/// Flags whose default is a value that can be passed back.
const FLAGS: [(&str, &str); 17] = [
    ("--listen", "0.0.0.0:8080"),
    ("--ping-interval", "3"),
    ("--max-message", "65536"),
    ("--max-output", "262144"),
    ("--max-output-soft", "65536"),
    ("--max-output-soft-seconds", "10"),
    ("--max-connections", "10000"),
    ("--handshake-timeout", "10"),
    ("--max-request-head", "8192"),
    ("--shutdown-grace", "2"),
    ("--clu-bandwidth", "268435456"),
    ("--rate-limit", "500"),
    ("--rate-burst", "500"),
    ("--max-connections-per-ip", "1000"),
    ("--echo-max-message", "16777216"),
    ("--resume-grace", "15"),
    ("--max-room-clients", "0"),
];

/// Flags that are off unless given, and what their help says by default.
const OPTIONAL_FLAGS: [(&str, &str); 5] = [
    ("--allowed-origin", "any origin"),
    ("--auth-secret", "off"),
    ("--echo-path", "off"),
    ("--tls-cert", "off"),
    ("--tls-key", "off"),
];

#[test]
fn help_lists_every_flag_with_its_default_and_exits_0() {
    let output = run_binary(&["--help"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(output.stderr.is_empty(), "{:?}", String::from_utf8_lossy(&output.stderr));
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    // Each option's entry runs from its line to the next option's line.
    let option_lines: Vec<usize> = help
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim_start().starts_with('-'))
        .map(|(at, _)| at)
        .collect();
    let lines: Vec<&str> = help.lines().collect();
    let entry_of = |flag: &str| -> String {
        let position = option_lines
            .iter()
            .position(|&at| lines[at].split_whitespace().any(|word| word.trim_end_matches(',') == flag))
            .unwrap_or_else(|| panic!("{flag} is not in --help:\n{help}"));
        let end = option_lines.get(position + 1).copied().unwrap_or(lines.len());
        lines[option_lines[position]..end].join("\n")
    };
    for (flag, default) in FLAGS.iter().chain(&OPTIONAL_FLAGS) {
        let entry = entry_of(flag);
        assert!(entry.contains(&format!("[default: {default}]")), "{flag} lacks its default: {entry}");
    }
    for flag in ["-h", "--help", "-V", "--version"] {
        entry_of(flag);
    }
    // No option is documented that this test does not know about.
    let documented = option_lines.len();
    assert_eq!(documented, FLAGS.len() + OPTIONAL_FLAGS.len() + 2, "options in --help changed:\n{help}");
    assert!(help.contains("RUST_LOG"), "{help}");

    let short = run_binary(&["-h"]);
    assert_eq!(short.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&short.stdout), help);
}

#[test]
fn the_documented_defaults_are_accepted_as_flags() {
    let mut args = Vec::new();
    for (flag, default) in FLAGS.iter().skip(1) {
        args.extend([*flag, *default]);
    }
    let server = Server::start_with(&args);
    let mut alice = server.register("alice");
    alice.wait_for_list(|list| list.len() == 1);
}

#[test]
fn version_prints_the_version_and_exits_0() {
    let output = run_binary(&["--version"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.trim(), format!("signaling-server {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_unknown_flag_exits_2_naming_it() {
    for (args, needle) in [
        (&["--bogus-flag"][..], "--bogus-flag"),
        (&["--listen", "127.0.0.1:0", "--frobnicate", "3"], "--frobnicate"),
        (&["--ping-interval", "soon"], "--ping-interval"),
        (&["stray"], "stray"),
    ] {
        let output = run_binary(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: stderr does not name {needle}: {stderr:?}");
        assert!(output.stdout.is_empty(), "{args:?}: printed {:?}", String::from_utf8_lossy(&output.stdout));
    }
}

#[test]
fn the_readme_shows_the_current_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find("```text\nsignaling-server: a WebRTC").expect("the --help block in README.md")
        + "```text\n".len();
    let end = start + readme[start..].find("```").expect("the end of the block");
    let output = run_binary(&["--help"]);
    assert_eq!(&readme[start..end], String::from_utf8_lossy(&output.stdout), "README.md's flags are stale");
}
