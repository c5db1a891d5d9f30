//! The slab of connections, the one place they are closed, and the [`Outbox`] the core
//! writes into.
//!
//! Sending only appends a frame to the recipient's output and marks it dirty; the loop
//! writes every dirty connection once, at the end of the turn. Every close goes through
//! [`Connections::close`]: it moves the machine on and, when the connection leaves `Open`,
//! records a departure. The loop hands departures to the core's *leave* procedure after
//! every core call (the core cannot be re-entered while it is mid-command, which is when
//! an output limit is usually passed), so no path can end a client and forget its leave.

use std::io::{self, Read};
use std::net::{IpAddr, Shutdown};
use std::rc::Rc;
use std::time::Instant;

use mio::Interest;
use mio::net::TcpStream;
use slab::Slab;

use super::connection::{Close, Connection, Departure, Event, ListQueued, Queued, Settings, Sink};
use super::http::UpgradePolicy;
use crate::metrics::{CloseReason, Metrics};
use crate::signaling::{ConnId, Delivery, ListDelivery, Outbox};

/// One accepted socket: the machine, and the loop's bookkeeping around it.
pub struct Slot {
    pub socket: TcpStream,
    pub peer: IpAddr,
    pub generation: u32,
    pub machine: Connection,
    /// The interest currently registered with the poll.
    pub interest: Interest,
    /// Already on the dirty list of this turn.
    pub flush_queued: bool,
    /// Already on the list of connections with more to read next turn.
    pub read_queued: bool,
    /// The poll reported the peer's end (FIN or error): read to the end of file.
    pub hung_up: bool,
}

impl Sink for TcpStream {
    fn shutdown_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// How a connection's client left, as PROTOCOL.md tells *gone* from *away*.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A close frame from the client, or a limit or rule it broke: *leave* at once.
    Gone,
    /// Lost without a close (reset, end of file, liveness timeout, a failed write): a
    /// resumable client may come back.
    Lost,
}

impl Ending {
    fn of(how: &Close) -> Ending {
        match how {
            Close::Drop(CloseReason::ConnectionLost | CloseReason::LivenessTimeout) => Ending::Lost,
            // Taken over: the core moved the client first, so either answer is the same.
            Close::Frame(CloseReason::TakenOver) => Ending::Lost,
            _ => Ending::Gone,
        }
    }
}

pub struct Connections {
    pub slab: Slab<Slot>,
    pub settings: Settings,
    /// Connections with output to write at the end of this turn.
    pub dirty: Vec<ConnId>,
    /// Connections that left `Open` and whose end the core has not yet been told of.
    pub departed: Vec<(ConnId, Ending)>,
    pub metrics: Metrics,
    /// The time of the current loop turn (the core's `Outbox` calls carry none).
    pub now: Instant,
    next_generation: u32,
}

impl Connections {
    pub fn new(settings: Settings, now: Instant) -> Self {
        Connections {
            slab: Slab::new(),
            settings,
            dirty: Vec::new(),
            departed: Vec::new(),
            metrics: Metrics::default(),
            now,
            next_generation: 0,
        }
    }

    pub fn next_generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_generation
    }

    pub fn id_of(&self, key: usize) -> Option<ConnId> {
        let slot = self.slab.get(key)?;
        Some(ConnId::new(key as u32, slot.generation))
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Slot> {
        slot_mut(&mut self.slab, id)
    }

    pub fn ids(&self) -> Vec<ConnId> {
        self.slab.iter().map(|(key, slot)| ConnId::new(key as u32, slot.generation)).collect()
    }

    /// Puts `id` on this turn's write list if its machine has something to write.
    pub fn queue_flush(&mut self, id: ConnId) {
        if let Some(slot) = self.get_mut(id)
            && !slot.flush_queued
            && slot.machine.wants_write()
        {
            slot.flush_queued = true;
            self.dirty.push(id);
        }
    }

    /// The one way a connection ends.
    pub fn close(&mut self, id: ConnId, how: Close) {
        let now = self.now;
        let Some(slot) = self.slab.get_mut(id.index()).filter(|slot| slot.generation == id.generation())
        else {
            return;
        };
        if slot.machine.is_ending() {
            // Already on its way out: only a dead socket (read or write error) cuts the
            // linger short. It is counted once, when it first closed.
            if matches!(how, Close::Drop(_)) {
                let _ = slot.machine.close(how, now, &self.settings);
            }
            return;
        }
        log::debug!("closing {}: {how:?}", id.index());
        self.metrics.closed(how.reason());
        let ending = Ending::of(&how);
        if slot.machine.close(how, now, &self.settings) == Departure::Left {
            self.departed.push((id, ending));
        }
        self.queue_flush(id);
    }

    /// Feeds `fresh` to `id`'s machine: its next event.
    pub fn poll_event(&mut self, id: ConnId, fresh: &mut &[u8], policy: &UpgradePolicy<'_>) -> Option<Event> {
        let now = self.now;
        let slot = slot_mut(&mut self.slab, id)?;
        slot.machine.poll_event(fresh, now, &self.settings, policy)
    }

    /// Runs `id`'s timed rules.
    pub fn handle_timeout(&mut self, id: ConnId) {
        let now = self.now;
        let Some(slot) = self.slab.get_mut(id.index()).filter(|slot| slot.generation == id.generation())
        else {
            return;
        };
        if let Some(how) = slot.machine.handle_timeout(now, &self.settings) {
            self.close(id, how);
        }
        self.queue_flush(id);
    }

    /// Reads `id`'s socket once into `inbox`: the bytes read, 0 at end of file.
    pub fn read_socket(&mut self, id: ConnId, inbox: &mut [u8]) -> io::Result<usize> {
        let slot = self.get_mut(id).ok_or(io::ErrorKind::NotFound)?;
        loop {
            match slot.socket.read(inbox) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }

    /// Writes `id`'s output. `Ok(None)`: it is gone.
    pub fn write_socket(&mut self, id: ConnId) -> io::Result<Option<super::connection::Flush>> {
        let now = self.now;
        let Some(slot) = self.slab.get_mut(id.index()).filter(|slot| slot.generation == id.generation())
        else {
            return Ok(None);
        };
        slot.flush_queued = false;
        let (flush, sent) = slot.machine.write_to(&mut slot.socket, now, &self.settings)?;
        self.metrics.bytes_sent += sent as u64;
        Ok(Some(flush))
    }
}

impl Outbox for Connections {
    fn send(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        self.queue(to, message, false)
    }

    fn resend(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        self.queue(to, message, true)
    }

    fn messages_queued(&self, to: ConnId) -> u64 {
        let slot = self.slab.get(to.index()).filter(|slot| slot.generation == to.generation());
        slot.map_or(0, |slot| slot.machine.messages_queued())
    }

    fn take_over(&mut self, old: ConnId) {
        self.close(old, Close::Frame(CloseReason::TakenOver));
    }

    fn offer(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        let full = self
            .slab
            .get(to.index())
            .filter(|slot| slot.generation == to.generation() && slot.machine.is_open())
            .is_some_and(|slot| !slot.machine.fits(message.len(), &self.settings));
        if full { Delivery::Dropped } else { self.send(to, message) }
    }

    fn send_client_list(&mut self, to: ConnId, list: &Rc<[u8]>) -> ListDelivery {
        self.queue_list(to, list, true)
    }

    fn send_client_list_in_order(&mut self, to: ConnId, list: &Rc<[u8]>) -> ListDelivery {
        self.queue_list(to, list, false)
    }
}

impl Connections {
    fn queue_list(&mut self, to: ConnId, list: &Rc<[u8]>, may_withdraw: bool) -> ListDelivery {
        let now = self.now;
        let Some(slot) = slot_mut(&mut self.slab, to) else { return ListDelivery::Gone };
        match slot.machine.queue_list(list, may_withdraw, now, &self.settings) {
            ListQueued::Yes => {
                self.queue_flush(to);
                ListDelivery::Queued
            }
            ListQueued::Busy => ListDelivery::Busy,
            ListQueued::NotOpen => ListDelivery::Gone,
        }
    }

    fn queue(&mut self, to: ConnId, message: &[u8], replay: bool) -> Delivery {
        let now = self.now;
        let Some(slot) = slot_mut(&mut self.slab, to) else { return Delivery::Gone };
        match slot.machine.queue_message(message, replay, now, &self.settings) {
            Queued::Yes => {
                self.queue_flush(to);
                Delivery::Queued
            }
            Queued::OverLimit => {
                self.close(to, Close::Frame(CloseReason::OutputLimit));
                Delivery::ClosedOverLimit
            }
            Queued::NotOpen => Delivery::Gone,
        }
    }
}

/// `id`'s slot, if it is still the connection `id` names. A free function, so callers can
/// hold it next to a borrow of the settings.
fn slot_mut(slab: &mut Slab<Slot>, id: ConnId) -> Option<&mut Slot> {
    slab.get_mut(id.index()).filter(|slot| slot.generation == id.generation())
}
