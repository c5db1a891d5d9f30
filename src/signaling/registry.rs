//! Registered clients: by client handle, by sId, by the connection they are attached to,
//! and in registration order (the order `clu` lists them in).
//!
//! A client is not a connection. It is registered through one, but with resume it outlives
//! it: its [`Link`] says whether it is attached to a connection now or away since some
//! time. Sessions and the client list refer to [`ClientId`]s; only delivery looks at the
//! link.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::time::Instant;

use super::ConnId;
use super::resume::Resumable;
use crate::protocol::{ClientState, EscapedJson, SessionId};

/// The core's handle for a registered client. The generation makes a reused slot a
/// different client, so nothing meant for a departed client reaches its successor. Never
/// shown to clients: they know each other by sId.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    index: u32,
    generation: u32,
}

/// Where a client's messages go now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    Attached(ConnId),
    /// Its connection was lost (not closed) at `since`; it may resume until the grace ends.
    Away {
        since: Instant,
    },
}

pub(crate) struct Client {
    /// Shared with the `by_sid` key: one allocation per client, not two.
    pub sid: Rc<str>,
    /// The sId as a JSON string literal, escaped once here instead of in every message.
    pub sid_json: EscapedJson,
    order: u64,
    pub session: Option<SessionId>,
    /// The client-list version this client was last given.
    pub list_seen: u64,
    pub link: Link,
    /// Present when the client opted in to resume. Boxed: most clients never do, and an
    /// idle client should cost as little as possible.
    pub resume: Option<Box<Resumable>>,
}

impl Client {
    pub fn state(&self) -> ClientState {
        if self.session.is_some() { ClientState::Calling } else { ClientState::Wait }
    }

    pub fn conn(&self) -> Option<ConnId> {
        match self.link {
            Link::Attached(conn) => Some(conn),
            Link::Away { .. } => None,
        }
    }
}

struct Slot {
    generation: u32,
    client: Option<Client>,
}

#[derive(Default)]
pub(crate) struct Registry {
    slots: Vec<Slot>,
    /// Free slot indexes, reused first so the slot vector stays as dense as the clients.
    free: Vec<u32>,
    // SipHash (std's default) on purpose: sIds are chosen by clients.
    by_sid: HashMap<Rc<str>, ClientId>,
    /// Indexed by [`ConnId::index`] (the transport's slab keeps indexes dense): which
    /// client a connection carries, for that connection's generation.
    by_conn: Vec<Option<(u32, ClientId)>>,
    order: BTreeMap<u64, ClientId>,
    next_order: u64,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.by_sid.len()
    }

    pub fn get(&self, id: ClientId) -> Option<&Client> {
        let slot = self.slots.get(id.index as usize)?;
        slot.client.as_ref().filter(|_| slot.generation == id.generation)
    }

    pub fn get_mut(&mut self, id: ClientId) -> Option<&mut Client> {
        let slot = self.slots.get_mut(id.index as usize)?;
        slot.client.as_mut().filter(|_| slot.generation == id.generation)
    }

    pub fn find(&self, sid: &str) -> Option<ClientId> {
        self.by_sid.get(sid).copied()
    }

    /// The client attached to `conn`, if any.
    pub fn client_of(&self, conn: ConnId) -> Option<ClientId> {
        match self.by_conn.get(conn.index())? {
            Some((generation, id)) if *generation == conn.generation() => Some(*id),
            _ => None,
        }
    }

    /// Registers `sid` on `conn`; the caller has checked that neither is taken.
    pub fn insert(&mut self, conn: ConnId, sid: &str) -> ClientId {
        let sid_json = EscapedJson::escape(sid);
        let order = self.next_order;
        self.next_order += 1;
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot { generation: 0, client: None });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let id = ClientId { index, generation: slot.generation };
        let sid: Rc<str> = sid.into();
        self.by_sid.insert(Rc::clone(&sid), id);
        self.order.insert(order, id);
        slot.client = Some(Client {
            sid,
            sid_json,
            order,
            session: None,
            list_seen: 0,
            link: Link::Attached(conn),
            resume: None,
        });
        self.link_conn(conn, id);
        id
    }

    pub fn remove(&mut self, id: ClientId) -> Option<Client> {
        self.get(id)?;
        let client = self.slots.get_mut(id.index as usize)?.client.take()?;
        self.free.push(id.index);
        self.by_sid.remove(&client.sid);
        self.order.remove(&client.order);
        if let Link::Attached(conn) = client.link {
            self.unlink_conn(conn);
        }
        Some(client)
    }

    /// Marks `id` away since `now`: its connection is no longer its own.
    pub fn detach(&mut self, id: ClientId, now: Instant) {
        let Some(client) = self.get_mut(id) else { return };
        let old = std::mem::replace(&mut client.link, Link::Away { since: now });
        if let Link::Attached(conn) = old {
            self.unlink_conn(conn);
        }
    }

    /// Attaches an away (or detached) client to `conn`.
    pub fn attach(&mut self, id: ClientId, conn: ConnId) {
        let Some(client) = self.get_mut(id) else { return };
        client.link = Link::Attached(conn);
        self.link_conn(conn, id);
    }

    fn link_conn(&mut self, conn: ConnId, id: ClientId) {
        if self.by_conn.len() <= conn.index() {
            self.by_conn.resize(conn.index() + 1, None);
        }
        self.by_conn[conn.index()] = Some((conn.generation(), id));
    }

    fn unlink_conn(&mut self, conn: ConnId) {
        if let Some(entry) = self.by_conn.get_mut(conn.index())
            && entry.is_some_and(|(generation, _)| generation == conn.generation())
        {
            *entry = None;
        }
    }

    /// Visits registered clients in registration order, starting at position `from`, until
    /// `visit` breaks.
    pub fn walk_from(&mut self, from: u64, mut visit: impl FnMut(u64, &mut Client) -> ControlFlow<()>) {
        for (&order, &id) in self.order.range(from..) {
            let Some(slot) = self.slots.get_mut(id.index as usize) else { continue };
            if slot.generation == id.generation
                && let Some(client) = slot.client.as_mut()
                && visit(order, client).is_break()
            {
                return;
            }
        }
    }

    /// Every registered client with its handle, in registration order.
    pub fn entries(&self) -> impl Iterator<Item = (ClientId, &Client)> + '_ {
        self.order.values().filter_map(|&id| Some((id, self.get(id)?)))
    }

    /// Every registered client in registration order.
    pub fn clients(&self) -> impl Iterator<Item = &Client> + '_ {
        self.order.values().filter_map(|&id| self.get(id))
    }

    /// Connections that carry a client, with it: for invariant checks.
    pub fn attachments(&self) -> impl Iterator<Item = (usize, u32, ClientId)> + '_ {
        self.by_conn.iter().enumerate().filter_map(|(index, entry)| entry.map(|(g, id)| (index, g, id)))
    }
}
