//! The states PROTOCOL.md puts on the wire as numbers.

/// A client's state in `clu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Wait = 1,
    Calling = 2,
}

/// A session's state in `ssu`; `Closed` is only ever announced, never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SessionState {
    New = 1,
    Pending = 2,
    Active = 3,
    Closed = 4,
}

impl ClientState {
    /// The number on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl SessionState {
    /// The number on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// How a client wants the client list (PROTOCOL.md, *Presence modes*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Presence {
    /// `clu` with the whole list on every change: the base protocol.
    #[default]
    Full,
    /// A snapshot with a revision, then `cld` changes from the revision last given.
    Delta,
    /// No list messages at all.
    None,
}

impl Presence {
    /// The field's value on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Presence::Full => "full",
            Presence::Delta => "delta",
            Presence::None => "none",
        }
    }

    pub fn from_name(name: &str) -> Option<Presence> {
        [Presence::Full, Presence::Delta, Presence::None].into_iter().find(|mode| mode.name() == name)
    }
}
