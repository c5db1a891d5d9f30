//! Server messages as JSON text. Every function appends one complete message to `out`;
//! callers pass ids that are already JSON strings (quoted and escaped once, when the client
//! registered), so composing a relayed message is plain concatenation.

use super::{ClientState, Relay, SessionId, SessionState};

/// Appends `text` as a JSON string literal.
pub fn json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    // Most strings (ids, session ids) need no escaping: one pass the compiler vectorises.
    if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut clean_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..at]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        clean_from = at + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

/// `{"cmd":"sId","sId":…}`, the reply to a registration.
pub fn registered(out: &mut Vec<u8>, sid_json: &str) {
    out.extend_from_slice(br#"{"cmd":"sId","sId":"#);
    out.extend_from_slice(sid_json.as_bytes());
    out.push(b'}');
}

/// `{"cmd":"session","sessionId":…}`, the reply to the client that opened a session.
pub fn session_opened(out: &mut Vec<u8>, session: SessionId) {
    out.extend_from_slice(br#"{"cmd":"session","sessionId":"#);
    session_id(out, session);
    out.push(b'}');
}

/// `{"cmd":"ssu","sessionId":…,"state":N}`.
pub fn session_state(out: &mut Vec<u8>, session: SessionId, state: SessionState) {
    out.extend_from_slice(br#"{"cmd":"ssu","sessionId":"#);
    session_id(out, session);
    out.extend_from_slice(br#","state":"#);
    push_small_number(out, state.code());
    out.push(b'}');
}

/// A relayed session command, carrying exactly the fields PROTOCOL.md lists.
pub fn relayed(
    out: &mut Vec<u8>,
    action: Relay,
    session: SessionId,
    from_json: &str,
    payload: Option<&[u8]>,
) {
    out.extend_from_slice(br#"{"cmd":""#);
    out.extend_from_slice(action.cmd().as_bytes());
    out.extend_from_slice(br#"","sessionId":"#);
    session_id(out, session);
    out.extend_from_slice(br#","opponentId":"#);
    out.extend_from_slice(from_json.as_bytes());
    if let (Some(field), Some(payload)) = (action.payload_field(), payload) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(payload);
    }
    out.push(b'}');
}

/// `{"cmd":"notify","opponentId":…,"type":…}` with `data` when the sender gave one.
pub fn notification(out: &mut Vec<u8>, from_json: &str, notify_type: &str, data: Option<&[u8]>) {
    out.extend_from_slice(br#"{"cmd":"notify","opponentId":"#);
    out.extend_from_slice(from_json.as_bytes());
    out.extend_from_slice(br#","type":"#);
    json_string(out, notify_type);
    if let Some(data) = data {
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(data);
    }
    out.push(b'}');
}

/// `{"cmd":"leave","sessionId":…,"opponentId":…}`.
pub fn left(out: &mut Vec<u8>, session: SessionId, gone_json: &str) {
    out.extend_from_slice(br#"{"cmd":"leave","sessionId":"#);
    session_id(out, session);
    out.extend_from_slice(br#","opponentId":"#);
    out.extend_from_slice(gone_json.as_bytes());
    out.push(b'}');
}

/// `{"cmd":"clu","list":[{"sId":…,"state":N},…]}` from (sId as JSON, state) pairs.
pub fn client_list<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a str, ClientState)>) {
    out.extend_from_slice(br#"{"cmd":"clu","list":["#);
    for (index, (sid_json, state)) in entries.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"sId":"#);
        out.extend_from_slice(sid_json.as_bytes());
        out.extend_from_slice(br#","state":"#);
        push_small_number(out, state.code());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// A session id as a JSON string: hex digits never need escaping.
fn session_id(out: &mut Vec<u8>, session: SessionId) {
    out.push(b'"');
    out.extend_from_slice(&session.hex_digits());
    out.push(b'"');
}

fn push_small_number(out: &mut Vec<u8>, n: u8) {
    if n >= 100 {
        out.push(b'0' + n / 100);
    }
    if n >= 10 {
        out.push(b'0' + n / 10 % 10);
    }
    out.push(b'0' + n % 10);
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    fn as_json(bytes: &[u8]) -> simd_json::OwnedValue {
        simd_json::to_owned_value(&mut bytes.to_vec()).expect("encoder output is JSON")
    }

    fn quoted(text: &str) -> String {
        let mut out = Vec::new();
        json_string(&mut out, text);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn strings_round_trip_through_a_json_parser() {
        for text in ["", "alice", "quote\"back\\slash", "\n\r\t\u{8}\u{c}\u{1}\u{1f}", "é漢字🙂", "</script>"]
        {
            let mut out = br#"{"s":"#.to_vec();
            out.extend_from_slice(quoted(text).as_bytes());
            out.push(b'}');
            assert_eq!(as_json(&out).get_str("s"), Some(text));
        }
        assert_eq!(quoted("\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn relayed_messages_splice_the_payload() {
        let mut out = Vec::new();
        let session = SessionId::new(0xabc);
        relayed(&mut out, Relay::Call, session, &quoted("al\"ice"), Some(br#"{"sdp":"v=0\r\n"}"#));
        assert_eq!(
            std::str::from_utf8(&out).expect("utf-8"),
            r#"{"cmd":"call","sessionId":"0000000000000abc","opponentId":"al\"ice","offer":{"sdp":"v=0\r\n"}}"#
        );
        out.clear();
        relayed(&mut out, Relay::Stop, session, &quoted("bob"), None);
        assert_eq!(out, br#"{"cmd":"stop","sessionId":"0000000000000abc","opponentId":"bob"}"#);
    }

    #[test]
    fn every_server_message_is_valid_json() {
        let mut out = Vec::new();
        let alice = quoted("alice");
        registered(&mut out, &alice);
        assert_eq!(as_json(&out).get_str("sId"), Some("alice"));
        out.clear();
        let session = SessionId::new(0xff);
        session_opened(&mut out, session);
        assert_eq!(as_json(&out).get_str("sessionId"), Some("00000000000000ff"));
        out.clear();
        session_state(&mut out, session, SessionState::Closed);
        assert_eq!(as_json(&out).get_u64("state"), Some(4));
        out.clear();
        notification(&mut out, &alice, "ri\"ng", Some(b"[null]"));
        assert_eq!(as_json(&out).get_str("type"), Some("ri\"ng"));
        out.clear();
        left(&mut out, session, &alice);
        assert_eq!(as_json(&out).get_str("opponentId"), Some("alice"));
        out.clear();
        client_list(
            &mut out,
            [(alice.as_str(), ClientState::Wait), ("\"b\"", ClientState::Calling)].into_iter(),
        );
        assert_eq!(out, br#"{"cmd":"clu","list":[{"sId":"alice","state":1},{"sId":"b","state":2}]}"#);
        out.clear();
        client_list(&mut out, std::iter::empty());
        assert_eq!(out, br#"{"cmd":"clu","list":[]}"#);
    }

    #[test]
    fn small_numbers() {
        for n in [0u8, 9, 10, 99, 100, 255] {
            let mut out = Vec::new();
            push_small_number(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
