//! Real-browser end to end: two headless Chromium pages load the demo page (web/index.html)
//! from the real server, register, and call each other through it; the peer connection then
//! runs browser to browser on loopback. One test talks over the data channel, the other sends
//! the fake camera's video both ways.
//!
//! Chromium is driven over the DevTools protocol (cdp.rs) through the page's `window.demo`
//! hooks and query parameters (web/CLIENT.md, "The demo page"): `?name=` registers on load,
//! `autoaccept=1` answers incoming calls, `loopbackOnly=1` forwards only 127.0.0.1 and ::1
//! candidates (Chromium also gathers the LAN address), `video=0|1` chooses chat only or camera.
//!
//! Without Chromium (`apt-get install -y --no-install-recommends chromium` on Debian, or a
//! browser named by `$SIGNALING_CHROMIUM`) each test writes one line to stderr and passes,
//! unless `SIGNALING_REQUIRE_BROWSER=1`, which CI sets after installing it, so a lost install
//! step fails instead of silently skipping.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use simd_json::OwnedValue;
use simd_json::prelude::*;

use crate::cdp::{Browser, Page, find_chromium};
use crate::harness::Server;
use crate::tls_client::{Pki, spki_pin};

/// Bound of every single step inside a page; the failure carries the page's event log.
const PAGE_TIMEOUT_MS: u32 = 20_000;
/// Bound of a whole test's browser work, so a wedged browser cannot hang CI.
const HARNESS_TIMEOUT: Duration = Duration::from_secs(45);

/// The browser to use, or `None` after saying on stderr why the test is skipped.
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(path) = find_chromium() {
        return Some(path);
    }
    let why = "Chromium is not installed (no /usr/lib/chromium/chromium or /usr/bin/chromium; \
               apt-get install -y --no-install-recommends chromium)";
    if std::env::var_os("SIGNALING_REQUIRE_BROWSER").is_some_and(|value| value == "1") {
        panic!("{why}, and SIGNALING_REQUIRE_BROWSER=1 requires it");
    }
    // libtest captures the print macros of passing tests, not writes to the stderr handle.
    let _ = writeln!(std::io::stderr().lock(), "browser::{test} SKIPPED: {why}");
    None
}

/// `body` (a JavaScript expression, may be a promise) wrapped in the page-level timeout. A
/// failure or timeout rejects with the tail of the page's event log (`demo.log`).
fn in_page(body: &str) -> String {
    format!(
        "(() => {{
  const logTail = () => ((window.demo && window.demo.log) || []).slice(-30)
    .map((e) => `\n  ${{e.t}} ms ${{e.event}} ${{e.info}}`).join('');
  const work = (async () => ({body}))();
  const timeout = new Promise((_, reject) =>
    setTimeout(() => reject(new Error('no result within {PAGE_TIMEOUT_MS} ms')), {PAGE_TIMEOUT_MS}));
  return Promise.race([work, timeout]).catch((e) => {{
    throw new Error(`${{(e && e.message) || e}}\\npage log tail: ${{logTail()}}`);
  }});
}})()"
    )
}

/// Runs one script per page concurrently and returns their values in the same order.
fn in_pages<const N: usize>(browser: &mut Browser, scripts: [(&Page, &str); N]) -> [OwnedValue; N] {
    let ids = scripts.map(|(page, body)| (page, browser.start_eval(page, &in_page(body))));
    ids.map(|(page, id)| browser.finish_eval(id).unwrap_or_else(|e| panic!("in {}'s page: {e}", page.label)))
}

/// Opens bob's page (auto-accepting) and alice's from `scheme://` (http or https), each
/// registering through `?name=`, and waits for both registrations. `query` is added to both
/// URLs.
fn alice_and_bob(browser: &mut Browser, server: &Server, scheme: &str, query: &str) -> (Page, Page) {
    let base = format!("{scheme}://{}/?loopbackOnly=1&{query}", server.addr);
    let bob = browser.open("bob", &format!("{base}&name=bob&autoaccept=1"));
    let alice = browser.open("alice", &format!("{base}&name=alice"));
    let [bob_id, alice_id] = in_pages(browser, [(&bob, "demo.ready"), (&alice, "demo.ready")]);
    assert_eq!((alice_id.as_str(), bob_id.as_str()), (Some("alice"), Some("bob")));
    (alice, bob)
}

/// Alice calls bob (who accepts on his own) and both wait until the call's data channel is
/// open and the session ACTIVE: the offer, the answer and candidates went through the server.
/// (`demo.call` resolves when the channel opens; a busy page may run its queued `ssu` 3 a
/// little later, hence the wait on both sides.)
fn call_and_connect(browser: &mut Browser, alice: &Page, bob: &Page, video: bool) {
    let connected = "demo.waitFor((s) => s.call && s.call.channel === 'open' && s.call.state === 'ACTIVE')";
    let call = format!("demo.call('bob', {{ video: {video} }}).then(() => {connected})");
    let [at_alice, at_bob] = in_pages(browser, [(alice, &call), (bob, connected)]);
    for (state, peer) in [(&at_alice, "bob"), (&at_bob, "alice")] {
        let call = state.get("call").unwrap_or_else(|| panic!("no call in {state:?}"));
        assert_eq!(call.get_str("opponentId"), Some(peer), "{state:?}");
        assert_eq!(call.get_str("state"), Some("ACTIVE"), "{state:?}");
        assert_eq!(call.get_str("channel"), Some("open"), "{state:?}");
    }
}

/// Waits until each side has received the other's end-of-candidates, then checks that
/// candidates were signaled, that every one was a loopback address, and that each side
/// received exactly what the other sent, in order.
fn check_candidates(browser: &mut Browser, alice: &Page, bob: &Page) {
    let until_end = "demo.waitFor((s) => s.candidates.received.includes('end'))";
    let [at_alice, at_bob] = in_pages(browser, [(alice, until_end), (bob, until_end)]);
    let addresses = |state: &OwnedValue, list: &str| -> Vec<String> {
        let list = state.get("candidates").and_then(|c| c.get_array(list));
        let list = list.unwrap_or_else(|| panic!("no candidates in {state:?}"));
        list.iter().map(|address| address.as_str().expect("an address").to_owned()).collect()
    };
    for (state, name) in [(&at_alice, "alice"), (&at_bob, "bob")] {
        for direction in ["sent", "received"] {
            let list = addresses(state, direction);
            let (end, candidates) = list.split_last().expect("not empty: it ends with 'end'");
            assert_eq!(end, "end", "{name} {direction}: end-of-candidates comes last: {list:?}");
            assert!(!candidates.is_empty(), "{name} {direction} no candidate: {state:?}");
            assert!(
                candidates.iter().all(|address| address == "127.0.0.1" || address == "::1"),
                "{name} {direction} a candidate that is not loopback: {list:?}"
            );
        }
    }
    assert_eq!(addresses(&at_alice, "sent"), addresses(&at_bob, "received"), "alice -> bob");
    assert_eq!(addresses(&at_bob, "sent"), addresses(&at_alice, "received"), "bob -> alice");
}

/// Each side sends a chat message over the data channel and waits for the other's.
fn chat_both_ways(browser: &mut Browser, alice: &Page, bob: &Page) {
    let (from_alice, from_bob) = ("hello from alice 👋", "hello from bob");
    in_pages(
        browser,
        [(alice, &format!("demo.sendChat('{from_alice}')")), (bob, &format!("demo.sendChat('{from_bob}')"))],
    );
    let received = |from: &str, text: &str| {
        format!("demo.waitFor((s) => s.chat.some((m) => m.from === '{from}' && m.text === '{text}'))")
    };
    let [at_alice, at_bob] =
        in_pages(browser, [(alice, &received("bob", from_bob)), (bob, &received("alice", from_alice))]);
    // Each side's chat: its own message (added locally) and the other's (over the channel).
    for (state, mine, theirs) in [(&at_alice, from_alice, from_bob), (&at_bob, from_bob, from_alice)] {
        let chat: Vec<&str> = state
            .get_array("chat")
            .expect("chat")
            .iter()
            .map(|message| message.get_str("text").expect("text"))
            .collect();
        assert!(chat.contains(&mine) && chat.contains(&theirs) && chat.len() == 2, "{state:?}");
        assert_eq!(state.get("media").and_then(|m| m.get_bool("local")), Some(false), "no camera: {state:?}");
    }
}

#[test]
fn two_browsers_chat_over_a_data_channel_signaled_through_the_server() {
    let Some(chromium) =
        chromium_or_skip("two_browsers_chat_over_a_data_channel_signaled_through_the_server")
    else {
        return;
    };
    let server = Server::start();
    let mut browser = Browser::launch(&chromium, &[], HARNESS_TIMEOUT);
    let (alice, bob) = alice_and_bob(&mut browser, &server, "http", "video=0");
    call_and_connect(&mut browser, &alice, &bob, false);

    chat_both_ways(&mut browser, &alice, &bob);
    check_candidates(&mut browser, &alice, &bob);
}

#[test]
fn two_browsers_see_each_others_fake_camera() {
    let Some(chromium) = chromium_or_skip("two_browsers_see_each_others_fake_camera") else {
        return;
    };
    let server = Server::start();
    let mut browser = Browser::launch(&chromium, &["--use-fake-device-for-media-stream"], HARNESS_TIMEOUT);
    let (alice, bob) = alice_and_bob(&mut browser, &server, "http", "video=1");
    call_and_connect(&mut browser, &alice, &bob, true);

    // The remote <video> decodes frames, knows its size, and its clock moves on.
    let playing = "(async () => {
      const moving = (s) => s.media.remote.framesDecoded > 5 && s.media.remote.videoWidth > 0;
      const first = (await demo.waitFor(moving)).media;
      const later = (await demo.waitFor((s) => s.media.remote.currentTime > first.remote.currentTime)).media;
      return { first, later };
    })()";
    let [at_alice, at_bob] = in_pages(&mut browser, [(&alice, playing), (&bob, playing)]);
    for (media, name) in [(&at_alice, "alice"), (&at_bob, "bob")] {
        let number = |when: &str, field: &str| {
            let value = media.get(when).and_then(|m| m.get("remote")).and_then(|r| r.get(field));
            value
                .and_then(|v| v.cast_f64())
                .unwrap_or_else(|| panic!("{name}: no {when}.remote.{field} in {media:?}"))
        };
        assert!(number("first", "framesDecoded") > 5.0, "{name}: {media:?}");
        assert!(number("first", "videoWidth") > 0.0, "{name}: {media:?}");
        assert!(number("first", "videoHeight") > 0.0, "{name}: {media:?}");
        assert!(number("later", "currentTime") > number("first", "currentTime"), "{name}: {media:?}");
        assert!(number("later", "framesDecoded") >= number("first", "framesDecoded"), "{name}: {media:?}");
        let local = media.get("first").and_then(|m| m.get_bool("local"));
        assert_eq!(local, Some(true), "{name} sends its own camera: {media:?}");
    }
    check_candidates(&mut browser, &alice, &bob);
}

/// The chat test once more over TLS: the page comes from `https://`, so it signals over
/// `wss://` to the same port. Chromium trusts the test certificate through
/// `--ignore-certificate-errors-spki-list` (the leaf's key pin; Chromium honours it only
/// with a `--user-data-dir`, which every launch has), not through a system trust store.
#[test]
fn two_browsers_chat_over_https_and_wss() {
    let Some(chromium) = chromium_or_skip("two_browsers_chat_over_https_and_wss") else {
        return;
    };
    let pki = Pki::new();
    let leaf = pki.install_new(1);
    let args = pki.args();
    let server = Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let pin = format!("--ignore-certificate-errors-spki-list={}", spki_pin(&leaf.spki));
    let mut browser = Browser::launch(&chromium, &[&pin], HARNESS_TIMEOUT);
    let (alice, bob) = alice_and_bob(&mut browser, &server, "https", "video=0");
    let over_tls = "({ page: location.protocol, socket: demo.client.socket && demo.client.socket.url })";
    let wss = format!("wss://{}/", server.addr);
    for state in in_pages(&mut browser, [(&alice, over_tls), (&bob, over_tls)]) {
        assert_eq!(state.get_str("page"), Some("https:"), "{state:?}");
        assert_eq!(state.get_str("socket"), Some(wss.as_str()), "{state:?}");
    }
    call_and_connect(&mut browser, &alice, &bob, false);
    chat_both_ways(&mut browser, &alice, &bob);
    check_candidates(&mut browser, &alice, &bob);
}
