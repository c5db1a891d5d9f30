//! Pairs of clients in ACTIVE sessions sending ICE candidates to each other, with a
//! bounded window in flight per direction (closed loop) or at a fixed offered rate (open
//! loop). Used by the `relay` mode and, as the latency probe, by `churn`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::fleet::{ClientEvent, Fleet};
use crate::wire;

/// Handshakes in flight at once while connecting: keeps the server's accept backlog sane.
const CONNECTS_IN_FLIGHT: usize = 256;
/// Open loop: a direction with this many messages in flight stops offering more.
const OPEN_LOOP_IN_FLIGHT_CAP: u32 = 10_000;

/// Open loop: (due time in ns since the epoch, pair, sending side), earliest first.
type SendSchedule = BinaryHeap<Reverse<(u64, usize, usize)>>;

#[derive(Default)]
struct Direction {
    next_seq: u64,
    in_flight: u32,
    /// Receiver side: the next sequence number expected.
    expected: u64,
    sent_in_window: u64,
    received_in_window: u64,
}

struct Pair {
    keys: [Option<usize>; 2],
    opened: [bool; 2],
    sids: [String; 2],
    registered: [bool; 2],
    active: [bool; 2],
    session: Option<String>,
    /// Indexed by the sending side.
    directions: [Direction; 2],
}

pub struct Pairs {
    pairs: Vec<Pair>,
    /// Fleet key -> (pair, side).
    owner: Vec<Option<(usize, usize)>>,
    to_connect: usize,
    connecting: usize,
    pub errors: u64,
    pub first_error: Option<String>,
    pub closed: u64,
    window: u32,
    pad: String,
    buf: String,
    epoch: Instant,
    counting: Option<(u64, u64)>,
    sending: bool,
    rate: Option<(Duration, SendSchedule)>,
    pub skipped_open_loop: u64,
    pub latency_ns: Histogram<u64>,
    pub reordered: u64,
}

impl Pairs {
    pub fn new(count: usize, prefix: &str, window: u32, payload_bytes: usize) -> Pairs {
        let pairs = (0..count)
            .map(|i| Pair {
                keys: [None, None],
                opened: [false; 2],
                sids: [format!("{prefix}-{i}-a"), format!("{prefix}-{i}-b")],
                registered: [false; 2],
                active: [false; 2],
                session: None,
                directions: Default::default(),
            })
            .collect();
        Pairs {
            pairs,
            owner: Vec::new(),
            to_connect: count * 2,
            connecting: 0,
            errors: 0,
            first_error: None,
            closed: 0,
            window: window.max(1),
            pad: wire::padding(payload_bytes),
            buf: String::new(),
            epoch: Instant::now(),
            counting: None,
            sending: false,
            rate: None,
            skipped_open_loop: 0,
            // 1 ns .. 60 s, 3 significant digits.
            latency_ns: latency_histogram(),
            reordered: 0,
        }
    }

    /// Every pair has both sides in an ACTIVE session.
    pub fn all_active(&self) -> bool {
        self.pairs.iter().all(|p| p.active == [true, true])
    }

    /// Opens more connections, keeping at most `CONNECTS_IN_FLIGHT` handshakes pending.
    pub fn connect_more(&mut self, fleet: &mut Fleet) -> std::io::Result<()> {
        while self.to_connect > 0 && self.connecting < CONNECTS_IN_FLIGHT {
            let index = self.pairs.len() * 2 - self.to_connect;
            let (pair, side) = (index / 2, index % 2);
            let key = fleet.connect()?;
            if self.owner.len() <= key {
                self.owner.resize(key + 1, None);
            }
            self.owner[key] = Some((pair, side));
            self.pairs[pair].keys[side] = Some(key);
            self.to_connect -= 1;
            self.connecting += 1;
        }
        Ok(())
    }

    fn ns(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_nanos() as u64
    }

    /// Handles an event if it belongs to one of the pairs' clients.
    pub fn on_event(&mut self, fleet: &mut Fleet, key: usize, event: &ClientEvent, now: Instant) -> bool {
        let Some(&Some((pair, side))) = self.owner.get(key) else { return false };
        match event {
            ClientEvent::Opened => {
                self.connecting = self.connecting.saturating_sub(1);
                self.pairs[pair].opened[side] = true;
                let text = format!(r#"{{"cmd":"sId","sId":"{}"}}"#, self.pairs[pair].sids[side]);
                fleet.send(key, &text);
            }
            ClientEvent::Closed(code) => {
                if !self.pairs[pair].opened[side] {
                    self.connecting = self.connecting.saturating_sub(1);
                }
                self.closed += 1;
                self.note_error(format!("{} closed (code {code:?})", self.pairs[pair].sids[side]));
            }
            ClientEvent::Text(text) => {
                if wire::is_relayed_candidate(text) {
                    self.on_candidate(fleet, pair, side, text, now);
                } else if !wire::is_client_list(text) {
                    self.on_setup_message(fleet, pair, side, text);
                }
            }
        }
        true
    }

    fn note_error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }

    fn on_setup_message(&mut self, fleet: &mut Fleet, pair: usize, side: usize, text: &str) {
        let Some(message) = wire::parse(text) else {
            return self.note_error(format!("unparsable message {text:.80}"));
        };
        let p = &mut self.pairs[pair];
        match (message.cmd.as_str(), side) {
            ("sId", _) if message.sid.as_deref() == Some(p.sids[side].as_str()) => {
                p.registered[side] = true;
                if p.registered == [true, true]
                    && let Some(a) = p.keys[0]
                {
                    let text = format!(r#"{{"cmd":"session","opponentId":"{}"}}"#, p.sids[1]);
                    fleet.send(a, &text);
                }
            }
            ("session", 0) => {
                p.session = message.session_id;
                if let (Some(a), Some(session)) = (p.keys[0], &p.session) {
                    let text = format!(
                        r#"{{"cmd":"call","sessionId":"{session}","offer":{{"type":"offer","sdp":"v=0\r\n"}}}}"#
                    );
                    fleet.send(a, &text);
                }
            }
            ("ssu", 1) if message.state == Some(1) => p.session = message.session_id,
            ("call", 1) => {
                if let (Some(b), Some(session)) = (p.keys[1], &p.session) {
                    let text = format!(
                        r#"{{"cmd":"accept","sessionId":"{session}","answer":{{"type":"answer","sdp":"v=0\r\n"}}}}"#
                    );
                    fleet.send(b, &text);
                }
            }
            ("ssu", _) if message.state == Some(3) => p.active[side] = true,
            ("ssu", _) if message.state == Some(4) => {
                p.active[side] = false;
                let what = format!("{} session closed", p.sids[side]);
                self.note_error(what);
            }
            ("error", _) => {
                let what = format!("{} got error {:?}", p.sids[side], message.code);
                self.note_error(what);
            }
            ("leave", _) => {
                let what = format!("{} got leave", p.sids[side]);
                self.note_error(what);
            }
            _ => {}
        }
    }

    /// Starts traffic: counted messages are those *sent* in `[now + warmup, + duration)`.
    /// `rate` (messages/s over all directions) switches to open loop.
    pub fn start(
        &mut self,
        fleet: &mut Fleet,
        now: Instant,
        warmup: Duration,
        duration: Duration,
        rate: Option<f64>,
    ) {
        let start = self.ns(now + warmup);
        self.counting = Some((start, start + duration.as_nanos() as u64));
        self.sending = true;
        match rate {
            Some(rate) if rate > 0.0 => {
                let directions = self.pairs.len() * 2;
                let interval = Duration::from_secs_f64(directions as f64 / rate);
                let mut heap = BinaryHeap::with_capacity(directions);
                let base = self.ns(now);
                for index in 0..directions {
                    let offset = interval.as_nanos() as u64 * index as u64 / directions as u64;
                    heap.push(Reverse((base + offset, index / 2, index % 2)));
                }
                self.rate = Some((interval, heap));
                self.pump(fleet, now);
            }
            _ => {
                for pair in 0..self.pairs.len() {
                    for side in 0..2 {
                        while self.pairs[pair].directions[side].in_flight < self.window {
                            let t = self.ns(now);
                            self.send_candidate(fleet, pair, side, t);
                        }
                    }
                }
            }
        }
    }

    pub fn stop_sending(&mut self) {
        self.sending = false;
    }

    pub fn in_flight(&self) -> u64 {
        self.pairs.iter().flat_map(|p| p.directions.iter()).map(|d| u64::from(d.in_flight)).sum()
    }

    /// Open loop: sends every message whose time has come. Returns when the next one is due.
    pub fn pump(&mut self, fleet: &mut Fleet, now: Instant) -> Option<Instant> {
        if !self.sending {
            return None;
        }
        let now_ns = self.ns(now);
        let (interval, mut heap) = self.rate.take()?;
        while let Some(&Reverse((due, pair, side))) = heap.peek() {
            if due > now_ns {
                break;
            }
            heap.pop();
            if self.pairs[pair].directions[side].in_flight < OPEN_LOOP_IN_FLIGHT_CAP {
                // Stamped with the intended time, so a late send shows as latency
                // (no coordinated omission).
                self.send_candidate(fleet, pair, side, due);
            } else {
                self.skipped_open_loop += 1;
            }
            heap.push(Reverse((due + interval.as_nanos() as u64, pair, side)));
        }
        let next = heap.peek().map(|Reverse((due, ..))| self.epoch + Duration::from_nanos(*due));
        self.rate = Some((interval, heap));
        next
    }

    fn send_candidate(&mut self, fleet: &mut Fleet, pair: usize, side: usize, t: u64) {
        let p = &mut self.pairs[pair];
        let (Some(key), Some(session)) = (p.keys[side], &p.session) else { return };
        let direction = &mut p.directions[side];
        wire::candidate(&mut self.buf, session, &self.pad, direction.next_seq, t);
        direction.next_seq += 1;
        direction.in_flight += 1;
        if self.counting.is_some_and(|(start, end)| (start..end).contains(&t)) {
            direction.sent_in_window += 1;
        }
        fleet.send(key, &self.buf);
    }

    fn on_candidate(&mut self, fleet: &mut Fleet, pair: usize, receiver: usize, text: &str, now: Instant) {
        let Some((seq, t)) = wire::relay_stamp(text) else {
            return self.note_error(format!("unstamped candidate {text:.80}"));
        };
        let sender = 1 - receiver;
        let now_ns = self.ns(now);
        let direction = &mut self.pairs[pair].directions[sender];
        direction.in_flight = direction.in_flight.saturating_sub(1);
        if seq != direction.expected {
            self.reordered += 1;
        }
        direction.expected = seq + 1;
        if self.counting.is_some_and(|(start, end)| (start..end).contains(&t)) {
            direction.received_in_window += 1;
            let _ = self.latency_ns.record(now_ns.saturating_sub(t).max(1));
        }
        if self.sending && self.rate.is_none() && self.counting.is_some_and(|(_, end)| now_ns < end) {
            self.send_candidate(fleet, pair, sender, now_ns);
        }
    }

    /// The measurement window has passed.
    pub fn window_over(&self, now: Instant) -> bool {
        self.counting.is_some_and(|(_, end)| self.ns(now) >= end)
    }

    pub fn counting_started(&self, now: Instant) -> bool {
        self.counting.is_some_and(|(start, _)| self.ns(now) >= start)
    }

    pub fn delivered(&self) -> u64 {
        self.pairs.iter().flat_map(|p| p.directions.iter()).map(|d| d.received_in_window).sum()
    }

    pub fn lost(&self) -> u64 {
        self.pairs
            .iter()
            .flat_map(|p| p.directions.iter())
            .map(|d| d.sent_in_window.saturating_sub(d.received_in_window))
            .sum()
    }

    /// Messages each receiving client got in the window: (min, median, max).
    pub fn fairness(&self) -> (u64, u64, u64) {
        let mut counts: Vec<u64> =
            self.pairs.iter().flat_map(|p| p.directions.iter()).map(|d| d.received_in_window).collect();
        counts.sort_unstable();
        match (counts.first(), counts.get(counts.len() / 2), counts.last()) {
            (Some(&min), Some(&median), Some(&max)) => (min, median, max),
            _ => (0, 0, 0),
        }
    }
}

/// Latencies from 1 ns to 60 s with 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // Constant, valid bounds: construction cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}
