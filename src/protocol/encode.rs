//! Server messages as JSON text. Every function appends one complete message to `out`;
//! callers pass sIds that are already JSON strings (quoted and escaped once, when the client
//! registered), so composing a relayed message is plain concatenation.

use super::json::json_string;
use super::{ClientState, EscapedJson, Presence, RawJson, Relay, SessionId, SessionState};

/// `{"cmd":"sId","sId":…}`, the reply to a registration: with `presence` echoed when the
/// client sent it, and `resumeToken` when it opted in to resume.
pub fn registered(out: &mut Vec<u8>, sid: &EscapedJson, presence: Option<Presence>, token: Option<&str>) {
    out.extend_from_slice(br#"{"cmd":"sId","sId":"#);
    out.extend_from_slice(sid.as_str().as_bytes());
    if let Some(mode) = presence {
        out.extend_from_slice(br#","presence":""#);
        out.extend_from_slice(mode.name().as_bytes());
        out.push(b'"');
    }
    match token {
        Some(token) => token_tail(out, token),
        None => out.push(b'}'),
    }
}

/// `{"cmd":"resume","sId":…,"resumeToken":…}`, the reply to a resume that succeeded.
pub fn resumed(out: &mut Vec<u8>, sid: &EscapedJson, token: &str) {
    with_token(out, br#"{"cmd":"resume","sId":"#, sid, token);
}

/// A reply naming an sId and carrying a resume token.
fn with_token(out: &mut Vec<u8>, head: &[u8], sid: &EscapedJson, token: &str) {
    out.extend_from_slice(head);
    out.extend_from_slice(sid.as_str().as_bytes());
    token_tail(out, token);
}

/// `,"resumeToken":"…"}`: the token is URL-safe base64, nothing in it needs escaping.
fn token_tail(out: &mut Vec<u8>, token: &str) {
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

/// `{"cmd":"clu","list":[{"sId":…,"state":N},…]}` from (sId, state) pairs; with `rev`
/// (delta presence) `{"cmd":"clu","rev":R,"list":[…]}`.
pub fn client_list<'a>(
    out: &mut Vec<u8>,
    rev: Option<u64>,
    entries: impl Iterator<Item = (&'a EscapedJson, ClientState)>,
) {
    out.extend_from_slice(br#"{"cmd":"clu","#);
    if let Some(rev) = rev {
        out.extend_from_slice(br#""rev":"#);
        push_number(out, rev);
        out.push(b',');
    }
    out.extend_from_slice(br#""list":["#);
    for (index, (sid, state)) in entries.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        list_entry(out, sid, state.code());
    }
    out.extend_from_slice(b"]}");
}

/// The bytes [`client_list`] writes for `entries` entries whose sIds (as JSON) take
/// `sid_bytes` in all: so the core can weigh a snapshot without composing it.
pub fn client_list_len(rev: Option<u64>, entries: usize, sid_bytes: usize) -> usize {
    let head = br#"{"cmd":"clu","list":[]}"#.len();
    let rev = rev.map_or(0, |rev| br#""rev":,"#.len() + decimal_len(rev));
    head + rev + entries * LIST_ENTRY_OVERHEAD + sid_bytes + entries.saturating_sub(1)
}

/// `{"sId":,"state":N}` around the sId: every state is one digit.
const LIST_ENTRY_OVERHEAD: usize = br#"{"sId":,"state":1}"#.len();

/// `{"cmd":"cld","from":R1,"rev":R2,"changes":[{"sId":…,"state":N},…]}`; state 0 removes.
pub fn client_list_changes<'a>(
    out: &mut Vec<u8>,
    from: u64,
    rev: u64,
    changes: impl Iterator<Item = (&'a EscapedJson, u8)>,
) {
    out.extend_from_slice(br#"{"cmd":"cld","from":"#);
    push_number(out, from);
    out.extend_from_slice(br#","rev":"#);
    push_number(out, rev);
    out.extend_from_slice(br#","changes":["#);
    for (index, (sid, state)) in changes.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        list_entry(out, sid, state);
    }
    out.extend_from_slice(b"]}");
}

fn list_entry(out: &mut Vec<u8>, sid: &EscapedJson, state: u8) {
    out.extend_from_slice(br#"{"sId":"#);
    out.extend_from_slice(sid.as_str().as_bytes());
    out.extend_from_slice(br#","state":"#);
    push_small_number(out, state);
    out.push(b'}');
}

fn push_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
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
        registered(&mut out, &alice, None, None);
        assert_eq!(out, br#"{"cmd":"sId","sId":"alice"}"#);
        out.clear();
        registered(&mut out, &alice, Some(Presence::Delta), Some("T0k"));
        assert_eq!(out, br#"{"cmd":"sId","sId":"alice","presence":"delta","resumeToken":"T0k"}"#);
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
        let b = quoted("b");
        let entries = [(&alice, ClientState::Wait), (&b, ClientState::Calling)];
        client_list(&mut out, None, entries.into_iter());
        assert_eq!(out, br#"{"cmd":"clu","list":[{"sId":"alice","state":1},{"sId":"b","state":2}]}"#);
        assert_eq!(out.len(), client_list_len(None, 2, alice.as_str().len() + b.as_str().len()));
        out.clear();
        client_list(&mut out, Some(1234), entries.into_iter());
        assert_eq!(
            out,
            br#"{"cmd":"clu","rev":1234,"list":[{"sId":"alice","state":1},{"sId":"b","state":2}]}"#
        );
        assert_eq!(out.len(), client_list_len(Some(1234), 2, alice.as_str().len() + b.as_str().len()));
        for rev in [None, Some(0), Some(9), Some(10), Some(u64::MAX)] {
            out.clear();
            client_list(&mut out, rev, std::iter::empty());
            assert_eq!(out.len(), client_list_len(rev, 0, 0), "{rev:?}");
        }
        out.clear();
        client_list_changes(&mut out, 7, 10, [(&alice, 0), (&b, 1)].into_iter());
        assert_eq!(
            out,
            br#"{"cmd":"cld","from":7,"rev":10,"changes":[{"sId":"alice","state":0},{"sId":"b","state":1}]}"#
        );
        out.clear();
        client_list_changes(&mut out, u64::MAX - 1, u64::MAX, std::iter::empty());
        assert_eq!(as_json(&out).get_u64("rev"), Some(u64::MAX));
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
