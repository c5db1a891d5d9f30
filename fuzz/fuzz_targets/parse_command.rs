//! Arbitrary bytes → `Parser::parse` → `Request::command`.
//!
//! Must never panic. Beyond that, for every input that yields a command:
//! * ids are non-empty, trimmed and at most `MAX_ID_BYTES`; an sId has no control character;
//! * the relay payload (`offer`/`answer`/`icecandidate`) and notify `data` are sub-slices of
//!   the input itself (the raw bytes are spliced into relayed messages), are one complete JSON
//!   value by serde_json (an independent parser), and — when serde_json accepts the whole
//!   input — equal the top-level member of that name (last duplicate wins);
//! * string fields equal serde_json's reading of the member, trimmed;
//! * a parser reused across inputs (as the event loop reuses one) answers exactly as a fresh
//!   one does.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use signaling_server::protocol::{Command, CommandKind, MAX_ID_BYTES, Parser, Relay};

thread_local! {
    /// Warm buffers, as in the server; a reused parser must behave like a fresh one.
    static REUSED: RefCell<Parser> = RefCell::new(Parser::default());
}

fuzz_target!(|data: &[u8]| {
    let mut fresh = Parser::default();
    let request = fresh.parse(data);
    let kind = request.as_ref().map(|r| r.kind).map_err(|&e| e);
    let command = request.as_ref().map_err(|&e| e).and_then(|r| r.command());

    REUSED.with_borrow_mut(|reused| {
        let again = reused.parse(data);
        assert_eq!(again.as_ref().map(|r| r.kind).map_err(|&e| e), kind, "reused parser: kind differs");
        let again_command = again.as_ref().map_err(|&e| e).and_then(|r| r.command());
        assert_eq!(again_command, command, "reused parser: command differs");
    });

    if let Ok(kind) = kind {
        // Checks 1-3 passed: the input is JSON with a known `cmd`. serde_json may still refuse
        // it (see `whole_input`), but if it accepts it, `cmd` must name this kind.
        if let Some(Value::String(cmd)) = whole_input(data).as_ref().and_then(|o| o.get("cmd")) {
            assert_eq!(cmd.trim(), kind.name(), "cmd read differently by serde_json");
        }
    }
    let Ok(command) = command else { return };
    let Ok(kind) = kind else { unreachable!("a command without a kind") };
    let object = whole_input(data);
    let field = |name: &str| object.as_ref().and_then(|o| o.get(name));

    match command {
        Command::Register { sid, .. } => {
            assert_eq!(kind, CommandKind::Register);
            check_id(sid, field("sId"));
            assert!(!sid.chars().any(char::is_control), "control character in sId {sid:?}");
        }
        Command::Resume { sid, token, received: _ } => {
            assert_eq!(kind, CommandKind::Resume);
            check_id(sid, field("sId"));
            assert!(!token.is_empty(), "an empty token accepted");
        }
        Command::Session { opponent_id } => {
            assert_eq!(kind, CommandKind::Session);
            check_id(opponent_id, field("opponentId"));
        }
        Command::Relay { action, session_id, payload } => {
            let expected = match action {
                Relay::Call => CommandKind::Call,
                Relay::Accept => CommandKind::Accept,
                Relay::IceCandidate => CommandKind::IceCandidate,
                Relay::Reject => CommandKind::Reject,
                Relay::Stop => CommandKind::Stop,
            };
            assert_eq!(kind, expected);
            check_id(session_id, field("sessionId"));
            match (action.payload_field(), payload) {
                (Some(name), Some(payload)) => check_raw(data, payload.as_bytes(), field(name)),
                (None, None) => {}
                (name, payload) => panic!("{action:?}: field {name:?} but payload {payload:?}"),
            }
        }
        Command::Notify { opponent_id, notify_type, data: notify_data } => {
            assert_eq!(kind, CommandKind::Notify);
            check_id(opponent_id, field("opponentId"));
            assert!(!notify_type.is_empty() && notify_type.trim() == notify_type, "type {notify_type:?}");
            check_text(notify_type, field("type"));
            if let Some(raw) = notify_data {
                check_raw(data, raw.as_bytes(), field("data"));
            }
        }
    }
});

/// The input as serde_json reads it, if it reads it as an object (duplicates: last wins).
fn whole_input(data: &[u8]) -> Option<serde_json::Map<String, Value>> {
    match parse_value(data)? {
        Value::Object(object) => Some(object),
        _ => None,
    }
}

fn parse_value(bytes: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // simd-json has no nesting limit of its own; serde_json's default of 128 would flag
    // deep but valid payloads.
    de.disable_recursion_limit();
    let value = serde::Deserialize::deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(value)
}

fn check_id(id: &str, member: Option<&Value>) {
    assert!(!id.is_empty() && id.len() <= MAX_ID_BYTES, "id {id:?} empty or too long");
    assert_eq!(id.trim(), id, "id not trimmed");
    check_text(id, member);
}

/// A string member reads as the same text, trimmed. (Numbers are normalised the JavaScript
/// way, which serde_json does not do: not compared.)
fn check_text(text: &str, member: Option<&Value>) {
    if let Some(Value::String(member)) = member {
        assert_eq!(member.trim(), text, "string member read differently by serde_json");
    }
}

/// A raw nested value must be a slice of the input, one JSON value on its own, and (when
/// serde_json read the whole input) the very member it names.
fn check_raw(input: &[u8], raw: &[u8], member: Option<&Value>) {
    let (start, end) = (input.as_ptr() as usize, input.as_ptr() as usize + input.len());
    let at = raw.as_ptr() as usize;
    assert!(at >= start && at + raw.len() <= end, "payload is not a slice of the input");
    assert!(!raw.is_empty(), "empty payload");
    assert!(
        !raw[0].is_ascii_whitespace() && !raw[raw.len() - 1].is_ascii_whitespace(),
        "payload {:?} has surrounding white space",
        String::from_utf8_lossy(raw)
    );
    let Some(value) = parse_value(raw) else {
        panic!("payload is not valid JSON: {:?}", String::from_utf8_lossy(raw));
    };
    if let Some(member) = member {
        assert_eq!(&value, member, "payload is not the member's value");
    }
}
