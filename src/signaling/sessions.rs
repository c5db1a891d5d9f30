//! Sessions between two clients, keyed by an unguessable id.

use std::collections::HashMap;

use super::ConnId;

/// A session id is 64 random bits; on the wire it is 16 lowercase hex digits.
pub(crate) type SessionKey = u64;

/// PROTOCOL.md's session states; `Closed` is only ever announced, never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SessionState {
    New = 1,
    Pending = 2,
    Active = 3,
    Closed = 4,
}

pub(crate) struct Session {
    pub members: [ConnId; 2],
    pub state: SessionState,
}

impl Session {
    pub fn opponent_of(&self, conn: ConnId) -> Option<ConnId> {
        match self.members {
            [a, b] if a == conn => Some(b),
            [a, b] if b == conn => Some(a),
            _ => None,
        }
    }
}

#[derive(Default)]
pub(crate) struct Sessions {
    map: HashMap<SessionKey, Session>,
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: SessionKey) -> Option<&Session> {
        self.map.get(&key)
    }

    pub fn get_mut(&mut self, key: SessionKey) -> Option<&mut Session> {
        self.map.get_mut(&key)
    }

    pub fn remove(&mut self, key: SessionKey) -> Option<Session> {
        self.map.remove(&key)
    }

    /// Opens a session under a fresh key drawn from `random` (retrying on the
    /// astronomically unlikely collision with a live session).
    pub fn open(&mut self, members: [ConnId; 2], random: &mut dyn FnMut() -> u64) -> SessionKey {
        loop {
            let key = random();
            if let std::collections::hash_map::Entry::Vacant(slot) = self.map.entry(key) {
                slot.insert(Session { members, state: SessionState::New });
                return key;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (SessionKey, &Session)> + '_ {
        self.map.iter().map(|(&key, session)| (key, session))
    }
}

/// The wire form of a session key.
pub fn format_session_id(key: SessionKey) -> SessionIdText {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 16];
    for (at, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((key >> (60 - 4 * at)) & 0xf) as usize];
    }
    SessionIdText(text)
}

/// Reads a session id as the server writes it; anything else names no session.
pub fn parse_session_id(text: &str) -> Option<SessionKey> {
    let bytes: &[u8; 16] = text.as_bytes().try_into().ok()?;
    let mut key = 0u64;
    for &byte in bytes {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            _ => return None,
        };
        key = key << 4 | u64::from(digit);
    }
    Some(key)
}

/// 16 hex digits on the stack.
#[derive(Clone, Copy)]
pub struct SessionIdText([u8; 16]);

impl SessionIdText {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_spellings() {
        for key in [0, 1, 0xdead_beef, u64::MAX] {
            let text = format_session_id(key);
            assert_eq!(text.as_str().len(), 16);
            assert_eq!(parse_session_id(text.as_str()), Some(key));
        }
        for bad in [
            "",
            "0",
            "00000000000000000",
            "000000000000000G",
            "ABCDEF0123456789",
            "+000000000000001",
            " 000000000000001",
        ] {
            assert_eq!(parse_session_id(bad), None, "{bad}");
        }
    }
}
