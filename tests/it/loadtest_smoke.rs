//! A short run of each load-tester mode against the real server: keeps the tool working
//! and its numbers sane. Not a benchmark (see BENCHMARKS.md for those).

use std::time::Duration;

use loadtest::Target;
use loadtest::churn::{self, ChurnOptions};
use loadtest::idle::{self, IdleOptions};
use loadtest::relay::{self, RelayOptions};
use loadtest::soak::{self, SoakOptions};

use crate::harness::Server;

/// Load runs relax the rate limit (as every benchmark here does): a closed loop sends
/// faster than the default 500 commands/s per connection allows.
fn server() -> Server {
    Server::start_with(&["--rate-limit", "0"])
}

fn target(server: &Server) -> Target {
    Target::new(&server.url(), 2, Some(server.pid())).expect("a ws:// URL")
}

fn short_relay() -> RelayOptions {
    RelayOptions {
        pairs: 10,
        window: 8,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(800),
        ..RelayOptions::default()
    }
}

#[test]
fn relay_closed_loop_delivers_everything_in_order() {
    let server = server();
    let report = relay::run(&target(&server), &short_relay()).expect("relay runs");
    assert!(report.delivered > 0, "{report:?}");
    assert_eq!((report.lost, report.reordered, report.errors), (0, 0, 0), "{report:?}");
    assert_eq!(report.latency.samples, report.delivered);
    assert!(report.per_client_min > 0, "every client got messages: {report:?}");
    let per_message = report.cpu.server_us_per_message.expect("server CPU is read from /proc");
    assert!(per_message > 0.0 && per_message < 1000.0, "{per_message} µs per message");
}

#[test]
fn relay_open_loop_delivers_the_offered_rate() {
    let server = server();
    let options = RelayOptions { rate: Some(2000.0), ..short_relay() };
    let report = relay::run(&target(&server), &options).expect("relay runs");
    let expected = 2000.0 * report.measured_seconds;
    let delivered = report.delivered as f64;
    assert!((expected * 0.7..expected * 1.3).contains(&delivered), "{delivered} of ~{expected}: {report:?}");
    assert_eq!((report.lost, report.reordered, report.errors), (0, 0, 0), "{report:?}");
}

#[test]
fn idle_registers_every_client_and_reads_server_memory() {
    let server = server();
    let options = IdleOptions { clients: 300, settle: Duration::from_millis(200), ..IdleOptions::default() };
    let report = idle::run(&target(&server), &options).expect("idle runs");
    assert_eq!((report.registered, report.failed), (300, 0), "{report:?}");
    assert!(report.clients_per_second > 0.0);
    assert!(report.server_rss_after_kib.is_some_and(|kib| kib > 0), "{report:?}");
    assert!(report.client_list_bytes_received > 0, "WAIT clients get lists: {report:?}");
}

#[test]
fn churn_converges_after_joins_and_leaves() {
    let server = server();
    let options = ChurnOptions {
        watchers: 20,
        pairs: 2,
        burst: 100,
        churn_duration: Duration::from_millis(500),
        ..ChurnOptions::default()
    };
    let report = churn::run(&target(&server), &options).expect("churn runs");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.steady.joins >= 40 && report.steady.leaves == report.steady.joins, "{report:?}");
    assert!(report.steady.convergence_seconds < 5.0, "{report:?}");
    assert!(report.join.convergence_seconds < 5.0, "{report:?}");
    assert!(report.leave.convergence_seconds < 5.0, "{report:?}");
    assert!(report.join.client_list_bytes_received > 0);
    assert!(report.relay_latency.samples > 0, "the pairs relayed during the storm: {report:?}");
    assert_eq!(report.relay_lost, 0);
}

/// The soak runs against default limits: each client sends about 12 commands/s, so nothing
/// may be rate limited, and every garbage or fatal frame must get its documented answer.
#[test]
fn soak_leaves_the_server_idle_without_growing() {
    let server = Server::start();
    let options = SoakOptions {
        clients: 200,
        duration: Duration::from_millis(2500),
        warmup: Duration::from_millis(1000),
        seed: 7,
        ..SoakOptions::default()
    };
    let report = soak::run(&target(&server), &options).expect("soak runs");
    assert!(!report.leaked, "{report:#?}");
    assert_eq!(report.unexpected, 0, "{report:#?}");
    let end = report.server_end.as_ref().expect("/metrics was read at the end");
    assert_eq!(
        (end.clients_registered, end.sessions_new, end.sessions_pending, end.sessions_active),
        (0, 0, 0, 0),
        "{report:#?}"
    );
    assert!(end.connections_open <= 1, "only the metrics request itself: {report:#?}");
    assert!(report.server_rss_growth_kib.is_some(), "RSS is read with the server's pid: {report:#?}");
    assert!(!report.errors_by_code.contains_key(&9500), "never rate limited: {report:#?}");
    for kind in [
        "session",
        "call",
        "accept",
        "icecandidate",
        "stop",
        "notify",
        "garbage_json",
        "garbage_binary",
        "garbage_shape",
        "leave_drop",
        "leave_close",
        "leave_oversized",
        "leave_bad_utf8",
        "leave_protocol_error",
        "leave_truncated",
    ] {
        assert!(report.operations.get(kind).is_some_and(|&n| n > 0), "no {kind}: {report:#?}");
    }
    // Relays arrived, and the fatal frames were answered with their close codes.
    assert!(report.received.get("icecandidate").is_some_and(|&n| n > 0), "{report:#?}");
    for code in ["1002", "1007", "1009"] {
        assert!(report.server_closes_by_code.contains_key(code), "no close {code}: {report:#?}");
    }
}

/// The verdict is not vacuous: a client the soak did not create stays registered, so the
/// server never gets back to idle and the soak says so.
#[test]
fn soak_reports_a_server_that_does_not_get_back_to_idle() {
    let server = Server::start();
    let _stranger = server.register("stranger");
    let options = SoakOptions {
        clients: 20,
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        settle: Duration::from_millis(300),
        ..SoakOptions::default()
    };
    let report = soak::run(&target(&server), &options).expect("soak runs");
    assert!(report.leaked, "{report:#?}");
    let end = report.server_end.as_ref().expect("/metrics was read at the end");
    assert_eq!(end.clients_registered, 1, "{report:#?}");
    assert!(report.verdict.iter().any(|line| line.starts_with("NOT idle")), "{report:#?}");
}
