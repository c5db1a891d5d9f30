//! Registered clients: by client handle, by the connection they are attached to, and per
//! room by sId and in registration order (the order the client list shows them in).
//!
//! A room is a namespace (PROTOCOL.md, *Rooms*): sIds are unique within it, and it has its
//! own client list. The default room (no name) always exists; a named room is made by its
//! first registration and dropped with its last client, so an empty room costs nothing.
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
use super::client_list::RoomList;
use super::resume::Resumable;
use crate::protocol::{ClientState, EscapedJson, Presence, SessionId};

/// The core's handle for a registered client. The generation makes a reused slot a
/// different client, so nothing meant for a departed client reaches its successor. Never
/// shown to clients: they know each other by sId.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    index: u32,
    generation: u32,
}

/// The core's handle for a room. Like [`ClientId`], a reused slot is a different room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId {
    index: u32,
    generation: u32,
}

impl RoomId {
    /// The room of every client that names none.
    pub const DEFAULT: RoomId = RoomId { index: 0, generation: 0 };
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
    /// Its place in its room's list (registration order, never reused).
    pub order: u64,
    pub room: RoomId,
    pub presence: Presence,
    pub session: Option<SessionId>,
    /// The revision of its room's list this client was last given; 0: none yet (or none
    /// it still holds, after a resume), so the next is a snapshot.
    pub list_rev: u64,
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

/// One namespace of sIds, with its client list.
pub(crate) struct Room {
    /// `None` for the default room.
    pub name: Option<Rc<str>>,
    // SipHash (std's default) on purpose: sIds are chosen by clients.
    by_sid: HashMap<Rc<str>, ClientId>,
    order: BTreeMap<u64, ClientId>,
    /// The JSON bytes of every sId in the room: a snapshot's size, without composing it.
    pub sid_bytes: usize,
    /// Clients that receive lists (mode full or delta): none, and a change needs no round.
    pub listeners: usize,
    pub list: RoomList,
}

impl Room {
    fn new(name: Option<Rc<str>>) -> Room {
        Room {
            name,
            by_sid: HashMap::new(),
            order: BTreeMap::new(),
            sid_bytes: 0,
            listeners: 0,
            list: RoomList::default(),
        }
    }

    /// Registered clients, away ones included.
    pub fn len(&self) -> usize {
        self.by_sid.len()
    }
}

struct RoomSlot {
    generation: u32,
    room: Option<Room>,
}

pub(crate) struct Registry {
    slots: Vec<Slot>,
    /// Free slot indexes, reused first so the slot vector stays as dense as the clients.
    free: Vec<u32>,
    /// Slot 0 is the default room, always there.
    rooms: Vec<RoomSlot>,
    free_rooms: Vec<u32>,
    // SipHash on purpose, as for sIds: room names come from clients too.
    room_by_name: HashMap<Rc<str>, RoomId>,
    registered: usize,
    /// Indexed by [`ConnId::index`] (the transport's slab keeps indexes dense): which
    /// client a connection carries, for that connection's generation.
    by_conn: Vec<Option<(u32, ClientId)>>,
    next_order: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            slots: Vec::new(),
            free: Vec::new(),
            rooms: vec![RoomSlot { generation: 0, room: Some(Room::new(None)) }],
            free_rooms: Vec::new(),
            room_by_name: HashMap::new(),
            registered: 0,
            by_conn: Vec::new(),
            next_order: 1,
        }
    }
}

impl Registry {
    /// Registered clients in every room.
    pub fn len(&self) -> usize {
        self.registered
    }

    pub fn room(&self, id: RoomId) -> Option<&Room> {
        let slot = self.rooms.get(id.index as usize)?;
        slot.room.as_ref().filter(|_| slot.generation == id.generation)
    }

    pub fn room_mut(&mut self, id: RoomId) -> Option<&mut Room> {
        let slot = self.rooms.get_mut(id.index as usize)?;
        slot.room.as_mut().filter(|_| slot.generation == id.generation)
    }

    /// The room called `name` (`None`: the default room), if it has clients.
    pub fn room_named(&self, name: Option<&str>) -> Option<RoomId> {
        match name {
            None => Some(RoomId::DEFAULT),
            Some(name) => self.room_by_name.get(name).copied(),
        }
    }

    /// Every room with clients (the default room even without), with its handle.
    pub fn rooms(&self) -> impl Iterator<Item = (RoomId, &Room)> + '_ {
        self.rooms.iter().enumerate().filter_map(|(index, slot)| {
            let room = slot.room.as_ref()?;
            Some((RoomId { index: index as u32, generation: slot.generation }, room))
        })
    }

    /// The room called `name`, made if it does not exist yet.
    fn room_for(&mut self, name: Option<&str>) -> RoomId {
        if let Some(id) = self.room_named(name) {
            return id;
        }
        let name: Option<Rc<str>> = name.map(Rc::from);
        let index = match self.free_rooms.pop() {
            Some(index) => index,
            None => {
                self.rooms.push(RoomSlot { generation: 0, room: None });
                (self.rooms.len() - 1) as u32
            }
        };
        let slot = &mut self.rooms[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.room = Some(Room::new(name.clone()));
        let id = RoomId { index, generation: slot.generation };
        if let Some(name) = name {
            self.room_by_name.insert(name, id);
        }
        id
    }

    pub fn get(&self, id: ClientId) -> Option<&Client> {
        let slot = self.slots.get(id.index as usize)?;
        slot.client.as_ref().filter(|_| slot.generation == id.generation)
    }

    pub fn get_mut(&mut self, id: ClientId) -> Option<&mut Client> {
        let slot = self.slots.get_mut(id.index as usize)?;
        slot.client.as_mut().filter(|_| slot.generation == id.generation)
    }

    /// The client called `sid` in `room`.
    pub fn find(&self, room: RoomId, sid: &str) -> Option<ClientId> {
        self.room(room)?.by_sid.get(sid).copied()
    }

    /// The client attached to `conn`, if any.
    pub fn client_of(&self, conn: ConnId) -> Option<ClientId> {
        match self.by_conn.get(conn.index())? {
            Some((generation, id)) if *generation == conn.generation() => Some(*id),
            _ => None,
        }
    }

    /// Registers `sid` on `conn` in the room called `room`; the caller has checked that
    /// neither is taken.
    pub fn insert(&mut self, conn: ConnId, room: Option<&str>, sid: &str, presence: Presence) -> ClientId {
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
        let room_id = self.room_for(room);
        if let Some(room) = self.room_mut(room_id) {
            room.by_sid.insert(Rc::clone(&sid), id);
            room.order.insert(order, id);
            room.sid_bytes += sid_json.as_str().len();
            room.listeners += usize::from(presence != Presence::None);
        }
        self.registered += 1;
        self.slots[index as usize].client = Some(Client {
            sid,
            sid_json,
            order,
            room: room_id,
            presence,
            session: None,
            list_rev: 0,
            link: Link::Attached(conn),
            resume: None,
        });
        self.link_conn(conn, id);
        id
    }

    /// Unregisters `id`. Its room goes with its last client (the default room stays).
    pub fn remove(&mut self, id: ClientId) -> Option<Client> {
        self.get(id)?;
        let client = self.slots.get_mut(id.index as usize)?.client.take()?;
        self.free.push(id.index);
        self.registered -= 1;
        if let Some(room) = self.room_mut(client.room) {
            room.by_sid.remove(&client.sid);
            room.order.remove(&client.order);
            room.sid_bytes -= client.sid_json.as_str().len();
            room.listeners -= usize::from(client.presence != Presence::None);
            if room.by_sid.is_empty() {
                self.drop_room(client.room);
            }
        }
        if let Link::Attached(conn) = client.link {
            self.unlink_conn(conn);
        }
        Some(client)
    }

    fn drop_room(&mut self, id: RoomId) {
        if id == RoomId::DEFAULT {
            if let Some(room) = self.room_mut(id) {
                room.list.forget_history();
            }
            return;
        }
        let Some(slot) = self.rooms.get_mut(id.index as usize) else { return };
        if let Some(room) = slot.room.take()
            && let Some(name) = room.name
        {
            self.room_by_name.remove(&name);
        }
        self.free_rooms.push(id.index);
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

    /// Visits the clients of `room` in registration order, starting at position `from`,
    /// until `visit` breaks.
    pub fn walk_from(
        &mut self,
        room: RoomId,
        from: u64,
        mut visit: impl FnMut(u64, ClientId, &mut Client) -> ControlFlow<()>,
    ) {
        let Registry { slots, rooms, .. } = self;
        let Some(room) = rooms.get(room.index as usize).and_then(|slot| slot.room.as_ref()) else { return };
        for (&order, &id) in room.order.range(from..) {
            let Some(slot) = slots.get_mut(id.index as usize) else { continue };
            if slot.generation == id.generation
                && let Some(client) = slot.client.as_mut()
                && visit(order, id, client).is_break()
            {
                return;
            }
        }
    }

    /// The clients of `room` in registration order.
    pub fn clients_in(&self, room: RoomId) -> impl Iterator<Item = &Client> + '_ {
        self.room(room).into_iter().flat_map(|room| room.order.values()).filter_map(|&id| self.get(id))
    }

    /// Every registered client with its handle, room by room.
    pub fn entries(&self) -> impl Iterator<Item = (ClientId, &Client)> + '_ {
        self.rooms().flat_map(|(_, room)| room.order.values()).filter_map(|&id| Some((id, self.get(id)?)))
    }

    /// Every registered client, room by room.
    pub fn clients(&self) -> impl Iterator<Item = &Client> + '_ {
        self.entries().map(|(_, client)| client)
    }

    /// Connections that carry a client, with it: for invariant checks.
    pub fn attachments(&self) -> impl Iterator<Item = (usize, u32, ClientId)> + '_ {
        self.by_conn.iter().enumerate().filter_map(|(index, entry)| entry.map(|(g, id)| (index, g, id)))
    }

    /// Checks that every room's indexes agree with its clients: for tests.
    pub fn check_rooms(&self) -> Result<(), String> {
        let mut total = 0;
        for (id, room) in self.rooms() {
            if id != RoomId::DEFAULT && room.by_sid.is_empty() {
                return Err(format!("room {:?} is empty but kept", room.name));
            }
            if room.order.len() != room.by_sid.len() {
                return Err(format!("room {:?}: order and sId index disagree", room.name));
            }
            if let Some(name) = &room.name
                && self.room_by_name.get(name) != Some(&id)
            {
                return Err(format!("room {name:?} is not found by its name"));
            }
            let (mut sid_bytes, mut listeners) = (0, 0);
            for client in self.clients_in(id) {
                if client.room != id
                    || self.find(id, &client.sid).map(|found| self.get(found).map(|c| c.order))
                        != Some(Some(client.order))
                {
                    return Err(format!("{:?} is not where its room says", client.sid));
                }
                sid_bytes += client.sid_json.as_str().len();
                listeners += usize::from(client.presence != Presence::None);
            }
            if (sid_bytes, listeners) != (room.sid_bytes, room.listeners) {
                return Err(format!("room {:?}: sizes are off", room.name));
            }
            total += room.len();
        }
        if total != self.registered || self.room_by_name.len() + 1 != self.rooms().count() {
            return Err("rooms and registrations disagree".into());
        }
        Ok(())
    }
}
