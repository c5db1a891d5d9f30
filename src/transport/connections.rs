//! The slab of connections, and the [`Outbox`] the core writes into.
//!
//! Sending only appends a frame to the recipient's output and marks it dirty; the loop
//! writes every dirty connection once, at the end of the turn. Closes decided while the
//! core is mid-command (an output cap passed) are queued as *dooms* and carried out after
//! the command returns, so no slot is freed or reused while the core may still address it.

use std::rc::Rc;

use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;

use super::connection::{Connection, Phase};
use crate::metrics::CloseReason;
use crate::signaling::{ConnId, Delivery, Outbox};

/// Bytes a frame header adds at most.
const FRAME_OVERHEAD: usize = 14;

/// Why and how a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doom {
    /// Gone without a close handshake: reset, EOF, liveness timeout, write error.
    Drop(CloseReason),
    /// We close it with the reason's close code; the peer's reply is awaited briefly.
    Close(CloseReason),
    /// The peer sent a close frame; tungstenite has queued the reply.
    PeerClosed,
}

impl Doom {
    pub fn reason(self) -> CloseReason {
        match self {
            Doom::Drop(reason) | Doom::Close(reason) => reason,
            Doom::PeerClosed => CloseReason::ClientClose,
        }
    }
}

/// The close frame the server sends for a reason it closes a connection for.
pub fn close_frame(reason: CloseReason) -> (CloseCode, &'static str) {
    match reason {
        CloseReason::MessageTooBig => (CloseCode::Size, "message too big"),
        CloseReason::OutputLimit => (CloseCode::Policy, "output limit exceeded: not reading"),
        CloseReason::RateLimit => (CloseCode::Policy, "rate limit exceeded, repeatedly"),
        CloseReason::InvalidUtf8 => (CloseCode::Invalid, "invalid UTF-8 in a text message"),
        CloseReason::Shutdown => (CloseCode::Away, "server shutting down"),
        _ => (CloseCode::Protocol, "WebSocket protocol violation"),
    }
}

pub struct Connections {
    pub slab: Slab<Connection>,
    /// Connections with output to write at the end of this turn.
    pub dirty: Vec<ConnId>,
    pub doomed: Vec<(ConnId, Doom)>,
    pub max_output: usize,
    next_generation: u32,
}

impl Connections {
    pub fn new(max_output: usize) -> Self {
        Connections {
            slab: Slab::new(),
            dirty: Vec::new(),
            doomed: Vec::new(),
            max_output,
            next_generation: 0,
        }
    }

    pub fn next_generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_generation
    }

    pub fn id_of(&self, key: usize) -> Option<ConnId> {
        let conn = self.slab.get(key)?;
        Some(ConnId::new(key as u32, conn.generation))
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.slab.get_mut(id.index()).filter(|conn| conn.generation == id.generation())
    }

    pub fn queue_flush(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id)
            && !conn.flush_queued
        {
            conn.flush_queued = true;
            self.dirty.push(id);
        }
    }

    /// Decides that `id` ends; the loop carries it out after the current core call.
    pub fn doom(&mut self, id: ConnId, doom: Doom) {
        if let Some(conn) = self.get_mut(id)
            && !conn.doomed
        {
            conn.doomed = true;
            self.doomed.push((id, doom));
        }
    }

    /// An open connection that is not on its way out.
    fn live(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.get_mut(id).filter(|conn| !conn.doomed && matches!(conn.phase, Phase::Open { .. }))
    }
}

impl Outbox for Connections {
    fn send(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        let cap = self.max_output;
        let Some(conn) = self.live(to) else { return Delivery::Closing };
        if conn.out.unsent_counted() + message.len() + FRAME_OVERHEAD > cap {
            self.doom(to, Doom::Close(CloseReason::OutputLimit));
            return Delivery::Closing;
        }
        conn.out.push_text(message);
        self.queue_flush(to);
        Delivery::Queued
    }

    fn offer(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        let cap = self.max_output;
        match self.live(to) {
            Some(conn) if conn.out.unsent_counted() + message.len() + FRAME_OVERHEAD > cap => {
                Delivery::Closing
            }
            Some(_) => self.send(to, message),
            None => Delivery::Closing,
        }
    }

    fn send_client_list(&mut self, to: ConnId, list: &Rc<[u8]>) -> bool {
        let Some(conn) = self.live(to) else { return true };
        let queued = conn.out.push_list(list);
        if queued {
            self.queue_flush(to);
        }
        queued
    }
}
