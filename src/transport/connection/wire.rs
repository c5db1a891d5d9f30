//! What lies between the socket and the WebSocket: nothing (plain TCP), or TLS.
//!
//! The machine reads plaintext through [`Wire::plaintext`] and writes its output through
//! [`Wire::write`]; only this file knows whether bytes are encrypted on the way.
//!
//! TLS is rustls' *unbuffered* server connection: rustls keeps the protocol state and the
//! keys, and we keep the bytes. That matters for thousands of idle clients: rustls's
//! buffered `ServerConnection` holds a 4 KiB record buffer per connection for its whole
//! life, while here every buffer is empty and unallocated between messages, as a plain
//! connection's are. Ciphertext arrives from the same inbox and stash a plain connection
//! reads; rustls decrypts each record and the plaintext waits here until the WebSocket
//! reads it; our output queue is encrypted as it is written,
//! at most one record (16 KiB) ahead of the socket, so shared client lists stay shared
//! until the last moment and the output limits still count them.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};

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

/// Plaintext encrypted into one record: TLS's maximum.
const MAX_RECORD_PLAINTEXT: usize = 16 << 10;
/// What a record adds to its plaintext at most (header, content type, AEAD tag).
const RECORD_OVERHEAD: usize = 5 + 1 + 16 + 256;
/// Steps of rustls's state machine one read may take: a whole handshake flight is a few.
const MAX_STEPS: usize = 64;
/// Ciphertext accepted per connection before a record must complete: a record is at most
/// 16 KiB + 256, a handshake flight (a ClientHello with many extensions) a little more.
const MAX_INCOMING: usize = 64 << 10;

pub struct Tls {
    conn: UnbufferedServerConnection,
    /// Ciphertext not yet processed: a partial record, or handshake data rustls still
    /// needs. Empty (and unallocated) between messages.
    incoming: Vec<u8>,
    /// Decrypted application data the WebSocket has not read yet, and how much it has.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// TLS bytes for the socket (handshake records, encrypted output, alerts), and how
    /// many of them are written.
    outgoing: Vec<u8>,
    outgoing_written: usize,
    /// rustls refused the peer's bytes (not TLS, or a TLS violation).
    broken: bool,
    /// Our side is closing: close_notify follows the last of the output.
    closing: bool,
    close_notify_sent: bool,
    /// rustls has offered to encrypt application data: the handshake is done.
    handshake_done: bool,
    /// The peer sent close_notify (or the connection is closed): its end of the stream.
    peer_closed: bool,
}

/// How far one step of the TLS state machine got.
enum Step {
    /// Something happened (records decrypted, handshake bytes produced): step again.
    Again,
    /// Nothing more can happen without more bytes from the peer.
    Blocked,
    /// The handshake is done and every complete record is read. With output to encrypt:
    /// encrypted, as far as one record.
    Ready,
}

impl Wire {
    /// A TLS server side for one accepted connection.
    pub fn tls(config: Arc<ServerConfig>) -> Result<Wire, rustls::Error> {
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(Wire::Tls(Box::new(Tls {
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plaintext_read: 0,
            outgoing: Vec::new(),
            outgoing_written: 0,
            broken: false,
            closing: false,
            close_notify_sent: false,
            handshake_done: false,
            peer_closed: false,
        })))
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
        match self {
            Wire::Plain => out.write_to(sink, sent),
            Wire::Tls(tls) => tls.write(out, sink, sent),
        }
    }

    /// Bytes of its own (TLS records: handshake, alerts, close_notify) wait to be written.
    pub(super) fn wants_write(&self) -> bool {
        match self {
            Wire::Plain => false,
            Wire::Tls(tls) => tls.outgoing_written < tls.outgoing.len() || tls.owes_close_notify(),
        }
    }

    /// The wire itself has failed (not TLS, a TLS violation): the connection is over.
    pub(super) fn is_broken(&self) -> bool {
        match self {
            Wire::Plain => false,
            Wire::Tls(tls) => tls.broken,
        }
    }

    /// Bytes held by the wire itself (TLS buffers), for the connection's accounting.
    pub(super) fn held(&self) -> usize {
        match self {
            Wire::Plain => 0,
            Wire::Tls(tls) => tls.incoming.len() + tls.plaintext.len() + tls.outgoing.len(),
        }
    }

    /// TLS bytes waiting for the socket.
    pub(super) fn held_output(&self) -> usize {
        match self {
            Wire::Plain => 0,
            Wire::Tls(tls) => tls.outgoing.len() - tls.outgoing_written,
        }
    }

    /// Our side is closing: say so at the wire's level too (TLS close_notify), once
    /// everything queued before it has been encrypted.
    pub(super) fn close_notify(&mut self) {
        if let Wire::Tls(tls) = self {
            tls.closing = true;
        }
    }
}

impl Tls {
    fn owes_close_notify(&self) -> bool {
        self.closing && !self.close_notify_sent && self.handshake_done
    }

    /// One step of rustls's state machine over what has arrived. `encrypt`: output to
    /// encrypt once the connection may carry application data.
    fn step(&mut self, encrypt: Option<&mut Output>) -> Result<Step, rustls::Error> {
        let Tls {
            conn,
            incoming,
            plaintext,
            outgoing,
            close_notify_sent,
            closing,
            peer_closed,
            handshake_done,
            ..
        } = self;
        let status = conn.process_tls_records(incoming);
        let mut discard = status.discard;
        let step = match status.state? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record?;
                    discard += record.discard;
                    plaintext.extend_from_slice(record.payload);
                }
                Step::Again
            }
            ConnectionState::EncodeTlsData(mut handshake) => {
                encode_into(outgoing, 4096, |buf| handshake.encode(buf).map_err(encode_needs));
                Step::Again
            }
            // Our outgoing queue keeps the bytes in order; they go out with everything else.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                Step::Again
            }
            ConnectionState::BlockedHandshake => Step::Blocked,
            ConnectionState::PeerClosed => {
                *peer_closed = true;
                Step::Again
            }
            ConnectionState::Closed => {
                *peer_closed = true;
                Step::Blocked
            }
            ConnectionState::WriteTraffic(mut traffic) => {
                *handshake_done = true;
                if let Some(out) = encrypt {
                    if let Some(chunk) = out.front(MAX_RECORD_PLAINTEXT) {
                        let len = chunk.len();
                        encode_into(outgoing, len + RECORD_OVERHEAD, |buf| {
                            traffic.encrypt(chunk, buf).map_err(encrypt_needs)
                        });
                        out.consume(len);
                    } else if *closing && !*close_notify_sent {
                        *close_notify_sent = true;
                        encode_into(outgoing, RECORD_OVERHEAD, |buf| {
                            traffic.queue_close_notify(buf).map_err(encrypt_needs)
                        });
                    }
                }
                Step::Ready
            }
            // Early data is not accepted (the config allows none); anything else is new.
            _ => Step::Blocked,
        };
        incoming.drain(..discard.min(incoming.len()));
        if incoming.is_empty() {
            // Freed, not kept: an idle connection holds no TLS buffer.
            *incoming = Vec::new();
        }
        Ok(step)
    }

    /// Takes what `pending` has into `incoming`, up to the bound.
    fn take_ciphertext(&mut self, pending: &mut Pending<'_, '_>) -> io::Result<usize> {
        let room = MAX_INCOMING.saturating_sub(self.incoming.len());
        if room == 0 {
            // A record or handshake message larger than TLS allows: not a TLS peer.
            self.broken = true;
            return Err(io::ErrorKind::InvalidData.into());
        }
        let mut taken = 0;
        let mut chunk = [0u8; 4096];
        while taken < room {
            let want = chunk.len().min(room - taken);
            match pending.read(&mut chunk[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    self.incoming.extend_from_slice(&chunk[..n]);
                    taken += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(taken)
    }

    /// Decrypted bytes into `buf`; `WouldBlock` once nothing more can be decrypted from
    /// what has arrived; `Ok(0)` after the peer's close_notify.
    fn read(&mut self, buf: &mut [u8], pending: &mut Pending<'_, '_>) -> io::Result<usize> {
        for _ in 0..MAX_STEPS {
            if self.broken {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if self.plaintext_read < self.plaintext.len() {
                let rest = &self.plaintext[self.plaintext_read..];
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                self.plaintext_read += n;
                if self.plaintext_read == self.plaintext.len() {
                    self.plaintext = Vec::new();
                    self.plaintext_read = 0;
                }
                return Ok(n);
            }
            if self.peer_closed {
                return Ok(0);
            }
            let took = self.take_ciphertext(pending)?;
            match self.step(None) {
                Ok(Step::Again) => {}
                Ok(Step::Blocked | Step::Ready) if took == 0 => return Err(io::ErrorKind::WouldBlock.into()),
                Ok(Step::Blocked | Step::Ready) => {}
                Err(e) => {
                    log::debug!("TLS: {e}");
                    self.broken = true;
                }
            }
        }
        // rustls kept reporting progress without any: not a state a peer should reach.
        self.broken = true;
        Err(io::ErrorKind::InvalidData.into())
    }

    fn write(&mut self, out: &mut Output, sink: &mut impl Sink, sent: &mut u64) -> io::Result<Flush> {
        loop {
            // Each round encrypts one record (or writes what is encrypted): it ends when the
            // output does, or the socket blocks.
            while self.outgoing_written < self.outgoing.len() {
                match sink.write(&self.outgoing[self.outgoing_written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.outgoing_written += n;
                        *sent += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Pending),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.outgoing = Vec::new();
            self.outgoing_written = 0;
            if out.is_empty() && !self.owes_close_notify() {
                return Ok(Flush::Done);
            }
            match self.step(Some(out)) {
                Ok(Step::Again) => {}
                // Still handshaking: the output waits for the keys.
                Ok(Step::Blocked) => return Ok(Flush::Done),
                Ok(Step::Ready) if self.outgoing.is_empty() => return Ok(Flush::Done),
                Ok(Step::Ready) => {}
                Err(e) => {
                    log::debug!("TLS: {e}");
                    self.broken = true;
                    return Err(io::ErrorKind::InvalidData.into());
                }
            }
        }
    }
}

/// Appends what `encode` writes to `outgoing`, growing it to the size rustls asks for.
/// `encode` returns the bytes written, or `Err(Some(size))` for a buffer too small,
/// `Err(None)` for nothing to write.
/// The buffer size rustls asks for, or `None` for an error a bigger buffer would not mend.
fn encode_needs(error: EncodeError) -> Option<usize> {
    match error {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Some(required_size),
        _ => None,
    }
}

/// As [`encode_needs`], for encryption.
fn encrypt_needs(error: EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => Some(required_size),
        _ => None,
    }
}

fn encode_into(
    outgoing: &mut Vec<u8>,
    guess: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) {
    let start = outgoing.len();
    let mut room = guess;
    loop {
        outgoing.resize(start + room, 0);
        match encode(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return;
            }
            Err(Some(required)) if required > room => room = required,
            Err(_) => {
                outgoing.truncate(start);
                return;
            }
        }
    }
}

pub(super) enum Plaintext<'w, 'p, 'a, 'b> {
    Plain(&'p mut Pending<'a, 'b>),
    Tls(&'w mut Tls, &'p mut Pending<'a, 'b>),
}

impl Read for Plaintext<'_, '_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Plaintext::Plain(pending) => pending.read(buf),
            Plaintext::Tls(tls, pending) => tls.read(buf, pending),
        }
    }
}
