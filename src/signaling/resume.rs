//! What a resumable client keeps so that a new connection can take it over: its secret
//! token, and the messages it may not have received.
//!
//! Every message given to a resumable client is numbered (1, 2, 3, ... after its last
//! registration or resume reply, as the client counts them) and kept until the client is
//! known to have read it: a pong proves the client read everything queued before its ping
//! ([`Resumable::acknowledge`]). Client lists are numbered but never kept: the current list
//! follows a resume anyway. What is kept is bounded twice: what was produced while the
//! client was away by `max_held` (past it, the client is gone), and what is kept from
//! before the loss by `max_held` as well, plus the last replay until it is acknowledged,
//! within twice `max_held` in all (past it the oldest is dropped, and a resume that would
//! need it is refused). An away client therefore keeps at most three times `max_held`.

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

/// Token length: 16 random bytes as unpadded URL-safe base64.
pub const TOKEN_CHARS: usize = 22;

/// How resume works on this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePolicy {
    /// How long an away client waits for a resume. Zero: resume is off.
    pub grace: Duration,
    /// The bound on what an away client holds (the server's `--max-output`).
    pub max_held: usize,
    /// Clients that may be away at once (the server's `--max-connections`): an away client
    /// holds memory like a connection does, without holding one. Past it, a lost
    /// connection's client is gone, as without resume.
    pub max_away: usize,
}

impl ResumePolicy {
    pub const OFF: ResumePolicy = ResumePolicy { grace: Duration::ZERO, max_held: 0, max_away: 0 };

    pub fn enabled(&self) -> bool {
        !self.grace.is_zero()
    }
}

/// The secret a client resumes with: text, so that comparing is one constant-time pass
/// over what the client sent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token([u8; TOKEN_CHARS]);

impl Token {
    /// A token from 128 random bits.
    pub fn new(random: &mut dyn FnMut() -> u64) -> Token {
        let mut bits = [0u8; 16];
        bits[..8].copy_from_slice(&random().to_le_bytes());
        bits[8..].copy_from_slice(&random().to_le_bytes());
        let mut text = [0u8; TOKEN_CHARS];
        // 16 bytes always encode to exactly 22 characters without padding.
        let written = URL_SAFE_NO_PAD.encode_slice(bits, &mut text).unwrap_or_default();
        debug_assert_eq!(written, TOKEN_CHARS);
        Token(text)
    }

    pub fn as_str(&self) -> &str {
        // Base64 output is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether `offered` is this token, in time that does not depend on where they differ.
    /// (The length is public: every token has the same.)
    pub fn matches(&self, offered: &str) -> bool {
        offered.len() == TOKEN_CHARS && bool::from(self.0.ct_eq(offered.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// A resumable client's token and replay log.
#[derive(Debug)]
pub struct Resumable {
    pub token: Token,
    /// The transport's message count on the attached connection just after the last
    /// registration or resume reply: pongs report counts on that scale.
    pub base: u64,
    /// Messages given to the client since that reply, client lists included.
    sent: u64,
    /// Kept messages, by number, oldest first.
    kept: VecDeque<(u64, Box<[u8]>)>,
    kept_bytes: usize,
    /// Of `kept_bytes`, what was produced while away.
    held_bytes: usize,
    /// Every message numbered below this is no longer kept.
    kept_from: u64,
    /// The replay a resume queued is kept at the front, outside `max_kept`, until
    /// acknowledged: a connection lost again before it was read must be able to resume
    /// again. How many of the front entries, and their bytes.
    replayed: usize,
    replayed_bytes: usize,
    /// While away: the order of its loss among those of the same instant (with the time,
    /// its place in the core's grace queue).
    pub away_order: u64,
}

impl Resumable {
    pub fn new(token: Token, base: u64) -> Self {
        Resumable {
            token,
            base,
            sent: 0,
            kept: VecDeque::new(),
            kept_bytes: 0,
            held_bytes: 0,
            kept_from: 1,
            replayed: 0,
            replayed_bytes: 0,
            away_order: 0,
        }
    }

    /// Bytes produced while away (what counts against `--max-output`).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    #[cfg(test)]
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Numbers and keeps a message given to the attached connection. Once more than
    /// `max_kept` bytes are kept (the replay excepted), the oldest after the replay go; and
    /// all that is kept from before a loss, the replay included, stays within twice that.
    pub fn record_sent(&mut self, message: &[u8], max_kept: usize) {
        self.sent += 1;
        self.kept.push_back((self.sent, message.into()));
        self.kept_bytes += message.len();
        self.trim(max_kept);
    }

    /// Numbers and keeps a message of the replay after a resume.
    pub fn record_replayed(&mut self, message: &[u8], max_kept: usize) {
        debug_assert_eq!(self.replayed, self.kept.len(), "the replay comes first");
        self.sent += 1;
        self.kept.push_back((self.sent, message.into()));
        self.kept_bytes += message.len();
        self.replayed += 1;
        self.replayed_bytes += message.len();
        self.trim(max_kept);
    }

    fn trim(&mut self, max_kept: usize) {
        loop {
            // Nothing is held while attached; held bytes are bounded on their own anyway.
            let before_loss = self.kept_bytes - self.held_bytes;
            let at = if before_loss - self.replayed_bytes > max_kept {
                self.replayed
            } else if before_loss > 2 * max_kept {
                0
            } else {
                return;
            };
            let Some((number, dropped)) = self.kept.remove(at) else { return };
            self.kept_bytes -= dropped.len();
            if at < self.replayed {
                self.replayed -= 1;
                self.replayed_bytes -= dropped.len();
            }
            self.kept_from = self.kept_from.max(number + 1);
        }
    }

    /// Numbers a client list given to the attached connection (lists are not replayed).
    pub fn record_list(&mut self) {
        self.sent += 1;
    }

    /// Whether a message of `len` bytes may still be held while away.
    pub fn can_hold(&self, len: usize, max_held: usize) -> bool {
        self.held_bytes + len <= max_held
    }

    /// Holds a message produced while away.
    pub fn hold(&mut self, message: &[u8]) {
        self.sent += 1;
        self.kept.push_back((self.sent, message.into()));
        self.kept_bytes += message.len();
        self.held_bytes += message.len();
    }

    /// The client has read every message numbered up to `through`.
    pub fn acknowledge(&mut self, through: u64) {
        let through = through.min(self.sent);
        while self.kept.front().is_some_and(|(number, _)| *number <= through) {
            if let Some((_, message)) = self.kept.pop_front() {
                self.kept_bytes -= message.len();
                if self.replayed > 0 {
                    self.replayed -= 1;
                    self.replayed_bytes -= message.len();
                }
                // Only an attached connection acknowledges, and nothing is held then.
                self.held_bytes = self.held_bytes.min(self.kept_bytes);
            }
        }
        self.kept_from = self.kept_from.max(through + 1);
        if self.kept.is_empty() && self.kept.capacity() > 16 {
            // After a burst: an idle resumable client should not keep its peak.
            self.kept = VecDeque::new();
        }
    }

    /// The messages after the first `received`, oldest first, if every one of them is still
    /// kept.
    pub fn replay_after(&self, received: u64) -> Option<impl Iterator<Item = &[u8]> + '_> {
        if received > self.sent || received.saturating_add(1) < self.kept_from {
            return None;
        }
        Some(self.kept.iter().filter(move |(number, _)| *number > received).map(|(_, message)| &**message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0u64;
        move || {
            n += 1;
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        }
    }

    #[test]
    fn tokens_are_22_url_safe_characters_and_match_only_themselves() {
        let mut random = counter();
        let a = Token::new(&mut random);
        let b = Token::new(&mut random);
        assert_eq!(a.as_str().len(), TOKEN_CHARS);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(a.matches(a.as_str()));
        assert!(!a.matches(b.as_str()));
        assert!(!a.matches(&a.as_str()[..21]));
        assert!(!a.matches(&format!("{}x", a.as_str())));
        assert!(!a.matches(""));
    }

    fn log(messages: &[&str]) -> Resumable {
        let mut log = Resumable::new(Token::new(&mut counter()), 0);
        for message in messages {
            log.record_sent(message.as_bytes(), 1 << 20);
        }
        log
    }

    fn replay(log: &Resumable, received: u64) -> Option<Vec<String>> {
        Some(log.replay_after(received)?.map(|m| String::from_utf8_lossy(m).into_owned()).collect())
    }

    #[test]
    fn replay_gives_what_follows_the_count() {
        let log = log(&["a", "b", "c"]);
        assert_eq!(replay(&log, 0), Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(replay(&log, 2), Some(vec!["c".into()]));
        assert_eq!(replay(&log, 3), Some(vec![]));
        assert_eq!(replay(&log, 4), None, "more received than was sent");
    }

    #[test]
    fn lists_are_counted_but_not_replayed() {
        let mut log = log(&["a"]);
        log.record_list();
        log.record_sent(b"b", 1 << 20);
        assert_eq!(log.sent(), 3);
        assert_eq!(replay(&log, 1), Some(vec!["b".into()]));
        assert_eq!(replay(&log, 2), Some(vec!["b".into()]));
    }

    #[test]
    fn an_acknowledgement_drops_what_it_covers_and_a_replay_needing_it_is_refused() {
        let mut log = log(&["a", "b", "c"]);
        log.acknowledge(2);
        assert_eq!(log.kept_bytes(), 1);
        assert_eq!(replay(&log, 2), Some(vec!["c".into()]));
        assert_eq!(replay(&log, 1), None, "message 2 is gone");
        log.acknowledge(1);
        assert_eq!(replay(&log, 2), Some(vec!["c".into()]), "acknowledgements never go back");
        log.acknowledge(99);
        assert_eq!(replay(&log, 3), Some(vec![]));
    }

    #[test]
    fn what_is_kept_from_before_the_loss_is_bounded() {
        let mut log = Resumable::new(Token::new(&mut counter()), 0);
        for _ in 0..10 {
            log.record_sent(&[b'x'; 100], 250);
        }
        assert_eq!(log.kept_bytes(), 200);
        assert_eq!(replay(&log, 8).map(|r| r.len()), Some(2));
        assert_eq!(replay(&log, 7), None);
    }

    #[test]
    fn a_replay_is_kept_outside_the_bound_until_acknowledged_within_twice_it() {
        let replayed = |n: usize| {
            let mut log = Resumable::new(Token::new(&mut counter()), 0);
            for _ in 0..n {
                log.record_replayed(&[b'r'; 100], 300);
            }
            log
        };
        // Lost again before anything was read: the whole replay can be replayed again.
        let mut log = replayed(5);
        log.record_sent(&[b'n'; 100], 300);
        assert_eq!(replay(&log, 0).map(|r| r.len()), Some(6));
        // Newer messages are bounded on their own, dropping the oldest after the replay.
        let mut log = replayed(2);
        for _ in 0..4 {
            log.record_sent(&[b'n'; 100], 300);
        }
        assert_eq!(log.kept_bytes(), 500);
        assert_eq!(replay(&log, 2), None, "message 3 went");
        assert_eq!(replay(&log, 0), None);
        assert_eq!(replay(&log, 3).map(|r| r.len()), Some(3));
        // And all of it stays within twice the bound: the oldest of the replay go first.
        let mut log = replayed(5);
        for _ in 0..3 {
            log.record_sent(&[b'n'; 100], 300);
        }
        assert_eq!(log.kept_bytes(), 600);
        assert_eq!(replay(&log, 1), None);
        assert_eq!(replay(&log, 2).map(|r| r.len()), Some(6));
        // Acknowledged, the replay is freed like anything else.
        log.acknowledge(5);
        assert_eq!(log.kept_bytes(), 300);
    }

    #[test]
    fn held_messages_count_against_their_own_bound_only() {
        let mut log = Resumable::new(Token::new(&mut counter()), 0);
        log.record_sent(&[b'x'; 100], 1000);
        assert!(log.can_hold(300, 300));
        log.hold(&[b'y'; 300]);
        assert_eq!(log.held_bytes(), 300);
        assert!(!log.can_hold(1, 300));
        assert_eq!(replay(&log, 0).map(|r| r.len()), Some(2));
    }

    thread_local!(static STATS: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) });
    /// Random sequences of sends, lists, holds, acknowledgements and resumes: a replay is
    /// either refused or exactly the messages after the count, in order; the bounds hold;
    /// nothing panics.
    #[test]
    fn random_logs_replay_exactly_or_refuse() {
        let max = 1000usize;
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _case in 0..3000 {
            let mut log = Resumable::new(Token::new(&mut counter()), 0);
            // What the client was given, in order: Some(payload) or None for a list.
            let mut given: Vec<Option<Vec<u8>>> = Vec::new();
            let mut away = false;
            let mut next_id = 0u32;
            for _ in 0..60 {
                next_id += 1;
                let len = 1 + rnd(400) as usize;
                let mut payload = next_id.to_le_bytes().to_vec();
                payload.resize(len.max(4), b'.');
                match rnd(10) {
                    0..=3 if !away => {
                        log.record_sent(&payload, max);
                        given.push(Some(payload));
                    }
                    4 if !away => {
                        log.record_list();
                        given.push(None);
                    }
                    5 if !away => {
                        let through = rnd(given.len() as u64 + 1);
                        log.acknowledge(through);
                    }
                    6 | 7 if away && log.can_hold(payload.len(), max) => {
                        log.hold(&payload);
                        given.push(Some(payload));
                    }
                    8 if !away => away = true,
                    9 if away => {
                        let received = rnd(given.len() as u64 + 2);
                        let replay: Option<Vec<Vec<u8>>> =
                            log.replay_after(received).map(|r| r.map(<[u8]>::to_vec).collect());
                        match replay {
                            None => STATS.with(|c| c.set((c.get().0 + 1, c.get().1))),
                            Some(got) => {
                                STATS.with(|c| c.set((c.get().0, c.get().1 + 1)));
                                let want: Vec<Vec<u8>> =
                                    given[received as usize..].iter().flatten().cloned().collect();
                                assert_eq!(got, want, "received {received}");
                                let mut fresh = Resumable::new(Token::new(&mut counter()), 0);
                                for message in &got {
                                    fresh.record_replayed(message, max);
                                }
                                log = fresh;
                                given = got.into_iter().map(Some).collect();
                                away = false;
                            }
                        }
                    }
                    _ => {}
                }
                assert!(log.held_bytes() <= max);
                assert!(log.kept_bytes() - log.held_bytes() <= 2 * max, "{} kept", log.kept_bytes());
                assert_eq!(log.sent(), given.len() as u64);
            }
        }
        let (refused, resumed) = STATS.with(|c| c.get());
        assert!(refused > 100 && resumed > 100, "{refused} refused, {resumed} resumed: both paths ran");
    }
}
