//! Fake-clock tests of the connection machine: every timed rule is driven by instants the
//! test makes up, and bytes go in and out through plain buffers. No sockets, no sleeps.

use std::io::{self, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;

const PING: Duration = Duration::from_secs(3);
const FIRST_PING: Duration = Duration::from_secs(2);

fn settings() -> Settings {
    let config = Config { ping_interval: PING, ..Config::default() };
    Settings::new(&config, Duration::from_secs(1))
}

const OPEN_POLICY: UpgradePolicy<'static> =
    UpgradePolicy { allowed_origins: &[], auth_secret: None, echo_path: None, now_unix: 0 };

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A socket that takes `budget` bytes, then blocks.
#[derive(Default)]
struct Socket {
    taken: Vec<u8>,
    budget: usize,
    shut: bool,
}

impl Socket {
    fn open() -> Socket {
        Socket { budget: usize::MAX, ..Socket::default() }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        self.taken.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for Socket {
    fn shutdown_write(&mut self) {
        self.shut = true;
    }
}

/// A masked client frame (RFC 6455 requires clients to mask).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
    frame
}

fn text(payload: &str) -> Vec<u8> {
    client_frame(0x81, payload.as_bytes())
}

/// Feeds `bytes` and collects every event until the machine wants more input.
fn feed(conn: &mut Connection, bytes: &[u8], now: Instant, settings: &Settings) -> Vec<Event> {
    feed_with(conn, bytes, now, settings, &OPEN_POLICY)
}

fn feed_with(
    conn: &mut Connection,
    bytes: &[u8],
    now: Instant,
    settings: &Settings,
    policy: &UpgradePolicy<'_>,
) -> Vec<Event> {
    let mut fresh = bytes;
    let mut events = Vec::new();
    while let Some(event) = conn.poll_event(&mut fresh, now, settings, policy) {
        // The transport acts on a close at once; until then the machine is as it was.
        let done = matches!(event, Event::Close(_));
        events.push(event);
        if done {
            break;
        }
    }
    conn.keep_unread(fresh);
    events
}

/// A connection accepted at `t0` and upgraded at once, its 101 written out.
fn open(t0: Instant, settings: &Settings) -> Connection {
    let mut conn = Connection::new(t0, Wire::Plain, settings, FIRST_PING);
    assert_eq!(feed(&mut conn, UPGRADE, t0, settings), [Event::Opened { entry: Entry::default() }]);
    let mut socket = Socket::open();
    conn.write_to(&mut socket, t0, settings).expect("writes");
    assert!(socket.taken.starts_with(b"HTTP/1.1 101 "));
    conn
}

fn secs(n: f64) -> Duration {
    Duration::from_secs_f64(n)
}

#[test]
fn the_handshake_deadline_drops_a_connection_that_never_finishes_its_head() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = Connection::new(t0, Wire::Plain, &settings, FIRST_PING);
    assert_eq!(conn.next_deadline(&settings), Some(t0 + settings.handshake_timeout));
    assert!(feed(&mut conn, &UPGRADE[..30], t0 + secs(1.0), &settings).is_empty());
    let almost = t0 + settings.handshake_timeout - secs(0.001);
    assert_eq!(conn.handle_timeout(almost, &settings), None);
    assert_eq!(
        conn.handle_timeout(t0 + settings.handshake_timeout, &settings),
        Some(Close::Drop(CloseReason::HandshakeTimeout))
    );
    // Bytes do not extend the deadline: trickling a head is no way to stay.
    assert_eq!(conn.close(Close::Drop(CloseReason::HandshakeTimeout), almost, &settings), Departure::NotOpen);
    assert!(conn.is_finished());
}

#[test]
fn an_http_1_0_upgrade_gets_505_and_a_close() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = Connection::new(t0, Wire::Plain, &settings, FIRST_PING);
    let head = String::from_utf8_lossy(UPGRADE).replace("HTTP/1.1", "HTTP/1.0");
    let events = feed(&mut conn, head.as_bytes(), t0, &settings);
    let [Event::Close(how @ Close::Http(response))] = &events[..] else { panic!("{events:?}") };
    assert!(response.starts_with(b"HTTP/1.1 505 "));
    assert_eq!(conn.close(how.clone(), t0, &settings), Departure::NotOpen);
    let mut socket = Socket::open();
    conn.write_to(&mut socket, t0, &settings).expect("writes");
    assert!(socket.taken.starts_with(b"HTTP/1.1 505 "));
    assert!(socket.shut, "the response is followed by a half-close");
    assert!(!conn.is_finished(), "it waits for the peer to end");
    assert_eq!(conn.on_eof(), None);
    assert!(conn.is_finished());
}

#[test]
fn frames_sent_with_the_upgrade_are_read_after_it() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = Connection::new(t0, Wire::Plain, &settings, FIRST_PING);
    let bytes = [UPGRADE, &text(r#"{"cmd":"sId","sId":"a"}"#), &text("2")].concat();
    let events = feed(&mut conn, &bytes, t0, &settings);
    assert_eq!(
        events,
        [
            Event::Opened { entry: Entry::default() },
            Event::Message(Bytes::from_static(br#"{"cmd":"sId","sId":"a"}"#)),
            Event::Message(Bytes::from_static(b"2")),
        ]
    );
}

#[test]
fn a_token_is_checked_against_the_time_passed_in() {
    let settings = settings();
    let secret = b"0123456789abcdef";
    let token = crate::auth::mint(secret, "alice", None, 100);
    let head = String::from_utf8_lossy(UPGRADE).replace("GET / ", &format!("GET /?token={token} "));
    let t0 = Instant::now();
    for (now_unix, opened) in [(99, true), (100, false)] {
        let policy = UpgradePolicy { auth_secret: Some(secret), now_unix, ..OPEN_POLICY };
        let mut conn = Connection::new(t0, Wire::Plain, &settings, FIRST_PING);
        let events = feed_with(&mut conn, head.as_bytes(), t0, &settings, &policy);
        if opened {
            assert_eq!(
                events,
                [Event::Opened { entry: Entry { allowed_sid: Some("alice".into()), room: None } }]
            );
        } else {
            assert_eq!(
                events,
                [Event::Close(Close::Http(Cow::Borrowed(crate::transport::http::UNAUTHORIZED)))]
            );
        }
    }
}

#[test]
fn pings_follow_the_first_ping_offset_then_every_interval() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    assert_eq!(conn.next_deadline(&settings), Some(t0 + FIRST_PING));
    let mut socket = Socket::open();
    assert_eq!(conn.handle_timeout(t0 + FIRST_PING - secs(0.001), &settings), None);
    assert!(!conn.wants_write());
    assert_eq!(conn.handle_timeout(t0 + FIRST_PING, &settings), None);
    conn.write_to(&mut socket, t0 + FIRST_PING, &settings).expect("writes");
    assert_eq!(socket.taken, [0x89, 0x08, 0, 0, 0, 0, 0, 0, 0, 0], "a ping carrying the count of messages");
    assert_eq!(conn.next_deadline(&settings), Some(t0 + FIRST_PING + PING).min(Some(t0 + 2 * PING)));
}

#[test]
fn a_pong_acknowledges_the_messages_queued_before_its_ping() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    let mut socket = Socket::open();
    for message in [&b"one"[..], b"two"] {
        assert_eq!(conn.queue_message(message, false, t0, &settings), Queued::Yes);
    }
    assert_eq!(
        conn.queue_list(&Rc::from(&b"{\"cmd\":\"clu\",\"list\":[]}"[..]), true, t0, &settings),
        ListQueued::Yes
    );
    assert_eq!(conn.messages_queued(), 3);
    conn.handle_timeout(t0 + FIRST_PING, &settings);
    conn.write_to(&mut socket, t0 + FIRST_PING, &settings).expect("writes");
    let ping = [0x89, 0x08, 0, 0, 0, 0, 0, 0, 0, 3];
    assert!(socket.taken.ends_with(&ping), "the ping follows the messages and carries 3");
    conn.queue_message(b"four", false, t0, &settings);

    let pong = |count: u64| client_frame(0x8A, &count.to_be_bytes());
    let now = t0 + FIRST_PING;
    assert_eq!(feed(&mut conn, &pong(3), now, &settings), [Event::Acknowledged { messages: 3 }]);
    // A repeat, a count never queued, a short payload, an unsolicited empty pong: nothing.
    for pong in [pong(3), pong(2), pong(5), client_frame(0x8A, b"abc"), client_frame(0x8A, b"")] {
        assert_eq!(feed(&mut conn, &pong, now, &settings), []);
    }
    assert_eq!(feed(&mut conn, &pong(4), now, &settings), [Event::Acknowledged { messages: 4 }]);
}

#[test]
fn a_connection_silent_for_two_intervals_is_dropped_and_any_byte_keeps_it() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    let t1 = t0 + secs(5.0);
    // A pong (the answer to our ping) is a sign of life.
    assert!(feed(&mut conn, &client_frame(0x8a, b""), t1, &settings).is_empty());
    assert_eq!(conn.handle_timeout(t0 + 2 * PING, &settings), None);
    assert_eq!(conn.handle_timeout(t1 + 2 * PING - secs(0.001), &settings), None);
    assert_eq!(
        conn.handle_timeout(t1 + 2 * PING, &settings),
        Some(Close::Drop(CloseReason::LivenessTimeout))
    );
    assert_eq!(
        conn.close(Close::Drop(CloseReason::LivenessTimeout), t1 + 2 * PING, &settings),
        Departure::Left
    );
    assert!(conn.is_finished(), "a drop sends nothing");
}

#[test]
fn a_client_that_pings_but_never_reads_is_closed_after_two_intervals_of_no_progress() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    assert_eq!(conn.queue_message(b"hello", false, t0, &settings), Queued::Yes);
    let mut blocked = Socket::default();
    let t1 = t0 + secs(1.0);
    assert_eq!(conn.write_to(&mut blocked, t1, &settings).expect("writes"), (Flush::Pending, 0));
    let mut t = t1;
    while t < t1 + 2 * PING - secs(0.5) {
        t += secs(0.5);
        feed(&mut conn, &client_frame(0x89, b""), t, &settings);
        conn.write_to(&mut blocked, t, &settings).expect("writes");
        if t < t1 + 2 * PING {
            assert_eq!(conn.handle_timeout(t, &settings), None, "at {:?}", t - t1);
        }
    }
    assert_eq!(conn.handle_timeout(t1 + 2 * PING, &settings), Some(Close::Frame(CloseReason::OutputLimit)));
}

#[test]
fn the_hard_limit_refuses_a_message_that_would_pass_it() {
    let settings = Settings { max_output: 1000, ..settings() };
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    assert_eq!(conn.queue_message(&[b'x'; 900], false, t0, &settings), Queued::Yes);
    assert_eq!(conn.queue_message(&[b'x'; 100], false, t0, &settings), Queued::OverLimit);
    assert!(conn.fits(80, &settings));
    assert_eq!(conn.queue_message(&[b'x'; 80], false, t0, &settings), Queued::Yes);
    let _ = conn.close(Close::Frame(CloseReason::OutputLimit), t0, &settings);
    assert_eq!(conn.queue_message(b"late", false, t0, &settings), Queued::NotOpen);
}

#[test]
fn output_over_the_soft_limit_for_its_time_closes_however_fast_it_drains() {
    let settings = Settings { max_output_soft: 1000, max_output_soft_for: secs(5.0), ..settings() };
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    for _ in 0..20 {
        assert_eq!(conn.queue_message(&[b'x'; 200], false, t0, &settings), Queued::Yes);
    }
    assert_eq!(conn.next_deadline(&settings), Some(t0 + secs(5.0)).min(Some(t0 + FIRST_PING)));
    // It reads, a little at a time: never stalled, but never under the soft limit either.
    let mut t = t0;
    for _ in 0..9 {
        t += secs(0.5);
        feed(&mut conn, &client_frame(0x8a, b""), t, &settings);
        let mut trickle = Socket { budget: 100, ..Socket::default() };
        assert_eq!(conn.write_to(&mut trickle, t, &settings).expect("writes"), (Flush::Pending, 100));
        assert_eq!(conn.handle_timeout(t, &settings), None);
    }
    assert_eq!(
        conn.handle_timeout(t0 + secs(5.0), &settings),
        Some(Close::Frame(CloseReason::OutputSoftLimit))
    );
}

#[test]
fn dropping_under_the_soft_limit_stops_its_clock() {
    let settings = Settings { max_output_soft: 1000, max_output_soft_for: secs(5.0), ..settings() };
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    conn.queue_message(&[b'x'; 2000], false, t0, &settings);
    let mut socket = Socket { budget: 1500, ..Socket::default() };
    conn.write_to(&mut socket, t0 + secs(4.0), &settings).expect("writes");
    feed(&mut conn, &client_frame(0x8a, b""), t0 + secs(5.0), &settings);
    assert_eq!(conn.handle_timeout(t0 + secs(5.0), &settings), None);
    conn.queue_message(&[b'x'; 1000], false, t0 + secs(5.0), &settings);
    assert_eq!(conn.handle_timeout(t0 + secs(9.9), &settings), None, "the clock restarted at 5 s");
}

#[test]
fn a_half_written_client_list_counts_against_the_soft_limit() {
    let settings = Settings { max_output_soft: 1000, max_output_soft_for: secs(5.0), ..settings() };
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    let list: Rc<[u8]> = Rc::from(vec![b'l'; 4000]);
    assert_eq!(conn.queue_list(&list, true, t0, &settings), ListQueued::Yes);
    assert!(conn.held_bytes() > 4000);
    let mut socket = Socket { budget: 10, ..Socket::default() };
    conn.write_to(&mut socket, t0, &settings).expect("writes");
    let newer: Rc<[u8]> = Rc::from(vec![b'm'; 10]);
    assert_eq!(conn.queue_list(&newer, true, t0, &settings), ListQueued::Busy, "it pins the old one");
    feed(&mut conn, &client_frame(0x8a, b""), t0 + secs(4.0), &settings);
    assert_eq!(
        conn.handle_timeout(t0 + secs(5.0), &settings),
        Some(Close::Frame(CloseReason::OutputSoftLimit))
    );
}

#[test]
fn our_close_waits_for_the_reply_for_the_linger_then_ends() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    assert_eq!(conn.close(Close::Frame(CloseReason::RateLimit), t0, &settings), Departure::Left);
    assert!(!conn.is_open() && !conn.is_finished());
    let mut socket = Socket::open();
    conn.write_to(&mut socket, t0, &settings).expect("writes");
    assert_eq!(&socket.taken[..4], &[0x88, 2 + 31, 0x03, 0xf0], "close 1008 and its reason");
    assert!(socket.shut);
    assert_eq!(conn.close(Close::Frame(CloseReason::Shutdown), t0, &settings), Departure::NotOpen);
    assert!(feed(&mut conn, &text("ignored while closing"), t0, &settings).is_empty());
    assert_eq!(conn.handle_timeout(t0 + secs(0.999), &settings), None);
    assert!(!conn.is_finished());
    assert_eq!(conn.handle_timeout(t0 + secs(1.0), &settings), None);
    assert!(conn.is_finished(), "the linger is over");
}

#[test]
fn the_peers_close_reply_ends_a_closing_connection_before_the_linger() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    let _ = conn.close(Close::Frame(CloseReason::ProtocolError), t0, &settings);
    conn.write_to(&mut Socket::open(), t0, &settings).expect("writes");
    feed(&mut conn, &client_frame(0x88, &[0x03, 0xe8]), t0 + secs(0.1), &settings);
    assert!(conn.is_finished());
}

#[test]
fn a_close_frame_from_the_peer_is_answered_and_ends_the_connection() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    let events = feed(&mut conn, &client_frame(0x88, &[0x03, 0xe8]), t0, &settings);
    assert_eq!(events, [Event::Close(Close::Answer)]);
    assert_eq!(conn.close(Close::Answer, t0, &settings), Departure::Left);
    let mut socket = Socket::open();
    conn.write_to(&mut socket, t0, &settings).expect("writes");
    assert_eq!(&socket.taken[..2], &[0x88, 0x02], "the close echoed back");
    assert!(conn.is_finished());
}

#[test]
fn the_rate_limiter_drops_then_closes() {
    let settings = Settings { rate_limit: 10.0, rate_burst: 2, ..settings() };
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    let three = [text("1"), text("2"), text("3")].concat();
    let events = feed(&mut conn, &three, t0, &settings);
    assert_eq!(
        events[..2],
        [Event::Message(Bytes::from_static(b"1")), Event::Message(Bytes::from_static(b"2"))]
    );
    assert_eq!(events[2], Event::RateLimited);
    // 100 ms later one token has come back.
    let events = feed(&mut conn, &text("4"), t0 + secs(0.1), &settings);
    assert_eq!(events, [Event::Message(Bytes::from_static(b"4"))]);
    let flood = [text("5"), text("6"), text("7")].concat();
    let events = feed(&mut conn, &flood, t0 + secs(0.1), &settings);
    assert_eq!(events.last(), Some(&Event::Close(Close::Frame(CloseReason::RateLimit))), "{events:?}");
}

#[test]
fn protocol_violations_name_their_close() {
    let settings =
        Settings { ws: settings().ws.max_message_size(Some(100)).max_frame_size(Some(100)), ..settings() };
    let t0 = Instant::now();
    for (bytes, close) in [
        (vec![0x81, 0x01, b'x'], Close::Frame(CloseReason::ProtocolError)),
        (client_frame(0x81, &[b'x'; 101]), Close::Frame(CloseReason::MessageTooBig)),
        (client_frame(0x81, &[0xff, 0xfe]), Close::Frame(CloseReason::InvalidUtf8)),
        (client_frame(0xc1, b"x"), Close::Frame(CloseReason::ProtocolError)),
    ] {
        let mut conn = open(t0, &settings);
        assert_eq!(feed(&mut conn, &bytes, t0, &settings), [Event::Close(close)]);
    }
}

#[test]
fn input_left_at_the_end_of_a_turn_is_read_first_next_turn() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    let [one, two, three] = ["1", "2", "3"].map(|n| n.repeat(200));
    let bytes = [text(&one), text(&two)].concat();
    let mut fresh = &bytes[..];
    assert_eq!(conn.poll_event(&mut fresh, t0, &settings, &OPEN_POLICY), Some(Event::Message(one.into())));
    // The turn's budget ran out here: what tungstenite did not take waits in the stash.
    assert!(!fresh.is_empty());
    conn.keep_unread(fresh);
    assert!(conn.has_unread());
    let events = feed(&mut conn, &text(&three), t0, &settings);
    assert_eq!(events, [Event::Message(two.into()), Event::Message(three.into())]);
    assert!(!conn.has_unread());
}

#[test]
fn a_complete_frame_inside_tungstenites_buffer_comes_out_without_new_bytes() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    let bytes = [text("1"), text("2")].concat();
    let mut fresh = &bytes[..];
    assert_eq!(conn.poll_event(&mut fresh, t0, &settings, &OPEN_POLICY), Some(Event::Message("1".into())));
    conn.keep_unread(fresh);
    assert_eq!(feed(&mut conn, b"", t0, &settings), [Event::Message("2".into())]);
}

#[test]
fn end_of_file_drops_an_open_connection_and_completes_a_closing_one() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    assert_eq!(conn.on_eof(), Some(Close::Drop(CloseReason::ConnectionLost)));
    let _ = conn.close(Close::Frame(CloseReason::Shutdown), t0, &settings);
    conn.write_to(&mut Socket::open(), t0, &settings).expect("writes");
    assert_eq!(conn.on_eof(), None);
    assert!(conn.is_finished());
}

#[test]
fn a_write_error_leaves_the_close_to_the_transport() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Sink for Broken {
        fn shutdown_write(&mut self) {}
    }
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    conn.queue_message(b"x", false, t0, &settings);
    assert!(conn.write_to(&mut Broken, t0, &settings).is_err());
    assert!(conn.is_open(), "still open: the transport's close runs the core's leave");
    assert_eq!(conn.close(Close::Drop(CloseReason::ConnectionLost), t0, &settings), Departure::Left);
}

#[test]
fn a_replay_past_the_cap_leaves_room_for_the_messages_after_it() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    // A replay of 300 KB, within the core's bound of twice --max-output (256 KiB).
    for _ in 0..5 {
        assert_eq!(conn.queue_message(&[b'x'; 60_000], true, t0, &settings), Queued::Yes);
    }
    // A slow link takes some of it.
    let mut socket = Socket { budget: 20_000, ..Socket::default() };
    conn.write_to(&mut socket, t0, &settings).expect("writes");
    let ice = br#"{"cmd":"icecandidate","icecandidate":null}"#;
    assert_eq!(conn.queue_message(ice, false, t0, &settings), Queued::Yes);
    // Nor does it start the soft-limit clock: read slowly and alive, it is never closed.
    for second in 1..=12 {
        let now = t0 + secs(f64::from(second));
        feed(&mut conn, &client_frame(0x89, b""), now, &settings);
        socket.budget = 10_000;
        conn.write_to(&mut socket, now, &settings).expect("writes");
        assert_eq!(conn.handle_timeout(now, &settings), None, "closed at {second} s");
    }
}

/// The replay is exempt from the soft limit for one `--max-output-soft-seconds` only: a
/// client that reads a few bytes per ping interval cannot pin it forever.
#[test]
fn a_trickling_reader_cannot_pin_a_replay_forever() {
    let settings = settings();
    let t0 = Instant::now();
    let mut conn = open(t0, &settings);
    // The largest replay the core can produce: twice --max-output kept, once held.
    let chunk = 60_000;
    let replay = 3 * settings.max_output / chunk;
    for _ in 0..replay {
        assert_eq!(conn.queue_message(&vec![b'x'; chunk], true, t0, &settings), Queued::Yes);
    }
    let mut closed = None;
    for step in 1..=120u32 {
        let now = t0 + secs(f64::from(step) * 5.0);
        // Alive (a ping) and reading: 100 bytes every 5 s, never stalled.
        feed(&mut conn, &client_frame(0x89, b""), now, &settings);
        let mut socket = Socket { budget: 100, ..Socket::default() };
        conn.write_to(&mut socket, now, &settings).expect("writes");
        if let Some(how) = conn.handle_timeout(now, &settings) {
            closed = Some((step * 5, how));
            break;
        }
    }
    assert!(
        closed.is_some(),
        "10 minutes later still open, holding {} bytes (soft limit {} for {:?})",
        conn.held_bytes(),
        settings.max_output_soft,
        settings.max_output_soft_for
    );
}

mod tls {
    //! The same machine over TLS, against an in-memory rustls client.

    use std::io::{Read, Write};
    use std::sync::Arc;

    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

    use super::*;

    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Moves the client's records into the machine and the machine's back; the events seen.
    fn exchange(
        client: &mut ClientConnection,
        conn: &mut Connection,
        now: Instant,
        settings: &Settings,
    ) -> Vec<Event> {
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).unwrap();
        }
        let events = feed(conn, &records, now, settings);
        let mut socket = Socket::open();
        conn.write_to(&mut socket, now, settings).unwrap();
        if !socket.taken.is_empty() {
            client.read_tls(&mut socket.taken.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        events
    }

    #[test]
    fn a_tls_client_upgrades_and_exchanges_messages() {
        let settings = settings();
        let (server, client_config) = configs();
        let t0 = Instant::now();
        let mut conn = Connection::new(t0, Wire::tls(server).unwrap(), &settings, FIRST_PING);
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(client_config, name).unwrap();
        for _ in 0..4 {
            assert!(exchange(&mut client, &mut conn, t0, &settings).is_empty());
        }
        assert!(!client.is_handshaking(), "the TLS handshake completed through the machine");
        client.writer().write_all(UPGRADE).unwrap();
        client.writer().write_all(&text("hello")).unwrap();
        let events = exchange(&mut client, &mut conn, t0, &settings);
        assert_eq!(events, [Event::Opened { entry: Entry::default() }, Event::Message("hello".into())]);
        let mut plaintext = vec![0u8; 4096];
        let n = client.reader().read(&mut plaintext).unwrap();
        assert!(plaintext[..n].starts_with(b"HTTP/1.1 101 "));

        assert_eq!(conn.queue_message(b"world", false, t0, &settings), Queued::Yes);
        exchange(&mut client, &mut conn, t0, &settings);
        let n = client.reader().read(&mut plaintext).unwrap();
        assert_eq!(&plaintext[..n], [&[0x81, 5][..], b"world"].concat());
        assert_eq!(conn.held_bytes(), 0, "an idle TLS connection holds no buffer");

        // Our close: the close frame, then close_notify after it.
        let _ = conn.close(Close::Frame(CloseReason::Shutdown), t0, &settings);
        exchange(&mut client, &mut conn, t0, &settings);
        let n = client.reader().read(&mut plaintext).unwrap();
        assert_eq!(&plaintext[..2], &[0x88, 2 + 20]);
        assert!(n > 2);
        assert_eq!(client.reader().read(&mut plaintext).ok(), Some(0), "close_notify: a clean end");
    }

    /// A TLS connection through its handshake and the WebSocket upgrade (the 101 read).
    fn upgraded_over_tls(t0: Instant, settings: &Settings) -> (Connection, ClientConnection) {
        let (server, client_config) = configs();
        let mut conn = Connection::new(t0, Wire::tls(server).unwrap(), settings, FIRST_PING);
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(client_config, name).unwrap();
        for _ in 0..4 {
            exchange(&mut client, &mut conn, t0, settings);
        }
        client.writer().write_all(UPGRADE).unwrap();
        let events = exchange(&mut client, &mut conn, t0, settings);
        assert_eq!(events, [Event::Opened { entry: Entry::default() }]);
        let mut plaintext = vec![0u8; 4096];
        let n = client.reader().read(&mut plaintext).unwrap();
        assert!(plaintext[..n].starts_with(b"HTTP/1.1 101 "));
        (conn, client)
    }

    /// Over TLS each segment is its own record: a socket that blocks on the list header's
    /// record must not leave the list cut by a takeover (the 4001 close frame would be
    /// read as its payload).
    #[test]
    fn a_takeover_over_tls_while_a_list_header_is_in_flight_keeps_framing() {
        let settings = settings();
        let t0 = Instant::now();
        let (mut conn, mut client) = upgraded_over_tls(t0, &settings);
        let mut plaintext = vec![0u8; 4096];
        let list: Rc<[u8]> = Rc::from(&b"{\"cmd\":\"clu\",\"list\":[]}"[..]);
        assert_eq!(conn.queue_list(&list, false, t0, &settings), ListQueued::Yes);
        // The dying old connection's socket takes one byte, then blocks.
        let mut blocked = Socket { budget: 1, ..Socket::default() };
        assert_eq!(conn.write_to(&mut blocked, t0, &settings).unwrap().0, Flush::Pending);
        // A newer connection resumes the client: 4001.
        let _ = conn.close(Close::Frame(CloseReason::TakenOver), t0, &settings);
        let mut rest = Socket::open();
        conn.write_to(&mut rest, t0, &settings).unwrap();
        let mut records = blocked.taken;
        records.extend_from_slice(&rest.taken);
        client.read_tls(&mut records.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        let n = client.reader().read(&mut plaintext).unwrap();
        let got = &plaintext[..n];
        assert!(
            got.starts_with(&[0x81, list.len() as u8]) && got[2..].starts_with(&list),
            "the list frame is cut: {got:?}"
        );
    }

    #[test]
    fn a_tls_violation_on_an_open_connection_is_a_broken_rule_not_a_loss() {
        let settings = settings();
        let t0 = Instant::now();
        let (mut conn, _client) = upgraded_over_tls(t0, &settings);
        // An application-data record that does not decrypt.
        let mut bogus = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        bogus.extend_from_slice(&[0xAB; 0x40]);
        let events = feed(&mut conn, &bogus, t0, &settings);
        assert_eq!(events, [Event::Close(Close::Drop(CloseReason::ProtocolError))]);
    }

    #[test]
    fn plain_bytes_on_a_tls_connection_end_it_at_once() {
        let settings = settings();
        let (server, _) = configs();
        let t0 = Instant::now();
        let mut conn = Connection::new(t0, Wire::tls(server).unwrap(), &settings, FIRST_PING);
        let events = feed(&mut conn, UPGRADE, t0, &settings);
        assert_eq!(events, [Event::Close(Close::Drop(CloseReason::ProtocolError))]);
        assert_eq!(conn.close(Close::Drop(CloseReason::ProtocolError), t0, &settings), Departure::NotOpen);
        assert!(conn.is_finished());
        assert!(feed(&mut conn, b"more", t0, &settings).is_empty(), "a finished machine stays quiet");
    }

    #[test]
    fn a_stalled_tls_handshake_meets_the_handshake_deadline() {
        let settings = settings();
        let (server, client_config) = configs();
        let t0 = Instant::now();
        let mut conn = Connection::new(t0, Wire::tls(server).unwrap(), &settings, FIRST_PING);
        let mut client =
            ClientConnection::new(client_config, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        assert!(feed(&mut conn, &hello[..hello.len() / 2], t0, &settings).is_empty());
        assert_eq!(
            conn.handle_timeout(t0 + settings.handshake_timeout, &settings),
            Some(Close::Drop(CloseReason::HandshakeTimeout))
        );
    }
}
