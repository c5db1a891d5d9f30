//! Real-browser end to end: two headless Chromium pages load the demo page (web/index.html)
//! from the real server, register, and call each other through it; the peer connection then
//! runs browser to browser on loopback. One test talks over the data channel, another sends
//! the fake camera's video both ways, and one cuts a page's signaling connection for 3 s (a
//! TCP proxy that goes away and comes back) while the call goes on, then resumes it.
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
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// A TCP proxy on a fixed loopback port in front of the server: one page signals through it,
/// so the test can take that page's network away. [`Proxy::stop`] ends every connection with
/// a FIN and no close frame (the server sees the client away, the browser a connection lost,
/// 1006) and closes the port, so that reconnect attempts are refused; [`Proxy::restart`]
/// listens on the same port again.
struct Proxy {
    port: u16,
    upstream: SocketAddr,
    /// Connections accepted, over every run.
    accepted: Arc<AtomicU32>,
    running: Option<Running>,
}

struct Running {
    stop: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
    connections: Arc<Mutex<Connections>>,
}

/// Both sockets of every connection, and the threads copying between them.
#[derive(Default)]
struct Connections {
    streams: Vec<TcpStream>,
    copiers: Vec<JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mut proxy = Proxy { port, upstream, accepted: Arc::default(), running: None };
        proxy.run(listener);
        proxy
    }

    fn run(&mut self, listener: TcpListener) {
        // Non-blocking, so that the acceptor notices `stop` without a connection to wake it.
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Connections>> = Arc::default();
        let (upstream, accepted) = (self.upstream, Arc::clone(&self.accepted));
        let acceptor = {
            let (stop, connections) = (Arc::clone(&stop), Arc::clone(&connections));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let down = match listener.accept() {
                        Ok((down, _)) => down,
                        // Nothing to accept, or a transient failure: a refused page retries anyway.
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    down.set_nonblocking(false).expect("blocking socket");
                    let Ok(up) = TcpStream::connect(upstream) else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut guard = connections.lock().expect("proxy lock");
                    for (from, to) in [(&down, &up), (&up, &down)] {
                        let (mut from, mut to) =
                            (from.try_clone().expect("clone"), to.try_clone().expect("clone"));
                        guard.copiers.push(std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Write);
                        }));
                    }
                    guard.streams.extend([down, up]);
                }
            })
        };
        self.running = Some(Running { stop, acceptor, connections });
    }

    /// The network goes: every connection ends, and the port refuses connections.
    fn stop(&mut self) {
        let Some(running) = self.running.take() else { return };
        running.stop.store(true, Ordering::SeqCst);
        // Nothing in these threads panics; a failed join must not panic again in drop.
        let _ = running.acceptor.join();
        let Connections { streams, copiers } =
            std::mem::take(&mut *running.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for stream in &streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for copier in copiers {
            let _ = copier.join();
        }
    }

    /// The network is back, on the same port (std sets SO_REUSEADDR on listeners).
    fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the proxy's port again");
        self.run(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `from` sends `text` over the data channel and `to` waits until it arrived.
fn chat_once(browser: &mut Browser, from: &Page, to: &Page, text: &str) -> OwnedValue {
    in_pages(browser, [(from, &format!("demo.sendChat('{text}')"))]);
    let sender = from.label.as_str();
    let [state] = in_pages(
        browser,
        [(
            to,
            &format!("demo.waitFor((s) => s.chat.some((m) => m.from === '{sender}' && m.text === '{text}'))"),
        )],
    );
    state
}

fn call_field<'a>(state: &'a OwnedValue, field: &str) -> &'a str {
    let call = state.get("call").unwrap_or_else(|| panic!("no call in {state:?}"));
    call.get_str(field).unwrap_or_else(|| panic!("no call.{field} in {state:?}"))
}

fn count(state: &OwnedValue, event: &str) -> u64 {
    state
        .get("counts")
        .and_then(|c| c.get_u64(event))
        .unwrap_or_else(|| panic!("no counts.{event} in {state:?}"))
}

/// alice signals through a proxy. Mid-call the proxy goes away for 3 s: the data channel
/// keeps working both ways, alice's page shows that it is reconnecting, a notify bob sends
/// her meanwhile is held by the server; when the network is back she resumes, gets the
/// notify, bob never hears `leave`, and an ICE restart runs through the resumed session.
#[test]
fn a_page_that_loses_its_signaling_connection_resumes_and_the_call_goes_on() {
    let Some(chromium) =
        chromium_or_skip("a_page_that_loses_its_signaling_connection_resumes_and_the_call_goes_on")
    else {
        return;
    };
    let server = Server::start();
    let mut proxy = Proxy::start(server.addr);
    let mut browser = Browser::launch(&chromium, &[], HARNESS_TIMEOUT);
    let base = format!("http://{}/?loopbackOnly=1&video=0", server.addr);
    let via_proxy = format!("ws://127.0.0.1:{}/", proxy.port);
    let bob = browser.open("bob", &format!("{base}&name=bob&autoaccept=1"));
    let alice = browser.open("alice", &format!("{base}&name=alice&server={via_proxy}"));
    let [bob_id, alice_id] = in_pages(&mut browser, [(&bob, "demo.ready"), (&alice, "demo.ready")]);
    assert_eq!((alice_id.as_str(), bob_id.as_str()), (Some("alice"), Some("bob")));
    call_and_connect(&mut browser, &alice, &bob, false);
    chat_both_ways(&mut browser, &alice, &bob);
    let [before] = in_pages(&mut browser, [(&alice, "demo.state()")]);
    let session = call_field(&before, "sessionId").to_owned();
    let [socket] = in_pages(&mut browser, [(&alice, "demo.client.socket.url")]);
    assert_eq!(socket.as_str(), Some(via_proxy.as_str()), "alice signals through the proxy");
    assert_eq!(proxy.accepted.load(Ordering::SeqCst), 1);

    proxy.stop();
    let outage = Instant::now();
    let [away] = in_pages(&mut browser, [(&alice, "demo.waitFor((s) => s.reconnecting)")]);
    assert!(away.get_str("status").is_some_and(|s| s.contains("reconnecting")), "the page says so: {away:?}");
    assert_eq!(count(&away, "reconnecting"), 1, "{away:?}");
    // Signaling is down, the peer-to-peer path is not.
    in_pages(&mut browser, [(&bob, "demo.client.notify('alice', 'held', 7)")]);
    let at_alice = chat_once(&mut browser, &bob, &alice, "while alice is away");
    assert_eq!(at_alice.get_bool("reconnecting"), Some(true), "still away: {at_alice:?}");
    let at_bob = chat_once(&mut browser, &alice, &bob, "alice, away, over the data channel");
    assert_eq!(count(&at_bob, "leave"), 0, "{at_bob:?}");
    let [still_away] = in_pages(&mut browser, [(&alice, "demo.state()")]);
    assert_eq!(still_away.get_bool("reconnecting"), Some(true), "{still_away:?}");
    // The outage lasts 3 s, whatever the chat took.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed()));
    proxy.restart();

    let [back] = in_pages(
        &mut browser,
        [(&alice, "demo.waitFor((s) => s.counts.reconnected === 1 && !s.reconnecting)")],
    );
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 2, "alice came back through the proxy");
    // The replay comes after the resume reply (and so after the 'reconnected' event).
    let [replayed] = in_pages(&mut browser, [(&alice, "demo.waitFor((s) => s.notifies.length > 0)")]);
    let held = &replayed.get_array("notifies").expect("notifies")[0];
    assert_eq!((held.get_str("from"), held.get_str("type")), (Some("bob"), Some("held")), "{replayed:?}");
    assert_eq!(held.get("data").and_then(|d| d.cast_f64()), Some(7.0), "{replayed:?}");
    assert_eq!(count(&back, "sessionlost"), 0, "{back:?}");
    assert!(back.get_str("status").is_some_and(|s| s.contains("Reconnected")), "{back:?}");
    let [at_bob] = in_pages(&mut browser, [(&bob, "demo.state()")]);
    for state in [&back, &at_bob] {
        assert_eq!(call_field(state, "sessionId"), session, "the same session: {state:?}");
        assert_eq!(call_field(state, "state"), "ACTIVE", "{state:?}");
        assert_eq!(call_field(state, "channel"), "open", "{state:?}");
    }
    assert_eq!(count(&at_bob, "leave"), 0, "bob never heard leave: {at_bob:?}");
    assert!(at_bob.get("lastEnd").is_some_and(|end| end.is_null()), "bob's call never ended: {at_bob:?}");

    // A renegotiation through the resumed session: an ICE restart, new credentials both ways.
    let [restarted] = in_pages(&mut browser, [(&alice, "demo.renegotiate({ iceRestart: true })")]);
    let alice_ufrag = call_field(&restarted, "localUfrag").to_owned();
    assert_ne!(alice_ufrag, call_field(&before, "localUfrag"), "new local credentials: {restarted:?}");
    assert_ne!(
        call_field(&restarted, "remoteUfrag"),
        call_field(&before, "remoteUfrag"),
        "bob answered with new ones: {restarted:?}"
    );
    let settled = |ufrag: &str| {
        format!(
            "demo.waitFor((s) => s.call && s.call.state === 'ACTIVE' && s.call.connectionState === 'connected' \
             && s.call.{ufrag})"
        )
    };
    let [at_alice, at_bob] = in_pages(
        &mut browser,
        [
            (&alice, &settled("remoteUfrag !== null")),
            (&bob, &settled(&format!("remoteUfrag === '{alice_ufrag}'"))),
        ],
    );
    assert_eq!(
        call_field(&at_bob, "localUfrag"),
        call_field(&at_alice, "remoteUfrag"),
        "{at_alice:?} {at_bob:?}"
    );
    chat_once(&mut browser, &alice, &bob, "after the ICE restart, from alice");
    let at_alice = chat_once(&mut browser, &bob, &alice, "after the ICE restart, from bob");
    assert_eq!(call_field(&at_alice, "sessionId"), session);
    let [at_bob] = in_pages(&mut browser, [(&bob, "demo.state()")]);
    assert_eq!(count(&at_bob, "leave"), 0, "{at_bob:?}");
    // Signaling went both ways since the replay: a second copy of the notify would be here.
    assert_eq!(at_alice.get_array("notifies").map(Vec::len), Some(1), "the held notify, once: {at_alice:?}");
    for state in [&at_alice, &at_bob] {
        let errors = state.get_array("errors").expect("errors");
        assert!(errors.is_empty(), "no errors on the page: {state:?}");
    }
}
