//! The signaling core: registered clients, their sessions and the client list, as a pure
//! state machine.
//!
//! # Driving it
//!
//! Feed it one input at a time, each with the current time:
//!
//! * [`Signaling::handle_message`] with a complete WebSocket message from a connection;
//! * [`Signaling::disconnect`] when a connection has ended and its client is *gone* (a
//!   close frame, a broken limit or rule): this runs the *leave* procedure. Do not call it
//!   on server shutdown, which sends no `leave`;
//! * [`Signaling::connection_lost`] when a connection ended without a close (reset, EOF,
//!   liveness timeout): a client that opted in to resume is then *away*, not gone;
//! * [`Signaling::acknowledge`] when a pong shows how many messages a connection has read;
//! * [`Signaling::poll`] once per loop turn, and again at the time it returns (client
//!   lists, and the end of away clients' grace).
//!
//! A registered client has an identity of its own ([`ClientId`]), apart from the
//! connection it came on: sessions and the client list refer to clients, and a resumable
//! client can be away (no connection) for a while. Every message the core produces goes to
//! the [`Outbox`] passed in, addressed to the [`ConnId`] its client is attached to, in the
//! order the client must receive it, or is held while the client is away. There are no sockets, clocks, locks,
//! threads or callbacks into the transport here; the only side effect besides the outbox is
//! drawing session ids from the random source it was built with.
//!
//! Input never panics: every malformed or hostile command becomes the `error` message
//! PROTOCOL.md names. A panic here is a bug.

mod client_list;
mod outbox;
mod registry;
mod resume;
#[cfg(test)]
mod resume_tests;
mod sessions;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::time::Instant;

pub use crate::protocol::SessionState;
pub use client_list::ClientListPacing;
pub use outbox::{ConnId, Delivery, ListDelivery, MemoryOutbox, Outbox};
pub use registry::ClientId;
pub use resume::{ResumePolicy, TOKEN_CHARS};

use crate::protocol::{Command, CommandKind, ErrorCode, OptIn, Parser, RawJson, Relay, SessionId, encode};
use client_list::ClientList;
use registry::{Link, Registry};
use resume::{Resumable, Token};
use sessions::Sessions;

/// The core's state in numbers (the transport exports them as metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub registered: usize,
    /// Registered clients whose connection was lost, waiting for a resume.
    pub away: usize,
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
    /// Resumes that took a client over.
    pub resumes: u64,
    /// Resumes answered with 9104.
    pub resumes_refused: u64,
    /// Away clients whose grace ran out (they are gone).
    pub graces_expired: u64,
    /// Away clients made gone because what they held passed `--max-output`.
    pub held_over_limit: u64,
}

/// How a message is handed over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// Must arrive, or its recipient goes.
    Send,
    /// Promises no delivery (`notify`): dropped rather than closing a full recipient.
    Offer,
    /// The replay after a resume, bounded by the core.
    Resend,
}

pub struct Signaling {
    registry: Registry,
    sessions: Sessions,
    client_list: ClientList,
    resume: ResumePolicy,
    /// Away clients by the time they left and the order of their losses, oldest first (the
    /// grace is the same for all, so this is also the order their graces end). One entry
    /// per away client: it goes when the client comes back or is gone.
    away: BTreeMap<(Instant, u64), ClientId>,
    /// Connections lost so far: orders clients that left at the same instant.
    losses: u64,
    /// Away clients whose held messages passed the bound while a command was handled: they
    /// are gone once it is done (the core is not re-entered mid-command).
    doomed: Vec<ClientId>,
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
    /// A core drawing session ids and resume tokens from the operating system's random
    /// generator. Resume is off until [`with_resume`](Signaling::with_resume).
    pub fn new(pacing: ClientListPacing) -> Self {
        Signaling::with_random(pacing, Box::new(os_random_u64))
    }

    /// A core with its own source of session ids and tokens (tests use this to force
    /// collisions).
    pub fn with_random(pacing: ClientListPacing, random: Box<dyn FnMut() -> u64>) -> Self {
        Signaling {
            registry: Registry::default(),
            sessions: Sessions::default(),
            client_list: ClientList::new(pacing),
            resume: ResumePolicy::OFF,
            away: BTreeMap::new(),
            losses: 0,
            doomed: Vec::new(),
            parser: Some(Parser::default()),
            scratch: Vec::with_capacity(256),
            random,
            counters: CoreCounters::default(),
            restricted: HashMap::new(),
        }
    }

    /// Turns resume on (a grace of zero keeps it off).
    pub fn with_resume(mut self, policy: ResumePolicy) -> Self {
        self.resume = policy;
        self
    }

    pub fn counters(&self) -> CoreCounters {
        self.counters
    }

    pub fn stats(&self) -> CoreStats {
        let in_state = |state| self.sessions.iter().filter(|(_, session)| session.state == state).count();
        CoreStats {
            registered: self.registry.len(),
            away: self.away.len(),
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
    /// are CALLING in it, connections and clients point at each other, and no away client
    /// holds more than the bound. For tests (including property tests); cost is O(clients).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut calling = 0;
        for (id, client) in self.registry.entries() {
            if self.registry.find(&client.sid) != Some(id) {
                return Err(format!("sId {:?} does not map back to its client", client.sid));
            }
            match client.link {
                Link::Attached(conn) if self.registry.client_of(conn) != Some(id) => {
                    return Err(format!("{:?}'s connection does not carry it", client.sid));
                }
                Link::Attached(_) => {}
                Link::Away { since } => {
                    let log = client
                        .resume
                        .as_ref()
                        .ok_or_else(|| format!("{:?} is away without resume", client.sid))?;
                    if log.held_bytes() > self.resume.max_held || log.kept_bytes() > 3 * self.resume.max_held
                    {
                        return Err(format!(
                            "{:?} holds {} bytes while away ({} kept in all)",
                            client.sid,
                            log.held_bytes(),
                            log.kept_bytes()
                        ));
                    }
                    let key = (since, log.away_order);
                    if self.away.get(&key) != Some(&id) {
                        return Err(format!("{:?} is away but has no grace running", client.sid));
                    }
                }
            }
            if let Some(key) = client.session {
                calling += 1;
                let session =
                    self.sessions.get(key).ok_or_else(|| format!("{:?} is in a dead session", client.sid))?;
                if session.opponent_of(id).is_none() {
                    return Err(format!("{:?} is not a member of its session", client.sid));
                }
            }
        }
        for (_, generation, id) in self.registry.attachments() {
            let attached = self.registry.get(id).and_then(|client| client.conn());
            if attached.map(ConnId::generation) != Some(generation) {
                return Err("a connection carries a client that is not attached to it".into());
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
        let away = self.registry.clients().filter(|client| client.conn().is_none()).count();
        if away != self.away.len() {
            return Err(format!("{away} clients away, {} graces running", self.away.len()));
        }
        if calling != 2 * self.sessions.len() {
            return Err(format!("{calling} CALLING clients for {} sessions", self.sessions.len()));
        }
        Ok(())
    }

    /// The sId of the client `conn` carries, if it carries one.
    pub fn sid_of(&self, conn: ConnId) -> Option<&str> {
        let id = self.registry.client_of(conn)?;
        self.registry.get(id).map(|client| &*client.sid)
    }

    /// Whether a client named `sid` is registered (attached or away).
    pub fn is_registered(&self, sid: &str) -> bool {
        self.registry.find(sid).is_some()
    }

    /// Handles one complete message (text or binary) from `from`.
    pub fn handle_message(&mut self, from: ConnId, raw: &[u8], now: Instant, out: &mut dyn Outbox) {
        let mut parser = self.parser.take().unwrap_or_default();
        let result = match parser.parse(raw) {
            Ok(request) => {
                self.counters.commands[request.kind.index()] += 1;
                let may_register = matches!(request.kind, CommandKind::Register | CommandKind::Resume);
                if !may_register && self.registry.client_of(from).is_none() {
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
        self.bury_doomed(now, out);
    }

    /// Lets `conn` register only `sid` (its auth token names it); any other gets 9103.
    pub fn restrict_sid(&mut self, conn: ConnId, sid: &str) {
        self.restricted.insert(conn, sid.into());
    }

    /// Answers `to` with error `code` for a command the transport refused before it reached
    /// the core (9500, rate limit), so the error is counted with the others.
    pub fn refuse(&mut self, to: ConnId, code: ErrorCode, now: Instant, out: &mut dyn Outbox) {
        self.send_error(to, code, out);
        self.bury_doomed(now, out);
    }

    fn send_error(&mut self, to: ConnId, code: ErrorCode, out: &mut dyn Outbox) {
        self.counters.errors[code.index()] += 1;
        let message = code.message().as_bytes();
        match self.registry.client_of(to) {
            // A resumable client counts errors like every other message.
            Some(client) => {
                deliver(
                    &mut self.registry,
                    &self.resume,
                    &mut self.doomed,
                    client,
                    message,
                    Handover::Send,
                    out,
                );
            }
            None => {
                out.send(to, message);
            }
        }
    }

    fn execute(
        &mut self,
        from: ConnId,
        command: Command<'_>,
        now: Instant,
        out: &mut dyn Outbox,
    ) -> Result<(), ErrorCode> {
        match command {
            Command::Register { sid, resume } => self.register(from, sid, resume, now, out),
            Command::Resume { sid, token, received } => {
                let result = self.take_over(from, sid, token, received, now, out);
                if result == Err(ErrorCode::ResumeRefused) {
                    self.counters.resumes_refused += 1;
                }
                result
            }
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
        resume: OptIn,
        now: Instant,
        out: &mut dyn Outbox,
    ) -> Result<(), ErrorCode> {
        // With resume off the field is ignored, whatever it holds.
        let resumable = match (self.resume.enabled(), resume) {
            (true, OptIn::Invalid) => return Err(ErrorCode::InvalidField),
            (enabled, opt_in) => enabled && opt_in == OptIn::Yes,
        };
        if self.registry.client_of(from).is_some() {
            return Err(ErrorCode::AlreadyRegistered);
        }
        if self.restricted.get(&from).is_some_and(|allowed| **allowed != *sid) {
            return Err(ErrorCode::SidNotAllowed);
        }
        if self.registry.find(sid).is_some() {
            return Err(ErrorCode::SidTaken);
        }
        let id = self.registry.insert(from, sid);
        let token = resumable.then(|| Token::new(&mut *self.random));
        if let Some(client) = self.registry.get_mut(id) {
            self.scratch.clear();
            match &token {
                Some(token) => {
                    encode::registered_resumable(&mut self.scratch, &client.sid_json, token.as_str())
                }
                None => encode::registered(&mut self.scratch, &client.sid_json),
            }
            out.send(from, &self.scratch);
            if let Some(token) = token {
                client.resume = Some(Box::new(Resumable::new(token, out.messages_queued(from))));
            }
        }
        self.client_list.changed(now, self.registry.len());
        Ok(())
    }

    /// `resume`: the connection `from` takes over the client `sid` (PROTOCOL.md, *Resume*).
    /// Every refusal is the same 9104, so a client learns nothing about which check failed.
    fn take_over(
        &mut self,
        from: ConnId,
        sid: &str,
        offered: &str,
        received: u64,
        now: Instant,
        out: &mut dyn Outbox,
    ) -> Result<(), ErrorCode> {
        if self.registry.client_of(from).is_some() {
            return Err(ErrorCode::AlreadyRegistered);
        }
        let refused = ErrorCode::ResumeRefused;
        if !self.resume.enabled() || self.restricted.get(&from).is_some_and(|allowed| **allowed != *sid) {
            return Err(refused);
        }
        let id = self.registry.find(sid).ok_or(refused)?;
        let client = self.registry.get_mut(id).ok_or(refused)?;
        let log = client.resume.as_mut().ok_or(refused)?;
        // The token is checked first and on its own: a wrong one learns nothing from the
        // count, and never disturbs the client's connection.
        if !log.token.matches(offered) {
            return Err(refused);
        }
        if log.replay_after(received).is_none() {
            // The rightful owner, whose messages cannot be replayed: it can never resume.
            // An away client is gone now, so its peer hears `leave` and the sId is free
            // for a fresh registration; an attached one keeps its working connection.
            if client.conn().is_none() {
                self.depart(id, now, out);
            }
            return Err(refused);
        }
        // Spent from here on: the reply carries a fresh one.
        let fresh = Token::new(&mut *self.random);
        let old_log = std::mem::replace(&mut **log, Resumable::new(fresh, 0));
        let previous = client.link;
        self.scratch.clear();
        encode::resumed(&mut self.scratch, &client.sid_json, fresh.as_str());
        let in_wait = client.session.is_none();
        if in_wait {
            client.list_seen = 0;
        }
        match previous {
            Link::Attached(old) => {
                self.registry.detach(id, now);
                out.take_over(old);
            }
            Link::Away { since } => {
                self.away.remove(&(since, old_log.away_order));
            }
        }
        self.registry.attach(id, from);
        // Past the cap if need be: the token is spent, this reply must go out.
        out.resend(from, &self.scratch);
        let base = out.messages_queued(from);
        if let Some(log) = self.registry.get_mut(id).and_then(|client| client.resume.as_mut()) {
            log.base = base;
        }
        for message in old_log.replay_after(received).into_iter().flatten() {
            deliver(&mut self.registry, &self.resume, &mut self.doomed, id, message, Handover::Resend, out);
        }
        if in_wait {
            self.client_list.owe_one(now, self.registry.len());
        }
        self.counters.resumes += 1;
        Ok(())
    }

    fn open_session(
        &mut self,
        from: ConnId,
        opponent_id: &str,
        now: Instant,
        out: &mut dyn Outbox,
    ) -> Result<(), ErrorCode> {
        let me_id = self.registry.client_of(from).ok_or(ErrorCode::NotRegistered)?;
        let me = self.registry.get(me_id).ok_or(ErrorCode::NotRegistered)?;
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
        let key = self.sessions.open([me_id, opponent], &mut *self.random);
        for member in [me_id, opponent] {
            if let Some(client) = self.registry.get_mut(member) {
                client.session = Some(key);
            }
        }
        self.scratch.clear();
        encode::session_opened(&mut self.scratch, key);
        self.deliver(me_id, Handover::Send, out);
        self.announce_state(key, [me_id, opponent], SessionState::New, out);
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
        let me = self.registry.client_of(from).ok_or(ErrorCode::NotRegistered)?;
        let key = SessionId::parse(session_id).ok_or(ErrorCode::SessionNotFound)?;
        let session = self.sessions.get(key).ok_or(ErrorCode::SessionNotFound)?;
        let opponent = session.opponent_of(me).ok_or(ErrorCode::SessionNotFound)?;
        let members = session.members;
        let current = session.state;
        let sender = self.registry.get(me).ok_or(ErrorCode::NotRegistered)?;

        self.scratch.clear();
        encode::relayed(&mut self.scratch, action, key, &sender.sid_json, payload);
        if self.deliver(opponent, Handover::Send, out) != Delivery::Queued {
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
        let me = self
            .registry
            .client_of(from)
            .and_then(|id| self.registry.get(id))
            .ok_or(ErrorCode::NotRegistered)?;
        if *me.sid == *opponent_id {
            return Err(ErrorCode::NotifySelf);
        }
        let target = self.registry.find(opponent_id).ok_or(ErrorCode::NotifyTargetNotFound)?;
        self.scratch.clear();
        encode::notification(&mut self.scratch, &me.sid_json, notify_type, data);
        // notify promises no delivery: a target on its way out, or too far behind, misses it.
        self.deliver(target, Handover::Offer, out);
        Ok(())
    }

    /// The connection `conn` ended and its client is gone: the *leave* procedure. Its
    /// opponent, if any, gets `leave` then `ssu 4`; its sId is free again at once.
    /// Connections that carry no client are ignored, so calling this for every closed
    /// connection is fine.
    pub fn disconnect(&mut self, conn: ConnId, now: Instant, out: &mut dyn Outbox) {
        self.restricted.remove(&conn);
        if let Some(id) = self.registry.client_of(conn) {
            self.depart(id, now, out);
        }
        self.bury_doomed(now, out);
    }

    /// The connection `conn` was lost without a close (reset, EOF, liveness timeout). A
    /// client that opted in to resume is away: registered, in its session, its messages
    /// held, until it resumes or its grace ends. Any other client is gone, as with
    /// [`disconnect`](Signaling::disconnect).
    pub fn connection_lost(&mut self, conn: ConnId, now: Instant, out: &mut dyn Outbox) {
        let resumable = self
            .registry
            .client_of(conn)
            .filter(|&id| self.resume.enabled() && self.registry.get(id).is_some_and(|c| c.resume.is_some()));
        match resumable {
            Some(id) if self.away.len() < self.resume.max_away => {
                self.restricted.remove(&conn);
                self.registry.detach(id, now);
                let order = self.losses;
                self.losses += 1;
                if let Some(log) = self.registry.get_mut(id).and_then(|client| client.resume.as_mut()) {
                    log.away_order = order;
                }
                self.away.insert((now, order), id);
            }
            _ => self.disconnect(conn, now, out),
        }
    }

    /// A pong on `conn` proved that its client read the first `messages` messages queued on
    /// it (on the [`Outbox::messages_queued`] scale): they need no replay.
    pub fn acknowledge(&mut self, conn: ConnId, messages: u64) {
        let Some(id) = self.registry.client_of(conn) else { return };
        if let Some(log) = self.registry.get_mut(id).and_then(|client| client.resume.as_mut()) {
            let base = log.base;
            log.acknowledge(messages.saturating_sub(base));
        }
    }

    /// Removes `id` and tells its opponent.
    fn depart(&mut self, id: ClientId, now: Instant, out: &mut dyn Outbox) {
        let Some(client) = self.registry.remove(id) else { return };
        if let (Link::Away { since }, Some(log)) = (client.link, &client.resume) {
            self.away.remove(&(since, log.away_order));
        }
        if let Some(key) = client.session
            && let Some(session) = self.sessions.remove(key)
            && let Some(opponent) = session.opponent_of(id)
        {
            if let Some(opponent) = self.registry.get_mut(opponent) {
                opponent.session = None;
            }
            self.scratch.clear();
            encode::left(&mut self.scratch, key, &client.sid_json);
            self.deliver(opponent, Handover::Send, out);
            self.scratch.clear();
            encode::session_state(&mut self.scratch, key, SessionState::Closed);
            self.deliver(opponent, Handover::Send, out);
        }
        self.client_list.changed(now, self.registry.len());
    }

    /// Away clients that held too much are gone now (and telling their opponents may make
    /// more of them so).
    fn bury_doomed(&mut self, now: Instant, out: &mut dyn Outbox) {
        while let Some(id) = self.doomed.pop() {
            if self.registry.get(id).is_some() {
                self.counters.held_over_limit += 1;
                self.depart(id, now, out);
            }
        }
    }

    fn close_session(&mut self, key: SessionId, members: [ClientId; 2], now: Instant, out: &mut dyn Outbox) {
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
        members: [ClientId; 2],
        state: SessionState,
        out: &mut dyn Outbox,
    ) {
        self.scratch.clear();
        encode::session_state(&mut self.scratch, key, state);
        for member in members {
            self.deliver(member, Handover::Send, out);
        }
    }

    /// Hands the message in `scratch` to client `to`.
    fn deliver(&mut self, to: ClientId, how: Handover, out: &mut dyn Outbox) -> Delivery {
        deliver(&mut self.registry, &self.resume, &mut self.doomed, to, &self.scratch, how, out)
    }

    /// When [`poll`](Signaling::poll) has work next: the next client-list round or the end
    /// of the oldest away client's grace. `None` while nothing is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let grace_ends = self.away.first_key_value().map(|(&(since, _), _)| since + self.resume.grace);
        match (self.client_list_due(), grace_ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends the graces that are over (those clients are gone), then delivers owed client
    /// lists. Returns when to call again, as [`next_deadline`](Signaling::next_deadline).
    pub fn poll(&mut self, now: Instant, out: &mut dyn Outbox) -> Option<Instant> {
        while let Some((&(since, order), &id)) = self.away.first_key_value() {
            if since + self.resume.grace > now {
                break;
            }
            self.counters.graces_expired += 1;
            // `depart` takes it off the queue too; removed first so the loop always moves on.
            self.away.remove(&(since, order));
            self.depart(id, now, out);
            self.bury_doomed(now, out);
        }
        self.poll_client_list(now, out);
        self.next_deadline()
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
        self.registry.walk_from(round.cursor, |order, client| {
            if budget == 0 {
                round.cursor = order;
                finished = false;
                return ControlFlow::Break(());
            }
            // An away client is given the list when it resumes.
            if let (None, Link::Attached(conn)) = (client.session, client.link)
                && client.list_seen < *version
            {
                // A resumable client counts lists: they must stay where they were queued.
                let delivery = match client.resume {
                    Some(_) => out.send_client_list_in_order(conn, encoded),
                    None => out.send_client_list(conn, encoded),
                };
                match delivery {
                    ListDelivery::Queued => {
                        client.list_seen = *version;
                        if let Some(log) = client.resume.as_mut() {
                            log.record_list();
                        }
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

/// Gives `message` to client `to`: to its connection (numbered and kept, if it can
/// resume), or held while it is away. A free function so that the message can be the
/// core's own scratch buffer.
fn deliver(
    registry: &mut Registry,
    policy: &ResumePolicy,
    doomed: &mut Vec<ClientId>,
    to: ClientId,
    message: &[u8],
    how: Handover,
    out: &mut dyn Outbox,
) -> Delivery {
    let Some(client) = registry.get_mut(to) else { return Delivery::Gone };
    let log = client.resume.as_deref_mut();
    if let Link::Attached(conn) = client.link {
        let delivery = match how {
            Handover::Send => out.send(conn, message),
            Handover::Offer => out.offer(conn, message),
            Handover::Resend => out.resend(conn, message),
        };
        let Some(log) = log else { return delivery };
        match delivery {
            Delivery::Queued if how == Handover::Resend => {
                log.record_replayed(message, policy.max_held);
                return Delivery::Queued;
            }
            Delivery::Queued => {
                log.record_sent(message, policy.max_held);
                return Delivery::Queued;
            }
            // Its connection is closing, and the transport has yet to say whether the
            // client is gone or away: held like a message for an away client, in case.
            Delivery::Gone => {}
            Delivery::ClosedOverLimit | Delivery::Dropped => return delivery,
        }
    }
    let Some(log) = client.resume.as_deref_mut() else { return Delivery::Gone };
    if log.can_hold(message.len(), policy.max_held) {
        log.hold(message);
        Delivery::Queued
    } else if how == Handover::Offer {
        Delivery::Dropped
    } else {
        doomed.push(to);
        Delivery::ClosedOverLimit
    }
}

fn os_random_u64() -> u64 {
    // The OS generator only fails on a broken system (no /dev/urandom, no getrandom(2));
    // no client input reaches this, and serving sessions with guessable ids would be worse.
    #[allow(clippy::expect_used)]
    getrandom::u64().expect("the operating system's random generator failed")
}
