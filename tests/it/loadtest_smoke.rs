//! A short run of each load-tester mode against the real server: keeps the tool working
//! and its numbers sane. Not a benchmark (see BENCHMARKS.md for those). Every mode also
//! runs once over `wss://`, against the server on a test certificate (tls_client.rs) that
//! the load tester, by design, does not verify.

use std::time::Duration;

use loadtest::Target;
use loadtest::churn::{self, ChurnOptions};
use loadtest::idle::{self, IdleOptions};
use loadtest::relay::{self, RelayOptions};
use loadtest::resume::{self, ResumeOptions, ResumeReport};
use loadtest::soak::{self, SoakOptions};

use crate::harness::Server;
use crate::tls_client::{Pki, wss_url};

/// Load runs relax the rate limit (as every benchmark here does): a closed loop sends
/// faster than the default 500 commands/s per connection allows.
fn server() -> Server {
    Server::start_with(&["--rate-limit", "0"])
}

fn target(server: &Server) -> Target {
    Target::new(&server.url(), 2, Some(server.pid())).expect("a ws:// URL")
}

/// The server on `pki`'s certificate, speaking only TLS, with `extra` flags.
fn tls_server(pki: &Pki, extra: &[&str]) -> Server {
    pki.install_new(1);
    let args = pki.args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    Server::start_with(&all)
}

fn wss_target(server: &Server) -> Target {
    let target = Target::new(&wss_url(server), 2, Some(server.pid())).expect("a wss:// URL");
    assert!(target.tls.is_some());
    target
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

/// Idle clients in sessions next to the pairs, pinged often enough that the pings fall in
/// the measured window: all stay connected, none gets a client list once paired, and the
/// pairs still deliver everything.
#[test]
fn relay_with_idle_clients_keeps_them_connected_and_pinged() {
    let server = Server::start_with(&["--rate-limit", "0", "--ping-interval", "0.2"]);
    let options = RelayOptions { idle: 50, ..short_relay() };
    let report = relay::run(&target(&server), &options).expect("relay runs");
    let idle = &report.idle;
    assert_eq!((idle.clients, idle.registered, idle.sessions), (50, 50, 25), "{report:?}");
    assert_eq!((idle.failed, idle.errors), (0, 0), "{report:?}");
    assert!(report.delivered > 0, "{report:?}");
    assert_eq!((report.lost, report.reordered, report.errors), (0, 0, 0), "{report:?}");
    assert_eq!(report.latency.samples, report.delivered);
    // 70 connections, a ping every 0.2 s each, a 0.8 s window: about 280.
    assert!(report.pings_in_window >= 70, "{report:?}");
    assert!(!report.transport.tls, "{report:?}");
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

#[test]
fn relay_over_wss_delivers_everything_in_order() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--rate-limit", "0"]);
    let options = RelayOptions { idle: 20, ..short_relay() };
    let report = relay::run(&wss_target(&server), &options).expect("relay runs over TLS");
    assert!(report.transport.tls, "{report:?}");
    assert_eq!(report.transport.tls_version.as_deref(), Some("TLSv1_3"), "{report:?}");
    assert!(report.delivered > 0, "{report:?}");
    assert_eq!((report.lost, report.reordered, report.errors), (0, 0, 0), "{report:?}");
    assert!(report.per_client_min > 0, "every client got messages: {report:?}");
    assert_eq!((report.idle.registered, report.idle.sessions, report.idle.errors), (20, 10, 0), "{report:?}");
}

#[test]
fn idle_over_wss_registers_every_client() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--rate-limit", "0"]);
    let options = IdleOptions {
        clients: 200,
        settle: Duration::from_millis(200),
        in_sessions: true,
        ..IdleOptions::default()
    };
    let report = idle::run(&wss_target(&server), &options).expect("idle runs over TLS");
    assert!(report.transport.tls, "{report:?}");
    assert_eq!((report.registered, report.failed, report.sessions), (200, 0, 100), "{report:?}");
}

#[test]
fn churn_over_wss_converges() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--rate-limit", "0"]);
    let options = ChurnOptions {
        watchers: 10,
        pairs: 2,
        burst: 50,
        churn_duration: Duration::from_millis(300),
        ..ChurnOptions::default()
    };
    let report = churn::run(&wss_target(&server), &options).expect("churn runs over TLS");
    assert!(report.transport.tls, "{report:?}");
    assert_eq!((report.errors, report.relay_lost), (0, 0), "{report:?}");
    assert!(report.join.convergence_seconds < 5.0 && report.leave.convergence_seconds < 5.0, "{report:?}");
}

/// Garbage, truncated frames and abrupt leaves inside TLS, and /metrics over https: the
/// server still gets back to idle and answers every fatal frame with its close code.
#[test]
fn soak_over_wss_leaves_the_server_idle() {
    let pki = Pki::new();
    let server = tls_server(&pki, &[]);
    let options = SoakOptions {
        // As many as the plain soak above: fewer make the rare fatal frames too rare.
        clients: 200,
        duration: Duration::from_millis(2500),
        warmup: Duration::from_millis(1000),
        seed: 7,
        ..SoakOptions::default()
    };
    let report = soak::run(&wss_target(&server), &options).expect("soak runs over TLS");
    assert!(report.transport.tls, "{report:#?}");
    assert!(!report.leaked, "{report:#?}");
    assert_eq!(report.unexpected, 0, "{report:#?}");
    assert!(report.server_end.is_some(), "/metrics was read over https: {report:#?}");
    assert!(report.received.get("icecandidate").is_some_and(|&n| n > 0), "{report:#?}");
    for code in ["1002", "1007", "1009"] {
        assert!(report.server_closes_by_code.contains_key(code), "no close {code}: {report:#?}");
    }
}

fn short_resume() -> ResumeOptions {
    ResumeOptions { pairs: 20, held: 3, settle: Duration::from_millis(100), ..ResumeOptions::default() }
}

/// Everything a clean resume run must show: every A resumed and got exactly its held
/// candidates in order, then a live one each way; no peer heard `leave`; the server's own
/// counters agree; one latency sample per resume.
fn assert_all_resumed(report: &ResumeReport, pairs: u64, held: u64) {
    assert!(report.ok, "{report:#?}");
    assert_eq!((report.resumed, report.refused, report.failed), (pairs, 0, 0), "{report:#?}");
    assert_eq!((report.replayed, report.lost, report.out_of_order), (pairs * held, 0, 0), "{report:#?}");
    assert_eq!((report.unexpected, report.peer_leaves), (0, 0), "{report:#?}");
    assert_eq!(report.held_messages, pairs * held, "{report:#?}");
    let server = &report.server;
    assert!(server.away_while_held >= pairs, "the server counted them away: {report:#?}");
    assert_eq!((server.resumes, server.resumes_refused), (pairs, 0), "{report:#?}");
    assert_eq!((server.graces_expired, server.held_over_limit), (0, 0), "{report:#?}");
    assert_eq!(server.registered_end, 2 * pairs, "nobody became gone: {report:#?}");
    for latency in [&report.connect_to_first, &report.resume_to_first, &report.resume_to_last] {
        assert_eq!(latency.samples, pairs, "{report:#?}");
        assert!(latency.p50_ms > 0.0 && latency.max_ms < 10_000.0, "{report:#?}");
    }
    assert!(report.connect_to_first.max_ms >= report.resume_to_first.p50_ms, "{report:#?}");
    assert!(report.server_rss_away_kib.is_some_and(|kib| kib > 0), "{report:#?}");
    assert!(report.rss_per_pair_with_away_client_bytes.is_some(), "{report:#?}");
}

#[test]
fn resume_one_at_a_time_replays_every_held_message_in_order() {
    let server = server();
    let report = resume::run(&target(&server), &short_resume()).expect("resume runs");
    assert_all_resumed(&report, 20, 3);
    assert_eq!(report.concurrency, 1);
    assert!(!report.cut_during_setup && report.server_rss_registered_kib.is_some(), "{report:#?}");
    assert!(report.rss_per_registered_client_bytes.is_some(), "{report:#?}");
}

/// Every A cut as soon as its session opened, then all of them resuming at once.
#[test]
fn resume_all_at_once_after_cuts_during_setup() {
    let server = server();
    let options =
        ResumeOptions { pairs: 30, held: 2, concurrency: 0, cut_during_setup: true, ..short_resume() };
    let report = resume::run(&target(&server), &options).expect("resume runs");
    assert_all_resumed(&report, 30, 2);
    assert_eq!(report.concurrency, 30);
    assert!(report.server_rss_registered_kib.is_none(), "no all-connected reading: {report:#?}");
}

/// The report is not vacuous: with a grace shorter than the settle time every away client
/// is gone before it resumes, its peer hears `leave`, and every resume is refused.
#[test]
fn resume_reports_clients_whose_grace_ran_out() {
    let server = Server::start_with(&["--rate-limit", "0", "--resume-grace", "0.3"]);
    let options = ResumeOptions { pairs: 5, settle: Duration::from_millis(1000), ..short_resume() };
    let report = resume::run(&target(&server), &options).expect("resume runs");
    assert!(!report.ok, "{report:#?}");
    assert_eq!((report.resumed, report.refused, report.failed), (0, 5, 5), "{report:#?}");
    assert_eq!((report.replayed, report.lost), (0, 15), "{report:#?}");
    assert_eq!(report.peer_leaves, 5, "{report:#?}");
    assert_eq!((report.server.graces_expired, report.server.resumes_refused), (5, 5), "{report:#?}");
    assert_eq!(report.connect_to_first.samples, 0, "{report:#?}");
}

/// Held messages past --max-output make an away client gone at once: the relay that finds
/// it gone is answered with 9401, and nothing is resumed.
#[test]
fn resume_reports_clients_that_held_too_much() {
    let server = Server::start_with(&["--rate-limit", "0", "--max-message", "1024", "--max-output", "2048"]);
    let options = ResumeOptions { pairs: 4, held: 10, ..short_resume() };
    let report = resume::run(&target(&server), &options).expect("resume runs");
    assert!(!report.ok, "{report:#?}");
    assert_eq!((report.resumed, report.failed), (0, 4), "{report:#?}");
    assert_eq!(report.peer_leaves, 4, "{report:#?}");
    assert_eq!(report.server.held_over_limit, 4, "{report:#?}");
}

#[test]
fn resume_over_wss_replays_every_held_message() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--rate-limit", "0"]);
    let options = ResumeOptions { pairs: 10, ..short_resume() };
    let report = resume::run(&wss_target(&server), &options).expect("resume runs over TLS");
    assert!(report.transport.tls, "{report:#?}");
    assert_all_resumed(&report, 10, 3);
}
