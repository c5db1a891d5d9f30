//! The signaling core without I/O: relaying one icecandidate end to end, building and
//! handing out the client list (`clu`) for 100 / 1k / 10k registered clients, and the
//! rounds of changes (`cld`) that 10k delta-presence watchers get for 1 or 500 joins.
//!
//! Run with `cargo bench --bench core`.

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use signaling_server::signaling::{
    ClientListPacing, ConnId, Delivery, ListDelivery, MemoryOutbox, Outbox, Signaling,
};

/// Counts what the core hands out and stores nothing, so the benches measure the core and
/// not a recorder.
#[derive(Debug, Default)]
struct CountingOutbox {
    messages: u64,
    bytes: u64,
    last_to: Option<ConnId>,
    lists: u64,
    list_bytes: u64,
}

impl Outbox for CountingOutbox {
    fn send(&mut self, to: ConnId, message: &[u8]) -> Delivery {
        self.messages += 1;
        self.bytes += message.len() as u64;
        self.last_to = Some(to);
        Delivery::Queued
    }

    fn send_client_list(&mut self, _to: ConnId, list: &Rc<[u8]>) -> ListDelivery {
        self.lists += 1;
        self.list_bytes += list.len() as u64;
        ListDelivery::Queued
    }

    fn messages_queued(&self, _to: ConnId) -> u64 {
        self.messages + self.lists
    }

    fn take_over(&mut self, _old: ConnId) {}
}

/// Deterministic session ids (splitmix64), so setting up thousands of sessions makes no
/// system calls.
fn test_random() -> Box<dyn FnMut() -> u64> {
    let mut state = 0x853c_49e6_748f_ea9bu64;
    Box::new(move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A Chrome-style host candidate, about 200 bytes of JSON.
const CANDIDATE: &str = concat!(
    r#"{"candidate":"candidate:3528921037 1 udp 2122260223 192.168.1.23 54321 typ host "#,
    r#"generation 0 ufrag Xk9d network-id 1 network-cost 10","sdpMid":"0","sdpMLineIndex":0,"#,
    r#""usernameFragment":"Xk9d"}"#
);

/// The session id in `{"cmd":"session","sessionId":"…"}`.
fn session_id_in(messages: &[String]) -> String {
    const KEY: &str = r#""sessionId":""#;
    let reply = messages
        .iter()
        .find(|m| m.starts_with(r#"{"cmd":"session""#))
        .unwrap_or_else(|| panic!("no session reply in {messages:?}"));
    let start = reply.find(KEY).map(|at| at + KEY.len()).unwrap_or_else(|| panic!("{reply}"));
    let end = reply[start..].find('"').map(|len| start + len).unwrap_or_else(|| panic!("{reply}"));
    reply[start..end].to_owned()
}

/// One icecandidate from alice to bob in an ACTIVE session: parse, session lookup, encode,
/// hand to the outbox.
fn relay_icecandidate(c: &mut Criterion) {
    let now = Instant::now();
    let alice = ConnId::new(0, 1);
    let bob = ConnId::new(1, 1);
    let mut core = Signaling::new(ClientListPacing::default());
    let mut out = MemoryOutbox::default();
    core.handle_message(alice, br#"{"cmd":"sId","sId":"alice"}"#, now, &mut out);
    core.handle_message(bob, br#"{"cmd":"sId","sId":"bob"}"#, now, &mut out);
    core.handle_message(alice, br#"{"cmd":"session","opponentId":"bob"}"#, now, &mut out);
    let session = session_id_in(&out.take_for(alice));
    let call =
        format!(r#"{{"cmd":"call","sessionId":"{session}","offer":{{"type":"offer","sdp":"v=0\r\n"}}}}"#);
    core.handle_message(alice, call.as_bytes(), now, &mut out);
    let accept =
        format!(r#"{{"cmd":"accept","sessionId":"{session}","answer":{{"type":"answer","sdp":"v=0\r\n"}}}}"#);
    core.handle_message(bob, accept.as_bytes(), now, &mut out);
    let ssu_active = format!(r#"{{"cmd":"ssu","sessionId":"{session}","state":3}}"#);
    assert!(out.take_for(alice).contains(&ssu_active), "the session did not become ACTIVE");
    let _ = core.poll_client_list(now, &mut out);
    out.take();

    // The relay must produce exactly one message, for bob, and nothing else.
    let ice = format!(r#"{{"cmd":"icecandidate","sessionId":"{session}","icecandidate":{CANDIDATE}}}"#);
    core.handle_message(alice, ice.as_bytes(), now, &mut out);
    let relayed = format!(
        r#"{{"cmd":"icecandidate","sessionId":"{session}","opponentId":"alice","icecandidate":{CANDIDATE}}}"#
    );
    assert_eq!(out.take(), vec![(bob, relayed.clone())]);
    assert!(core.check_invariants().is_ok());

    let mut counting = CountingOutbox::default();
    let mut iterations = 0u64;
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Bytes(ice.len() as u64));
    group.bench_function("relay_icecandidate", |b| {
        b.iter(|| {
            core.handle_message(alice, black_box(ice.as_bytes()), now, &mut counting);
            iterations += 1;
        })
    });
    group.finish();
    // Every iteration relayed exactly the checked message to bob.
    assert_eq!(counting.messages, iterations);
    assert_eq!(counting.bytes, iterations * relayed.len() as u64);
    assert_eq!(counting.last_to, Some(bob));
}

fn sid(index: usize) -> String {
    format!(r#"{{"cmd":"sId","sId":"client-{index:05}"}}"#)
}

/// Pacing that lets a round deliver everything in one call; the benches advance the clock
/// far enough that every round is due.
fn one_call_rounds() -> ClientListPacing {
    ClientListPacing { bytes_per_poll: usize::MAX, ..ClientListPacing::default() }
}

/// Ahead of any pacing gap (a 10k-client round hands out ~3 GB, 12 s at the default
/// 256 MiB/s).
const CLOCK_STEP: Duration = Duration::from_secs(3600);

/// A core with `n` registered clients (connections 0..n) and, when `pair_up`, every client
/// but the first two paired into sessions. The first list round has been delivered.
fn core_with_clients(n: usize, pair_up: bool, start: Instant) -> Signaling {
    let mut core = Signaling::with_random(one_call_rounds(), test_random());
    let mut out = CountingOutbox::default();
    for index in 0..n {
        core.handle_message(ConnId::new(index as u32, 1), sid(index).as_bytes(), start, &mut out);
    }
    if pair_up {
        for index in (2..n.saturating_sub(1)).step_by(2) {
            let open = format!(r#"{{"cmd":"session","opponentId":"client-{:05}"}}"#, index + 1);
            core.handle_message(ConnId::new(index as u32, 1), open.as_bytes(), start, &mut out);
        }
    }
    assert_eq!(core.stats().registered, n);
    assert_eq!(core.poll_client_list(start, &mut out), None, "the first round did not finish in one call");
    assert!(core.check_invariants().is_ok());
    core
}

/// One list change (client 0 leaves and registers again, moving to the end of the list)
/// followed by one full delivery round.
fn churn_and_poll(core: &mut Signaling, now: Instant, out: &mut CountingOutbox) -> Option<Instant> {
    let first = ConnId::new(0, 1);
    core.disconnect(first, now, out);
    core.handle_message(first, sid(0).as_bytes(), now, out);
    core.poll_client_list(now, out)
}

/// Builds and hands out a `clu` after one change, with N clients: every client in WAIT
/// (`all_wait`: N recipients), or all but two in sessions (`two_recipients`: the list is
/// encoded once and handed to the two WAIT clients, so this is mostly the encoding and the
/// walk over the registry).
fn client_list(c: &mut Criterion) {
    let mut group = c.benchmark_group("clu");
    for &n in &[100usize, 1_000, 10_000] {
        for (variant, pair_up) in [("all_wait", false), ("two_recipients", true)] {
            let start = Instant::now();
            let mut now = start;
            let mut core = core_with_clients(n, pair_up, start);
            // A dry run: what one round hands out.
            let mut out = CountingOutbox::default();
            now += CLOCK_STEP;
            assert_eq!(churn_and_poll(&mut core, now, &mut out), None);
            let recipients = if pair_up { 2 } else { n as u64 };
            assert_eq!(out.lists, recipients, "{variant}/{n}");
            let list_len = out.list_bytes / recipients;
            eprintln!(
                "clu/{variant}/{n}: list {list_len} bytes, {recipients} recipients, {} bytes handed out per round",
                out.list_bytes
            );
            let per_round = out.list_bytes;

            let mut counting = CountingOutbox::default();
            let mut rounds = 0u64;
            let mut unfinished = 0u64;
            group.throughput(Throughput::Bytes(per_round));
            group.bench_function(BenchmarkId::new(variant, n), |b| {
                b.iter(|| {
                    now += CLOCK_STEP;
                    unfinished += u64::from(churn_and_poll(&mut core, now, &mut counting).is_some());
                    rounds += 1;
                })
            });
            assert_eq!(unfinished, 0, "a round did not finish in one call");
            assert_eq!(counting.lists, rounds * recipients, "{variant}/{n}");
            assert_eq!(counting.list_bytes, rounds * per_round, "{variant}/{n}");
            eprintln!(
                "clu/{variant}/{n}: {} rounds, {} lists, {} bytes handed out in total",
                rounds, counting.lists, counting.list_bytes
            );
        }
    }
    group.finish();
}

/// 10k watchers in delta presence, all WAIT; per iteration `joins` list-free clients join
/// (one round of changes to every watcher) and leave again (a second round). This is what
/// a burst costs the core: one message per watcher per round, each covering every join
/// since the last round, composed once and shared.
fn delta_rounds(c: &mut Criterion) {
    const WATCHERS: usize = 10_000;
    let mut group = c.benchmark_group("cld");
    for &joins in &[1usize, 500] {
        let start = Instant::now();
        let mut now = start;
        let mut core = Signaling::with_random(one_call_rounds(), test_random());
        let mut out = CountingOutbox::default();
        for index in 0..WATCHERS {
            let register = format!(r#"{{"cmd":"sId","sId":"watcher-{index:05}","presence":"delta"}}"#);
            core.handle_message(ConnId::new(index as u32, 1), register.as_bytes(), start, &mut out);
        }
        assert_eq!(core.poll_client_list(start, &mut out), None);
        let joiner = |n: usize| ConnId::new((WATCHERS + n) as u32, 1);
        let burst = |core: &mut Signaling, now: &mut Instant, out: &mut CountingOutbox| {
            for n in 0..joins {
                let register = format!(r#"{{"cmd":"sId","sId":"joiner-{n:04}","presence":"none"}}"#);
                core.handle_message(joiner(n), register.as_bytes(), *now, out);
            }
            *now += CLOCK_STEP;
            let joined = core.poll_client_list(*now, out);
            for n in 0..joins {
                core.disconnect(joiner(n), *now, out);
            }
            *now += CLOCK_STEP;
            joined.or(core.poll_client_list(*now, out))
        };
        let before = core.stats();
        let mut dry = CountingOutbox::default();
        assert_eq!(burst(&mut core, &mut now, &mut dry), None, "a round did not finish in one call");
        let stats = core.stats();
        let changes = stats.client_list_changes_sent - before.client_list_changes_sent;
        assert_eq!(changes, 2 * WATCHERS as u64, "one cld per watcher per round");
        eprintln!(
            "cld/{joins}: {} bytes handed out to {WATCHERS} watchers for {joins} joins and leaves",
            stats.client_list_bytes - before.client_list_bytes
        );
        group.throughput(Throughput::Elements(2 * WATCHERS as u64));
        group.bench_function(BenchmarkId::new("10k_watchers_joins", joins), |b| {
            b.iter(|| burst(&mut core, &mut now, &mut out))
        });
        assert!(core.check_invariants().is_ok());
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = relay_icecandidate, client_list, delta_rounds
}
criterion_main!(benches);
