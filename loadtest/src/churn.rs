//! `churn`: while W clients sit in WAIT and a few pairs keep relaying, first clients join
//! and leave at a steady rate, then a burst of N joins (then N leaves) hits. How long
//! until every WAIT client holds the complete list (convergence), how many list bytes that
//! took, and what the storm did to relay latency.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Target;
use crate::fleet::{ClientEvent, Fleet};
use crate::pairs::Pairs;
use crate::report::{self, Latency, Transport};
use crate::wire;

#[derive(Clone, Debug)]
pub struct ChurnOptions {
    pub watchers: usize,
    pub pairs: usize,
    pub burst: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    /// Steady phase: joins per second (and, once `churn_population` are in, as many leaves).
    pub churn_rate: f64,
    pub churn_duration: Duration,
    pub churn_population: usize,
}

impl Default for ChurnOptions {
    fn default() -> Self {
        ChurnOptions {
            watchers: 100,
            pairs: 10,
            burst: 1000,
            concurrency: 500,
            timeout: Duration::from_secs(60),
            churn_rate: 100.0,
            churn_duration: Duration::from_secs(2),
            churn_population: 50,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Phase {
    /// From the first join (or the mass leave) until every WAIT client's latest list was
    /// complete.
    pub convergence_seconds: f64,
    pub client_lists_received: u64,
    pub client_list_bytes_received: u64,
}

/// The steady phase: clients joining and leaving at a set rate.
#[derive(Debug, Serialize)]
pub struct SteadyChurn {
    pub rate_per_second: f64,
    pub seconds: f64,
    pub joins: u64,
    pub leaves: u64,
    /// After the last churner left, until the watchers' lists were back to the base.
    pub convergence_seconds: f64,
    pub client_lists_received: u64,
    pub client_list_bytes_received: u64,
}

#[derive(Debug, Serialize)]
pub struct ChurnReport {
    #[serde(flatten)]
    pub transport: Transport,
    pub watchers: usize,
    pub pairs: usize,
    pub burst: usize,
    pub steady: SteadyChurn,
    pub join: Phase,
    pub leave: Phase,
    /// Relay latency of the pairs (window 1) during both phases.
    pub relay_latency: Latency,
    pub relay_lost: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Waiting {
    /// Entries in the latest list each WAIT client received.
    last_list_len: HashMap<usize, usize>,
    lists: u64,
    bytes: u64,
}

impl Waiting {
    fn converged(&self, clients: impl Iterator<Item = usize>, expected: usize) -> bool {
        let mut all = true;
        for key in clients {
            all &= self.last_list_len.get(&key) == Some(&expected);
        }
        all
    }
}

pub fn run(target: &Target, options: &ChurnOptions) -> io::Result<ChurnReport> {
    let mut fleet = Fleet::new(target)?;
    let prefix = format!("churn{}", std::process::id());
    let mut pairs = Pairs::new(options.pairs, &format!("{prefix}-p"), 1, 200);
    let mut events = Vec::new();
    let mut waiting = Waiting::default();
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let began = Instant::now();
    let deadline = |what: &str| {
        if began.elapsed() > options.timeout {
            Err(io::Error::other(format!("{what} did not finish within {:?}", options.timeout)))
        } else {
            Ok(())
        }
    };

    // Watchers and pairs.
    let mut watchers = Vec::new();
    for _ in 0..options.watchers {
        watchers.push(fleet.connect()?);
    }
    let mut registered = 0;
    let mut handle = |fleet: &mut Fleet,
                      pairs: &mut Pairs,
                      waiting: &mut Waiting,
                      registered: &mut usize,
                      key: usize,
                      event: ClientEvent,
                      now: Instant| {
        if pairs.on_event(fleet, key, &event, now) {
            return;
        }
        match event {
            ClientEvent::Opened => fleet.send(key, &format!(r#"{{"cmd":"sId","sId":"{prefix}-{key}"}}"#)),
            ClientEvent::Text(text) if wire::is_client_list(&text) => {
                waiting.last_list_len.insert(key, wire::list_len(&text));
                waiting.lists += 1;
                waiting.bytes += text.len() as u64;
            }
            ClientEvent::Text(text) if text.starts_with(r#"{"cmd":"sId""#) => *registered += 1,
            ClientEvent::Text(text) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{text:.100}"));
            }
            ClientEvent::Closed(code) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("a client was closed (code {code:?})"));
            }
        }
    };
    // One turn of the fleet, every event through `handle`; returns when the turn ended.
    let mut pump = |fleet: &mut Fleet,
                    pairs: &mut Pairs,
                    waiting: &mut Waiting,
                    registered: &mut usize,
                    timeout: Duration|
     -> io::Result<Instant> {
        fleet.turn(timeout, &mut events)?;
        let now = Instant::now();
        for (key, event) in events.drain(..) {
            handle(fleet, pairs, waiting, registered, key, event, now);
        }
        Ok(now)
    };
    while registered < options.watchers || !pairs.all_active() {
        deadline("setup")?;
        pairs.connect_more(&mut fleet)?;
        pump(&mut fleet, &mut pairs, &mut waiting, &mut registered, Duration::from_millis(10))?;
    }
    let base = options.watchers + 2 * options.pairs;
    // Let the setup's lists settle, with the pairs relaying.
    let warm = Instant::now();
    pairs.start(&mut fleet, warm, Duration::from_millis(300), options.timeout, None);
    while warm.elapsed() < Duration::from_millis(300) || !waiting.converged(watchers.iter().copied(), base) {
        deadline("settling")?;
        pump(&mut fleet, &mut pairs, &mut waiting, &mut registered, Duration::from_millis(5))?;
    }

    // Steady churn: one join every 1/rate s; past the population, the oldest churner leaves.
    let churn_started = Instant::now();
    let (lists_before, bytes_before) = (waiting.lists, waiting.bytes);
    let mut churners = std::collections::VecDeque::new();
    let (mut joins, mut leaves) = (0u64, 0u64);
    let interval = Duration::from_secs_f64(1.0 / options.churn_rate.max(0.001));
    let mut next_join = churn_started;
    while churn_started.elapsed() < options.churn_duration {
        deadline("steady churn")?;
        while next_join <= Instant::now() && churn_started.elapsed() < options.churn_duration {
            churners.push_back(fleet.connect()?);
            joins += 1;
            if churners.len() > options.churn_population
                && let Some(gone) = churners.pop_front()
            {
                fleet.drop_client(gone);
                waiting.last_list_len.remove(&gone);
                leaves += 1;
            }
            next_join += interval;
        }
        pump(&mut fleet, &mut pairs, &mut waiting, &mut registered, Duration::from_millis(2))?;
    }
    let churn_seconds = churn_started.elapsed().as_secs_f64();
    let last_left = Instant::now();
    for gone in churners.drain(..) {
        fleet.drop_client(gone);
        waiting.last_list_len.remove(&gone);
        leaves += 1;
    }
    let churn_done = loop {
        deadline("steady churn convergence")?;
        let now = pump(&mut fleet, &mut pairs, &mut waiting, &mut registered, Duration::from_millis(5))?;
        if waiting.converged(watchers.iter().copied(), base) {
            break now;
        }
    };
    let steady = SteadyChurn {
        rate_per_second: options.churn_rate,
        seconds: churn_seconds,
        joins,
        leaves,
        convergence_seconds: (churn_done - last_left).as_secs_f64(),
        client_lists_received: waiting.lists - lists_before,
        client_list_bytes_received: waiting.bytes - bytes_before,
    };

    // The burst of joins.
    let registered_before_burst = registered;
    let join_started = Instant::now();
    let (lists_before, bytes_before) = (waiting.lists, waiting.bytes);
    let mut burst = Vec::new();
    let expected = base + options.burst;
    let join_done = loop {
        deadline("join convergence")?;
        while burst.len() < options.burst
            && burst.len() < (registered - registered_before_burst) + options.concurrency
        {
            burst.push(fleet.connect()?);
        }
        let now = pump(&mut fleet, &mut pairs, &mut waiting, &mut registered, Duration::from_millis(5))?;
        if burst.len() == options.burst && waiting.converged(watchers.iter().chain(&burst).copied(), expected)
        {
            break now;
        }
    };
    let join = Phase {
        convergence_seconds: (join_done - join_started).as_secs_f64(),
        client_lists_received: waiting.lists - lists_before,
        client_list_bytes_received: waiting.bytes - bytes_before,
    };

    // Everybody from the burst leaves at once (TCP close, no close frame).
    let leave_started = Instant::now();
    let (lists_before, bytes_before) = (waiting.lists, waiting.bytes);
    for key in burst.drain(..) {
        fleet.drop_client(key);
        waiting.last_list_len.remove(&key);
    }
    let leave_done = loop {
        deadline("leave convergence")?;
        let now = pump(&mut fleet, &mut pairs, &mut waiting, &mut registered, Duration::from_millis(5))?;
        if waiting.converged(watchers.iter().copied(), base) {
            break now;
        }
    };
    let leave = Phase {
        convergence_seconds: (leave_done - leave_started).as_secs_f64(),
        client_lists_received: waiting.lists - lists_before,
        client_list_bytes_received: waiting.bytes - bytes_before,
    };
    pairs.stop_sending();
    let drain = Instant::now();
    while pairs.in_flight() > 0 && drain.elapsed() < Duration::from_secs(3) {
        pump(&mut fleet, &mut pairs, &mut waiting, &mut registered, Duration::from_millis(5))?;
    }
    Ok(ChurnReport {
        transport: Transport::of(&fleet),
        watchers: options.watchers,
        pairs: options.pairs,
        burst: options.burst,
        steady,
        join,
        leave,
        relay_latency: Latency::of(&pairs.latency_ns),
        relay_lost: pairs.lost(),
        errors: errors + pairs.errors,
        first_error: first_error.or(pairs.first_error.clone()),
    })
}

pub fn print(report: &ChurnReport) {
    let phase = |p: &Phase| {
        format!(
            "converged in {:.3} s; {} lists, {:.1} MB",
            p.convergence_seconds,
            p.client_lists_received,
            p.client_list_bytes_received as f64 / 1e6
        )
    };
    let rows = vec![
        ("transport", report.transport.row()),
        (
            "clients",
            format!(
                "{} watchers, {} relaying pairs, burst of {}",
                report.watchers, report.pairs, report.burst
            ),
        ),
        (
            "steady churn",
            format!(
                "{} joins, {} leaves in {:.1} s ({:.0}/s); back to the base list {:.3} s after the last left; {} lists, {:.1} MB",
                report.steady.joins,
                report.steady.leaves,
                report.steady.seconds,
                report.steady.rate_per_second,
                report.steady.convergence_seconds,
                report.steady.client_lists_received,
                report.steady.client_list_bytes_received as f64 / 1e6
            ),
        ),
        ("join burst", phase(&report.join)),
        ("mass leave", phase(&report.leave)),
        ("relay latency", report::latency_row(&report.relay_latency)),
        ("relay lost", report.relay_lost.to_string()),
        (
            "errors",
            format!(
                "{}{}",
                report.errors,
                report.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            ),
        ),
    ];
    report::table("churn", &rows);
}
