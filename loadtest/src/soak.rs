//! `soak`: for a fixed time, up to N connections churn in a random order driven by a
//! seeded RNG: they connect, register, open sessions with each other and relay through
//! them, send garbage (invalid JSON, binary junk, wrong shapes, oversized, badly encoded,
//! malformed and truncated frames), and leave abruptly (TCP close without a close frame)
//! or cleanly. Then every connection is gone and the server must be back where an idle
//! server is: its own `/metrics` must show no registered client, no session and no open
//! connection but the metrics request, and (with --server-pid) its resident memory must
//! not have grown past a stated tolerance over a warm-up round of the same load.
//!
//! Each client acts at most every 20 ms (about 12 commands/s on average), far below the
//! default rate limit, so the run needs no server flag: default limits must hold.
//! Every loop is bounded in count and time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Target;
use crate::fleet::{ClientEvent, Fleet};
use crate::procfs;
use crate::report::{self, Transport};
use crate::tls;
use crate::wire;

#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// Connections open at once, at most.
    pub clients: usize,
    /// The measured soak.
    pub duration: Duration,
    /// A round of the same load before the start values are read, so that the server's
    /// buffers, tables and allocator have reached their working size (0: none). At 3000
    /// clients the server's RSS takes about 8 s to get there; a 3 s warm-up made a 60 s
    /// soak look like 5.7 MiB of growth that was only the ramp.
    pub warmup: Duration,
    pub seed: u64,
    /// How long the server may take to get back to idle after the last connection ended.
    pub settle: Duration,
    /// Handshakes in flight at once.
    pub connects_in_flight: usize,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            clients: 2000,
            duration: Duration::from_secs(30),
            warmup: Duration::from_secs(10),
            seed: 1,
            settle: Duration::from_secs(10),
            connects_in_flight: 256,
        }
    }
}

/// Resident memory may grow this much (percent of the start value, plus a constant) before
/// the run counts as leaking: allocator arenas and table capacities are not returned.
pub const RSS_TOLERANCE_PERCENT: u64 = 20;
pub const RSS_TOLERANCE_KIB: u64 = 2048;

/// The server's own gauges, from `GET /metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Gauges {
    pub clients_registered: u64,
    pub sessions_new: u64,
    pub sessions_pending: u64,
    pub sessions_active: u64,
    /// Includes the connection the metrics request itself came on.
    pub connections_open: u64,
}

impl Gauges {
    /// No client, no session, no connection but the one asking.
    pub fn idle(&self) -> bool {
        self.clients_registered == 0
            && self.sessions_new + self.sessions_pending + self.sessions_active == 0
            && self.connections_open <= 1
    }
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    #[serde(flatten)]
    pub transport: Transport,
    pub clients: usize,
    pub seed: u64,
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
    pub connections_opened: u64,
    pub peak_connections: usize,
    /// What the clients did, by kind (warm-up included).
    pub operations: BTreeMap<&'static str, u64>,
    pub operations_total: u64,
    /// Server messages received, by `cmd`.
    pub received: BTreeMap<&'static str, u64>,
    /// `error` messages received, by code.
    pub errors_by_code: BTreeMap<u16, u64>,
    /// Close frames the server sent, by code ("none": the TCP connection just ended).
    pub server_closes_by_code: BTreeMap<String, u64>,
    /// Things the soak did not provoke: a close of a client that broke no rule, a wrong
    /// close code, error 9500 (rate limit), a refused connection, a missing close reply.
    pub unexpected: u64,
    pub first_unexpected: Option<String>,
    /// The server's gauges once idle after the warm-up, and at the end.
    pub server_after_warmup: Option<Gauges>,
    pub server_end: Option<Gauges>,
    /// From the last connection's end until `/metrics` showed an idle server.
    pub settle_seconds: Option<f64>,
    /// `signaling_connections_closed_total` by reason at the end (warm-up included).
    pub server_closed_by_reason: BTreeMap<String, u64>,
    pub server_rss_start_kib: Option<u64>,
    pub server_rss_end_kib: Option<u64>,
    pub server_rss_growth_kib: Option<i64>,
    pub server_rss_tolerance_kib: Option<u64>,
    /// The highest RSS seen under load (sampled twice a second), in the warm-up and in
    /// the soak: memory that comes back after the load is working set, not a leak.
    pub server_rss_peak_warmup_kib: Option<u64>,
    pub server_rss_peak_soak_kib: Option<u64>,
    /// The load tester's own CPU use over the run, percent of one core.
    pub generator_cpu_percent: f64,
    /// The server's CPU use during the soak, percent of one core (with --server-pid).
    /// Near 100: the server is saturated, handshakes queue and fewer clients are live.
    pub server_cpu_percent: Option<f64>,
    /// The verdict: the server did not get back to idle, or its memory grew past the
    /// tolerance.
    pub leaked: bool,
    /// Why `leaked` is what it is.
    pub verdict: Vec<String>,
}

/// A small xorshift64* generator: the soak's only source of randomness.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 spreads small seeds over the state; the state must not be 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    /// One of `choices`, with probability proportional to its weight.
    pub fn weighted<T: Copy>(&mut self, choices: &[(T, u32)]) -> T {
        let total: u64 = choices.iter().map(|&(_, w)| u64::from(w)).sum();
        let mut at = self.below(total);
        for &(choice, weight) in choices {
            if at < u64::from(weight) {
                return choice;
            }
            at -= u64::from(weight);
        }
        choices[choices.len() - 1].0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// How a client leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// TCP close without a close frame.
    Drop,
    /// Close handshake.
    Clean,
    /// A message past the size limit: close 1009.
    Oversized,
    /// Bad UTF-8 in a text frame: close 1007.
    BadUtf8,
    /// A frame that breaks RFC 6455: close 1002.
    ProtocolError,
    /// Half a frame, then TCP close.
    Truncated,
}

impl Ending {
    fn name(self) -> &'static str {
        match self {
            Ending::Drop => "leave_drop",
            Ending::Clean => "leave_close",
            Ending::Oversized => "leave_oversized",
            Ending::BadUtf8 => "leave_bad_utf8",
            Ending::ProtocolError => "leave_protocol_error",
            Ending::Truncated => "leave_truncated",
        }
    }

    /// The close code the server must answer with, if it answers.
    fn expected_code(self) -> Option<u16> {
        match self {
            Ending::Oversized => Some(1009),
            Ending::BadUtf8 => Some(1007),
            Ending::ProtocolError => Some(1002),
            Ending::Clean => Some(1000),
            Ending::Drop | Ending::Truncated => None,
        }
    }
}

const ENDINGS: [(Ending, u32); 6] = [
    (Ending::Drop, 35),
    (Ending::Clean, 30),
    (Ending::Oversized, 8),
    (Ending::BadUtf8, 9),
    (Ending::ProtocolError, 9),
    (Ending::Truncated, 9),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Upgraded, registration sent or about to be.
    Registering,
    Registered,
    /// Leaving the way it says; waiting for the server's close (bounded).
    Leaving(Ending),
}

/// What a client does when its timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Act,
    Register,
    /// Close the socket now (after a truncated frame was written, or mid-handshake).
    DropNow,
    /// The server did not answer a close or a fatal frame in time.
    ForceDrop,
    HandshakeTimeout,
}

struct Soaker {
    generation: u64,
    sid: String,
    phase: Phase,
    session: Option<String>,
    got_call: bool,
    /// Actions left before leaving.
    budget: u32,
    due: Instant,
    step: Step,
}

/// Registered actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Session,
    Call,
    Accept,
    Candidate,
    Stop,
    Reject,
    Notify,
    RegisterAgain,
    BadJson,
    BinaryJunk,
    BadShape,
    UnknownSession,
    Wait,
}

const IN_WAIT: [(Action, u32); 8] = [
    (Action::Session, 40),
    (Action::Notify, 14),
    (Action::RegisterAgain, 3),
    (Action::BadJson, 5),
    (Action::BinaryJunk, 5),
    (Action::BadShape, 6),
    (Action::UnknownSession, 4),
    (Action::Wait, 10),
];

const IN_SESSION: [(Action, u32); 11] = [
    (Action::Call, 16),
    (Action::Accept, 14),
    (Action::Candidate, 34),
    (Action::Stop, 8),
    (Action::Reject, 4),
    (Action::Notify, 6),
    (Action::BadJson, 2),
    (Action::BinaryJunk, 2),
    (Action::BadShape, 2),
    (Action::UnknownSession, 2),
    (Action::Wait, 6),
];

const BAD_JSON: [&str; 9] = [
    r#"{"cmd":"sId""#,
    "not json at all",
    r#"{"cmd":"notify",,}"#,
    "}{",
    r#"{"cmd":"icecandidate","sessionId":"x","icecandidate":{"candidate":"#,
    "",
    "   ",
    r#"{"cmd":tru}"#,
    "\u{feff}{\"cmd\":\"stop\"}",
];

const BAD_SHAPES: [&str; 12] = [
    "[1,2,3]",
    "42",
    r#""cmd""#,
    "{}",
    r#"{"cmd":5}"#,
    r#"{"cmd":null}"#,
    r#"{"cmd":"clu"}"#,
    r#"{"cmd":"launch","target":"moon"}"#,
    r#"{"cmd":"session"}"#,
    r#"{"cmd":"notify","opponentId":"nobody-at-all"}"#,
    r#"{"cmd":"call","sessionId":"s"}"#,
    r#"{"cmd":"session","opponentId":"0123456789012345678901234567890123456789012345678901234567890123456789"}"#,
];

const NOTIFY_DATA: [&str; 6] = [
    "null",
    "42",
    r#""text""#,
    r#"{"nested":[1,2,{"x":"é\u00e9\n"}],"ok":true}"#,
    r#""\ud83d\ude00 \u0000""#,
    "[]",
];

/// Each client acts this often (uniform, milliseconds).
const ACT_INTERVAL_MS: (u64, u64) = (20, 150);
/// Actions before a client leaves (uniform).
const BUDGET: (u64, u64) = (3, 40);
/// A close or a fatal frame must be answered within this.
const CLOSE_PATIENCE: Duration = Duration::from_secs(3);
const HANDSHAKE_PATIENCE: Duration = Duration::from_secs(10);
/// After the last phase, clients still leaving get this long before they are dropped.
const WIND_DOWN: Duration = Duration::from_secs(3);
/// Handshakes started per turn, at most.
const CONNECTS_PER_TURN: usize = 64;
/// Timers handled per turn, at most (the rest wait for the next turn).
const TIMERS_PER_TURN: usize = 50_000;

struct Soak<'a> {
    options: &'a SoakOptions,
    fleet: Fleet,
    rng: Rng,
    prefix: String,
    clients: Vec<Option<Soaker>>,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    live: usize,
    handshaking: usize,
    next_generation: u64,
    stopping: bool,
    connections_opened: u64,
    peak: usize,
    operations: BTreeMap<&'static str, u64>,
    received: BTreeMap<&'static str, u64>,
    errors: BTreeMap<u16, u64>,
    closes: BTreeMap<String, u64>,
    unexpected: u64,
    first_unexpected: Option<String>,
    server_pid: Option<u32>,
    rss_peak: Option<u64>,
}

pub fn run(target: &Target, options: &SoakOptions) -> io::Result<SoakReport> {
    let generator = procfs::CpuMeter::start(std::process::id());
    let began = Instant::now();
    let mut soak = Soak {
        options,
        fleet: Fleet::new(target)?,
        rng: Rng::new(options.seed),
        prefix: format!("soak{}", std::process::id()),
        clients: Vec::new(),
        timers: BinaryHeap::new(),
        live: 0,
        handshaking: 0,
        next_generation: 0,
        stopping: false,
        connections_opened: 0,
        peak: 0,
        operations: BTreeMap::new(),
        received: BTreeMap::new(),
        errors: BTreeMap::new(),
        closes: BTreeMap::new(),
        unexpected: 0,
        first_unexpected: None,
        server_pid: target.server_pid,
        rss_peak: None,
    };
    let mut verdict = Vec::new();

    let mut server_after_warmup = None;
    let mut rss_peak_warmup = None;
    if !options.warmup.is_zero() {
        rss_peak_warmup = soak.churn(options.warmup)?;
        soak.wind_down()?;
        let (gauges, _) = settle(target, options.settle);
        match &gauges {
            Some(g) if g.idle() => {}
            Some(g) => verdict.push(format!("not idle {:?} after the warm-up: {g:?}", options.settle)),
            None => verdict.push("cannot read /metrics after the warm-up".to_owned()),
        }
        server_after_warmup = gauges;
    }
    let rss_start = target.server_pid.and_then(procfs::rss_kib);

    let measured = Instant::now();
    let server_cpu = target.server_pid.map(procfs::CpuMeter::start);
    let rss_peak_soak = soak.churn(options.duration)?;
    let duration_seconds = measured.elapsed().as_secs_f64();
    let server_cpu_percent = server_cpu
        .and_then(|meter| meter.elapsed())
        .map(|cpu| 100.0 * cpu.as_secs_f64() / duration_seconds.max(1e-9));
    soak.wind_down()?;
    let (server_end, settle_seconds) = settle(target, options.settle);
    let rss_end = target.server_pid.and_then(procfs::rss_kib);
    let server_closed_by_reason = fetch_metrics(target)
        .map(|text| {
            labelled(&text, "signaling_connections_closed_total{reason=\"")
                .into_iter()
                .filter(|&(_, v)| v > 0)
                .collect()
        })
        .unwrap_or_default();

    match &server_end {
        Some(g) if g.idle() => verdict.push(format!(
            "idle after {:.2} s: no client registered, no session, no connection left",
            settle_seconds.unwrap_or(0.0)
        )),
        Some(g) => {
            verdict.push(format!("NOT idle {:?} after the last connection ended: {g:?}", options.settle))
        }
        None => verdict.push("cannot read /metrics at the end".to_owned()),
    }
    if soak.unexpected > 0 {
        // Not a leak, but worth a look: the server did something the soak did not provoke.
        verdict.push(format!(
            "{} unexpected event(s), first: {}",
            soak.unexpected,
            soak.first_unexpected.as_deref().unwrap_or("?")
        ));
    }
    let server_end_idle = server_end.as_ref().is_some_and(Gauges::idle);
    let warmup_idle = options.warmup.is_zero() || server_after_warmup.as_ref().is_some_and(Gauges::idle);
    let (growth, tolerance) = match (rss_start, rss_end) {
        (Some(start), Some(end)) => {
            (Some(end as i64 - start as i64), Some(start * RSS_TOLERANCE_PERCENT / 100 + RSS_TOLERANCE_KIB))
        }
        _ => (None, None),
    };
    let rss_ok = match (growth, tolerance) {
        (Some(growth), Some(tolerance)) => {
            let ok = growth <= tolerance as i64;
            verdict.push(format!(
                "RSS grew {growth} KiB (tolerance {tolerance} KiB = {RSS_TOLERANCE_PERCENT}% of the start + {RSS_TOLERANCE_KIB} KiB){}",
                if ok { "" } else { ": TOO MUCH" }
            ));
            ok
        }
        _ => {
            verdict.push("RSS not checked (give --server-pid)".to_owned());
            true
        }
    };
    let wall = began.elapsed().as_secs_f64().max(1e-9);
    Ok(SoakReport {
        transport: Transport::of(&soak.fleet),
        clients: options.clients,
        seed: options.seed,
        warmup_seconds: options.warmup.as_secs_f64(),
        duration_seconds,
        connections_opened: soak.connections_opened,
        peak_connections: soak.peak,
        operations_total: soak.operations.values().sum(),
        operations: soak.operations,
        received: soak.received,
        errors_by_code: soak.errors,
        server_closes_by_code: soak.closes,
        unexpected: soak.unexpected,
        first_unexpected: soak.first_unexpected,
        server_after_warmup,
        server_end,
        settle_seconds,
        server_closed_by_reason,
        server_rss_start_kib: rss_start,
        server_rss_end_kib: rss_end,
        server_rss_growth_kib: growth,
        server_rss_tolerance_kib: tolerance,
        server_rss_peak_warmup_kib: rss_peak_warmup,
        server_rss_peak_soak_kib: rss_peak_soak,
        generator_cpu_percent: generator.elapsed().map_or(0.0, |cpu| 100.0 * cpu.as_secs_f64() / wall),
        server_cpu_percent,
        leaked: !(server_end_idle && warmup_idle && rss_ok),
        verdict,
    })
}

impl Soak<'_> {
    fn op(&mut self, kind: &'static str) {
        *self.operations.entry(kind).or_default() += 1;
    }

    fn note_unexpected(&mut self, what: String) {
        self.unexpected += 1;
        self.first_unexpected.get_or_insert(what);
    }

    fn client(&mut self, key: usize) -> Option<&mut Soaker> {
        self.clients.get_mut(key).and_then(Option::as_mut)
    }

    fn schedule(&mut self, key: usize, at: Instant, step: Step) {
        let Some(client) = self.client(key) else { return };
        client.due = at;
        client.step = step;
        let generation = client.generation;
        self.timers.push(Reverse((at, key, generation)));
    }

    fn act_later(&mut self, key: usize, now: Instant) {
        let ms = self.rng.between(ACT_INTERVAL_MS.0, ACT_INTERVAL_MS.1);
        self.schedule(key, now + Duration::from_millis(ms), Step::Act);
    }

    /// Keeps up to `clients` connections churning for `length`. Returns the server's peak
    /// RSS meanwhile (with its pid).
    fn churn(&mut self, length: Duration) -> io::Result<Option<u64>> {
        self.stopping = false;
        self.rss_peak = None;
        let until = Instant::now() + length;
        let mut next_sample = Instant::now();
        let mut events = Vec::new();
        loop {
            let now = Instant::now();
            if now >= next_sample {
                next_sample = now + Duration::from_millis(500);
                let rss = self.server_pid.and_then(procfs::rss_kib);
                self.rss_peak = self.rss_peak.max(rss);
            }
            if now >= until {
                return Ok(self.rss_peak);
            }
            self.connect_more(now);
            self.turn(&mut events)?;
        }
    }

    /// Every client leaves (abruptly or cleanly); bounded by `WIND_DOWN`.
    fn wind_down(&mut self) -> io::Result<()> {
        self.stopping = true;
        let now = Instant::now();
        for key in 0..self.clients.len() {
            let Some(client) = self.client(key) else { continue };
            match client.phase {
                Phase::Connecting => self.schedule(key, now, Step::DropNow),
                Phase::Registering | Phase::Registered => self.schedule(key, now, Step::Act),
                Phase::Leaving(_) => {}
            }
        }
        let until = now + WIND_DOWN;
        let mut events = Vec::new();
        while self.live > 0 && Instant::now() < until {
            self.turn(&mut events)?;
        }
        for key in 0..self.clients.len() {
            if self.client(key).is_some() {
                self.note_unexpected(format!(
                    "client {key} still connected {WIND_DOWN:?} after the wind-down began"
                ));
                self.remove(key);
            }
        }
        Ok(())
    }

    fn connect_more(&mut self, now: Instant) {
        let mut started = 0;
        while self.live < self.options.clients
            && self.handshaking < self.options.connects_in_flight
            && started < CONNECTS_PER_TURN
        {
            started += 1;
            let key = match self.fleet.connect() {
                Ok(key) => key,
                Err(e) => {
                    self.note_unexpected(format!("connect failed: {e}"));
                    return;
                }
            };
            self.op("connect");
            self.connections_opened += 1;
            self.live += 1;
            self.handshaking += 1;
            self.peak = self.peak.max(self.live);
            self.next_generation += 1;
            if self.clients.len() <= key {
                self.clients.resize_with(key + 1, || None);
            }
            let sid = format!("{}-{}", self.prefix, self.next_generation);
            self.clients[key] = Some(Soaker {
                generation: self.next_generation,
                sid,
                phase: Phase::Connecting,
                session: None,
                got_call: false,
                budget: self.rng.between(BUDGET.0, BUDGET.1) as u32,
                due: now,
                step: Step::HandshakeTimeout,
            });
            if self.rng.percent(3) {
                // Gone before (or right as) the upgrade completes.
                self.op("drop_in_handshake");
                let ms = self.rng.below(5);
                self.schedule(key, now + Duration::from_millis(ms), Step::DropNow);
            } else {
                self.schedule(key, now + HANDSHAKE_PATIENCE, Step::HandshakeTimeout);
            }
        }
    }

    /// One fleet turn, its events, and the timers that are due.
    fn turn(&mut self, events: &mut Vec<(usize, ClientEvent)>) -> io::Result<()> {
        let wait = self
            .timers
            .peek()
            .map_or(Duration::from_millis(5), |Reverse((at, ..))| {
                at.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(5));
        self.fleet.turn(wait, events)?;
        let now = Instant::now();
        for (key, event) in events.drain(..) {
            self.on_event(key, event, now);
        }
        for _ in 0..TIMERS_PER_TURN {
            match self.timers.peek() {
                Some(Reverse((at, ..))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((at, key, generation))) = self.timers.pop() else { break };
            let Some(client) = self.client(key) else { continue };
            if client.generation != generation || client.due != at {
                continue;
            }
            let step = client.step;
            self.on_timer(key, step, now);
        }
        Ok(())
    }

    fn remove(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key).and_then(Option::take) else { return };
        if client.phase == Phase::Connecting {
            self.handshaking -= 1;
        }
        self.live -= 1;
        self.fleet.drop_client(key);
    }

    fn on_timer(&mut self, key: usize, step: Step, now: Instant) {
        match step {
            Step::DropNow => self.remove(key),
            Step::ForceDrop => {
                let phase = self.client(key).map(|c| c.phase);
                self.note_unexpected(format!("no close from the server {CLOSE_PATIENCE:?} after {phase:?}"));
                self.remove(key);
            }
            Step::HandshakeTimeout => {
                let phase = self.client(key).map(|c| c.phase);
                self.note_unexpected(format!(
                    "no upgrade or registration answer within {HANDSHAKE_PATIENCE:?} ({phase:?})"
                ));
                self.remove(key);
            }
            Step::Register => self.register(key, now),
            Step::Act => self.act(key, now),
        }
    }

    fn register(&mut self, key: usize, now: Instant) {
        let Some(client) = self.client(key) else { return };
        let text = format!(r#"{{"cmd":"sId","sId":"{}"}}"#, client.sid);
        self.fleet.send(key, &text);
        self.op("register");
        // Registration is answered (sId or an error); the next step follows the answer.
        self.schedule(key, now + HANDSHAKE_PATIENCE, Step::HandshakeTimeout);
    }

    fn on_opened(&mut self, key: usize, now: Instant) {
        let Some(client) = self.client(key) else { return };
        if client.phase != Phase::Connecting {
            return;
        }
        client.phase = Phase::Registering;
        let dropping = client.step == Step::DropNow;
        self.handshaking -= 1;
        if dropping {
            // Its drop is already scheduled.
            return;
        }
        if self.stopping {
            self.leave(key, Ending::Drop, now);
            return;
        }
        match self.rng.below(100) {
            0..4 => {
                // Upgraded, never registered, gone.
                self.op("drop_unregistered");
                self.remove(key);
            }
            4..8 => {
                // A command before registering: 9100, then registration.
                // The 9100 answer triggers the registration.
                self.fleet.send(key, r#"{"cmd":"session","opponentId":"someone"}"#);
                self.op("command_before_register");
                self.schedule(key, now + HANDSHAKE_PATIENCE, Step::HandshakeTimeout);
            }
            8..12 => {
                // Someone else's sId: 9102 (or it is ours if they just left).
                let Some(taken) = self.random_registered(key, false) else {
                    self.register(key, now);
                    return;
                };
                let text = format!(r#"{{"cmd":"sId","sId":"{taken}"}}"#);
                self.fleet.send(key, &text);
                self.op("register_taken");
                self.schedule(key, now + HANDSHAKE_PATIENCE, Step::HandshakeTimeout);
            }
            _ => self.register(key, now),
        }
    }

    /// The sId of a random registered client other than `key` (in WAIT if `waiting`);
    /// a few tries, so a sparse table may give none.
    fn random_registered(&mut self, key: usize, waiting: bool) -> Option<String> {
        for _ in 0..8 {
            let other = self.rng.below(self.clients.len() as u64) as usize;
            if other == key {
                continue;
            }
            if let Some(Some(c)) = self.clients.get(other)
                && c.phase == Phase::Registered
                && (!waiting || c.session.is_none())
            {
                return Some(c.sid.clone());
            }
        }
        None
    }

    fn act(&mut self, key: usize, now: Instant) {
        let Some(client) = self.client(key) else { return };
        let (phase, budget) = (client.phase, client.budget);
        let (session, got_call, sid) = (client.session.clone(), client.got_call, client.sid.clone());
        match phase {
            Phase::Registering | Phase::Registered if self.stopping => {
                let ending = if self.rng.percent(50) { Ending::Drop } else { Ending::Clean };
                self.leave(key, ending, now);
                return;
            }
            Phase::Registered => {}
            // Waiting for the registration answer (its timeout is the timer), or leaving.
            Phase::Connecting | Phase::Registering | Phase::Leaving(_) => return,
        }
        if budget == 0 {
            let ending = self.rng.weighted(&ENDINGS);
            self.leave(key, ending, now);
            return;
        }
        if let Some(client) = self.client(key) {
            client.budget -= 1;
        }
        let action =
            if session.is_some() { self.rng.weighted(&IN_SESSION) } else { self.rng.weighted(&IN_WAIT) };
        let session_id = session.as_deref().unwrap_or("");
        let mut text = String::new();
        let kind = match action {
            Action::Session => match self.random_registered(key, true) {
                Some(other) => {
                    text = format!(r#"{{"cmd":"session","opponentId":"{other}"}}"#);
                    "session"
                }
                None => "wait",
            },
            Action::Call => {
                text = format!(
                    r#"{{"cmd":"call","sessionId":"{session_id}","offer":{{"type":"offer","sdp":"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}}}}"#
                );
                "call"
            }
            Action::Accept if got_call => {
                text = format!(
                    r#"{{"cmd":"accept","sessionId":"{session_id}","answer":{{"type":"answer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"}}}}"#
                );
                "accept"
            }
            Action::Accept | Action::Candidate => {
                let n = self.rng.below(1 << 16);
                text = if self.rng.percent(10) {
                    format!(r#"{{"cmd":"icecandidate","sessionId":"{session_id}","icecandidate":null}}"#)
                } else {
                    format!(
                        r#"{{"cmd":"icecandidate","sessionId":"{session_id}","icecandidate":{{"candidate":"candidate:{n} 1 udp 2122260223 192.0.2.{} {n} typ host","sdpMid":"0","sdpMLineIndex":0}}}}"#,
                        n % 250
                    )
                };
                "icecandidate"
            }
            Action::Stop => {
                text = format!(r#"{{"cmd":"stop","sessionId":"{session_id}"}}"#);
                "stop"
            }
            Action::Reject => {
                text = format!(r#"{{"cmd":"reject","sessionId":"{session_id}"}}"#);
                "reject"
            }
            Action::Notify => {
                let to = match self.rng.below(10) {
                    0 => sid.clone(),
                    1 => format!("{}-nobody", self.prefix),
                    _ => self.random_registered(key, false).unwrap_or_else(|| sid.clone()),
                };
                let data = *self.rng.pick(&NOTIFY_DATA);
                text = format!(r#"{{"cmd":"notify","opponentId":"{to}","type":"ring","data":{data}}}"#);
                "notify"
            }
            Action::RegisterAgain => {
                text = format!(r#"{{"cmd":"sId","sId":"{sid}-again"}}"#);
                "register_again"
            }
            Action::BadJson => {
                let junk = *self.rng.pick(&BAD_JSON);
                text.push_str(junk);
                if text.is_empty() {
                    // An empty message is still a message.
                    text.push(' ');
                }
                "garbage_json"
            }
            Action::BadShape => {
                let shape = *self.rng.pick(&BAD_SHAPES);
                text.push_str(shape);
                "garbage_shape"
            }
            Action::BinaryJunk => {
                let bytes = if self.rng.percent(30) {
                    format!(r#"{{"cmd":"notify","opponentId":"{sid}","type":"binary"}}"#).into_bytes()
                } else {
                    let len = self.rng.between(1, 64);
                    (0..len).map(|_| self.rng.next_u64() as u8).collect()
                };
                self.fleet.send_binary(key, bytes);
                "garbage_binary"
            }
            Action::UnknownSession => {
                let n = self.rng.next_u64();
                text = format!(r#"{{"cmd":"icecandidate","sessionId":"{n}","icecandidate":null}}"#);
                "unknown_session"
            }
            Action::Wait => "wait",
        };
        if !text.is_empty() {
            self.fleet.send(key, &text);
        }
        self.op(kind);
        self.act_later(key, now);
    }

    fn leave(&mut self, key: usize, ending: Ending, now: Instant) {
        let Some(client) = self.client(key) else { return };
        client.phase = Phase::Leaving(ending);
        self.op(ending.name());
        match ending {
            Ending::Drop => self.remove(key),
            Ending::Clean => {
                self.fleet.close(key);
                self.schedule(key, now + CLOSE_PATIENCE, Step::ForceDrop);
            }
            Ending::Oversized => {
                let mask = self.mask();
                let bytes = if self.rng.percent(50) {
                    // One frame announcing 16 MiB: refused on its header.
                    let mut frame = vec![0x81, 0x80 | 127];
                    frame.extend_from_slice(&(16u64 << 20).to_be_bytes());
                    frame.extend_from_slice(&mask);
                    frame.extend_from_slice(&[b' '; 64]);
                    frame
                } else {
                    // Two fragments of 40 KiB each: every frame is small enough, the
                    // message is not.
                    let part = vec![b' '; 40 << 10];
                    let mut bytes = frame(0x01, &part, Some(mask));
                    bytes.extend(frame(0x80, &part, Some(mask)));
                    bytes
                };
                self.fleet.send_raw(key, &bytes);
                self.schedule(key, now + CLOSE_PATIENCE, Step::ForceDrop);
            }
            Ending::BadUtf8 => {
                let mask = self.mask();
                self.fleet.send_raw(key, &frame(0x81, b"{\"cmd\":\"sId\",\"sId\":\"\xff\xfe\"}", Some(mask)));
                self.schedule(key, now + CLOSE_PATIENCE, Step::ForceDrop);
            }
            Ending::ProtocolError => {
                let mask = self.mask();
                let body = br#"{"cmd":"stop","sessionId":"x"}"#;
                let bytes = match self.rng.below(4) {
                    0 => frame(0x81, body, None),       // unmasked
                    1 => frame(0x83, body, Some(mask)), // reserved opcode
                    2 => frame(0xC1, body, Some(mask)), // RSV1 without an extension
                    _ => frame(0x80, body, Some(mask)), // continuation of nothing
                };
                self.fleet.send_raw(key, &bytes);
                self.schedule(key, now + CLOSE_PATIENCE, Step::ForceDrop);
            }
            Ending::Truncated => {
                let mask = self.mask();
                let mut bytes = frame(0x81, &[b'x'; 300], Some(mask));
                let cut = self.rng.between(1, 200) as usize;
                bytes.truncate(cut);
                self.fleet.send_raw(key, &bytes);
                // Written at the end of this turn; the socket closes a moment later.
                self.schedule(key, now + Duration::from_millis(10), Step::DropNow);
            }
        }
    }

    fn mask(&mut self) -> [u8; 4] {
        (self.rng.next_u64() as u32).to_be_bytes()
    }

    fn on_event(&mut self, key: usize, event: ClientEvent, now: Instant) {
        if self.client(key).is_none() {
            return;
        }
        match event {
            ClientEvent::Opened => self.on_opened(key, now),
            ClientEvent::Text(text) => {
                if wire::is_client_list(&text) {
                    *self.received.entry("clu").or_default() += 1;
                    return;
                }
                match wire::parse(&text) {
                    Some(message) => self.on_message(key, message, now),
                    None => self.note_unexpected(format!("unreadable server message {text:.100}")),
                }
            }
            ClientEvent::Closed(code) => self.on_closed(key, code),
        }
    }

    fn on_closed(&mut self, key: usize, code: Option<u16>) {
        let Some(client) = self.client(key) else { return };
        let phase = client.phase;
        let label = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        *self.closes.entry(label).or_default() += 1;
        match phase {
            Phase::Leaving(ending) => {
                // A close reply that arrives as a bare TCP end is fine after our own close.
                let fine = code == ending.expected_code() || (ending == Ending::Clean && code.is_none());
                if !fine {
                    self.note_unexpected(format!(
                        "{}: expected close {:?}, got {code:?}",
                        ending.name(),
                        ending.expected_code()
                    ));
                }
            }
            Phase::Connecting => {
                self.note_unexpected("connection ended before the upgrade completed".to_owned())
            }
            Phase::Registering | Phase::Registered => {
                self.note_unexpected(format!("server closed a client that broke no rule (code {code:?})"));
            }
        }
        self.remove(key);
    }

    fn on_message(&mut self, key: usize, message: wire::ServerMessage, now: Instant) {
        let cmd = known_cmd(&message.cmd);
        *self.received.entry(cmd).or_default() += 1;
        let Some(client) = self.client(key) else { return };
        let phase = client.phase;
        match cmd {
            "sId" if phase == Phase::Registering => {
                if let Some(sid) = message.sid {
                    client.sid = sid;
                }
                client.phase = Phase::Registered;
                self.act_later(key, now);
            }
            "session" => {
                client.session = message.session_id;
                client.got_call = false;
            }
            "ssu" => match (message.state, message.session_id) {
                (Some(1), Some(id)) if client.session.is_none() => {
                    client.session = Some(id);
                    client.got_call = false;
                }
                (Some(4), Some(id)) if client.session.as_deref() == Some(&id) => {
                    client.session = None;
                    client.got_call = false;
                }
                _ => {}
            },
            "call" => client.got_call = true,
            "error" => {
                let code = message.code.unwrap_or(0);
                *self.errors.entry(code).or_default() += 1;
                if code == 9500 {
                    self.note_unexpected("error 9500: rate limited at a modest rate".to_owned());
                }
                if phase == Phase::Registering && matches!(code, 9100 | 9102) {
                    // Registration was refused or came too early: register for real.
                    self.schedule(key, now + Duration::from_millis(5), Step::Register);
                }
            }
            _ => {}
        }
    }
}

fn known_cmd(cmd: &str) -> &'static str {
    const KNOWN: [&str; 12] = [
        "sId",
        "session",
        "ssu",
        "call",
        "accept",
        "icecandidate",
        "reject",
        "stop",
        "notify",
        "leave",
        "clu",
        "error",
    ];
    KNOWN.iter().find(|&&k| k == cmd).copied().unwrap_or("other")
}

/// One WebSocket frame; `first` is the FIN/RSV/opcode byte.
fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let masked = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(masked | n as u8),
        n if n <= 0xffff => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Waits (bounded by `patience`) until the server's gauges show it idle. Returns the last
/// gauges read and, if it got idle, how long that took.
fn settle(target: &Target, patience: Duration) -> (Option<Gauges>, Option<f64>) {
    let started = Instant::now();
    let mut last = None;
    loop {
        if let Ok(text) = fetch_metrics(target) {
            let gauges = gauges(&text);
            if gauges.idle() {
                return (Some(gauges), Some(started.elapsed().as_secs_f64()));
            }
            last = Some(gauges);
        }
        if started.elapsed() >= patience {
            return (last, None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` on the server's port (`https` for a `wss://` target): a small blocking
/// request, bounded in time and size.
pub fn fetch_metrics(target: &Target) -> io::Result<String> {
    let timeout = Duration::from_secs(2);
    let stream = TcpStream::connect_timeout(&target.addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = b"GET /metrics HTTP/1.1\r\nHost: loadtest\r\nConnection: close\r\n\r\n";
    let response = tls::exchange(target.tls.as_ref(), stream, request, 4 << 20)?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(io::Error::other("incomplete /metrics response"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("/metrics answered {:.60}", head)));
    }
    Ok(body.to_owned())
}

/// The value of an unlabelled metric, or of one with exactly these labels.
pub(crate) fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse::<f64>().ok().map(|v| v as u64)).flatten()
    })
}

/// Values of `prefix...LABEL"}` lines by label.
fn labelled(text: &str, prefix: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(prefix)?;
            let (label, value) = rest.split_once("\"} ")?;
            Some((label.to_owned(), value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

pub fn gauges(text: &str) -> Gauges {
    let get = |name: &str| metric(text, name).unwrap_or(u64::MAX);
    Gauges {
        clients_registered: get("signaling_clients_registered"),
        sessions_new: get("signaling_sessions{state=\"new\"}"),
        sessions_pending: get("signaling_sessions{state=\"pending\"}"),
        sessions_active: get("signaling_sessions{state=\"active\"}"),
        connections_open: get("signaling_connections_open"),
    }
}

pub fn print(report: &SoakReport) {
    let map = |m: &BTreeMap<&'static str, u64>| {
        m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    };
    let gauges = |g: &Option<Gauges>| {
        g.as_ref().map_or_else(
            || "n/a".to_owned(),
            |g| {
                format!(
                    "registered {}, sessions new/pending/active {}/{}/{}, connections open {}",
                    g.clients_registered,
                    g.sessions_new,
                    g.sessions_pending,
                    g.sessions_active,
                    g.connections_open
                )
            },
        )
    };
    let kib = |v: Option<u64>| v.map_or_else(|| "n/a (give --server-pid)".to_owned(), |v| format!("{v} KiB"));
    let mut rows = vec![
        ("transport", report.transport.row()),
        (
            "load",
            format!(
                "up to {} connections, seed {}, warm-up {:.1} s, soak {:.1} s",
                report.clients, report.seed, report.warmup_seconds, report.duration_seconds
            ),
        ),
        (
            "connections",
            format!("{} opened, peak {} at once", report.connections_opened, report.peak_connections),
        ),
        ("operations", format!("{} in all (warm-up included)", report.operations_total)),
        ("  by kind", map(&report.operations)),
        ("received", map(&report.received)),
        (
            "errors by code",
            report.errors_by_code.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
        ),
        (
            "server closes",
            report
                .server_closes_by_code
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "server close reasons",
            report
                .server_closed_by_reason
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "unexpected",
            format!(
                "{}{}",
                report.unexpected,
                report.first_unexpected.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            ),
        ),
        ("server after warm-up", gauges(&report.server_after_warmup)),
        ("server at the end", gauges(&report.server_end)),
        (
            "settled in",
            report
                .settle_seconds
                .map_or_else(|| "never (see the verdict)".to_owned(), |s| format!("{s:.2} s")),
        ),
        ("server RSS start", kib(report.server_rss_start_kib)),
        ("server RSS end", kib(report.server_rss_end_kib)),
        (
            "server RSS peaks",
            format!(
                "{} in the warm-up, {} in the soak",
                kib(report.server_rss_peak_warmup_kib),
                kib(report.server_rss_peak_soak_kib)
            ),
        ),
        (
            "RSS growth",
            match (report.server_rss_growth_kib, report.server_rss_tolerance_kib) {
                (Some(g), Some(t)) => format!("{g} KiB (tolerance {t} KiB)"),
                _ => "n/a (give --server-pid)".to_owned(),
            },
        ),
        ("generator CPU", format!("{:.0}% of a core", report.generator_cpu_percent)),
        ("server CPU (soak)", report::opt(report.server_cpu_percent, "% of a core")),
        ("leaked", report.leaked.to_string()),
    ];
    for line in &report.verdict {
        rows.push(("  verdict", line.clone()));
    }
    report::table("soak", &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_seeded_and_spread() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(
            (0..10).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..10).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        let mut counts = [0u32; 4];
        let mut rng = Rng::new(0);
        for _ in 0..4000 {
            counts[rng.below(4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert!((0..100).all(|_| (3..=5).contains(&rng.between(3, 5))));
    }

    #[test]
    fn gauges_come_from_the_metrics_text() {
        let text = "# HELP x\nsignaling_connections_open 3\nsignaling_clients_registered 0\n\
                    signaling_sessions{state=\"new\"} 1\nsignaling_sessions{state=\"pending\"} 0\n\
                    signaling_sessions{state=\"active\"} 2\n\
                    signaling_connections_closed_total{reason=\"client_close\"} 5\n";
        let g = gauges(text);
        assert_eq!(
            g,
            Gauges {
                clients_registered: 0,
                sessions_new: 1,
                sessions_pending: 0,
                sessions_active: 2,
                connections_open: 3
            }
        );
        assert!(!g.idle());
        let closed = labelled(text, "signaling_connections_closed_total{reason=\"");
        assert_eq!(closed.get("client_close"), Some(&5));
    }

    #[test]
    fn frames_are_masked_and_sized() {
        let f = frame(0x81, b"hi", Some([1, 2, 3, 4]));
        assert_eq!(f, vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        assert_eq!(&frame(0x82, &[0; 300], None)[..4], &[0x82, 126, 1, 44]);
    }
}
