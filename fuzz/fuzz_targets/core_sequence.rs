//! Random operation sequences on one `Signaling` core (the quinn `streams.rs` pattern).
//!
//! Four connection slots; each step is a message from one of them (built from a small
//! vocabulary of commands, ids, known session ids and raw fuzz bytes), a disconnect (the slot
//! then comes back as a new connection, with a new generation, as the transport's slab does),
//! a lost connection (resumable clients go away, others are gone; the slot comes back as a
//! new connection too), a pong acknowledging some count, a clock advance followed by `poll`
//! until nothing is due now, a change of what the outbox answers (closing, list still
//! unsent), a token restriction on a fresh connection or a refused (rate-limited) command.
//! Messages include registrations with resume and resumes with tokens the core handed out
//! (or altered ones), with any count.
//!
//! After every step:
//! * `check_invariants()` holds;
//! * every message the core produced (kept as raw bytes by an outbox that behaves like
//!   `MemoryOutbox`) is UTF-8 and one complete JSON object with a string `cmd`;
//! * nothing was addressed to a connection after its `disconnect`;
//! * at most 4 clients are attached, and at most half the registered are in sessions;
//! * `poll` never asks to be called again "now" more than a bounded number of times in a
//!   row (a round always makes progress), and `next_deadline` agrees with it.
#![no_main]

use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use signaling_server::protocol::ErrorCode;
use signaling_server::signaling::{
    ClientListPacing, ConnId, Delivery, ListDelivery, Outbox, ResumePolicy, Signaling,
};

const SLOTS: usize = 4;
/// Polls in a row that may each return "again now" before we call it a livelock. A round
/// hands out at least one list per poll (the budget is at least 1 byte) and there are at most
/// 4 clients, so a handful is plenty.
const MAX_POLLS_NOW: usize = 64;
/// Session ids harvested from the outbox, for messages to name real sessions.
const MAX_KNOWN_SESSIONS: usize = 16;
/// Resume tokens harvested from the outbox, likewise.
const MAX_KNOWN_TOKENS: usize = 8;

#[derive(Arbitrary, Debug)]
struct Scenario {
    /// Session keys drawn from 0..4 instead of 64 bits: forces the collision retry.
    small_keys: bool,
    seed: u64,
    pacing: Pacing,
    /// 0: resume off.
    resume_grace_ms: u16,
    /// The bound on held bytes (at least 64).
    max_held: u16,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Pacing {
    min_interval_ms: u8,
    bytes_per_second: u32,
    bytes_per_poll: u16,
    retry_interval_ms: u8,
    small_list_clients: u8,
    small_list_max_interval_ms: u8,
}

impl Pacing {
    fn build(&self) -> ClientListPacing {
        ClientListPacing {
            min_interval: Duration::from_millis(self.min_interval_ms.into()),
            bytes_per_second: u64::from(self.bytes_per_second).max(1),
            // The server's own value is 1 MiB; anything from 1 byte exercises rounds that
            // span several polls.
            bytes_per_poll: usize::from(self.bytes_per_poll).max(1),
            // At least 1 ms: with 0, a client whose previous list is still unsent makes
            // every poll answer "again now" forever (by design: retry at once). The server
            // fixes it at 50 ms; no flag sets it.
            retry_interval: Duration::from_millis(self.retry_interval_ms.max(1).into()),
            small_list_clients: self.small_list_clients.into(),
            small_list_max_interval: Duration::from_millis(self.small_list_max_interval_ms.into()),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Slot {
    A,
    B,
    C,
    D,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Message { from: Slot, message: Message },
    Disconnect { conn: Slot },
    Lose { conn: Slot },
    Acknowledge { conn: Slot, messages: u16 },
    Advance { millis: u16 },
    Closing { conn: Slot, on: bool },
    ListUnsent { conn: Slot, on: bool },
    Restrict { conn: Slot, sid: Id },
    Refuse { conn: Slot },
}

#[derive(Arbitrary, Debug)]
enum Message {
    Register {
        sid: Id,
    },
    RegisterResumable {
        sid: Id,
    },
    Resume {
        sid: Id,
        token: TokenRef,
        received: u16,
    },
    Session {
        opponent: Id,
    },
    Relay {
        action: Action,
        session: SessionRef,
        payload: Payload,
    },
    Notify {
        opponent: Id,
        notify_type: Id,
        data: Option<Payload>,
    },
    /// Any object over the known keys, values from the vocabulary or raw bytes.
    Fields(Vec<(Key, Fragment)>),
    /// Raw fuzz bytes as the whole message.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
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

    fn field(self) -> Option<&'static str> {
        match self {
            Action::Call => Some("offer"),
            Action::Accept => Some("answer"),
            Action::IceCandidate => Some("icecandidate"),
            Action::Reject | Action::Stop => None,
        }
    }
}

/// An id as a JSON value: the same few names (so they collide), spellings that normalise to
/// them, and anything else.
#[derive(Arbitrary, Debug)]
enum Id {
    Alice,
    Bob,
    Carol,
    Dave,
    /// `" alice "`: trimmed to alice.
    Padded,
    /// `"\u0062ob"`: unescaped to bob.
    Escaped,
    /// A number: normalised to its JavaScript spelling.
    Number(u8),
    Float(f32),
    Text(String),
}

impl Id {
    fn json(&self) -> String {
        match self {
            Id::Alice => r#""alice""#.into(),
            Id::Bob => r#""bob""#.into(),
            Id::Carol => r#""carol""#.into(),
            Id::Dave => r#""dave""#.into(),
            Id::Padded => "\" alice\\t\"".into(),
            Id::Escaped => r#""\u0062ob""#.into(),
            Id::Number(n) => n.to_string(),
            Id::Float(f) if f.is_finite() => format!("{f:e}"),
            Id::Float(_) => "null".into(),
            Id::Text(text) => json_string(text),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum SessionRef {
    /// A session id the core has sent (index modulo how many were seen).
    Known(u8),
    /// A known id with one hex digit changed.
    Altered(u8, u8),
    /// A known id in upper case or padded: names no session, or the same one after trimming.
    Upper(u8),
    Padded(u8),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum TokenRef {
    /// A token the core has handed out (index modulo how many were seen).
    Known(u8),
    /// A known token with one character changed.
    Altered(u8, u8),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Null,
    Sdp(String),
    Number(f64),
    Nested(u8),
    /// Raw bytes where a JSON value belongs: mostly invalid JSON (9000), sometimes odd but
    /// valid JSON that must reach the opponent byte for byte.
    Raw(Vec<u8>),
}

impl Payload {
    fn json(&self) -> Vec<u8> {
        match self {
            Payload::Null => b"null".to_vec(),
            Payload::Sdp(sdp) => format!(r#"{{"type":"offer","sdp":{}}}"#, json_string(sdp)).into_bytes(),
            Payload::Number(n) if n.is_finite() => format!("{n:e}").into_bytes(),
            Payload::Number(_) => b"-0".to_vec(),
            Payload::Nested(depth) => {
                let depth = usize::from(*depth);
                let mut out = "[{\"a\":".repeat(depth).into_bytes();
                out.extend_from_slice(b"\"]}\\\"\"");
                out.extend_from_slice("}]".repeat(depth).as_bytes());
                out
            }
            Payload::Raw(bytes) => bytes.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Key {
    Cmd,
    SId,
    OpponentId,
    SessionId,
    Type,
    Offer,
    Answer,
    IceCandidate,
    Data,
    Resume,
    ResumeToken,
    Received,
    Other,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Cmd => "cmd",
            Key::SId => "sId",
            Key::OpponentId => "opponentId",
            Key::SessionId => "sessionId",
            Key::Type => "type",
            Key::Offer => "offer",
            Key::Answer => "answer",
            Key::IceCandidate => "icecandidate",
            Key::Data => "data",
            Key::Resume => "resume",
            Key::ResumeToken => "resumeToken",
            Key::Received => "received",
            Key::Other => "x",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Fragment {
    Cmd(u8),
    Id(Id),
    Session(SessionRef),
    Payload(Payload),
    True,
    EmptyObject,
}

const COMMANDS: [&str; 12] = [
    "sId", "session", "call", "accept", "icecandidate", "reject", "stop", "notify", "clu", "error", "SID", "resume",
];

/// `MemoryOutbox`'s behaviour, but keeping the bytes as sent (MemoryOutbox stores them
/// through `from_utf8_lossy`, which would hide invalid UTF-8).
#[derive(Default)]
struct RawOutbox {
    sent: Vec<(ConnId, Vec<u8>)>,
    closing: HashSet<ConnId>,
    list_unsent: HashSet<ConnId>,
}

impl Outbox for RawOutbox {
    fn send(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        if self.closing.contains(&to) {
            return Delivery::Gone;
        }
        self.sent.push((to, message.to_vec()));
        Delivery::Queued
    }

    fn send_client_list(&mut self, to: ConnId, list: &Rc<[u8]>) -> ListDelivery {
        if self.closing.contains(&to) {
            return ListDelivery::Gone;
        }
        if self.list_unsent.contains(&to) {
            return ListDelivery::Busy;
        }
        self.sent.push((to, list.to_vec()));
        ListDelivery::Queued
    }

    fn messages_queued(&self, to: ConnId) -> u64 {
        self.sent.iter().filter(|(conn, _)| *conn == to).count() as u64
    }

    fn take_over(&mut self, old: ConnId) {
        self.closing.insert(old);
    }
}

struct Harness {
    core: Signaling,
    out: RawOutbox,
    now: Instant,
    generation: [u32; SLOTS],
    /// No message has come from the slot's current connection yet (a token restriction is
    /// applied by the transport before any message, so only then).
    fresh: [bool; SLOTS],
    retired: Vec<ConnId>,
    sessions: Vec<String>,
    tokens: Vec<String>,
}

impl Harness {
    fn token_ref(&self, token: &TokenRef) -> String {
        let known = |i: u8| self.tokens.get(usize::from(i) % self.tokens.len().max(1)).cloned();
        match token {
            TokenRef::Known(i) => json_string(&known(*i).unwrap_or_default()),
            TokenRef::Altered(i, at) => {
                let mut token = known(*i).unwrap_or_else(|| "A".repeat(22)).into_bytes();
                let at = usize::from(*at) % token.len().max(1);
                if let Some(byte) = token.get_mut(at) {
                    *byte = if *byte == b'A' { b'B' } else { b'A' };
                }
                json_string(&String::from_utf8_lossy(&token))
            }
            TokenRef::Text(text) => json_string(text),
        }
    }

    fn conn(&self, slot: Slot) -> ConnId {
        let index = slot as usize;
        ConnId::new(index as u32, self.generation[index])
    }

    fn session(&self, index: u8) -> String {
        if self.sessions.is_empty() {
            return "0000000000000000".into();
        }
        self.sessions[usize::from(index) % self.sessions.len()].clone()
    }

    fn session_ref(&self, session: &SessionRef) -> String {
        match session {
            SessionRef::Known(i) => json_string(&self.session(*i)),
            SessionRef::Altered(i, at) => {
                let mut id = self.session(*i).into_bytes();
                let at = usize::from(*at) % id.len();
                id[at] = if id[at] == b'0' { b'1' } else { b'0' };
                json_string(&String::from_utf8_lossy(&id))
            }
            SessionRef::Upper(i) => json_string(&self.session(*i).to_uppercase()),
            SessionRef::Padded(i) => json_string(&format!(" {}\n", self.session(*i))),
            SessionRef::Text(text) => json_string(text),
        }
    }

    fn fragment(&self, fragment: &Fragment) -> Vec<u8> {
        match fragment {
            Fragment::Cmd(i) => json_string(COMMANDS[usize::from(*i) % COMMANDS.len()]).into_bytes(),
            Fragment::Id(id) => id.json().into_bytes(),
            Fragment::Session(session) => self.session_ref(session).into_bytes(),
            Fragment::Payload(payload) => payload.json(),
            Fragment::True => b"true".to_vec(),
            Fragment::EmptyObject => b"{}".to_vec(),
        }
    }

    fn message(&self, message: &Message) -> Vec<u8> {
        let object = |fields: &[(&str, Vec<u8>)]| {
            let mut out = b"{".to_vec();
            for (at, (key, value)) in fields.iter().enumerate() {
                if at > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(json_string(key).as_bytes());
                out.push(b':');
                out.extend_from_slice(value);
            }
            out.push(b'}');
            out
        };
        let s = |text: &str| json_string(text).into_bytes();
        match message {
            Message::Register { sid } => object(&[("cmd", s("sId")), ("sId", sid.json().into_bytes())]),
            Message::RegisterResumable { sid } => {
                object(&[("cmd", s("sId")), ("sId", sid.json().into_bytes()), ("resume", b"true".to_vec())])
            }
            Message::Resume { sid, token, received } => object(&[
                ("cmd", s("resume")),
                ("sId", sid.json().into_bytes()),
                ("resumeToken", self.token_ref(token).into_bytes()),
                ("received", received.to_string().into_bytes()),
            ]),
            Message::Session { opponent } => {
                object(&[("cmd", s("session")), ("opponentId", opponent.json().into_bytes())])
            }
            Message::Relay { action, session, payload } => {
                let mut fields =
                    vec![("cmd", s(action.cmd())), ("sessionId", self.session_ref(session).into_bytes())];
                if let Some(field) = action.field() {
                    fields.push((field, payload.json()));
                }
                object(&fields)
            }
            Message::Notify { opponent, notify_type, data } => {
                let mut fields = vec![
                    ("cmd", s("notify")),
                    ("opponentId", opponent.json().into_bytes()),
                    ("type", notify_type.json().into_bytes()),
                ];
                if let Some(data) = data {
                    fields.push(("data", data.json()));
                }
                object(&fields)
            }
            Message::Fields(fields) => {
                let fields: Vec<_> = fields.iter().map(|(k, v)| (k.name(), self.fragment(v))).collect();
                object(&fields)
            }
            Message::Raw(bytes) => bytes.clone(),
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Message { from, message } => {
                let raw = self.message(message);
                let conn = self.conn(*from);
                self.fresh[*from as usize] = false;
                self.core.handle_message(conn, &raw, self.now, &mut self.out);
            }
            Op::Disconnect { conn: slot } => {
                let conn = self.conn(*slot);
                self.core.disconnect(conn, self.now, &mut self.out);
                assert_eq!(self.core.sid_of(conn), None, "still registered after disconnect");
                self.out.closing.remove(&conn);
                self.out.list_unsent.remove(&conn);
                self.retired.push(conn);
                self.generation[*slot as usize] += 1;
                self.fresh[*slot as usize] = true;
            }
            Op::Lose { conn: slot } => {
                let conn = self.conn(*slot);
                self.core.connection_lost(conn, self.now, &mut self.out);
                assert_eq!(self.core.sid_of(conn), None, "still attached after its loss");
                self.out.closing.remove(&conn);
                self.out.list_unsent.remove(&conn);
                self.retired.push(conn);
                self.generation[*slot as usize] += 1;
                self.fresh[*slot as usize] = true;
            }
            Op::Acknowledge { conn, messages } => self.core.acknowledge(self.conn(*conn), u64::from(*messages)),
            Op::Advance { millis } => {
                self.now += Duration::from_millis(u64::from(*millis));
                self.poll_until_settled();
            }
            Op::Closing { conn, on } => {
                let conn = self.conn(*conn);
                toggle(&mut self.out.closing, conn, *on);
            }
            Op::ListUnsent { conn, on } => {
                let conn = self.conn(*conn);
                toggle(&mut self.out.list_unsent, conn, *on);
            }
            Op::Restrict { conn, sid } => {
                if self.fresh[*conn as usize] {
                    // The token names a decoded sId; use the JSON value's text.
                    let sid = serde_json::from_str::<Value>(&sid.json())
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "alice".into());
                    self.core.admit(self.conn(*conn), None, Some(&sid));
                }
            }
            Op::Refuse { conn } => self.core.refuse(self.conn(*conn), ErrorCode::RateLimited, self.now, &mut self.out),
        }
        self.check();
    }

    fn poll_until_settled(&mut self) {
        for _ in 0..MAX_POLLS_NOW {
            let next = self.core.poll(self.now, &mut self.out);
            // `next_deadline` (what the event loop sleeps on) agrees with what the poll
            // just answered: the same future time or none; a past time if "again now".
            let due = self.core.next_deadline();
            match next {
                Some(at) if at <= self.now => {
                    assert!(due.is_some_and(|due| due <= self.now), "poll: again now; due: {due:?}");
                    continue;
                }
                _ => {
                    assert_eq!(due, next, "next_deadline disagrees with poll");
                    return;
                }
            }
        }
        panic!("poll still due now after {MAX_POLLS_NOW} calls");
    }

    fn check(&mut self) {
        if let Err(broken) = self.core.check_invariants() {
            panic!("invariant broken: {broken}");
        }
        let stats = self.core.stats();
        assert!(stats.registered - stats.away <= SLOTS && 2 * stats.sessions <= stats.registered, "{stats:?}");
        assert_eq!(stats.sessions, stats.sessions_new + stats.sessions_pending + stats.sessions_active);
        for (to, bytes) in &self.out.sent {
            let text = String::from_utf8_lossy(bytes);
            assert!(!self.retired.contains(to), "message to {to:?} after its disconnect: {text}");
            assert!(std::str::from_utf8(bytes).is_ok(), "core sent invalid UTF-8: {text}");
            let Some(value) = parse_value(bytes) else { panic!("core sent invalid JSON: {text}") };
            let Some(cmd) = value.get("cmd").and_then(Value::as_str) else {
                panic!("message without a string cmd: {text}");
            };
            if let Some(id) = value.get("sessionId").and_then(Value::as_str)
                && matches!(cmd, "session" | "ssu")
                && !self.sessions.iter().any(|known| known == id)
            {
                if self.sessions.len() == MAX_KNOWN_SESSIONS {
                    self.sessions.remove(0);
                }
                self.sessions.push(id.to_owned());
            }
            if let Some(token) = value.get("resumeToken").and_then(Value::as_str)
                && matches!(cmd, "sId" | "resume")
            {
                if self.tokens.len() == MAX_KNOWN_TOKENS {
                    self.tokens.remove(0);
                }
                self.tokens.push(token.to_owned());
            }
        }
        // Keep memory flat over long sequences: what was checked is not needed again.
        self.out.sent.clear();
    }
}

fn toggle(set: &mut HashSet<ConnId>, conn: ConnId, on: bool) {
    if on {
        set.insert(conn);
    } else {
        set.remove(&conn);
    }
}

/// One complete JSON value, without serde_json's nesting limit (relayed payloads may nest
/// deeper than its default 128).
fn parse_value(bytes: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = serde::Deserialize::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(value)
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

fuzz_target!(|scenario: Scenario| {
    let mut state = scenario.seed | 1;
    let small_keys = scenario.small_keys;
    let random = Box::new(move || {
        // xorshift64: deterministic, so every input replays exactly.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if small_keys { state & 3 } else { state }
    });
    let policy = ResumePolicy {
        grace: Duration::from_millis(u64::from(scenario.resume_grace_ms)),
        max_held: usize::from(scenario.max_held).max(64),
        max_away: 3,
    };
    let mut harness = Harness {
        core: Signaling::with_random(scenario.pacing.build(), random).with_resume(policy),
        out: RawOutbox::default(),
        now: Instant::now(),
        generation: [0; SLOTS],
        fresh: [true; SLOTS],
        retired: Vec::new(),
        sessions: Vec::new(),
        tokens: Vec::new(),
    };
    for op in &scenario.ops {
        harness.step(op);
    }
});
