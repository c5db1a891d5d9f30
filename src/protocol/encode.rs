//! Server messages as JSON text. Every function appends one complete message to `out`;
//! callers pass sIds that are already JSON strings (quoted and escaped once, when the client
//! registered), so composing a relayed message is plain concatenation.

use super::json::json_string;
use super::{ClientState, EscapedJson, RawJson, Relay, SessionId, SessionState};

/// `{"cmd":"sId","sId":…}`, the reply to a registration.
pub fn registered(out: &mut Vec<u8>, sid: &EscapedJson) {
    out.extend_from_slice(br#"{"cmd":"sId","sId":"#);
    out.extend_from_slice(sid.as_str().as_bytes());
    out.push(b'}');
}

/// `{"cmd":"sId","sId":…,"resumeToken":…}`, the reply to a registration that opted in to
/// resume.
pub fn registered_resumable(out: &mut Vec<u8>, sid: &EscapedJson, token: &str) {
    with_token(out, br#"{"cmd":"sId","sId":"#, sid, token);
}

/// `{"cmd":"resume","sId":…,"resumeToken":…}`, the reply to a resume that succeeded.
pub fn resumed(out: &mut Vec<u8>, sid: &EscapedJson, token: &str) {
    with_token(out, br#"{"cmd":"resume","sId":"#, sid, token);
}

/// A reply naming an sId and carrying a resume token. The token is URL-safe base64:
/// nothing in it needs escaping.
fn with_token(out: &mut Vec<u8>, head: &[u8], sid: &EscapedJson, token: &str) {
    out.extend_from_slice(head);
    out.extend_from_slice(sid.as_str().as_bytes());
    out.extend_from_slice(br#","resumeToken":""#);
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(br#""}"#);
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
    from: &EscapedJson,
    payload: Option<RawJson<'_>>,
) {
    out.extend_from_slice(br#"{"cmd":""#);
    out.extend_from_slice(action.cmd().as_bytes());
    out.extend_from_slice(br#"","sessionId":"#);
    session_id(out, session);
    out.extend_from_slice(br#","opponentId":"#);
    out.extend_from_slice(from.as_str().as_bytes());
    if let (Some(field), Some(payload)) = (action.payload_field(), payload) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(payload.as_bytes());
    }
    out.push(b'}');
}

/// `{"cmd":"notify","opponentId":…,"type":…}` with `data` when the sender gave one.
pub fn notification(out: &mut Vec<u8>, from: &EscapedJson, notify_type: &str, data: Option<RawJson<'_>>) {
    out.extend_from_slice(br#"{"cmd":"notify","opponentId":"#);
    out.extend_from_slice(from.as_str().as_bytes());
    out.extend_from_slice(br#","type":"#);
    json_string(out, notify_type);
    if let Some(data) = data {
        out.extend_from_slice(br#","data":"#);
        out.extend_from_slice(data.as_bytes());
    }
    out.push(b'}');
}

/// `{"cmd":"leave","sessionId":…,"opponentId":…}`.
pub fn left(out: &mut Vec<u8>, session: SessionId, gone: &EscapedJson) {
    out.extend_from_slice(br#"{"cmd":"leave","sessionId":"#);
    session_id(out, session);
    out.extend_from_slice(br#","opponentId":"#);
    out.extend_from_slice(gone.as_str().as_bytes());
    out.push(b'}');
}

/// `{"cmd":"clu","list":[{"sId":…,"state":N},…]}` from (sId, state) pairs.
pub fn client_list<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a EscapedJson, ClientState)>) {
    out.extend_from_slice(br#"{"cmd":"clu","list":["#);
    for (index, (sid, state)) in entries.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"sId":"#);
        out.extend_from_slice(sid.as_str().as_bytes());
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

    fn raw(bytes: &[u8]) -> Option<RawJson<'_>> {
        Some(RawJson::validate(bytes).expect("the test's payload is JSON"))
    }

    fn quoted(text: &str) -> EscapedJson {
        EscapedJson::escape(text)
    }

    #[test]
    fn relayed_messages_splice_the_payload() {
        let mut out = Vec::new();
        let session = SessionId::new(0xabc);
        relayed(&mut out, Relay::Call, session, &quoted("al\"ice"), raw(br#"{"sdp":"v=0\r\n"}"#));
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
        notification(&mut out, &alice, "ri\"ng", raw(b"[null]"));
        assert_eq!(as_json(&out).get_str("type"), Some("ri\"ng"));
        out.clear();
        left(&mut out, session, &alice);
        assert_eq!(as_json(&out).get_str("opponentId"), Some("alice"));
        out.clear();
        client_list(
            &mut out,
            [(&alice, ClientState::Wait), (&quoted("b"), ClientState::Calling)].into_iter(),
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
