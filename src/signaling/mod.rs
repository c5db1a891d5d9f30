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
#[cfg(test)]
mod rooms_tests;
mod sessions;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::time::Instant;

pub use crate::protocol::SessionState;
pub use client_list::{ClientListPacing, LOG_MAX_BYTES, LOG_MAX_CHANGES};
pub use outbox::{ConnId, Delivery, ListDelivery, MemoryOutbox, Outbox};
pub use registry::{ClientId, RoomId};
pub use resume::{ResumePolicy, TOKEN_CHARS};

use crate::protocol::{
    Command, CommandKind, ErrorCode, OptIn, Parser, Presence, RawJson, Relay, SessionId, encode,
};
use client_list::{Change, ClientLists, GONE};
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
    /// List messages handed to the transport: `clu` snapshots and `cld` changes.
    pub client_lists_sent: u64,
    pub client_list_bytes: u64,
    /// Of those, `cld` messages.
    pub client_list_changes_sent: u64,
    /// Changes kept in the rooms' logs, for delta clients that are behind.
    pub client_list_changes_kept: usize,
    /// Rooms with at least one registered client, the default room included.
    pub rooms: usize,
    /// Registered clients of the largest room.
    pub largest_room: usize,
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
    client_lists: ClientLists,
    resume: ResumePolicy,
    /// Registered clients a room may hold; 0: no bound.
    max_room_clients: usize,
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
    /// What the upgrade decided for connections that have not registered yet: their room,
    /// and the one sId a token lets them take. The default room and no token need no entry.
    entrances: HashMap<ConnId, Entrance>,
}

/// A connection's way in, before it registers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entrance {
    room: Option<Box<str>>,
    allowed_sid: Option<Box<str>>,
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
            client_lists: ClientLists::new(pacing),
            resume: ResumePolicy::OFF,
            max_room_clients: 0,
            away: BTreeMap::new(),
            losses: 0,
            doomed: Vec::new(),
            parser: Some(Parser::default()),
            scratch: Vec::with_capacity(256),
            random,
            counters: CoreCounters::default(),
            entrances: HashMap::new(),
        }
    }

    /// Turns resume on (a grace of zero keeps it off).
    pub fn with_resume(mut self, policy: ResumePolicy) -> Self {
        self.resume = policy;
        self
    }

    /// Bounds the registered clients of each room (0: no bound); past it, 9105.
    pub fn with_max_room_clients(mut self, max: usize) -> Self {
        self.max_room_clients = max;
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
            client_lists_sent: self.client_lists.lists_sent,
            client_list_bytes: self.client_lists.bytes_sent,
            client_list_changes_sent: self.client_lists.changes_sent,
            client_list_changes_kept: self.registry.rooms().map(|(_, room)| room.list.logged()).sum(),
            rooms: self.registry.rooms().filter(|(_, room)| room.len() > 0).count(),
            largest_room: self.registry.rooms().map(|(_, room)| room.len()).max().unwrap_or(0),
        }
    }

    /// Checks the core's internal consistency: every index agrees with the others, every
    /// CALLING client is in exactly one live session and every live session's two members
    /// are CALLING in it, connections and clients point at each other, and no away client
    /// holds more than the bound. For tests (including property tests); cost is O(clients).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.registry.check_rooms()?;
        let mut calling = 0;
        for (id, client) in self.registry.entries() {
            if self.registry.find(client.room, &client.sid) != Some(id) {
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
                let opponent = session.opponent_of(id).and_then(|other| self.registry.get(other));
                if opponent.is_some_and(|other| other.room != client.room) {
                    return Err(format!("{:?} is in a session across rooms", client.sid));
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
        for client in self.registry.clients() {
            if self.registry.room(client.room).is_none_or(|room| client.list_rev > room.list.rev) {
                return Err(format!("{:?} was given a revision its room has not reached", client.sid));
            }
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

    /// Whether a client named `sid` is registered (attached or away) in the room called
    /// `room` (`None`: the default room).
    pub fn is_registered(&self, room: Option<&str>, sid: &str) -> bool {
        self.registry.room_named(room).and_then(|room| self.registry.find(room, sid)).is_some()
    }

    /// The room `conn`'s client is in, or the room it will register in.
    fn room_of(&self, conn: ConnId) -> Option<RoomId> {
        match self.registry.client_of(conn).and_then(|id| self.registry.get(id)) {
            Some(client) => Some(client.room),
            None => self.registry.room_named(self.entrance_room(conn)),
        }
    }

    fn entrance_room(&self, conn: ConnId) -> Option<&str> {
        self.entrances.get(&conn).and_then(|entrance| entrance.room.as_deref())
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

    /// Lets `conn` in: into the room called `room` (`None`: the default room), and, when
    /// its auth token names one, for the one sId `allowed_sid` (any other gets 9103). Call
    /// it when the upgrade is done, before the connection's first message.
    pub fn admit(&mut self, conn: ConnId, room: Option<&str>, allowed_sid: Option<&str>) {
        let entrance = Entrance { room: room.map(Box::from), allowed_sid: allowed_sid.map(Box::from) };
        if entrance == Entrance::default() {
            self.entrances.remove(&conn);
        } else {
            self.entrances.insert(conn, entrance);
        }
    }

    /// Whether `conn`'s token forbids it to take `sid`.
    fn forbids(&self, conn: ConnId, sid: &str) -> bool {
        self.entrances
            .get(&conn)
            .and_then(|entrance| entrance.allowed_sid.as_deref())
            .is_some_and(|allowed| allowed != sid)
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
            Command::Register { sid, resume, presence } => {
                self.register(from, sid, resume, presence, now, out)
            }
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
        presence: Option<Presence>,
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
        if self.forbids(from, sid) {
            return Err(ErrorCode::SidNotAllowed);
        }
        let room = self.registry.room_named(self.entrance_room(from));
        if room.is_some_and(|room| self.registry.find(room, sid).is_some()) {
            return Err(ErrorCode::SidTaken);
        }
        let members = room.and_then(|room| self.registry.room(room)).map_or(0, |room| room.len());
        if self.max_room_clients != 0 && members >= self.max_room_clients {
            return Err(ErrorCode::RoomFull);
        }
        let entrance = self.entrances.remove(&from).unwrap_or_default();
        let id = self.registry.insert(from, entrance.room.as_deref(), sid, presence.unwrap_or_default());
        let token = resumable.then(|| Token::new(&mut *self.random));
        if let Some(client) = self.registry.get_mut(id) {
            self.scratch.clear();
            encode::registered(
                &mut self.scratch,
                &client.sid_json,
                presence,
                token.as_ref().map(Token::as_str),
            );
            out.send(from, &self.scratch);
            if let Some(token) = token {
                client.resume = Some(Box::new(Resumable::new(token, out.messages_queued(from))));
            }
        }
        self.list_changed(&[id], true, now);
        Ok(())
    }

    /// The entries of `clients` (all of one room) in their room's list changed to their
    /// current state (their registration when `joined`): one event, one new revision, and
    /// the room's WAIT clients are owed it.
    fn list_changed(&mut self, clients: &[ClientId], joined: bool, now: Instant) {
        let mut changes: smallvec::SmallVec<[Change; 2]> = smallvec::SmallVec::new();
        let mut room = None;
        for client in clients.iter().filter_map(|&id| self.registry.get(id)) {
            room = Some(client.room);
            changes.push(Change {
                order: client.order,
                sid: client.sid_json.clone(),
                state: client.state().code(),
                joined,
            });
        }
        if let Some(room) = room {
            self.room_changed(room, changes, now);
        }
    }

    fn room_changed(&mut self, id: RoomId, changes: impl IntoIterator<Item = Change>, now: Instant) {
        let registered = self.registry.len();
        let Some(room) = self.registry.room_mut(id) else { return };
        if room.listeners == 0 {
            // Nobody to tell, and a client that starts listening starts with a snapshot.
            room.list.bump();
            return;
        }
        room.list.record(changes);
        self.client_lists.owe(id, &mut room.list, now, registered);
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
        if !self.resume.enabled() || self.forbids(from, sid) {
            return Err(refused);
        }
        let room = self.room_of(from).ok_or(refused)?;
        let id = self.registry.find(room, sid).ok_or(refused)?;
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
        // Lists are not replayed: whatever it held, it starts again from a snapshot.
        client.list_rev = 0;
        let in_wait = client.session.is_none();
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
        self.entrances.remove(&from);
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
            let registered = self.registry.len();
            if let Some(members) = self.registry.room_mut(room) {
                self.client_lists.owe(room, &mut members.list, now, registered);
            }
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
        let opponent = self.registry.find(me.room, opponent_id).ok_or(ErrorCode::OpponentNotFound)?;
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
        self.list_changed(&[me_id, opponent], false, now);
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
        let target = self.registry.find(me.room, opponent_id).ok_or(ErrorCode::NotifyTargetNotFound)?;
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
        self.entrances.remove(&conn);
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
                self.entrances.remove(&conn);
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
        let mut changes: smallvec::SmallVec<[Change; 2]> = smallvec::SmallVec::new();
        changes.push(Change {
            order: client.order,
            sid: client.sid_json.clone(),
            state: GONE,
            joined: false,
        });
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
            if let Some(opponent) = self.registry.get(opponent) {
                let state = opponent.state().code();
                changes.push(Change {
                    order: opponent.order,
                    sid: opponent.sid_json.clone(),
                    state,
                    joined: false,
                });
            }
        }
        self.room_changed(client.room, changes, now);
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
        self.list_changed(&members, false, now);
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
        match &self.client_lists.round {
            Some(round) => Some(round.started),
            None => self.client_lists.due,
        }
    }

    /// Delivers owed client lists, within the pacing budget. Returns when to call again
    /// (`now` or earlier: at once, a round is under way), or `None` while nothing is owed.
    pub fn poll_client_list(&mut self, now: Instant, out: &mut dyn Outbox) -> Option<Instant> {
        let registry = &mut self.registry;
        if !self.client_lists.start_round_if_due(now, |room| {
            if let Some(room) = registry.room_mut(room) {
                room.list.dirty = false;
            }
        }) {
            return self.client_lists.due;
        }
        let mut budget = self.client_lists.pacing.bytes_per_poll;
        let next_room = |lists: &ClientLists| {
            let round = lists.round.as_ref()?;
            Some((*round.rooms.get(round.room_at)?, round.cursor))
        };
        while let Some((room, cursor)) = next_room(&self.client_lists) {
            match self.serve_room(room, cursor, &mut budget, out) {
                ControlFlow::Break(at) => {
                    if let Some(round) = self.client_lists.round.as_mut() {
                        round.cursor = at;
                    }
                    return Some(now);
                }
                ControlFlow::Continue(()) => {
                    let Some(round) = self.client_lists.round.as_mut() else { break };
                    let oldest_base = round.oldest_base.take();
                    round.room_at += 1;
                    round.cursor = 0;
                    if let Some(members) = self.registry.room_mut(room) {
                        match oldest_base {
                            Some(base) => members.list.trim_through(base),
                            // No delta client builds on any revision: none needs the log.
                            None => members.list.forget_history(),
                        }
                    }
                }
            }
        }
        self.client_lists.finish_round(now, self.registry.len());
        self.client_lists.due
    }

    /// Serves the owed clients of `room` from registration-order position `cursor`, while
    /// `budget` lasts. Breaks with the position to continue from when it runs out.
    fn serve_room(
        &mut self,
        room: RoomId,
        cursor: u64,
        budget: &mut usize,
        out: &mut dyn Outbox,
    ) -> ControlFlow<u64> {
        /// Clients looked at per batch: a batch is gathered, then served.
        const BATCH: usize = 256;
        let mut from = cursor;
        loop {
            let Some(rev) = self.registry.room(room).map(|members| members.list.rev) else {
                return ControlFlow::Continue(());
            };
            let mut owed = std::mem::take(&mut self.client_lists.owed);
            owed.clear();
            let mut next = None;
            let mut oldest_base: Option<u64> = None;
            self.registry.walk_from(room, from, |order, id, client| {
                if owed.len() == BATCH {
                    next = Some(order);
                    return ControlFlow::Break(());
                }
                // The oldest revision a delta client may still want changes from; an
                // away client starts again from a snapshot.
                if client.presence == Presence::Delta && client.list_rev != 0 && client.conn().is_some() {
                    oldest_base = Some(oldest_base.map_or(client.list_rev, |base| base.min(client.list_rev)));
                }
                if client.presence != Presence::None
                    && client.session.is_none()
                    && client.conn().is_some()
                    && client.list_rev < rev
                {
                    owed.push((order, id));
                }
                ControlFlow::Continue(())
            });
            if let (Some(round), Some(base)) = (self.client_lists.round.as_mut(), oldest_base) {
                round.oldest_base = Some(round.oldest_base.map_or(base, |oldest| oldest.min(base)));
            }
            for &(order, id) in &owed {
                if *budget == 0 {
                    // Not served yet: the next call starts here, and looks at it again.
                    self.client_lists.owed = owed;
                    return ControlFlow::Break(order);
                }
                self.serve_client(room, id, budget, out);
            }
            self.client_lists.owed = owed;
            match next {
                Some(order) => from = order,
                None => return ControlFlow::Continue(()),
            }
        }
    }

    /// Offers client `id` of `room` the list message it is owed.
    fn serve_client(&mut self, room: RoomId, id: ClientId, budget: &mut usize, out: &mut dyn Outbox) {
        let Some(client) = self.registry.get(id) else { return };
        let (presence, base, conn, counting) = match client.conn() {
            Some(conn) => (client.presence, client.list_rev, conn, client.resume.is_some()),
            None => return,
        };
        let Some(message) = self.list_message(room, presence, base) else { return };
        let ListMessage { bytes: message, is_changes } = message;
        let rev = self.registry.room(room).map_or(0, |members| members.list.rev);
        // A client that counts its messages (resume), or that builds on the revision it was
        // given (delta), must get its lists where and as they were queued: never withdrawn.
        let delivery = if counting || presence == Presence::Delta {
            out.send_client_list_in_order(conn, &message)
        } else {
            out.send_client_list(conn, &message)
        };
        match delivery {
            ListDelivery::Queued => {
                if let Some(client) = self.registry.get_mut(id) {
                    client.list_rev = rev;
                    if let Some(log) = client.resume.as_mut() {
                        log.record_list();
                    }
                }
                let lists = &mut self.client_lists;
                lists.lists_sent += 1;
                lists.changes_sent += u64::from(is_changes);
                lists.bytes_sent += message.len() as u64;
                if let Some(round) = lists.round.as_mut() {
                    round.bytes += message.len() as u64;
                }
                *budget = budget.saturating_sub(message.len());
            }
            ListDelivery::Busy => {
                if let Some(round) = self.client_lists.round.as_mut() {
                    round.skipped = true;
                }
                // Offered again in a later round, from the revision it really got.
                if let Some(members) = self.registry.room_mut(room)
                    && !members.list.dirty
                {
                    members.list.dirty = true;
                    self.client_lists.dirty.push(room);
                }
            }
            // On its way out: its departure will change the list anyway.
            ListDelivery::Gone => {}
        }
    }

    /// The list message for a client of `room` in mode `presence` that was last given
    /// revision `base`, composed once per revision and shared.
    fn list_message(&mut self, room: RoomId, presence: Presence, base: u64) -> Option<ListMessage> {
        let members = self.registry.room(room)?;
        let snapshot_len = encode::client_list_len(Some(members.list.rev), members.len(), members.sid_bytes);
        let entries = |registry: &Registry, out: &mut Vec<u8>, rev: Option<u64>| {
            encode::client_list(
                out,
                rev,
                registry.clients_in(room).map(|client| (&client.sid_json, client.state())),
            );
        };
        let mut list = std::mem::take(&mut self.registry.room_mut(room)?.list);
        let rev = list.rev;
        let message = match presence {
            Presence::None => None,
            Presence::Full => Some(ListMessage {
                bytes: list.full_list(|out| entries(&self.registry, out, None)),
                is_changes: false,
            }),
            Presence::Delta => match list.changes_since(base, snapshot_len, &mut self.client_lists.scratch) {
                Some(changes) => Some(ListMessage { bytes: changes, is_changes: true }),
                None => Some(ListMessage {
                    bytes: list.snapshot(|out| entries(&self.registry, out, Some(rev))),
                    is_changes: false,
                }),
            },
        };
        if let Some(members) = self.registry.room_mut(room) {
            members.list = list;
        }
        message
    }
}

/// A list message for one client: shared bytes, and whether they are changes (`cld`).
struct ListMessage {
    bytes: Rc<[u8]>,
    is_changes: bool,
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
