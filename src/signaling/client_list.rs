//! The client list as state, not events (PROTOCOL.md, *clu* and *Presence modes*).
//!
//! Each room's list has a revision, bumped on every change, and a bounded log of its recent
//! changes ([`RoomList`]). A client is owed a list message while the revision it was last
//! given is older than its room's. What it gets is decided when a delivery round reaches
//! it, from that revision: the whole list for a `full` client; for a `delta` client the
//! changes since its revision, coalesced, or a snapshot when that is smaller or the log no
//! longer reaches back. Each distinct message is composed once per revision and shared
//! (not copied) by every connection it is queued on.
//!
//! Nothing is kept per client but the revision it was given: a client that cannot take a
//! message (its previous list is unsent) is skipped and offered a newer one later, so it
//! never holds more than one unsent list message, and what it is offered then covers
//! everything since what it really got.
//!
//! Pacing ([`ClientLists`]) keeps a storm of joins from starving relays: a round walks the
//! rooms that changed, delivers at most `bytes_per_poll` per call (the loop relays between
//! calls), and a new round starts no sooner than `min_interval`, or the time the last
//! round's bytes take at `bytes_per_second`, after the previous one; with at most 1000
//! clients the gap is capped at `small_list_max_interval` so the 250 ms promise holds.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::registry::RoomId;
use crate::protocol::{EscapedJson, encode};

/// How `clu` delivery is paced. See the module docs.
#[derive(Clone, Copy, Debug)]
pub struct ClientListPacing {
    pub min_interval: Duration,
    pub bytes_per_second: u64,
    pub bytes_per_poll: usize,
    /// When a client still had an unsent list, how soon to offer it the newest one again.
    pub retry_interval: Duration,
    pub small_list_clients: usize,
    pub small_list_max_interval: Duration,
}

impl Default for ClientListPacing {
    fn default() -> Self {
        ClientListPacing {
            min_interval: Duration::from_millis(50),
            bytes_per_second: 256 << 20,
            bytes_per_poll: 1 << 20,
            retry_interval: Duration::from_millis(50),
            small_list_clients: 1000,
            small_list_max_interval: Duration::from_millis(200),
        }
    }
}

/// The change log's bounds, per room. A delta client whose revision fell out of it gets a
/// snapshot, which is never much bigger than the changes it replaces would be: past a
/// few thousand changes, the list itself is the smaller message for most rooms.
pub const LOG_MAX_CHANGES: usize = 4096;
pub const LOG_MAX_BYTES: usize = 256 << 10;

/// What a log entry weighs besides the sId: the entry, its message framing, its heap.
const CHANGE_OVERHEAD: usize = 48;

/// A state of the client-list wire format: 0 removes a client from the list.
pub const GONE: u8 = 0;

/// One change to a room's list.
pub(crate) struct Change {
    /// The client it changed, by its registration order (a re-registered sId is a new
    /// client, at the end of the list).
    pub order: u64,
    pub sid: EscapedJson,
    /// Its state after the change; [`GONE`] when it left.
    pub state: u8,
    /// This change is its registration.
    pub joined: bool,
}

/// A change in the log, with the revision it made (one event, such as a session opening,
/// may change two entries in one revision).
struct Logged {
    rev: u64,
    change: Change,
}

/// The list of one room: its revision, what changed lately, and the messages composed for
/// the current revision.
#[derive(Default)]
pub(crate) struct RoomList {
    pub rev: u64,
    log: VecDeque<Logged>,
    log_bytes: usize,
    /// The log holds every change after this revision.
    log_from: u64,
    /// The full-mode `clu` of a revision.
    full: Option<(u64, Rc<[u8]>)>,
    /// The delta-mode snapshot (`clu` with `rev`) of a revision.
    snapshot: Option<(u64, Rc<[u8]>)>,
    /// Messages for delta clients, by the revision they start from, for revision `rev`.
    changes: Vec<(u64, u64, Rc<[u8]>)>,
    /// Queued for the next round.
    pub dirty: bool,
}

/// How many distinct starting revisions keep their message per revision: most clients of
/// a room share one; the others are few clients that were skipped once.
const CHANGES_KEPT: usize = 16;

impl RoomList {
    /// The list changed without anyone needing to know how (no client receives lists).
    pub fn bump(&mut self) {
        self.rev += 1;
        self.forget_history();
    }

    /// The list changed, in one revision.
    pub fn record(&mut self, changes: impl IntoIterator<Item = Change>) {
        self.rev += 1;
        for change in changes {
            self.log_bytes += change.sid.as_str().len() + CHANGE_OVERHEAD;
            self.log.push_back(Logged { rev: self.rev, change });
        }
        while self.log.len() > LOG_MAX_CHANGES || self.log_bytes > LOG_MAX_BYTES {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(oldest) = self.log.pop_front() {
            self.log_bytes -= oldest.change.sid.as_str().len() + CHANGE_OVERHEAD;
            // Changes of that revision may stay behind: they no longer make it whole.
            self.log_from = oldest.rev;
        }
    }

    /// Drops the changes no client needs: those up to `rev`, which every delta client has.
    pub fn trim_through(&mut self, rev: u64) {
        while self.log.front().is_some_and(|oldest| oldest.rev <= rev) {
            self.drop_oldest();
        }
    }

    /// Nobody needs the log (the room is empty, or no client in it builds on a revision).
    /// The messages of the current revision stay: a client skipped once may need them.
    pub fn forget_history(&mut self) {
        self.log = VecDeque::new();
        self.log_bytes = 0;
        self.log_from = self.rev;
    }

    /// Changes kept, for tests and metrics.
    pub fn logged(&self) -> usize {
        self.log.len()
    }

    /// Whether a delta client given `base` can be sent the changes since.
    pub fn reaches_back_to(&self, base: u64) -> bool {
        base != 0 && base >= self.log_from && base <= self.rev
    }

    /// The full-mode list of the current revision, composed by `compose` if it is not yet.
    pub fn full_list(&mut self, compose: impl FnOnce(&mut Vec<u8>)) -> Rc<[u8]> {
        cached(&mut self.full, self.rev, compose)
    }

    /// The delta-mode snapshot of the current revision.
    pub fn snapshot(&mut self, compose: impl FnOnce(&mut Vec<u8>)) -> Rc<[u8]> {
        cached(&mut self.snapshot, self.rev, compose)
    }

    /// The message for a delta client given `base`: the changes since, when the log reaches
    /// back and they are smaller than a snapshot of `snapshot_len` bytes; `None` for a
    /// snapshot.
    pub fn changes_since(
        &mut self,
        base: u64,
        snapshot_len: usize,
        scratch: &mut Vec<u8>,
    ) -> Option<Rc<[u8]>> {
        if !self.reaches_back_to(base) {
            return None;
        }
        self.changes.retain(|&(_, to, _)| to == self.rev);
        if let Some((_, _, message)) = self.changes.iter().find(|&&(from, _, _)| from == base) {
            return Some(Rc::clone(message)).filter(|message| message.len() < snapshot_len);
        }
        scratch.clear();
        self.compose_changes(base, scratch);
        let message: Rc<[u8]> = Rc::from(scratch.as_slice());
        if self.changes.len() == CHANGES_KEPT {
            self.changes.remove(0);
        }
        // Kept even when the snapshot wins: the next client from `base` needs no composing.
        self.changes.push((base, self.rev, Rc::clone(&message)));
        Some(message).filter(|message| message.len() < snapshot_len)
    }

    /// `cld` from `base` to the current revision. Each client changed since appears once,
    /// with its last state, so that applying the changes in order gives the list exactly:
    /// removals first (an sId may leave and come back as a new client), then state changes
    /// of clients that were there, then clients that joined since, in registration order,
    /// as the list has them at its end.
    fn compose_changes(&self, base: u64, out: &mut Vec<u8>) {
        let start = self.log.partition_point(|logged| logged.rev <= base);
        // By registration order: those that joined since come out in list order.
        let mut last: BTreeMap<u64, (&Change, bool)> = BTreeMap::new();
        for Logged { change, .. } in self.log.range(start..) {
            last.entry(change.order)
                .and_modify(|(latest, _)| *latest = change)
                .or_insert((change, change.joined));
        }
        let removed = last.values().filter(|(change, joined)| change.state == GONE && !joined);
        let changed = last.values().filter(|(change, joined)| change.state != GONE && !joined);
        let added = last.values().filter(|(change, joined)| change.state != GONE && *joined);
        encode::client_list_changes(
            out,
            base,
            self.rev,
            removed.chain(changed).chain(added).map(|(change, _)| (&change.sid, change.state)),
        );
    }
}

fn cached(slot: &mut Option<(u64, Rc<[u8]>)>, rev: u64, compose: impl FnOnce(&mut Vec<u8>)) -> Rc<[u8]> {
    match slot {
        Some((at, message)) if *at == rev => Rc::clone(message),
        _ => {
            let mut bytes = Vec::new();
            compose(&mut bytes);
            let message: Rc<[u8]> = Rc::from(bytes);
            *slot = Some((rev, Rc::clone(&message)));
            message
        }
    }
}

pub(crate) struct Round {
    /// The rooms this round visits, in the order they changed.
    pub rooms: Vec<RoomId>,
    /// Which of them it is in, and the registration-order position to continue from.
    pub room_at: usize,
    pub cursor: u64,
    /// The oldest revision a delta client of the current room still builds on.
    pub oldest_base: Option<u64>,
    pub started: Instant,
    pub bytes: u64,
    /// Some client could not take its message (its previous one was unsent).
    pub skipped: bool,
}

/// When list rounds happen, across rooms.
pub(crate) struct ClientLists {
    pub pacing: ClientListPacing,
    /// Rooms whose clients may be owed a list, for the next round.
    pub dirty: Vec<RoomId>,
    /// When the next round may start, if one is wanted.
    pub due: Option<Instant>,
    pub round: Option<Round>,
    last_round: Option<(Instant, u64)>,
    /// A room changed while a round was under way, maybe behind it: another round follows.
    changed_meanwhile: bool,
    /// List messages handed to the transport (snapshots and changes), for metrics and tests.
    pub lists_sent: u64,
    pub bytes_sent: u64,
    /// Of those, `cld` messages.
    pub changes_sent: u64,
    /// Reused by each round for the clients it is about to serve.
    pub owed: Vec<(u64, super::ClientId)>,
    /// Where change messages are composed.
    pub scratch: Vec<u8>,
}

impl ClientLists {
    pub fn new(pacing: ClientListPacing) -> Self {
        ClientLists {
            pacing,
            dirty: Vec::new(),
            due: None,
            round: None,
            last_round: None,
            changed_meanwhile: false,
            lists_sent: 0,
            bytes_sent: 0,
            changes_sent: 0,
            owed: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Clients of `room` may be owed a list (it changed, or one of them needs the current
    /// list again): make sure a round reaches them.
    pub fn owe(&mut self, id: RoomId, room: &mut RoomList, now: Instant, registered: usize) {
        if !room.dirty {
            room.dirty = true;
            self.dirty.push(id);
        }
        if self.round.is_some() {
            self.changed_meanwhile = true;
        } else if self.due.is_none() {
            self.due = Some(self.earliest_next_round(now, registered));
        }
    }

    fn earliest_next_round(&self, now: Instant, registered: usize) -> Instant {
        let Some((started, bytes)) = self.last_round else {
            return now;
        };
        let by_bandwidth = Duration::from_secs_f64(bytes as f64 / self.pacing.bytes_per_second.max(1) as f64);
        let mut gap = by_bandwidth.max(self.pacing.min_interval);
        if registered <= self.pacing.small_list_clients {
            gap = gap.min(self.pacing.small_list_max_interval);
        }
        (started + gap).max(now)
    }

    /// Starts a round if one is due: it takes the rooms that changed, whose `dirty` marks
    /// `clear` must reset. Returns whether a round is in progress.
    pub fn start_round_if_due(&mut self, now: Instant, mut clear: impl FnMut(RoomId)) -> bool {
        if self.round.is_none() && self.due.is_some_and(|due| due <= now) {
            self.due = None;
            self.changed_meanwhile = false;
            let rooms = std::mem::take(&mut self.dirty);
            rooms.iter().copied().for_each(&mut clear);
            self.round = Some(Round {
                rooms,
                room_at: 0,
                cursor: 0,
                oldest_base: None,
                started: now,
                bytes: 0,
                skipped: false,
            });
        }
        self.round.is_some()
    }

    pub fn finish_round(&mut self, now: Instant, registered: usize) {
        let Some(round) = self.round.take() else { return };
        self.last_round = Some((round.started, round.bytes));
        if !self.dirty.is_empty() {
            let mut due = self.earliest_next_round(now, registered);
            if round.skipped && !std::mem::take(&mut self.changed_meanwhile) {
                due = due.max(now + self.pacing.retry_interval);
            }
            self.due = Some(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;

    /// A room list and, beside it, the list it stands for, as a client would hold it.
    #[derive(Default)]
    struct Room {
        list: RoomList,
        members: Vec<(u64, String, u8)>,
        next_order: u64,
    }

    impl Room {
        fn join(&mut self, sid: &str) -> u64 {
            self.next_order += 1;
            let order = self.next_order;
            self.members.push((order, sid.to_owned(), 1));
            self.list.record([Change { order, sid: EscapedJson::escape(sid), state: 1, joined: true }]);
            order
        }

        fn set(&mut self, order: u64, state: u8) {
            let at = self.members.iter().position(|m| m.0 == order).expect("a member");
            let sid = self.members[at].1.clone();
            if state == GONE {
                self.members.remove(at);
            } else {
                self.members[at].2 = state;
            }
            self.list.record([Change { order, sid: EscapedJson::escape(&sid), state, joined: false }]);
        }

        fn snapshot_len(&self) -> usize {
            let sid_bytes = self.members.iter().map(|m| EscapedJson::escape(&m.1).as_str().len()).sum();
            encode::client_list_len(Some(self.list.rev), self.members.len(), sid_bytes)
        }

        fn expected(&self) -> Vec<(String, u8)> {
            self.members.iter().map(|m| (m.1.clone(), m.2)).collect()
        }

        fn changes_since(&mut self, base: u64) -> Option<String> {
            let len = self.snapshot_len();
            let mut scratch = Vec::new();
            let message = self.list.changes_since(base, len, &mut scratch)?;
            Some(String::from_utf8(message.to_vec()).expect("utf-8"))
        }
    }

    /// Applies a `cld` as PROTOCOL.md says a client does.
    fn apply(list: &mut Vec<(String, u8)>, message: &str) -> (u64, u64) {
        let value = crate::signaling::tests::json(message);
        use simd_json::prelude::*;
        assert_eq!(value.get_str("cmd"), Some("cld"));
        for change in value.get_array("changes").expect("changes") {
            let sid = change.get_str("sId").expect("sId").to_owned();
            let state = change.get_u64("state").expect("state") as u8;
            let known = list.iter().position(|(s, _)| *s == sid);
            match known {
                Some(at) if state == GONE => {
                    list.remove(at);
                }
                Some(at) => list[at].1 = state,
                None if state == GONE => panic!("{sid} removed but not in the list: {message}"),
                None => list.push((sid, state)),
            }
        }
        (value.get_u64("from").expect("from"), value.get_u64("rev").expect("rev"))
    }

    #[test]
    fn changes_are_coalesced_to_one_per_client() {
        let mut room = Room::default();
        let a = room.join("a");
        room.join("b");
        let base = room.list.rev;
        let mut held = room.expected();
        room.set(a, 2);
        room.set(a, 1);
        room.set(a, 2);
        let c = room.join("c");
        room.set(c, 2);
        let message = room.changes_since(base).expect("changes are smaller");
        assert_eq!(
            message,
            format!(
                r#"{{"cmd":"cld","from":{base},"rev":{},"changes":[{{"sId":"a","state":2}},{{"sId":"c","state":2}}]}}"#,
                room.list.rev
            )
        );
        assert_eq!(apply(&mut held, &message), (base, room.list.rev));
        assert_eq!(held, room.expected());
    }

    #[test]
    fn a_client_that_joined_and_left_since_is_not_mentioned() {
        let mut room = Room::default();
        room.join("a");
        let base = room.list.rev;
        let b = room.join("b");
        room.set(b, GONE);
        let message = room.changes_since(base).expect("changes");
        assert!(message.ends_with(r#""changes":[]}"#), "{message}");
    }

    #[test]
    fn a_re_registered_sid_moves_to_the_end() {
        let mut room = Room::default();
        let a = room.join("a");
        for n in 0..10 {
            room.join(&format!("m{n}"));
        }
        let base = room.list.rev;
        let mut held = room.expected();
        room.set(a, GONE);
        room.join("a");
        let message = room.changes_since(base).expect("two changes beat eleven entries");
        apply(&mut held, &message);
        assert_eq!(held.last(), Some(&("a".to_owned(), 1)), "{message}");
        assert_eq!(held, room.expected());
    }

    #[test]
    fn a_base_that_fell_out_of_the_log_gets_a_snapshot() {
        let mut room = Room::default();
        let a = room.join("a");
        for n in 0..20 {
            room.join(&format!("m{n}"));
        }
        let base = room.list.rev;
        // One change more than the log holds: the joins and the first of these fall out.
        for _ in 0..=LOG_MAX_CHANGES {
            room.set(a, 2);
        }
        assert_eq!(room.list.logged(), LOG_MAX_CHANGES);
        assert!(!room.list.reaches_back_to(base), "the change after {base} is gone");
        assert_eq!(room.changes_since(base), None);
        let recent = room.list.rev - 1;
        assert!(room.list.reaches_back_to(recent));
        assert!(room.changes_since(recent).is_some(), "one change beats 21 entries");
        // The byte bound holds too, with long sIds.
        let mut wide = Room::default();
        let long = "x".repeat(64);
        for n in 0..LOG_MAX_CHANGES {
            let order = wide.join(&format!("{long}{n}"));
            wide.set(order, GONE);
        }
        assert!(wide.list.log_bytes <= LOG_MAX_BYTES);
        assert!(wide.list.logged() < LOG_MAX_CHANGES);
    }

    #[test]
    fn a_snapshot_is_sent_when_it_is_smaller() {
        let mut room = Room::default();
        let a = room.join("a");
        let base = room.list.rev;
        // Many clients come and go: the changes name each of them, the list only `a`.
        for n in 0..20 {
            let order = room.join(&format!("c{n}"));
            room.set(order, GONE);
        }
        room.set(a, 2);
        room.join("b");
        // Coalesced, the changes are the list's two entries plus `from`: the snapshot is
        // smaller.
        assert_eq!(room.changes_since(base), None);
        // With a long list and one change, the changes win.
        for n in 0..50 {
            room.join(&format!("m{n}"));
        }
        let base = room.list.rev;
        room.set(a, 1);
        let message = room.changes_since(base).expect("one change beats 52 entries");
        assert!(message.len() < room.snapshot_len());
    }

    #[test]
    fn trimming_keeps_what_the_oldest_base_needs() {
        let mut room = Room::default();
        let a = room.join("a");
        let base = room.list.rev;
        room.set(a, 2);
        room.set(a, 1);
        room.list.trim_through(base);
        assert!(room.list.reaches_back_to(base));
        assert_eq!(room.list.logged(), 2);
        room.list.trim_through(base + 1);
        assert!(!room.list.reaches_back_to(base));
        assert!(room.list.reaches_back_to(base + 1));
        room.list.forget_history();
        assert_eq!(room.list.logged(), 0);
        assert!(room.list.reaches_back_to(room.list.rev), "nothing to send from the current revision");
        assert!(!room.list.reaches_back_to(0), "0 was never given: a snapshot");
    }

    #[test]
    fn one_message_per_starting_revision_is_composed_and_shared() {
        let mut room = Room::default();
        for n in 0..30 {
            room.join(&format!("c{n}"));
        }
        let base = room.list.rev;
        room.join("late");
        let len = room.snapshot_len();
        let mut scratch = Vec::new();
        let first = room.list.changes_since(base, len, &mut scratch).expect("changes");
        let second = room.list.changes_since(base, len, &mut scratch).expect("changes");
        assert!(Rc::ptr_eq(&first, &second));
        room.join("later");
        let len = room.snapshot_len();
        let third = room.list.changes_since(base, len, &mut scratch).expect("changes");
        assert!(!Rc::ptr_eq(&first, &third), "a new revision, a new message");
    }
}
