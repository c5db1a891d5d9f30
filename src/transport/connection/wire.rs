//! What lies between the socket and the WebSocket: nothing (plain TCP), or TLS.
//!
//! The machine reads plaintext through [`Wire::plaintext`] and writes its output through
//! [`Wire::write`]; only this file knows whether bytes are encrypted on the way.

use std::io::{self, Read, Write};

use super::input::Pending;
use super::output::{Flush, Output};

/// The socket as the machine sees it when writing: a byte sink that can also be told that
/// nothing more will be written (TCP half-close). The loop passes the real socket; tests
/// pass a vector.
pub trait Sink: Write {
    fn shutdown_write(&mut self);
}

impl Sink for Vec<u8> {
    fn shutdown_write(&mut self) {}
}

pub enum Wire {
    Plain,
}

impl Wire {
    /// The connection's incoming plaintext, read from `pending`.
    pub(super) fn plaintext<'w, 'p, 'a, 'b>(
        &'w mut self,
        pending: &'p mut Pending<'a, 'b>,
    ) -> Plaintext<'w, 'p, 'a, 'b> {
        match self {
            Wire::Plain => Plaintext::Plain(pending, std::marker::PhantomData),
        }
    }

    /// Writes `out` to `sink` as far as it takes, adding the socket bytes written to `sent`.
    pub(super) fn write(
        &mut self,
        out: &mut Output,
        sink: &mut impl Sink,
        sent: &mut u64,
    ) -> io::Result<Flush> {
        match self {
            Wire::Plain => out.write_to(sink, sent),
        }
    }

    /// Bytes of its own (TLS records) wait to be written.
    pub(super) fn wants_write(&self) -> bool {
        false
    }

    /// Decrypted input waits to be read.
    pub(super) fn has_plaintext(&self) -> bool {
        false
    }

    /// The wire itself has failed (not TLS, a TLS violation): the connection is over.
    pub(super) fn is_broken(&self) -> bool {
        false
    }

    /// Our side is closing: say so at the wire's level too (TLS close_notify).
    pub(super) fn close_notify(&mut self) {}
}

pub(super) enum Plaintext<'w, 'p, 'a, 'b> {
    Plain(&'p mut Pending<'a, 'b>, std::marker::PhantomData<&'w mut ()>),
}

impl Read for Plaintext<'_, '_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Plaintext::Plain(pending, _) => pending.read(buf),
        }
    }
}
