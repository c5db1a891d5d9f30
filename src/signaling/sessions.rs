//! Sessions between two clients, keyed by an unguessable id.

use std::collections::HashMap;

use super::ClientId;
use crate::protocol::{SessionId, SessionState};

pub(crate) struct Session {
    pub members: [ClientId; 2],
    pub state: SessionState,
}

impl Session {
    pub fn opponent_of(&self, client: ClientId) -> Option<ClientId> {
        match self.members {
            [a, b] if a == client => Some(b),
            [a, b] if b == client => Some(a),
            _ => None,
        }
    }
}

#[derive(Default)]
pub(crate) struct Sessions {
    map: HashMap<SessionId, Session>,
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: SessionId) -> Option<&Session> {
        self.map.get(&key)
    }

    pub fn get_mut(&mut self, key: SessionId) -> Option<&mut Session> {
        self.map.get_mut(&key)
    }

    pub fn remove(&mut self, key: SessionId) -> Option<Session> {
        self.map.remove(&key)
    }

    /// Opens a session under a fresh key drawn from `random` (retrying on the
    /// astronomically unlikely collision with a live session).
    pub fn open(&mut self, members: [ClientId; 2], random: &mut dyn FnMut() -> u64) -> SessionId {
        loop {
            let key = SessionId::new(random());
            if let std::collections::hash_map::Entry::Vacant(slot) = self.map.entry(key) {
                slot.insert(Session { members, state: SessionState::New });
                return key;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &Session)> + '_ {
        self.map.iter().map(|(&key, session)| (key, session))
    }
}
