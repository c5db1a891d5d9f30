//! Property-based tests of the sans-IO signaling core, from the outside: only the public API
//! of `signaling_server::signaling` and the messages it sends.
//!
//! proptest generates a small network (2-6 connection slots, a seed for session ids, one of
//! two client-list pacings) and a sequence of operations: registrations under many spellings,
//! sessions, relays on real, stale and garbage session ids, notifies, malformed messages,
//! disconnects (the slot comes back as a new generation), connections marked closing, `clu`
//! back-pressure, and clock advances with `poll_client_list`. After every operation three
//! independent views of the world must agree:
//!
//! * a **model** that predicts, from PROTOCOL.md alone, exactly which messages each
//!   connection receives (compared per recipient, as JSON values) and the next state;
//! * an **observer** that knows nothing but the messages the core sent, checks every rule a
//!   client can see in them (who may receive what, in which order, which `ssu` may follow
//!   which message) and derives from them who is registered and who is in which session;
//! * the **core** itself: `check_invariants`, `stats`, `sid_of`, `counters`.
//!
//! On failure proptest shrinks the sequence and prints it (one operation a line), and the
//! message names the failing step with the recent steps and what each one sent.
//!
//! Complements `src/signaling/tests.rs`: those tests read the core's private state; these
//! derive everything from the wire, use the public API only, shrink, and cover sId spellings
//! (whitespace, escapes, numbers), numeric session ids, relays from and to closing
//! connections, and the server-only commands sent by clients.
//!
//! `PROPTEST_CASES` sets the number of cases (256 by default).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use signaling_server::signaling::{ClientListPacing, ConnId, Delivery, ListDelivery, Outbox, Signaling};
use simd_json::OwnedValue as Json;
use simd_json::prelude::*;

// ---------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------

const MAX_CONNS: usize = 6;

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

/// The error codes of PROTOCOL.md's table.
const ERROR_CODES: [u64; 17] =
    [9000, 9001, 9002, 9003, 9100, 9101, 9102, 9103, 9200, 9201, 9202, 9203, 9204, 9300, 9301, 9401, 9500];

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

/// Nested payloads of every JSON type; each must be relayed JSON-equivalent.
const PAYLOADS: [&str; 10] = [
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
const GARBAGE: [(&[u8], u64, u64); 24] = [
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

#[derive(Clone, Debug)]
enum Op {
    Register {
        slot: usize,
        sid: Spelling,
        layout: u8,
    },
    /// From the connection in `slot`, or with `from_wait` from the `slot`-th registered
    /// client in WAIT while there is one.
    Session {
        slot: usize,
        from_wait: bool,
        opponent: Spelling,
        layout: u8,
    },
    /// From the connection in `slot`, or with `from_calling` from the `slot`-th CALLING
    /// client (counting in registration order) while there is one.
    Relay {
        slot: usize,
        from_calling: bool,
        action: Action,
        id: IdPick,
        payload: usize,
        layout: u8,
        extras: bool,
    },
    Notify {
        slot: usize,
        opponent: Spelling,
        notify_type: usize,
        data: Option<usize>,
        layout: u8,
    },
    Garbage {
        slot: usize,
        which: usize,
    },
    Bytes {
        slot: usize,
        bytes: Vec<u8>,
    },
    /// The connection ends; its slot comes back as the next generation, which registers at
    /// once under `rejoin` if given (as real clients do when they reconnect).
    Disconnect {
        slot: usize,
        rejoin: Option<Spelling>,
    },
    /// `disconnect` for an id that is not connected: an old generation, a future one, or an
    /// index beyond the slots. Nothing may happen.
    StaleDisconnect {
        slot: usize,
        which: u8,
    },
    /// The transport decides to close the connection: sends to it answer `Closing` until
    /// the next `Advance`, which reports it to the core with `disconnect`.
    MarkClosing {
        slot: usize,
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
    /// Maps every slot number to one of `conns` slots.
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
            | Op::MarkClosing { slot }
            | Op::ToggleUnsent { slot } => *slot %= conns,
            Op::Poll | Op::Advance { .. } => {}
        }
        self
    }
}

/// Mostly names that are registered (by some other connection, or the sender itself).
fn target() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        4 => (0..MAX_CONNS, 0..5usize).prop_map(|(nth, form)| Spelling::Peer { nth, form }),
        3 => (0..MAX_CONNS, 0..5usize).prop_map(|(nth, form)| Spelling::SidOf { nth, form }),
        2 => (0..NAMES.len(), 0..5usize).prop_map(|(name, form)| Spelling::Name { name, form }),
        1 => (0..12usize).prop_map(Spelling::Other),
    ]
}

/// Mostly free names, sometimes a taken or an invalid one.
fn new_sid() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        6 => (0..NAMES.len(), 0..5usize).prop_map(|(name, form)| Spelling::Name { name, form }),
        1 => (0..MAX_CONNS, 0..5usize).prop_map(|(nth, form)| Spelling::SidOf { nth, form }),
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

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..MAX_CONNS;
    prop_oneof![
        10 => (slot.clone(), new_sid(), 0..3u8)
            .prop_map(|(slot, sid, layout)| Op::Register { slot, sid, layout }),
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
        6 => (slot.clone(), target(), 0..8usize, proptest::option::of(0..PAYLOADS.len()), 0..3u8).prop_map(
            |(slot, opponent, notify_type, data, layout)| Op::Notify { slot, opponent, notify_type, data, layout }
        ),
        5 => (slot.clone(), 0..GARBAGE.len()).prop_map(|(slot, which)| Op::Garbage { slot, which }),
        2 => (slot.clone(), vec(proptest::sample::select(GARBAGE_ALPHABET), 0..20))
            .prop_map(|(slot, bytes)| Op::Bytes { slot, bytes }),
        5 => (slot.clone(), proptest::option::weighted(0.8, new_sid()))
            .prop_map(|(slot, rejoin)| Op::Disconnect { slot, rejoin }),
        2 => (slot.clone(), 0..3u8).prop_map(|(slot, which)| Op::StaleDisconnect { slot, which }),
        1 => slot.clone().prop_map(|slot| Op::MarkClosing { slot }),
        2 => slot.prop_map(|slot| Op::ToggleUnsent { slot }),
        6 => Just(Op::Poll),
        8 => (0..400u16).prop_map(|ms| Op::Advance { ms }),
    ]
}

#[derive(Clone)]
struct Case {
    conns: usize,
    seed: u64,
    /// `bytes_per_poll: 1`: every poll delivers one list, so rounds span many polls.
    split_rounds: bool,
    ops: Vec<Op>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Case {{ conns: {}, seed: {:#x}, split_rounds: {} }}",
            self.conns, self.seed, self.split_rounds
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
        (0..MAX_CONNS, 0..NAMES.len(), 0..5usize).prop_map(|(slot, name, form)| Op::Register {
            slot,
            sid: Spelling::Name { name, form },
            layout: 0,
        }),
        0..=MAX_CONNS,
    );
    // Mostly enough connections for two sessions at once (colliding session ids).
    let conns = prop_oneof![1 => 2..=3usize, 3 => 4..=MAX_CONNS];
    (conns, any::<u64>(), any::<bool>(), prefix, vec(op(), 1..120)).prop_map(
        |(conns, seed, split_rounds, prefix, ops)| Case {
            conns,
            seed,
            split_rounds,
            ops: prefix.into_iter().chain(ops).map(|op| op.with_slots(conns)).collect(),
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

// ---------------------------------------------------------------------------------------
// The outbox
// ---------------------------------------------------------------------------------------

struct Sent {
    to: ConnId,
    text: Vec<u8>,
    /// Handed over by `send_client_list` (not `send`).
    list: bool,
}

/// Records every message the core hands over, also those to closing connections (which the
/// transport would drop): the core's view of what it sent.
#[derive(Default)]
struct Recorder {
    sent: Vec<Sent>,
    closing: HashSet<ConnId>,
    unsent: HashSet<ConnId>,
}

impl Outbox for Recorder {
    fn send(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        self.sent.push(Sent { to, text: message.to_vec(), list: false });
        if self.closing.contains(&to) { Delivery::Gone } else { Delivery::Queued }
    }

    fn send_client_list(&mut self, to: ConnId, list: &Rc<[u8]>) -> ListDelivery {
        if self.unsent.contains(&to) {
            return ListDelivery::Busy;
        }
        self.sent.push(Sent { to, text: list.to_vec(), list: true });
        ListDelivery::Queued
    }

    fn messages_queued(&self, to: ConnId) -> u64 {
        self.sent.iter().filter(|sent| sent.to == to).count() as u64
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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    /// Registered clients in registration order.
    clients: Vec<(ConnId, String)>,
    session_of: BTreeMap<ConnId, String>,
    sessions: BTreeMap<String, Session>,
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

    /// The registered clients that are CALLING (or in WAIT), in registration order.
    fn clients_in(&self, calling: bool) -> Vec<ConnId> {
        self.clients.iter().map(|(c, _)| *c).filter(|c| self.calling(*c) == calling).collect()
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

    /// sIds unique, every CALLING client in exactly one live session of which it is a
    /// member, every live session's two members registered, distinct and CALLING in it.
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
    leave: Option<(String, ConnId)>,
    announcing: Option<Announcement>,
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
    /// state they imply. `live` tells whether a connection is connected now.
    fn step(&mut self, cause: Cause, sent: &[Sent], live: &dyn Fn(ConnId) -> bool) -> Result<(), String> {
        let mut seen = StepSeen::default();
        let gone_session = match cause {
            Cause::Disconnect { gone } => self.state.session_of.get(&gone).cloned(),
            _ => None,
        };
        for (at, message) in sent.iter().enumerate() {
            self.message(cause, message, &mut seen, live).map_err(|e| {
                format!(
                    "message #{at} to {}: {e}: {}",
                    show(message.to),
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
        if seen.session_reply.is_some() || !seen.ssu_new.is_empty() {
            let Cause::Command { from } = cause else {
                return Err("a session opened without a command".into());
            };
            let Some((_, id)) = seen.session_reply.clone() else {
                return Err("ssu 1 without a session reply".into());
            };
            let callees: Vec<ConnId> =
                seen.ssu_new.iter().map(|(to, _)| *to).filter(|to| *to != from).collect();
            let (&[callee], 2) = (callees.as_slice(), seen.ssu_new.len()) else {
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
        }
        // The state change a relay implies has happened, announced.
        if let Some((action, id)) = &seen.relayed
            && !seen.errors.contains(&9401)
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
            if code != 9401 && sent.len() != 1 {
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
            Cause::Disconnect { gone } => {
                if let Some(id) = gone_session
                    && (seen.leave.as_ref().map(|(s, _)| s) != Some(&id)
                        || self.state.sessions.contains_key(&id))
                {
                    return Err(format!(
                        "{} left session {id}: no leave and ssu 4 for its opponent",
                        show(gone)
                    ));
                }
                self.state.clients.retain(|(c, _)| *c != gone);
            }
            _ => {}
        }
        Ok(())
    }

    fn message(
        &mut self,
        cause: Cause,
        message: &Sent,
        seen: &mut StepSeen,
        live: &dyn Fn(ConnId) -> bool,
    ) -> Result<(), String> {
        let to = message.to;
        if !live(to) {
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
                keys_are(&value, &["cmd", "sId"])?;
                let sid = str_field(&value, "sId")?;
                if !from_is_to || self.state.sid(to).is_some() || self.state.find(sid).is_some() {
                    return Err("an sId reply that is not a registration".into());
                }
                if sid.is_empty() || sid.trim() != sid || sid.len() > 64 {
                    return Err("a registered sId that is not normalised".into());
                }
                self.state.clients.push((to, sid.to_owned()));
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
                    if seen.ssu_new.iter().any(|(c, _)| *c == to) || from.is_none() {
                        return Err("ssu 1 twice, or without a command".into());
                    }
                    seen.ssu_new.push((to, id));
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
                let Cause::Disconnect { gone } = cause else {
                    return Err("leave without a departure".into());
                };
                let id = str_field(&value, "sessionId")?;
                let session = self.state.sessions.get(id).ok_or("leave for no live session")?;
                if session.other(gone) != Some(to) || seen.leave.is_some() {
                    return Err("leave to someone who was not the departed client's opponent".into());
                }
                if Some(str_field(&value, "opponentId")?) != self.state.sid(gone) {
                    return Err("opponentId is not the departed client's sId".into());
                }
                seen.leave = Some((id.to_owned(), to));
            }
            "clu" => {
                keys_are(&value, &["cmd", "list"])?;
                if self.state.sid(to).is_none() || self.state.calling(to) {
                    return Err("clu to a client that is not a registered WAIT client".into());
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
                4 if seen.leave.as_ref().is_some_and(|(s, c)| s == id && *c == to) => vec![to],
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

type Expected = (Vec<(ConnId, String)>, State);

fn error(code: u64) -> String {
    format!(r#"{{"cmd":"error","code":{code}}}"#)
}

fn ssu(id: &str, state: u8) -> String {
    format!(r#"{{"cmd":"ssu","sessionId":{},"state":{state}}}"#, js(id))
}

/// The messages a command produces, and the next state. `draws`: the session ids the core
/// drew meanwhile (only a new session draws).
fn predict(
    pre: &State,
    me: ConnId,
    cmd: &Cmd,
    closing: &HashSet<ConnId>,
    draws: &[u64],
) -> Result<Expected, String> {
    let fail = |code| Ok((vec![(me, error(code))], pre.clone()));
    let mut post = pre.clone();
    let my_sid = pre.sid(me);
    if !matches!(cmd, Cmd::Register { .. } | Cmd::Fixed { .. }) && my_sid.is_none() {
        return fail(9100);
    }
    let my_sid = my_sid.unwrap_or_default();
    let mut messages = Vec::new();
    match cmd {
        Cmd::Fixed { unregistered, registered } => {
            return fail(if pre.sid(me).is_some() { *registered } else { *unregistered });
        }
        Cmd::Register { sid } => {
            let Some(sid) = sid else { return fail(9003) };
            if pre.sid(me).is_some() {
                return fail(9101);
            }
            if pre.find(sid).is_some() {
                return fail(9102);
            }
            post.clients.push((me, sid.clone()));
            messages.push((me, format!(r#"{{"cmd":"sId","sId":{}}}"#, js(sid))));
        }
        Cmd::Session { opponent } => {
            let Some(opponent) = opponent else { return fail(9003) };
            if opponent == my_sid {
                return fail(9200);
            }
            let Some(callee) = pre.find(opponent) else { return fail(9201) };
            if pre.calling(me) {
                return fail(9202);
            }
            if pre.calling(callee) {
                return fail(9203);
            }
            // The id is the first draw that names no live session; a colliding draw is drawn again.
            let id = match draws.iter().position(|&key| !pre.sessions.contains_key(&hex(key))) {
                Some(at) if at + 1 == draws.len() => hex(draws[at]),
                _ => {
                    return Err(format!("the session ids drawn, {draws:x?}, are not one draw per collision"));
                }
            };
            post.open(&id, [me, callee]);
            messages.push((me, format!(r#"{{"cmd":"session","sessionId":{}}}"#, js(&id))));
            messages.push((me, ssu(&id, 1)));
            messages.push((callee, ssu(&id, 1)));
        }
        Cmd::Relay { action, id, payload } => {
            let Some(id) = id else { return fail(9003) };
            let Some(session) = pre.sessions.get(id).filter(|s| s.members.contains(&me)) else {
                return fail(9204);
            };
            let opponent = session.other(me).ok_or("unreachable")?;
            let payload =
                action.payload_field().map(|field| format!(",\"{field}\":{payload}")).unwrap_or_default();
            let relayed = format!(
                r#"{{"cmd":"{}","sessionId":{},"opponentId":{}{payload}}}"#,
                action.cmd(),
                js(id),
                js(my_sid)
            );
            messages.push((opponent, relayed));
            let next = match action {
                _ if closing.contains(&opponent) => {
                    messages.push((me, error(9401)));
                    4
                }
                Action::Call => 2,
                Action::Accept => 3,
                Action::IceCandidate => session.state,
                Action::Reject | Action::Stop => 4,
            };
            if next != session.state {
                messages.extend(session.members.map(|member| (member, ssu(id, next))));
            }
            if next == 4 {
                post.close(id);
            } else if let Some(session) = post.sessions.get_mut(id) {
                session.state = next;
            }
        }
        Cmd::Notify { opponent, notify_type, data } => {
            let (Some(opponent), Some(notify_type)) = (opponent, notify_type) else { return fail(9003) };
            if opponent == my_sid {
                return fail(9300);
            }
            let Some(target) = pre.find(opponent) else { return fail(9301) };
            let data = data.map(|d| format!(",\"data\":{d}")).unwrap_or_default();
            messages.push((
                target,
                format!(r#"{{"cmd":"notify","opponentId":{},"type":{}{data}}}"#, js(my_sid), js(notify_type)),
            ));
        }
    }
    Ok((messages, post))
}

/// The leave procedure for `gone`.
fn predict_disconnect(pre: &State, gone: ConnId) -> Expected {
    let mut post = pre.clone();
    let mut messages = Vec::new();
    if let Some(sid) = pre.sid(gone) {
        if let Some(id) = pre.session_of.get(&gone) {
            let opponent = pre.sessions[id].other(gone).unwrap_or(gone);
            messages.push((
                opponent,
                format!(r#"{{"cmd":"leave","sessionId":{},"opponentId":{}}}"#, js(id), js(sid)),
            ));
            messages.push((opponent, ssu(id, 4)));
            post.close(id);
        }
        post.clients.retain(|(c, _)| *c != gone);
    }
    (messages, post)
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

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

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
    conns: usize,
    generation: Vec<u32>,
    start: Instant,
    now: Instant,
    next_due: Option<Instant>,
    model: State,
    obs: Observer,
    /// Every session id the server handed out, in order.
    known_ids: Vec<String>,
    last_change: Instant,
    cleared_at: HashMap<ConnId, Instant>,
    trace: Vec<String>,
}

impl Run {
    fn new(case: &Case) -> Self {
        let draws = Rc::new(RefCell::new(Vec::new()));
        let log = Rc::clone(&draws);
        let seed = case.seed;
        let mut counter = 0u64;
        // Mostly the few KEYS, the two that JSON numbers can name most often (collisions, ids
        // coming back); sometimes a fresh 64-bit value.
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
        let now = Instant::now();
        Run {
            core: Signaling::with_random(pacing, random),
            out: Recorder::default(),
            draws,
            conns: case.conns,
            generation: vec![0; case.conns],
            start: now,
            now,
            next_due: None,
            model: State::default(),
            obs: Observer::default(),
            known_ids: Vec::new(),
            last_change: now,
            cleared_at: HashMap::new(),
            trace: Vec::new(),
        }
    }

    fn conn(&self, slot: usize) -> ConnId {
        ConnId::new(slot as u32, self.generation[slot])
    }

    fn take_sent(&mut self) -> Vec<Sent> {
        let sent = std::mem::take(&mut self.out.sent);
        for message in &sent {
            let entry = format!("      -> {} {}", show(message.to), String::from_utf8_lossy(&message.text));
            self.trace.push(entry);
        }
        sent
    }

    fn observe(&mut self, cause: Cause, sent: &[Sent]) -> Result<(), String> {
        let generation = self.generation.clone();
        let live = move |conn: ConnId| generation.get(conn.index()) == Some(&conn.generation());
        self.obs.step(cause, sent, &live)
    }

    fn failure(&self, step: usize, op: &Op, error: &str) -> String {
        let recent = self.trace[self.trace.len().saturating_sub(40)..].join("\n");
        format!("step {step} ({op:?}): {error}\n  recent steps and what they sent:\n{recent}")
    }

    /// The id a relay names: (raw JSON or None for missing, normalised or None for 9003).
    fn session_id(&self, me: ConnId, pick: IdPick) -> (Option<String>, Option<String>) {
        let own =
            self.model.session_of.get(&me).or(self.known_ids.last()).cloned().unwrap_or_else(|| hex(KEYS[0]));
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

    /// `me` sends the command `op` stands for; checks what the core sends back.
    fn command(&mut self, me: ConnId, op: &Op, pre: &State) -> Result<(), String> {
        let (raw, cmd) = self.message(me, op).ok_or("not a command")?;
        self.trace.push(format!("      {} sends {}", show(me), String::from_utf8_lossy(&raw)));
        let drawn = self.draws.borrow().len();
        self.core.handle_message(me, &raw, self.now, &mut self.out);
        let sent = self.take_sent();
        self.observe(Cause::Command { from: me }, &sent)?;
        let draws = self.draws.borrow()[drawn..].to_vec();
        let (expected, post) = predict(pre, me, &cmd, &self.out.closing, &draws)?;
        self.compare(&sent, &expected)?;
        for id in post.sessions.keys() {
            if !self.known_ids.contains(id) {
                self.known_ids.push(id.clone());
            }
        }
        self.model = post;
        Ok(())
    }

    /// The raw message for a command op, and what the model makes of it.
    fn message(&self, me: ConnId, op: &Op) -> Option<(Vec<u8>, Cmd)> {
        let spelled = |spelling: Spelling, for_sid: bool| {
            let (name, form) = match spelling {
                Spelling::Other(which) => return other_id(which, for_sid),
                Spelling::Name { name, form } => (name, form),
                Spelling::SidOf { nth, form } | Spelling::Peer { nth, form } => {
                    let peer = matches!(spelling, Spelling::Peer { .. });
                    let candidates: Vec<&String> = self
                        .model
                        .clients
                        .iter()
                        .filter(|(c, _)| !peer || (*c != me && !self.model.calling(*c)))
                        .map(|(_, sid)| sid)
                        .collect();
                    if candidates.is_empty() {
                        (nth, form)
                    } else {
                        let sid = candidates[nth % candidates.len()];
                        match NAMES.iter().position(|(name, _)| name == sid) {
                            Some(name) => (name, form),
                            None => return (Some(js(sid)), Some(sid.clone())),
                        }
                    }
                }
            };
            let (sid, forms) = NAMES[name % NAMES.len()];
            (Some(forms[form % forms.len()].to_owned()), Some(sid.to_owned()))
        };
        let with = |mut pairs: Vec<(&'static str, String)>, key: &'static str, raw: Option<String>| {
            if let Some(raw) = raw {
                pairs.push((key, raw));
            }
            pairs
        };
        Some(match *op {
            Op::Register { sid, layout, .. } => {
                let (raw, sid) = spelled(sid, true);
                let mut pairs = with(vec![("cmd", r#""sId""#.to_owned())], "sId", raw);
                if layout == 1 {
                    pairs.extend([("x", "[1]".to_owned()), ("opponentId", r#""zz""#.to_owned())]);
                }
                (object(&pairs, layout).into_bytes(), Cmd::Register { sid })
            }
            Op::Session { opponent, layout, .. } => {
                let (raw, opponent) = spelled(opponent, false);
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
                let (raw, opponent) = spelled(opponent, false);
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
        self.trace.push(format!("  {step:3}: {op:?}"));
        let pre = self.model.clone();
        match *op {
            Op::Relay { slot, from_calling: true, .. } if !self.model.session_of.is_empty() => {
                let calling = self.model.clients_in(true);
                self.command(calling[slot % calling.len()], op, &pre)?;
            }
            Op::Session { slot, from_wait: true, .. } if !self.model.clients_in(false).is_empty() => {
                let waiting = self.model.clients_in(false);
                self.command(waiting[slot % waiting.len()], op, &pre)?;
            }
            Op::Register { slot, .. }
            | Op::Session { slot, .. }
            | Op::Relay { slot, .. }
            | Op::Notify { slot, .. }
            | Op::Garbage { slot, .. }
            | Op::Bytes { slot, .. } => self.command(self.conn(slot), op, &pre)?,
            Op::Disconnect { slot, rejoin } => {
                self.disconnect(slot)?;
                if let Some(sid) = rejoin {
                    let register = Op::Register { slot, sid, layout: 0 };
                    self.trace.push(format!("      rejoins: {register:?}"));
                    let pre = self.model.clone();
                    self.command(self.conn(slot), &register, &pre)?;
                }
            }
            Op::StaleDisconnect { slot, which } => {
                let generation = self.generation[slot];
                let id = match which {
                    0 if generation > 0 => ConnId::new(slot as u32, generation - 1),
                    0 | 1 => ConnId::new(slot as u32, generation + 1),
                    _ => ConnId::new((MAX_CONNS + slot) as u32, 0),
                };
                self.core.disconnect(id, self.now, &mut self.out);
                if !self.take_sent().is_empty() {
                    return Err(format!("disconnecting {}, which is not connected, sent messages", show(id)));
                }
            }
            Op::MarkClosing { slot } => {
                self.out.closing.insert(self.conn(slot));
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
                    self.trace.push(format!("      the closing {} is gone", show(gone)));
                    self.disconnect(gone.index())?;
                }
                self.advance(ms(u64::from(by)))?;
            }
        }
        // The client list changes on every registration, departure and client state change.
        if self.model.list_changes() != pre.list_changes() {
            self.last_change = self.now;
        }
        self.check_core()?;
        self.check_list_bound()
    }

    /// The connection in `slot` ends; the slot comes back as a new connection.
    fn disconnect(&mut self, slot: usize) -> Result<(), String> {
        let gone = self.conn(slot);
        self.core.disconnect(gone, self.now, &mut self.out);
        let sent = self.take_sent();
        self.observe(Cause::Disconnect { gone }, &sent)?;
        let (expected, post) = predict_disconnect(&self.model, gone);
        self.compare(&sent, &expected)?;
        self.model = post;
        self.generation[slot] += 1;
        self.out.closing.remove(&gone);
        self.out.unsent.remove(&gone);
        Ok(())
    }

    fn compare(&self, sent: &[Sent], expected: &[(ConnId, String)]) -> Result<(), String> {
        let actual = per_recipient(sent.iter().filter(|m| !m.list).map(|m| (m.to, m.text.clone())))?;
        let wanted = per_recipient(expected.iter().map(|(to, text)| (*to, text.clone().into_bytes())))?;
        if actual != wanted {
            let wanted: Vec<String> =
                expected.iter().map(|(to, text)| format!("{} {text}", show(*to))).collect();
            return Err(format!(
                "the core's messages differ from PROTOCOL.md's; expected:\n        {}",
                wanted.join("\n        ")
            ));
        }
        Ok(())
    }

    fn poll_once(&mut self) -> Result<(), String> {
        self.trace.push(format!("      poll at +{:?}", self.now - self.start));
        self.next_due = self.core.poll_client_list(self.now, &mut self.out);
        let sent = self.take_sent();
        self.observe(Cause::Poll, &sent)
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
        Err("poll_client_list keeps asking to be called".into())
    }

    /// The model, the messages and the core agree, and the state is consistent.
    fn check_core(&self) -> Result<(), String> {
        self.core.check_invariants().map_err(|e| format!("check_invariants: {e}"))?;
        self.model.check().map_err(|e| format!("the model: {e}"))?;
        self.obs.state.check().map_err(|e| format!("the state the messages imply: {e}"))?;
        if self.obs.state != self.model {
            return Err(format!("the messages imply {:?}\n  the model has {:?}", self.obs.state, self.model));
        }
        let stats = self.core.stats();
        let in_state = |n| self.model.sessions.values().filter(|s| s.state == n).count();
        let want =
            (self.model.clients.len(), self.model.sessions.len(), in_state(1), in_state(2), in_state(3));
        let have = (
            stats.registered,
            stats.sessions,
            stats.sessions_new,
            stats.sessions_pending,
            stats.sessions_active,
        );
        if have != want {
            return Err(format!(
                "stats (registered, sessions, new, pending, active) {have:?}, want {want:?}"
            ));
        }
        for slot in 0..self.conns {
            for generation in 0..=self.generation[slot] + 1 {
                let conn = ConnId::new(slot as u32, generation);
                let want = if generation == self.generation[slot] { self.model.sid(conn) } else { None };
                if self.core.sid_of(conn) != want {
                    return Err(format!(
                        "sid_of({}) is {:?}, want {want:?}",
                        show(conn),
                        self.core.sid_of(conn)
                    ));
                }
            }
        }
        let errors: u64 = self.core.counters().errors.iter().sum();
        if errors != self.obs.errors {
            return Err(format!("the core counted {errors} errors, {} were sent", self.obs.errors));
        }
        Ok(())
    }

    /// Every WAIT client that can take a list holds the current one 250 ms after the last
    /// change (or after its previous list finally went out).
    fn check_list_bound(&self) -> Result<(), String> {
        let view = self.model.view();
        for (conn, _) in &self.model.clients {
            if self.model.calling(*conn) || self.out.closing.contains(conn) || self.out.unsent.contains(conn)
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

    /// After the sequence: quiet, every list deliverable. Everyone in WAIT gets the final
    /// list and the core stops asking to be polled.
    fn settle(&mut self) -> Result<(), String> {
        for conn in std::mem::take(&mut self.out.unsent) {
            self.cleared_at.insert(conn, self.now);
        }
        self.trace.push("  settle: every list deliverable, 400 ms of quiet".into());
        self.advance(ms(400))?;
        self.check_core()?;
        self.check_list_bound()?;
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
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_sequence_keeps_the_protocol(case in case()) {
        run_case(&case).map_err(TestCaseError::fail)?;
    }
}
