//! Property-based tests of the sans-IO signaling core, from the outside: only the public API
//! of `signaling_server::signaling` and the messages it sends.
//!
//! proptest generates a small network (2-6 connection slots to start with, a seed for
//! session ids, one of two client-list pacings, resume off or on with one of a few graces
//! and held-output caps) and a sequence of operations: registrations under many spellings
//! (with and without `"resume":true`), sessions, relays on real, stale and garbage session
//! ids, notifies, malformed messages, disconnects (the slot comes back as a new generation),
//! lost connections (`connection_lost`: a resumable client is away), resumes on fresh or
//! busy connections with right, spent, foreign and mangled tokens and with honest, too
//! large, too small and invalid counts, takeovers (a resume while the old connection is
//! still attached), pongs acknowledging part of what a connection was sent, connections
//! marked closing (later reported as closed or as lost), `clu` back-pressure, and clock
//! advances with `poll` (client lists and the end of graces). After every operation
//! several independent views of the world must agree:
//!
//! * a **model** that predicts, from PROTOCOL.md alone, exactly which messages each
//!   connection receives (compared per recipient, as JSON values and byte for byte: held
//!   output counts against its cap by its JSON bytes), which messages are held for away
//!   clients, what a resume replays or why it is refused, and the next state;
//! * an **observer** that knows nothing but the messages the core sent (and, for away
//!   clients, the messages the model says the core meant for them), checks every rule a
//!   client can see in them (who may receive what, in which order, which `ssu` may follow
//!   which message) and derives from them who is registered, resumable and in which session;
//! * **simulated clients**: every resumable client counts the messages its connection
//!   delivered. When a connection is lost (or taken over), only part of what was queued on
//!   it since its last acknowledged ping arrived (at least what the pong proved); the client
//!   resumes with the count of what arrived. What it received before and after, client lists
//!   excluded, must be exactly what the core produced for it: no gap, no duplicate, in order;
//! * the **core** itself: `check_invariants`, `stats`, `sid_of`, `is_registered`,
//!   `counters`, `next_deadline`.
//!
//! Held bytes never pass the cap: the model holds that, `check_invariants` checks it inside
//! the core, and every replay's held part is measured on the wire.
//!
//! On failure proptest shrinks the sequence and prints it (one operation a line), and the
//! message names the failing step with the recent steps and what each one sent.
//!
//! Complements `src/signaling/tests.rs` and `resume_tests.rs`: those tests read the core's
//! private state; these derive everything from the wire, use the public API only, shrink,
//! and cover sId spellings (whitespace, escapes, numbers), numeric session ids, relays from
//! and to closing connections, the server-only commands sent by clients, and resume in any
//! interleaving with everything else.
//!
//! `PROPTEST_CASES` sets the number of cases (256 by default); the cases are the same on
//! every run unless `PROPTEST_RNG_SEED` names another seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use signaling_server::protocol::ErrorCode;
use signaling_server::signaling::{
    ClientListPacing, ConnId, Delivery, ListDelivery, Outbox, ResumePolicy, Signaling,
};
use simd_json::OwnedValue as Json;
use simd_json::prelude::*;

// ---------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------

/// Connection slots a run starts with, at most.
const MAX_CONNS: usize = 6;

/// Connection slots a run may grow to: a resume comes on a new connection when no slot has
/// a free one.
const MAX_SLOTS: usize = 9;

/// What the session-id source draws from most of the time: few values, so a drawn id often
/// collides with a live session (the core must draw again) and closed ids come back. `1e15`
/// and `1234567890123456`, sent as JSON numbers, normalise to the ids of entries 2 and 3.
const KEYS: [u64; 7] = [
    0,
    u64::MAX,
    0x1000_0000_0000_0000,
    0x1234_5678_9012_3456,
    0x0123_4567_89ab_cdef,
    0xdead_beef_0000_0001,
    0x9e37_79b9_7f4a_7c15,
];

/// The error codes of PROTOCOL.md's table that this test can provoke.
const ERROR_CODES: [u64; 18] = [
    9000, 9001, 9002, 9003, 9100, 9101, 9102, 9103, 9104, 9200, 9201, 9202, 9203, 9204, 9300, 9301, 9401,
    9500,
];

/// Graces (ms) and held-output caps (bytes) a case with resume runs with. The small caps
/// make away clients gone, and what is kept from before a loss run short, within a few
/// messages.
const GRACES_MS: [u64; 3] = [300, 700, 1500];
const CAPS: [usize; 4] = [160, 400, 1000, 1 << 20];

/// sIds with JSON spellings that all normalise to them (trimmed strings, escapes, numbers).
const NAMES: [(&str, &[&str]); 9] = [
    ("a", &[r#""a""#, r#"" a ""#, r#""\u0061""#, r#""\ta\n""#]),
    ("b", &[r#""b""#, "\"\u{3000}b\"", r#""\u00a0b\u2003""#]),
    ("c", &[r#""c""#, r#""c\r\n""#]),
    ("7", &[r#""7""#, "7", "7.0", "0.7e1", r#"" 7 ""#]),
    ("1000", &["1e3", "1000", "1E3", r#""1000""#, "1000.000"]),
    ("4.5", &["4.5", "45e-1", r#""4.5""#]),
    ("x y", &[r#""x y""#, r#"" x y\t""#]),
    ("é", &["\"é\"", r#""\u00e9""#]),
    ("q\"\\", &[r#""q\"\\""#, r#"" q\u0022\\ ""#]),
];

/// The `resume` field of a registration: raw JSON (None: absent) and what it means. Only
/// `true` opts in; with resume on, anything else present is 9003.
const RESUME_FIELD: [(Option<&str>, Opt); 12] = [
    (None, Opt::Absent),
    (None, Opt::Absent),
    (None, Opt::Absent),
    (None, Opt::Absent),
    (Some("true"), Opt::Yes),
    (Some("true"), Opt::Yes),
    (Some("true"), Opt::Yes),
    (Some("true"), Opt::Yes),
    (Some("false"), Opt::Invalid),
    (Some(r#""true""#), Opt::Invalid),
    (Some("1"), Opt::Invalid),
    (Some("null"), Opt::Invalid),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Absent,
    Yes,
    Invalid,
}

/// Nested payloads of every JSON type; each must be relayed JSON-equivalent. The last is
/// larger than the smallest held-output cap on its own.
const PAYLOADS: [&str; 11] = [
    "null",
    "true",
    "1.50",
    "-0",
    r#""""#,
    r#""\u00e9\ud83d\ude00 \" }],""#,
    r#"[1,{},[],"}",","]"#,
    r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}"#,
    r#"{"a":{"b":[null,false,{"c":"]"}]}}"#,
    r#"{"candidate":"candidate:1 1 udp 2122260223 10.0.0.1 54321 typ host","sdpMLineIndex":0}"#,
    r#"{"type":"answer","sdp":"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"}"#,
];

/// `type` of a notify: (raw JSON, or None for a missing field; normalised, or None for 9003).
fn notify_type(which: usize) -> (Option<String>, Option<String>) {
    let long = "t".repeat(70);
    let table: [(Option<String>, Option<&str>); 8] = [
        (Some(r#""ring""#.into()), Some("ring")),
        (Some(r#"" ring\t""#.into()), Some("ring")),
        (Some("5".into()), Some("5")),
        (Some(r#""a \"quoted\" type""#.into()), Some("a \"quoted\" type")),
        (Some(format!("\"{long}\"")), Some(&long)),
        (None, None),
        (Some(r#""  ""#.into()), None),
        (Some("null".into()), None),
    ];
    let (raw, normal) = table[which % table.len()].clone();
    (raw, normal.map(str::to_owned))
}

/// An id field other than the spellings of [`NAMES`]: (raw JSON or None for missing,
/// normalised or None for 9003). `for_sid`: the sId field, where control characters are 9003.
fn other_id(which: usize, for_sid: bool) -> (Option<String>, Option<String>) {
    let x64 = "x".repeat(64);
    let e32 = "é".repeat(32);
    match which % 12 {
        0 => (None, None),
        1 => (Some(r#""""#.into()), None),
        2 => (Some(r#"" \t\n ""#.into()), None),
        3 => (Some("true".into()), None),
        4 => (Some("null".into()), None),
        5 => (Some(r#"{"sId":"a"}"#.into()), None),
        6 => (Some(r#"["a"]"#.into()), None),
        7 => (Some(format!("\"{}\"", "x".repeat(65))), None),
        8 => (Some(r#""a\u0001""#.into()), (!for_sid).then(|| "a\u{1}".to_owned())),
        9 => (Some(format!("\" {x64} \"")), Some(x64)),
        10 => (Some(format!("\"{e32}\"")), Some(e32)),
        _ => (Some(r#""zed""#.into()), Some("zed".into())),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Call,
    Accept,
    IceCandidate,
    Reject,
    Stop,
}

impl Action {
    fn cmd(self) -> &'static str {
        match self {
            Action::Call => "call",
            Action::Accept => "accept",
            Action::IceCandidate => "icecandidate",
            Action::Reject => "reject",
            Action::Stop => "stop",
        }
    }

    fn payload_field(self) -> Option<&'static str> {
        match self {
            Action::Call => Some("offer"),
            Action::Accept => Some("answer"),
            Action::IceCandidate => Some("icecandidate"),
            Action::Reject | Action::Stop => None,
        }
    }

    fn from_cmd(cmd: &str) -> Option<Action> {
        [Action::Call, Action::Accept, Action::IceCandidate, Action::Reject, Action::Stop]
            .into_iter()
            .find(|action| action.cmd() == cmd)
    }
}

/// Messages with a known answer: (raw, code when unregistered, code when registered).
const GARBAGE: [(&[u8], u64, u64); 27] = [
    (b"", 9000, 9000),
    (b"{", 9000, 9000),
    (b"\"\xff\"", 9000, 9000),
    (br#"{"cmd":"sId","sId":"a"} x"#, 9000, 9000),
    (br#"{"cmd":"sId","sId":"a",}"#, 9000, 9000),
    (b"[1]", 9001, 9001),
    (br#""sId""#, 9001, 9001),
    (b"{}", 9001, 9001),
    (br#"{"cmd":null}"#, 9001, 9001),
    (br#"{"cmd":["sId"],"sId":"a"}"#, 9001, 9001),
    (br#"{"cmd":5}"#, 9002, 9002),
    (br#"{"cmd":"SID","sId":"a"}"#, 9002, 9002),
    (br#"{"cmd":""}"#, 9002, 9002),
    (br#"{"cmd":" clu ","list":[]}"#, 9002, 9002),
    (br#"{"cmd":"ssu","sessionId":"0000000000000000","state":4}"#, 9002, 9002),
    (br#"{"cmd":"leave","sessionId":"ffffffffffffffff","opponentId":"a"}"#, 9002, 9002),
    (br#"{"cmd":"error","code":9000}"#, 9002, 9002),
    (br#"{"cmd":"session"}"#, 9100, 9003),
    (br#"{"cmd":"call","sessionId":"0000000000000000"}"#, 9100, 9003),
    (br#"{"cmd":"accept","sessionId":"ffffffffffffffff","offer":{}}"#, 9100, 9003),
    (br#"{"cmd":"icecandidate","sessionId":"1000000000000000"}"#, 9100, 9003),
    (br#"{"cmd":"stop"}"#, 9100, 9003),
    (br#"{"cmd":"notify","opponentId":"a"}"#, 9100, 9003),
    (br#"{"cmd":"notify","type":"ring","data":1}"#, 9100, 9003),
    // A resume's fields are checked before whether the connection registered.
    (br#"{"cmd":"resume","sId":"a","received":0}"#, 9003, 9003),
    (br#"{"cmd":"resume","resumeToken":"AAAAAAAAAAAAAAAAAAAAAA","received":0}"#, 9003, 9003),
    (br#"{"cmd":"resume","sId":"a","resumeToken":"AAAAAAAAAAAAAAAAAAAAAA"}"#, 9003, 9003),
];

/// Bytes for random garbage: JSON punctuation and literals, bad UTF-8, but no `c`, `m` or `d`,
/// so no random message can name a `cmd`.
const GARBAGE_ALPHABET: &[u8] = b"{}[]\":,01-.eEtrunlfas \n\\\xff\x00\xc3\xa9";

// ---------------------------------------------------------------------------------------
// Operations and their strategies
// ---------------------------------------------------------------------------------------

/// An id field of `sId`, `session` or `notify`.
#[derive(Clone, Copy, Debug)]
enum Spelling {
    /// The sId of the `nth` registered client (modulo their number), in its `form`-th
    /// spelling if it is one of [`NAMES`]; `NAMES[nth]` while nobody is registered.
    SidOf { nth: usize, form: usize },
    /// Like `SidOf`, counting only the registered clients in WAIT other than the sender.
    Peer { nth: usize, form: usize },
    /// Like `SidOf`, counting only the away clients.
    Away { nth: usize, form: usize },
    /// `NAMES[name]` spelled as its `form`-th spelling (modulo their number).
    Name { name: usize, form: usize },
    /// One of [`other_id`].
    Other(usize),
}

/// The `sessionId` a relay carries.
#[derive(Clone, Copy, Debug)]
enum IdPick {
    /// The id of the sender's own session (any known id if it has none), maybe padded.
    Own { padded: bool },
    /// Some id the server handed out earlier: stale, someone else's, or the own one.
    Known(usize),
    /// An id the source can draw, live or not.
    Key(usize),
    /// A JSON number.
    Number(usize),
    /// Misspelled or invalid.
    Bad(usize),
}

/// Whom a `resume` names.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The `nth` away client (a resumable one while none is away).
    Away(usize),
    /// The `nth` resumable client, away or not (a takeover when it is attached).
    Resumable(usize),
    /// Any name: often a client that cannot resume, or nobody.
    Spelled(Spelling),
}

/// The `resumeToken` a `resume` carries.
#[derive(Clone, Copy, Debug)]
enum TokenPick {
    /// The target's current token.
    Right,
    /// The target's previous token, spent by its last resume.
    Spent,
    /// Another resumable client's current token.
    Other(usize),
    /// The right token altered, padded (which normalises to it), or not a token at all.
    Mangled(usize),
}

/// The `received` count a `resume` carries.
#[derive(Clone, Copy, Debug)]
enum CountPick {
    /// What the client really received, in one of four spellings.
    Honest(u8),
    /// More than it received.
    More(u8),
    /// Less than it received (a count below an acknowledgement is refused).
    Less(u8),
    /// A small number, or (8) u64::MAX.
    Exactly(u8),
    /// Missing, negative, fractional, not a number, too large for 64 bits: 9003.
    Bad(usize),
}

/// What a `resume` says.
#[derive(Clone, Copy, Debug)]
struct Claim {
    token: TokenPick,
    count: CountPick,
    layout: u8,
}

#[derive(Clone, Debug)]
enum Op {
    Register {
        slot: usize,
        sid: Spelling,
        layout: u8,
        /// Index into [`RESUME_FIELD`].
        resume: usize,
    },
    /// From the connection in `slot`, or with `from_wait` from the `slot`-th attached
    /// client in WAIT while there is one.
    Session {
        slot: usize,
        from_wait: bool,
        opponent: Spelling,
        layout: u8,
    },
    /// From the connection in `slot`, or with `from_calling` from the `slot`-th attached
    /// CALLING client (counting in registration order) while there is one.
    Relay {
        slot: usize,
        from_calling: bool,
        action: Action,
        id: IdPick,
        payload: usize,
        layout: u8,
        extras: bool,
    },
    /// Sent `1 + repeat % 3` times in a row (a chat, or a flood of an away client).
    Notify {
        slot: usize,
        opponent: Spelling,
        notify_type: usize,
        data: Option<usize>,
        layout: u8,
        repeat: u8,
    },
    Garbage {
        slot: usize,
        which: usize,
    },
    Bytes {
        slot: usize,
        bytes: Vec<u8>,
    },
    /// The connection ends with a close (`disconnect`: gone); its slot comes back as the
    /// next generation, which registers at once under `rejoin` if given (as real clients do
    /// when they reconnect), with the `resume` field of that index.
    Disconnect {
        slot: usize,
        rejoin: Option<(Spelling, usize)>,
    },
    /// The connection ends without a close (`connection_lost`): the one in `slot`, or with
    /// `resumable` the `slot`-th attached resumable client's while there is one. Of what was
    /// queued on it since its last acknowledgement, the first `keep`/255 arrived. The slot
    /// comes back as the next generation, which resumes the client at once with `then`.
    Lose {
        slot: usize,
        resumable: bool,
        keep: u8,
        then: Option<Claim>,
    },
    /// `resume` for `target`, from the connection in slot `on`, or with `on: None` from a
    /// connection that has not registered (a new one if no slot has one). When the target
    /// is attached (a takeover), `keep`/255 of what its connection was sent since its last
    /// acknowledgement arrived; the transport reports the old connection as lost
    /// (`old_lost`) or closed.
    Resume {
        on: Option<usize>,
        target: Target,
        claim: Claim,
        keep: u8,
        old_lost: bool,
    },
    /// A pong on the connection in `slot` (or with `resumable` the `slot`-th attached
    /// resumable client's): it acknowledges at least one more of the messages queued there,
    /// and `part`/255 of the rest.
    Ack {
        slot: usize,
        resumable: bool,
        part: u8,
    },
    /// `disconnect`, `connection_lost` and `acknowledge` for an id that is not connected:
    /// an old generation, a future one, or an index beyond the slots. Nothing may happen.
    StaleDisconnect {
        slot: usize,
        which: u8,
    },
    /// The transport decides to close the connection: sends to it answer `Gone` until the
    /// next `Advance`, which reports it to the core with `connection_lost` (`lost`, and
    /// `keep` as for `Lose`) or `disconnect`.
    MarkClosing {
        slot: usize,
        lost: bool,
        keep: u8,
    },
    /// The connection's last `clu` is (no longer) unsent: `send_client_list` refuses.
    ToggleUnsent {
        slot: usize,
    },
    Poll,
    Advance {
        ms: u16,
    },
}

impl Op {
    /// Maps every slot number to one of `conns` slots (done at every step: the slots grow).
    fn with_slots(mut self, conns: usize) -> Op {
        match &mut self {
            Op::Register { slot, .. }
            | Op::Session { slot, .. }
            | Op::Notify { slot, .. }
            | Op::Disconnect { slot, .. }
            | Op::Relay { slot, .. }
            | Op::Garbage { slot, .. }
            | Op::Bytes { slot, .. }
            | Op::StaleDisconnect { slot, .. }
            | Op::Lose { slot, .. }
            | Op::Ack { slot, .. }
            | Op::MarkClosing { slot, .. }
            | Op::ToggleUnsent { slot }
            | Op::Resume { on: Some(slot), .. } => *slot %= conns,
            Op::Resume { on: None, .. } | Op::Poll | Op::Advance { .. } => {}
        }
        self
    }
}

/// Mostly names that are registered (by some other connection, or the sender itself).
fn target() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        4 => (0..MAX_SLOTS, 0..5usize).prop_map(|(nth, form)| Spelling::Peer { nth, form }),
        3 => (0..MAX_SLOTS, 0..5usize).prop_map(|(nth, form)| Spelling::SidOf { nth, form }),
        3 => (0..MAX_SLOTS, 0..5usize).prop_map(|(nth, form)| Spelling::Away { nth, form }),
        2 => (0..NAMES.len(), 0..5usize).prop_map(|(name, form)| Spelling::Name { name, form }),
        1 => (0..12usize).prop_map(Spelling::Other),
    ]
}

/// Mostly free names, sometimes a taken or an invalid one.
fn new_sid() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        6 => (0..NAMES.len(), 0..5usize).prop_map(|(name, form)| Spelling::Name { name, form }),
        1 => (0..MAX_SLOTS, 0..5usize).prop_map(|(nth, form)| Spelling::SidOf { nth, form }),
        1 => (0..12usize).prop_map(Spelling::Other),
    ]
}

fn id_pick() -> impl Strategy<Value = IdPick> {
    prop_oneof![
        8 => any::<bool>().prop_map(|padded| IdPick::Own { padded }),
        2 => (0..8usize).prop_map(IdPick::Known),
        1 => (0..KEYS.len()).prop_map(IdPick::Key),
        1 => (0..6usize).prop_map(IdPick::Number),
        1 => (0..12usize).prop_map(IdPick::Bad),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => Just(Action::Call),
        4 => Just(Action::Accept),
        4 => Just(Action::IceCandidate),
        1 => Just(Action::Reject),
        1 => Just(Action::Stop),
    ]
}

fn claim() -> impl Strategy<Value = Claim> {
    let token = prop_oneof![
        10 => Just(TokenPick::Right),
        1 => Just(TokenPick::Spent),
        1 => (0..4usize).prop_map(TokenPick::Other),
        2 => (0..10usize).prop_map(TokenPick::Mangled),
    ];
    let count = prop_oneof![
        12 => (0..4u8).prop_map(CountPick::Honest),
        2 => (0..3u8).prop_map(CountPick::More),
        2 => (0..3u8).prop_map(CountPick::Less),
        1 => (0..9u8).prop_map(CountPick::Exactly),
        1 => (0..8usize).prop_map(CountPick::Bad),
    ];
    (token, count, 0..3u8).prop_map(|(token, count, layout)| Claim { token, count, layout })
}

fn resume_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        5 => (0..MAX_SLOTS).prop_map(Target::Away),
        3 => (0..MAX_SLOTS).prop_map(Target::Resumable),
        1 => new_sid().prop_map(Target::Spelled),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..MAX_SLOTS;
    prop_oneof![
        10 => (slot.clone(), new_sid(), 0..3u8, 0..RESUME_FIELD.len())
            .prop_map(|(slot, sid, layout, resume)| Op::Register { slot, sid, layout, resume }),
        14 => (slot.clone(), proptest::bool::weighted(0.7), target(), 0..3u8)
            .prop_map(|(slot, from_wait, opponent, layout)| Op::Session { slot, from_wait, opponent, layout }),
        30 => (slot.clone(), proptest::bool::weighted(0.8), action(), id_pick(), 0..PAYLOADS.len(), 0..3u8, any::<bool>())
            .prop_map(|(slot, from_calling, action, id, payload, layout, extras)| Op::Relay {
                slot,
                from_calling,
                action,
                id,
                payload,
                layout,
                extras
            }),
        8 => (slot.clone(), target(), 0..8usize, proptest::option::of(0..PAYLOADS.len()), 0..3u8, 0..6u8).prop_map(
            |(slot, opponent, notify_type, data, layout, repeat)| Op::Notify { slot, opponent, notify_type, data, layout, repeat }
        ),
        5 => (slot.clone(), 0..GARBAGE.len()).prop_map(|(slot, which)| Op::Garbage { slot, which }),
        2 => (slot.clone(), vec(proptest::sample::select(GARBAGE_ALPHABET), 0..20))
            .prop_map(|(slot, bytes)| Op::Bytes { slot, bytes }),
        4 => (slot.clone(), proptest::option::weighted(0.8, (new_sid(), 0..RESUME_FIELD.len())))
            .prop_map(|(slot, rejoin)| Op::Disconnect { slot, rejoin }),
        7 => (slot.clone(), proptest::bool::weighted(0.8), any::<u8>(), proptest::option::weighted(0.6, claim()))
            .prop_map(|(slot, resumable, keep, then)| Op::Lose { slot, resumable, keep, then }),
        7 => (proptest::option::weighted(0.15, slot.clone()), resume_target(), claim(), any::<u8>(), any::<bool>())
            .prop_map(|(on, target, claim, keep, old_lost)| Op::Resume { on, target, claim, keep, old_lost }),
        6 => (slot.clone(), proptest::bool::weighted(0.8), any::<u8>())
            .prop_map(|(slot, resumable, part)| Op::Ack { slot, resumable, part }),
        2 => (slot.clone(), 0..3u8).prop_map(|(slot, which)| Op::StaleDisconnect { slot, which }),
        2 => (slot.clone(), any::<bool>(), any::<u8>()).prop_map(|(slot, lost, keep)| Op::MarkClosing { slot, lost, keep }),
        2 => slot.prop_map(|slot| Op::ToggleUnsent { slot }),
        6 => Just(Op::Poll),
        9 => (0..400u16).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// How resume works in a case (`None` in a `Case`: off).
#[derive(Clone, Copy, Debug)]
struct Policy {
    grace: Duration,
    max_held: usize,
}

#[derive(Clone)]
struct Case {
    conns: usize,
    seed: u64,
    /// `bytes_per_poll: 1`: every poll delivers one list, so rounds span many polls.
    split_rounds: bool,
    resume: Option<Policy>,
    ops: Vec<Op>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Case {{ conns: {}, seed: {:#x}, split_rounds: {}, resume: {:?} }}",
            self.conns, self.seed, self.split_rounds, self.resume
        )?;
        for (step, op) in self.ops.iter().enumerate() {
            writeln!(f, "  {step:3}: {op:?}")?;
        }
        Ok(())
    }
}

fn case() -> impl Strategy<Value = Case> {
    // A few registrations first, so that most sequences get to sessions quickly.
    let prefix = vec(
        (0..MAX_CONNS, 0..NAMES.len(), 0..5usize, 0..RESUME_FIELD.len()).prop_map(
            |(slot, name, form, resume)| Op::Register {
                slot,
                sid: Spelling::Name { name, form },
                layout: 0,
                resume,
            },
        ),
        0..=MAX_CONNS,
    );
    // Mostly enough connections for two sessions at once (colliding session ids).
    let conns = prop_oneof![1 => 2..=3usize, 3 => 4..=MAX_CONNS];
    let resume = prop_oneof![
        1 => Just(None),
        4 => (0..GRACES_MS.len(), 0..CAPS.len()).prop_map(|(grace, cap)| Some(Policy {
            grace: ms(GRACES_MS[grace]),
            max_held: CAPS[cap],
        })),
    ];
    (conns, any::<u64>(), any::<bool>(), resume, prefix, vec(op(), 1..120)).prop_map(
        |(conns, seed, split_rounds, resume, prefix, ops)| Case {
            conns,
            seed,
            split_rounds,
            resume,
            ops: prefix.into_iter().chain(ops).collect(),
        },
    )
}

// ---------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------

/// `text` as a JSON string literal.
fn js(text: &str) -> String {
    let mut out = String::from("\"");
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn parse(bytes: &[u8]) -> Result<Json, String> {
    simd_json::to_owned_value(&mut bytes.to_vec()).map_err(|e| format!("{e}"))
}

/// A JSON object from (key, raw JSON value) pairs, in one of three layouts: compact, reversed
/// with the order of the fields, or spread out with white space and a padded `cmd`.
fn object(pairs: &[(&str, String)], layout: u8) -> String {
    match layout % 3 {
        0 => {
            format!("{{{}}}", pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","))
        }
        1 => format!(
            "{{{}}}",
            pairs.iter().rev().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
        ),
        _ => {
            let pad = |k: &str, v: &str| {
                if k == "cmd" {
                    format!("\"{k}\" :\t\" {} \\t\"", v.trim_matches('"'))
                } else {
                    format!("\"{k}\" : {v} ")
                }
            };
            format!("{{\n  {}\n}}\n", pairs.iter().map(|(k, v)| pad(k, v)).collect::<Vec<_>>().join(" ,\n  "))
        }
    }
}

fn hex(key: u64) -> String {
    format!("{key:016x}")
}

fn show(conn: ConnId) -> String {
    format!("c{}.{}", conn.index(), conn.generation())
}

/// The spelling `form` of `sid`: one of [`NAMES`]' if it is one of them.
fn spell_sid(sid: &str, form: usize) -> String {
    match NAMES.iter().find(|(name, _)| *name == sid) {
        Some((_, forms)) => forms[form % forms.len()].to_owned(),
        None => js(sid),
    }
}

/// PROTOCOL.md: a resume token is URL-safe text of at least 22 characters.
fn check_token(token: &str) -> Result<(), String> {
    if token.len() < 22 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("{token:?} is not a resume token"));
    }
    Ok(())
}

const TOKEN_FIELD: &str = r#","resumeToken":""#;

/// The token of a registration or resume reply, if it is one that carries a token.
fn token_of(text: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(text).ok()?;
    if !(text.starts_with(r#"{"cmd":"sId","#) || text.starts_with(r#"{"cmd":"resume","#)) {
        return None;
    }
    let rest = &text[text.find(TOKEN_FIELD)? + TOKEN_FIELD.len()..];
    Some(&rest[..rest.find('"')?])
}

/// `text` with its token (a reply's) replaced by `?`, as the model writes it: tokens are
/// random, the model learns them from the replies.
fn mask_token(text: &[u8]) -> Result<Vec<u8>, String> {
    let Some(token) = token_of(text) else { return Ok(text.to_vec()) };
    check_token(token)?;
    let text = String::from_utf8_lossy(text);
    Ok(text.replacen(&format!("{TOKEN_FIELD}{token}\""), &format!("{TOKEN_FIELD}?\""), 1).into_bytes())
}

/// The exact `error` message of `code` (its text is free, but its bytes count against the
/// held-output cap like any other message's).
fn error(code: u64) -> String {
    ErrorCode::ALL
        .iter()
        .find(|e| u64::from(e.code()) == code)
        .map_or_else(|| format!(r#"{{"cmd":"error","code":{code}}}"#), |e| e.message().to_owned())
}

fn ssu(id: &str, state: u8) -> String {
    format!(r#"{{"cmd":"ssu","sessionId":{},"state":{state}}}"#, js(id))
}

// ---------------------------------------------------------------------------------------
// The outbox
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Sent {
    to: ConnId,
    text: Vec<u8>,
    /// Handed over by `send_client_list` (not `send`).
    list: bool,
    /// Queued on an open connection (not answered `Gone`): the client can read it.
    queued: bool,
    /// Not handed to the outbox at all: a message the model says the core meant for an away
    /// client (held, or refused past the cap). Only the observer sees these.
    held: bool,
}

/// Records every message the core hands over, also those to closing connections (which the
/// transport would drop): the core's view of what it sent.
#[derive(Default)]
struct Recorder {
    sent: Vec<Sent>,
    closing: HashSet<ConnId>,
    unsent: HashSet<ConnId>,
    /// Messages (lists included) queued per connection, as [`Outbox::messages_queued`].
    queued: HashMap<ConnId, u64>,
}

impl Outbox for Recorder {
    fn send(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        let queued = !self.closing.contains(&to);
        self.sent.push(Sent { to, text: message.to_vec(), list: false, queued, held: false });
        if queued {
            *self.queued.entry(to).or_default() += 1;
            Delivery::Queued
        } else {
            Delivery::Gone
        }
    }

    fn send_client_list(&mut self, to: ConnId, list: &Rc<[u8]>) -> ListDelivery {
        if self.closing.contains(&to) {
            return ListDelivery::Gone;
        }
        if self.unsent.contains(&to) {
            return ListDelivery::Busy;
        }
        self.sent.push(Sent { to, text: list.to_vec(), list: true, queued: true, held: false });
        *self.queued.entry(to).or_default() += 1;
        ListDelivery::Queued
    }

    fn messages_queued(&self, to: ConnId) -> u64 {
        self.queued.get(&to).copied().unwrap_or_default()
    }

    fn take_over(&mut self, old: ConnId) {
        self.closing.insert(old);
    }
}

// ---------------------------------------------------------------------------------------
// State, as the model predicts it and as the observer derives it from the messages
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Session {
    members: [ConnId; 2],
    state: u8,
}

impl Session {
    fn other(&self, conn: ConnId) -> Option<ConnId> {
        match self.members {
            [a, b] if a == conn => Some(b),
            [a, b] if b == conn => Some(a),
            _ => None,
        }
    }
}

/// Clients are known by a key: the connection they are attached to, or, while away, the
/// connection they lost. A resume renames the client to its new connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    /// Registered clients in registration order.
    clients: Vec<(ConnId, String)>,
    session_of: BTreeMap<ConnId, String>,
    sessions: BTreeMap<String, Session>,
    /// Clients that opted in to resume (their registration reply carried a token).
    resumable: BTreeSet<ConnId>,
    /// Resumable clients whose connection was lost: registered, not attached.
    away: BTreeSet<ConnId>,
}

impl State {
    fn sid(&self, conn: ConnId) -> Option<&str> {
        self.clients.iter().find(|(c, _)| *c == conn).map(|(_, sid)| sid.as_str())
    }

    fn find(&self, sid: &str) -> Option<ConnId> {
        self.clients.iter().find(|(_, s)| s == sid).map(|(c, _)| *c)
    }

    fn calling(&self, conn: ConnId) -> bool {
        self.session_of.contains_key(&conn)
    }

    /// The client list as a `clu` must show it.
    fn view(&self) -> Vec<(String, u8)> {
        self.clients.iter().map(|(c, sid)| (sid.clone(), if self.calling(*c) { 2 } else { 1 })).collect()
    }

    /// The attached clients that are CALLING (or in WAIT), in registration order.
    fn attached_in(&self, calling: bool) -> Vec<ConnId> {
        self.clients
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| self.calling(*c) == calling && !self.away.contains(c))
            .collect()
    }

    /// The attached resumable clients, in registration order.
    fn attached_resumable(&self) -> Vec<ConnId> {
        self.clients
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| self.resumable.contains(c) && !self.away.contains(c))
            .collect()
    }

    /// What makes the client list change: who is registered, and who is CALLING.
    fn list_changes(&self) -> Vec<(ConnId, bool)> {
        self.clients.iter().map(|(c, _)| (*c, self.calling(*c))).collect()
    }

    fn open(&mut self, id: &str, members: [ConnId; 2]) {
        self.sessions.insert(id.to_owned(), Session { members, state: 1 });
        for member in members {
            self.session_of.insert(member, id.to_owned());
        }
    }

    fn close(&mut self, id: &str) {
        if let Some(session) = self.sessions.remove(id) {
            for member in session.members {
                self.session_of.remove(&member);
            }
        }
    }

    /// The client `key` is no longer registered (its session is closed already).
    fn remove(&mut self, key: ConnId) {
        self.clients.retain(|(c, _)| *c != key);
        self.resumable.remove(&key);
        self.away.remove(&key);
    }

    /// The client `old` resumed on `new`.
    fn rename(&mut self, old: ConnId, new: ConnId) {
        for (conn, _) in &mut self.clients {
            if *conn == old {
                *conn = new;
            }
        }
        if let Some(id) = self.session_of.remove(&old) {
            if let Some(session) = self.sessions.get_mut(&id) {
                for member in &mut session.members {
                    if *member == old {
                        *member = new;
                    }
                }
            }
            self.session_of.insert(new, id);
        }
        if self.resumable.remove(&old) {
            self.resumable.insert(new);
        }
        self.away.remove(&old);
    }

    /// sIds unique, every CALLING client in exactly one live session of which it is a
    /// member, every live session's two members registered, distinct and CALLING in it,
    /// every away client resumable and registered.
    fn check(&self) -> Result<(), String> {
        let sids: HashSet<&str> = self.clients.iter().map(|(_, s)| s.as_str()).collect();
        let conns: HashSet<ConnId> = self.clients.iter().map(|(c, _)| *c).collect();
        if sids.len() != self.clients.len() || conns.len() != self.clients.len() {
            return Err(format!("sIds or connections registered twice: {:?}", self.clients));
        }
        for (conn, id) in &self.session_of {
            let session =
                self.sessions.get(id).ok_or_else(|| format!("{} CALLING in dead {id}", show(*conn)))?;
            if !session.members.contains(conn) || !conns.contains(conn) {
                return Err(format!("{} is CALLING in {id} without being a registered member", show(*conn)));
            }
        }
        for (id, session) in &self.sessions {
            let [a, b] = session.members;
            if a == b || !(1..=3).contains(&session.state) {
                return Err(format!("session {id} is {session:?}"));
            }
            for member in [a, b] {
                if self.session_of.get(&member) != Some(id) {
                    return Err(format!("{} is a member of {id} but not CALLING in it", show(member)));
                }
            }
        }
        if self.resumable.iter().any(|c| !conns.contains(c))
            || self.away.iter().any(|c| !self.resumable.contains(c))
        {
            return Err(format!(
                "resumable {:?} or away {:?} clients not registered",
                self.resumable, self.away
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The observer: rules a client can check on the wire, and the state the messages imply
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Cause {
    Command { from: ConnId },
    Disconnect { gone: ConnId },
    Lost { gone: ConnId },
    Poll,
}

#[derive(Default)]
struct Observer {
    state: State,
    /// The last `clu` list each connection was given.
    last_list: HashMap<ConnId, Vec<(String, u8)>>,
    errors: u64,
}

/// A state change being announced: who still has to receive the `ssu`.
struct Announcement {
    id: String,
    state: u8,
    expect: Vec<ConnId>,
}

#[derive(Default)]
struct StepSeen {
    errors: Vec<u64>,
    session_reply: Option<(ConnId, String)>,
    ssu_new: Vec<(ConnId, String)>,
    relayed: Option<(Action, String)>,
    /// (session, recipient) of every `leave`.
    leaves: Vec<(String, ConnId)>,
    announcing: Option<Announcement>,
    /// The connection a resume reply went to: what follows for it is the replay.
    replay: Option<ConnId>,
    /// The step's departures are done (a list came).
    departed: bool,
    /// A session opened in this step.
    opened: bool,
}

fn keys_are(object: &Json, expected: &[&str]) -> Result<(), String> {
    let mut keys: Vec<&str> =
        object.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    keys.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    if keys != want { Err(format!("fields {keys:?}, want {want:?}")) } else { Ok(()) }
}

fn str_field<'a>(object: &'a Json, key: &str) -> Result<&'a str, String> {
    object.get_str(key).ok_or_else(|| format!("{key} is not a string"))
}

impl Observer {
    /// Checks one step's messages, in the order the core produced them, and updates the
    /// state they imply. `live` tells whether a connection is connected now; `departed`
    /// are the sIds the core released in this step (it says so through `is_registered`).
    fn step(
        &mut self,
        cause: Cause,
        sent: &[Sent],
        live: &dyn Fn(ConnId) -> bool,
        departed: &BTreeSet<String>,
    ) -> Result<(), String> {
        let mut seen = StepSeen::default();
        for (at, message) in sent.iter().enumerate() {
            self.message(cause, message, &mut seen, live, departed).map_err(|e| {
                format!(
                    "message #{at} to {}{}: {e}: {}",
                    show(message.to),
                    if message.held { " (away)" } else { "" },
                    String::from_utf8_lossy(&message.text)
                )
            })?;
        }
        if let Some(announcement) = seen.announcing {
            let missing: Vec<String> = announcement.expect.iter().map(|c| show(*c)).collect();
            return Err(format!(
                "ssu {} of {} never reached {missing:?}",
                announcement.state, announcement.id
            ));
        }
        // A new session: the reply to its creator, then ssu 1 to the creator; ssu 1 to the callee.
        if (seen.session_reply.is_some() || !seen.ssu_new.is_empty()) && !seen.opened {
            let to: Vec<String> = seen.ssu_new.iter().map(|(c, _)| show(*c)).collect();
            return Err(format!("ssu 1 went to {to:?}, not to the creator and one callee"));
        }
        // The state change a relay implies has happened, announced (unless a departure in
        // the same step closed the session).
        if let Some((action, id)) = &seen.relayed
            && !seen.errors.contains(&9401)
            && !seen.leaves.iter().any(|(s, _)| s == id)
        {
            let now = self.state.sessions.get(id).map(|s| s.state);
            let ok = match action {
                Action::Call => now == Some(2),
                Action::Accept => now == Some(3),
                Action::IceCandidate => now.is_some(),
                Action::Reject | Action::Stop => now.is_none(),
            };
            if !ok {
                return Err(format!("after a relayed {} session {id} is in state {now:?}", action.cmd()));
            }
        }
        if seen.errors.len() > 1 {
            return Err(format!("several errors for one command: {:?}", seen.errors));
        }
        if let [code] = seen.errors[..] {
            // A client made gone by its own error (held past the cap) departs after it.
            if code != 9401 && sent.len() != 1 && departed.is_empty() {
                return Err(format!("error {code} came with other messages"));
            }
            if code == 9401 {
                let Cause::Command { from } = cause else { unreachable!("errors only answer commands") };
                if self.state.calling(from) {
                    return Err("9401 but the session did not close".into());
                }
            }
        }
        match cause {
            Cause::Command { .. } if sent.is_empty() => {
                return Err("a command was not answered at all".into());
            }
            Cause::Disconnect { gone } | Cause::Lost { gone } => {
                if let Some(sid) = self.state.sid(gone)
                    && !departed.contains(sid)
                {
                    let away = matches!(cause, Cause::Lost { .. }) && self.state.resumable.contains(&gone);
                    if !away {
                        return Err(format!("{} ended, but its sId {sid:?} is still registered", show(gone)));
                    }
                    if !sent.is_empty() {
                        return Err("a resumable client's lost connection made messages".into());
                    }
                    self.state.away.insert(gone);
                }
            }
            _ => {}
        }
        if !seen.departed {
            self.depart(departed)?;
        }
        Ok(())
    }

    /// Both `ssu 1` of a new session came: it is open (a departure may close it again in
    /// the same step).
    fn open_session(&mut self, cause: Cause, seen: &mut StepSeen) -> Result<(), String> {
        let Cause::Command { from } = cause else {
            return Err("a session opened without a command".into());
        };
        let Some((_, id)) = seen.session_reply.clone() else {
            return Err("ssu 1 without a session reply".into());
        };
        let callees: Vec<ConnId> = seen.ssu_new.iter().map(|(to, _)| *to).filter(|to| *to != from).collect();
        let &[callee] = callees.as_slice() else {
            let to: Vec<String> = seen.ssu_new.iter().map(|(c, _)| show(*c)).collect();
            return Err(format!("ssu 1 went to {to:?}, not to the creator and one callee"));
        };
        if seen.ssu_new.iter().any(|(_, s)| *s != id) {
            return Err(format!("ssu 1 for another id than the session reply's {id}"));
        }
        if self.state.sid(callee).is_none() || self.state.calling(callee) {
            return Err(format!("ssu 1 to {}, which is not a registered WAIT client", show(callee)));
        }
        self.state.open(&id, [from, callee]);
        seen.opened = true;
        Ok(())
    }

    /// The clients the core released are gone (their opponents were told first).
    fn depart(&mut self, departed: &BTreeSet<String>) -> Result<(), String> {
        for sid in departed {
            let Some(key) = self.state.find(sid) else { continue };
            if let Some(id) = self.state.session_of.get(&key) {
                return Err(format!(
                    "{sid:?} departed from session {id}: no leave and ssu 4 for its opponent"
                ));
            }
            self.state.remove(key);
        }
        Ok(())
    }

    fn message(
        &mut self,
        cause: Cause,
        message: &Sent,
        seen: &mut StepSeen,
        live: &dyn Fn(ConnId) -> bool,
        departed: &BTreeSet<String>,
    ) -> Result<(), String> {
        let to = message.to;
        if !message.held && !live(to) {
            return Err("addressed to a departed or never connected connection".into());
        }
        std::str::from_utf8(&message.text).map_err(|_| "not UTF-8")?;
        let value = parse(&message.text).map_err(|e| format!("not JSON ({e})"))?;
        if value.as_object().is_none() {
            return Err("not a JSON object".into());
        }
        let cmd = str_field(&value, "cmd")?;
        if message.list != (cmd == "clu") {
            return Err("clu must go through send_client_list, and only clu".into());
        }
        if seen.replay == Some(to) {
            // Old messages again, for a client that missed them: the simulated clients
            // check them against what was produced.
            if message.held || matches!(cmd, "clu" | "sId" | "resume") {
                return Err("not a message a replay may hold".into());
            }
            return Ok(());
        }
        let from = match cause {
            Cause::Command { from } => Some(from),
            _ => None,
        };
        let from_is_to = from == Some(to);
        match cmd {
            "error" => {
                keys_are(&value, &["cmd", "code", "message"])?;
                let code = value.get_u64("code").ok_or("code is not an integer")?;
                str_field(&value, "message")?;
                if !ERROR_CODES.contains(&code) {
                    return Err(format!("code {code} is not in PROTOCOL.md's table"));
                }
                if !from_is_to {
                    return Err("an error to someone who sent no command".into());
                }
                self.errors += 1;
                seen.errors.push(code);
                if code == 9401 && !from.is_some_and(|f| self.state.calling(f)) {
                    return Err("9401 to a client in no session".into());
                }
            }
            "sId" => {
                let token = value.get("resumeToken").is_some();
                keys_are(&value, if token { &["cmd", "sId", "resumeToken"] } else { &["cmd", "sId"] })?;
                let sid = str_field(&value, "sId")?;
                if !from_is_to || self.state.sid(to).is_some() || self.state.find(sid).is_some() {
                    return Err("an sId reply that is not a registration".into());
                }
                if sid.is_empty() || sid.trim() != sid || sid.len() > 64 {
                    return Err("a registered sId that is not normalised".into());
                }
                self.state.clients.push((to, sid.to_owned()));
                if token {
                    check_token(str_field(&value, "resumeToken")?)?;
                    self.state.resumable.insert(to);
                }
            }
            "resume" => {
                keys_are(&value, &["cmd", "sId", "resumeToken"])?;
                check_token(str_field(&value, "resumeToken")?)?;
                let sid = str_field(&value, "sId")?;
                if !from_is_to || self.state.sid(to).is_some() {
                    return Err("a resume reply to a connection that did not ask, or registered".into());
                }
                let old = self.state.find(sid).ok_or("a resume reply for an sId nobody holds")?;
                if !self.state.resumable.contains(&old) {
                    return Err("a resume reply for a client that did not opt in".into());
                }
                self.state.rename(old, to);
                seen.replay = Some(to);
            }
            "session" => {
                keys_are(&value, &["cmd", "sessionId"])?;
                let id = str_field(&value, "sessionId")?;
                if !from_is_to || self.state.sid(to).is_none() || self.state.calling(to) {
                    return Err("a session reply to a client that cannot have opened one".into());
                }
                if id.is_empty() || self.state.sessions.contains_key(id) || seen.session_reply.is_some() {
                    return Err("a session id that is empty or already live".into());
                }
                seen.session_reply = Some((to, id.to_owned()));
            }
            "ssu" => {
                keys_are(&value, &["cmd", "sessionId", "state"])?;
                let id = str_field(&value, "sessionId")?.to_owned();
                let state = value.get_u64("state").ok_or("state is not an integer")?;
                let Ok(state @ 1..=4) = u8::try_from(state) else { return Err(format!("state {state}")) };
                if state == 1 {
                    if from_is_to && seen.session_reply.as_ref().map(|(_, s)| s) != Some(&id) {
                        return Err("ssu 1 to the sender before a session reply with that id".into());
                    }
                    if seen.ssu_new.iter().any(|(c, _)| *c == to) || from.is_none() || seen.opened {
                        return Err("ssu 1 twice, or without a command".into());
                    }
                    seen.ssu_new.push((to, id));
                    if seen.ssu_new.len() == 2 {
                        self.open_session(cause, seen)?;
                    }
                    return Ok(());
                }
                self.announce(cause, to, &id, state, seen)?;
            }
            "call" | "accept" | "icecandidate" | "reject" | "stop" => {
                let action = Action::from_cmd(cmd).ok_or("unreachable")?;
                let mut want = vec!["cmd", "sessionId", "opponentId"];
                want.extend(action.payload_field());
                keys_are(&value, &want)?;
                let id = str_field(&value, "sessionId")?;
                let session = self.state.sessions.get(id).ok_or("a relay on no live session")?;
                let sender = session.other(to).ok_or("a relay to a client outside the session")?;
                if from != Some(sender) || seen.relayed.is_some() {
                    return Err("a relay not caused by a command of the opponent".into());
                }
                if Some(str_field(&value, "opponentId")?) != self.state.sid(sender) {
                    return Err("opponentId is not the sender's sId".into());
                }
                seen.relayed = Some((action, id.to_owned()));
            }
            "notify" => {
                let mut want = vec!["cmd", "opponentId", "type"];
                if value.get("data").is_some() {
                    want.push("data");
                }
                keys_are(&value, &want)?;
                let sender = from.ok_or("a notify without a command")?;
                if sender == to || self.state.sid(to).is_none() {
                    return Err("a notify to its sender or to an unregistered client".into());
                }
                if Some(str_field(&value, "opponentId")?) != self.state.sid(sender) {
                    return Err("opponentId is not the sender's sId".into());
                }
                if str_field(&value, "type")?.is_empty() {
                    return Err("an empty type".into());
                }
            }
            "leave" => {
                keys_are(&value, &["cmd", "sessionId", "opponentId"])?;
                let id = str_field(&value, "sessionId")?;
                let session = self.state.sessions.get(id).ok_or("leave for no live session")?;
                let gone = session.other(to).ok_or("leave to a client outside the session")?;
                let gone_sid = self.state.sid(gone).unwrap_or_default();
                if !departed.contains(gone_sid) {
                    return Err("leave, but the opponent is still registered".into());
                }
                if str_field(&value, "opponentId")? != gone_sid {
                    return Err("opponentId is not the departed client's sId".into());
                }
                if seen.leaves.iter().any(|(s, _)| s == id) {
                    return Err("leave twice for one session".into());
                }
                seen.leaves.push((id.to_owned(), to));
            }
            "clu" => {
                keys_are(&value, &["cmd", "list"])?;
                // Lists follow the departures of their step (the end of a grace).
                if !seen.departed {
                    self.depart(departed)?;
                    seen.departed = true;
                }
                if self.state.sid(to).is_none() || self.state.calling(to) || self.state.away.contains(&to) {
                    return Err("clu to a client that is not an attached registered WAIT client".into());
                }
                let mut list = Vec::new();
                for entry in value.get_array("list").ok_or("list is not an array")? {
                    keys_are(entry, &["sId", "state"])?;
                    let state =
                        entry.get_u64("state").and_then(|s| u8::try_from(s).ok()).ok_or("bad state")?;
                    list.push((str_field(entry, "sId")?.to_owned(), state));
                }
                if list != self.state.view() {
                    return Err(format!("the list is not the current one, {:?}", self.state.view()));
                }
                self.last_list.insert(to, list);
            }
            other => return Err(format!("no server message is called {other:?}")),
        }
        Ok(())
    }

    /// `ssu` 2, 3 or 4 for `id` to `to`.
    fn announce(
        &mut self,
        cause: Cause,
        to: ConnId,
        id: &str,
        state: u8,
        seen: &mut StepSeen,
    ) -> Result<(), String> {
        let session = *self.state.sessions.get(id).ok_or("ssu for no live session")?;
        if session.other(to).is_none() {
            return Err("ssu to a client outside the session".into());
        }
        if seen.announcing.is_none() {
            let relayed =
                |action: Action| seen.relayed.as_ref().is_some_and(|(a, s)| *a == action && s == id);
            let expect = match state {
                2 if relayed(Action::Call) && session.state != 2 => session.members.to_vec(),
                3 if relayed(Action::Accept) && session.state != 3 => session.members.to_vec(),
                4 if relayed(Action::Reject) || relayed(Action::Stop) => session.members.to_vec(),
                4 if seen.errors.contains(&9401)
                    && matches!(cause, Cause::Command { from } if session.other(from).is_some()) =>
                {
                    session.members.to_vec()
                }
                4 if seen.leaves.iter().any(|(s, c)| s == id && *c == to) => vec![to],
                _ => {
                    return Err(format!(
                        "ssu {state} (session in state {}) does not follow a message that changes it",
                        session.state
                    ));
                }
            };
            seen.announcing = Some(Announcement { id: id.to_owned(), state, expect });
        }
        let announcement = seen.announcing.as_mut().ok_or("unreachable")?;
        if announcement.id != id || announcement.state != state {
            return Err("two state changes interleaved".into());
        }
        let Some(at) = announcement.expect.iter().position(|c| *c == to) else {
            return Err("the same state change announced twice".into());
        };
        announcement.expect.remove(at);
        if announcement.expect.is_empty() {
            seen.announcing = None;
            if state == 4 {
                self.state.close(id);
            } else if let Some(session) = self.state.sessions.get_mut(id) {
                session.state = state;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The model: what PROTOCOL.md says each command does
// ---------------------------------------------------------------------------------------

/// A command after normalisation, as the model understands it. `None` fields are invalid
/// (missing, empty, too long, wrong type): 9003.
#[derive(Debug)]
enum Cmd {
    Register {
        sid: Option<String>,
        resume: Opt,
    },
    Resume {
        sid: Option<String>,
        token: Option<String>,
        received: Option<u64>,
    },
    Session {
        opponent: Option<String>,
    },
    Relay {
        action: Action,
        id: Option<String>,
        payload: &'static str,
    },
    Notify {
        opponent: Option<String>,
        notify_type: Option<String>,
        data: Option<&'static str>,
    },
    /// A message whose answer is one error: this code when unregistered, that one when not.
    Fixed {
        unregistered: u64,
        registered: u64,
    },
}

/// A message given to a resumable client since its last registration or resume reply.
#[derive(Clone, Debug)]
struct Entry {
    /// Its place in everything produced for the client; `None` for a client list.
    produced_at: Option<usize>,
    /// Held (its connection was lost or closing), not queued.
    held: bool,
    /// Part of the replay after a resume: kept outside the cap until acknowledged, so a
    /// connection lost again before the replay was read can be resumed again.
    replayed: bool,
    /// Dropped past the cap.
    dropped: bool,
    bytes: usize,
}

/// A resumable client's messages, as PROTOCOL.md's *Resume* describes what the server
/// keeps: numbered from 1 after each reply (lists included), kept until a pong proves them
/// read, held while away within the cap, and what is kept from before the loss bounded by
/// the cap too (the oldest go first).
#[derive(Clone, Debug)]
struct Log {
    token: String,
    /// Tokens spent by earlier resumes.
    spent: Vec<String>,
    /// The connection's message count just after the reply: pongs count on that scale.
    base: u64,
    entries: Vec<Entry>,
    /// Entries numbered up to this are acknowledged (no longer kept).
    acknowledged: u64,
    /// A resume counting less than this needs an entry that is no longer kept.
    kept_from: u64,
    /// Every message produced for the client since it registered, replies and lists
    /// excluded, as the core must encode it; each once, however often it was replayed.
    produced: Vec<String>,
    /// How much of `produced` the client had when this log began.
    epoch_base: usize,
    /// Away since, and in which order clients went away (ties are broken by it).
    away: Option<(Instant, u64)>,
}

impl Log {
    fn new(produced: Vec<String>, epoch_base: usize, spent: Vec<String>) -> Log {
        Log {
            token: String::new(),
            spent,
            base: 0,
            entries: Vec::new(),
            acknowledged: 0,
            kept_from: 1,
            produced,
            epoch_base,
            away: None,
        }
    }

    fn sent(&self) -> u64 {
        self.entries.len() as u64
    }

    fn kept(&self) -> impl Iterator<Item = (u64, &Entry)> + '_ {
        self.entries.iter().zip(1u64..).map(|(entry, number)| (number, entry)).filter(|(number, entry)| {
            entry.produced_at.is_some() && !entry.dropped && *number > self.acknowledged
        })
    }

    fn held_bytes(&self) -> usize {
        self.kept().filter(|(_, e)| e.held).map(|(_, e)| e.bytes).sum()
    }

    /// Given to the attached connection: the oldest kept (the replay excepted) go while
    /// what is kept from before the loss passes the cap.
    fn give(&mut self, at: usize, bytes: usize, cap: usize, replayed: bool) {
        self.entries.push(Entry { produced_at: Some(at), held: false, replayed, dropped: false, bytes });
        // And all that is kept from before a loss, the replay included, within twice it.
        loop {
            let counted = |e: &Entry| !e.held && !e.replayed;
            let bytes_of = |log: &Log, pick: &dyn Fn(&Entry) -> bool| -> usize {
                log.kept().filter(|(_, e)| pick(e)).map(|(_, e)| e.bytes).sum()
            };
            let drop = if bytes_of(self, &counted) > cap {
                self.kept().find(|(_, e)| counted(e)).map(|(number, _)| number)
            } else if bytes_of(self, &|e: &Entry| !e.held) > 2 * cap {
                self.kept().find(|(_, e)| !e.held).map(|(number, _)| number)
            } else {
                None
            };
            let Some(number) = drop else { break };
            self.entries[number as usize - 1].dropped = true;
            self.kept_from = self.kept_from.max(number + 1);
        }
    }

    fn give_list(&mut self) {
        self.entries.push(Entry {
            produced_at: None,
            held: false,
            replayed: false,
            dropped: false,
            bytes: 0,
        });
    }

    fn can_hold(&self, bytes: usize, cap: usize) -> bool {
        self.held_bytes() + bytes <= cap
    }

    fn hold(&mut self, at: usize, bytes: usize) {
        self.entries.push(Entry {
            produced_at: Some(at),
            held: true,
            replayed: false,
            dropped: false,
            bytes,
        });
    }

    /// A pong proved the first `through` read.
    fn acknowledge(&mut self, through: u64) {
        let through = through.min(self.sent());
        self.acknowledged = self.acknowledged.max(through);
        self.kept_from = self.kept_from.max(through + 1);
    }

    /// A resume counting `received` can be served: it received no more than was sent, and
    /// everything after it is kept.
    fn can_replay(&self, received: u64) -> bool {
        received <= self.sent() && received.saturating_add(1) >= self.kept_from
    }

    /// How much of `produced` a client that counts `received` has.
    fn claimed(&self, received: u64) -> usize {
        let counted = &self.entries[..(received as usize).min(self.entries.len())];
        self.epoch_base + counted.iter().filter(|e| e.produced_at.is_some()).count()
    }

    /// What a resume counting `received` replays: (place in `produced`, held).
    fn replay(&self, received: u64) -> Vec<(usize, bool)> {
        let from = (received as usize).min(self.entries.len());
        self.entries[from..].iter().filter_map(|e| Some((e.produced_at?, e.held))).collect()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    resumes: u64,
    refused: u64,
    expired: u64,
    over_limit: u64,
}

#[derive(Clone, Debug, Default)]
struct Model {
    state: State,
    /// Resumable clients' logs, keyed like `state.clients`.
    logs: BTreeMap<ConnId, Log>,
    counters: Counters,
    /// Connections lost so far (orders away clients that went at the same instant).
    losses: u64,
}

impl Model {
    fn registered(&self, key: ConnId) -> bool {
        self.state.sid(key).is_some()
    }

    fn check(&self, policy: Option<Policy>) -> Result<(), String> {
        self.state.check()?;
        let logs: BTreeSet<ConnId> = self.logs.keys().copied().collect();
        if logs != self.state.resumable {
            return Err(format!("logs for {logs:?}, resumable clients {:?}", self.state.resumable));
        }
        let cap = policy.map_or(0, |p| p.max_held);
        for (key, log) in &self.logs {
            if log.away.is_some() != self.state.away.contains(key) {
                return Err(format!("{} away in its log, not in the state, or back", show(*key)));
            }
            if log.held_bytes() > cap {
                return Err(format!(
                    "{} holds {} bytes, past the cap of {cap}",
                    show(*key),
                    log.held_bytes()
                ));
            }
        }
        Ok(())
    }

    /// When the first grace ends.
    fn first_grace_end(&self, policy: Option<Policy>) -> Option<Instant> {
        let grace = policy?.grace;
        self.logs.values().filter_map(|log| log.away).map(|(since, _)| since + grace).min()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// Must arrive, or its recipient goes.
    Send,
    /// `notify`: dropped rather than making anyone gone.
    Offer,
    /// A replay.
    Resend,
}

/// A message the model predicts.
#[derive(Clone, Debug)]
struct Out {
    to: ConnId,
    text: String,
    /// For an away client: held or refused, never handed to the outbox.
    away: bool,
}

/// A successful resume, as predicted.
#[derive(Clone, Debug)]
struct Resumed {
    /// The client's key before: its old connection.
    old: ConnId,
    /// The old connection was still attached: a takeover.
    attached: bool,
    /// How much of what was produced for it the server takes the client to have.
    claimed: usize,
    replay: Vec<(usize, bool)>,
}

/// One input's prediction: the messages, the next model, and what happened.
struct Pred {
    m: Model,
    out: Vec<Out>,
    doomed: Vec<ConnId>,
    closing: HashSet<ConnId>,
    policy: Option<Policy>,
    /// A registration or resume that began a new log (its token and base come from the reply).
    fresh_log: bool,
    resumed: Option<Resumed>,
    /// Why a resume was refused.
    refusal: Option<&'static str>,
}

impl Pred {
    fn new(pre: &Model, closing: &HashSet<ConnId>, policy: Option<Policy>) -> Pred {
        Pred {
            m: pre.clone(),
            out: Vec::new(),
            doomed: Vec::new(),
            closing: closing.clone(),
            policy,
            fresh_log: false,
            resumed: None,
            refusal: None,
        }
    }

    fn cap(&self) -> usize {
        self.policy.map_or(0, |p| p.max_held)
    }

    /// A reply that goes to the connection whatever it carries (never kept or held).
    fn reply(&mut self, to: ConnId, text: String) {
        self.out.push(Out { to, text, away: false });
    }

    /// Gives a new message to the client `to`. Whether it was queued (or held).
    fn deliver(&mut self, to: ConnId, text: String, how: How) -> bool {
        self.hand(to, None, text, how)
    }

    /// Gives a message to the client `to`: a new one, or (`again`) one produced earlier.
    fn hand(&mut self, to: ConnId, again: Option<usize>, text: String, how: How) -> bool {
        let cap = self.cap();
        let away = self.m.state.away.contains(&to);
        let open = !away && !self.closing.contains(&to);
        let bytes = text.len();
        self.out.push(Out { to, text: text.clone(), away });
        let Some(log) = self.m.logs.get_mut(&to) else { return open };
        let place = |log: &mut Log| {
            again.unwrap_or_else(|| {
                log.produced.push(text.clone());
                log.produced.len() - 1
            })
        };
        if open {
            let at = place(log);
            log.give(at, bytes, cap, how == How::Resend);
            return true;
        }
        // Away, or its connection is closing and the transport has yet to say how it ended.
        if log.can_hold(bytes, cap) {
            let at = place(log);
            log.hold(at, bytes);
            tally(if away { "held for an away client" } else { "held for a closing connection" });
            return true;
        }
        if how == How::Offer {
            tally("a notify past the cap dropped");
        } else {
            tally("held past the cap: gone");
            self.doomed.push(to);
        }
        false
    }

    /// A command's answer is `error` `code`.
    fn fail(&mut self, me: ConnId, code: u64) -> Result<(), String> {
        self.error(me, code);
        Ok(())
    }

    fn error(&mut self, me: ConnId, code: u64) {
        if self.m.registered(me) {
            self.deliver(me, error(code), How::Send);
        } else {
            self.reply(me, error(code));
        }
    }

    /// The leave procedure for `key`.
    fn depart(&mut self, key: ConnId) {
        let Some(sid) = self.m.state.sid(key).map(str::to_owned) else { return };
        let session = self.m.state.session_of.get(&key).cloned();
        let opponent =
            session.as_ref().and_then(|id| self.m.state.sessions.get(id)).and_then(|s| s.other(key));
        if let Some(id) = &session {
            self.m.state.close(id);
        }
        self.m.state.remove(key);
        self.m.logs.remove(&key);
        if let (Some(id), Some(opponent)) = (session, opponent) {
            let leave = format!(r#"{{"cmd":"leave","sessionId":{},"opponentId":{}}}"#, js(&id), js(&sid));
            self.deliver(opponent, leave, How::Send);
            self.deliver(opponent, ssu(&id, 4), How::Send);
        }
    }

    /// Clients whose held messages passed the cap are gone, last doomed first.
    fn bury(&mut self) {
        while let Some(key) = self.doomed.pop() {
            if self.m.registered(key) {
                self.m.counters.over_limit += 1;
                self.depart(key);
            }
        }
    }

    fn command(&mut self, me: ConnId, cmd: &Cmd, draws: &[u64]) -> Result<(), String> {
        let my_sid = self.m.state.sid(me).map(str::to_owned);
        if !matches!(cmd, Cmd::Register { .. } | Cmd::Resume { .. } | Cmd::Fixed { .. }) && my_sid.is_none() {
            self.error(me, 9100);
            return Ok(());
        }
        let my_sid = my_sid.unwrap_or_default();
        match cmd {
            Cmd::Fixed { unregistered, registered } => {
                let code = if self.m.registered(me) { *registered } else { *unregistered };
                self.error(me, code);
            }
            Cmd::Register { sid, resume } => {
                let enabled = self.policy.is_some();
                let Some(sid) = sid else { return self.fail(me, 9003) };
                if enabled && *resume == Opt::Invalid {
                    return self.fail(me, 9003);
                }
                if self.m.registered(me) {
                    return self.fail(me, 9101);
                }
                if self.m.state.find(sid).is_some() {
                    return self.fail(me, 9102);
                }
                self.m.state.clients.push((me, sid.clone()));
                if enabled && *resume == Opt::Yes {
                    self.m.state.resumable.insert(me);
                    self.m.logs.insert(me, Log::new(Vec::new(), 0, Vec::new()));
                    self.fresh_log = true;
                    self.reply(me, format!(r#"{{"cmd":"sId","sId":{},"resumeToken":"?"}}"#, js(sid)));
                } else {
                    self.reply(me, format!(r#"{{"cmd":"sId","sId":{}}}"#, js(sid)));
                }
            }
            Cmd::Resume { sid, token, received } => {
                let (Some(sid), Some(token), Some(received)) = (sid, token, *received) else {
                    return self.fail(me, 9003);
                };
                self.resume(me, sid, token, received);
            }
            Cmd::Session { opponent } => {
                let Some(opponent) = opponent else { return self.fail(me, 9003) };
                if *opponent == my_sid {
                    return self.fail(me, 9200);
                }
                let Some(callee) = self.m.state.find(opponent) else { return self.fail(me, 9201) };
                if self.m.state.calling(me) {
                    return self.fail(me, 9202);
                }
                if self.m.state.calling(callee) {
                    return self.fail(me, 9203);
                }
                // The id is the first draw that names no live session; a colliding draw is drawn again.
                let id = match draws.iter().position(|&key| !self.m.state.sessions.contains_key(&hex(key))) {
                    Some(at) if at + 1 == draws.len() => hex(draws[at]),
                    _ => {
                        return Err(format!(
                            "the session ids drawn, {draws:x?}, are not one draw per collision"
                        ));
                    }
                };
                self.m.state.open(&id, [me, callee]);
                self.deliver(me, format!(r#"{{"cmd":"session","sessionId":{}}}"#, js(&id)), How::Send);
                self.deliver(me, ssu(&id, 1), How::Send);
                self.deliver(callee, ssu(&id, 1), How::Send);
            }
            Cmd::Relay { action, id, payload } => {
                let Some(id) = id else { return self.fail(me, 9003) };
                let Some(session) =
                    self.m.state.sessions.get(id).filter(|s| s.members.contains(&me)).copied()
                else {
                    return self.fail(me, 9204);
                };
                let opponent = session.other(me).ok_or("unreachable")?;
                let payload =
                    action.payload_field().map(|field| format!(",\"{field}\":{payload}")).unwrap_or_default();
                let relayed = format!(
                    r#"{{"cmd":"{}","sessionId":{},"opponentId":{}{payload}}}"#,
                    action.cmd(),
                    js(id),
                    js(&my_sid)
                );
                // A relay that cannot reach the opponent (closing, and not resumable; or past
                // its cap) closes the session.
                let next = if self.deliver(opponent, relayed, How::Send) {
                    match action {
                        Action::Call => 2,
                        Action::Accept => 3,
                        Action::IceCandidate => session.state,
                        Action::Reject | Action::Stop => 4,
                    }
                } else {
                    self.error(me, 9401);
                    4
                };
                if next == 4 {
                    self.m.state.close(id);
                } else if let Some(session) = self.m.state.sessions.get_mut(id) {
                    session.state = next;
                }
                if next != session.state {
                    for member in session.members {
                        self.deliver(member, ssu(id, next), How::Send);
                    }
                }
            }
            Cmd::Notify { opponent, notify_type, data } => {
                let (Some(opponent), Some(notify_type)) = (opponent, notify_type) else {
                    return self.fail(me, 9003);
                };
                if *opponent == my_sid {
                    return self.fail(me, 9300);
                }
                let Some(target) = self.m.state.find(opponent) else { return self.fail(me, 9301) };
                let data = data.map(|d| format!(",\"data\":{d}")).unwrap_or_default();
                let text = format!(
                    r#"{{"cmd":"notify","opponentId":{},"type":{}{data}}}"#,
                    js(&my_sid),
                    js(notify_type)
                );
                self.deliver(target, text, How::Offer);
            }
        }
        Ok(())
    }

    /// `resume` (PROTOCOL.md, *Resume*): every refusal is 9104.
    fn resume(&mut self, me: ConnId, sid: &str, token: &str, received: u64) {
        if self.m.registered(me) {
            return self.error(me, 9101);
        }
        let key = self.m.state.find(sid);
        let refusal = match (self.policy, key, key.and_then(|key| self.m.logs.get(&key))) {
            (None, ..) => Some("resume refused: resume is off"),
            (_, None, _) => Some("resume refused: no such sId"),
            (_, _, None) => Some("resume refused: a client that did not opt in"),
            (_, _, Some(log)) if log.token != token => Some("resume refused: a wrong or spent token"),
            (_, _, Some(log)) if received > log.sent() => Some("resume refused: more received than sent"),
            (_, _, Some(log)) if !log.can_replay(received) => {
                Some("resume refused: what it needs is no longer kept")
            }
            _ => None,
        };
        let old = key.filter(|_| refusal.is_none()).and_then(|key| self.m.logs.remove(&key));
        let (Some(key), Some(old)) = (key, old) else {
            tally(refusal.unwrap_or("unreachable"));
            // The right token with a count that cannot be replayed: the rightful owner can
            // never resume, so an away client is gone at once (an attached one stays).
            let unreplayable = matches!(
                refusal,
                Some(
                    "resume refused: more received than sent"
                        | "resume refused: what it needs is no longer kept"
                )
            );
            if let Some(key) = key.filter(|key| unreplayable && self.m.state.away.contains(key)) {
                tally("refused: the rightful owner, away, is gone at once");
                self.depart(key);
            }
            self.refusal = refusal;
            self.m.counters.refused += 1;
            return self.error(me, 9104);
        };
        let attached = !self.m.state.away.contains(&key);
        tally(if attached { "resumed: a takeover" } else { "resumed: away" });
        if old.replay(received).iter().any(|(_, held)| *held) {
            tally("resumed: held messages replayed");
        }
        if old.entries.len() as u64 > received
            && old.entries[received as usize..].iter().any(|e| !e.held && e.produced_at.is_some())
        {
            tally("resumed: messages queued on a lost connection replayed");
        }
        let claimed = old.claimed(received);
        let replay = old.replay(received);
        let mut spent = old.spent.clone();
        spent.push(old.token.clone());
        self.m.state.rename(key, me);
        self.m.logs.insert(me, Log::new(old.produced.clone(), claimed, spent));
        self.m.counters.resumes += 1;
        self.fresh_log = true;
        self.reply(me, format!(r#"{{"cmd":"resume","sId":{},"resumeToken":"?"}}"#, js(sid)));
        for &(at, _) in &replay {
            self.hand(me, Some(at), old.produced[at].clone(), How::Resend);
        }
        self.resumed = Some(Resumed { old: key, attached, claimed, replay });
    }
}

/// What a command does.
fn predict(
    pre: &Model,
    closing: &HashSet<ConnId>,
    policy: Option<Policy>,
    me: ConnId,
    cmd: &Cmd,
    draws: &[u64],
) -> Result<Pred, String> {
    let mut pred = Pred::new(pre, closing, policy);
    pred.command(me, cmd, draws)?;
    pred.bury();
    Ok(pred)
}

/// The connection `gone` closed: its client is gone.
fn predict_disconnect(pre: &Model, closing: &HashSet<ConnId>, policy: Option<Policy>, gone: ConnId) -> Pred {
    let mut pred = Pred::new(pre, closing, policy);
    pred.depart(gone);
    pred.bury();
    pred
}

/// The connection `gone` was lost: a resumable client is away, any other gone.
fn predict_lost(
    pre: &Model,
    closing: &HashSet<ConnId>,
    policy: Option<Policy>,
    gone: ConnId,
    now: Instant,
) -> Pred {
    let mut pred = Pred::new(pre, closing, policy);
    let seq = pred.m.losses;
    match pred.m.logs.get_mut(&gone) {
        Some(log) if policy.is_some() => {
            log.away = Some((now, seq));
            pred.m.losses += 1;
            pred.m.state.away.insert(gone);
            tally("lost: away");
        }
        _ => {
            pred.depart(gone);
            pred.bury();
        }
    }
    pred
}

/// A poll at `now`: the graces that are over end, oldest first (the client lists that
/// follow are the observer's business).
fn predict_poll(pre: &Model, closing: &HashSet<ConnId>, policy: Option<Policy>, now: Instant) -> Pred {
    let mut pred = Pred::new(pre, closing, policy);
    let Some(policy) = policy else { return pred };
    let mut over: Vec<((Instant, u64), ConnId)> = pred
        .m
        .logs
        .iter()
        .filter_map(|(key, log)| Some((log.away?, *key)))
        .filter(|((since, _), _)| *since + policy.grace <= now)
        .collect();
    over.sort();
    for (away, key) in over {
        // Still away since then (not made gone by an earlier one's departure).
        if pred.m.logs.get(&key).is_some_and(|log| log.away == Some(away)) {
            pred.m.counters.expired += 1;
            tally("a grace ended");
            pred.depart(key);
            pred.bury();
        }
    }
    pred
}

/// Per recipient, in order, as JSON values; `error` compared by code only (`message` is free).
fn per_recipient(
    messages: impl Iterator<Item = (ConnId, Vec<u8>)>,
) -> Result<BTreeMap<ConnId, Vec<Json>>, String> {
    let mut map: BTreeMap<ConnId, Vec<Json>> = BTreeMap::new();
    for (to, text) in messages {
        let mut value = parse(&text).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&text)))?;
        if value.get_str("cmd") == Some("error")
            && let Some(object) = value.as_object_mut()
        {
            object.remove("message");
        }
        map.entry(to).or_default().push(value);
    }
    Ok(map)
}

/// The messages the observer checks: the recorded ones in the core's order, with those the
/// model says the core meant for away clients (which no outbox saw) placed right after the
/// recorded message the model puts before them.
fn merge(sent: &[Sent], expected: &[Out]) -> Vec<Sent> {
    let mut anchored: Vec<(Option<(ConnId, usize)>, Sent)> = Vec::new();
    let mut count: HashMap<ConnId, usize> = HashMap::new();
    let mut last = None;
    for out in expected {
        if out.away {
            let held = Sent {
                to: out.to,
                text: out.text.clone().into_bytes(),
                list: false,
                queued: false,
                held: true,
            };
            anchored.push((last, held));
        } else {
            let n = count.entry(out.to).or_default();
            last = Some((out.to, *n));
            *n += 1;
        }
    }
    let mut merged = Vec::with_capacity(sent.len() + anchored.len());
    let take = |anchor: Option<(ConnId, usize)>, merged: &mut Vec<Sent>| {
        for (_, held) in anchored.iter().filter(|(a, _)| *a == anchor) {
            merged.push(held.clone());
        }
    };
    take(None, &mut merged);
    let mut seen: HashMap<ConnId, usize> = HashMap::new();
    let mut anchors = HashSet::new();
    for message in sent {
        merged.push(message.clone());
        if !message.list {
            let n = seen.entry(message.to).or_default();
            anchors.insert((message.to, *n));
            take(Some((message.to, *n)), &mut merged);
            *n += 1;
        }
    }
    // Anchors the core never sent (the comparison with the model fails anyway).
    for (anchor, held) in &anchored {
        if anchor.is_some_and(|a| !anchors.contains(&a)) {
            merged.push(held.clone());
        }
    }
    merged
}

// ---------------------------------------------------------------------------------------
// Simulated resumable clients
// ---------------------------------------------------------------------------------------

/// What a resumable client received: it counts the messages its connection delivered and
/// resumes with that count.
#[derive(Clone, Debug, Default)]
struct Sim {
    /// What arrived on its earlier connections (lists excluded).
    had: Vec<Json>,
    /// What its current connection was sent since the registration or resume reply
    /// (`None`: a client list), all of which arrives unless the connection is lost.
    on_conn: Vec<Option<Json>>,
    /// Since its connection was lost: the count it resumes with.
    count: Option<u64>,
    /// Since its connection was lost: not all of what was queued on it arrived.
    lost_in_flight: bool,
    /// How much of `had` and `on_conn` has been checked against what was produced.
    checked: usize,
}

impl Sim {
    fn len(&self) -> usize {
        self.had.len() + self.on_conn.iter().flatten().count()
    }

    /// Of what its connection was sent, how much arrives if it is lost now: what a pong
    /// proved read (`acked`) and `keep`/255 of the rest.
    fn arrived(&self, acked: u64, keep: u8) -> u64 {
        let acked = usize::try_from(acked).unwrap_or(usize::MAX).min(self.on_conn.len());
        (acked + (self.on_conn.len() - acked) * usize::from(keep) / 255) as u64
    }

    /// The connection is gone; the first `arrived` of its messages arrived.
    fn cut(&mut self, arrived: u64) {
        let kept: Vec<Json> = self.on_conn.drain(..).take(arrived as usize).flatten().collect();
        self.had.extend(kept);
        self.checked = self.checked.min(self.len());
    }
}

/// What a `resume` op knows that the core's answer does not tell.
struct ResumeCtx {
    /// For an attached target (a takeover): how much of its connection's messages arrived.
    takeover_arrived: Option<u64>,
    /// The count sent is what the client received.
    honest: bool,
    /// How the transport reports the taken-over connection.
    old_lost: bool,
    /// Part of what was queued on the client's connection never arrived.
    lost_in_flight: bool,
}

/// (raw JSON or None for missing, normalised or None for 9003) of a `received` count.
fn spell_count(pick: CountPick, honest: u64) -> (Option<String>, Option<u64>) {
    let bad: [Option<&str>; 8] = [
        None,
        Some("-1"),
        Some("2.5"),
        Some(r#""x""#),
        Some("null"),
        Some(r#""""#),
        Some(r#""12a""#),
        Some("true"),
    ];
    let (n, spelling) = match pick {
        CountPick::Honest(spelling) => (honest, spelling),
        CountPick::More(d) => (honest + 1 + u64::from(d % 3), d),
        CountPick::Less(d) => (honest.saturating_sub(1 + u64::from(d % 3)), d),
        CountPick::Exactly(n) if n % 9 == 8 => {
            return (Some(r#""18446744073709551615""#.into()), Some(u64::MAX));
        }
        // Past u64::MAX: more than was ever sent (9104), not an invalid field.
        CountPick::Exactly(n) if n % 9 == 7 => {
            return (Some(r#""18446744073709551616""#.into()), Some(u64::MAX));
        }
        CountPick::Exactly(n) => (u64::from(n % 9), n),
        CountPick::Bad(i) => return (bad[i % bad.len()].map(str::to_owned), None),
    };
    let raw = match spelling % 4 {
        0 => n.to_string(),
        1 => format!("\"{n}\""),
        2 => format!("\" {n}\\t\""),
        _ => format!("{n}.0"),
    };
    (Some(raw), Some(n))
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// How often each interesting thing happened, over all cases: the run fails if one never
/// did (so a change to the strategies cannot quietly stop testing resume).
static TALLY: std::sync::Mutex<BTreeMap<&'static str, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn tally(event: &'static str) {
    if let Ok(mut tally) = TALLY.lock() {
        *tally.entry(event).or_default() += 1;
    }
}

/// The events every default run must see at least once.
const EXPECTED_EVENTS: [&str; 18] = [
    "a grace ended",
    "a notify past the cap dropped",
    "held for a closing connection",
    "held for an away client",
    "held past the cap: gone",
    "lost: away",
    "resume refused: a wrong or spent token",
    "resume refused: an honest count, but what it needs is no longer kept",
    "resume refused: more received than sent",
    "resume refused: no such sId",
    "resume refused: a client that did not opt in",
    "resume refused: resume is off",
    "resumed: a takeover",
    "resumed: away",
    "resumed: an honest count after messages were lost in flight",
    "resumed: a made-up count",
    "resumed: held messages replayed",
    "resumed: messages queued on a lost connection replayed",
];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Run {
    core: Signaling,
    out: Recorder,
    draws: Rc<RefCell<Vec<u64>>>,
    policy: Option<Policy>,
    /// The current generation of every connection slot.
    generation: Vec<u32>,
    start: Instant,
    now: Instant,
    next_due: Option<Instant>,
    model: Model,
    obs: Observer,
    /// Every session id the server handed out, in order.
    known_ids: Vec<String>,
    last_change: Instant,
    cleared_at: HashMap<ConnId, Instant>,
    trace: Vec<String>,
    /// How the transport will report each closing connection: (lost rather than closed,
    /// `keep` as for `Op::Lose`).
    closing_how: HashMap<ConnId, (bool, u8)>,
    /// The highest count a pong confirmed, per connection.
    acked: HashMap<ConnId, u64>,
    /// Every resumable client, keyed like the model's clients.
    sims: BTreeMap<ConnId, Sim>,
}

impl Run {
    fn new(case: &Case) -> Self {
        let draws = Rc::new(RefCell::new(Vec::new()));
        let log = Rc::clone(&draws);
        let seed = case.seed;
        let mut counter = 0u64;
        // Mostly the few KEYS, the two that JSON numbers can name most often (collisions, ids
        // coming back); sometimes a fresh 64-bit value. Tokens come from here too.
        let random = Box::new(move || {
            counter += 1;
            let h = splitmix(seed ^ splitmix(counter));
            let key = match h % 16 {
                0..=3 => h >> 4,
                4..=7 => KEYS[2],
                8..=10 => KEYS[3],
                _ => KEYS[(h >> 4) as usize % KEYS.len()],
            };
            log.borrow_mut().push(key);
            key
        });
        let pacing = if case.split_rounds {
            ClientListPacing { bytes_per_poll: 1, ..ClientListPacing::default() }
        } else {
            ClientListPacing::default()
        };
        let resume = case.resume.map_or(ResumePolicy::OFF, |p| ResumePolicy {
            grace: p.grace,
            max_held: p.max_held,
            max_away: usize::MAX,
        });
        let now = Instant::now();
        Run {
            core: Signaling::with_random(pacing, random).with_resume(resume),
            out: Recorder::default(),
            draws,
            policy: case.resume,
            generation: vec![0; case.conns],
            start: now,
            now,
            next_due: None,
            model: Model::default(),
            obs: Observer::default(),
            known_ids: Vec::new(),
            last_change: now,
            cleared_at: HashMap::new(),
            trace: Vec::new(),
            closing_how: HashMap::new(),
            acked: HashMap::new(),
            sims: BTreeMap::new(),
        }
    }

    fn conn(&self, slot: usize) -> ConnId {
        ConnId::new(slot as u32, self.generation[slot])
    }

    /// A connection that carries no client and is not closing: a free slot's, or a new one.
    fn fresh_conn(&mut self) -> ConnId {
        let free = (0..self.generation.len())
            .map(|slot| self.conn(slot))
            .find(|c| !self.model.registered(*c) && !self.out.closing.contains(c));
        if let Some(conn) = free {
            return conn;
        }
        if self.generation.len() < MAX_SLOTS {
            self.generation.push(0);
            return self.conn(self.generation.len() - 1);
        }
        self.conn(0)
    }

    fn take_sent(&mut self) -> Vec<Sent> {
        let sent = std::mem::take(&mut self.out.sent);
        for message in &sent {
            let gone = if message.queued { "" } else { " (gone)" };
            let entry =
                format!("      -> {}{gone} {}", show(message.to), String::from_utf8_lossy(&message.text));
            self.trace.push(entry);
        }
        sent
    }

    fn trace_away(&mut self, expected: &[Out]) {
        for out in expected.iter().filter(|o| o.away) {
            self.trace.push(format!(
                "      => {} (away: held, or refused past the cap) {}",
                show(out.to),
                out.text
            ));
        }
    }

    fn observe(&mut self, cause: Cause, sent: &[Sent]) -> Result<(), String> {
        let generation = self.generation.clone();
        let live = move |conn: ConnId| generation.get(conn.index()) == Some(&conn.generation());
        let departed: BTreeSet<String> = self
            .obs
            .state
            .clients
            .iter()
            .map(|(_, sid)| sid)
            .filter(|sid| !self.core.is_registered(None, sid))
            .cloned()
            .collect();
        self.obs.step(cause, sent, &live, &departed)
    }

    fn failure(&self, step: usize, op: &Op, error: &str) -> String {
        let recent = self.trace[self.trace.len().saturating_sub(60)..].join("\n");
        format!("step {step} ({op:?}): {error}\n  recent steps and what they sent:\n{recent}")
    }

    /// The id a relay names: (raw JSON or None for missing, normalised or None for 9003).
    fn session_id(&self, me: ConnId, pick: IdPick) -> (Option<String>, Option<String>) {
        let own = self
            .model
            .state
            .session_of
            .get(&me)
            .or(self.known_ids.last())
            .cloned()
            .unwrap_or_else(|| hex(KEYS[0]));
        let text = |id: String| (Some(js(&id)), Some(id));
        match pick {
            IdPick::Own { padded: false } => text(own),
            IdPick::Own { padded: true } => (Some(js(&format!(" {own}\t"))), Some(own)),
            IdPick::Known(i) if !self.known_ids.is_empty() => {
                text(self.known_ids[i % self.known_ids.len()].clone())
            }
            IdPick::Known(i) | IdPick::Key(i) => text(hex(KEYS[i % KEYS.len()])),
            IdPick::Number(i) => {
                let (raw, normal) = [
                    ("1e15", "1000000000000000"),
                    ("1000000000000000.0", "1000000000000000"),
                    ("1234567890123456", "1234567890123456"),
                    ("0", "0"),
                    ("1e16", "10000000000000000"),
                    ("-1234567890123456", "-1234567890123456"),
                ][i % 6];
                (Some(raw.to_owned()), Some(normal.to_owned()))
            }
            IdPick::Bad(i) => match i % 12 {
                0 => (None, None),
                1 => (Some(r#""""#.into()), None),
                2 => (Some(r#""   ""#.into()), None),
                3 => (Some("null".into()), None),
                4 => (Some("true".into()), None),
                5 => (Some(r#"{"id":"x"}"#.into()), None),
                6 => (Some(js(&"0".repeat(65))), None),
                7 => text("zz".into()),
                8 => text(hex(KEYS[4]).to_uppercase()),
                9 => text(format!("{own}0")),
                10 => text(own.to_uppercase()),
                _ => text(format!("0x{}", own.get(2..).unwrap_or_default())),
            },
        }
    }

    /// An id field: (raw JSON or None for missing, normalised or None for 9003).
    fn spell(&self, me: ConnId, spelling: Spelling, for_sid: bool) -> (Option<String>, Option<String>) {
        let (name, form) = match spelling {
            Spelling::Other(which) => return other_id(which, for_sid),
            Spelling::Name { name, form } => (name, form),
            Spelling::SidOf { nth, form } | Spelling::Peer { nth, form } | Spelling::Away { nth, form } => {
                let peer = matches!(spelling, Spelling::Peer { .. });
                let away = matches!(spelling, Spelling::Away { .. });
                let state = &self.model.state;
                let candidates: Vec<&String> = state
                    .clients
                    .iter()
                    .filter(|(c, _)| !peer || (*c != me && !state.calling(*c)))
                    .filter(|(c, _)| !away || state.away.contains(c))
                    .map(|(_, sid)| sid)
                    .collect();
                if candidates.is_empty() {
                    (nth, form)
                } else {
                    let sid = candidates[nth % candidates.len()];
                    return (Some(spell_sid(sid, form)), Some(sid.clone()));
                }
            }
        };
        let (sid, forms) = NAMES[name % NAMES.len()];
        (Some(forms[form % forms.len()].to_owned()), Some(sid.to_owned()))
    }

    /// The sId a `resume` names: (raw JSON or None for missing, normalised or None for 9003).
    fn resume_target(&self, on: ConnId, target: Target) -> (Option<String>, Option<String>) {
        let state = &self.model.state;
        let keys = |filter: &BTreeSet<ConnId>| -> Vec<ConnId> {
            state.clients.iter().map(|(c, _)| *c).filter(|c| filter.contains(c)).collect()
        };
        let (away, resumable) = (keys(&state.away), keys(&state.resumable));
        let pick = match target {
            Target::Away(n) if !away.is_empty() => Some((away[n % away.len()], n)),
            Target::Away(n) | Target::Resumable(n) if !resumable.is_empty() => {
                Some((resumable[n % resumable.len()], n))
            }
            _ => None,
        };
        if let Some((key, n)) = pick {
            let sid = state.sid(key).unwrap_or_default().to_owned();
            return (Some(spell_sid(&sid, n / 3)), Some(sid));
        }
        let spelling = match target {
            Target::Spelled(spelling) => spelling,
            Target::Away(n) | Target::Resumable(n) => Spelling::Name { name: n, form: 0 },
        };
        // Control characters are 9003 only where an sId is registered: here they name nobody.
        self.spell(on, spelling, false)
    }

    /// The `resumeToken` a `resume` for the client `key` carries.
    fn token(&self, pick: TokenPick, key: Option<ConnId>) -> (Option<String>, Option<String>) {
        let log = key.and_then(|key| self.model.logs.get(&key));
        let right = log.map_or_else(|| "A".repeat(22), |log| log.token.clone());
        let flip = |token: &str| {
            let mut flipped = token[..token.len() - 1].to_owned();
            flipped.push(if token.ends_with('A') { 'B' } else { 'A' });
            flipped
        };
        let text = |token: String| (Some(js(&token)), Some(token));
        match pick {
            TokenPick::Right => text(right),
            TokenPick::Spent => {
                text(log.and_then(|log| log.spent.last().cloned()).unwrap_or_else(|| flip(&right)))
            }
            TokenPick::Other(i) => {
                let others: Vec<&String> = self
                    .model
                    .logs
                    .iter()
                    .filter(|(k, _)| Some(**k) != key)
                    .map(|(_, log)| &log.token)
                    .collect();
                if others.is_empty() { text(flip(&right)) } else { text(others[i % others.len()].clone()) }
            }
            TokenPick::Mangled(i) => match i % 10 {
                0 => text(flip(&right)),
                1 => text(right[..right.len() - 1].to_owned()),
                2 => text(format!("{right}x")),
                // Trimmed like every top-level string: the right token.
                3 => (Some(js(&format!(" {right}\t"))), Some(right)),
                4 => text("A".repeat(22)),
                5 => (Some("5".into()), Some("5".into())),
                6 => (Some(r#""""#.into()), None),
                7 => (None, None),
                8 => (Some("null".into()), None),
                _ => text(right.to_uppercase()),
            },
        }
    }

    /// A pong's count on `conn`, less what its client's registration or resume reply
    /// followed: how many of the client's own messages it proves read.
    fn acked_rel(&self, key: ConnId) -> u64 {
        let base = self.model.logs.get(&key).map_or(0, |log| log.base);
        self.acked.get(&key).copied().unwrap_or_default().saturating_sub(base)
    }

    /// `me` sends the command `op` stands for; checks what the core sends back.
    fn command(&mut self, me: ConnId, op: &Op) -> Result<(), String> {
        let (raw, cmd) = self.message(me, op).ok_or("not a command")?;
        self.send(me, raw, cmd, None)
    }

    fn send(&mut self, me: ConnId, raw: Vec<u8>, cmd: Cmd, resume: Option<ResumeCtx>) -> Result<(), String> {
        self.trace.push(format!("      {} sends {}", show(me), String::from_utf8_lossy(&raw)));
        let drawn = self.draws.borrow().len();
        let queued_before = self.out.messages_queued(me);
        let closing = self.out.closing.clone();
        self.core.handle_message(me, &raw, self.now, &mut self.out);
        let sent = self.take_sent();
        let draws = self.draws.borrow()[drawn..].to_vec();
        let pred = predict(&self.model, &closing, self.policy, me, &cmd, &draws)?;
        self.trace_away(&pred.out);
        self.observe(Cause::Command { from: me }, &merge(&sent, &pred.out))?;
        self.compare(&sent, &pred.out)?;
        let (fresh_log, resumed) = (pred.fresh_log, pred.resumed.clone());
        if pred.refusal == Some("resume refused: what it needs is no longer kept")
            && resume.as_ref().is_some_and(|ctx| ctx.honest)
        {
            tally("resume refused: an honest count, but what it needs is no longer kept");
        }
        self.model = pred.m;
        for id in self.model.state.sessions.keys() {
            if !self.known_ids.contains(id) {
                self.known_ids.push(id.clone());
            }
        }
        let mut skip = None;
        if fresh_log {
            let at = sent
                .iter()
                .position(|m| m.to == me && token_of(&m.text).is_some())
                .ok_or("no reply with a token")?;
            skip = Some((me, at));
            let token = token_of(&sent[at].text).unwrap_or_default().to_owned();
            // Gone at once if its replay did not fit (the connection it resumed on is closing).
            if let Some(log) = self.model.logs.get_mut(&me) {
                log.token = token;
                log.base = queued_before + u64::from(sent[at].queued);
                self.sims.insert(me, Sim::default());
            }
        }
        if let Some(resumed) = resumed {
            let ctx = resume.ok_or("a resume without its context")?;
            self.resumed(me, &resumed, &ctx, &sent, skip.map_or(0, |(_, at)| at))?;
        }
        self.sync_sims();
        self.feed(&sent, skip)
    }

    /// A resume succeeded: the client's connections so far, and what it gets now.
    fn resumed(
        &mut self,
        me: ConnId,
        resumed: &Resumed,
        ctx: &ResumeCtx,
        sent: &[Sent],
        reply_at: usize,
    ) -> Result<(), String> {
        let mut sim = self.sims.remove(&resumed.old).ok_or("a resumable client without a simulation")?;
        if resumed.attached {
            if !self.out.closing.contains(&resumed.old) {
                return Err(format!("a takeover, but {} was not closed", show(resumed.old)));
            }
            self.trace.push(format!("      the taken-over {} closes with 4001", show(resumed.old)));
            self.closing_how.insert(resumed.old, (ctx.old_lost, 0));
            sim.cut(ctx.takeover_arrived.ok_or("a takeover without a count")?);
        }
        let Some(log) = self.model.logs.get(&me) else { return Ok(()) };
        // The replay starts where the client's messages end and goes on to the last one.
        let replayed: Vec<usize> = resumed.replay.iter().map(|(at, _)| *at).collect();
        if replayed != (resumed.claimed..log.produced.len()).collect::<Vec<_>>() {
            return Err(format!(
                "the model replays {replayed:?} of {} produced after {}",
                log.produced.len(),
                resumed.claimed
            ));
        }
        if ctx.honest && ctx.lost_in_flight {
            tally("resumed: an honest count after messages were lost in flight");
        }
        if ctx.honest {
            if sim.had.len() != resumed.claimed {
                return Err(format!(
                    "the client received {} messages and counted honestly, the server takes it to have {}",
                    sim.had.len(),
                    resumed.claimed
                ));
            }
        } else {
            // A count it made up: from now on it has what the server takes it to have.
            tally("resumed: a made-up count");
            sim.had = log.produced[..resumed.claimed]
                .iter()
                .map(|t| parse(t.as_bytes()))
                .collect::<Result<_, _>>()?;
            sim.checked = 0;
        }
        sim.on_conn.clear();
        sim.count = None;
        sim.lost_in_flight = false;
        self.sims.insert(me, sim);
        // What was held while away stays within the cap, on the wire too.
        let replay: Vec<&Sent> =
            sent.iter().enumerate().filter(|(at, m)| *at > reply_at && m.to == me).map(|(_, m)| m).collect();
        let cap = self.policy.map_or(0, |p| p.max_held);
        if replay.len() == resumed.replay.len() {
            let held: usize = replay
                .iter()
                .zip(&resumed.replay)
                .filter(|(_, (_, held))| *held)
                .map(|(m, _)| m.text.len())
                .sum();
            if held > cap {
                return Err(format!("the replay held {held} bytes, past the cap of {cap}"));
            }
        }
        Ok(())
    }

    fn sync_sims(&mut self) {
        let logs = &self.model.logs;
        self.sims.retain(|key, _| logs.contains_key(key));
    }

    /// The simulated clients read what their connections were sent.
    fn feed(&mut self, sent: &[Sent], skip: Option<(ConnId, usize)>) -> Result<(), String> {
        for (at, message) in sent.iter().enumerate() {
            if !message.queued || skip.is_some_and(|(to, upto)| to == message.to && at <= upto) {
                continue;
            }
            if let Some(sim) = self.sims.get_mut(&message.to) {
                sim.on_conn.push(if message.list { None } else { Some(parse(&message.text)?) });
            }
        }
        Ok(())
    }

    /// Every resumable client received what was produced for it exactly once, in order:
    /// all of it while its connection is open, a prefix while it is away or closing.
    fn check_sims(&mut self) -> Result<(), String> {
        for (key, sim) in &mut self.sims {
            let log = self.model.logs.get(key).ok_or("a simulation without a log")?;
            let sid = self.model.state.sid(*key).unwrap_or_default();
            let len = sim.len();
            if len > log.produced.len() {
                return Err(format!(
                    "{sid:?} received {len} messages, but only {} were produced for it (a duplicate)",
                    log.produced.len()
                ));
            }
            let received = sim.had.iter().chain(sim.on_conn.iter().flatten());
            for (at, (got, want)) in received.zip(&log.produced).enumerate().skip(sim.checked) {
                if *got != parse(want.as_bytes())? {
                    return Err(format!(
                        "{sid:?}'s message #{at} is {got}, but the core produced {want} there (a gap or a duplicate)"
                    ));
                }
            }
            sim.checked = len;
            let open = !self.model.state.away.contains(key) && !self.out.closing.contains(key);
            if open && len != log.produced.len() {
                return Err(format!(
                    "{sid:?} is attached and received {len} of the {} messages produced for it (a gap)",
                    log.produced.len()
                ));
            }
        }
        Ok(())
    }

    /// `resume` from `on`.
    fn resume(
        &mut self,
        on: ConnId,
        raw_sid: Option<String>,
        sid: Option<String>,
        claim: Claim,
        keep: u8,
        old_lost: bool,
    ) -> Result<(), String> {
        let key = sid.as_deref().and_then(|sid| self.model.state.find(sid));
        let (mut honest, mut takeover_arrived, mut lost_in_flight) = (0, None, false);
        if let Some(key) = key
            && let Some(sim) = self.sims.get(&key)
        {
            if self.model.state.away.contains(&key) {
                honest = sim.count.unwrap_or_default();
                lost_in_flight = sim.lost_in_flight;
            } else {
                honest = sim.arrived(self.acked_rel(key), keep);
                takeover_arrived = Some(honest);
                lost_in_flight = honest < sim.on_conn.len() as u64;
            }
        }
        let (raw_count, count) = spell_count(claim.count, honest);
        let (raw_token, token) = self.token(claim.token, key);
        let mut pairs = vec![("cmd", r#""resume""#.to_owned())];
        for (field, raw) in [("sId", raw_sid), ("resumeToken", raw_token), ("received", raw_count)] {
            if let Some(raw) = raw {
                pairs.push((field, raw));
            }
        }
        let raw = object(&pairs, claim.layout).into_bytes();
        let ctx = ResumeCtx { takeover_arrived, honest: count == Some(honest), old_lost, lost_in_flight };
        self.send(on, raw, Cmd::Resume { sid, token, received: count }, Some(ctx))
    }

    /// A pong on `conn`.
    fn ack(&mut self, conn: ConnId, part: u8) -> Result<(), String> {
        let queued = self.out.messages_queued(conn);
        let acked = self.acked.get(&conn).copied().unwrap_or_default();
        if queued <= acked {
            return Ok(());
        }
        let count = acked + 1 + (queued - acked - 1) * u64::from(part) / 255;
        self.trace.push(format!("      a pong on {} confirms {count} of {queued} messages", show(conn)));
        self.core.acknowledge(conn, count);
        self.acked.insert(conn, count);
        if !self.model.state.away.contains(&conn)
            && let Some(log) = self.model.logs.get_mut(&conn)
        {
            log.acknowledge(count.saturating_sub(log.base));
        }
        if !self.take_sent().is_empty() {
            return Err("an acknowledgement sent messages".into());
        }
        Ok(())
    }

    /// The raw message for a command op, and what the model makes of it.
    fn message(&self, me: ConnId, op: &Op) -> Option<(Vec<u8>, Cmd)> {
        let with = |mut pairs: Vec<(&'static str, String)>, key: &'static str, raw: Option<String>| {
            if let Some(raw) = raw {
                pairs.push((key, raw));
            }
            pairs
        };
        Some(match *op {
            Op::Register { sid, layout, resume, .. } => {
                let (raw, sid) = self.spell(me, sid, true);
                let mut pairs = with(vec![("cmd", r#""sId""#.to_owned())], "sId", raw);
                let (field, opt) = RESUME_FIELD[resume % RESUME_FIELD.len()];
                pairs = with(pairs, "resume", field.map(str::to_owned));
                if layout == 1 {
                    pairs.extend([("x", "[1]".to_owned()), ("opponentId", r#""zz""#.to_owned())]);
                }
                (object(&pairs, layout).into_bytes(), Cmd::Register { sid, resume: opt })
            }
            Op::Session { opponent, layout, .. } => {
                let (raw, opponent) = self.spell(me, opponent, false);
                let pairs = with(vec![("cmd", r#""session""#.to_owned())], "opponentId", raw);
                (object(&pairs, layout).into_bytes(), Cmd::Session { opponent })
            }
            Op::Relay { action, id, payload, layout, extras, .. } => {
                let (raw, id) = self.session_id(me, id);
                let payload = PAYLOADS[payload % PAYLOADS.len()];
                let mut pairs = with(vec![("cmd", format!("\"{}\"", action.cmd()))], "sessionId", raw);
                if let Some(field) = action.payload_field() {
                    pairs.push((field, payload.to_owned()));
                }
                if extras {
                    pairs.extend([("opponentId", r#""mallory""#.to_owned()), ("state", "4".to_owned())]);
                    for field in ["offer", "answer", "icecandidate"] {
                        if action.payload_field() != Some(field) {
                            pairs.push((field, r#"{"x":[1,"}"]}"#.to_owned()));
                        }
                    }
                }
                (object(&pairs, layout).into_bytes(), Cmd::Relay { action, id, payload })
            }
            Op::Notify { opponent, notify_type: which, data, layout, .. } => {
                let (raw, opponent) = self.spell(me, opponent, false);
                let (raw_type, notify_type) = self::notify_type(which);
                let data = data.map(|d| PAYLOADS[d % PAYLOADS.len()]);
                let mut pairs = with(vec![("cmd", r#""notify""#.to_owned())], "opponentId", raw);
                pairs = with(pairs, "type", raw_type);
                pairs = with(pairs, "data", data.map(str::to_owned));
                (object(&pairs, layout).into_bytes(), Cmd::Notify { opponent, notify_type, data })
            }
            Op::Garbage { which, .. } => {
                let (raw, unregistered, registered) = GARBAGE[which % GARBAGE.len()];
                (raw.to_vec(), Cmd::Fixed { unregistered, registered })
            }
            Op::Bytes { ref bytes, .. } => {
                // The alphabet has no `c`, `m`, `d`: JSON or not, no such message names a command.
                let code = if parse(bytes).is_ok() { 9001 } else { 9000 };
                (bytes.clone(), Cmd::Fixed { unregistered: code, registered: code })
            }
            _ => return None,
        })
    }

    fn step(&mut self, step: usize, op: &Op) -> Result<(), String> {
        let op = op.clone().with_slots(self.generation.len());
        self.trace.push(format!("  {step:3}: {op:?}"));
        let pre = self.model.state.clone();
        match op {
            Op::Relay { slot, from_calling: true, .. } if !self.model.state.attached_in(true).is_empty() => {
                let calling = self.model.state.attached_in(true);
                self.command(calling[slot % calling.len()], &op)?;
            }
            Op::Session { slot, from_wait: true, .. } if !self.model.state.attached_in(false).is_empty() => {
                let waiting = self.model.state.attached_in(false);
                self.command(waiting[slot % waiting.len()], &op)?;
            }
            Op::Notify { slot, repeat, .. } => {
                for _ in 0..=repeat % 3 {
                    self.command(self.conn(slot), &op)?;
                }
            }
            Op::Register { slot, .. }
            | Op::Session { slot, .. }
            | Op::Relay { slot, .. }
            | Op::Garbage { slot, .. }
            | Op::Bytes { slot, .. } => self.command(self.conn(slot), &op)?,
            Op::Disconnect { slot, rejoin } => {
                self.disconnect(slot)?;
                if let Some((sid, resume)) = rejoin {
                    let register = Op::Register { slot, sid, layout: 0, resume };
                    self.trace.push(format!("      rejoins: {register:?}"));
                    self.command(self.conn(slot), &register)?;
                }
            }
            Op::Lose { slot, resumable, keep, then } => {
                let attached = self.model.state.attached_resumable();
                let slot = if resumable && !attached.is_empty() {
                    attached[slot % attached.len()].index()
                } else {
                    slot
                };
                let sid = self.model.state.sid(self.conn(slot)).map(str::to_owned);
                self.lose(slot, keep)?;
                if let (Some(claim), Some(sid)) = (then, sid) {
                    self.trace.push(format!("      resumes at once: {claim:?}"));
                    self.resume(self.conn(slot), Some(spell_sid(&sid, 0)), Some(sid), claim, 0, false)?;
                }
            }
            Op::Resume { on, target, claim, keep, old_lost } => {
                let on = match on {
                    Some(slot) => self.conn(slot),
                    None => self.fresh_conn(),
                };
                let (raw_sid, sid) = self.resume_target(on, target);
                self.resume(on, raw_sid, sid, claim, keep, old_lost)?;
            }
            Op::Ack { slot, resumable, part } => {
                let attached = self.model.state.attached_resumable();
                let conn = if resumable && !attached.is_empty() {
                    attached[slot % attached.len()]
                } else {
                    self.conn(slot)
                };
                self.ack(conn, part)?;
            }
            Op::StaleDisconnect { slot, which } => {
                let generation = self.generation[slot];
                let id = match which {
                    0 if generation > 0 => ConnId::new(slot as u32, generation - 1),
                    0 | 1 => ConnId::new(slot as u32, generation + 1),
                    _ => ConnId::new(1000 + slot as u32, 0),
                };
                self.core.disconnect(id, self.now, &mut self.out);
                self.core.connection_lost(id, self.now, &mut self.out);
                self.core.acknowledge(id, u64::MAX);
                if !self.take_sent().is_empty() {
                    return Err(format!("ending {}, which is not connected, sent messages", show(id)));
                }
            }
            Op::MarkClosing { slot, lost, keep } => {
                let conn = self.conn(slot);
                self.out.closing.insert(conn);
                self.closing_how.insert(conn, (lost, keep));
            }
            Op::ToggleUnsent { slot } => {
                let conn = self.conn(slot);
                if !self.out.unsent.remove(&conn) {
                    self.out.unsent.insert(conn);
                } else {
                    self.cleared_at.insert(conn, self.now);
                }
            }
            Op::Poll => self.poll_once()?,
            Op::Advance { ms: by } => {
                // The transport reports the connections it closed on its next loop turn.
                let mut closing: Vec<ConnId> = self.out.closing.iter().copied().collect();
                closing.sort_unstable();
                for gone in closing {
                    let (lost, keep) = self.closing_how.get(&gone).copied().unwrap_or((false, 0));
                    let how = if lost { "lost" } else { "closed" };
                    self.trace.push(format!("      the closing {} is {how}", show(gone)));
                    if lost {
                        self.lose(gone.index(), keep)?;
                    } else {
                        self.disconnect(gone.index())?;
                    }
                }
                self.advance(ms(u64::from(by)))?;
            }
        }
        // The client list changes on every registration, departure and client state change.
        if self.model.state.list_changes() != pre.list_changes() {
            self.last_change = self.now;
        }
        self.check_core()?;
        self.check_list_bound()?;
        self.check_sims()
    }

    /// The slot's connection ended; the slot comes back as a new connection.
    fn end_conn(&mut self, slot: usize, gone: ConnId) {
        self.generation[slot] += 1;
        self.out.closing.remove(&gone);
        self.out.unsent.remove(&gone);
        self.closing_how.remove(&gone);
    }

    /// The connection in `slot` closed (`disconnect`).
    fn disconnect(&mut self, slot: usize) -> Result<(), String> {
        let gone = self.conn(slot);
        let closing = self.out.closing.clone();
        self.core.disconnect(gone, self.now, &mut self.out);
        let sent = self.take_sent();
        let pred = predict_disconnect(&self.model, &closing, self.policy, gone);
        self.trace_away(&pred.out);
        self.observe(Cause::Disconnect { gone }, &merge(&sent, &pred.out))?;
        self.compare(&sent, &pred.out)?;
        self.model = pred.m;
        self.end_conn(slot, gone);
        self.sync_sims();
        self.feed(&sent, None)
    }

    /// The connection in `slot` was lost (`connection_lost`); `keep` as for `Op::Lose`.
    fn lose(&mut self, slot: usize, keep: u8) -> Result<(), String> {
        let gone = self.conn(slot);
        let acked = self.acked_rel(gone);
        if let Some(sim) = self.sims.get_mut(&gone) {
            let arrived = sim.arrived(acked, keep);
            self.trace.push(format!("      {arrived} of the {} messages on it arrived", sim.on_conn.len()));
            sim.lost_in_flight = arrived < sim.on_conn.len() as u64;
            sim.cut(arrived);
            sim.count = Some(arrived);
        }
        let closing = self.out.closing.clone();
        self.core.connection_lost(gone, self.now, &mut self.out);
        let sent = self.take_sent();
        let pred = predict_lost(&self.model, &closing, self.policy, gone, self.now);
        self.trace_away(&pred.out);
        self.observe(Cause::Lost { gone }, &merge(&sent, &pred.out))?;
        self.compare(&sent, &pred.out)?;
        self.model = pred.m;
        self.end_conn(slot, gone);
        self.sync_sims();
        self.feed(&sent, None)
    }

    fn compare(&self, sent: &[Sent], expected: &[Out]) -> Result<(), String> {
        let actual: Vec<(ConnId, Vec<u8>)> = sent
            .iter()
            .filter(|m| !m.list)
            .map(|m| Ok((m.to, mask_token(&m.text)?)))
            .collect::<Result<_, String>>()?;
        let wanted: Vec<(ConnId, Vec<u8>)> =
            expected.iter().filter(|o| !o.away).map(|o| (o.to, o.text.clone().into_bytes())).collect();
        let fail = |what: &str| {
            let wanted: Vec<String> = expected
                .iter()
                .map(|o| format!("{}{} {}", show(o.to), if o.away { " (away)" } else { "" }, o.text))
                .collect();
            Err(format!(
                "the core's messages differ from PROTOCOL.md's{what}; expected:\n        {}",
                wanted.join("\n        ")
            ))
        };
        if per_recipient(actual.iter().cloned())? != per_recipient(wanted.iter().cloned())? {
            return fail("");
        }
        // Byte for byte too: held output counts against the cap by its JSON bytes, so the
        // model's sizes must be the core's.
        let by_recipient = |messages: &[(ConnId, Vec<u8>)]| {
            let mut map: BTreeMap<ConnId, Vec<Vec<u8>>> = BTreeMap::new();
            for (to, text) in messages {
                map.entry(*to).or_default().push(text.clone());
            }
            map
        };
        if by_recipient(&actual) != by_recipient(&wanted) {
            return fail(" in their bytes (the model's sizes are wrong)");
        }
        Ok(())
    }

    fn poll_once(&mut self) -> Result<(), String> {
        self.trace.push(format!("      poll at +{:?}", self.now - self.start));
        let pred = predict_poll(&self.model, &self.out.closing, self.policy, self.now);
        self.next_due = self.core.poll(self.now, &mut self.out);
        let sent = self.take_sent();
        self.trace_away(&pred.out);
        self.observe(Cause::Poll, &merge(&sent, &pred.out))?;
        self.compare(&sent, &pred.out)?;
        self.model = pred.m;
        // A resumable client counts its lists too (they come after the graces' messages).
        for message in sent.iter().filter(|m| m.list && m.queued) {
            if let Some(log) = self.model.logs.get_mut(&message.to) {
                log.give_list();
            }
        }
        self.sync_sims();
        self.feed(&sent, None)?;
        if self.core.next_deadline() != self.next_due {
            return Err(format!(
                "poll returned {:?}, next_deadline says {:?}",
                self.next_due,
                self.core.next_deadline()
            ));
        }
        if let Some(end) = self.model.first_grace_end(self.policy)
            && self.next_due.is_none_or(|due| due > end)
        {
            return Err(format!(
                "a grace ends at +{:?}, the core asks to be polled at {:?}",
                end - self.start,
                self.next_due.map(|d| d - self.start)
            ));
        }
        Ok(())
    }

    /// Lets `by` pass, polling at every time the core asked for (and at once while a round
    /// is under way), then polls until the core asks for a later time.
    fn advance(&mut self, by: Duration) -> Result<(), String> {
        let until = self.now + by;
        self.poll_once()?;
        for _ in 0..10_000 {
            match self.next_due {
                Some(due) if due <= until => {
                    self.now = self.now.max(due);
                    self.poll_once()?;
                }
                _ => {
                    self.now = until;
                    for _ in 0..10_000 {
                        self.poll_once()?;
                        if self.next_due.is_none_or(|due| due > self.now) {
                            return Ok(());
                        }
                    }
                    return Err("a client-list round never ended".into());
                }
            }
        }
        Err("poll keeps asking to be called".into())
    }

    /// The model, the messages and the core agree, and the state is consistent.
    fn check_core(&self) -> Result<(), String> {
        self.core.check_invariants().map_err(|e| format!("check_invariants: {e}"))?;
        self.model.check(self.policy).map_err(|e| format!("the model: {e}"))?;
        self.obs.state.check().map_err(|e| format!("the state the messages imply: {e}"))?;
        if self.obs.state != self.model.state {
            return Err(format!(
                "the messages imply {:?}\n  the model has {:?}",
                self.obs.state, self.model.state
            ));
        }
        let state = &self.model.state;
        let stats = self.core.stats();
        let in_state = |n| state.sessions.values().filter(|s| s.state == n).count();
        let want = (
            state.clients.len(),
            state.away.len(),
            state.sessions.len(),
            in_state(1),
            in_state(2),
            in_state(3),
        );
        let have = (
            stats.registered,
            stats.away,
            stats.sessions,
            stats.sessions_new,
            stats.sessions_pending,
            stats.sessions_active,
        );
        if have != want {
            return Err(format!(
                "stats (registered, away, sessions, new, pending, active) {have:?}, want {want:?}"
            ));
        }
        for slot in 0..self.generation.len() {
            for generation in 0..=self.generation[slot] + 1 {
                let conn = ConnId::new(slot as u32, generation);
                let want = if generation == self.generation[slot] { state.sid(conn) } else { None };
                if self.core.sid_of(conn) != want {
                    return Err(format!(
                        "sid_of({}) is {:?}, want {want:?}",
                        show(conn),
                        self.core.sid_of(conn)
                    ));
                }
            }
        }
        if let Some((_, sid)) = state.clients.iter().find(|(_, sid)| !self.core.is_registered(None, sid)) {
            return Err(format!("{sid:?} is not registered in the core"));
        }
        let errors: u64 = self.core.counters().errors.iter().sum();
        if errors != self.obs.errors {
            return Err(format!("the core counted {errors} errors, {} were sent", self.obs.errors));
        }
        let counters = self.core.counters();
        let have = Counters {
            resumes: counters.resumes,
            refused: counters.resumes_refused,
            expired: counters.graces_expired,
            over_limit: counters.held_over_limit,
        };
        if have != self.model.counters {
            return Err(format!("the core counted {have:?}, the model {:?}", self.model.counters));
        }
        Ok(())
    }

    /// Every attached WAIT client that can take a list holds the current one 250 ms after
    /// the last change (or after its previous list finally went out).
    fn check_list_bound(&self) -> Result<(), String> {
        let state = &self.model.state;
        let view = state.view();
        for (conn, _) in &state.clients {
            if state.calling(*conn)
                || state.away.contains(conn)
                || self.out.closing.contains(conn)
                || self.out.unsent.contains(conn)
            {
                continue;
            }
            let since = self.cleared_at.get(conn).map_or(self.last_change, |&c| c.max(self.last_change));
            if self.now >= since + ms(250) && self.obs.last_list.get(conn) != Some(&view) {
                return Err(format!(
                    "{} has {:?} {:?} after the last change, not the current list {view:?}",
                    show(*conn),
                    self.obs.last_list.get(conn),
                    self.now - since
                ));
            }
        }
        Ok(())
    }

    /// After the sequence: quiet, every list deliverable, every grace over. Everyone in WAIT
    /// gets the final list and the core stops asking to be polled.
    fn settle(&mut self) -> Result<(), String> {
        for conn in std::mem::take(&mut self.out.unsent) {
            self.cleared_at.insert(conn, self.now);
        }
        self.trace.push("  settle: every list deliverable, 400 ms of quiet".into());
        self.advance(ms(400))?;
        // Also the graces of clients that came back or went meanwhile: the core may still
        // ask to be polled when those end (a wake-up that finds nothing to do).
        if let Some(policy) = self.policy {
            self.trace.push("  settle: every grace runs out, then 400 ms of quiet".into());
            self.advance(policy.grace + ms(1))?;
            self.advance(ms(400))?;
        }
        self.check_core()?;
        self.check_list_bound()?;
        self.check_sims()?;
        if !self.model.state.away.is_empty() {
            return Err(format!("clients still away after their grace: {:?}", self.model.state.away));
        }
        if let Some(due) = self.next_due {
            return Err(format!("still owing lists after 400 ms of quiet (due {due:?})"));
        }
        Ok(())
    }
}

fn run_case(case: &Case) -> Result<(), String> {
    let mut run = Run::new(case);
    for (step, op) in case.ops.iter().enumerate() {
        run.step(step, op).map_err(|e| run.failure(step, op, &e))?;
    }
    run.settle().map_err(|e| run.failure(case.ops.len(), &Op::Advance { ms: 400 }, &e))
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256);
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        // Failures are printed, shrunk; no regression files are written into the tree.
        failure_persistence: None,
        // The same cases on every run (PROPTEST_RNG_SEED chooses others).
        rng_seed: match std::env::var("PROPTEST_RNG_SEED").ok().and_then(|s| s.parse().ok()) {
            Some(seed) => RngSeed::Fixed(seed),
            None => RngSeed::Fixed(0x5e55_1011),
        },
        ..ProptestConfig::default()
    }
}

#[test]
fn every_sequence_keeps_the_protocol() {
    let config = config();
    let full = config.cases >= 256;
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(failure) = runner.run(&case(), |case| run_case(&case).map_err(TestCaseError::fail)) {
        panic!("{failure}");
    }
    let tally = TALLY.lock().map(|tally| tally.clone()).unwrap_or_default();
    if std::env::var_os("CORE_PROPERTIES_TALLY").is_some() {
        eprintln!("{tally:#?}");
    }
    let missing: Vec<&str> = EXPECTED_EVENTS.into_iter().filter(|e| !tally.contains_key(e)).collect();
    assert!(!full || missing.is_empty(), "never happened in {} cases: {missing:?}", runner.config().cases);
}
