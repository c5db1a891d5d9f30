//! Unit tests of resume (PROTOCOL.md, *Resume after a lost connection*), on a fake clock and
//! a [`MemoryOutbox`]: every rule of gone versus away, holding, replay, takeover and grace.

use std::time::{Duration, Instant};

use simd_json::prelude::*;

use super::tests::{counting_random, json};
use super::*;
use crate::protocol::ErrorCode;

const GRACE: Duration = Duration::from_secs(15);
const CAP: usize = 4096;

fn conn(index: u32) -> ConnId {
    ConnId::new(index, 7)
}

struct Net {
    core: Signaling,
    out: MemoryOutbox,
    start: Instant,
    now: Instant,
}

impl Net {
    fn new() -> Self {
        Net::with(ResumePolicy { grace: GRACE, max_held: CAP, max_away: 100 })
    }

    fn with(policy: ResumePolicy) -> Self {
        let start = Instant::now();
        let core = Signaling::with_random(ClientListPacing::default(), counting_random()).with_resume(policy);
        Net { core, out: MemoryOutbox::default(), start, now: start }
    }

    fn at(&mut self, secs: f64) {
        self.now = self.start + Duration::from_secs_f64(secs);
    }

    fn send(&mut self, from: ConnId, raw: &str) -> Vec<(ConnId, String)> {
        self.core.handle_message(from, raw.as_bytes(), self.now, &mut self.out);
        self.core.check_invariants().unwrap();
        self.out.take()
    }

    fn lose(&mut self, who: ConnId) -> Vec<(ConnId, String)> {
        self.out.closing.insert(who);
        self.core.connection_lost(who, self.now, &mut self.out);
        self.core.check_invariants().unwrap();
        self.out.take()
    }

    fn close(&mut self, who: ConnId) -> Vec<(ConnId, String)> {
        self.out.closing.insert(who);
        self.core.disconnect(who, self.now, &mut self.out);
        self.core.check_invariants().unwrap();
        self.out.take()
    }

    fn poll(&mut self) -> Vec<(ConnId, String)> {
        self.core.poll(self.now, &mut self.out);
        self.core.check_invariants().unwrap();
        self.out.take()
    }

    /// Registers `sid` with resume on `who`; returns the token.
    fn register(&mut self, who: ConnId, sid: &str) -> String {
        let sent = self.send(who, &format!(r#"{{"cmd":"sId","sId":"{sid}","resume":true}}"#));
        assert_eq!(sent.len(), 1, "{sent:?}");
        let reply = json(&sent[0].1);
        assert_eq!(reply.get_str("cmd"), Some("sId"));
        assert_eq!(reply.get_str("sId"), Some(sid));
        assert_eq!(reply.as_object().map(|o| o.len()), Some(3), "{reply}");
        reply.get_str("resumeToken").expect("a token").to_owned()
    }

    /// Registers both, opens a session from `a` to `b`, returns its id (everything sent is
    /// drained, lists included).
    fn pair(&mut self, a: ConnId, b: ConnId) -> (String, String, String) {
        let ta = self.register(a, "alice");
        let tb = self.register(b, "bob");
        let sent = self.send(a, r#"{"cmd":"session","opponentId":"bob"}"#);
        let id = json(&sent[0].1).get_str("sessionId").expect("session").to_owned();
        self.poll();
        (ta, tb, id)
    }

    fn resume(&mut self, on: ConnId, sid: &str, token: &str, received: u64) -> Vec<(ConnId, String)> {
        self.send(
            on,
            &format!(r#"{{"cmd":"resume","sId":"{sid}","resumeToken":"{token}","received":{received}}}"#),
        )
    }

    fn ice(&mut self, from: ConnId, session: &str, n: u32) -> Vec<(ConnId, String)> {
        self.send(from, &format!(r#"{{"cmd":"icecandidate","sessionId":"{session}","icecandidate":{n}}}"#))
    }
}

fn texts_for(sent: &[(ConnId, String)], to: ConnId) -> Vec<String> {
    sent.iter().filter(|(c, _)| *c == to).map(|(_, t)| t.clone()).collect()
}

fn cmds(texts: &[String]) -> Vec<String> {
    texts.iter().map(|t| json(t).get_str("cmd").unwrap_or("?").to_owned()).collect()
}

fn ice_numbers(texts: &[String]) -> Vec<u64> {
    texts.iter().filter_map(|t| json(t).get_u64("icecandidate")).collect()
}

#[track_caller]
fn assert_refused(sent: &[(ConnId, String)], on: ConnId) {
    assert_eq!(sent, [(on, ErrorCode::ResumeRefused.message().to_owned())]);
}

#[test]
fn opting_in_gives_a_fresh_url_safe_token_and_only_true_opts_in() {
    let mut net = Net::new();
    let a = net.register(conn(1), "a");
    let b = net.register(conn(2), "b");
    assert_ne!(a, b);
    for token in [&a, &b] {
        assert_eq!(token.len(), TOKEN_CHARS);
        assert!(token.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{token}");
    }
    let plain = net.send(conn(3), r#"{"cmd":"sId","sId":"c"}"#);
    assert_eq!(plain, [(conn(3), r#"{"cmd":"sId","sId":"c"}"#.to_owned())]);
    for value in ["false", "1", "\"yes\"", "null"] {
        let sent = net.send(conn(4), &format!(r#"{{"cmd":"sId","sId":"d","resume":{value}}}"#));
        assert_eq!(sent, [(conn(4), ErrorCode::InvalidField.message().to_owned())], "{value}");
    }
    // 9003 comes before 9101: the field is checked first.
    let sent = net.send(conn(1), r#"{"cmd":"sId","sId":"z","resume":0}"#);
    assert_eq!(sent, [(conn(1), ErrorCode::InvalidField.message().to_owned())]);
}

#[test]
fn with_resume_off_no_token_is_given_the_field_is_ignored_and_every_resume_is_refused() {
    let mut net = Net::with(ResumePolicy::OFF);
    let sent = net.send(conn(1), r#"{"cmd":"sId","sId":"a","resume":true}"#);
    assert_eq!(sent, [(conn(1), r#"{"cmd":"sId","sId":"a"}"#.to_owned())]);
    let sent = net.send(conn(2), r#"{"cmd":"sId","sId":"b","resume":"whatever"}"#);
    assert_eq!(sent, [(conn(2), r#"{"cmd":"sId","sId":"b"}"#.to_owned())]);
    net.poll();
    // Lost is gone when resume is off.
    net.lose(conn(1));
    assert!(!net.core.is_registered(None, "a"));
    assert_refused(&net.resume(conn(3), "b", "AAAAAAAAAAAAAAAAAAAAAA", 0), conn(3));
}

#[test]
fn a_lost_connection_leaves_the_client_away_and_its_peer_told_nothing() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (_, _, session) = net.pair(a, b);
    assert_eq!(net.lose(a), []);
    assert!(net.core.is_registered(None, "alice"));
    assert_eq!(net.core.stats().away, 1);
    assert_eq!(net.core.stats().sessions, 1);
    // A relay to the away client is held: no 9401, no ssu.
    assert_eq!(net.ice(b, &session, 1), []);
    // Nothing happens before the grace ends.
    net.at(14.9);
    assert_eq!(net.poll(), []);
    assert_eq!(net.core.next_deadline(), Some(net.start + GRACE));
}

#[test]
fn resume_replays_what_was_held_in_order_then_counting_restarts() {
    let mut net = Net::new();
    let (a, b, fresh) = (conn(1), conn(2), conn(3));
    let (token, _, session) = net.pair(a, b);
    // alice has received session + ssu 1 since her reply: 2 messages.
    net.lose(a);
    for n in 1..=3 {
        net.ice(b, &session, n);
    }
    net.at(5.0);
    let sent = net.resume(fresh, "alice", &token, 2);
    let mine = texts_for(&sent, fresh);
    assert_eq!(cmds(&mine), ["resume", "icecandidate", "icecandidate", "icecandidate"]);
    assert_eq!(ice_numbers(&mine), [1, 2, 3]);
    let reply = json(&mine[0]);
    assert_eq!(reply.get_str("sId"), Some("alice"));
    assert_eq!(reply.as_object().map(|o| o.len()), Some(3));
    let token2 = reply.get_str("resumeToken").expect("a fresh token").to_owned();
    assert_ne!(token2, token);
    assert!(texts_for(&sent, b).is_empty(), "the peer is told nothing: {sent:?}");
    assert_eq!(net.core.stats().away, 0);
    assert_eq!(net.core.counters().resumes, 1);
    // The call goes on, both ways.
    assert_eq!(ice_numbers(&texts_for(&net.ice(b, &session, 4), fresh)), [4]);
    assert_eq!(ice_numbers(&texts_for(&net.ice(fresh, &session, 5), b)), [5]);
    // The grace that was running is over for good.
    net.at(30.0);
    assert_eq!(net.poll(), []);
    assert!(net.core.is_registered(None, "alice"));
    // Counting restarted after the resume reply: the three replayed messages and the one
    // after are 1-4, and a new loss replays from there.
    net.lose(fresh);
    let sent = net.resume(conn(4), "alice", &token2, 3);
    assert_eq!(ice_numbers(&texts_for(&sent, conn(4))), [4]);
}

#[test]
fn messages_sent_on_the_dead_connection_and_not_counted_are_replayed() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, session) = net.pair(a, b);
    // Queued on alice's connection while it still looked alive: 2 + 3 messages.
    for n in 1..=3 {
        assert_eq!(ice_numbers(&texts_for(&net.ice(b, &session, n), a)), [u64::from(n)]);
    }
    net.lose(a);
    // She got only the first of the three before the network went.
    let sent = net.resume(conn(3), "alice", &token, 3);
    assert_eq!(ice_numbers(&texts_for(&sent, conn(3))), [2, 3]);
}

#[test]
fn errors_count_as_messages_and_lists_count_but_are_not_replayed() {
    let mut net = Net::new();
    let a = conn(1);
    let token = net.register(a, "alice");
    // 1: the client list.
    assert_eq!(cmds(&texts_for(&net.poll(), a)), ["clu"]);
    // 2: an error.
    net.send(a, r#"{"cmd":"nope"}"#);
    net.lose(a);
    let sent = net.resume(conn(2), "alice", &token, 1);
    assert_eq!(texts_for(&sent, conn(2))[1..], [ErrorCode::UnknownCommand.message().to_owned()]);
    // In WAIT, the current list follows in the next round.
    net.at(1.0);
    assert_eq!(cmds(&texts_for(&net.poll(), conn(2))), ["clu"]);
}

#[test]
fn an_acknowledgement_frees_what_it_covers_and_a_count_below_it_is_refused() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, session) = net.pair(a, b);
    for n in 1..=3 {
        net.ice(b, &session, n);
    }
    // A pong for a ping sent after all five messages alice's connection carried (the
    // memory outbox counts the registration reply and the lists too).
    let queued = net.out.messages_queued(a);
    net.core.acknowledge(a, queued);
    net.lose(a);
    let sent = net.resume(conn(3), "alice", &token, 4);
    // The rightful owner cannot get its messages back: it is gone at once, its peer told,
    // and the sId free for a fresh registration.
    assert_eq!(
        sent.iter().filter(|(to, _)| *to == conn(3)).collect::<Vec<_>>(),
        [&(conn(3), ErrorCode::ResumeRefused.message().to_owned())]
    );
    assert_eq!(cmds(&texts_for(&sent, b)), ["leave", "ssu"]);
    assert!(!net.core.is_registered(None, "alice"));
    net.register(conn(3), "alice");
}

#[test]
fn the_right_token_with_an_unreplayable_count_leaves_an_attached_client_alone() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, session) = net.pair(a, b);
    assert_refused(&net.resume(conn(3), "alice", &token, 99), conn(3));
    assert!(net.out.taken_over.is_empty());
    assert_eq!(ice_numbers(&texts_for(&net.ice(b, &session, 1), a)), [1]);
}

#[test]
fn the_grace_running_out_makes_the_client_gone_and_its_peer_gets_leave() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, session) = net.pair(a, b);
    net.at(1.0);
    net.lose(a);
    net.at(15.999);
    assert_eq!(net.poll(), []);
    net.at(16.0);
    let sent = net.poll();
    let peer = texts_for(&sent, b);
    assert_eq!(cmds(&peer), ["leave", "ssu", "clu"]);
    assert_eq!(json(&peer[0]).get_str("opponentId"), Some("alice"));
    assert_eq!(json(&peer[0]).get_str("sessionId"), Some(session.as_str()));
    assert_eq!(json(&peer[1]).get_u64("state"), Some(4));
    assert!(!net.core.is_registered(None, "alice"));
    assert_eq!(net.core.counters().graces_expired, 1);
    assert_refused(&net.resume(conn(3), "alice", &token, 2), conn(3));
    // The sId is free again.
    net.register(conn(4), "alice");
}

#[test]
fn a_close_frame_is_gone_at_once_even_for_a_resumable_client() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, _) = net.pair(a, b);
    let sent = net.close(a);
    assert_eq!(cmds(&texts_for(&sent, b)), ["leave", "ssu"]);
    assert!(!net.core.is_registered(None, "alice"));
    assert_refused(&net.resume(conn(3), "alice", &token, 2), conn(3));
}

#[test]
fn a_client_that_did_not_opt_in_is_gone_when_its_connection_is_lost() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    net.send(a, r#"{"cmd":"sId","sId":"alice"}"#);
    net.register(b, "bob");
    net.send(a, r#"{"cmd":"session","opponentId":"bob"}"#);
    let sent = net.lose(a);
    assert_eq!(cmds(&texts_for(&sent, b)), ["leave", "ssu"]);
    assert!(!net.core.is_registered(None, "alice"));
}

#[test]
fn every_refusal_is_the_same_9104_and_a_wrong_token_leaves_the_connection_alone() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, _) = net.pair(a, b);
    let wrong = "A".repeat(TOKEN_CHARS);
    // Still attached: a wrong token must not take it over.
    assert_refused(&net.resume(conn(3), "alice", &wrong, 0), conn(3));
    assert_refused(&net.resume(conn(3), "alice", &token[..TOKEN_CHARS - 1], 0), conn(3));
    assert!(net.out.taken_over.is_empty());
    net.lose(a);
    assert_refused(&net.resume(conn(3), "alice", &wrong, 2), conn(3));
    assert_refused(&net.resume(conn(3), "nobody", &token, 2), conn(3));
    assert_eq!(net.core.counters().resumes_refused, 4);
    // The refused connection stays unregistered and may still resume or register.
    assert_eq!(cmds(&texts_for(&net.resume(conn(3), "alice", &token, 2), conn(3))), ["resume"]);
    // The token is spent now.
    net.lose(conn(3));
    assert_refused(&net.resume(conn(4), "alice", &token, 0), conn(4));
}

#[test]
fn a_registered_connection_cannot_resume_and_a_restricted_one_only_its_own_sid() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, _) = net.pair(a, b);
    net.lose(a);
    let sent = net.resume(b, "alice", &token, 2);
    assert_eq!(sent, [(b, ErrorCode::AlreadyRegistered.message().to_owned())]);
    net.core.admit(conn(3), None, Some("mallory"));
    assert_refused(&net.resume(conn(3), "alice", &token, 2), conn(3));
    net.core.admit(conn(4), None, Some("alice"));
    assert_eq!(cmds(&texts_for(&net.resume(conn(4), "alice", &token, 2), conn(4))), ["resume"]);
}

#[test]
fn a_resume_while_the_old_connection_is_open_takes_it_over() {
    let mut net = Net::new();
    let (a, b, newer) = (conn(1), conn(2), conn(3));
    let (token, _, session) = net.pair(a, b);
    net.ice(b, &session, 1);
    let sent = net.resume(newer, "alice", &token, 2);
    assert_eq!(net.out.taken_over, [a]);
    assert_eq!(ice_numbers(&texts_for(&sent, newer)), [1]);
    // The old connection's end, when the transport reports it, changes nothing.
    assert_eq!(net.lose(a), []);
    assert_eq!(net.close(a), []);
    assert!(net.core.is_registered(None, "alice"));
    assert_eq!(ice_numbers(&texts_for(&net.ice(b, &session, 2), newer)), [2]);
}

#[test]
fn held_output_past_the_cap_makes_the_client_gone_at_once() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, session) = net.pair(a, b);
    net.lose(a);
    let big = "x".repeat(1000);
    let mut relays = 0;
    let last = loop {
        let sent = net.send(b, &format!(r#"{{"cmd":"call","sessionId":"{session}","offer":"{big}"}}"#));
        relays += 1;
        if cmds(&texts_for(&sent, b)).contains(&"error".to_owned()) {
            break sent;
        }
        assert!(relays < 10, "never over the cap");
    };
    assert!(relays >= 2 && (relays - 1) * 1000 <= CAP, "over the cap after {relays} relays");
    // The relay that does not fit: the sender learns the opponent is gone.
    assert_eq!(cmds(&texts_for(&last, b)), ["error", "ssu"]);
    assert_eq!(json(&texts_for(&last, b)[0]).get_u64("code"), Some(9401));
    assert!(!net.core.is_registered(None, "alice"));
    assert_eq!(net.core.counters().held_over_limit, 1);
    assert_refused(&net.resume(conn(3), "alice", &token, 2), conn(3));
}

#[test]
fn notify_to_an_away_client_past_the_cap_is_dropped_and_the_client_stays() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let token = net.register(a, "alice");
    net.register(b, "bob");
    net.poll();
    net.lose(a);
    let big = "y".repeat(1000);
    for _ in 0..10 {
        net.send(b, &format!(r#"{{"cmd":"notify","opponentId":"alice","type":"t","data":"{big}"}}"#));
    }
    assert!(net.core.is_registered(None, "alice"), "a third party cannot make a client gone");
    let sent = net.resume(conn(3), "alice", &token, 2);
    let notes = texts_for(&sent, conn(3)).len() - 1;
    assert!((1..=CAP / 1000).contains(&notes), "{notes} notifications held");
}

#[test]
fn what_is_kept_from_before_the_loss_is_bounded_for_a_client_that_never_answers_pings() {
    // She is sent 23 messages (session, ssu 1, the first call, ssu 2, 19 more calls of over
    // 1000 bytes each), never confirms any, and loses her connection.
    let lost = || {
        let mut net = Net::new();
        let (a, b) = (conn(1), conn(2));
        let (token, _, session) = net.pair(a, b);
        let big = "z".repeat(1000);
        for _ in 0..20 {
            net.send(b, &format!(r#"{{"cmd":"call","sessionId":"{session}","offer":"{big}"}}"#));
        }
        net.lose(a);
        (net, token)
    };
    // They cannot all be kept under a 4096-byte bound: a count that needs the oldest is
    // refused.
    let (mut net, token) = lost();
    let sent = net.resume(conn(3), "alice", &token, 2);
    assert_eq!(texts_for(&sent, conn(3)), [ErrorCode::ResumeRefused.message()]);
    // One that needs only what is still kept resumes.
    let (mut net, token) = lost();
    let sent = net.resume(conn(3), "alice", &token, 21);
    assert_eq!(cmds(&texts_for(&sent, conn(3))), ["resume", "call", "call"]);
}

#[test]
fn a_relay_to_a_resumable_client_whose_connection_is_closing_is_held_not_refused() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, session) = net.pair(a, b);
    // The transport sees the socket die, but has not told the core yet.
    net.out.closing.insert(a);
    assert_eq!(net.ice(b, &session, 9), []);
    net.lose(a);
    assert_eq!(ice_numbers(&texts_for(&net.resume(conn(3), "alice", &token, 2), conn(3))), [9]);
}

#[test]
fn an_away_client_in_wait_keeps_its_place_in_the_list_and_gets_the_list_on_resume() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let token = net.register(a, "alice");
    net.register(b, "bob");
    net.poll();
    net.lose(a);
    net.send(conn(5), r#"{"cmd":"sId","sId":"carol"}"#);
    net.at(1.0);
    let sent = net.poll();
    assert!(texts_for(&sent, a).is_empty(), "no list for an away client");
    let list = json(&texts_for(&sent, b)[0]);
    let names: Vec<&str> = list
        .get("list")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e.get_str("sId"))
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    net.resume(conn(3), "alice", &token, 1);
    net.at(2.0);
    let sent = net.poll();
    assert_eq!(cmds(&texts_for(&sent, conn(3))), ["clu"]);
    assert!(texts_for(&sent, b).is_empty(), "a resume changes nobody else's list");
}

#[test]
fn a_replay_lost_again_before_it_was_read_can_be_resumed_again() {
    let mut net = Net::new();
    let (a, b) = (conn(1), conn(2));
    let (token, _, session) = net.pair(a, b);
    let big = "x".repeat(1000);
    // Three calls reach alice's connection (about 3.3 KB kept, under 4096), no pong.
    for _ in 0..3 {
        net.send(b, &format!(r#"{{"cmd":"call","sessionId":"{session}","offer":"{big}"}}"#));
    }
    net.lose(a);
    // Three more while away (about 3.3 KB held).
    for _ in 0..3 {
        net.send(b, &format!(r#"{{"cmd":"call","sessionId":"{session}","offer":"{big}"}}"#));
    }
    let sent = net.resume(conn(3), "alice", &token, 2);
    let replay = texts_for(&sent, conn(3));
    let expected = ["resume", "call", "ssu", "call", "call", "call", "call", "call"];
    assert_eq!(cmds(&replay), expected);
    let token2 = json(&replay[0]).get_str("resumeToken").expect("token").to_owned();
    // The new connection dies at once: she read only the resume reply. Nothing was
    // acknowledged, so all of the replay (twice the bound here) can be replayed again.
    net.lose(conn(3));
    let sent = net.resume(conn(4), "alice", &token2, 0);
    assert_eq!(cmds(&texts_for(&sent, conn(4))), expected);
}

#[test]
fn a_client_that_keeps_losing_its_connection_has_one_grace_running() {
    let mut net = Net::new();
    let mut token = net.register(conn(1), "alice");
    let mut on = conn(1);
    for i in 0..100u32 {
        net.lose(on);
        on = conn(100 + i);
        let sent = net.resume(on, "alice", &token, 0);
        token = json(&texts_for(&sent, on)[0]).get_str("resumeToken").expect("token").to_owned();
    }
    assert_eq!(net.core.away.len(), 0);
    assert_eq!(net.core.next_deadline().filter(|&due| due > net.now + Duration::from_secs(1)), None);
    net.lose(on);
    assert_eq!(net.core.away.len(), 1);
}

#[test]
fn past_max_away_a_lost_connection_is_gone_as_without_resume() {
    let mut net = Net::with(ResumePolicy { grace: GRACE, max_held: CAP, max_away: 2 });
    let tokens: Vec<String> = (1..=3).map(|i| net.register(conn(i), &format!("c{i}"))).collect();
    net.lose(conn(1));
    net.lose(conn(2));
    net.lose(conn(3));
    assert_eq!(net.core.stats().away, 2);
    assert!(!net.core.is_registered(None, "c3"));
    assert_refused(&net.resume(conn(9), "c3", &tokens[2], 0), conn(9));
}
