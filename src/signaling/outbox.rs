//! The core's only way out: it addresses messages to connection handles and the caller
//! (the event loop, or a test) decides what delivering means.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// A handle for one connection, given by the transport. The generation makes a reused slot
/// a different id, so a message meant for a departed client can never reach its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    pub fn new(index: u32, generation: u32) -> Self {
        ConnId { index, generation }
    }

    pub fn index(self) -> usize {
        self.index as usize
    }

    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// What became of a message handed to the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// Not queued: the recipient had too much unsent output, and is being closed for it
    /// (the core hears of it through `disconnect` once the current command is done).
    ClosedOverLimit,
    /// Not queued, and the recipient left as it is: it has too much unsent output for a
    /// message that promises no delivery (see [`Outbox::offer`]).
    Dropped,
    /// Not queued: the recipient is already closing or gone.
    Gone,
}

/// What became of a client list handed to the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListDelivery {
    Queued,
    /// Not queued: a list sent earlier is still partly unwritten there; offer the newest
    /// one again later.
    Busy,
    /// Not queued: the recipient is closing or gone.
    Gone,
}

/// Where the core's messages go. Each message is one complete JSON text.
pub trait Outbox {
    fn send(&mut self, to: ConnId, message: &[u8]) -> Delivery;

    /// Like [`send`](Outbox::send), for messages that promise no delivery (`notify`): where
    /// `send` would close a recipient that has too much unsent output, this drops the
    /// message instead, so a third party cannot get a client disconnected by flooding it.
    fn offer(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        self.send(to, message)
    }

    /// Queues the current client list for `to`, unless a list sent earlier is still waiting
    /// to be written there ([`ListDelivery::Busy`]: the core offers the newest list again
    /// later). That keeps at most one unsent `clu` per client. The list is shared: keep a
    /// clone of the `Rc`, not a copy of the bytes.
    fn send_client_list(&mut self, to: ConnId, list: &Rc<[u8]>) -> ListDelivery;

    /// Like [`send_client_list`](Outbox::send_client_list), for a client that counts its
    /// messages (resume): an unsent older list is never withdrawn or moved, since that
    /// would change the count and order of what the client receives. While one is queued,
    /// the answer is [`ListDelivery::Busy`]. Outboxes that never withdraw lists need not
    /// override this.
    fn send_client_list_in_order(&mut self, to: ConnId, list: &Rc<[u8]>) -> ListDelivery {
        self.send_client_list(to, list)
    }

    /// Like [`send`](Outbox::send), but past the output cap too: for the replay after a
    /// resume, which the core has bounded itself (three times `--max-output` at most).
    fn resend(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        self.send(to, message)
    }

    /// How many messages (client lists included) have been queued on `to` so far. A pong
    /// reports the count at its ping on the same scale, so the core can tell which of its
    /// messages a resumable client has read.
    fn messages_queued(&self, to: ConnId) -> u64;

    /// A newer connection resumed the client on `old`: close `old` with 4001. The core has
    /// already moved the client off it; its departure changes nothing.
    fn take_over(&mut self, old: ConnId);
}

/// An [`Outbox`] that keeps everything in memory: for tests and benches.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    /// Every message queued, in order, as text.
    pub sent: Vec<(ConnId, String)>,
    /// Connections that answer [`Delivery::Gone`].
    pub closing: HashSet<ConnId>,
    /// Connections whose last client list is "still unsent": `send_client_list` refuses.
    pub list_unsent: HashSet<ConnId>,
    /// How many client lists each connection has been given.
    pub lists_given: HashMap<ConnId, usize>,
    /// Messages (lists included) queued per connection, as [`Outbox::messages_queued`].
    pub queued: HashMap<ConnId, u64>,
    /// Connections closed by a takeover, in order.
    pub taken_over: Vec<ConnId>,
}

impl MemoryOutbox {
    /// Removes and returns everything queued so far.
    pub fn take(&mut self) -> Vec<(ConnId, String)> {
        std::mem::take(&mut self.sent)
    }

    /// Removes and returns what was queued for `to`, leaving the rest.
    pub fn take_for(&mut self, to: ConnId) -> Vec<String> {
        let (mine, rest) = std::mem::take(&mut self.sent).into_iter().partition(|(c, _)| *c == to);
        self.sent = rest;
        mine.into_iter().map(|(_, text)| text).collect()
    }
}

impl Outbox for MemoryOutbox {
    fn send(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        if self.closing.contains(&to) {
            return Delivery::Gone;
        }
        self.sent.push((to, String::from_utf8_lossy(message).into_owned()));
        *self.queued.entry(to).or_default() += 1;
        Delivery::Queued
    }

    fn send_client_list(&mut self, to: ConnId, list: &Rc<[u8]>) -> ListDelivery {
        if self.closing.contains(&to) {
            return ListDelivery::Gone;
        }
        if self.list_unsent.contains(&to) {
            return ListDelivery::Busy;
        }
        self.sent.push((to, String::from_utf8_lossy(list).into_owned()));
        *self.lists_given.entry(to).or_default() += 1;
        *self.queued.entry(to).or_default() += 1;
        ListDelivery::Queued
    }

    fn messages_queued(&self, to: ConnId) -> u64 {
        self.queued.get(&to).copied().unwrap_or_default()
    }

    fn take_over(&mut self, old: ConnId) {
        self.taken_over.push(old);
        self.closing.insert(old);
    }
}
