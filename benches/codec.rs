//! The wire codec on its own: JSON parsing of every client command, encoding of a relayed
//! message, and WebSocket framing of a typical message in both directions.
//!
//! Run with `cargo bench --bench codec`.

use std::hint::black_box;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use signaling_server::config::Config;
use signaling_server::protocol::{
    Command, CommandKind, EscapedJson, Parser, RawJson, Relay, SessionId, encode,
};
use signaling_server::transport::UpgradePolicy;
use signaling_server::transport::connection::{Connection, Event, Settings, Sink, Wire};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

const SESSION_ID: SessionId = SessionId::new(0x9f86_d081_884c_7d65);

/// A Chrome-style host candidate, about 200 bytes of JSON.
const CANDIDATE: &str = concat!(
    r#"{"candidate":"candidate:3528921037 1 udp 2122260223 192.168.1.23 54321 typ host "#,
    r#"generation 0 ufrag Xk9d network-id 1 network-cost 10","sdpMid":"0","sdpMLineIndex":0,"#,
    r#""usernameFragment":"Xk9d"}"#
);

/// A realistic SDP (one audio, one video section with a browser's codec list, a data
/// channel) as a JSON string literal with its `\r\n` escaped, at least `min_len` bytes long:
/// more video codecs are added until it is.
fn sdp_json(kind: &str, min_len: usize) -> String {
    let mut lines: Vec<String> = vec![
        "v=0".into(),
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1".into(),
        "s=-".into(),
        "t=0 0".into(),
        "a=group:BUNDLE 0 1 2".into(),
        "a=extmap-allow-mixed".into(),
        "a=msid-semantic: WMS 5c3f2b1e-8d4a-4c7b-9e2f-1a6d3b8c0e47".into(),
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126".into(),
        "c=IN IP4 0.0.0.0".into(),
        "a=rtcp:9 IN IP4 0.0.0.0".into(),
        "a=ice-ufrag:Xk9d".into(),
        "a=ice-pwd:q3Vb7Jk2LmN8pR4sT6wY0zA1".into(),
        "a=ice-options:trickle".into(),
        "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:\
         1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08"
            .into(),
        "a=setup:actpass".into(),
        "a=mid:0".into(),
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level".into(),
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time".into(),
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01".into(),
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid".into(),
        "a=sendrecv".into(),
        "a=msid:5c3f2b1e-8d4a-4c7b-9e2f-1a6d3b8c0e47 0b6f9c2d-3e4a-4f5b-8c6d-7e8f9a0b1c2d".into(),
        "a=rtcp-mux".into(),
        "a=rtcp-rsize".into(),
        "a=rtpmap:111 opus/48000/2".into(),
        "a=rtcp-fb:111 transport-cc".into(),
        "a=fmtp:111 minptime=10;useinbandfec=1".into(),
        "a=rtpmap:63 red/48000/2".into(),
        "a=fmtp:63 111/111".into(),
        "a=rtpmap:9 G722/8000".into(),
        "a=rtpmap:0 PCMU/8000".into(),
        "a=rtpmap:8 PCMA/8000".into(),
        "a=rtpmap:13 CN/8000".into(),
        "a=rtpmap:110 telephone-event/48000".into(),
        "a=rtpmap:126 telephone-event/8000".into(),
        "a=ssrc:1584732901 cname:f4Kp8vR2qLx9Tz3B".into(),
        "a=ssrc:1584732901 msid:5c3f2b1e-8d4a-4c7b-9e2f-1a6d3b8c0e47 0b6f9c2d-3e4a-4f5b-8c6d-7e8f9a0b1c2d"
            .into(),
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 100 101 102 103 104 105 106 107 108 109 127 125".into(),
        "c=IN IP4 0.0.0.0".into(),
        "a=rtcp:9 IN IP4 0.0.0.0".into(),
        "a=ice-ufrag:Xk9d".into(),
        "a=ice-pwd:q3Vb7Jk2LmN8pR4sT6wY0zA1".into(),
        "a=ice-options:trickle".into(),
        "a=setup:actpass".into(),
        "a=mid:1".into(),
        "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset".into(),
        "a=extmap:13 urn:3gpp:video-orientation".into(),
        "a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay".into(),
        "a=extmap:6 http://www.webrtc.org/experiments/rtp-hdrext/video-content-type".into(),
        "a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/video-timing".into(),
        "a=extmap:8 http://www.webrtc.org/experiments/rtp-hdrext/color-space".into(),
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id".into(),
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id".into(),
        "a=sendrecv".into(),
        "a=msid:5c3f2b1e-8d4a-4c7b-9e2f-1a6d3b8c0e47 6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d".into(),
        "a=rtcp-mux".into(),
        "a=rtcp-rsize".into(),
    ];
    // The video codec list; a real offer has 15-30 payload types, enough to reach 10 KiB
    // together with candidates.
    let codecs = [
        ("VP8/90000", ""),
        ("VP9/90000", "profile-id=0"),
        ("VP9/90000", "profile-id=2"),
        ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
        ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f"),
        ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
        ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f"),
        ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
        ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
        ("AV1/90000", "level-idx=5;profile=0;tier=0"),
        ("H265/90000", "level-id=93;profile-id=1;tier-flag=0;tx-mode=SRST"),
    ];
    let mut payload_type = 96u32;
    let mut candidate = 0u32;
    let text = |lines: &[String]| lines.iter().map(|line| line.len() + 4).sum::<usize>();
    let mut codec = 0;
    while text(&lines) < min_len.saturating_sub(200) {
        let (name, fmtp) = codecs[codec % codecs.len()];
        codec += 1;
        let pt = payload_type;
        let rtx = payload_type + 1;
        payload_type += 2;
        lines.push(format!("a=rtpmap:{pt} {name}"));
        for fb in ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"] {
            lines.push(format!("a=rtcp-fb:{pt} {fb}"));
        }
        if !fmtp.is_empty() {
            lines.push(format!("a=fmtp:{pt} {fmtp}"));
        }
        lines.push(format!("a=rtpmap:{rtx} rtx/90000"));
        lines.push(format!("a=fmtp:{rtx} apt={pt}"));
        if codec % 3 == 0 {
            candidate += 1;
            lines.push(format!(
                "a=candidate:{} 1 udp 2122260223 192.168.1.{} {} typ host generation 0 network-id 1",
                3_528_921_037u32.wrapping_add(candidate),
                20 + candidate % 200,
                50_000 + candidate
            ));
        }
    }
    lines.extend([
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel".into(),
        "c=IN IP4 0.0.0.0".into(),
        "a=ice-ufrag:Xk9d".into(),
        "a=ice-pwd:q3Vb7Jk2LmN8pR4sT6wY0zA1".into(),
        "a=ice-options:trickle".into(),
        "a=setup:actpass".into(),
        "a=mid:2".into(),
        "a=sctp-port:5000".into(),
        "a=max-message-size:262144".into(),
    ]);
    let mut sdp = String::new();
    for line in &lines {
        sdp.push_str(line);
        sdp.push_str("\\r\\n");
    }
    format!(r#"{{"type":"{kind}","sdp":"{sdp}"}}"#)
}

/// A parse case: a name, the message, and the command it must produce.
struct Case {
    name: &'static str,
    json: String,
    kind: CommandKind,
}

fn parse_cases() -> Vec<Case> {
    let offer = sdp_json("offer", 10 << 10);
    let answer = sdp_json("answer", 10 << 10);
    let case = |name, json: String, kind| Case { name, json, kind };
    vec![
        case("sId", r#"{"cmd":"sId","sId":"alice-7f3a"}"#.into(), CommandKind::Register),
        case("session", r#"{"cmd":"session","opponentId":"bob-91c2"}"#.into(), CommandKind::Session),
        case(
            "call",
            format!(
                r#"{{"cmd":"call","sessionId":"{SESSION_ID}","offer":{{"type":"offer","sdp":"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}}}}"#
            ),
            CommandKind::Call,
        ),
        case(
            "accept",
            format!(
                r#"{{"cmd":"accept","sessionId":"{SESSION_ID}","answer":{{"type":"answer","sdp":"v=0\r\no=- 2890844526 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}}}}"#
            ),
            CommandKind::Accept,
        ),
        case(
            "icecandidate",
            format!(r#"{{"cmd":"icecandidate","sessionId":"{SESSION_ID}","icecandidate":{CANDIDATE}}}"#),
            CommandKind::IceCandidate,
        ),
        case("reject", format!(r#"{{"cmd":"reject","sessionId":"{SESSION_ID}"}}"#), CommandKind::Reject),
        case("stop", format!(r#"{{"cmd":"stop","sessionId":"{SESSION_ID}"}}"#), CommandKind::Stop),
        case(
            "notify",
            r#"{"cmd":"notify","opponentId":"bob-91c2","type":"ring","data":{"from":"Alice","video":true}}"#
                .into(),
            CommandKind::Notify,
        ),
        case(
            "call_10KiB_sdp",
            format!(r#"{{"cmd":"call","sessionId":"{SESSION_ID}","offer":{offer}}}"#),
            CommandKind::Call,
        ),
        case(
            "accept_10KiB_sdp",
            format!(r#"{{"cmd":"accept","sessionId":"{SESSION_ID}","answer":{answer}}}"#),
            CommandKind::Accept,
        ),
    ]
}

/// Checks 1-3 and 5 of PROTOCOL.md, with one reused [`Parser`] as the core does.
fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let mut parser = Parser::default();
    for case in parse_cases() {
        let raw = case.json.as_bytes();
        // Make sure the bench measures the success path.
        let request = parser.parse(raw).unwrap_or_else(|code| panic!("{}: {code:?}", case.name));
        assert_eq!(request.kind, case.kind, "{}", case.name);
        if let Err(code) = request.command() {
            panic!("{}: {code:?}", case.name);
        }
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_function(case.name, |b| {
            b.iter(|| {
                let request = parser.parse(black_box(raw));
                let command: Option<Command<'_>> = request.as_ref().ok().and_then(|r| r.command().ok());
                black_box(command);
            })
        });
    }
    group.finish();
}

/// One relayed icecandidate into a reused buffer, as the core composes it.
fn encode_relayed(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let mut out = Vec::with_capacity(512);
    let alice = EscapedJson::escape("alice-7f3a");
    let candidate = candidate();
    encode::relayed(&mut out, Relay::IceCandidate, SESSION_ID, &alice, Some(candidate));
    group.throughput(Throughput::Bytes(out.len() as u64));
    group.bench_function("relayed_icecandidate", |b| {
        b.iter(|| {
            out.clear();
            encode::relayed(
                &mut out,
                Relay::IceCandidate,
                black_box(SESSION_ID),
                black_box(&alice),
                Some(black_box(candidate)),
            );
            black_box(&out);
        })
    });
    group.finish();
}

/// A typical relayed message, about 250 bytes.
fn typical_message() -> Vec<u8> {
    let mut out = Vec::new();
    let alice = EscapedJson::escape("alice-7f3a");
    encode::relayed(&mut out, Relay::IceCandidate, SESSION_ID, &alice, Some(candidate()));
    out
}

fn candidate() -> RawJson<'static> {
    RawJson::validate(CANDIDATE.as_bytes()).unwrap_or_else(|| panic!("CANDIDATE is not JSON"))
}

/// Appends one masked client text frame carrying `payload`.
fn push_masked_frame(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), mask: Some(mask), ..FrameHeader::default() };
    header.format(payload.len() as u64, out).unwrap_or_else(|e| panic!("format: {e}"));
    out.extend(payload.iter().enumerate().map(|(at, byte)| byte ^ mask[at % 4]));
}

const FRAMES_PER_BATCH: usize = 1000;

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

const POLICY: UpgradePolicy<'static> =
    UpgradePolicy { allowed_origins: &[], auth_secret: None, echo_path: None, now_unix: 0 };

/// A socket that takes everything and keeps nothing.
struct Discard;

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        Ok(bufs.iter().map(|buf| buf.len()).sum())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for Discard {
    fn shutdown_write(&mut self) {}
}

/// The server's connection machine, upgraded and with its 101 written out. Rate limiting
/// off, as in the load-test runs.
fn open_connection(now: Instant) -> (Connection, Settings) {
    let config = Config { rate_limit: 0.0, ..Config::default() };
    let settings = Settings::new(&config, Duration::from_secs(1));
    let mut conn = Connection::new(now, Wire::Plain, &settings, Duration::from_secs(2));
    let mut fresh = UPGRADE;
    assert!(matches!(conn.poll_event(&mut fresh, now, &settings, &POLICY), Some(Event::Opened { .. })));
    conn.write_to(&mut Discard, now, &settings).unwrap_or_else(|e| panic!("write: {e}"));
    (conn, settings)
}

/// WebSocket framing of a typical message through the server's own connection machine:
/// the output path (a frame into the connection's output, then written to the socket) and
/// the input path (masked client frames in, messages for the core out).
fn framing(c: &mut Criterion) {
    let message = typical_message();
    let mut group = c.benchmark_group("ws_frame");
    let now = Instant::now();

    let (mut conn, settings) = open_connection(now);
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("encode_server_text", |b| {
        b.iter(|| {
            conn.queue_message(black_box(&message), false, now, &settings);
            black_box(conn.write_to(&mut Discard, now, &settings).ok());
        })
    });

    let mut batch = Vec::with_capacity(FRAMES_PER_BATCH * (message.len() + 14));
    for index in 0..FRAMES_PER_BATCH {
        let mask = (index as u32).wrapping_mul(0x9e37_79b9).to_le_bytes();
        push_masked_frame(&mut batch, &message, mask);
    }
    let (mut conn, settings) = open_connection(now);
    let mut read_batch = |check: bool| {
        let mut fresh = &batch[..];
        let mut messages = 0;
        while let Some(event) = conn.poll_event(&mut fresh, now, &settings, &POLICY) {
            match event {
                Event::Message(bytes) if check => assert_eq!(&bytes[..], &message[..]),
                Event::Message(bytes) => {
                    black_box(bytes);
                }
                other => panic!("expected a message, got {other:?}"),
            }
            messages += 1;
        }
        assert!(fresh.is_empty() && messages == FRAMES_PER_BATCH, "{messages} messages");
    };
    // Once outside the measurement: every frame decodes to the message, and the machine is
    // left between frames, ready for the next batch.
    read_batch(true);

    group.throughput(Throughput::Elements(FRAMES_PER_BATCH as u64));
    group.bench_function("decode_client_text_x1000", |b| b.iter(|| read_batch(false)));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = parse, encode_relayed, framing
}
criterion_main!(benches);
