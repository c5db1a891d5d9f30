//! The protocol's happy paths over real sockets.

use simd_json::OwnedValue;
use simd_json::prelude::*;

use crate::harness::*;

#[test]
fn registration_replies_and_lists_every_client_in_order() {
    let server = Server::start();
    let mut alice = server.register("alice");
    alice.wait_for_list(|list| list == [("alice".to_owned(), 1)]);
    let mut bob = server.register("bob");
    let expected = vec![("alice".to_owned(), 1), ("bob".to_owned(), 1)];
    assert_eq!(bob.wait_for_list(|list| list.len() == 2), expected);
    assert_eq!(alice.wait_for_list(|list| list.len() == 2), expected);
}

#[test]
fn a_full_call_is_relayed_with_state_updates() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    alice.send(r#"{"cmd":"session","opponentId":"bob"}"#);
    let session = alice.expect("session");
    let sid = session.get_str("sessionId").expect("sessionId").to_owned();
    assert_eq!(sid.len(), 16);
    let ssu = alice.expect("ssu");
    assert_eq!((ssu.get_str("sessionId"), ssu.get_u64("state")), (Some(sid.as_str()), Some(1)));
    let ssu = bob.expect("ssu");
    assert_eq!((ssu.get_str("sessionId"), ssu.get_u64("state")), (Some(sid.as_str()), Some(1)));

    alice.send(&format!(r#"{{"cmd":"call","sessionId":"{sid}","offer":{{"type":"offer","sdp":"v=0\r\n"}},"opponentId":"mallory","x":1}}"#));
    let call = bob.expect("call");
    assert_eq!(call.get_str("opponentId"), Some("alice"));
    assert_eq!(call.get("offer").and_then(|o| o.get_str("sdp")), Some("v=0\r\n"));
    assert!(call.get("x").is_none());
    assert_eq!(bob.expect("ssu").get_u64("state"), Some(2));
    assert_eq!(alice.expect("ssu").get_u64("state"), Some(2));

    bob.send(&format!(r#"{{"cmd":"accept","sessionId":"{sid}","answer":{{"type":"answer"}}}}"#));
    assert_eq!(alice.expect("accept").get_str("opponentId"), Some("bob"));
    assert_eq!(alice.expect("ssu").get_u64("state"), Some(3));
    assert_eq!(bob.expect("ssu").get_u64("state"), Some(3));

    bob.send(&format!(r#"{{"cmd":"icecandidate","sessionId":"{sid}","icecandidate":{{"candidate":"c1"}}}}"#));
    let ice = alice.expect("icecandidate");
    assert_eq!(ice.get("icecandidate").and_then(|c| c.get_str("candidate")), Some("c1"));
    alice.send(&format!(r#"{{"cmd":"icecandidate","sessionId":"{sid}","icecandidate":null}}"#));
    assert!(bob.expect("icecandidate").get("icecandidate").is_some_and(|c| c.is_null()));

    alice.send(&format!(r#"{{"cmd":"stop","sessionId":"{sid}"}}"#));
    assert_eq!(bob.expect("stop").get_str("opponentId"), Some("alice"));
    assert_eq!(bob.expect("ssu").get_u64("state"), Some(4));
    assert_eq!(alice.expect("ssu").get_u64("state"), Some(4));
    // Both are back in WAIT and get the list again.
    let both_waiting = |list: &[(String, u64)]| list.iter().all(|(_, state)| *state == 1);
    alice.wait_for_list(both_waiting);
    bob.wait_for_list(both_waiting);
    alice.send(&format!(r#"{{"cmd":"stop","sessionId":"{sid}"}}"#));
    alice.expect_error(9204);
}

/// Opens a session from `caller` (already registered) to `callee_sid`; both `ssu 1` are
/// consumed. Returns the session id.
fn open_session(caller: &mut Client, callee: &mut Client, callee_sid: &str) -> String {
    caller.send(&format!(r#"{{"cmd":"session","opponentId":{}}}"#, json_string(callee_sid)));
    let session = caller.expect("session");
    let id = session.get_str("sessionId").expect("sessionId").to_owned();
    for client in [caller, callee] {
        let ssu = client.expect("ssu");
        assert_eq!((ssu.get_str("sessionId"), ssu.get_u64("state")), (Some(id.as_str()), Some(1)), "{ssu:?}");
    }
    id
}

fn field_count(message: &OwnedValue) -> usize {
    message.as_object().map_or(0, |object| object.len())
}

fn expect_ssu(client: &mut Client, session_id: &str, state: u64) {
    let ssu = client.recv_skip_clu();
    assert_eq!(ssu.get_str("cmd"), Some("ssu"), "{ssu:?}");
    assert_eq!((ssu.get_str("sessionId"), ssu.get_u64("state")), (Some(session_id), Some(state)), "{ssu:?}");
    assert_eq!(field_count(&ssu), 3, "{ssu:?}");
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(sid, state)| ((*sid).to_owned(), *state)).collect()
}

#[test]
fn a_reject_after_a_call_closes_the_session_for_both() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    let sid = open_session(&mut alice, &mut bob, "bob");
    alice.send(&format!(r#"{{"cmd":"call","sessionId":"{sid}","offer":{{"sdp":"o"}}}}"#));
    assert_eq!(bob.expect("call").get_str("opponentId"), Some("alice"));
    expect_ssu(&mut bob, &sid, 2);
    expect_ssu(&mut alice, &sid, 2);

    bob.send(&format!(r#"{{"cmd":"reject","sessionId":"{sid}","opponentId":"mallory","why":"busy"}}"#));
    let reject = alice.recv();
    assert_eq!(reject.get_str("cmd"), Some("reject"), "{reject:?}");
    assert_eq!(reject.get_str("sessionId"), Some(sid.as_str()), "{reject:?}");
    assert_eq!(reject.get_str("opponentId"), Some("bob"), "{reject:?}");
    assert_eq!(field_count(&reject), 3, "exactly cmd, sessionId, opponentId: {reject:?}");
    // ssu 4 follows the reject at once, and the rejecter gets only the ssu.
    let ssu = alice.recv();
    assert_eq!((ssu.get_str("cmd"), ssu.get_u64("state")), (Some("ssu"), Some(4)), "{ssu:?}");
    assert_eq!(ssu.get_str("sessionId"), Some(sid.as_str()));
    expect_ssu(&mut bob, &sid, 4);

    let both_waiting = pairs(&[("alice", 1), ("bob", 1)]);
    assert_eq!(alice.wait_for_list(|list| list == both_waiting), both_waiting);
    assert_eq!(bob.wait_for_list(|list| list == both_waiting), both_waiting);
    bob.send(&format!(r#"{{"cmd":"reject","sessionId":"{sid}"}}"#));
    bob.expect_error(9204);
    // Both can start over.
    open_session(&mut bob, &mut alice, "alice");
}

/// JSON equality with numbers compared by value (`1.0` and `1` are the same number).
fn json_equivalent(a: &OwnedValue, b: &OwnedValue) -> bool {
    if let (Some(x), Some(y)) = (a.as_array(), b.as_array()) {
        return x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equivalent(x, y));
    }
    if let (Some(x), Some(y)) = (a.as_object(), b.as_object()) {
        return x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equivalent(v, w)));
    }
    if a.is_number() && b.is_number() {
        return a.as_f64() == b.as_f64();
    }
    a == b
}

fn parse(text: &str) -> OwnedValue {
    simd_json::to_owned_value(&mut text.as_bytes().to_vec()).expect("valid JSON")
}

#[test]
fn notify_relays_data_of_any_json_type_unchanged() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    for data in [
        r#"{"a":[1,2,{"b":null}],"c":" d ","e":{},"n":-0.5}"#,
        r#"[1,"two",3.5,true,false,null,[],{"k":"v"}]"#,
        r#""  h\u00e9llo \ud83d\ude00 \"q\" \\ \n\t\u0000  ""#,
        r#"42"#,
        r#"-7.25"#,
        r#"1e300"#,
        r#"null"#,
        r#"true"#,
    ] {
        alice.send(&format!(r#"{{"cmd":"notify","opponentId":"bob","type":"ring","data":{data}}}"#));
        let notify = bob.expect("notify");
        assert_eq!(notify.get_str("opponentId"), Some("alice"), "{notify:?}");
        assert_eq!(notify.get_str("type"), Some("ring"), "{notify:?}");
        assert_eq!(field_count(&notify), 4, "{notify:?}");
        let received = notify.get("data").unwrap_or_else(|| panic!("data {data} missing: {notify:?}"));
        assert!(json_equivalent(received, &parse(data)), "sent {data}, received {received:?}");
    }
}

#[test]
fn notify_without_data_has_no_data_field_and_checks_its_target() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    alice.send(r#"{"cmd":"notify","opponentId":" bob ","type":" ring "}"#);
    let notify = bob.expect("notify");
    assert_eq!(notify.get_str("opponentId"), Some("alice"), "{notify:?}");
    assert_eq!(notify.get_str("type"), Some("ring"), "{notify:?}");
    assert!(notify.get("data").is_none(), "{notify:?}");
    assert_eq!(field_count(&notify), 3, "{notify:?}");

    alice.send(r#"{"cmd":"notify","opponentId":"alice","type":"ring"}"#);
    alice.expect_error(9300);
    alice.send(r#"{"cmd":"notify","opponentId":"nobody","type":"ring","data":1}"#);
    alice.expect_error(9301);
    // Errors go to the sender alone.
    bob.expect_quiet(std::time::Duration::from_millis(100));
}

#[test]
fn notify_works_while_calling() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    let mut carol = server.register("carol");
    let sid = open_session(&mut alice, &mut bob, "bob");
    // CALLING to CALLING, CALLING to WAIT, WAIT to CALLING.
    alice.send(r#"{"cmd":"notify","opponentId":"bob","type":"t1","data":{"x":1}}"#);
    let n = bob.recv();
    assert_eq!(
        (n.get_str("cmd"), n.get_str("opponentId"), n.get_str("type")),
        (Some("notify"), Some("alice"), Some("t1"))
    );
    bob.send(r#"{"cmd":"notify","opponentId":"carol","type":"t2"}"#);
    let n = carol.expect("notify");
    assert_eq!((n.get_str("opponentId"), n.get_str("type")), (Some("bob"), Some("t2")));
    carol.send(r#"{"cmd":"notify","opponentId":"alice","type":"t3"}"#);
    let n = alice.recv();
    assert_eq!(
        (n.get_str("cmd"), n.get_str("opponentId"), n.get_str("type")),
        (Some("notify"), Some("carol"), Some("t3"))
    );
    // The session is untouched: still NEW, so a call moves it to PENDING.
    alice.send(&format!(r#"{{"cmd":"call","sessionId":"{sid}","offer":{{}}}}"#));
    bob.expect("call");
    expect_ssu(&mut bob, &sid, 2);
    expect_ssu(&mut alice, &sid, 2);
}

#[test]
fn a_non_member_cannot_touch_a_session_and_cannot_tell_it_exists() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    let mut carol = server.register("carol");
    let sid = open_session(&mut alice, &mut bob, "bob");
    let fake_like_real = if sid == "0123456789abcdef" { "fedcba9876543210" } else { "0123456789abcdef" };
    for (cmd, extra) in [
        ("call", r#","offer":{"sdp":"x"}"#),
        ("accept", r#","answer":{"sdp":"x"}"#),
        ("icecandidate", r#","icecandidate":{"candidate":"x"}"#),
        ("reject", ""),
        ("stop", ""),
    ] {
        let mut answers = Vec::new();
        for session_id in [sid.as_str(), fake_like_real, "made-up"] {
            carol.send(&format!(r#"{{"cmd":"{cmd}","sessionId":"{session_id}"{extra}}}"#));
            let error = carol.recv_skip_clu();
            assert_eq!(error.get_str("cmd"), Some("error"), "{cmd} {session_id}: {error:?}");
            assert_eq!(error.get_u64("code"), Some(9204), "{cmd} {session_id}: {error:?}");
            answers.push(error);
        }
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "{cmd}: the real session is told apart: {answers:?}"
        );
    }
    // Nothing reached the members, and the session is as it was: NEW, so a call makes it PENDING.
    alice.expect_nothing(std::time::Duration::from_millis(100));
    bob.expect_nothing(std::time::Duration::from_millis(100));
    alice.send(&format!(r#"{{"cmd":"call","sessionId":"{sid}","offer":{{"sdp":"real"}}}}"#));
    let call = bob.recv();
    assert_eq!((call.get_str("cmd"), call.get_str("opponentId")), (Some("call"), Some("alice")), "{call:?}");
    expect_ssu(&mut bob, &sid, 2);
    expect_ssu(&mut alice, &sid, 2);
}

#[test]
fn top_level_fields_are_normalised_over_the_wire() {
    let server = Server::start();
    let mut number = server.connect();
    number.send(r#"{"cmd":" sId ","sId":42}"#);
    let reply = number.recv_skip_clu();
    assert_eq!(reply.get_str("cmd"), Some("sId"), "{reply:?}");
    assert_eq!(reply.get_str("sId"), Some("42"), "the sId is the string \"42\": {reply:?}");
    assert_eq!(field_count(&reply), 2, "{reply:?}");
    number.wait_for_list(|list| list == pairs(&[("42", 1)]));
    // Others reach it by the same name, as a string or a number.
    let mut bob = server.register("bob");
    bob.send(r#"{"cmd":"notify","opponentId":42,"type":"t"}"#);
    assert_eq!(number.expect("notify").get_str("opponentId"), Some("bob"));
    bob.send(r#"{"cmd":"notify","opponentId":"42","type":"t"}"#);
    assert_eq!(number.expect("notify").get_str("opponentId"), Some("bob"));
    let mut again = server.connect();
    again.send(r#"{"cmd":"sId","sId":"\t42 "}"#);
    again.expect_error(9102);
}

#[test]
fn session_ids_are_64_bit_and_never_repeat() {
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    let mut ids = Vec::new();
    for _ in 0..24 {
        let id = open_session(&mut alice, &mut bob, "bob");
        alice.send(&format!(r#"{{"cmd":"stop","sessionId":"{id}"}}"#));
        bob.expect("stop");
        expect_ssu(&mut bob, &id, 4);
        expect_ssu(&mut alice, &id, 4);
        ids.push(id);
    }
    for id in &ids {
        assert!(id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "not 64 bits of hex: {id:?}");
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a session id repeated: {ids:?}");
    // Random, not counted: every one of the 16 leading digits takes several values.
    for position in 0..16 {
        let mut digits: Vec<u8> = ids.iter().map(|id| id.as_bytes()[position]).collect();
        digits.sort();
        digits.dedup();
        assert!(digits.len() > 1, "digit {position} never changes: {ids:?}");
    }
}

#[test]
fn clu_goes_to_wait_clients_only() {
    use std::time::Duration;
    let server = Server::start();
    let mut alice = server.register("alice");
    let mut bob = server.register("bob");
    let sid = open_session(&mut alice, &mut bob, "bob");

    let mut carol = server.register("carol");
    // carol's first list is already the full, current state.
    let first = carol.wait_for_list(|_| true);
    assert_eq!(first, pairs(&[("alice", 2), ("bob", 2), ("carol", 1)]));
    // The round that reached carol skipped the CALLING clients (the 250 ms bound is long past
    // at the end of these windows).
    alice.expect_nothing(Duration::from_millis(300));
    bob.expect_nothing(Duration::from_millis(50));

    // Back in WAIT, both get the current list.
    bob.send(&format!(r#"{{"cmd":"stop","sessionId":"{sid}"}}"#));
    assert_eq!(alice.expect("stop").get_str("opponentId"), Some("bob"));
    expect_ssu(&mut alice, &sid, 4);
    expect_ssu(&mut bob, &sid, 4);
    let all_waiting = pairs(&[("alice", 1), ("bob", 1), ("carol", 1)]);
    assert_eq!(alice.wait_for_list(|list| list == all_waiting), all_waiting);
    assert_eq!(bob.wait_for_list(|list| list == all_waiting), all_waiting);
    assert_eq!(carol.wait_for_list(|list| list == all_waiting), all_waiting);
}

#[test]
fn a_storm_of_registrations_is_coalesced_into_few_lists() {
    use std::time::Duration;
    let server = Server::start();
    let mut observer = server.register("observer");
    observer.wait_for_list(|list| list == pairs(&[("observer", 1)]));

    let names: Vec<String> = (0..50).map(|i| format!("client{i:02}")).collect();
    // Registered one after the other (each reply awaited), so the order is known.
    let clients: Vec<Client> = names.iter().map(|name| server.register(name)).collect();
    let last_change = std::time::Instant::now();

    let mut expected = vec![("observer".to_owned(), 1)];
    expected.extend(names.iter().map(|name| (name.clone(), 1)));
    let seen = std::cell::Cell::new(0);
    let final_list = observer.wait_for_list(|list| {
        seen.set(seen.get() + 1);
        list.len() == expected.len()
    });
    let mut lists = seen.get();
    let delay = last_change.elapsed();
    assert_eq!(final_list, expected, "every client, in registration order");
    // PROTOCOL.md: the final state arrives within 250 ms of the last change (plus slack for
    // a loaded test machine).
    assert!(delay < Duration::from_millis(400), "the final list came {delay:?} after the last change");
    // Nothing after the final list but (at most) repeats of it.
    observer.set_timeout(Duration::from_millis(400));
    loop {
        match observer.ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let message = parse(&text);
                assert_eq!(message.get_str("cmd"), Some("clu"), "{message:?}");
                assert_eq!(list_of(&message), expected);
                lists += 1;
            }
            Ok(tungstenite::Message::Ping(_)) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(lists <= 10, "{lists} clu messages for 50 registrations");
    drop(clients);
}
