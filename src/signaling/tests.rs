//! Unit tests of the sans-IO core against PROTOCOL.md.
//!
//! Everything runs on a fake clock (a base `Instant` plus durations) and a [`MemoryOutbox`];
//! the random source for session ids is scripted where a test needs to know the ids. Being a
//! child module of `signaling`, these tests also read the core's private state (through
//! [`Snapshot`]) to prove that an error "changes nothing".

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use simd_json::OwnedValue;
use simd_json::prelude::*;

use super::*;
use crate::protocol::{ErrorCode, Relay, SessionId};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// The default room's list revision.
pub(super) fn list_rev(core: &Signaling) -> u64 {
    core.registry.room(RoomId::DEFAULT).map_or(0, |room| room.list.rev)
}

fn conn(index: u32) -> ConnId {
    ConnId::new(index, 0)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn json(text: &str) -> OwnedValue {
    simd_json::to_owned_value(&mut text.as_bytes().to_vec())
        .unwrap_or_else(|e| panic!("the server sent invalid JSON ({e}): {text}"))
}

/// Distinct, random-looking session keys.
pub(super) fn counting_random() -> Box<dyn FnMut() -> u64> {
    let mut n = 0u64;
    Box::new(move || {
        n += 1;
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

/// Returns `values` in order (then distinct fallbacks), counting the draws.
fn scripted_random(values: Vec<u64>, draws: Rc<Cell<usize>>) -> Box<dyn FnMut() -> u64> {
    Box::new(move || {
        let at = draws.get();
        draws.set(at + 1);
        values.get(at).copied().unwrap_or(0x5eed_0000 + at as u64)
    })
}

/// A tiny deterministic generator for the randomized tests (no new dependency).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// Client messages.

fn sid_msg(sid: &str) -> String {
    format!(r#"{{"cmd":"sId","sId":"{sid}"}}"#)
}

fn session_msg(opponent: &str) -> String {
    format!(r#"{{"cmd":"session","opponentId":"{opponent}"}}"#)
}

/// A session command; `payload` is the raw JSON of its nested field, if it has one.
fn relay_msg(action: Relay, session_id: &str, payload: Option<&str>) -> String {
    let mut text = format!(r#"{{"cmd":"{}","sessionId":"{session_id}""#, action.cmd());
    if let (Some(field), Some(payload)) = (action.payload_field(), payload) {
        text += &format!(r#","{field}":{payload}"#);
    }
    text + "}"
}

fn notify_msg(opponent: &str, notify_type: &str, data: Option<&str>) -> String {
    let data = data.map(|d| format!(r#","data":{d}"#)).unwrap_or_default();
    format!(r#"{{"cmd":"notify","opponentId":"{opponent}","type":"{notify_type}"{data}}}"#)
}

// Server messages as PROTOCOL.md spells them (compared as JSON values, so field order is free).

fn sid_reply(sid: &str) -> String {
    format!(r#"{{"cmd":"sId","sId":"{sid}"}}"#)
}

fn session_reply(session_id: &str) -> String {
    format!(r#"{{"cmd":"session","sessionId":"{session_id}"}}"#)
}

fn ssu(session_id: &str, state: u8) -> String {
    format!(r#"{{"cmd":"ssu","sessionId":"{session_id}","state":{state}}}"#)
}

fn leave(session_id: &str, gone: &str) -> String {
    format!(r#"{{"cmd":"leave","sessionId":"{session_id}","opponentId":"{gone}"}}"#)
}

fn relayed(action: Relay, session_id: &str, from: &str, payload: Option<&str>) -> String {
    let mut text = format!(r#"{{"cmd":"{}","sessionId":"{session_id}","opponentId":"{from}""#, action.cmd());
    if let (Some(field), Some(payload)) = (action.payload_field(), payload) {
        text += &format!(r#","{field}":{payload}"#);
    }
    text + "}"
}

fn notification(from: &str, notify_type: &str, data: Option<&str>) -> String {
    let data = data.map(|d| format!(r#","data":{d}"#)).unwrap_or_default();
    format!(r#"{{"cmd":"notify","opponentId":"{from}","type":"{notify_type}"{data}}}"#)
}

fn error(code: ErrorCode) -> String {
    code.message().to_owned()
}

const ACTIONS: [Relay; 5] = [Relay::Call, Relay::Accept, Relay::IceCandidate, Relay::Reject, Relay::Stop];

/// The `list` of a `clu` as (sId, state) pairs, checking its shape on the way.
fn clu_entries(text: &str) -> Vec<(String, u64)> {
    let value = json(text);
    assert_eq!(value.get_str("cmd"), Some("clu"), "{text}");
    assert_eq!(value.as_object().map(|o| o.len()), Some(2), "{text}");
    let list = value.get("list").and_then(|l| l.as_array()).unwrap_or_else(|| panic!("no list: {text}"));
    list.iter()
        .map(|entry| {
            assert_eq!(entry.as_object().map(|o| o.len()), Some(2), "{text}");
            let sid = entry.get_str("sId").unwrap_or_else(|| panic!("sId not a string: {text}"));
            let state = entry.get_u64("state").unwrap_or_else(|| panic!("state not a number: {text}"));
            (sid.to_owned(), state)
        })
        .collect()
}

fn entries(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|&(sid, state)| (sid.to_owned(), state)).collect()
}

fn per_conn(messages: &[(ConnId, String)]) -> BTreeMap<ConnId, Vec<OwnedValue>> {
    let mut by_conn: BTreeMap<ConnId, Vec<OwnedValue>> = BTreeMap::new();
    for (to, text) in messages {
        by_conn.entry(*to).or_default().push(json(text));
    }
    by_conn
}

/// What was sent equals what was expected, message for message and in order for each
/// recipient (PROTOCOL.md only orders the messages of one client), compared as JSON values.
#[track_caller]
fn assert_sent(actual: &[(ConnId, String)], expected: &[(ConnId, String)]) {
    assert_eq!(per_conn(actual), per_conn(expected), "\n  sent:     {actual:?}\n  expected: {expected:?}");
}

/// The connection a client is attached to (these tests never leave a client away).
fn conn_of(core: &Signaling, id: super::ClientId) -> ConnId {
    core.registry.get(id).and_then(|client| client.conn()).expect("an attached client")
}

/// The core's whole observable state: clients in registration order (connection, sId,
/// session), sessions with their members and state, and the client-list version.
#[derive(Clone, Debug, PartialEq)]
struct Snapshot {
    clients: Vec<(ConnId, String, Option<SessionId>)>,
    sessions: BTreeMap<SessionId, ([ConnId; 2], SessionState)>,
    list_version: u64,
}

impl Snapshot {
    fn of(core: &Signaling) -> Self {
        Snapshot {
            clients: core
                .registry
                .entries()
                .map(|(id, client)| (conn_of(core, id), client.sid.to_string(), client.session))
                .collect(),
            sessions: core
                .sessions
                .iter()
                .map(|(key, s)| (key, (s.members.map(|id| conn_of(core, id)), s.state)))
                .collect(),
            list_version: list_rev(core),
        }
    }

    fn client(&self, conn: ConnId) -> Option<&(ConnId, String, Option<SessionId>)> {
        self.clients.iter().find(|client| client.0 == conn)
    }

    fn find(&self, sid: &str) -> Option<ConnId> {
        self.clients.iter().find(|client| client.1 == sid).map(|client| client.0)
    }

    fn session_of(&self, conn: ConnId) -> Option<SessionId> {
        self.client(conn).and_then(|client| client.2)
    }

    fn set_session(&mut self, conn: ConnId, session: Option<SessionId>) {
        for client in &mut self.clients {
            if client.0 == conn {
                client.2 = session;
            }
        }
    }

    /// The client list as a `clu` must show it.
    fn view(&self) -> Vec<(String, u64)> {
        self.clients
            .iter()
            .map(|(_, sid, session)| (sid.clone(), if session.is_some() { 2 } else { 1 }))
            .collect()
    }
}

/// The core, a memory outbox and a fake clock.
struct Net {
    core: Signaling,
    out: MemoryOutbox,
    start: Instant,
    now: Instant,
}

impl Net {
    fn new() -> Self {
        Net::build(ClientListPacing::default(), counting_random())
    }

    fn build(pacing: ClientListPacing, random: Box<dyn FnMut() -> u64>) -> Self {
        let start = Instant::now();
        Net { core: Signaling::with_random(pacing, random), out: MemoryOutbox::default(), start, now: start }
    }

    fn at(&mut self, millis: u64) {
        self.now = self.start + ms(millis);
    }

    /// Sends one message and returns everything the core produced for it.
    fn send(&mut self, from: ConnId, raw: &str) -> Vec<(ConnId, String)> {
        self.send_bytes(from, raw.as_bytes())
    }

    fn send_bytes(&mut self, from: ConnId, raw: &[u8]) -> Vec<(ConnId, String)> {
        self.core.handle_message(from, raw, self.now, &mut self.out);
        self.core.check_invariants().unwrap();
        self.out.take()
    }

    fn disconnect(&mut self, who: ConnId) -> Vec<(ConnId, String)> {
        self.core.disconnect(who, self.now, &mut self.out);
        self.core.check_invariants().unwrap();
        self.out.take()
    }

    #[track_caller]
    fn register(&mut self, who: ConnId, sid: &str) {
        let sent = self.send(who, &sid_msg(sid));
        assert_sent(&sent, &[(who, sid_reply(sid))]);
    }

    /// Opens a session from `from` to `opponent`, checks the messages, returns its id.
    #[track_caller]
    fn open(&mut self, from: ConnId, opponent: &str) -> String {
        let sent = self.send(from, &session_msg(opponent));
        let reply = sent.first().map(|(_, text)| json(text)).expect("a reply");
        let session_id = reply.get_str("sessionId").expect("a session reply").to_owned();
        let callee =
            conn_of(&self.core, self.core.registry.find(RoomId::DEFAULT, opponent).expect("the opponent"));
        assert_sent(
            &sent,
            &[(from, session_reply(&session_id)), (from, ssu(&session_id, 1)), (callee, ssu(&session_id, 1))],
        );
        session_id
    }

    fn poll(&mut self) -> Option<Instant> {
        self.core.poll_client_list(self.now, &mut self.out)
    }

    /// Polls at the times the core asks for until it owes nothing; returns what was sent.
    fn settle(&mut self) -> Vec<(ConnId, String)> {
        for _ in 0..100_000 {
            match self.poll() {
                Some(due) => self.now = self.now.max(due),
                None => return self.out.take(),
            }
        }
        panic!("poll_client_list never went quiet");
    }

    /// Settles the client list and returns the lists each connection received.
    fn lists(&mut self) -> BTreeMap<ConnId, Vec<Vec<(String, u64)>>> {
        let mut lists: BTreeMap<ConnId, Vec<Vec<(String, u64)>>> = BTreeMap::new();
        for (to, text) in self.settle() {
            lists.entry(to).or_default().push(clu_entries(&text));
        }
        lists
    }

    /// The lists sent so far (without polling), by connection; fails on anything else.
    fn take_lists(&mut self) -> BTreeMap<ConnId, Vec<Vec<(String, u64)>>> {
        let mut lists: BTreeMap<ConnId, Vec<Vec<(String, u64)>>> = BTreeMap::new();
        for (to, text) in self.out.take() {
            lists.entry(to).or_default().push(clu_entries(&text));
        }
        lists
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::of(&self.core)
    }

    /// `raw` from `from` is answered with `code`, to the sender alone, and changes nothing.
    #[track_caller]
    fn error(&mut self, from: ConnId, raw: &str, code: ErrorCode) {
        self.error_bytes(from, raw.as_bytes(), code);
    }

    #[track_caller]
    fn error_bytes(&mut self, from: ConnId, raw: &[u8], code: ErrorCode) {
        let before = self.snapshot();
        let stats = self.core.stats();
        let sent = self.send_bytes(from, raw);
        let shown = String::from_utf8_lossy(raw);
        assert_eq!(sent, vec![(from, error(code))], "for {shown}");
        assert_eq!(self.snapshot(), before, "an error changed the state: {shown}");
        assert_eq!(self.core.stats(), stats, "an error changed the stats: {shown}");
        let reply = json(&sent[0].1);
        assert_eq!(reply.get_str("cmd"), Some("error"));
        assert_eq!(reply.get_u64("code"), Some(u64::from(code.code())));
    }
}

fn alice() -> ConnId {
    conn(0)
}
fn bob() -> ConnId {
    conn(1)
}
fn carol() -> ConnId {
    conn(2)
}
fn dave() -> ConnId {
    conn(3)
}
fn erin() -> ConnId {
    conn(4)
}

/// alice, bob and carol registered (in that order), lists delivered and drained.
fn three() -> Net {
    let mut net = Net::new();
    net.register(alice(), "alice");
    net.register(bob(), "bob");
    net.register(carol(), "carol");
    net.settle();
    net
}

// ---------------------------------------------------------------------------------------
// Errors and the order of the checks
// ---------------------------------------------------------------------------------------

#[test]
fn parse_shape_and_command_errors_come_before_registration() {
    let mut net = three();
    let stranger = conn(9);
    let cases: [(&[u8], ErrorCode); 27] = [
        (b"", ErrorCode::InvalidJson),
        (b" ", ErrorCode::InvalidJson),
        (b"{", ErrorCode::InvalidJson),
        (b"not json", ErrorCode::InvalidJson),
        (br#"{"cmd":"sId","sId":"a"} {}"#, ErrorCode::InvalidJson),
        (br#"{"cmd":"sId",}"#, ErrorCode::InvalidJson),
        (b"\xff\xfe", ErrorCode::InvalidJson),
        (b"{\"cmd\":\"sId\",\"sId\":\"\xc3\x28\"}", ErrorCode::InvalidJson),
        (b"[]", ErrorCode::BadShape),
        (b"42", ErrorCode::BadShape),
        (b"null", ErrorCode::BadShape),
        (br#""sId""#, ErrorCode::BadShape),
        (b"{}", ErrorCode::BadShape),
        (br#"{"sId":"alice"}"#, ErrorCode::BadShape),
        (br#"{"cmd":null}"#, ErrorCode::BadShape),
        (br#"{"cmd":true}"#, ErrorCode::BadShape),
        (br#"{"cmd":["sId"]}"#, ErrorCode::BadShape),
        (br#"{"cmd":{"sId":1}}"#, ErrorCode::BadShape),
        (br#"{"cmd":5}"#, ErrorCode::UnknownCommand),
        (br#"{"cmd":"clu","list":[]}"#, ErrorCode::UnknownCommand),
        (br#"{"cmd":"ssu","sessionId":"0000000000000001","state":4}"#, ErrorCode::UnknownCommand),
        (br#"{"cmd":"leave"}"#, ErrorCode::UnknownCommand),
        (br#"{"cmd":"error","code":9000}"#, ErrorCode::UnknownCommand),
        (br#"{"cmd":"SID","sId":"x"}"#, ErrorCode::UnknownCommand),
        (br#"{"cmd":"Session"}"#, ErrorCode::UnknownCommand),
        (br#"{"cmd":""}"#, ErrorCode::UnknownCommand),
        (br#"{"cmd":"  "}"#, ErrorCode::UnknownCommand),
    ];
    for from in [stranger, alice()] {
        for (raw, code) in cases {
            net.error_bytes(from, raw, code);
        }
    }
}

#[test]
fn unregistered_connections_get_9100_before_any_field_check() {
    let mut net = three();
    let session_id = net.open(alice(), "bob");
    let stranger = conn(9);
    for raw in [
        r#"{"cmd":"session"}"#.to_owned(),
        r#"{"cmd":"session","opponentId":""}"#.to_owned(),
        session_msg("alice"),
        session_msg("nobody"),
        r#"{"cmd":"call"}"#.to_owned(),
        r#"{"cmd":"accept","sessionId":5}"#.to_owned(),
        r#"{"cmd":"icecandidate","sessionId":null}"#.to_owned(),
        r#"{"cmd":"reject"}"#.to_owned(),
        relay_msg(Relay::Stop, &session_id, None),
        relay_msg(Relay::Call, &session_id, Some("{}")),
        r#"{"cmd":"notify"}"#.to_owned(),
        notify_msg("alice", "ring", None),
        r#"{"cmd":" notify ","opponentId":"alice","type":""}"#.to_owned(),
    ] {
        net.error(stranger, &raw, ErrorCode::NotRegistered);
    }
    // sId is the one command allowed before registering: its field checks apply.
    for raw in [
        r#"{"cmd":"sId"}"#.to_owned(),
        r#"{"cmd":"sId","sId":""}"#.to_owned(),
        r#"{"cmd":"sId","sId":" \t "}"#.to_owned(),
        r#"{"cmd":"sId","sId":null}"#.to_owned(),
        r#"{"cmd":"sId","sId":false}"#.to_owned(),
        r#"{"cmd":"sId","sId":{"a":1}}"#.to_owned(),
        r#"{"cmd":"sId","sId":["a"]}"#.to_owned(),
        sid_msg(&"x".repeat(65)),
    ] {
        net.error(stranger, &raw, ErrorCode::InvalidField);
    }
}

#[test]
fn field_errors_9003_come_before_each_commands_own_checks() {
    let mut net = three();
    let s = net.open(alice(), "bob");
    let long = "x".repeat(65);
    for raw in [
        // Not 9101 (already registered): the field check is step 5.
        r#"{"cmd":"sId"}"#.to_owned(),
        r#"{"cmd":"sId","sId":"  "}"#.to_owned(),
        // Not 9200/9201/9202: alice is CALLING and "alice" is herself.
        r#"{"cmd":"session"}"#.to_owned(),
        r#"{"cmd":"session","opponentId":" "}"#.to_owned(),
        r#"{"cmd":"session","opponentId":true}"#.to_owned(),
        r#"{"cmd":"session","opponentId":null}"#.to_owned(),
        session_msg(&long),
        // Relays: a missing payload or session id, before looking the session up.
        format!(r#"{{"cmd":"call","sessionId":"{s}"}}"#),
        r#"{"cmd":"call","sessionId":"not-a-session"}"#.to_owned(),
        r#"{"cmd":"call","offer":{}}"#.to_owned(),
        format!(r#"{{"cmd":"accept","sessionId":"{s}","offer":{{}}}}"#),
        format!(r#"{{"cmd":"icecandidate","sessionId":"{s}"}}"#),
        r#"{"cmd":"reject"}"#.to_owned(),
        r#"{"cmd":"stop","sessionId":null}"#.to_owned(),
        r#"{"cmd":"stop","sessionId":""}"#.to_owned(),
        r#"{"cmd":"stop","sessionId":{}}"#.to_owned(),
        relay_msg(Relay::Stop, &long, None),
        // Notify: type required (a non-empty string or number), opponentId required.
        r#"{"cmd":"notify","opponentId":"alice"}"#.to_owned(),
        r#"{"cmd":"notify","opponentId":"nobody","type":""}"#.to_owned(),
        r#"{"cmd":"notify","opponentId":"bob","type":"   "}"#.to_owned(),
        r#"{"cmd":"notify","opponentId":"bob","type":null}"#.to_owned(),
        r#"{"cmd":"notify","opponentId":"bob","type":{}}"#.to_owned(),
        r#"{"cmd":"notify","opponentId":"bob","type":["ring"]}"#.to_owned(),
        r#"{"cmd":"notify","type":"ring"}"#.to_owned(),
        notify_msg(&long, "ring", None),
    ] {
        net.error(alice(), &raw, ErrorCode::InvalidField);
    }
}

#[test]
fn session_checks_run_9200_then_9201_then_9202_then_9203() {
    let mut net = three();
    net.register(dave(), "dave");
    net.register(erin(), "erin");
    net.open(alice(), "bob");
    net.open(carol(), "dave");
    // alice is CALLING: a session with herself is still 9200, an unknown one still 9201.
    net.error(alice(), &session_msg("alice"), ErrorCode::SessionWithSelf);
    net.error(alice(), &session_msg(" alice "), ErrorCode::SessionWithSelf);
    net.error(alice(), &session_msg("nobody"), ErrorCode::OpponentNotFound);
    // Both CALLING: 9202 before 9203.
    net.error(alice(), &session_msg("carol"), ErrorCode::AlreadyInSession);
    net.error(alice(), &session_msg("bob"), ErrorCode::AlreadyInSession);
    net.error(alice(), &session_msg("erin"), ErrorCode::AlreadyInSession);
    // erin is in WAIT.
    net.error(erin(), &session_msg("erin"), ErrorCode::SessionWithSelf);
    net.error(erin(), &session_msg("nobody"), ErrorCode::OpponentNotFound);
    net.error(erin(), &session_msg("alice"), ErrorCode::OpponentBusy);
    net.error(erin(), &session_msg("dave"), ErrorCode::OpponentBusy);
    // sIds are case-sensitive.
    net.error(erin(), &session_msg("Alice"), ErrorCode::OpponentNotFound);
}

#[test]
fn notify_checks_run_9300_then_9301() {
    let mut net = three();
    net.error(alice(), &notify_msg("alice", "ring", None), ErrorCode::NotifySelf);
    net.error(alice(), &notify_msg(" alice\\n", "ring", Some("1")), ErrorCode::NotifySelf);
    net.error(alice(), &notify_msg("nobody", "ring", None), ErrorCode::NotifyTargetNotFound);
    net.open(alice(), "bob");
    net.error(alice(), &notify_msg("alice", "ring", None), ErrorCode::NotifySelf);
    net.error(bob(), &notify_msg("nobody", "ring", None), ErrorCode::NotifyTargetNotFound);
}

#[test]
fn unknown_foreign_closed_and_malformed_session_ids_all_give_the_same_9204() {
    let mut net = three();
    net.register(dave(), "dave");
    let s = net.open(alice(), "bob");
    let other = net.open(carol(), "dave");
    assert!(SessionId::parse(&s).is_some(), "the core's own id parses");
    let bits = u64::from_str_radix(&s, 16).expect("hex");
    let malformed = [
        s.to_uppercase(),
        s[..15].to_owned(),
        format!("{s}0"),
        format!("0x{}", &s[2..]),
        "zzzzzzzzzzzzzzzz".to_owned(),
        "1".to_owned(),
        format!("{s}{s}"),
        "é".repeat(8),
    ];
    for action in ACTIONS {
        let payload = action.payload_field().map(|_| "{}");
        // Unknown, but well-formed, ids.
        for unknown in [bits.wrapping_add(1), bits ^ (1 << 63), 0, u64::MAX] {
            let id = SessionId::new(unknown).text();
            if id.as_str() != other {
                net.error(alice(), &relay_msg(action, id.as_str(), payload), ErrorCode::SessionNotFound);
            }
        }
        for bad in &malformed {
            net.error(alice(), &relay_msg(action, bad, payload), ErrorCode::SessionNotFound);
        }
        // Somebody else's session: the same code and the same text (checked by `error`).
        net.error(alice(), &relay_msg(action, &other, payload), ErrorCode::SessionNotFound);
        net.error(carol(), &relay_msg(action, &s, payload), ErrorCode::SessionNotFound);
    }
    // A WAIT client that is in no session at all.
    net.register(erin(), "erin");
    net.error(erin(), &relay_msg(Relay::Stop, &s, None), ErrorCode::SessionNotFound);
    // A closed session.
    let sent = net.send(bob(), &relay_msg(Relay::Stop, &s, None));
    assert_sent(
        &sent,
        &[(alice(), relayed(Relay::Stop, &s, "bob", None)), (alice(), ssu(&s, 4)), (bob(), ssu(&s, 4))],
    );
    for action in ACTIONS {
        let payload = action.payload_field().map(|_| "null");
        net.error(alice(), &relay_msg(action, &s, payload), ErrorCode::SessionNotFound);
        net.error(bob(), &relay_msg(action, &s, payload), ErrorCode::SessionNotFound);
    }
}

#[test]
fn no_error_changes_the_client_list_and_neither_do_relays_or_notifies() {
    let mut net = three();
    let s = net.open(alice(), "bob");
    net.settle();
    net.send(alice(), &relay_msg(Relay::Call, &s, Some("{}")));
    net.send(bob(), &relay_msg(Relay::Accept, &s, Some("{}")));
    net.send(bob(), &relay_msg(Relay::IceCandidate, &s, Some("null")));
    net.send(carol(), &notify_msg("alice", "ring", None));
    net.send(alice(), &notify_msg("carol", "ring", Some("[1]")));
    net.send(carol(), "{");
    net.send(carol(), &session_msg("alice"));
    net.send(conn(9), &session_msg("carol"));
    assert_eq!(net.poll(), None, "nothing changed the client list");
    assert!(net.out.sent.is_empty());
}

// ---------------------------------------------------------------------------------------
// sId
// ---------------------------------------------------------------------------------------

#[test]
fn registration_replies_with_the_normalised_sid() {
    let mut net = Net::new();
    let sent = net.send(conn(0), r#"{"cmd":" sId ","sId":"  alice\t","extra":[1]}"#);
    assert_eq!(sent, vec![(conn(0), r#"{"cmd":"sId","sId":"alice"}"#.to_owned())]);
    // Unicode white space is trimmed too, escapes are decoded.
    let sent = net.send(conn(1), r#"{"cmd":"sId","sId":"\u3000\u00a0b\u00e9b\n"}"#);
    assert_sent(&sent, &[(conn(1), sid_reply("béb"))]);
    // Numbers become their JavaScript text, and the reply carries a string.
    let sent = net.send(conn(2), r#"{"cmd":"sId","sId":42}"#);
    assert_eq!(sent, vec![(conn(2), r#"{"cmd":"sId","sId":"42"}"#.to_owned())]);
    for taken in ["4.2e1", "42.0", "\"42\"", "\" 42 \"", "420e-1"] {
        net.error(conn(3), &format!(r#"{{"cmd":"sId","sId":{taken}}}"#), ErrorCode::SidTaken);
    }
    let sent = net.send(conn(3), r#"{"cmd":"sId","sId":1e3}"#);
    assert_sent(&sent, &[(conn(3), sid_reply("1000"))]);
    let sent = net.send(conn(4), r#"{"cmd":"sId","sId":4.5}"#);
    assert_sent(&sent, &[(conn(4), sid_reply("4.5"))]);
    // A registered number is found by number or by string.
    let sent = net.send(conn(3), r#"{"cmd":"notify","opponentId":4.2e1,"type":"x"}"#);
    assert_sent(&sent, &[(conn(2), notification("1000", "x", None))]);
    // Characters that need escaping come back escaped, and the same in every message.
    let sent = net.send(conn(5), r#"{"cmd":"sId","sId":"q\"uo\\te"}"#);
    assert_eq!(sent, vec![(conn(5), r#"{"cmd":"sId","sId":"q\"uo\\te"}"#.to_owned())]);
    assert_eq!(net.core.sid_of(conn(5)), Some("q\"uo\\te"));
    let sent = net.send(conn(5), r#"{"cmd":"notify","opponentId":"alice","type":"t"}"#);
    assert_eq!(sent, vec![(conn(0), r#"{"cmd":"notify","opponentId":"q\"uo\\te","type":"t"}"#.to_owned())]);
    // 64 bytes is the longest id.
    let longest = "é".repeat(32);
    net.register(conn(6), &longest);
    assert_eq!(net.core.sid_of(conn(6)), Some(longest.as_str()));
    let lists = net.lists();
    assert_eq!(
        lists[&conn(0)],
        vec![entries(&[
            ("alice", 1),
            ("béb", 1),
            ("42", 1),
            ("1000", 1),
            ("4.5", 1),
            ("q\"uo\\te", 1),
            (longest.as_str(), 1)
        ])]
    );
}

#[test]
fn a_connection_registers_once_and_an_sid_is_held_by_one_connection() {
    let mut net = Net::new();
    net.register(alice(), "alice");
    net.register(bob(), "bob");
    // 9101 for any sId, even a taken one (9101 is checked before 9102).
    for sid in ["alice", "zed", "bob", " alice "] {
        net.error(alice(), &sid_msg(sid), ErrorCode::AlreadyRegistered);
    }
    net.error(alice(), r#"{"cmd":"sId","sId":7}"#, ErrorCode::AlreadyRegistered);
    for sid in ["bob", " bob", "bob\\n", "\\u00a0bob"] {
        net.error(carol(), &sid_msg(sid), ErrorCode::SidTaken);
    }
    // Still registered as before.
    assert_eq!(net.core.sid_of(alice()), Some("alice"));
    assert_eq!(net.core.sid_of(carol()), None);
    // Also while in a session.
    net.open(alice(), "bob");
    net.error(alice(), &sid_msg("other"), ErrorCode::AlreadyRegistered);
    net.error(carol(), &sid_msg("alice"), ErrorCode::SidTaken);
}

#[test]
fn a_departed_clients_sid_is_free_at_once() {
    let mut net = three();
    net.disconnect(bob());
    assert_eq!(net.core.sid_of(bob()), None);
    // Same instant, another connection.
    net.register(dave(), "bob");
    assert_eq!(net.core.sid_of(dave()), Some("bob"));
    assert_eq!(net.core.stats().registered, 3);
    // The new bob is a WAIT client like any other, listed last.
    let s = net.open(alice(), "bob");
    assert_eq!(net.snapshot().session_of(dave()), SessionId::parse(&s));
    let lists = net.lists();
    assert_eq!(lists[&carol()], vec![entries(&[("alice", 2), ("carol", 1), ("bob", 2)])]);
}

// ---------------------------------------------------------------------------------------
// session
// ---------------------------------------------------------------------------------------

#[test]
fn a_session_is_announced_to_both_and_makes_both_calling() {
    let draws = Rc::new(Cell::new(0));
    let mut net =
        Net::build(ClientListPacing::default(), scripted_random(vec![0x0123_4567_89ab_cdef], draws));
    net.register(alice(), "alice");
    net.register(bob(), "bob");
    net.register(carol(), "carol");
    net.settle();
    let sent = net.send(alice(), r#"{"cmd":"session","opponentId":" bob ","sessionId":"x","extra":1}"#);
    let s = "0123456789abcdef";
    assert_eq!(
        sent,
        vec![(alice(), session_reply(s)), (alice(), ssu(s, 1)), (bob(), ssu(s, 1))],
        "the reply, then ssu 1 to both"
    );
    // The state is sent as a number, the id as a string.
    assert_eq!(json(&sent[1].1).get_u64("state"), Some(1));
    let snap = net.snapshot();
    assert_eq!(snap.sessions.len(), 1);
    let key = SessionId::new(0x0123_4567_89ab_cdef);
    assert_eq!(snap.sessions[&key], ([alice(), bob()], SessionState::New));
    assert_eq!(snap.session_of(alice()), Some(key));
    assert_eq!(snap.session_of(bob()), Some(key));
    assert_eq!(net.core.stats().sessions, 1);
    // CALLING clients get no clu; the WAIT one sees both as CALLING.
    let lists = net.lists();
    assert_eq!(lists.keys().copied().collect::<Vec<_>>(), vec![carol()]);
    assert_eq!(lists[&carol()], vec![entries(&[("alice", 2), ("bob", 2), ("carol", 1)])]);
}

#[test]
fn session_ids_are_16_lowercase_hex_digits_of_the_random_value() {
    for (value, text) in [
        (0, "0000000000000000"),
        (1, "0000000000000001"),
        (0xdead_beef, "00000000deadbeef"),
        (u64::MAX, "ffffffffffffffff"),
        (0xa000_0000_0000_000f, "a00000000000000f"),
    ] {
        let draws = Rc::new(Cell::new(0));
        let mut net = Net::build(ClientListPacing::default(), scripted_random(vec![value], draws.clone()));
        net.register(alice(), "alice");
        net.register(bob(), "bob");
        assert_eq!(net.open(alice(), "bob"), text);
        assert_eq!(draws.get(), 1, "one draw per session");
        // The id works for relaying, from either side.
        let sent = net.send(bob(), &relay_msg(Relay::IceCandidate, text, Some("null")));
        assert_sent(&sent, &[(alice(), relayed(Relay::IceCandidate, text, "bob", Some("null")))]);
    }
    // With the default (counting) source every id has the shape.
    let mut net = three();
    net.register(dave(), "dave");
    for (from, to) in [(alice(), "bob"), (carol(), "dave")] {
        let s = net.open(from, to);
        assert!(s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{s}");
    }
}

#[test]
fn the_default_core_draws_ids_from_the_operating_system() {
    let mut net = Net::new();
    net.core = Signaling::default();
    for (who, sid) in [(alice(), "alice"), (bob(), "bob"), (carol(), "carol"), (dave(), "dave")] {
        net.register(who, sid);
    }
    let first = net.open(alice(), "bob");
    let second = net.open(carol(), "dave");
    for s in [&first, &second] {
        assert!(SessionId::parse(s).is_some(), "{s}");
    }
    assert_ne!(first, second);
}

#[test]
fn a_colliding_session_id_is_drawn_again() {
    let draws = Rc::new(Cell::new(0));
    let mut net = Net::build(ClientListPacing::default(), scripted_random(vec![5, 5, 5, 6], draws.clone()));
    for (who, sid) in [(alice(), "alice"), (bob(), "bob"), (carol(), "carol"), (dave(), "dave")] {
        net.register(who, sid);
    }
    assert_eq!(net.open(alice(), "bob"), "0000000000000005");
    assert_eq!(net.open(carol(), "dave"), "0000000000000006");
    assert_eq!(draws.get(), 4, "5 was drawn twice more and refused");
    let snap = net.snapshot();
    assert_eq!(snap.sessions[&SessionId::new(5)].0, [alice(), bob()]);
    assert_eq!(snap.sessions[&SessionId::new(6)].0, [carol(), dave()]);
    // Each session still reaches only its own members.
    let sent = net.send(dave(), &relay_msg(Relay::Call, "0000000000000006", Some("1")));
    assert_sent(
        &sent,
        &[
            (carol(), relayed(Relay::Call, "0000000000000006", "dave", Some("1"))),
            (carol(), ssu("0000000000000006", 2)),
            (dave(), ssu("0000000000000006", 2)),
        ],
    );
}

#[test]
fn after_a_session_closes_both_can_open_new_ones() {
    let mut net = three();
    let first = net.open(alice(), "bob");
    net.send(alice(), &relay_msg(Relay::Stop, &first, None));
    let second = net.open(bob(), "alice");
    assert_ne!(first, second);
    net.send(alice(), &relay_msg(Relay::Reject, &second, None));
    let third = net.open(carol(), "alice");
    assert_eq!(net.snapshot().session_of(carol()), SessionId::parse(&third));
    net.error(bob(), &relay_msg(Relay::Stop, &third, None), ErrorCode::SessionNotFound);
}

// ---------------------------------------------------------------------------------------
// call, accept, icecandidate, reject, stop
// ---------------------------------------------------------------------------------------

/// Payloads of every JSON type, including escapes and unicode; each must arrive as sent.
const PAYLOADS: [&str; 13] = [
    "null",
    "true",
    "false",
    "0",
    "-0",
    "1.50e2",
    r#""plain""#,
    r#""\"},{\"offer\":1""#,
    r#""é漢字🙂 \u00e9\ud83d\ude00""#,
    "[]",
    r#"[1,[2,{"a":"]}"}],3]"#,
    "{}",
    r#"{"type":"offer","sdp":"v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\n","nested":{"k":[null,{"x":"\u0000"}]}}"#,
];

#[test]
fn relayed_messages_carry_exactly_the_protocols_fields() {
    let mut net = three();
    for action in [Relay::Call, Relay::Accept, Relay::IceCandidate] {
        let field = action.payload_field().expect("a payload field");
        for payload in PAYLOADS {
            let s = net.open(alice(), "bob");
            // Extra fields, a forged opponentId, and the other commands' payload fields.
            let raw = format!(
                r#"{{"opponentId":"mallory","cmd":"{}","extra":{{"a":1}},"sessionId":" {s} ","{field}":{payload},"offer_":1,"answer2":2,"data":3,"sId":"x","state":3}}"#,
                action.cmd()
            );
            let sent = net.send(alice(), &raw);
            let to_bob: Vec<&String> = sent.iter().filter(|(to, _)| *to == bob()).map(|(_, t)| t).collect();
            let relay = to_bob.first().expect("bob gets the relay");
            assert_eq!(json(relay), json(&relayed(action, &s, "alice", Some(payload))), "{raw}");
            // Byte-identical payload, not just an equal value.
            assert!(relay.contains(&format!(r#""{field}":{payload}"#)), "{relay} lacks {payload}");
            net.send(alice(), &relay_msg(Relay::Stop, &s, None));
        }
    }
    // reject and stop carry no payload even when the sender adds one.
    for action in [Relay::Reject, Relay::Stop] {
        let s = net.open(bob(), "alice");
        let raw = format!(
            r#"{{"cmd":"{}","sessionId":"{s}","opponentId":"carol","offer":{{}},"answer":1,"icecandidate":null,"data":[]}}"#,
            action.cmd()
        );
        let sent = net.send(bob(), &raw);
        assert_sent(
            &sent,
            &[(alice(), relayed(action, &s, "bob", None)), (alice(), ssu(&s, 4)), (bob(), ssu(&s, 4))],
        );
    }
}

#[test]
fn the_relayed_opponent_id_is_the_senders_own_escaped_sid() {
    let mut net = Net::new();
    let sent = net.send(alice(), r#"{"cmd":"sId","sId":"a\"l\\i/ce"}"#);
    assert_eq!(sent, vec![(alice(), r#"{"cmd":"sId","sId":"a\"l\\i/ce"}"#.to_owned())]);
    net.register(bob(), "bob");
    let sent = net.send(bob(), &session_msg(r#"a\"l\\i/ce"#));
    let s = json(&sent[0].1).get_str("sessionId").expect("id").to_owned();
    let sent = net.send(alice(), &relay_msg(Relay::Call, &s, Some("{}")));
    let relay = json(&sent[0].1);
    assert_eq!(relay.get_str("opponentId"), Some("a\"l\\i/ce"));
    let sent = net.disconnect(alice());
    assert_eq!(json(&sent[0].1).get_str("opponentId"), Some("a\"l\\i/ce"));
}

#[test]
fn state_updates_follow_the_relay_and_only_on_real_changes() {
    let mut net = three();
    let s = net.open(alice(), "bob");
    let step = |net: &mut Net, from: ConnId, action: Relay, state: Option<u8>| {
        let (me, opponent, me_sid) =
            if from == alice() { (alice(), bob(), "alice") } else { (bob(), alice(), "bob") };
        let payload = action.payload_field().map(|_| r#"{"n":1}"#);
        let sent = net.send(me, &relay_msg(action, &s, payload));
        let mut expected = vec![(opponent, relayed(action, &s, me_sid, payload))];
        if let Some(state) = state {
            expected.push((opponent, ssu(&s, state)));
            expected.push((me, ssu(&s, state)));
        }
        assert_sent(&sent, &expected);
    };
    let state = |net: &Net| net.snapshot().sessions.get(&SessionId::parse(&s).expect("id")).map(|s| s.1);
    step(&mut net, alice(), Relay::IceCandidate, None);
    assert_eq!(state(&net), Some(SessionState::New));
    step(&mut net, alice(), Relay::Call, Some(2));
    step(&mut net, alice(), Relay::Call, None); // a second call while PENDING
    step(&mut net, bob(), Relay::Call, None); // from either side
    step(&mut net, bob(), Relay::IceCandidate, None);
    assert_eq!(state(&net), Some(SessionState::Pending));
    step(&mut net, bob(), Relay::Accept, Some(3));
    step(&mut net, bob(), Relay::Accept, None);
    step(&mut net, alice(), Relay::IceCandidate, None);
    assert_eq!(state(&net), Some(SessionState::Active));
    step(&mut net, alice(), Relay::Call, Some(2)); // renegotiation: ACTIVE back to PENDING
    step(&mut net, alice(), Relay::Accept, Some(3)); // no order is enforced
    assert_eq!(state(&net), Some(SessionState::Active));
    // The relays changed no client state: the list owes nothing.
    net.settle();
    let version = net.snapshot().list_version;
    step(&mut net, bob(), Relay::IceCandidate, None);
    assert_eq!(net.snapshot().list_version, version);

    // accept straight from NEW.
    let mut net = three();
    let s = net.open(alice(), "bob");
    let sent = net.send(bob(), &relay_msg(Relay::Accept, &s, Some("null")));
    assert_sent(
        &sent,
        &[
            (alice(), relayed(Relay::Accept, &s, "bob", Some("null"))),
            (alice(), ssu(&s, 3)),
            (bob(), ssu(&s, 3)),
        ],
    );
}

#[test]
fn reject_and_stop_close_the_session_for_both() {
    for action in [Relay::Reject, Relay::Stop] {
        for (from, other, from_sid) in [(alice(), bob(), "alice"), (bob(), alice(), "bob")] {
            for prior in [None, Some(Relay::Call), Some(Relay::Accept)] {
                let mut net = three();
                let s = net.open(alice(), "bob");
                if let Some(prior) = prior {
                    net.send(alice(), &relay_msg(prior, &s, Some("{}")));
                }
                net.settle();
                let version = net.snapshot().list_version;
                let sent = net.send(from, &relay_msg(action, &s, None));
                assert_sent(
                    &sent,
                    &[(other, relayed(action, &s, from_sid, None)), (other, ssu(&s, 4)), (from, ssu(&s, 4))],
                );
                let snap = net.snapshot();
                assert!(snap.sessions.is_empty());
                assert_eq!(snap.session_of(alice()), None);
                assert_eq!(snap.session_of(bob()), None);
                assert_eq!(snap.list_version, version + 1, "the client list changed");
                assert_eq!(net.core.stats().sessions, 0);
                for who in [alice(), bob()] {
                    for action in ACTIONS {
                        let payload = action.payload_field().map(|_| "1");
                        net.error(who, &relay_msg(action, &s, payload), ErrorCode::SessionNotFound);
                    }
                }
                // Both are back in WAIT and get the current list.
                let lists = net.lists();
                let now = entries(&[("alice", 1), ("bob", 1), ("carol", 1)]);
                for who in [alice(), bob(), carol()] {
                    assert_eq!(lists[&who], vec![now.clone()]);
                }
            }
        }
    }
}

#[test]
fn a_closing_opponent_gives_9401_and_closes_the_session() {
    for action in ACTIONS {
        for (from, other) in [(alice(), bob()), (bob(), alice())] {
            let mut net = three();
            let s = net.open(alice(), "bob");
            net.send(alice(), &relay_msg(Relay::Call, &s, Some("{}")));
            net.settle();
            let version = net.snapshot().list_version;
            net.out.closing.insert(other);
            let sent = net.send(from, &relay_msg(action, &s, action.payload_field().map(|_| "{}")));
            assert_eq!(sent, vec![(from, error(ErrorCode::OpponentGone)), (from, ssu(&s, 4))], "{action:?}");
            let snap = net.snapshot();
            assert!(snap.sessions.is_empty());
            assert_eq!(snap.session_of(alice()), None);
            assert_eq!(snap.session_of(bob()), None);
            assert_eq!(snap.list_version, version + 1);
            net.error(from, &relay_msg(Relay::Stop, &s, None), ErrorCode::SessionNotFound);
            // The sender is in WAIT: it gets the list (the closing one is given nothing).
            let lists = net.lists();
            let now = entries(&[("alice", 1), ("bob", 1), ("carol", 1)]);
            assert_eq!(lists[&from], vec![now.clone()]);
            assert_eq!(lists[&carol()], vec![now]);
            assert!(!lists.contains_key(&other));
            // When the closing connection is reported gone, nobody gets a leave.
            assert_eq!(net.disconnect(other), vec![]);
            assert_eq!(net.core.sid_of(other), None);
            // And the sender can start over.
            net.open(from, "carol");
        }
    }
}

#[test]
fn session_ids_are_normalised_like_any_top_level_field() {
    let draws = Rc::new(Cell::new(0));
    let mut net =
        Net::build(ClientListPacing::default(), scripted_random(vec![0x1234_5678_9012_3456], draws));
    net.register(alice(), "alice");
    net.register(bob(), "bob");
    let s = net.open(alice(), "bob");
    assert_eq!(s, "1234567890123456");
    // Trimmed string.
    let sent =
        net.send(bob(), &format!(r#"{{"cmd":"icecandidate","sessionId":"\t{s} ","icecandidate":null}}"#));
    assert_sent(&sent, &[(alice(), relayed(Relay::IceCandidate, &s, "bob", Some("null")))]);
    // A JSON number whose decimal text is the id.
    let sent = net.send(bob(), r#"{"cmd":"icecandidate","sessionId":1234567890123456,"icecandidate":1}"#);
    assert_sent(&sent, &[(alice(), relayed(Relay::IceCandidate, &s, "bob", Some("1")))]);
    // A number whose text is not 16 hex digits names no session.
    let sent = net.send(bob(), r#"{"cmd":"stop","sessionId":1.234567890123456e15}"#);
    assert_sent(
        &sent,
        &[(alice(), relayed(Relay::Stop, &s, "bob", None)), (alice(), ssu(&s, 4)), (bob(), ssu(&s, 4))],
    );
    net.error(bob(), r#"{"cmd":"stop","sessionId":123456789012345}"#, ErrorCode::SessionNotFound);
    net.error(bob(), r#"{"cmd":"stop","sessionId":1234567890123456.5}"#, ErrorCode::SessionNotFound);
}

// ---------------------------------------------------------------------------------------
// notify
// ---------------------------------------------------------------------------------------

#[test]
fn notify_reaches_its_target_with_or_without_data() {
    let mut net = three();
    let sent = net
        .send(alice(), r#"{"cmd":"notify","opponentId":" bob ","type":" ring ","extra":1,"sessionId":"x"}"#);
    assert_eq!(sent, vec![(bob(), r#"{"cmd":"notify","opponentId":"alice","type":"ring"}"#.to_owned())]);
    // A number type becomes its text.
    let sent = net.send(alice(), r#"{"cmd":"notify","opponentId":"bob","type":4.0}"#);
    assert_sent(&sent, &[(bob(), notification("alice", "4", None))]);
    // A long type is fine (the id limit is for ids).
    let long = "t".repeat(200);
    let sent = net.send(alice(), &notify_msg("bob", &long, None));
    assert_sent(&sent, &[(bob(), notification("alice", &long, None))]);
    for data in PAYLOADS {
        let sent = net.send(carol(), &notify_msg("alice", "chat", Some(data)));
        assert_sent(&sent, &[(alice(), notification("carol", "chat", Some(data)))]);
        assert!(sent[0].1.contains(&format!(r#""data":{data}"#)), "{} lacks {data}", sent[0].1);
    }
}

#[test]
fn notify_works_in_any_client_state_and_changes_nothing() {
    let mut net = three();
    net.register(dave(), "dave");
    net.open(alice(), "bob");
    net.settle();
    let before = net.snapshot();
    for (from, from_sid, to, to_sid) in [
        (alice(), "alice", bob(), "bob"),     // CALLING to its own opponent
        (alice(), "alice", carol(), "carol"), // CALLING to WAIT
        (carol(), "carol", bob(), "bob"),     // WAIT to CALLING
        (carol(), "carol", dave(), "dave"),   // WAIT to WAIT
    ] {
        let sent = net.send(from, &notify_msg(to_sid, "ring", Some(r#"{"x":[1]}"#)));
        assert_sent(&sent, &[(to, notification(from_sid, "ring", Some(r#"{"x":[1]}"#)))]);
    }
    assert_eq!(net.snapshot(), before);
    assert_eq!(net.poll(), None);
}

#[test]
fn notify_to_a_closing_target_is_dropped_without_an_error() {
    // Not spelled out by PROTOCOL.md (9401 is for session relays); the core's documented
    // choice: notify promises no delivery, so the sender hears nothing.
    let mut net = three();
    net.out.closing.insert(bob());
    let before = net.snapshot();
    assert_eq!(net.send(alice(), &notify_msg("bob", "ring", None)), vec![]);
    assert_eq!(net.snapshot(), before);
}

// ---------------------------------------------------------------------------------------
// disconnect: the leave procedure
// ---------------------------------------------------------------------------------------

#[test]
fn a_departure_in_a_session_sends_leave_then_ssu_4_to_the_opponent() {
    for (gone, stays, gone_sid) in [(alice(), bob(), "alice"), (bob(), alice(), "bob")] {
        for prior in [None, Some(Relay::Call), Some(Relay::Accept)] {
            let mut net = three();
            let s = net.open(alice(), "bob");
            if let Some(prior) = prior {
                net.send(alice(), &relay_msg(prior, &s, Some("{}")));
            }
            net.settle();
            let version = net.snapshot().list_version;
            let sent = net.disconnect(gone);
            assert_eq!(sent, vec![(stays, leave(&s, gone_sid)), (stays, ssu(&s, 4))]);
            assert_eq!(
                json(&sent[0].1),
                json(&format!(r#"{{"cmd":"leave","sessionId":"{s}","opponentId":"{gone_sid}"}}"#))
            );
            let snap = net.snapshot();
            assert!(snap.sessions.is_empty());
            assert_eq!(snap.session_of(stays), None);
            assert_eq!(snap.client(gone), None);
            assert_eq!(snap.list_version, version + 1);
            assert_eq!(net.core.stats().registered, 2);
            net.error(stays, &relay_msg(Relay::Stop, &s, None), ErrorCode::SessionNotFound);
            net.error(stays, &notify_msg(gone_sid, "x", None), ErrorCode::NotifyTargetNotFound);
            net.error(stays, &session_msg(gone_sid), ErrorCode::OpponentNotFound);
            // The opponent is back in WAIT and gets the list without the departed.
            let lists = net.lists();
            let stays_sid = if stays == alice() { "alice" } else { "bob" };
            let now = entries(&[(stays_sid, 1), ("carol", 1)]);
            assert_eq!(lists[&stays], vec![now.clone()]);
            assert_eq!(lists[&carol()], vec![now]);
            assert!(!lists.contains_key(&gone));
            // The opponent can start a new session at once.
            net.open(stays, "carol");
        }
    }
}

#[test]
fn a_departure_in_wait_only_changes_the_list() {
    let mut net = three();
    let s = net.open(alice(), "bob");
    net.settle();
    let version = net.snapshot().list_version;
    assert_eq!(net.disconnect(carol()), vec![]);
    assert_eq!(net.core.stats().registered, 2);
    assert_eq!(net.snapshot().sessions.len(), 1);
    // The list changed, but nobody is in WAIT to receive it.
    assert_eq!(net.snapshot().list_version, version + 1);
    assert!(net.lists().is_empty());
    net.send(alice(), &relay_msg(Relay::Stop, &s, None));
    let lists = net.lists();
    assert_eq!(lists[&alice()], vec![entries(&[("alice", 1), ("bob", 1)])]);
}

#[test]
fn disconnecting_an_unregistered_or_unknown_connection_does_nothing() {
    let mut net = three();
    net.open(alice(), "bob");
    net.settle();
    let before = net.snapshot();
    let stats = net.core.stats();
    for who in [conn(5), conn(100_000), ConnId::new(0, 1), ConnId::new(1, 7), ConnId::new(2, u32::MAX)] {
        assert_eq!(net.disconnect(who), vec![], "{who:?}");
        assert_eq!(net.snapshot(), before, "{who:?}");
        assert_eq!(net.core.stats(), stats);
        assert_eq!(net.poll(), None, "the list did not change");
    }
    // A connection that sent only garbage, then left.
    net.send(conn(6), "{");
    assert_eq!(net.disconnect(conn(6)), vec![]);
    assert_eq!(net.snapshot(), before);
    // Leaving twice: the second time is a no-op.
    net.disconnect(carol());
    let after = net.snapshot();
    assert_eq!(net.disconnect(carol()), vec![]);
    assert_eq!(net.snapshot(), after);
}

#[test]
fn a_stale_conn_id_never_reaches_the_client_now_in_its_slot() {
    let mut net = Net::new();
    let old = ConnId::new(0, 0);
    let new = ConnId::new(0, 1);
    net.register(old, "alice");
    net.register(bob(), "bob");
    let s = net.open(bob(), "alice");
    assert_eq!(net.disconnect(old), vec![(bob(), leave(&s, "alice")), (bob(), ssu(&s, 4))]);
    // The slot is reused by a new connection that registers the same sId.
    net.register(new, "alice");
    assert_eq!(net.core.sid_of(old), None);
    assert_eq!(net.core.sid_of(new), Some("alice"));
    net.error(bob(), &relay_msg(Relay::Stop, &s, None), ErrorCode::SessionNotFound);
    // A late disconnect for the old id leaves the new client alone.
    let before = net.snapshot();
    assert_eq!(net.disconnect(old), vec![]);
    assert_eq!(net.snapshot(), before);
    // A message from the old id is from an unregistered connection, answered to it alone.
    net.error(old, &notify_msg("bob", "ring", None), ErrorCode::NotRegistered);
    net.error(old, &relay_msg(Relay::Stop, &s, None), ErrorCode::NotRegistered);
    // Everything for "alice" now goes to the new id, never the old.
    let sent = net.send(bob(), &notify_msg("alice", "ring", None));
    assert_eq!(sent, vec![(new, notification("bob", "ring", None))]);
    let s2 = net.open(bob(), "alice");
    let sent = net.send(bob(), &relay_msg(Relay::Call, &s2, Some("{}")));
    assert!(sent.iter().all(|(to, _)| *to != old), "{sent:?}");
    assert_eq!(net.disconnect(bob()), vec![(new, leave(&s2, "bob")), (new, ssu(&s2, 4))]);
    let lists = net.lists();
    assert_eq!(lists.keys().copied().collect::<Vec<_>>(), vec![new]);
}

// ---------------------------------------------------------------------------------------
// clu
// ---------------------------------------------------------------------------------------

#[test]
fn several_changes_between_polls_make_one_list_with_the_final_state() {
    let mut net = Net::new();
    net.register(alice(), "alice");
    net.register(bob(), "bob");
    net.register(carol(), "carol");
    assert_eq!(net.poll(), None, "the first round runs at once");
    let lists = net.take_lists();
    let all = entries(&[("alice", 1), ("bob", 1), ("carol", 1)]);
    for who in [alice(), bob(), carol()] {
        assert_eq!(lists[&who], vec![all.clone()]);
    }
    assert_eq!(net.core.stats().client_lists_sent, 3);

    net.at(10);
    let s = net.open(alice(), "bob");
    net.register(dave(), "dave");
    net.register(erin(), "erin");
    net.disconnect(erin());
    net.at(20);
    net.send(alice(), &relay_msg(Relay::Call, &s, Some("{}")));
    assert_eq!(net.poll(), Some(net.start + ms(50)), "paced: 50 ms after the last round");
    assert!(net.out.sent.is_empty());
    net.at(50);
    assert_eq!(net.poll(), None);
    let lists = net.take_lists();
    let now = entries(&[("alice", 2), ("bob", 2), ("carol", 1), ("dave", 1)]);
    assert_eq!(lists, BTreeMap::from([(carol(), vec![now.clone()]), (dave(), vec![now])]));

    net.at(500);
    net.send(bob(), &relay_msg(Relay::Stop, &s, None));
    net.register(conn(5), "erin");
    net.disconnect(dave());
    assert_eq!(net.poll(), None, "long after the last round: at once");
    let lists = net.take_lists();
    let now = entries(&[("alice", 1), ("bob", 1), ("carol", 1), ("erin", 1)]);
    assert_eq!(lists.len(), 4);
    for who in [alice(), bob(), carol(), conn(5)] {
        assert_eq!(lists[&who], vec![now.clone()], "{who:?}");
    }
    assert_eq!(net.core.stats().client_lists_sent, 3 + 2 + 4);
}

#[test]
fn lists_go_to_exactly_the_wait_clients() {
    let mut net = three();
    net.register(dave(), "dave");
    net.register(erin(), "erin");
    net.settle();
    let s = net.open(alice(), "bob");
    net.open(carol(), "dave");
    let lists = net.lists();
    let now = entries(&[("alice", 2), ("bob", 2), ("carol", 2), ("dave", 2), ("erin", 1)]);
    assert_eq!(lists, BTreeMap::from([(erin(), vec![now])]));
    // Many changes over many rounds: the CALLING clients never get one.
    for (at, i) in (100..).step_by(100).zip(10..20) {
        net.at(at);
        net.register(conn(i), &format!("c{i}"));
        let lists = net.lists();
        assert!(lists.keys().all(|who| ![alice(), bob(), carol(), dave()].contains(who)), "{lists:?}");
        assert!(lists.contains_key(&conn(i)) && lists.contains_key(&erin()));
    }
    // Returning to WAIT brings the current list, to exactly the two returning clients and
    // the other WAIT ones.
    net.at(5_000);
    net.send(alice(), &relay_msg(Relay::Stop, &s, None));
    let lists = net.lists();
    let waiting: Vec<ConnId> = [alice(), bob(), erin()].into_iter().chain((10..20).map(conn)).collect();
    assert_eq!(lists.keys().copied().collect::<HashSet<_>>(), waiting.iter().copied().collect());
    let expected = net.snapshot().view();
    assert_eq!(expected[0], ("alice".to_owned(), 1));
    assert_eq!(expected[2], ("carol".to_owned(), 2));
    for who in waiting {
        assert_eq!(lists[&who], vec![expected.clone()]);
    }
    net.disconnect(dave());
    let lists = net.lists();
    assert!(lists.contains_key(&carol()), "carol returned to WAIT through dave's leave");
    assert_eq!(lists[&carol()][0][2], ("carol".to_owned(), 1));
}

#[test]
fn lists_are_in_registration_order() {
    let mut net = Net::new();
    for (i, sid) in ["zed", "amy", "mike", "bob"].into_iter().enumerate() {
        net.register(conn(i as u32), sid);
    }
    let lists = net.lists();
    assert_eq!(lists[&conn(0)], vec![entries(&[("zed", 1), ("amy", 1), ("mike", 1), ("bob", 1)])]);
    // Leaving and coming back puts a client last, whatever its sId or slot.
    net.disconnect(conn(1));
    net.register(ConnId::new(1, 1), "amy");
    net.disconnect(conn(0));
    net.register(conn(9), "aaa");
    let lists = net.lists();
    let now = entries(&[("mike", 1), ("bob", 1), ("amy", 1), ("aaa", 1)]);
    for who in [ConnId::new(1, 1), conn(2), conn(3), conn(9)] {
        assert_eq!(lists[&who], vec![now.clone()], "{who:?}");
    }
    // An empty registry owes nobody anything.
    for who in [ConnId::new(1, 1), conn(2), conn(3), conn(9)] {
        net.disconnect(who);
    }
    assert!(net.lists().is_empty());
}

#[test]
fn no_second_list_while_one_is_unsent_and_the_newest_once_it_clears() {
    let mut net = Net::new();
    net.register(alice(), "alice");
    net.register(bob(), "bob");
    assert_eq!(net.poll(), None);
    let first = entries(&[("alice", 1), ("bob", 1)]);
    assert_eq!(net.take_lists()[&alice()], vec![first.clone()]);

    // alice's list is still unsent when the next ones come.
    net.out.list_unsent.insert(alice());
    net.at(10);
    net.register(carol(), "carol");
    assert_eq!(net.poll(), Some(net.start + ms(50)));
    net.at(50);
    let retry = net.poll().expect("alice is owed a list: a retry is scheduled");
    assert!(retry > net.now && retry <= net.now + ms(50), "retry at {:?}", retry - net.start);
    let second = entries(&[("alice", 1), ("bob", 1), ("carol", 1)]);
    assert_eq!(net.take_lists(), BTreeMap::from([(bob(), vec![second.clone()]), (carol(), vec![second])]));
    // Retries while it stays unsent give nothing.
    net.now = retry;
    let retry = net.poll().expect("still owed");
    assert!(net.out.sent.is_empty());
    // A change meanwhile: the others get it, alice still not.
    net.now = retry - ms(10);
    net.register(dave(), "dave");
    assert_eq!(net.poll(), Some(retry));
    net.now = retry;
    let retry = net.poll().expect("still owed");
    let third = entries(&[("alice", 1), ("bob", 1), ("carol", 1), ("dave", 1)]);
    let lists = net.take_lists();
    assert!(!lists.contains_key(&alice()));
    assert_eq!(lists[&dave()], vec![third.clone()]);
    // It clears: at the next retry alice gets the newest list, once.
    net.out.list_unsent.remove(&alice());
    net.now = retry;
    assert_eq!(net.poll(), None);
    assert_eq!(net.take_lists(), BTreeMap::from([(alice(), vec![third])]));
    assert_eq!(net.out.lists_given[&alice()], 2, "the first list and the newest, nothing between");
    net.now += Duration::from_secs(1);
    assert_eq!(net.poll(), None);
    assert!(net.out.sent.is_empty());
}

#[test]
fn an_unsent_list_held_while_calling_is_replaced_on_return_to_wait() {
    let mut net = three();
    net.out.list_unsent.insert(alice());
    let s = net.open(alice(), "bob");
    net.at(1_000);
    net.register(dave(), "dave");
    net.at(2_000);
    net.send(bob(), &relay_msg(Relay::Stop, &s, None));
    net.out.take();
    assert!(!net.settle_until(net.start + ms(2_300)).contains_key(&alice()));
    net.out.list_unsent.remove(&alice());
    let lists = net.settle_until(net.start + ms(2_600));
    assert_eq!(lists[&alice()], vec![entries(&[("alice", 1), ("bob", 1), ("carol", 1), ("dave", 1)])]);
}

impl Net {
    /// Polls at every time the core asks for up to `until`, then moves the clock there.
    fn settle_until(&mut self, until: Instant) -> BTreeMap<ConnId, Vec<Vec<(String, u64)>>> {
        let mut lists: BTreeMap<ConnId, Vec<Vec<(String, u64)>>> = BTreeMap::new();
        for _ in 0..100_000 {
            match self.poll() {
                Some(due) if due <= until => self.now = self.now.max(due),
                _ => break,
            }
        }
        for (to, text) in self.out.take() {
            lists.entry(to).or_default().push(clu_entries(&text));
        }
        self.now = self.now.max(until);
        lists
    }
}

#[test]
fn a_new_round_waits_for_min_interval() {
    let mut net = Net::new();
    net.register(alice(), "alice");
    assert_eq!(net.poll(), None);
    assert_eq!(net.take_lists().len(), 1);
    net.at(10);
    net.register(bob(), "bob");
    let due = net.start + ms(50);
    assert_eq!(net.poll(), Some(due));
    for early in [10, 30, 49] {
        net.at(early);
        assert_eq!(net.poll(), Some(due), "not before min_interval");
        assert!(net.out.sent.is_empty());
    }
    net.at(50);
    assert_eq!(net.poll(), None);
    assert_eq!(net.take_lists().len(), 2);
    // A change long after the last round is delivered at once.
    net.at(1_000);
    net.register(carol(), "carol");
    assert_eq!(net.poll(), None);
    assert_eq!(net.take_lists().len(), 3);
    // Custom intervals are honoured.
    let pacing = ClientListPacing { min_interval: ms(120), ..ClientListPacing::default() };
    let mut net = Net::build(pacing, counting_random());
    net.register(alice(), "alice");
    net.settle();
    net.at(1);
    net.register(bob(), "bob");
    assert_eq!(net.poll(), Some(net.start + ms(120)));
}

#[test]
fn bandwidth_spaces_rounds_but_small_lists_stay_within_the_bound() {
    for small_list_clients in [2, 1000] {
        let pacing = ClientListPacing {
            min_interval: ms(50),
            bytes_per_second: 1000,
            small_list_clients,
            small_list_max_interval: ms(200),
            ..ClientListPacing::default()
        };
        let mut net = Net::build(pacing, counting_random());
        net.register(alice(), "alice");
        net.register(bob(), "bob");
        net.register(carol(), "carol");
        assert_eq!(net.poll(), None);
        let bytes = net.core.stats().client_list_bytes;
        let sent: u64 = net.out.take().iter().map(|(_, text)| text.len() as u64).sum();
        assert_eq!(bytes, sent, "the byte counter counts what was sent");
        net.at(1);
        net.register(dave(), "dave");
        let by_bandwidth = Duration::from_secs_f64(bytes as f64 / 1000.0);
        assert!(by_bandwidth > ms(200), "the test needs a long gap: {by_bandwidth:?}");
        let expected = if small_list_clients < 4 { by_bandwidth } else { ms(200) };
        assert_eq!(net.poll(), Some(net.start + expected), "with small_list_clients {small_list_clients}");
    }
}

#[test]
fn the_byte_budget_splits_a_round_across_polls() {
    let pacing = ClientListPacing { bytes_per_poll: 1, ..ClientListPacing::default() };
    let mut net = Net::build(pacing, counting_random());
    for i in 0..5 {
        net.register(conn(i), &format!("c{i}"));
    }
    let all: Vec<(String, u64)> = (0..5).map(|i| (format!("c{i}"), 1)).collect();
    // One list per poll, each poll asking to be called again at once.
    for i in 0..5 {
        let due = net.poll();
        let sent = net.out.take();
        assert_eq!(sent.len(), 1, "poll {i}: {sent:?}");
        assert_eq!(sent[0].0, conn(i), "registration order");
        assert_eq!(clu_entries(&sent[0].1), all);
        if i < 4 {
            assert_eq!(due, Some(net.now), "poll {i}: the round is under way");
        } else {
            assert_eq!(due, None, "the round ended");
        }
    }
    // Two lists' worth of budget per poll.
    net.at(100);
    net.register(conn(5), "c5");
    let list_len = {
        let mut all = all.clone();
        all.push(("c5".to_owned(), 1));
        let body: Vec<String> = all.iter().map(|(s, n)| format!(r#"{{"sId":"{s}","state":{n}}}"#)).collect();
        format!(r#"{{"cmd":"clu","list":[{}]}}"#, body.join(",")).len()
    };
    net.core.client_lists.pacing.bytes_per_poll = 2 * list_len;
    let mut per_poll = Vec::new();
    for _ in 0..10 {
        let due = net.poll();
        per_poll.push(net.out.take().len());
        if due.is_none() {
            break;
        }
        assert_eq!(due, Some(net.now));
    }
    assert_eq!(per_poll, vec![2, 2, 2]);
}

#[test]
fn a_change_during_a_split_round_reaches_everyone() {
    let pacing = ClientListPacing { bytes_per_poll: 1, ..ClientListPacing::default() };
    let mut net = Net::build(pacing, counting_random());
    for (who, sid) in [(alice(), "alice"), (bob(), "bob"), (carol(), "carol")] {
        net.register(who, sid);
    }
    assert_eq!(net.poll(), Some(net.now));
    let old = entries(&[("alice", 1), ("bob", 1), ("carol", 1)]);
    assert_eq!(net.take_lists(), BTreeMap::from([(alice(), vec![old])]));
    // Mid-round: dave joins, carol (not yet served) opens a session with him.
    net.register(dave(), "dave");
    net.open(carol(), "dave");
    let new = entries(&[("alice", 1), ("bob", 1), ("carol", 2), ("dave", 2)]);
    // carol and dave are CALLING: the round ends with bob, and alice is owed the newer list.
    let due = net.poll().expect("another round for alice");
    assert_eq!(net.take_lists(), BTreeMap::from([(bob(), vec![new.clone()])]), "the newest list");
    assert!(due > net.now && due <= net.now + ms(250));
    net.now = due;
    let lists = net.lists();
    assert_eq!(lists, BTreeMap::from([(alice(), vec![new])]));
}

#[test]
fn list_counters_count_lists_and_bytes() {
    let mut net = three();
    let stats = net.core.stats();
    assert_eq!(stats.client_lists_sent, 3);
    assert_eq!(stats.registered, 3);
    assert_eq!(stats.sessions, 0);
    net.at(1_000);
    net.register(dave(), "dave");
    let sent = net.settle();
    let stats2 = net.core.stats();
    assert_eq!(stats2.client_lists_sent, 3 + 4);
    assert_eq!(
        stats2.client_list_bytes - stats.client_list_bytes,
        sent.iter().map(|(_, t)| t.len() as u64).sum::<u64>()
    );
    // A connection on its way out is not counted: nothing reaches it.
    net.out.closing.insert(dave());
    net.at(2_000);
    net.register(erin(), "erin");
    let sent = net.settle();
    assert_eq!(sent.len(), 4);
    assert_eq!(net.core.stats().client_lists_sent, 7 + 4);
}

/// Records client lists cheaply: each distinct list once, and per connection which list it
/// was last given and when.
struct ListLog {
    now: Instant,
    lists: Vec<Rc<[u8]>>,
    last: HashMap<ConnId, (usize, Instant)>,
}

impl Outbox for ListLog {
    fn send(&mut self, _to: ConnId, _message: &[u8]) -> Delivery {
        Delivery::Queued
    }

    fn messages_queued(&self, _to: ConnId) -> u64 {
        0
    }

    fn take_over(&mut self, _old: ConnId) {}

    fn send_client_list(&mut self, to: ConnId, list: &Rc<[u8]>) -> ListDelivery {
        if self.lists.last().is_none_or(|last| **last != **list) {
            self.lists.push(Rc::clone(list));
        }
        self.last.insert(to, (self.lists.len() - 1, self.now));
        ListDelivery::Queued
    }
}

/// One event-loop turn's poll: a round under way (the core returning `now`) continues on the
/// next turn, `turn` later, so other events can land between the polls of one round.
fn poll_turn(core: &mut Signaling, log: &mut ListLog, now: Instant, turn: Duration) -> Option<Instant> {
    log.now = now;
    match core.poll_client_list(now, log) {
        Some(due) if due <= now => Some(now + turn),
        other => other,
    }
}

/// Bursts of joins, sessions, stops and departures among up to 1000 clients, polling only
/// at the times the core returns (a loop turn taking `turn`); after each burst, every WAIT
/// client must hold the final list, received within 250 ms of the burst's last change.
fn the_250_ms_bound_holds(pacing: ClientListPacing, turn: Duration, seed: u64) {
    let start = Instant::now();
    let mut core = Signaling::with_random(pacing, counting_random());
    let mut log = ListLog { now: start, lists: Vec::new(), last: HashMap::new() };
    let mut parsed: HashMap<usize, Vec<(String, u64)>> = HashMap::new();
    let mut rng = XorShift::new(seed);
    let mut live: Vec<ConnId> = Vec::new();
    let mut next_index = 0u32;
    let mut now = start;
    let mut next_due: Option<Instant> = None;
    let mut max_registered = 0;
    for burst in 0..5 {
        let burst_start = now + ms(100);
        let mut offsets: Vec<u64> = (0..300).map(|_| rng.next() % 300_000).collect();
        offsets.sort_unstable();
        let mut last_change = None;
        for offset in offsets {
            let at = burst_start + Duration::from_micros(offset);
            while let Some(due) = next_due
                && due <= at
            {
                now = now.max(due);
                next_due = poll_turn(&mut core, &mut log, now, turn);
            }
            now = at;
            let before = list_rev(&core);
            let roll = rng.below(100);
            if roll < 75 && live.len() < 1000 {
                let who = ConnId::new(next_index, 0);
                next_index += 1;
                let raw = sid_msg(&format!("c{:04}", who.index()));
                core.handle_message(who, raw.as_bytes(), now, &mut log);
                live.push(who);
            } else if roll < 88 && live.len() >= 2 {
                let from = live[rng.below(live.len())];
                let to = live[rng.below(live.len())];
                let raw = session_msg(&format!("c{:04}", to.index()));
                core.handle_message(from, raw.as_bytes(), now, &mut log);
            } else if roll < 96 && !live.is_empty() {
                let from = live[rng.below(live.len())];
                let client = core.registry.client_of(from).and_then(|id| core.registry.get(id));
                if let Some(key) = client.and_then(|client| client.session) {
                    let raw = relay_msg(Relay::Stop, key.text().as_str(), None);
                    core.handle_message(from, raw.as_bytes(), now, &mut log);
                }
            } else if !live.is_empty() {
                let who = live.swap_remove(rng.below(live.len()));
                core.disconnect(who, now, &mut log);
            }
            max_registered = max_registered.max(core.stats().registered);
            if list_rev(&core) != before {
                last_change = Some(now);
            }
            next_due = poll_turn(&mut core, &mut log, now, turn);
        }
        let quiet_until = now + ms(400);
        while let Some(due) = next_due
            && due <= quiet_until
        {
            now = now.max(due);
            next_due = poll_turn(&mut core, &mut log, now, turn);
        }
        assert_eq!(next_due, None, "burst {burst}: still owing lists after 400 ms of quiet");
        let last_change = last_change.expect("every burst changes the list");
        let snap = Snapshot::of(&core);
        let view = snap.view();
        for (who, _, session) in &snap.clients {
            if session.is_some() {
                continue;
            }
            let &(index, at) = log.last.get(who).unwrap_or_else(|| panic!("{who:?} never got a list"));
            let list = parsed.entry(index).or_insert_with(|| {
                clu_entries(std::str::from_utf8(&log.lists[index]).expect("a list is UTF-8"))
            });
            assert_eq!(*list, view, "burst {burst}: {who:?} does not hold the final list");
            assert!(
                at >= last_change && at <= last_change + ms(250),
                "burst {burst}: {who:?} got the final list {:?} after the last change",
                at.checked_duration_since(last_change)
            );
        }
        now = quiet_until;
    }
    assert!(max_registered >= 900, "the test should reach ~1000 clients: {max_registered}");
    assert!(max_registered <= 1000);
}

#[test]
fn every_wait_client_has_the_final_list_within_250_ms_default_pacing() {
    the_250_ms_bound_holds(ClientListPacing::default(), Duration::from_micros(20), 1);
}

#[test]
fn every_wait_client_has_the_final_list_within_250_ms_low_bandwidth() {
    // By bandwidth alone a round would wait seconds; up to 1000 clients it is capped.
    let pacing = ClientListPacing { bytes_per_second: 100_000, ..ClientListPacing::default() };
    the_250_ms_bound_holds(pacing, Duration::ZERO, 2);
}

#[test]
fn every_wait_client_has_the_final_list_within_250_ms_small_poll_budget() {
    let pacing = ClientListPacing {
        bytes_per_poll: 8 << 10,
        bytes_per_second: 2 << 20,
        ..ClientListPacing::default()
    };
    // About one list per poll: a round of ~1000 lists spans ~20 ms of loop turns.
    the_250_ms_bound_holds(pacing, Duration::from_micros(20), 3);
}

// ---------------------------------------------------------------------------------------
// Randomized sequences
// ---------------------------------------------------------------------------------------

const SLOTS: usize = 6;
const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "7", "x y", "é"];
const RANDOM_PAYLOADS: [&str; 4] = ["null", r#"{"sdp":"v=0\r\n"}"#, r#""\u00e9""#, "[1,{}]"];

/// State that outlives one step of a randomized run.
struct Run {
    net: Net,
    rng: XorShift,
    generation: [u32; SLOTS],
    departed: HashSet<ConnId>,
    /// The list each connection was last given.
    last_list: HashMap<ConnId, Vec<(String, u64)>>,
    last_change: Instant,
    cleared_at: HashMap<ConnId, Instant>,
    next_due: Option<Instant>,
    /// Rounds split into one list per poll, and one poll per event (as the event loop does),
    /// so commands and departures land in the middle of rounds.
    split: bool,
    seed: u64,
    ctx: String,
}

impl Run {
    fn new(seed: u64) -> Self {
        // Session ids from a tiny range: collisions with live sessions, and ids of closed
        // sessions coming back, happen all the time.
        let mut ids = XorShift::new(seed ^ 0xdead_beef);
        let split = seed % 2 == 0;
        let pacing = if split {
            ClientListPacing { bytes_per_poll: 1, ..ClientListPacing::default() }
        } else {
            ClientListPacing::default()
        };
        let net = Net::build(pacing, Box::new(move || ids.next() % 8));
        let now = net.now;
        Run {
            net,
            rng: XorShift::new(seed),
            generation: [0; SLOTS],
            departed: HashSet::new(),
            last_list: HashMap::new(),
            last_change: now,
            cleared_at: HashMap::new(),
            next_due: None,
            split,
            seed,
            ctx: String::new(),
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.below(items.len())]
    }

    /// One poll, checking every list it hands out.
    fn poll_once(&mut self) {
        let due = self.net.poll();
        let snap = self.net.snapshot();
        let view = snap.view();
        for (to, text) in self.net.out.take() {
            assert!(!self.departed.contains(&to), "{}: clu to departed {to:?}", self.ctx);
            let client =
                snap.client(to).unwrap_or_else(|| panic!("{}: clu to unregistered {to:?}", self.ctx));
            assert_eq!(client.2, None, "{}: clu to CALLING {to:?}", self.ctx);
            assert_eq!(clu_entries(&text), view, "{}: stale list", self.ctx);
            self.last_list.insert(to, view.clone());
        }
        self.next_due = due;
    }

    /// Polls until the core asks for a later time.
    fn drain(&mut self) {
        self.poll_once();
        for _ in 0..100_000 {
            match self.next_due {
                Some(due) if due <= self.net.now => self.poll_once(),
                _ => return,
            }
        }
        panic!("{}: a round never ended", self.ctx);
    }

    /// Lets fake time pass, polling at every time the core asked for.
    fn tick(&mut self, by: Duration) {
        let until = self.net.now + by;
        self.poll_once();
        while let Some(due) = self.next_due
            && due <= until
        {
            self.net.now = self.net.now.max(due);
            self.poll_once();
        }
        self.net.now = until;
        self.drain();
    }

    fn step(&mut self, step: usize) {
        let slot = self.rng.below(SLOTS);
        let me = ConnId::new(slot as u32, self.generation[slot]);
        let pre = self.net.snapshot();
        let mut post = pre.clone();
        let mut wanted: Vec<(ConnId, String)> = Vec::new();
        let roll = self.rng.below(100);
        self.ctx = format!("seed {}, step {step}, {me:?}, roll {roll}", self.seed);
        let sent = match roll {
            0..=14 => {
                let name = self.pick(&NAMES);
                let raw = match self.rng.below(3) {
                    0 => sid_msg(name),
                    1 => format!(r#"{{"cmd":"sId","sId":" {name}\t","x":1}}"#),
                    _ if name == "7" => r#"{"cmd":"sId","sId":7.0}"#.to_owned(),
                    _ => format!(r#"{{"sId":"{name}","cmd":"sId"}}"#),
                };
                match pre.client(me) {
                    Some(_) => wanted.push((me, error(ErrorCode::AlreadyRegistered))),
                    None if pre.find(name).is_some() => wanted.push((me, error(ErrorCode::SidTaken))),
                    None => {
                        wanted.push((me, sid_reply(name)));
                        post.clients.push((me, name.to_owned(), None));
                        post.list_version += 1;
                    }
                }
                self.net.send(me, &raw)
            }
            15..=29 => {
                let target = self.pick(&NAMES);
                let sent = self.net.send(me, &session_msg(target));
                match oracle_session(&pre, me, target) {
                    Err(code) => wanted.push((me, error(code))),
                    Ok(callee) => {
                        let key = self.net.snapshot().session_of(me).expect("the new session");
                        assert!(!pre.sessions.contains_key(&key), "{}: a live id was reused", self.ctx);
                        let s = key.text();
                        let s = s.as_str();
                        wanted.extend([(me, session_reply(s)), (me, ssu(s, 1)), (callee, ssu(s, 1))]);
                        post.sessions.insert(key, ([me, callee], SessionState::New));
                        post.set_session(me, Some(key));
                        post.set_session(callee, Some(key));
                        post.list_version += 1;
                    }
                }
                sent
            }
            30..=54 => {
                let action = ACTIONS[self.rng.below(ACTIONS.len())];
                let id = match (self.rng.below(10), pre.session_of(me)) {
                    (0..=5, Some(key)) => key.to_string(),
                    (0..=8, _) => SessionId::new(self.rng.next() % 8).to_string(),
                    _ => self.pick(&["000000000000000A", "zz", "0"]).to_owned(),
                };
                let payload = self.pick(&RANDOM_PAYLOADS);
                let raw = relay_msg(action, &id, Some(payload));
                let payload = action.payload_field().map(|_| payload);
                match oracle_relay(&pre, me, &id) {
                    Err(code) => wanted.push((me, error(code))),
                    Ok((key, members, state)) => {
                        let opponent = if members[0] == me { members[1] } else { members[0] };
                        let my_sid = pre.client(me).map(|c| c.1.clone()).unwrap_or_default();
                        let next = match action {
                            Relay::Call => SessionState::Pending,
                            Relay::Accept => SessionState::Active,
                            Relay::IceCandidate => state,
                            Relay::Reject | Relay::Stop => SessionState::Closed,
                        };
                        let closing = self.net.out.closing.contains(&opponent);
                        if closing {
                            wanted.push((me, error(ErrorCode::OpponentGone)));
                        } else {
                            wanted.push((opponent, relayed(action, &id, &my_sid, payload)));
                        }
                        if closing || next == SessionState::Closed {
                            wanted.extend(members.map(|m| (m, ssu(&id, 4))));
                            post.sessions.remove(&key);
                            post.set_session(me, None);
                            post.set_session(opponent, None);
                            post.list_version += 1;
                        } else if next != state {
                            wanted.extend(members.map(|m| (m, ssu(&id, next.code()))));
                            post.sessions.insert(key, (members, next));
                        }
                    }
                }
                self.net.send(me, &raw)
            }
            55..=62 => {
                let target = self.pick(&NAMES);
                let data = if self.rng.below(2) == 0 { None } else { Some(self.pick(&RANDOM_PAYLOADS)) };
                match pre.client(me) {
                    None => wanted.push((me, error(ErrorCode::NotRegistered))),
                    Some((_, sid, _)) if sid == target => wanted.push((me, error(ErrorCode::NotifySelf))),
                    Some((_, sid, _)) => match pre.find(target) {
                        None => wanted.push((me, error(ErrorCode::NotifyTargetNotFound))),
                        Some(to) => wanted.push((to, notification(sid, "ring", data))),
                    },
                }
                self.net.send(me, &notify_msg(target, "ring", data))
            }
            63..=67 => {
                let registered = pre.client(me).is_some();
                let field_error = if registered { ErrorCode::InvalidField } else { ErrorCode::NotRegistered };
                let (raw, code) = [
                    ("{", ErrorCode::InvalidJson),
                    ("[1]", ErrorCode::BadShape),
                    (r#"{"cmd":5}"#, ErrorCode::UnknownCommand),
                    (r#"{"cmd":"ssu","sessionId":"0000000000000001","state":4}"#, ErrorCode::UnknownCommand),
                    (r#"{"cmd":"session"}"#, field_error),
                    (r#"{"cmd":"call","sessionId":"0000000000000001"}"#, field_error),
                    (r#"{"cmd":"notify","opponentId":"a"}"#, field_error),
                ][self.rng.below(7)];
                wanted.push((me, error(code)));
                self.net.send(me, raw)
            }
            68..=75 => {
                if let Some((_, sid, session)) = pre.client(me) {
                    post.clients.retain(|client| client.0 != me);
                    post.list_version += 1;
                    if let Some(key) = *session {
                        let (members, _) = pre.sessions[&key];
                        let opponent = if members[0] == me { members[1] } else { members[0] };
                        let s = key.text();
                        wanted.extend([(opponent, leave(s.as_str(), sid)), (opponent, ssu(s.as_str(), 4))]);
                        post.sessions.remove(&key);
                        post.set_session(opponent, None);
                    }
                }
                let sent = self.net.disconnect(me);
                self.departed.insert(me);
                self.generation[slot] += 1;
                self.net.out.closing.remove(&me);
                self.net.out.list_unsent.remove(&me);
                sent
            }
            76..=77 => match self.generation[slot].checked_sub(1) {
                Some(old) => self.net.disconnect(ConnId::new(slot as u32, old)),
                None => Vec::new(),
            },
            78..=80 => {
                self.net.out.closing.insert(me);
                Vec::new()
            }
            81..=83 => {
                if !self.net.out.list_unsent.remove(&me) {
                    self.net.out.list_unsent.insert(me);
                } else {
                    self.cleared_at.insert(me, self.net.now);
                }
                Vec::new()
            }
            _ => {
                let by = ms(self.rng.next() % 150);
                self.tick(by);
                Vec::new()
            }
        };
        // Nothing reaches a closing connection.
        wanted.retain(|(to, _)| !self.net.out.closing.contains(to));
        for (to, _) in &sent {
            assert!(!self.departed.contains(to), "{}: a message to departed {to:?}", self.ctx);
        }
        assert_eq!(per_conn(&sent), per_conn(&wanted), "{}\n  sent {sent:?}\n  wanted {wanted:?}", self.ctx);
        let now = self.net.snapshot();
        assert_eq!(now, post, "{}", self.ctx);
        self.net.core.check_invariants().unwrap_or_else(|e| panic!("{}: {e}", self.ctx));
        let stats = self.net.core.stats();
        assert_eq!(
            (stats.registered, stats.sessions),
            (now.clients.len(), now.sessions.len()),
            "{}",
            self.ctx
        );
        if now.view() != pre.view() {
            self.last_change = self.net.now;
        }
        // As the event loop does: a poll after every event.
        if self.split {
            self.poll_once();
        } else {
            self.drain();
        }
        self.check_bound();
    }

    /// Every WAIT client that can take a list holds the current one 250 ms after the last
    /// change (or after its previous list finally went out).
    fn check_bound(&self) {
        let snap = self.net.snapshot();
        let view = snap.view();
        for (who, _, session) in &snap.clients {
            if session.is_some()
                || self.net.out.closing.contains(who)
                || self.net.out.list_unsent.contains(who)
            {
                continue;
            }
            let since = self.cleared_at.get(who).map_or(self.last_change, |&c| c.max(self.last_change));
            if self.net.now >= since + ms(250) {
                assert_eq!(self.last_list.get(who), Some(&view), "{}: {who:?} is behind", self.ctx);
            }
        }
    }
}

fn oracle_session(pre: &Snapshot, me: ConnId, target: &str) -> Result<ConnId, ErrorCode> {
    let (_, my_sid, my_session) = pre.client(me).ok_or(ErrorCode::NotRegistered)?;
    if my_sid == target {
        return Err(ErrorCode::SessionWithSelf);
    }
    let callee = pre.find(target).ok_or(ErrorCode::OpponentNotFound)?;
    if my_session.is_some() {
        return Err(ErrorCode::AlreadyInSession);
    }
    if pre.session_of(callee).is_some() {
        return Err(ErrorCode::OpponentBusy);
    }
    Ok(callee)
}

type SessionView = (SessionId, [ConnId; 2], SessionState);

fn oracle_relay(pre: &Snapshot, me: ConnId, id: &str) -> Result<SessionView, ErrorCode> {
    pre.client(me).ok_or(ErrorCode::NotRegistered)?;
    let key = SessionId::parse(id).ok_or(ErrorCode::SessionNotFound)?;
    let &(members, state) = pre.sessions.get(&key).ok_or(ErrorCode::SessionNotFound)?;
    if !members.contains(&me) {
        return Err(ErrorCode::SessionNotFound);
    }
    Ok((key, members, state))
}

#[test]
fn random_sequences_keep_every_rule() {
    for seed in 1..=40 {
        let mut run = Run::new(seed);
        for step in 0..1500 {
            run.step(step);
        }
        // Finally: quiet, with every list deliverable, everyone in WAIT holds the final list.
        run.net.out.list_unsent.clear();
        run.cleared_at.clear();
        run.ctx = format!("seed {seed}, the end");
        run.tick(ms(400));
        let snap = run.net.snapshot();
        for (who, _, session) in &snap.clients {
            if session.is_none() && !run.net.out.closing.contains(who) {
                assert_eq!(run.last_list.get(who), Some(&snap.view()), "seed {seed}: {who:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------

#[test]
fn mutated_messages_never_panic_and_every_answer_is_json() {
    // alice and bob in session 2a (the first id drawn; later ones are distinct), carol and
    // dave in WAIT; rebuilt whenever a mutation ended that session.
    fn setup() -> Net {
        let draws = Rc::new(Cell::new(0));
        let mut net = Net::build(ClientListPacing::default(), scripted_random(vec![0x2a], draws));
        for (who, sid) in [(alice(), "alice"), (bob(), "bob"), (carol(), "carol"), (dave(), "dave")] {
            net.register(who, sid);
        }
        assert_eq!(net.open(alice(), "bob"), S);
        net.settle();
        net
    }
    const S: &str = "000000000000002a";
    let mut rng = XorShift::new(99);
    let mut net = setup();
    let templates = [
        sid_msg("zed"),
        session_msg("carol"),
        relay_msg(Relay::Call, S, Some(PAYLOADS[12])),
        relay_msg(Relay::Accept, S, Some(r#"[1,{"a":"\u00e9"}]"#)),
        relay_msg(Relay::IceCandidate, S, Some("null")),
        relay_msg(Relay::Stop, S, None),
        notify_msg("carol", "ring", Some(r#"{"k":[true,false,null,1e5]}"#)),
    ];
    let alphabet = b"{}[]\":,\\ \t\n0123456789eE+-.tfnulrsa\xc3\xa9\xff\x00u";
    for round in 0..20_000 {
        let mut bytes = templates[rng.below(templates.len())].clone().into_bytes();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            let byte = alphabet[rng.below(alphabet.len())];
            match rng.below(3) {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        let from = [alice(), bob(), carol(), dave(), conn(9)][rng.below(5)];
        let shown = String::from_utf8_lossy(&bytes).into_owned();
        let before = net.snapshot();
        net.core.handle_message(from, &bytes, net.now, &mut net.out);
        net.core.check_invariants().unwrap_or_else(|e| panic!("round {round}, {shown}: {e}"));
        let sent = net.out.take();
        for (to, text) in &sent {
            if json(text).get_str("cmd") == Some("error") {
                assert_eq!(*to, from, "an error to someone else: {shown}");
                assert_eq!(sent.len(), 1, "an error and more for {shown}: {sent:?}");
                assert_eq!(net.snapshot(), before, "an error changed the state: {shown}");
            }
        }
        if net.snapshot().session_of(alice()) != Some(SessionId::new(0x2a)) {
            net = setup();
        }
    }
}

#[test]
fn deeply_nested_payloads_do_not_break_the_core() {
    let mut net = three();
    let s = net.open(alice(), "bob");
    for depth in [1_000, 30_000] {
        let payload = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let sent = net.send(alice(), &relay_msg(Relay::IceCandidate, &s, Some(&payload)));
        // Relayed as it came, or refused as a whole: never half a message.
        match sent.as_slice() {
            [(to, text)] if *to == bob() => assert!(text.contains(&payload)),
            [(to, text)] if *to == alice() => assert_eq!(json(text).get_str("cmd"), Some("error")),
            other => panic!("depth {depth}: {other:?}"),
        }
        let unclosed = "[".repeat(depth);
        let sent = net.send(alice(), &relay_msg(Relay::IceCandidate, &s, Some(&unclosed)));
        assert_eq!(sent, vec![(alice(), error(ErrorCode::InvalidJson))]);
    }
}
