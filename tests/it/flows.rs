//! The protocol's happy paths over real sockets.

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
