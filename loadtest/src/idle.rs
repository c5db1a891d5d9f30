//! `idle`: N registered clients that do nothing. Connect+register rate and, with
//! --server-pid, the server's resident memory per idle client.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Target;
use crate::fleet::{ClientEvent, Fleet};
use crate::procfs;
use crate::report::{self, Transport};
use crate::wire;

#[derive(Clone, Debug)]
pub struct IdleOptions {
    pub clients: usize,
    /// Handshakes + registrations in flight at once.
    pub concurrency: usize,
    /// How long clients stay connected (reading pings and lists) after the last one
    /// registered, before memory is measured.
    pub settle: Duration,
    pub timeout: Duration,
    /// Pair the clients into sessions as they register: CALLING clients get no client
    /// lists, which measures the cost of a connection itself rather than the O(clients²)
    /// list traffic of thousands of clients all in WAIT.
    pub in_sessions: bool,
}

impl Default for IdleOptions {
    fn default() -> Self {
        IdleOptions {
            clients: 1000,
            // More handshakes in flight only queue in the kernel's accept backlog.
            concurrency: 100,
            settle: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            in_sessions: false,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    #[serde(flatten)]
    pub transport: Transport,
    pub clients: usize,
    pub registered: usize,
    pub failed: u64,
    pub first_error: Option<String>,
    pub connect_register_seconds: f64,
    pub clients_per_second: f64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    /// (after - before) / registered, in bytes.
    pub server_rss_per_client_bytes: Option<f64>,
    pub client_list_bytes_received: u64,
    pub in_sessions: bool,
    pub sessions: usize,
    pub generator_cpu_seconds: Option<f64>,
    /// Server CPU time from the first connect to the end of the settle time (with --server-pid).
    pub server_cpu_seconds: Option<f64>,
}

pub fn run(target: &Target, options: &IdleOptions) -> io::Result<IdleReport> {
    let mut fleet = Fleet::new(target)?;
    let rss_before = target.server_pid.and_then(procfs::rss_kib);
    let generator = procfs::CpuMeter::start(std::process::id());
    let server_cpu = target.server_pid.map(procfs::CpuMeter::start);
    let prefix = format!("idle{}", std::process::id());
    let mut events = Vec::new();
    let (mut started, mut in_flight, mut registered, mut failed) = (0usize, 0usize, 0usize, 0u64);
    let mut first_error = None;
    let mut list_bytes = 0u64;
    let began = Instant::now();
    let mut all_registered: Option<Instant> = None;
    let mut waiting_partner: Option<usize> = None;
    let mut sessions = 0usize;
    loop {
        while started < options.clients && in_flight < options.concurrency {
            fleet.connect()?;
            started += 1;
            in_flight += 1;
        }
        fleet.turn(Duration::from_millis(10), &mut events)?;
        let now = Instant::now();
        for (key, event) in events.drain(..) {
            match event {
                ClientEvent::Opened => fleet.send(key, &format!(r#"{{"cmd":"sId","sId":"{prefix}-{key}"}}"#)),
                ClientEvent::Text(text) if wire::is_client_list(&text) => list_bytes += text.len() as u64,
                ClientEvent::Text(text) => match wire::parse(&text) {
                    Some(message) if message.cmd == "sId" => {
                        registered += 1;
                        in_flight -= 1;
                        if options.in_sessions {
                            match waiting_partner.take() {
                                Some(partner) => {
                                    let session =
                                        format!(r#"{{"cmd":"session","opponentId":"{prefix}-{partner}"}}"#);
                                    fleet.send(key, &session);
                                }
                                None => waiting_partner = Some(key),
                            }
                        }
                    }
                    Some(message) if message.cmd == "session" => sessions += 1,
                    Some(message) if message.cmd == "ssu" => {}
                    _ => {
                        failed += 1;
                        in_flight = in_flight.saturating_sub(1);
                        first_error.get_or_insert_with(|| format!("{text:.100}"));
                    }
                },
                ClientEvent::Closed(code) => {
                    failed += 1;
                    in_flight = in_flight.saturating_sub(1);
                    first_error.get_or_insert_with(|| format!("connection closed (code {code:?})"));
                }
            }
        }
        if all_registered.is_none() && registered + failed as usize >= options.clients {
            all_registered = Some(now);
        }
        if let Some(done) = all_registered
            && now >= done + options.settle
        {
            break;
        }
        if now - began > options.timeout {
            return Err(io::Error::other(format!(
                "{registered} of {} registered within {:?}; first error: {first_error:?}",
                options.clients, options.timeout
            )));
        }
    }
    let rss_after = target.server_pid.and_then(procfs::rss_kib);
    let seconds = all_registered.map_or(0.0, |done| (done - began).as_secs_f64()).max(1e-9);
    Ok(IdleReport {
        transport: Transport::of(&fleet),
        clients: options.clients,
        registered,
        failed,
        first_error,
        connect_register_seconds: seconds,
        clients_per_second: registered as f64 / seconds,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_rss_per_client_bytes: match (rss_before, rss_after) {
            (Some(before), Some(after)) if registered > 0 => {
                Some(after.saturating_sub(before) as f64 * 1024.0 / registered as f64)
            }
            _ => None,
        },
        client_list_bytes_received: list_bytes,
        in_sessions: options.in_sessions,
        sessions,
        generator_cpu_seconds: generator.elapsed().map(|d| d.as_secs_f64()),
        server_cpu_seconds: server_cpu.as_ref().and_then(procfs::CpuMeter::elapsed).map(|d| d.as_secs_f64()),
    })
}

pub fn print(report: &IdleReport) {
    let kib = |v: Option<u64>| v.map_or_else(|| "n/a (give --server-pid)".to_owned(), |v| format!("{v} KiB"));
    let rows = vec![
        ("transport", report.transport.row()),
        (
            "clients",
            format!("{} registered of {} ({} failed)", report.registered, report.clients, report.failed),
        ),
        (
            "connect+register",
            format!("{:.2} s, {:.0} clients/s", report.connect_register_seconds, report.clients_per_second),
        ),
        ("server RSS before", kib(report.server_rss_before_kib)),
        ("server RSS after", kib(report.server_rss_after_kib)),
        ("RSS per client", report::opt(report.server_rss_per_client_bytes, " bytes")),
        ("clu bytes received", report.client_list_bytes_received.to_string()),
        (
            "sessions",
            if report.in_sessions { report.sessions.to_string() } else { "none (all in WAIT)".to_owned() },
        ),
        ("generator CPU", format!("{:.2} s", report.generator_cpu_seconds.unwrap_or(0.0))),
        ("server CPU", report::opt(report.server_cpu_seconds, " s")),
    ];
    report::table("idle", &rows);
    if let Some(error) = &report.first_error {
        println!("  first error: {error}");
    }
}
