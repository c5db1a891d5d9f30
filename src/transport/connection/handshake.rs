//! The HTTP request head that opens every connection, read as it arrives.

use std::borrow::Cow;
use std::io::Read;

use tungstenite::protocol::{Role, WebSocketContext};

use super::output::Output;
use super::{Close, Event, Settings};
use crate::transport::http::{self, Entry, Head, UpgradePolicy};

/// How a complete request head is answered.
pub(super) enum Decided {
    Event(Event),
    Upgrade { ws: Box<WebSocketContext>, echo: bool, entry: Entry },
}

/// Reads the HTTP request head; decides once it is complete (or too large).
pub(super) fn read_head(
    head: &mut Vec<u8>,
    input: &mut dyn Read,
    out: &mut Output,
    settings: &Settings,
    policy: &UpgradePolicy<'_>,
) -> Option<Decided> {
    let max_head = settings.max_request_head;
    let mut chunk = [0u8; 2048];
    loop {
        let room = (max_head - head.len()).min(chunk.len());
        let n = match input.read(&mut chunk[..room]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let full = head.len() >= max_head;
        // Parse only once the blank line that ends a head may be there: a client that
        // trickles bytes costs a scan of what it sent, not a parse per byte.
        let ends = head[searched_from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r");
        if !ends && !full {
            continue;
        }
        return match http::read_head(head, full, policy) {
            Head::Partial => continue,
            Head::Respond(response) => {
                Some(Decided::Event(Event::Close(Close::Http(Cow::Borrowed(response)))))
            }
            Head::Page { route, head_only } => Some(Decided::Event(Event::Page { route, head_only })),
            Head::Upgrade { response, head_len, echo, entry } => {
                out.push_raw(response.as_bytes());
                let early_frames = head.get(head_len..).unwrap_or_default().to_vec();
                let config = if echo { settings.echo_ws } else { settings.ws };
                let ws = WebSocketContext::from_partially_read(early_frames, Role::Server, Some(config));
                Some(Decided::Upgrade { ws: Box::new(ws), echo, entry })
            }
        };
    }
}
