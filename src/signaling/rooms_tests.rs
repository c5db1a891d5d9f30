//! Unit tests of rooms and presence modes (PROTOCOL.md, *Rooms* and *Presence modes*), on a
//! fake clock and a [`MemoryOutbox`]. Every delta client's list is kept by applying what it
//! was sent, exactly as a client would, and compared with the room's real list.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use simd_json::OwnedValue;
use simd_json::prelude::*;

use super::tests::{counting_random, json};
use super::*;
use crate::protocol::ErrorCode;

fn conn(index: u32) -> ConnId {
    ConnId::new(index, 3)
}

fn error(code: ErrorCode) -> String {
    code.message().to_owned()
}

/// A client's view of its room's list, built from snapshots and changes.
#[derive(Clone, Debug, Default)]
struct View {
    rev: Option<u64>,
    list: Vec<(String, u64)>,
    snapshots: usize,
    changes: usize,
}

impl View {
    /// Applies a list message as PROTOCOL.md says a delta client does.
    fn apply(&mut self, message: &OwnedValue) {
        match message.get_str("cmd") {
            Some("clu") => {
                let keys: Vec<&str> =
                    message.as_object().expect("an object").keys().map(|k| k.as_str()).collect();
                assert_eq!(keys.len(), 3, "a delta snapshot has exactly cmd, rev, list: {message:?}");
                let rev = message.get_u64("rev").expect("a delta snapshot has a rev");
                assert!(self.rev.is_none_or(|old| rev > old), "revisions grow: {rev} after {:?}", self.rev);
                self.rev = Some(rev);
                self.list = entries(message.get_array("list").expect("a list"));
                self.snapshots += 1;
            }
            Some("cld") => {
                let keys = message.as_object().expect("an object").len();
                assert_eq!(keys, 4, "cld has exactly cmd, from, rev, changes: {message:?}");
                let from = message.get_u64("from").expect("from");
                let rev = message.get_u64("rev").expect("rev");
                assert_eq!(Some(from), self.rev, "a cld applies to the last revision given");
                assert!(rev > from);
                for (sid, state) in entries(message.get_array("changes").expect("changes")) {
                    let at = self.list.iter().position(|(known, _)| *known == sid);
                    match (at, state) {
                        (Some(at), 0) => {
                            self.list.remove(at);
                        }
                        (Some(at), _) => self.list[at].1 = state,
                        (None, 0) => panic!("{sid} removed but not in the list"),
                        (None, _) => self.list.push((sid, state)),
                    }
                }
                self.rev = Some(rev);
                self.changes += 1;
            }
            other => panic!("not a list message: {other:?}"),
        }
    }
}

fn entries(list: &[OwnedValue]) -> Vec<(String, u64)> {
    list.iter()
        .map(|entry| (entry.get_str("sId").expect("sId").to_owned(), entry.get_u64("state").expect("state")))
        .collect()
}

fn is_list(text: &str) -> bool {
    text.starts_with(r#"{"cmd":"clu""#) || text.starts_with(r#"{"cmd":"cld""#)
}

struct Net {
    core: Signaling,
    out: MemoryOutbox,
    now: Instant,
    /// What each connection's client was sent as lists, applied (delta) or last seen (full).
    views: HashMap<ConnId, View>,
    /// List messages each connection received, in order, as text.
    lists: HashMap<ConnId, Vec<String>>,
    presence: HashMap<ConnId, Presence>,
}

impl Net {
    fn new() -> Self {
        Net::with(Signaling::with_random(ClientListPacing::default(), counting_random()))
    }

    fn with(core: Signaling) -> Self {
        Net {
            core,
            out: MemoryOutbox::default(),
            now: Instant::now(),
            views: HashMap::new(),
            lists: HashMap::new(),
            presence: HashMap::new(),
        }
    }

    /// Sends one message; returns what it produced, list messages excluded (those are
    /// taken by [`settle`](Net::settle)).
    fn send(&mut self, from: ConnId, raw: &str) -> Vec<(ConnId, String)> {
        self.core.handle_message(from, raw.as_bytes(), self.now, &mut self.out);
        self.core.check_invariants().unwrap();
        self.take()
    }

    fn take(&mut self) -> Vec<(ConnId, String)> {
        let mut rest = Vec::new();
        for (to, text) in self.out.take() {
            if is_list(&text) {
                self.receive_list(to, text);
            } else {
                rest.push((to, text));
            }
        }
        rest
    }

    fn receive_list(&mut self, to: ConnId, text: String) {
        let message = json(&text);
        let view = self.views.entry(to).or_default();
        match self.presence.get(&to).copied().unwrap_or_default() {
            Presence::None => panic!("a list to a list-free client: {text}"),
            Presence::Delta => view.apply(&message),
            Presence::Full => {
                assert_eq!(message.get_str("cmd"), Some("clu"), "{text}");
                assert!(message.get("rev").is_none(), "a full client's clu has no rev: {text}");
                view.list = entries(message.get_array("list").expect("list"));
                view.snapshots += 1;
            }
        }
        self.lists.entry(to).or_default().push(text);
    }

    /// Enters `who` into `room` and registers it as `sid` in `presence` mode (`None`: the
    /// field is not sent). Returns the reply.
    fn join(
        &mut self,
        who: ConnId,
        room: Option<&str>,
        sid: &str,
        presence: Option<Presence>,
    ) -> Vec<(ConnId, String)> {
        self.core.admit(who, room, None);
        self.presence.insert(who, presence.unwrap_or_default());
        let field = presence.map(|mode| format!(r#","presence":"{}""#, mode.name())).unwrap_or_default();
        self.send(who, &format!(r#"{{"cmd":"sId","sId":"{sid}"{field}}}"#))
    }

    fn leave(&mut self, who: ConnId) -> Vec<(ConnId, String)> {
        self.out.closing.insert(who);
        self.core.disconnect(who, self.now, &mut self.out);
        self.core.check_invariants().unwrap();
        self.take()
    }

    /// Polls at the times the core asks for until it owes nothing.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            match self.core.poll(self.now, &mut self.out) {
                Some(due) => self.now = self.now.max(due),
                None => {
                    let rest = self.take();
                    assert!(rest.is_empty(), "only lists come from polling: {rest:?}");
                    return;
                }
            }
            let rest = self.take();
            assert!(rest.is_empty(), "only lists come from polling: {rest:?}");
        }
        panic!("the core never went quiet");
    }

    /// The room's real list, as a snapshot would show it.
    fn truth(&self, room: Option<&str>) -> Vec<(String, u64)> {
        let Some(id) = self.core.registry.room_named(room) else { return Vec::new() };
        self.core
            .registry
            .clients_in(id)
            .map(|client| (client.sid.to_string(), client.state().code().into()))
            .collect()
    }

    /// After settling, every WAIT client that gets lists holds its room's real list.
    fn check_views(&self) {
        for client in self.core.registry.clients() {
            let Some(conn) = client.conn() else { continue };
            let room = self.core.registry.room(client.room).and_then(|room| room.name.as_deref());
            match client.presence {
                Presence::None => assert!(!self.lists.contains_key(&conn), "{:?} got lists", client.sid),
                _ if client.session.is_some() => {}
                _ => {
                    let view =
                        self.views.get(&conn).unwrap_or_else(|| panic!("{:?} got no list", client.sid));
                    assert_eq!(
                        view.list,
                        self.truth(room),
                        "{:?} ({:?}) in {room:?}",
                        client.sid,
                        client.presence
                    );
                }
            }
        }
    }
}

const DELTA: Option<Presence> = Some(Presence::Delta);
const NONE: Option<Presence> = Some(Presence::None);

#[test]
fn a_room_is_a_namespace_for_sids_sessions_and_notify() {
    let mut net = Net::new();
    assert_eq!(
        net.join(conn(1), None, "alice", None),
        [(conn(1), r#"{"cmd":"sId","sId":"alice"}"#.to_owned())]
    );
    assert_eq!(net.join(conn(2), Some("blue"), "alice", None).len(), 1, "alice exists in two rooms");
    net.join(conn(3), Some("blue"), "bob", None);
    net.join(conn(4), Some("red"), "carol", None);
    assert_eq!(net.join(conn(5), Some("blue"), "bob", None), [(conn(5), error(ErrorCode::SidTaken))]);
    // carol is in another room: she does not exist for blue's clients.
    assert_eq!(
        net.send(conn(3), r#"{"cmd":"session","opponentId":"carol"}"#),
        [(conn(3), error(ErrorCode::OpponentNotFound))]
    );
    assert_eq!(
        net.send(conn(3), r#"{"cmd":"notify","opponentId":"carol","type":"x"}"#),
        [(conn(3), error(ErrorCode::NotifyTargetNotFound))]
    );
    // "alice" from blue's bob is blue's alice, not the default room's.
    let sent = net.send(conn(3), r#"{"cmd":"notify","opponentId":"alice","type":"ring"}"#);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, conn(2));
    let sent = net.send(conn(3), r#"{"cmd":"session","opponentId":"alice"}"#);
    assert!(sent.iter().all(|(to, _)| [conn(2), conn(3)].contains(to)), "{sent:?}");
    // Each room's list shows its own clients only.
    net.settle();
    net.check_views();
    assert_eq!(net.views[&conn(1)].list, [("alice".to_owned(), 1)]);
    assert_eq!(net.views[&conn(4)].list, [("carol".to_owned(), 1)]);
    let stats = net.core.stats();
    assert_eq!((stats.rooms, stats.largest_room, stats.registered), (3, 2, 4));
}

#[test]
fn a_room_vanishes_with_its_last_client_and_comes_back_fresh() {
    let mut net = Net::new();
    net.join(conn(1), Some("r"), "a", DELTA);
    net.join(conn(2), Some("r"), "b", None);
    net.settle();
    net.leave(conn(1));
    net.leave(conn(2));
    net.settle();
    assert_eq!(net.core.stats().rooms, 0, "the default room is empty too");
    assert_eq!(net.core.registry.room_named(Some("r")), None);
    assert_eq!(net.core.registry.rooms().count(), 1, "only the default room is kept");
    net.join(conn(3), Some("r"), "a", DELTA);
    net.settle();
    net.check_views();
    assert_eq!(net.views[&conn(3)].snapshots, 1);
    net.core.check_invariants().unwrap();
}

#[test]
fn max_room_clients_bounds_each_room_and_9102_comes_first() {
    let core =
        Signaling::with_random(ClientListPacing::default(), counting_random()).with_max_room_clients(2);
    let mut net = Net::with(core);
    net.join(conn(1), None, "a", None);
    net.join(conn(2), None, "b", None);
    assert_eq!(net.join(conn(3), None, "c", None), [(conn(3), error(ErrorCode::RoomFull))]);
    assert_eq!(net.join(conn(3), None, "a", None), [(conn(3), error(ErrorCode::SidTaken))]);
    // Another room has its own places.
    net.join(conn(4), Some("x"), "a", None);
    net.join(conn(5), Some("x"), "c", None);
    assert_eq!(net.join(conn(6), Some("x"), "d", None), [(conn(6), error(ErrorCode::RoomFull))]);
    // A refused connection may try again once there is room.
    net.leave(conn(2));
    assert_eq!(net.join(conn(3), None, "c", None).len(), 1);
    assert_eq!(net.core.counters().errors[ErrorCode::RoomFull.index()], 2);
}

#[test]
fn presence_is_checked_before_9101_and_echoed_only_when_sent() {
    let mut net = Net::new();
    for bad in [r#""Delta""#, r#""""#, "1", "true", "null", "[]"] {
        let sent = net.send(conn(1), &format!(r#"{{"cmd":"sId","sId":"a","presence":{bad}}}"#));
        assert_eq!(sent, [(conn(1), error(ErrorCode::InvalidField))], "{bad}");
    }
    let sent = net.join(conn(1), None, "a", DELTA);
    assert_eq!(sent, [(conn(1), r#"{"cmd":"sId","sId":"a","presence":"delta"}"#.to_owned())]);
    // Already registered, but the bad field is step 5.
    let sent = net.send(conn(1), r#"{"cmd":"sId","sId":"b","presence":"all"}"#);
    assert_eq!(sent, [(conn(1), error(ErrorCode::InvalidField))]);
    let sent = net.send(conn(1), r#"{"cmd":"sId","sId":"b","presence":"none"}"#);
    assert_eq!(sent, [(conn(1), error(ErrorCode::AlreadyRegistered))]);
    let sent = net.join(conn(2), None, "b", Some(Presence::Full));
    assert_eq!(sent, [(conn(2), r#"{"cmd":"sId","sId":"b","presence":"full"}"#.to_owned())]);
}

#[test]
fn list_free_clients_get_no_lists_but_are_listed_called_and_notified() {
    let mut net = Net::new();
    net.join(conn(1), None, "cam", NONE);
    net.join(conn(2), None, "viewer", None);
    net.join(conn(3), None, "watcher", DELTA);
    net.settle();
    net.check_views();
    assert!(!net.lists.contains_key(&conn(1)));
    assert_eq!(net.views[&conn(2)].list[0], ("cam".to_owned(), 1));
    let sent = net.send(conn(2), r#"{"cmd":"notify","opponentId":"cam","type":"ring"}"#);
    assert_eq!(sent.len(), 1);
    let sent = net.send(conn(2), r#"{"cmd":"session","opponentId":"cam"}"#);
    assert!(sent.iter().any(|(to, text)| *to == conn(1) && text.contains(r#""cmd":"ssu""#)));
    net.settle();
    net.check_views();
    assert_eq!(net.views[&conn(3)].list[0], ("cam".to_owned(), 2));
    assert!(!net.lists.contains_key(&conn(1)), "never, whatever happens");
}

#[test]
fn a_delta_client_gets_a_snapshot_then_changes() {
    let mut net = Net::new();
    net.join(conn(1), None, "a", DELTA);
    net.settle();
    assert_eq!(net.views[&conn(1)].snapshots, 1);
    for n in 2..12 {
        net.join(conn(n), None, &format!("c{n}"), None);
        net.settle();
    }
    net.check_views();
    let view = &net.views[&conn(1)];
    assert_eq!((view.snapshots, view.changes), (1, 10), "one cld per round");
    let last = net.lists[&conn(1)].last().expect("lists");
    assert!(last.len() < 70, "a change names one client: {last}");
}

#[test]
fn changes_coalesce_between_rounds() {
    let mut net = Net::new();
    net.join(conn(1), None, "w", DELTA);
    net.settle();
    // Many events before the next round: one message covers them.
    for n in 2..40 {
        net.join(conn(n), None, &format!("c{n}"), NONE);
    }
    for n in 2..20 {
        net.leave(conn(n));
    }
    net.settle();
    net.check_views();
    let view = &net.views[&conn(1)];
    assert_eq!((view.snapshots, view.changes), (1, 1));
}

#[test]
fn a_client_in_a_session_gets_nothing_and_catches_up_in_wait() {
    let mut net = Net::new();
    net.join(conn(1), None, "a", DELTA);
    net.join(conn(2), None, "b", DELTA);
    for n in 3..30 {
        net.join(conn(n), None, &format!("m{n}"), NONE);
    }
    net.settle();
    let sent = net.send(conn(1), r#"{"cmd":"session","opponentId":"b"}"#);
    let session = json(&sent[0].1).get_str("sessionId").expect("a session").to_owned();
    net.settle();
    let before = net.lists[&conn(1)].len();
    net.join(conn(40), None, "late", NONE);
    net.leave(conn(3));
    net.settle();
    assert_eq!(net.lists[&conn(1)].len(), before, "nothing while CALLING");
    net.send(conn(1), &format!(r#"{{"cmd":"stop","sessionId":"{session}"}}"#));
    net.settle();
    net.check_views();
    let last = net.lists[&conn(1)].last().expect("lists");
    assert!(last.starts_with(r#"{"cmd":"cld""#), "changes from its last revision: {last}");
}

#[test]
fn a_client_whose_base_fell_out_of_the_log_gets_a_snapshot() {
    let mut net = Net::new();
    net.join(conn(1), None, "a", DELTA);
    net.join(conn(2), None, "b", NONE);
    for n in 3..30 {
        net.join(conn(n), None, &format!("m{n}"), NONE);
    }
    net.settle();
    let sent = net.send(conn(1), r#"{"cmd":"session","opponentId":"b"}"#);
    let session = json(&sent[0].1).get_str("sessionId").expect("a session").to_owned();
    net.settle();
    let snapshots = net.views[&conn(1)].snapshots;
    // More changes than the log keeps, while a is CALLING.
    for round in 0..=LOG_MAX_CHANGES / 2 {
        let who = conn(1000 + round as u32);
        net.join(who, None, "flicker", NONE);
        net.leave(who);
    }
    net.send(conn(1), &format!(r#"{{"cmd":"stop","sessionId":"{session}"}}"#));
    net.settle();
    net.check_views();
    assert_eq!(net.views[&conn(1)].snapshots, snapshots + 1);
    assert!(net.core.stats().client_list_changes_kept <= LOG_MAX_CHANGES);
}

#[test]
fn a_snapshot_replaces_changes_that_would_be_bigger() {
    let mut net = Net::new();
    net.join(conn(1), None, "a", DELTA);
    net.settle();
    // The list ends as it began, two entries; the changes would name twenty clients.
    let before = net.views[&conn(1)].snapshots;
    for n in 2..22 {
        net.join(conn(n), None, &format!("long-name-number-{n}"), NONE);
        net.settle();
    }
    for n in 2..22 {
        net.leave(conn(n));
    }
    net.join(conn(30), None, "z", NONE);
    net.settle();
    net.check_views();
    let last = net.lists[&conn(1)].last().expect("lists");
    assert!(last.starts_with(r#"{"cmd":"clu","rev":"#), "{last}");
    assert_eq!(net.views[&conn(1)].snapshots, before + 1);
}

#[test]
fn a_client_with_an_unsent_list_is_offered_changes_from_what_it_got() {
    let mut net = Net::new();
    net.join(conn(1), None, "a", DELTA);
    for n in 2..10 {
        net.join(conn(n), None, &format!("m{n}"), NONE);
    }
    net.settle();
    // Its last list is stuck in its socket: the round skips it, and retries.
    net.out.list_unsent.insert(conn(1));
    net.join(conn(20), None, "x", NONE);
    let lists_before = net.lists[&conn(1)].len();
    for _ in 0..3 {
        let due = net.core.poll(net.now, &mut net.out).expect("a retry is due while it is skipped");
        net.take();
        net.now = net.now.max(due) + Duration::from_millis(1);
    }
    assert_eq!(net.lists[&conn(1)].len(), lists_before);
    net.join(conn(21), None, "y", NONE);
    net.out.list_unsent.remove(&conn(1));
    net.settle();
    net.check_views();
    assert_eq!(net.lists[&conn(1)].len(), lists_before + 1, "one message for both changes");
}

#[test]
fn full_delta_and_none_clients_share_a_room() {
    let mut net = Net::new();
    let modes = [None, DELTA, NONE, Some(Presence::Full)];
    for n in 0..12u32 {
        net.join(conn(n), Some("mixed"), &format!("c{n}"), modes[n as usize % 4]);
    }
    net.settle();
    net.check_views();
    net.send(conn(0), r#"{"cmd":"session","opponentId":"c2"}"#);
    net.leave(conn(5));
    net.join(conn(50), Some("mixed"), "c5", DELTA);
    net.settle();
    net.check_views();
    for n in (0..12u32).filter(|&n| n != 5) {
        let got = net.lists.get(&conn(n)).map_or(0, Vec::len);
        match modes[n as usize % 4] {
            Some(Presence::None) => assert_eq!(got, 0),
            _ => assert!(got >= 1, "c{n}"),
        }
    }
    // The re-registered c5 is at the end of everyone's list.
    assert_eq!(net.truth(Some("mixed")).last().map(|e| e.0.as_str()), Some("c5"));
}

#[test]
fn resume_looks_the_sid_up_in_the_new_connections_room() {
    let policy = ResumePolicy { grace: Duration::from_secs(15), max_held: 4096, max_away: 100 };
    let core = Signaling::with_random(ClientListPacing::default(), counting_random()).with_resume(policy);
    let mut net = Net::with(core);
    net.core.admit(conn(1), Some("r"), None);
    net.presence.insert(conn(1), Presence::Delta);
    let sent = net.send(conn(1), r#"{"cmd":"sId","sId":"a","presence":"delta","resume":true}"#);
    let token = json(&sent[0].1).get_str("resumeToken").expect("a token").to_owned();
    net.settle();
    net.out.closing.insert(conn(1));
    net.core.connection_lost(conn(1), net.now, &mut net.out);
    let resume = format!(r#"{{"cmd":"resume","sId":"a","resumeToken":"{token}","received":1}}"#);
    // The default room has no "a".
    assert_eq!(net.send(conn(2), &resume), [(conn(2), error(ErrorCode::ResumeRefused))]);
    net.core.admit(conn(3), Some("r"), None);
    net.presence.insert(conn(3), Presence::Delta);
    let sent = net.send(conn(3), &resume);
    assert!(sent[0].1.starts_with(r#"{"cmd":"resume""#), "{sent:?}");
    net.settle();
    // Lists are not replayed: it starts again from a snapshot.
    assert_eq!(net.views[&conn(3)].snapshots, 1);
    net.check_views();
}

/// Random joins, leaves, sessions and stops across three rooms and every mode; after each
/// settle, every delta client's applied list, and every full client's last list, is its
/// room's list exactly; list-free clients never got one.
#[test]
fn random_events_keep_every_list_exact() {
    for seed in 1..=6u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let pacing = ClientListPacing { bytes_per_poll: 300, ..ClientListPacing::default() };
        let mut net = Net::with(Signaling::with_random(pacing, counting_random()));
        let rooms = [None, Some("a"), Some("b")];
        let mut live: BTreeMap<u32, (Option<&str>, String)> = BTreeMap::new();
        let mut next_conn = 0u32;
        for step in 0..600 {
            match next(10) {
                0..=3 => {
                    next_conn += 1;
                    let who = conn(next_conn);
                    let room = rooms[next(3) as usize];
                    let sid = format!("s{}", next(40));
                    let mode = [None, DELTA, NONE][next(3) as usize];
                    let sent = net.join(who, room, &sid, mode);
                    if sent.len() == 1 && sent[0].1.starts_with(r#"{"cmd":"sId""#) {
                        live.insert(next_conn, (room, sid));
                    }
                }
                4..=5 if !live.is_empty() => {
                    let key = *live.keys().nth(next(live.len() as u64) as usize).expect("a client");
                    live.remove(&key);
                    net.leave(conn(key));
                }
                6..=7 if live.len() >= 2 => {
                    let from = *live.keys().nth(next(live.len() as u64) as usize).expect("a client");
                    let (_, target) =
                        live.values().nth(next(live.len() as u64) as usize).expect("a client").clone();
                    net.send(conn(from), &format!(r#"{{"cmd":"session","opponentId":"{target}"}}"#));
                }
                8 if !live.is_empty() => {
                    let from = *live.keys().nth(next(live.len() as u64) as usize).expect("a client");
                    let id = net.core.registry.client_of(conn(from)).expect("registered");
                    if let Some(key) = net.core.registry.get(id).and_then(|client| client.session) {
                        net.send(
                            conn(from),
                            &format!(r#"{{"cmd":"stop","sessionId":"{}"}}"#, key.text().as_str()),
                        );
                    }
                }
                _ => {
                    // Part of a round only, sometimes: the next events land mid-round.
                    if let Some(due) = net.core.poll(net.now, &mut net.out) {
                        net.now = net.now.max(due);
                    }
                    net.take();
                }
            }
            if step % 50 == 49 {
                net.settle();
                net.check_views();
            }
        }
        net.settle();
        net.check_views();
        net.core.check_invariants().unwrap();
    }
}
