//! `clu` as state, not events: when the list changes, every WAIT client is owed the newest
//! list. Delivery happens in *rounds* that walk the clients in registration order, encode
//! the list once per version and hand the same bytes to every recipient.
//!
//! Pacing keeps a storm of joins from starving relays: a round delivers at most
//! `bytes_per_poll` per call (the loop relays between calls), and a new round starts no
//! sooner than `min_interval`, or the time the last round's bytes take at
//! `bytes_per_second`, after the previous one; with at most 1000 clients the gap is capped
//! at `small_list_max_interval` so the 250 ms promise of PROTOCOL.md holds.

use std::rc::Rc;
use std::time::{Duration, Instant};

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

pub(crate) struct Round {
    /// Registration-order position to continue from.
    pub cursor: u64,
    pub started: Instant,
    pub bytes: u64,
    pub version_at_start: u64,
    /// Some WAIT client could not take the list (its previous one was unsent).
    pub skipped: bool,
}

pub(crate) struct ClientList {
    pub pacing: ClientListPacing,
    /// Bumped on every change; a client is owed a list while its `list_seen` is lower.
    pub version: u64,
    /// The current list as JSON, shared (not copied) by every connection it is queued on.
    pub encoded: Rc<[u8]>,
    pub encoded_version: Option<u64>,
    /// Where the list is composed before it becomes `encoded`.
    pub scratch: Vec<u8>,
    /// When the next round may start, if one is wanted.
    pub due: Option<Instant>,
    pub round: Option<Round>,
    last_round: Option<(Instant, u64)>,
    /// A client became owed the list without the list changing (a resume); a round under
    /// way may have passed it already, so another one follows.
    owed_meanwhile: bool,
    /// Lists handed to the transport, for metrics and tests.
    pub lists_sent: u64,
    pub bytes_sent: u64,
}

impl ClientList {
    pub fn new(pacing: ClientListPacing) -> Self {
        ClientList {
            pacing,
            version: 0,
            encoded: Rc::from(Vec::new()),
            encoded_version: None,
            scratch: Vec::new(),
            due: None,
            round: None,
            last_round: None,
            owed_meanwhile: false,
            lists_sent: 0,
            bytes_sent: 0,
        }
    }

    pub fn changed(&mut self, now: Instant, registered: usize) {
        self.version += 1;
        if self.round.is_none() && self.due.is_none() {
            self.due = Some(self.earliest_next_round(now, registered));
        }
    }

    /// One client is owed the current list (its `list_seen` was reset): make sure a round
    /// reaches it.
    pub fn owe_one(&mut self, now: Instant, registered: usize) {
        if self.round.is_some() {
            self.owed_meanwhile = true;
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

    /// Starts a round if one is due. Returns whether a round is in progress.
    pub fn start_round_if_due(&mut self, now: Instant) -> bool {
        if self.round.is_none() && self.due.is_some_and(|due| due <= now) {
            self.due = None;
            self.round = Some(Round {
                cursor: 0,
                started: now,
                bytes: 0,
                version_at_start: self.version,
                skipped: false,
            });
        }
        self.round.is_some()
    }

    pub fn finish_round(&mut self, now: Instant, registered: usize) {
        let Some(round) = self.round.take() else { return };
        self.last_round = Some((round.started, round.bytes));
        let changed_meanwhile =
            round.version_at_start != self.version || std::mem::take(&mut self.owed_meanwhile);
        if changed_meanwhile || round.skipped {
            let mut due = self.earliest_next_round(now, registered);
            if round.skipped && !changed_meanwhile {
                due = due.max(now + self.pacing.retry_interval);
            }
            self.due = Some(due);
        }
    }
}
