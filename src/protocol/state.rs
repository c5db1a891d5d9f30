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
