//! The few things the load tester needs to read from server messages.

use serde::Deserialize;

/// A server message, for the setup phases (the relay hot path uses [`relay_stamp`]).
#[derive(Debug, Deserialize)]
pub struct ServerMessage {
    pub cmd: String,
    #[serde(rename = "sId")]
    pub sid: Option<String>,
    #[serde(rename = "sessionId")]
    pub session_id: Option<String>,
    pub state: Option<u8>,
    pub code: Option<u16>,
    #[serde(rename = "opponentId")]
    pub opponent_id: Option<String>,
    /// The secret of a registration or resume reply (resume mode).
    #[serde(rename = "resumeToken")]
    pub resume_token: Option<String>,
}

pub fn parse(text: &str) -> Option<ServerMessage> {
    serde_json::from_str(text).ok()
}

pub fn is_client_list(text: &str) -> bool {
    text.starts_with(r#"{"cmd":"clu""#)
}

pub fn is_relayed_candidate(text: &str) -> bool {
    text.starts_with(r#"{"cmd":"icecandidate""#)
}

/// Entries in a `clu` list, counted without parsing it.
pub fn list_len(text: &str) -> usize {
    text.matches(r#"{"sId":"#).count()
}

/// `(seq, t)` from a relayed candidate whose payload ends in `"seq":N,"t":T}`, as the
/// load tester writes them (the server relays payloads byte for byte).
pub fn relay_stamp(text: &str) -> Option<(u64, u64)> {
    let body = text.strip_suffix("}}")?;
    let (rest, t) = body.rsplit_once(",\"t\":")?;
    let (_, seq) = rest.rsplit_once("\"seq\":")?;
    Some((seq.parse().ok()?, t.parse().ok()?))
}

/// An ICE candidate payload padded to about `size` bytes, stamped last.
pub fn candidate(out: &mut String, session_id: &str, pad: &str, seq: u64, t: u64) {
    use std::fmt::Write;
    out.clear();
    let _ = write!(
        out,
        r#"{{"cmd":"icecandidate","sessionId":"{session_id}","icecandidate":{{"candidate":"candidate:842163049 1 udp 1677729535 192.0.2.7 54321 typ srflx raddr 10.0.0.7 rport 54321 generation 0{pad}","sdpMid":"0","sdpMLineIndex":0,"seq":{seq},"t":{t}}}}}"#
    );
}

/// Padding that brings the candidate payload to roughly `payload_bytes`.
pub fn padding(payload_bytes: usize) -> String {
    // The payload without padding, with a 6-digit seq and a 10-digit stamp.
    let base = 177;
    " ".repeat(payload_bytes.saturating_sub(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_a_relay() {
        let mut sent = String::new();
        candidate(&mut sent, "0123456789abcdef", &padding(200), 42, 123456);
        let payload = &sent[sent.find(r#""icecandidate":{"#).map(|i| i + 15).unwrap_or(0)..sent.len() - 1];
        assert!((190..=215).contains(&payload.len()), "payload {} bytes", payload.len());
        let relayed = format!(
            r#"{{"cmd":"icecandidate","sessionId":"0123456789abcdef","opponentId":"x","icecandidate":{payload}}}"#
        );
        assert!(is_relayed_candidate(&relayed));
        assert_eq!(relay_stamp(&relayed), Some((42, 123456)));
        assert_eq!(list_len(r#"{"cmd":"clu","list":[{"sId":"a","state":1},{"sId":"b","state":2}]}"#), 2);
    }
}
