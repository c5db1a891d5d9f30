//! `relay`: P pairs in ACTIVE sessions send ICE candidates both ways; delivered messages/s,
//! latency, fairness, loss and reordering, and CPU per message.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Target;
use crate::fleet::Fleet;
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
}

/// How long in-flight messages may take to arrive after the window closes.
const DRAIN: Duration = Duration::from_secs(3);

pub fn run(target: &Target, options: &RelayOptions) -> io::Result<RelayReport> {
    let mut fleet = Fleet::new(target)?;
    let prefix = format!("relay{}", std::process::id());
    let mut pairs = Pairs::new(options.pairs, &prefix, options.window, options.payload_bytes);
    let mut events = Vec::new();
    let setup_started = Instant::now();

    // Connect, register, open sessions, call and accept.
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
            pairs.on_event(&mut fleet, key, &event, now);
        }
    }
    let setup_seconds = setup_started.elapsed().as_secs_f64();

    let start = Instant::now();
    pairs.start(&mut fleet, start, options.warmup, options.duration, options.rate);
    let mut meters: Option<(Instant, CpuMeter, Option<CpuMeter>)> = None;
    let mut measured: Option<(Duration, Option<Duration>, Option<Duration>)> = None;
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
            pairs.on_event(&mut fleet, key, &event, now);
        }
        if meters.is_none() && pairs.counting_started(now) {
            meters = Some((now, CpuMeter::start(std::process::id()), target.server_pid.map(CpuMeter::start)));
        }
        if measured.is_none() && pairs.window_over(now) {
            pairs.stop_sending();
            if let Some((began, generator, server)) = &meters {
                measured =
                    Some((now - *began, generator.elapsed(), server.as_ref().and_then(CpuMeter::elapsed)));
            }
            drain_until = Some(now + DRAIN);
        }
        if let Some(until) = drain_until
            && (pairs.in_flight() == 0 || now >= until)
        {
            break;
        }
    }

    let (wall, generator_cpu, server_cpu) = measured.unwrap_or((options.duration, None, None));
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
    ];
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
