//! The open connection's WebSocket side: reading frames into events, the echo path, the
//! drain while closing, and the close codes.

use std::io::{self, Read, Write};
use std::time::Instant;

use tungstenite::protocol::WebSocketContext;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message};

use super::output::Output;
use super::{Close, Event, Peer, Settings};
use crate::metrics::CloseReason;
use crate::transport::rate_limit::{RateLimiter, Verdict};

/// Bytes tungstenite may add on its own (pongs, close replies) past the output cap. Beyond
/// it tungstenite sees a blocked socket and keeps at most one pending control frame.
const CONTROL_SLACK: usize = 4096;

/// Reads WebSocket frames until a message for the core, a close, or no more input.
pub(super) fn read_messages(
    ws: &mut WebSocketContext,
    echo: bool,
    input: &mut dyn Read,
    out: &mut Output,
    peer: &mut Peer,
    now: Instant,
    settings: &Settings,
) -> Option<Event> {
    let cap = if echo { settings.echo_max_output } else { settings.max_output };
    loop {
        let message = match ws.read(&mut WsIo { input, out, cap }) {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => return Some(Event::Close(close_for(&e))),
        };
        let (bytes, text) = match message {
            Message::Text(text) => (Bytes::from(text), true),
            Message::Binary(bytes) => (bytes, false),
            Message::Pong(payload) if !echo => match peer.receipts.confirm(&payload) {
                Some(messages) => return Some(Event::Acknowledged { messages }),
                None => continue,
            },
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => return Some(Event::Close(Close::Answer)),
        };
        if !echo {
            return Some(admit(&mut peer.rate, now, settings, bytes));
        }
        if !echo_back(out, &bytes, text, cap) {
            return Some(Event::Close(Close::Frame(CloseReason::OutputLimit)));
        }
    }
}

/// A command passes the rate limiter, or becomes what the limiter calls for.
fn admit(rate: &mut RateLimiter, now: Instant, settings: &Settings, message: Bytes) -> Event {
    match rate.check(now, settings.rate_limit, settings.rate_burst) {
        Verdict::Allow => Event::Message(message),
        Verdict::Drop => Event::RateLimited,
        Verdict::Disconnect => Event::Close(Close::Frame(CloseReason::RateLimit)),
    }
}

/// The conformance echo path: the message goes back as it came. `false`: over the cap.
fn echo_back(out: &mut Output, message: &[u8], text: bool, cap: usize) -> bool {
    if out.unsent_counted() + message.len() > cap {
        return false;
    }
    if text {
        out.push_text(message);
    } else {
        out.push_binary(message);
    }
    true
}

/// A closing connection: discard what the peer still sends, notice when it is done.
pub(super) fn drain_closing(
    ws: Option<&mut WebSocketContext>,
    peer_done: &mut bool,
    input: &mut dyn Read,
    out: &mut Output,
    cap: usize,
) {
    let Some(ws) = ws else { return discard(input) };
    while !*peer_done {
        match ws.read(&mut WsIo { input, out, cap }) {
            Ok(Message::Close(_)) => *peer_done = true,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => *peer_done = true,
        }
    }
    discard(input);
}

pub(super) fn discard(input: &mut dyn Read) {
    let mut sink = [0u8; 1024];
    while matches!(input.read(&mut sink), Ok(n) if n > 0) {}
}

/// What tungstenite reads from and writes to. Writes go into the connection's output, so
/// frames tungstenite makes (pongs, close frames) and frames the core's messages become can
/// never interleave mid-frame.
pub(super) struct WsIo<'a> {
    pub input: &'a mut dyn Read,
    pub out: &'a mut Output,
    pub cap: usize,
}

impl Read for WsIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for WsIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.unsent_counted() > self.cap + CONTROL_SLACK {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.out.push_raw(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a read error ends a connection (RFC 6455 close codes).
fn close_for(error: &tungstenite::Error) -> Close {
    use tungstenite::error::ProtocolError;
    match error {
        // The only I/O errors reading can meet come from the TLS wire: a record that does
        // not decrypt or parse is a broken rule, not a lost connection.
        tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
            Close::Drop(CloseReason::ProtocolError)
        }
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_)
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Close::Drop(CloseReason::ConnectionLost)
        }
        tungstenite::Error::Capacity(_) => Close::Frame(CloseReason::MessageTooBig),
        tungstenite::Error::Utf8(_) => Close::Frame(CloseReason::InvalidUtf8),
        _ => Close::Frame(CloseReason::ProtocolError),
    }
}

/// The close frame the server sends for a reason it closes a connection for.
pub fn close_frame(reason: CloseReason) -> (CloseCode, &'static str) {
    match reason {
        CloseReason::MessageTooBig => (CloseCode::Size, "message too big"),
        CloseReason::OutputLimit => (CloseCode::Policy, "output limit exceeded: not reading"),
        CloseReason::OutputSoftLimit => (CloseCode::Policy, "output limit exceeded: reading too slowly"),
        CloseReason::RateLimit => (CloseCode::Policy, "rate limit exceeded, repeatedly"),
        CloseReason::InvalidUtf8 => (CloseCode::Invalid, "invalid UTF-8 in a text message"),
        CloseReason::Shutdown => (CloseCode::Away, "server shutting down"),
        // The client resumed on a newer connection (PROTOCOL.md, *Resume*).
        CloseReason::TakenOver => (CloseCode::Library(4001), "resumed on another connection"),
        _ => (CloseCode::Protocol, "WebSocket protocol violation"),
    }
}
