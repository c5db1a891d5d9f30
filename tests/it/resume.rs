//! Resume after a lost connection (PROTOCOL.md, *Resume*), over real sockets: TCP resets,
//! the liveness timeout, takeovers, the grace, and the bounds on what is held.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use simd_json::OwnedValue;
use simd_json::prelude::*;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::harness::*;

/// A client that opted in to resume and counts what it receives, as a client must.
struct Counted {
    client: Client,
    sid: String,
    token: String,
    /// Messages received since the registration or resume reply, client lists included.
    received: u64,
}

impl Counted {
    fn register(server: &Server, sid: &str) -> Counted {
        let mut client = server.connect();
        client.send(&format!(r#"{{"cmd":"sId","sId":"{sid}","resume":true}}"#));
        let reply = client.recv();
        assert_eq!(reply.get_str("cmd"), Some("sId"), "{reply:?}");
        let token = reply.get_str("resumeToken").expect("a resume token").to_owned();
        assert!(token.len() >= 22, "{token}");
        Counted { client, sid: sid.to_owned(), token, received: 0 }
    }

    /// The next message, counted.
    fn recv(&mut self) -> OwnedValue {
        let message = self.client.recv();
        self.received += 1;
        message
    }

    /// The next message that is not a client list (lists are counted too).
    fn expect(&mut self, cmd: &str) -> OwnedValue {
        loop {
            let message = self.recv();
            if message.get_str("cmd") != Some("clu") {
                assert_eq!(message.get_str("cmd"), Some(cmd), "{message:?}");
                return message;
            }
        }
    }

    /// Reads (and counts) whatever comes for `window`, answering pings meanwhile.
    fn read_for(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero())
        {
            self.client.set_timeout(left);
            match self.client.ws.read() {
                Ok(Message::Text(_)) => self.received += 1,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
        self.client.set_timeout(PATIENCE);
    }

    /// The network goes: a TCP reset, no close frame.
    fn reset(self) -> Lost {
        reset(self.client.ws.get_ref());
        Lost { sid: self.sid, token: self.token, received: self.received }
    }
}

/// What a client keeps when its connection is lost.
struct Lost {
    sid: String,
    token: String,
    received: u64,
}

impl Lost {
    fn resume_message(&self, received: u64) -> String {
        format!(
            r#"{{"cmd":"resume","sId":"{}","resumeToken":"{}","received":{received}}}"#,
            self.sid, self.token
        )
    }

    /// Resumes on a new connection, claiming `received` messages.
    fn resume_claiming(self, server: &Server, received: u64) -> Counted {
        let mut client = server.connect();
        client.send(&self.resume_message(received));
        let reply = client.recv();
        assert_eq!(reply.get_str("cmd"), Some("resume"), "{reply:?}");
        assert_eq!(reply.get_str("sId"), Some(self.sid.as_str()), "{reply:?}");
        let token = reply.get_str("resumeToken").expect("a fresh token").to_owned();
        assert_ne!(token, self.token, "the token is single use");
        Counted { client, sid: self.sid, token, received: 0 }
    }

    fn resume(self, server: &Server) -> Counted {
        let received = self.received;
        self.resume_claiming(server, received)
    }
}

/// Closes with SO_LINGER 0: the kernel sends RST.
fn reset(stream: &TcpStream) {
    socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO)).expect("linger");
    stream.shutdown(std::net::Shutdown::Both).ok();
}

fn ice(session: &str, n: u32) -> String {
    format!(r#"{{"cmd":"icecandidate","sessionId":"{session}","icecandidate":{{"candidate":"c{n}"}}}}"#)
}

fn candidate(message: &OwnedValue) -> Option<String> {
    message.get("icecandidate").and_then(|c| c.get_str("candidate")).map(str::to_owned)
}

/// alice (resumable) called bob (resumable); both have read the session messages.
fn call(server: &Server) -> (Counted, Counted, String) {
    let mut alice = Counted::register(server, "alice");
    let mut bob = Counted::register(server, "bob");
    alice.client.send(r#"{"cmd":"session","opponentId":"bob"}"#);
    let session = alice.expect("session").get_str("sessionId").expect("id").to_owned();
    alice.expect("ssu");
    bob.expect("ssu");
    (alice, bob, session)
}

/// The server has noticed the reset: the away gauge says so.
fn wait_until_away(server: &Server, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(server, "signaling_clients_away") != Some(count) {
        assert!(Instant::now() < deadline, "the server never counted {count} away");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The next message that is neither a client list nor an `ssu`, if one comes within `window`.
fn recv_within(client: &mut Client, window: Duration) -> Option<OwnedValue> {
    client.set_timeout(window);
    let deadline = Instant::now() + window;
    let found = loop {
        if Instant::now() >= deadline {
            break None;
        }
        match client.ws.read() {
            Ok(Message::Text(text)) => {
                let value = simd_json::to_owned_value(&mut text.as_bytes().to_vec()).expect("JSON");
                if !matches!(value.get_str("cmd"), Some("clu" | "ssu")) {
                    break Some(value);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                break None;
            }
            Err(e) => panic!("connection failed: {e}"),
        }
    };
    client.set_timeout(Duration::from_secs(10));
    found
}

fn metric(server: &Server, name: &str) -> Option<u64> {
    let page = http_exchange(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    page.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_reset_mid_call_is_resumed_the_call_goes_on_and_the_peer_never_sees_leave() {
    let server = Server::start();
    let (alice, mut bob, session) = call(&server);
    let lost = alice.reset();
    wait_until_away(&server, 1);
    let mut alice = lost.resume(&server);
    // Both ways, on the resumed session.
    alice.client.send(&ice(&session, 1));
    assert_eq!(candidate(&bob.expect("icecandidate")).as_deref(), Some("c1"));
    bob.client.send(&ice(&session, 2));
    assert_eq!(candidate(&alice.expect("icecandidate")).as_deref(), Some("c2"));
    // No leave, no ssu, nothing else reached bob.
    bob.client.expect_quiet(Duration::from_millis(300));
    assert_eq!(metric(&server, "signaling_resumes_total"), Some(1));
    assert_eq!(metric(&server, "signaling_clients_away"), Some(0));
}

#[test]
fn messages_sent_while_away_arrive_in_order_after_the_resume() {
    let server = Server::start();
    let (alice, mut bob, session) = call(&server);
    let lost = alice.reset();
    wait_until_away(&server, 1);
    for n in 1..=20 {
        bob.client.send(&ice(&session, n));
    }
    bob.client.send(r#"{"cmd":"notify","opponentId":"alice","type":"ring"}"#);
    // Nothing came back to bob: a relay to an away client is held, not refused.
    bob.client.expect_quiet(Duration::from_millis(200));
    let mut alice = lost.resume(&server);
    for n in 1..=20 {
        assert_eq!(candidate(&alice.expect("icecandidate")), Some(format!("c{n}")));
    }
    assert_eq!(alice.expect("notify").get_str("type"), Some("ring"));
    alice.client.expect_quiet(Duration::from_millis(200));
}

#[test]
fn a_message_written_before_the_reset_but_not_counted_is_replayed() {
    let server = Server::start();
    let (alice, bob, session) = call(&server);
    let mut bob = bob;
    bob.client.send(&ice(&session, 1));
    // It reached alice's socket, but the app never read it: it is not counted.
    alice.client.ws.get_ref().peek(&mut [0u8; 1]).expect("bytes arrived");
    let lost = alice.reset();
    wait_until_away(&server, 1);
    let mut alice = lost.resume(&server);
    assert_eq!(candidate(&alice.expect("icecandidate")).as_deref(), Some("c1"));
}

#[test]
fn a_count_below_what_a_pong_confirmed_cannot_be_replayed_so_the_client_is_gone() {
    let server = Server::start_with(&["--ping-interval", "0.5"]);
    let (mut alice, mut bob, session) = call(&server);
    bob.client.send(&ice(&session, 1));
    alice.expect("icecandidate");
    // Reading on lets tungstenite answer the next pings: those pongs confirm everything.
    // Both read in turns, well within the liveness limit of two intervals.
    for _ in 0..2 {
        alice.read_for(Duration::from_millis(600));
        bob.read_for(Duration::from_millis(300));
    }
    let lost = alice.reset();
    wait_until_away(&server, 1);
    // The right token with a count the server can no longer replay: 9104, and since the
    // rightful owner can never resume, it is gone at once rather than at the grace's end.
    let mut client = server.connect();
    client.send(&lost.resume_message(lost.received - 1));
    client.expect_error(9104);
    bob.client.expect_leave(&session, "alice");
    client.register_as("alice");
}

#[test]
fn the_grace_running_out_sends_leave_and_ssu_4() {
    let server = Server::start_with(&["--resume-grace", "0.5"]);
    let (alice, mut bob, session) = call(&server);
    let lost = alice.reset();
    wait_until_away(&server, 1);
    let started = Instant::now();
    let leave = bob.expect("leave");
    assert!(started.elapsed() >= Duration::from_millis(300), "leave came before the grace ended");
    assert_eq!(leave.get_str("sessionId"), Some(session.as_str()));
    assert_eq!(leave.get_str("opponentId"), Some("alice"));
    let ssu = bob.expect("ssu");
    assert_eq!(ssu.get_u64("state"), Some(4));
    let mut client = server.connect();
    client.send(&lost.resume_message(lost.received));
    client.expect_error(9104);
    assert_eq!(metric(&server, "signaling_resume_graces_expired_total"), Some(1));
    // alice is free to register again.
    client.register_as("alice");
}

#[test]
fn a_close_frame_means_leave_at_once() {
    let server = Server::start();
    let (mut alice, mut bob, session) = call(&server);
    alice
        .client
        .ws
        .close(Some(CloseFrame { code: CloseCode::Away, reason: "page closed".into() }))
        .expect("close");
    bob.client.expect_leave(&session, "alice");
    let mut client = server.connect();
    client.send(&format!(r#"{{"cmd":"resume","sId":"alice","resumeToken":"{}","received":2}}"#, alice.token));
    client.expect_error(9104);
}

#[test]
fn wrong_spent_and_unknown_all_get_the_same_9104() {
    let server = Server::start();
    let (alice, _bob, _session) = call(&server);
    let lost = alice.reset();
    wait_until_away(&server, 1);
    let old_token = lost.token.clone();
    let received = lost.received;
    let refusal = |text: String| -> String {
        let mut client = server.connect();
        client.send(&text);
        let error = client.expect("error");
        assert_eq!(error.get_u64("code"), Some(9104), "{error:?}");
        error.get_str("message").expect("a message").to_owned()
    };
    let wrong = refusal(format!(
        r#"{{"cmd":"resume","sId":"alice","resumeToken":"{}","received":{received}}}"#,
        "A".repeat(22)
    ));
    let unknown = refusal(format!(
        r#"{{"cmd":"resume","sId":"nobody","resumeToken":"{old_token}","received":{received}}}"#
    ));
    let alice = lost.resume(&server);
    let spent =
        refusal(format!(r#"{{"cmd":"resume","sId":"alice","resumeToken":"{old_token}","received":0}}"#));
    // The right token with a count above what was sent; alice's connection stays.
    let too_many = refusal(format!(
        r#"{{"cmd":"resume","sId":"alice","resumeToken":"{}","received":{}}}"#,
        alice.token,
        received + 5
    ));
    assert_eq!([&wrong, &unknown, &too_many], [&spent, &spent, &spent]);
    assert_eq!(metric(&server, "signaling_resumes_refused_total"), Some(4));
    drop(alice);
}

#[test]
fn a_resume_while_the_old_connection_is_open_closes_it_with_4001() {
    let server = Server::start();
    let (mut alice, mut bob, session) = call(&server);
    let lost = Lost { sid: alice.sid.clone(), token: alice.token.clone(), received: alice.received };
    let mut newer = lost.resume(&server);
    assert_eq!(alice.client.close_code(), 4001);
    bob.client.send(&ice(&session, 7));
    assert_eq!(candidate(&newer.expect("icecandidate")).as_deref(), Some("c7"));
    bob.client.expect_quiet(Duration::from_millis(200));
}

#[test]
fn held_output_past_max_output_makes_the_away_client_gone() {
    let server = Server::start_with(&["--max-message", "4096", "--max-output", "8192"]);
    let (alice, mut bob, session) = call(&server);
    let lost = alice.reset();
    wait_until_away(&server, 1);
    let offer = "x".repeat(3000);
    let mut refused_after = None;
    for n in 1..=5 {
        bob.client.send(&format!(r#"{{"cmd":"call","sessionId":"{session}","offer":"{offer}"}}"#));
        // The first call moves the session to PENDING: bob hears ssu 2 about that.
        if let Some(message) = recv_within(&mut bob.client, Duration::from_millis(200))
            && message.get_str("cmd") == Some("error")
        {
            assert_eq!(message.get_u64("code"), Some(9401), "{message:?}");
            refused_after = Some(n);
            break;
        }
    }
    assert_eq!(refused_after, Some(3), "8192 bytes hold two 3000-byte calls, not three");
    bob.client.expect_ssu(&session, 4);
    let mut client = server.connect();
    client.send(&lost.resume_message(lost.received));
    client.expect_error(9104);
    assert_eq!(metric(&server, "signaling_resume_held_over_limit_total"), Some(1));
}

#[test]
fn the_liveness_timeout_leaves_a_resumable_client_away() {
    let server = Server::start_with(&["--ping-interval", "0.2"]);
    let (alice, mut bob, session) = call(&server);
    // alice's app hangs: nothing is read, no pong goes out, the socket stays open. bob
    // keeps reading, so his pongs keep him alive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&server, "signaling_clients_away") != Some(1) {
        assert!(Instant::now() < deadline, "alice was never dropped for silence");
        bob.read_for(Duration::from_millis(50));
    }
    bob.client.send(&ice(&session, 3));
    let lost = Lost { sid: alice.sid.clone(), token: alice.token.clone(), received: alice.received };
    let mut alice_again = lost.resume(&server);
    assert_eq!(candidate(&alice_again.expect("icecandidate")).as_deref(), Some("c3"));
    drop(alice);
}

#[test]
fn a_client_that_did_not_opt_in_gets_no_token_and_a_reset_means_leave() {
    let server = Server::start();
    let mut alice = server.connect();
    alice.send(r#"{"cmd":"sId","sId":"alice"}"#);
    let reply = alice.recv();
    assert_eq!(reply.as_object().map(|o| o.len()), Some(2), "exactly cmd and sId: {reply:?}");
    let mut bob = server.register("bob");
    bob.send(r#"{"cmd":"session","opponentId":"alice"}"#);
    let session = bob.expect("session").get_str("sessionId").expect("id").to_owned();
    bob.expect_ssu(&session, 1);
    reset(alice.ws.get_ref());
    bob.expect_leave(&session, "alice");
}

#[test]
fn resume_grace_0_turns_resume_off() {
    let server = Server::start_with(&["--resume-grace", "0"]);
    let mut alice = server.connect();
    alice.send(r#"{"cmd":"sId","sId":"alice","resume":true}"#);
    let reply = alice.recv();
    assert_eq!(reply.get_str("resumeToken"), None, "{reply:?}");
    let mut other = server.connect();
    other.send(r#"{"cmd":"resume","sId":"alice","resumeToken":"AAAAAAAAAAAAAAAAAAAAAA","received":0}"#);
    other.expect_error(9104);
}

#[test]
fn no_more_clients_are_away_than_max_connections() {
    let server = Server::start_with(&["--max-connections", "3"]);
    for i in 1..=3 {
        let lost = Counted::register(&server, &format!("c{i}")).reset();
        wait_until_away(&server, i.min(3));
        drop(lost);
    }
    let lost = Counted::register(&server, "c4").reset();
    // Past the bound the lost client is gone, as without resume: its sId is free at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut client = server.connect();
        client.send(r#"{"cmd":"sId","sId":"c4"}"#);
        if client.recv().get_str("cmd") == Some("sId") {
            break;
        }
        assert!(Instant::now() < deadline, "c4 stayed registered past the away bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&server, "signaling_clients_away"), Some(3));
    drop(lost);
}
