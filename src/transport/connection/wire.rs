//! What lies between the socket and the WebSocket: nothing (plain TCP), or TLS.
//!
//! The machine reads plaintext through [`Wire::plaintext`] and writes its output through
//! [`Wire::write`]; only this file knows whether bytes are encrypted on the way. TLS is
//! rustls' sans-IO `ServerConnection`: ciphertext is handed to it from the same buffers a
//! plain connection reads from (the loop's inbox, the connection's stash), and its records
//! are written to the socket the machine is given.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

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
    Tls(Box<Tls>),
}

pub struct Tls {
    conn: ServerConnection,
    /// rustls refused the peer's bytes (not TLS, or a TLS violation).
    broken: bool,
    /// Our side is closing: close_notify follows the last of the output.
    closing: bool,
}

/// Plaintext rustls holds for the socket, at most: past it, the connection's output waits
/// in its own queue (where shared client lists stay shared and the output limits apply).
const TLS_PLAINTEXT_IN_FLIGHT: usize = 16 << 10;

impl Wire {
    /// A TLS server side for one accepted connection.
    pub fn tls(config: Arc<ServerConfig>) -> Result<Wire, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        conn.set_buffer_limit(Some(TLS_PLAINTEXT_IN_FLIGHT));
        Ok(Wire::Tls(Box::new(Tls { conn, broken: false, closing: false })))
    }

    /// The connection's incoming plaintext, read from `pending`.
    pub(super) fn plaintext<'w, 'p, 'a, 'b>(
        &'w mut self,
        pending: &'p mut Pending<'a, 'b>,
    ) -> Plaintext<'w, 'p, 'a, 'b> {
        match self {
            Wire::Plain => Plaintext::Plain(pending),
            Wire::Tls(tls) => Plaintext::Tls(tls, pending),
        }
    }

    /// Writes `out` to `sink` as far as it takes, adding the socket bytes written to `sent`.
    pub(super) fn write(
        &mut self,
        out: &mut Output,
        sink: &mut impl Sink,
        sent: &mut u64,
    ) -> io::Result<Flush> {
        let Tls { conn: tls, closing, .. } = match self {
            Wire::Plain => return out.write_to(sink, sent),
            Wire::Tls(tls) => &mut **tls,
        };
        loop {
            // Plaintext moves into rustls only as far as its in-flight bound allows.
            let moved = out.write_to(&mut Encrypting(tls), &mut 0)?;
            if moved == Flush::Done && *closing && !tls.is_handshaking() {
                *closing = false;
                tls.send_close_notify();
            }
            while tls.wants_write() {
                match tls.write_tls(sink) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => *sent += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Pending),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if moved == Flush::Done {
                return Ok(Flush::Done);
            }
        }
    }

    /// Bytes of its own (TLS records: handshake, alerts, close_notify) wait to be written.
    pub(super) fn wants_write(&self) -> bool {
        match self {
            Wire::Plain => false,
            Wire::Tls(tls) => tls.conn.wants_write(),
        }
    }

    /// The wire itself has failed (not TLS, a TLS violation): the connection is over.
    pub(super) fn is_broken(&self) -> bool {
        match self {
            Wire::Plain => false,
            Wire::Tls(tls) => tls.broken,
        }
    }

    /// Our side is closing: say so at the wire's level too (TLS close_notify), once
    /// everything queued before it has gone into the TLS stream.
    pub(super) fn close_notify(&mut self) {
        if let Wire::Tls(tls) = self {
            tls.closing = true;
        }
    }
}

/// rustls' plaintext writer, as a `Write` that blocks instead of taking nothing.
struct Encrypting<'a>(&'a mut ServerConnection);

impl Write for Encrypting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.writer().write(buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self.0.writer().write_vectored(bufs)? {
            0 if bufs.iter().any(|buf| !buf.is_empty()) => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) enum Plaintext<'w, 'p, 'a, 'b> {
    Plain(&'p mut Pending<'a, 'b>),
    Tls(&'w mut Tls, &'p mut Pending<'a, 'b>),
}

impl Read for Plaintext<'_, '_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (tls, pending) = match self {
            Plaintext::Plain(pending) => return pending.read(buf),
            Plaintext::Tls(tls, pending) => (tls, pending),
        };
        if tls.broken {
            return Err(io::ErrorKind::InvalidData.into());
        }
        loop {
            match tls.conn.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Ok(0): the peer's close_notify, an end of file.
                result => return result,
            }
            // No plaintext yet: hand rustls more ciphertext. `pending` blocks when empty.
            tls.conn.read_tls(*pending)?;
            if let Err(e) = tls.conn.process_new_packets() {
                log::debug!("TLS: {e}");
                tls.broken = true;
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
    }
}
