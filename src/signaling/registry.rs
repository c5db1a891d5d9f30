//! Registered clients: by connection, by sId, and in registration order (the order `clu`
//! lists them in).

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::rc::Rc;

use super::ConnId;
use crate::protocol::{ClientState, EscapedJson, SessionId};

pub(crate) struct Client {
    generation: u32,
    /// Shared with the `by_sid` key: one allocation per client, not two.
    pub sid: Rc<str>,
    /// The sId as a JSON string literal, escaped once here instead of in every message.
    pub sid_json: EscapedJson,
    order: u64,
    pub session: Option<SessionId>,
    /// The client-list version this client was last given.
    pub list_seen: u64,
}

impl Client {
    pub fn state(&self) -> ClientState {
        if self.session.is_some() { ClientState::Calling } else { ClientState::Wait }
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    /// Indexed by [`ConnId::index`]; the transport's slab keeps indexes dense.
    slots: Vec<Option<Client>>,
    // SipHash (std's default) on purpose: sIds are chosen by clients.
    by_sid: HashMap<Rc<str>, ConnId>,
    order: BTreeMap<u64, ConnId>,
    next_order: u64,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.by_sid.len()
    }

    pub fn get(&self, conn: ConnId) -> Option<&Client> {
        self.slots.get(conn.index())?.as_ref().filter(|client| client.generation == conn.generation())
    }

    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut Client> {
        self.slots.get_mut(conn.index())?.as_mut().filter(|client| client.generation == conn.generation())
    }

    pub fn find(&self, sid: &str) -> Option<ConnId> {
        self.by_sid.get(sid).copied()
    }

    /// Registers `conn` as `sid`; the caller has checked that neither is taken.
    pub fn insert(&mut self, conn: ConnId, sid: &str) -> &Client {
        let sid_json = EscapedJson::escape(sid);
        let order = self.next_order;
        self.next_order += 1;
        self.order.insert(order, conn);
        let sid: Rc<str> = sid.into();
        self.by_sid.insert(Rc::clone(&sid), conn);
        if self.slots.len() <= conn.index() {
            self.slots.resize_with(conn.index() + 1, || None);
        }
        let slot = &mut self.slots[conn.index()];
        slot.insert(Client {
            generation: conn.generation(),
            sid,
            sid_json,
            order,
            session: None,
            list_seen: 0,
        })
    }

    pub fn remove(&mut self, conn: ConnId) -> Option<Client> {
        self.get(conn)?;
        let client = self.slots.get_mut(conn.index())?.take()?;
        self.by_sid.remove(&client.sid);
        self.order.remove(&client.order);
        Some(client)
    }

    /// Visits registered clients in registration order, starting at position `from`, until
    /// `visit` breaks.
    pub fn walk_from(
        &mut self,
        from: u64,
        mut visit: impl FnMut(u64, ConnId, &mut Client) -> ControlFlow<()>,
    ) {
        for (&order, &conn) in self.order.range(from..) {
            let slot = self.slots.get_mut(conn.index()).and_then(Option::as_mut);
            if let Some(client) = slot.filter(|client| client.generation == conn.generation())
                && visit(order, conn, client).is_break()
            {
                return;
            }
        }
    }

    /// Every registered client with its connection, in registration order.
    pub fn entries(&self) -> impl Iterator<Item = (ConnId, &Client)> + '_ {
        self.order.values().filter_map(|&conn| Some((conn, self.get(conn)?)))
    }

    /// Every registered client in registration order.
    pub fn clients(&self) -> impl Iterator<Item = &Client> + '_ {
        self.order.values().filter_map(|&conn| self.get(conn))
    }
}
