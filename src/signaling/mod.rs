//! The signaling core: registered clients, their sessions and the client list, as a pure
//! state machine.
//!
//! # Driving it
//!
//! Feed it one input at a time, each with the current time:
//!
//! * [`Signaling::handle_message`] with a complete WebSocket message from a connection;
//! * [`Signaling::disconnect`] when a connection has ended, for any reason (this runs the
//!   *leave* procedure; do not call it on server shutdown, which sends no `leave`);
//! * [`Signaling::poll_client_list`] once per loop turn, and again at the time it returns.
//!
//! Every message the core produces goes to the [`Outbox`] passed in, addressed by
//! [`ConnId`], in the order the client must receive it. There are no sockets, clocks, locks,
//! threads or callbacks into the transport here; the only side effect besides the outbox is
//! drawing session ids from the random source it was built with.
//!
//! Input never panics: every malformed or hostile command becomes the `error` message
//! PROTOCOL.md names. A panic here is a bug.

mod client_list;
mod outbox;
mod registry;
mod sessions;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::time::Instant;

pub use crate::protocol::SessionState;
pub use client_list::ClientListPacing;
pub use outbox::{ConnId, Delivery, ListDelivery, MemoryOutbox, Outbox};

use crate::protocol::{Command, CommandKind, ErrorCode, Parser, RawJson, Relay, SessionId, encode};
use client_list::ClientList;
use registry::Registry;
use sessions::Sessions;

/// The core's state in numbers (the transport exports them as metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub registered: usize,
    pub sessions: usize,
    pub sessions_new: usize,
    pub sessions_pending: usize,
    pub sessions_active: usize,
    pub client_lists_sent: u64,
    pub client_list_bytes: u64,
}

/// What the core has been asked and has answered, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// Messages that passed checks 1-3, indexed by [`CommandKind::index`].
    pub commands: [u64; CommandKind::COUNT],
    /// Messages that failed checks 1-3 (not JSON, wrong shape, unknown command).
    pub invalid_messages: u64,
    /// `error` messages sent, indexed by [`ErrorCode::index`] (the order of [`ErrorCode::ALL`]).
    pub errors: [u64; ErrorCode::COUNT],
}

pub struct Signaling {
    registry: Registry,
    sessions: Sessions,
    client_list: ClientList,
    /// Taken out while a message is handled (its result borrows it); an `Option` so that
    /// taking it is a move, not the construction of a fresh parser's buffers.
    parser: Option<Parser>,
    /// Reused for composing each outgoing message.
    scratch: Vec<u8>,
    random: Box<dyn FnMut() -> u64>,
    counters: CoreCounters,
    /// Connections that may register only one sId (token auth), until they disconnect.
    restricted: HashMap<ConnId, Box<str>>,
}

impl Default for Signaling {
    fn default() -> Self {
        Signaling::new(ClientListPacing::default())
    }
}

impl Signaling {
    /// A core drawing session ids from the operating system's random generator.
    pub fn new(pacing: ClientListPacing) -> Self {
        Signaling::with_random(pacing, Box::new(os_random_u64))
    }

    /// A core with its own source of session ids (tests use this to force collisions).
    pub fn with_random(pacing: ClientListPacing, random: Box<dyn FnMut() -> u64>) -> Self {
        Signaling {
            registry: Registry::default(),
            sessions: Sessions::default(),
            client_list: ClientList::new(pacing),
            parser: Some(Parser::default()),
            scratch: Vec::with_capacity(256),
            random,
            counters: CoreCounters::default(),
            restricted: HashMap::new(),
        }
    }

    pub fn counters(&self) -> CoreCounters {
        self.counters
    }

    pub fn stats(&self) -> CoreStats {
        let in_state = |state| self.sessions.iter().filter(|(_, session)| session.state == state).count();
        CoreStats {
            registered: self.registry.len(),
            sessions: self.sessions.len(),
            sessions_new: in_state(SessionState::New),
            sessions_pending: in_state(SessionState::Pending),
            sessions_active: in_state(SessionState::Active),
            client_lists_sent: self.client_list.lists_sent,
            client_list_bytes: self.client_list.bytes_sent,
        }
    }

    /// Checks the core's internal consistency: every index agrees with the others, every
    /// CALLING client is in exactly one live session and every live session's two members
    /// are CALLING in it. For tests (including property tests); cost is O(clients).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut calling = 0;
        for (conn, client) in self.registry.entries() {
            if self.registry.find(&client.sid) != Some(conn) {
                return Err(format!("sId {:?} does not map back to its connection", client.sid));
            }
            if let Some(key) = client.session {
                calling += 1;
                let session =
                    self.sessions.get(key).ok_or_else(|| format!("{:?} is in a dead session", client.sid))?;
                if session.opponent_of(conn).is_none() {
                    return Err(format!("{:?} is not a member of its session", client.sid));
                }
            }
        }
        if self.registry.entries().count() != self.registry.len() {
            return Err("registration order and sId index disagree".into());
        }
        for (key, session) in self.sessions.iter() {
            let [a, b] = session.members;
            if a == b {
                return Err("a session with itself".into());
            }
            for member in [a, b] {
                let client = self.registry.get(member).ok_or("a session member is not registered")?;
                if client.session != Some(key) {
                    return Err(format!("{:?} is a member of a session it is not in", client.sid));
                }
            }
        }
        if calling != 2 * self.sessions.len() {
            return Err(format!("{calling} CALLING clients for {} sessions", self.sessions.len()));
        }
        Ok(())
    }

    /// The sId `conn` registered, if it did.
    pub fn sid_of(&self, conn: ConnId) -> Option<&str> {
        self.registry.get(conn).map(|client| &*client.sid)
    }

    /// Handles one complete message (text or binary) from `from`.
    pub fn handle_message(&mut self, from: ConnId, raw: &[u8], now: Instant, out: &mut dyn Outbox) {
        let mut parser = self.parser.take().unwrap_or_default();
        let result = match parser.parse(raw) {
            Ok(request) => {
                self.counters.commands[request.kind.index()] += 1;
                if request.kind != CommandKind::Register && self.registry.get(from).is_none() {
                    Err(ErrorCode::NotRegistered)
                } else {
                    request.command().and_then(|command| self.execute(from, command, now, out))
                }
            }
            Err(code) => {
                self.counters.invalid_messages += 1;
                Err(code)
            }
        };
        self.parser = Some(parser);
        if let Err(code) = result {
            self.send_error(from, code, out);
        }
    }

    /// Lets `conn` register only `sid` (its auth token names it); any other gets 9103.
    pub fn restrict_sid(&mut self, conn: ConnId, sid: &str) {
        self.restricted.insert(conn, sid.into());
    }

    /// Answers `to` with error `code` for a command the transport refused before it reached
    /// the core (9500, rate limit), so the error is counted with the others.
    pub fn refuse(&mut self, to: ConnId, code: ErrorCode, out: &mut dyn Outbox) {
        self.send_error(to, code, out);
    }

    fn send_error(&mut self, to: ConnId, code: ErrorCode, out: &mut dyn Outbox) {
        self.counters.errors[code.index()] += 1;
        out.send(to, code.message().as_bytes());
    }

    fn execute(
        &mut self,
        from: ConnId,
        command: Command<'_>,
        now: Instant,
        out: &mut dyn Outbox,
    ) -> Result<(), ErrorCode> {
        match command {
            Command::Register { sid } => self.register(from, sid, now, out),
            Command::Session { opponent_id } => self.open_session(from, opponent_id, now, out),
            Command::Relay { action, session_id, payload } => {
                self.relay(from, action, session_id, payload, now, out)
            }
            Command::Notify { opponent_id, notify_type, data } => {
                self.notify(from, opponent_id, notify_type, data, out)
            }
        }
    }

    fn register(
        &mut self,
        from: ConnId,
        sid: &str,
        now: Instant,
        out: &mut dyn Outbox,
    ) -> Result<(), ErrorCode> {
        if self.registry.get(from).is_some() {
            return Err(ErrorCode::AlreadyRegistered);
        }
        if self.restricted.get(&from).is_some_and(|allowed| **allowed != *sid) {
            return Err(ErrorCode::SidNotAllowed);
        }
        if self.registry.find(sid).is_some() {
            return Err(ErrorCode::SidTaken);
        }
        let client = self.registry.insert(from, sid);
        self.scratch.clear();
        encode::registered(&mut self.scratch, &client.sid_json);
        out.send(from, &self.scratch);
        self.client_list.changed(now, self.registry.len());
        Ok(())
    }

    fn open_session(
        &mut self,
        from: ConnId,
        opponent_id: &str,
        now: Instant,
        out: &mut dyn Outbox,
    ) -> Result<(), ErrorCode> {
        let me = self.registry.get(from).ok_or(ErrorCode::NotRegistered)?;
        if *me.sid == *opponent_id {
            return Err(ErrorCode::SessionWithSelf);
        }
        let opponent = self.registry.find(opponent_id).ok_or(ErrorCode::OpponentNotFound)?;
        if me.session.is_some() {
            return Err(ErrorCode::AlreadyInSession);
        }
        if self.registry.get(opponent).is_some_and(|client| client.session.is_some()) {
            return Err(ErrorCode::OpponentBusy);
        }
        let key = self.sessions.open([from, opponent], &mut *self.random);
        for member in [from, opponent] {
            if let Some(client) = self.registry.get_mut(member) {
                client.session = Some(key);
            }
        }
        self.scratch.clear();
        encode::session_opened(&mut self.scratch, key);
        out.send(from, &self.scratch);
        self.announce_state(key, [from, opponent], SessionState::New, out);
        self.client_list.changed(now, self.registry.len());
        Ok(())
    }

    fn relay(
        &mut self,
        from: ConnId,
        action: Relay,
        session_id: &str,
        payload: Option<RawJson<'_>>,
        now: Instant,
        out: &mut dyn Outbox,
    ) -> Result<(), ErrorCode> {
        let key = SessionId::parse(session_id).ok_or(ErrorCode::SessionNotFound)?;
        let session = self.sessions.get(key).ok_or(ErrorCode::SessionNotFound)?;
        let opponent = session.opponent_of(from).ok_or(ErrorCode::SessionNotFound)?;
        let members = session.members;
        let current = session.state;
        let sender = self.registry.get(from).ok_or(ErrorCode::NotRegistered)?;

        self.scratch.clear();
        encode::relayed(&mut self.scratch, action, key, &sender.sid_json, payload);
        if out.send(opponent, &self.scratch) != Delivery::Queued {
            self.send_error(from, ErrorCode::OpponentGone, out);
            self.close_session(key, members, now, out);
            return Ok(());
        }

        let next = match action {
            Relay::Call => SessionState::Pending,
            Relay::Accept => SessionState::Active,
            Relay::IceCandidate => current,
            Relay::Reject | Relay::Stop => SessionState::Closed,
        };
        if next == SessionState::Closed {
            self.close_session(key, members, now, out);
        } else if next != current {
            if let Some(session) = self.sessions.get_mut(key) {
                session.state = next;
            }
            self.announce_state(key, members, next, out);
        }
        Ok(())
    }

    fn notify(
        &mut self,
        from: ConnId,
        opponent_id: &str,
        notify_type: &str,
        data: Option<RawJson<'_>>,
        out: &mut dyn Outbox,
    ) -> Result<(), ErrorCode> {
        let me = self.registry.get(from).ok_or(ErrorCode::NotRegistered)?;
        if *me.sid == *opponent_id {
            return Err(ErrorCode::NotifySelf);
        }
        let target = self.registry.find(opponent_id).ok_or(ErrorCode::NotifyTargetNotFound)?;
        self.scratch.clear();
        encode::notification(&mut self.scratch, &me.sid_json, notify_type, data);
        // notify promises no delivery: a target on its way out, or too far behind, misses it.
        out.offer(target, &self.scratch);
        Ok(())
    }

    /// The *leave* procedure: `conn`'s connection has ended. Its opponent, if any, gets
    /// `leave` then `ssu 4`; its sId is free again at once. Unknown or unregistered
    /// connections are ignored, so calling this for every closed connection is fine.
    pub fn disconnect(&mut self, conn: ConnId, now: Instant, out: &mut dyn Outbox) {
        self.restricted.remove(&conn);
        let Some(client) = self.registry.remove(conn) else { return };
        if let Some(key) = client.session
            && let Some(session) = self.sessions.remove(key)
            && let Some(opponent) = session.opponent_of(conn)
        {
            self.scratch.clear();
            encode::left(&mut self.scratch, key, &client.sid_json);
            out.send(opponent, &self.scratch);
            self.scratch.clear();
            encode::session_state(&mut self.scratch, key, SessionState::Closed);
            out.send(opponent, &self.scratch);
            if let Some(opponent) = self.registry.get_mut(opponent) {
                opponent.session = None;
            }
        }
        self.client_list.changed(now, self.registry.len());
    }

    fn close_session(&mut self, key: SessionId, members: [ConnId; 2], now: Instant, out: &mut dyn Outbox) {
        self.sessions.remove(key);
        for member in members {
            if let Some(client) = self.registry.get_mut(member) {
                client.session = None;
            }
        }
        self.announce_state(key, members, SessionState::Closed, out);
        self.client_list.changed(now, self.registry.len());
    }

    fn announce_state(
        &mut self,
        key: SessionId,
        members: [ConnId; 2],
        state: SessionState,
        out: &mut dyn Outbox,
    ) {
        self.scratch.clear();
        encode::session_state(&mut self.scratch, key, state);
        for member in members {
            out.send(member, &self.scratch);
        }
    }

    /// When [`poll_client_list`](Signaling::poll_client_list) has work next: `None` while
    /// nothing is owed; a time already past while a round is under way.
    pub fn client_list_due(&self) -> Option<Instant> {
        match &self.client_list.round {
            Some(round) => Some(round.started),
            None => self.client_list.due,
        }
    }

    /// Delivers owed client lists, within the pacing budget. Returns when to call again
    /// (`now` or earlier: at once, a round is under way), or `None` while nothing is owed.
    pub fn poll_client_list(&mut self, now: Instant, out: &mut dyn Outbox) -> Option<Instant> {
        if !self.client_list.start_round_if_due(now) {
            return self.client_list.due;
        }
        let list = &mut self.client_list;
        if list.encoded_version != Some(list.version) {
            list.scratch.clear();
            encode::client_list(
                &mut list.scratch,
                self.registry.clients().map(|client| (&client.sid_json, client.state())),
            );
            list.encoded = Rc::from(list.scratch.as_slice());
            list.encoded_version = Some(list.version);
        }
        let registered = self.registry.len();
        let ClientList { pacing, version, encoded, round, lists_sent, bytes_sent, .. } = list;
        let Some(round) = round.as_mut() else { return self.client_list.due };
        let mut budget = pacing.bytes_per_poll;
        let mut finished = true;
        self.registry.walk_from(round.cursor, |order, conn, client| {
            if budget == 0 {
                round.cursor = order;
                finished = false;
                return ControlFlow::Break(());
            }
            if client.session.is_none() && client.list_seen < *version {
                match out.send_client_list(conn, encoded) {
                    ListDelivery::Queued => {
                        client.list_seen = *version;
                        round.bytes += encoded.len() as u64;
                        *lists_sent += 1;
                        *bytes_sent += encoded.len() as u64;
                        budget = budget.saturating_sub(encoded.len());
                    }
                    ListDelivery::Busy => round.skipped = true,
                    // On its way out: its departure will change the list anyway.
                    ListDelivery::Gone => {}
                }
            }
            ControlFlow::Continue(())
        });
        if !finished {
            return Some(now);
        }
        self.client_list.finish_round(now, registered);
        self.client_list.due
    }
}

fn os_random_u64() -> u64 {
    // The OS generator only fails on a broken system (no /dev/urandom, no getrandom(2));
    // no client input reaches this, and serving sessions with guessable ids would be worse.
    #[allow(clippy::expect_used)]
    getrandom::u64().expect("the operating system's random generator failed")
}
