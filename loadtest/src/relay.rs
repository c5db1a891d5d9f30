//! `relay`: P pairs in ACTIVE sessions send ICE candidates both ways; delivered messages/s,
//! latency, fairness, loss and reordering, and CPU per message. With `--idle N`, N more
//! clients sit idle in sessions the whole time (the server pings them every ping interval):
//! the relay's latency then shows what that housekeeping costs the active few.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Target;
use crate::fleet::Fleet;
use crate::idle::Crowd;
use crate::pairs::Pairs;
use crate::procfs::CpuMeter;
use crate::report::{self, Cpu, Latency, Transport};

#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub pairs: usize,
    pub window: u32,
    /// Open loop: messages/s offered over all clients. `None`: closed loop.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub payload_bytes: usize,
    /// Time allowed for connecting and setting up every session.
    pub setup_timeout: Duration,
    /// Idle clients connected, registered and paired into sessions before the pairs, and
    /// kept connected (answering pings) until the end.
    pub idle: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            pairs: 100,
            window: 32,
            rate: None,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            payload_bytes: 200,
            setup_timeout: Duration::from_secs(30),
            idle: 0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RelayReport {
    #[serde(flatten)]
    pub transport: Transport,
    pub pairs: usize,
    pub window: u32,
    pub offered_rate: Option<f64>,
    pub payload_bytes: usize,
    pub setup_seconds: f64,
    pub measured_seconds: f64,
    pub delivered: u64,
    pub delivered_per_second: f64,
    pub latency: Latency,
    /// Messages received per client in the window: min, median, max.
    pub per_client_min: u64,
    pub per_client_median: u64,
    pub per_client_max: u64,
    pub lost: u64,
    pub reordered: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Open loop: sends skipped because a direction had too many messages in flight.
    pub skipped_sends: u64,
    pub cpu: Cpu,
    /// Pings the server sent to any client (pairs and idle ones) in the measured window.
    pub pings_in_window: u64,
    /// `--idle N`: the idle clients next to the pairs.
    pub idle: IdleLoad,
}

/// The idle clients of `relay --idle N`, in sessions (so they get no client lists).
#[derive(Debug, Serialize)]
pub struct IdleLoad {
    pub clients: usize,
    pub registered: usize,
    pub sessions: usize,
    /// Clients that did not register.
    pub failed: u64,
    /// Registered idle clients that got an error or lost their connection (during the run
    /// too).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Connecting, registering and pairing them, before the pairs' setup.
    pub setup_seconds: f64,
    pub client_list_bytes_received: u64,
}

/// Idle clients' handshakes in flight at once (as in the `idle` mode).
const IDLE_CONNECTS_IN_FLIGHT: usize = 100;

/// How long in-flight messages may take to arrive after the window closes.
const DRAIN: Duration = Duration::from_secs(3);

pub fn run(target: &Target, options: &RelayOptions) -> io::Result<RelayReport> {
    let mut fleet = Fleet::new(target)?;
    let prefix = format!("relay{}", std::process::id());
    let mut pairs = Pairs::new(options.pairs, &prefix, options.window, options.payload_bytes);
    let mut crowd = Crowd::new(options.idle, IDLE_CONNECTS_IN_FLIGHT, true, format!("{prefix}-idle"));
    let mut events = Vec::new();

    // The idle clients first: connected, registered and in sessions.
    let idle_started = Instant::now();
    while !crowd.ready() {
        if idle_started.elapsed() > options.setup_timeout {
            return Err(io::Error::other(format!(
                "{} of {} idle clients registered, {} sessions, within {:?} (first error: {:?})",
                crowd.registered, options.idle, crowd.sessions, options.setup_timeout, crowd.first_error
            )));
        }
        crowd.connect_more(&mut fleet)?;
        fleet.turn(Duration::from_millis(10), &mut events)?;
        for (key, event) in events.drain(..) {
            crowd.on_event(&mut fleet, key, &event);
        }
    }
    let idle_setup_seconds = idle_started.elapsed().as_secs_f64();

    // Connect, register, open sessions, call and accept.
    let setup_started = Instant::now();
    while !pairs.all_active() {
        if setup_started.elapsed() > options.setup_timeout {
            return Err(io::Error::other(format!(
                "sessions not set up within {:?} ({} errors; first: {:?})",
                options.setup_timeout, pairs.errors, pairs.first_error
            )));
        }
        pairs.connect_more(&mut fleet)?;
        fleet.turn(Duration::from_millis(10), &mut events)?;
        let now = Instant::now();
        for (key, event) in events.drain(..) {
            if !pairs.on_event(&mut fleet, key, &event, now) {
                crowd.on_event(&mut fleet, key, &event);
            }
        }
    }
    let setup_seconds = setup_started.elapsed().as_secs_f64();

    let start = Instant::now();
    pairs.start(&mut fleet, start, options.warmup, options.duration, options.rate);
    let mut meters: Option<(Instant, CpuMeter, Option<CpuMeter>, u64)> = None;
    let mut measured: Option<(Duration, Option<Duration>, Option<Duration>, u64)> = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let next_send = pairs.pump(&mut fleet, now);
        let timeout = next_send
            .map_or(Duration::from_millis(5), |due| due.saturating_duration_since(now))
            .min(Duration::from_millis(5));
        fleet.turn(timeout, &mut events)?;
        let now = Instant::now();
        for (key, event) in events.drain(..) {
            if !pairs.on_event(&mut fleet, key, &event, now) {
                crowd.on_event(&mut fleet, key, &event);
            }
        }
        if meters.is_none() && pairs.counting_started(now) {
            let (generator, server) =
                (CpuMeter::start(std::process::id()), target.server_pid.map(CpuMeter::start));
            meters = Some((now, generator, server, fleet.pings_in));
        }
        if measured.is_none() && pairs.window_over(now) {
            pairs.stop_sending();
            if let Some((began, generator, server, pings)) = &meters {
                measured = Some((
                    now - *began,
                    generator.elapsed(),
                    server.as_ref().and_then(CpuMeter::elapsed),
                    fleet.pings_in - pings,
                ));
            }
            drain_until = Some(now + DRAIN);
        }
        if let Some(until) = drain_until
            && (pairs.in_flight() == 0 || now >= until)
        {
            break;
        }
    }

    let (wall, generator_cpu, server_cpu, pings_in_window) =
        measured.unwrap_or((options.duration, None, None, 0));
    let delivered = pairs.delivered();
    let wall_s = wall.as_secs_f64().max(1e-9);
    let (min, median, max) = pairs.fairness();
    Ok(RelayReport {
        transport: Transport::of(&fleet),
        pairs: options.pairs,
        window: options.window,
        offered_rate: options.rate,
        payload_bytes: options.payload_bytes,
        setup_seconds,
        measured_seconds: wall_s,
        delivered,
        delivered_per_second: delivered as f64 / wall_s,
        latency: Latency::of(&pairs.latency_ns),
        per_client_min: min,
        per_client_median: median,
        per_client_max: max,
        lost: pairs.lost(),
        reordered: pairs.reordered,
        errors: pairs.errors,
        first_error: pairs.first_error.clone(),
        skipped_sends: pairs.skipped_open_loop,
        cpu: Cpu {
            generator_percent: generator_cpu.map_or(0.0, |cpu| 100.0 * cpu.as_secs_f64() / wall_s),
            server_percent: server_cpu.map(|cpu| 100.0 * cpu.as_secs_f64() / wall_s),
            server_us_per_message: server_cpu
                .filter(|_| delivered > 0)
                .map(|cpu| cpu.as_secs_f64() * 1e6 / delivered as f64),
        },
        pings_in_window,
        idle: IdleLoad {
            clients: options.idle,
            registered: crowd.registered,
            sessions: crowd.sessions,
            failed: crowd.failed,
            errors: crowd.errors,
            first_error: crowd.first_error.clone(),
            setup_seconds: idle_setup_seconds,
            client_list_bytes_received: crowd.list_bytes,
        },
    })
}

pub fn print(report: &RelayReport) {
    let mode = match report.offered_rate {
        Some(rate) => format!("open loop, {rate:.0} msg/s offered"),
        None => format!("closed loop, window {}", report.window),
    };
    let mut rows = vec![
        ("transport", report.transport.row()),
        ("pairs", format!("{} ({mode}, {}-byte payloads)", report.pairs, report.payload_bytes)),
        ("setup", format!("{:.2} s", report.setup_seconds)),
        ("measured", format!("{:.2} s", report.measured_seconds)),
        ("delivered", format!("{} messages, {:.0} msg/s", report.delivered, report.delivered_per_second)),
        ("latency", report::latency_row(&report.latency)),
        (
            "per client",
            format!(
                "min {} / median {} / max {}",
                report.per_client_min, report.per_client_median, report.per_client_max
            ),
        ),
        ("lost / reordered", format!("{} / {}", report.lost, report.reordered)),
        (
            "errors",
            format!(
                "{}{}",
                report.errors,
                report.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            ),
        ),
        ("server CPU / message", report::opt(report.cpu.server_us_per_message, " µs")),
        ("server CPU", report::opt(report.cpu.server_percent, " %")),
        ("generator CPU", format!("{:.1} %", report.cpu.generator_percent)),
        ("pings received", format!("{} in the measured window (all clients)", report.pings_in_window)),
    ];
    let idle = &report.idle;
    if idle.clients > 0 {
        rows.push((
            "idle clients",
            format!(
                "{} registered of {}, {} sessions, {} failed, {} errors, set up in {:.2} s",
                idle.registered, idle.clients, idle.sessions, idle.failed, idle.errors, idle.setup_seconds
            ),
        ));
        if let Some(error) = &idle.first_error {
            rows.push(("idle first error", error.clone()));
        }
    }
    if report.skipped_sends > 0 {
        rows.push((
            "skipped sends",
            format!("{} (a direction had too many in flight)", report.skipped_sends),
        ));
    }
    if let Some(warning) = report::generator_warning(&report.cpu) {
        rows.push(("warning", warning));
    }
    report::table("relay", &rows);
}
