//! `resume`: what clients that lost their connection cost the server, and how fast they
//! come back (PROTOCOL.md, *Resume after a lost connection*).
//!
//! P pairs of clients, every one registered with `"resume":true`, open sessions. Side A of
//! every pair then loses its connection the way a network does: a TCP reset (SO_LINGER 0,
//! then close; no close frame), its socket closed on the load tester's side at once. Once
//! the server's `/metrics` counts them all away, side B relays K ICE candidates to each,
//! which the server holds (a `notify` to itself after them, answered with 9300, proves
//! the server has handled them), and the server's resident memory is read. Then every A
//! resumes on a new connection, `--concurrency` at a time, with the count of messages it
//! had received, and must get the resume reply, then exactly the K held candidates in
//! order, and nothing else; one live candidate each way then shows the session goes on.
//! A resumed client is reset again at once: its peer stays CALLING (a clean close would
//! send every peer back to WAIT, into the client-list traffic), and the load tester's
//! sockets stay bounded.
//!
//! The server's RSS is read before the first connection, after every client registered
//! and paired (all connected), and after the cut and the held messages. With
//! `--cut-during-setup` each A is reset as soon as its session is open, so the load tester
//! holds P + 2 × setup-concurrency sockets instead of 2P (10 000 away clients fit in
//! 20 000 open files), and there is no all-connected reading.
//!
//! Latency of each resume: from starting the new connection (TCP connect, upgrade) to the
//! first replayed message, and from sending `resume` to the first and to the last replayed
//! message (to the resume reply when nothing is held). Every phase is bounded in time.

use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Target;
use crate::fleet::{ClientEvent, Fleet};
use crate::pairs::latency_histogram;
use crate::procfs::{self, CpuMeter};
use crate::report::{self, Latency, Transport};
use crate::soak::{fetch_metrics, metric};
use crate::wire;

/// The side that is cut and resumes.
const A: usize = 0;
/// Its peer, connected throughout, which relays the held messages.
const B: usize = 1;

/// A resume that has not completed in this time is a failure.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ResumeOptions {
    pub pairs: usize,
    /// Candidates each B relays to its away A (held by the server).
    pub held: usize,
    pub payload_bytes: usize,
    /// Pairs being connected, registered and paired at once.
    pub setup_concurrency: usize,
    /// Reset each A as soon as its session is open, instead of after every pair is set up.
    pub cut_during_setup: bool,
    /// Resumes in flight at once; 0: all at once.
    pub concurrency: usize,
    /// Time before each memory reading.
    pub settle: Duration,
    /// Bound on each phase.
    pub timeout: Duration,
}

impl Default for ResumeOptions {
    fn default() -> Self {
        ResumeOptions {
            pairs: 1000,
            held: 4,
            payload_bytes: 200,
            // 100 connections in flight: below the server's listen backlog (128 on Linux,
            // mio's and std's), so setup does not wait out 1 s SYN retries.
            setup_concurrency: 50,
            cut_during_setup: false,
            concurrency: 1,
            settle: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
        }
    }
}

impl ResumeOptions {
    /// Sockets the load tester holds at most.
    pub fn connections(&self) -> usize {
        let setup = if self.cut_during_setup {
            self.pairs + 2 * self.setup_concurrency.min(self.pairs)
        } else {
            2 * self.pairs
        };
        setup.max(self.pairs + self.in_flight())
    }

    /// Resumes in flight at once.
    pub fn in_flight(&self) -> usize {
        if self.concurrency == 0 { self.pairs } else { self.concurrency.min(self.pairs) }
    }
}

/// The server's own account (`/metrics`), as differences over the run where a counter.
#[derive(Debug, Default, Serialize)]
pub struct ServerCounters {
    /// `signaling_clients_away` once every A was cut and every candidate held.
    pub away_while_held: u64,
    /// `signaling_clients_registered` at the end, less at the start: every client stays
    /// registered (a gone one would not).
    pub registered_end: u64,
    pub resumes: u64,
    pub resumes_refused: u64,
    pub graces_expired: u64,
    pub held_over_limit: u64,
}

#[derive(Debug, Serialize)]
pub struct ResumeReport {
    #[serde(flatten)]
    pub transport: Transport,
    pub pairs: usize,
    pub held_per_client: usize,
    pub payload_bytes: usize,
    pub cut_during_setup: bool,
    /// Resumes in flight at once (all of them for `--concurrency 0`).
    pub concurrency: usize,
    /// Connecting, registering (resumable) and pairing every client.
    pub setup_seconds: f64,
    pub client_list_bytes_received: u64,
    /// From the last reset until the server counted every A away.
    pub away_seconds: f64,
    /// Candidates relayed to away clients, and the time until the server had handled all.
    pub held_messages: u64,
    pub hold_seconds: f64,
    pub server_rss_before_kib: Option<u64>,
    /// Every client registered, paired and connected (not with --cut-during-setup).
    pub server_rss_registered_kib: Option<u64>,
    /// Every A away holding K candidates, every B connected.
    pub server_rss_away_kib: Option<u64>,
    /// (registered - before) / (2 × pairs): a connected, resumable client in a session.
    pub rss_per_registered_client_bytes: Option<f64>,
    /// (away - before) / pairs: one away client and its connected peer.
    pub rss_per_pair_with_away_client_bytes: Option<f64>,
    /// (away - registered) / pairs: what going away and holding added per away client.
    pub rss_growth_per_away_client_bytes: Option<f64>,
    /// Resumes that completed: reply, every held candidate in order, live both ways.
    pub resumed: u64,
    /// Resumes answered with an error (9104 and the like).
    pub refused: u64,
    /// Resumes that failed in any way (refused, closed, timed out, wrong message).
    pub failed: u64,
    pub first_error: Option<String>,
    /// Held candidates that arrived in order after a resume reply.
    pub replayed: u64,
    /// Held candidates that never arrived.
    pub lost: u64,
    pub out_of_order: u64,
    /// Messages nobody expected (to an A after its reply, or to a B), `leave` included.
    pub unexpected: u64,
    /// Peers told their A is gone: `leave`, or 9401 for the relay that found it gone.
    pub peer_leaves: u64,
    pub resume_seconds: f64,
    pub resumes_per_second: f64,
    /// New connection started (connect, upgrade, resume) until the first replayed message.
    pub connect_to_first: Latency,
    /// `resume` sent until the first replayed message (the reply when nothing is held).
    pub resume_to_first: Latency,
    /// `resume` sent until the last replayed message.
    pub resume_to_last: Latency,
    /// Server CPU over the resume phase per completed resume (the live candidates and the
    /// reset after it included), with --server-pid.
    pub server_cpu_us_per_resume: Option<f64>,
    /// Connections the kernel dropped during the resume phase because a listen queue was
    /// full (system-wide `ListenOverflows`; each costs its client a 1 s SYN retry).
    pub listen_overflows: Option<u64>,
    pub generator_cpu_seconds: Option<f64>,
    pub server: ServerCounters,
    /// Every client resumed, every held message arrived in order, nothing else came, and
    /// the server's counters agree.
    pub ok: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    /// Not started yet.
    Waiting,
    /// Connecting, registering, pairing.
    SettingUp,
    /// Both sides got `ssu` 1.
    Paired,
    /// A was reset.
    Cut,
    /// B's candidates were handled by the server.
    Held,
    Resuming,
    Resumed,
    Failed,
}

/// One resume in flight.
struct Attempt {
    started: Instant,
    /// When the `resume` was queued, then when it was written to the socket.
    sent: Option<Instant>,
    replied: bool,
    /// The next held candidate expected.
    next_seq: u64,
    live_to_a: bool,
    live_to_b: bool,
}

struct Pair {
    sids: [String; 2],
    keys: [Option<usize>; 2],
    registered: [bool; 2],
    ssu: [bool; 2],
    session: Option<String>,
    /// A's current token.
    token: String,
    /// A's count: messages received since its last registration or resume reply.
    received: u64,
    stage: Stage,
    attempt: Option<Attempt>,
}

struct Run<'a> {
    options: &'a ResumeOptions,
    fleet: Fleet,
    pairs: Vec<Pair>,
    /// Fleet key -> (pair, side). Keys are reused once a socket closes.
    owner: Vec<Option<(usize, usize)>>,
    pad: String,
    buf: String,
    /// When each event of a turn was read off its socket.
    stamps: Vec<Instant>,
    setup_in_flight: usize,
    paired: usize,
    setup_errors: u64,
    list_bytes: u64,
    barriers: usize,
    /// Pairs in `Stage::Resuming`.
    resuming: usize,
    resumed: u64,
    refused: u64,
    failed: u64,
    first_error: Option<String>,
    replayed: u64,
    out_of_order: u64,
    unexpected: u64,
    peer_leaves: u64,
    connect_to_first: Histogram<u64>,
    resume_to_first: Histogram<u64>,
    resume_to_last: Histogram<u64>,
}

pub fn run(target: &Target, options: &ResumeOptions) -> io::Result<ResumeReport> {
    let start_metrics = fetch_metrics(target)?;
    let counter = |text: &str, name: &str| metric(text, name).unwrap_or(0);
    let prefix = format!("resume{}", std::process::id());
    let rss_before = target.server_pid.and_then(procfs::rss_kib);
    let generator = CpuMeter::start(std::process::id());
    let mut run = Run::new(target, options, &prefix)?;
    let mut events = Vec::new();

    // 1. Connect, register with resume, pair; cut A as it goes with --cut-during-setup.
    let began = Instant::now();
    let mut next = 0;
    while run.paired < options.pairs {
        if began.elapsed() > options.timeout || run.setup_errors > 0 {
            return Err(io::Error::other(format!(
                "{} of {} pairs set up within {:?}; first error: {:?}",
                run.paired, options.pairs, options.timeout, run.first_error
            )));
        }
        while next < options.pairs && run.setup_in_flight < options.setup_concurrency.max(1) {
            run.start_pair(next)?;
            next += 1;
        }
        run.turn(&mut events, Duration::from_millis(10))?;
    }
    let setup_seconds = began.elapsed().as_secs_f64();
    let rss_registered = if options.cut_during_setup {
        None
    } else {
        run.idle_for(&mut events, options.settle)?;
        let rss = target.server_pid.and_then(procfs::rss_kib);
        for pair in 0..options.pairs {
            run.cut(pair);
        }
        rss
    };

    // 2. The server counts every A away.
    let cut_done = Instant::now();
    let away_wanted = counter(&start_metrics, "signaling_clients_away") + options.pairs as u64;
    let mut polled = Instant::now();
    loop {
        if polled.elapsed() >= Duration::from_millis(20) {
            polled = Instant::now();
            let away = counter(&fetch_metrics(target)?, "signaling_clients_away");
            if away >= away_wanted {
                break;
            }
            if cut_done.elapsed() > options.timeout {
                return Err(io::Error::other(format!(
                    "the server counted {away} clients away, not {away_wanted}, within {:?}",
                    options.timeout
                )));
            }
        }
        run.turn(&mut events, Duration::from_millis(5))?;
    }
    let away_seconds = cut_done.elapsed().as_secs_f64();

    // 3. Every B relays K candidates to its away A; the server holds them.
    let hold_began = Instant::now();
    for pair in 0..options.pairs {
        run.hold(pair);
    }
    while run.barriers < options.pairs {
        if hold_began.elapsed() > options.timeout {
            return Err(io::Error::other(format!(
                "{} of {} peers saw their candidates handled within {:?}; first error: {:?}",
                run.barriers, options.pairs, options.timeout, run.first_error
            )));
        }
        run.turn(&mut events, Duration::from_millis(10))?;
    }
    let hold_seconds = hold_began.elapsed().as_secs_f64();
    let away_while_held = counter(&fetch_metrics(target)?, "signaling_clients_away");
    run.idle_for(&mut events, options.settle)?;
    let rss_away = target.server_pid.and_then(procfs::rss_kib);

    // 4. Every A resumes, `concurrency` at a time.
    let server_cpu = target.server_pid.map(CpuMeter::start);
    let overflows_before = procfs::listen_overflows();
    let resume_began = Instant::now();
    let mut next = 0;
    let mut checked = Instant::now();
    loop {
        while next < options.pairs && run.resuming < options.in_flight() {
            if run.pairs[next].stage == Stage::Held {
                run.start_resume(next)?;
            }
            next += 1;
        }
        if next >= options.pairs && run.resuming == 0 {
            break;
        }
        let now = Instant::now();
        let phase_over = now - resume_began > options.timeout;
        if phase_over || now - checked > Duration::from_millis(100) {
            checked = now;
            run.time_out_attempts(now, phase_over);
            if phase_over {
                // Pairs never started are failures too.
                for pair in next..options.pairs {
                    if run.pairs[pair].stage == Stage::Held {
                        run.fail(pair, || "the resume phase timed out before it started".to_owned());
                    }
                }
                break;
            }
        }
        run.turn(&mut events, Duration::from_millis(5))?;
    }
    let resume_seconds = resume_began.elapsed().as_secs_f64().max(1e-9);
    let server_cpu = server_cpu.as_ref().and_then(CpuMeter::elapsed);
    let listen_overflows = procfs::listen_overflows().zip(overflows_before).map(|(end, start)| end - start);

    // 5. The server's account.
    let end_metrics = fetch_metrics(target)?;
    let delta = |name: &str| counter(&end_metrics, name).saturating_sub(counter(&start_metrics, name));
    let server = ServerCounters {
        away_while_held,
        registered_end: delta("signaling_clients_registered"),
        resumes: delta("signaling_resumes_total"),
        resumes_refused: delta("signaling_resumes_refused_total"),
        graces_expired: delta("signaling_resume_graces_expired_total"),
        held_over_limit: delta("signaling_resume_held_over_limit_total"),
    };
    let pairs = options.pairs as u64;
    let lost = (pairs * options.held as u64).saturating_sub(run.replayed);
    let ok = run.resumed == pairs
        && run.failed == 0
        && lost == 0
        && run.out_of_order == 0
        && run.unexpected == 0
        && run.peer_leaves == 0
        && server.resumes == pairs
        && server.resumes_refused == 0
        && server.graces_expired == 0
        && server.held_over_limit == 0
        && server.registered_end == 2 * pairs;
    let per = |a: Option<u64>, b: Option<u64>, n: usize| match (a, b) {
        (Some(a), Some(b)) if n > 0 => Some(b.saturating_sub(a) as f64 * 1024.0 / n as f64),
        _ => None,
    };
    Ok(ResumeReport {
        transport: Transport::of(&run.fleet),
        pairs: options.pairs,
        held_per_client: options.held,
        payload_bytes: options.payload_bytes,
        cut_during_setup: options.cut_during_setup,
        concurrency: options.in_flight(),
        setup_seconds,
        client_list_bytes_received: run.list_bytes,
        away_seconds,
        held_messages: pairs * options.held as u64,
        hold_seconds,
        server_rss_before_kib: rss_before,
        server_rss_registered_kib: rss_registered,
        server_rss_away_kib: rss_away,
        rss_per_registered_client_bytes: per(rss_before, rss_registered, 2 * options.pairs),
        rss_per_pair_with_away_client_bytes: per(rss_before, rss_away, options.pairs),
        rss_growth_per_away_client_bytes: per(rss_registered, rss_away, options.pairs),
        resumed: run.resumed,
        refused: run.refused,
        failed: run.failed,
        first_error: run.first_error.take(),
        replayed: run.replayed,
        lost,
        out_of_order: run.out_of_order,
        unexpected: run.unexpected,
        peer_leaves: run.peer_leaves,
        resume_seconds,
        resumes_per_second: run.resumed as f64 / resume_seconds,
        connect_to_first: Latency::of(&run.connect_to_first),
        resume_to_first: Latency::of(&run.resume_to_first),
        resume_to_last: Latency::of(&run.resume_to_last),
        server_cpu_us_per_resume: server_cpu
            .filter(|_| run.resumed > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / run.resumed as f64),
        listen_overflows,
        generator_cpu_seconds: generator.elapsed().map(|d| d.as_secs_f64()),
        server,
        ok,
    })
}

impl<'a> Run<'a> {
    fn new(target: &Target, options: &'a ResumeOptions, prefix: &str) -> io::Result<Run<'a>> {
        let pairs = (0..options.pairs)
            .map(|i| Pair {
                sids: [format!("{prefix}-{i}-a"), format!("{prefix}-{i}-b")],
                keys: [None, None],
                registered: [false; 2],
                ssu: [false; 2],
                session: None,
                token: String::new(),
                received: 0,
                stage: Stage::Waiting,
                attempt: None,
            })
            .collect();
        Ok(Run {
            options,
            fleet: Fleet::new(target)?,
            pairs,
            owner: Vec::new(),
            pad: wire::padding(options.payload_bytes),
            buf: String::new(),
            stamps: Vec::new(),
            setup_in_flight: 0,
            paired: 0,
            setup_errors: 0,
            list_bytes: 0,
            barriers: 0,
            resuming: 0,
            resumed: 0,
            refused: 0,
            failed: 0,
            first_error: None,
            replayed: 0,
            out_of_order: 0,
            unexpected: 0,
            peer_leaves: 0,
            connect_to_first: latency_histogram(),
            resume_to_first: latency_histogram(),
            resume_to_last: latency_histogram(),
        })
    }

    fn connect(&mut self, pair: usize, side: usize) -> io::Result<()> {
        let key = self.fleet.connect()?;
        if self.owner.len() <= key {
            self.owner.resize(key + 1, None);
        }
        self.owner[key] = Some((pair, side));
        self.pairs[pair].keys[side] = Some(key);
        Ok(())
    }

    /// Closes a side's socket: with a reset (the network went), or a plain close.
    fn disconnect(&mut self, pair: usize, side: usize) {
        if let Some(key) = self.pairs[pair].keys[side].take() {
            self.fleet.reset(key);
            self.owner[key] = None;
        }
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    fn turn(&mut self, events: &mut Vec<(usize, ClientEvent)>, timeout: Duration) -> io::Result<()> {
        self.fleet.turn_timed(timeout, events, &mut self.stamps)?;
        let stamps = std::mem::take(&mut self.stamps);
        for ((key, event), &read_at) in events.drain(..).zip(&stamps) {
            if let Some(&Some((pair, side))) = self.owner.get(key) {
                self.on_event(pair, side, &event, read_at);
            }
        }
        self.stamps = stamps;
        self.stamps.clear();
        Ok(())
    }

    /// Keeps every client reading (and answering pings) for `length`.
    fn idle_for(&mut self, events: &mut Vec<(usize, ClientEvent)>, length: Duration) -> io::Result<()> {
        let until = Instant::now() + length;
        while Instant::now() < until {
            self.turn(
                events,
                until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)),
            )?;
        }
        Ok(())
    }

    fn start_pair(&mut self, pair: usize) -> io::Result<()> {
        self.pairs[pair].stage = Stage::SettingUp;
        self.setup_in_flight += 1;
        self.connect(pair, A)?;
        self.connect(pair, B)
    }

    fn cut(&mut self, pair: usize) {
        if self.pairs[pair].stage == Stage::Paired {
            self.disconnect(pair, A);
            self.pairs[pair].stage = Stage::Cut;
        }
    }

    /// B relays K candidates to its away A, then asks for an error that can only come after
    /// the server handled them.
    fn hold(&mut self, pair: usize) {
        let p = &self.pairs[pair];
        let (Some(key), Some(session)) = (p.keys[B], p.session.as_deref()) else { return };
        for seq in 0..self.options.held as u64 {
            wire::candidate(&mut self.buf, session, &self.pad, seq, 0);
            self.fleet.send(key, &self.buf);
        }
        let barrier = format!(r#"{{"cmd":"notify","opponentId":"{}","type":"barrier"}}"#, p.sids[B]);
        self.fleet.send(key, &barrier);
    }

    fn start_resume(&mut self, pair: usize) -> io::Result<()> {
        let started = Instant::now();
        self.connect(pair, A)?;
        let p = &mut self.pairs[pair];
        p.stage = Stage::Resuming;
        p.attempt = Some(Attempt {
            started,
            sent: None,
            replied: false,
            next_seq: 0,
            live_to_a: false,
            live_to_b: false,
        });
        self.resuming += 1;
        Ok(())
    }

    fn time_out_attempts(&mut self, now: Instant, all: bool) {
        let late: Vec<usize> = (0..self.pairs.len())
            .filter(|&pair| {
                self.pairs[pair].stage == Stage::Resuming
                    && (all
                        || self.pairs[pair]
                            .attempt
                            .as_ref()
                            .is_some_and(|a| now - a.started > ATTEMPT_TIMEOUT))
            })
            .collect();
        for pair in late {
            let what = self.pairs[pair].attempt.as_ref().map(|a| {
                format!(
                    "{}: no complete resume in {:?} (reply: {}, held candidates: {}, live: {}/{})",
                    self.pairs[pair].sids[A],
                    now - a.started,
                    a.replied,
                    a.next_seq,
                    a.live_to_a,
                    a.live_to_b
                )
            });
            self.fail(pair, || what.unwrap_or_default());
        }
    }

    /// A resume attempt (or the pair) failed: its connection is closed, its slot freed.
    fn fail(&mut self, pair: usize, what: impl FnOnce() -> String) {
        match self.pairs[pair].stage {
            Stage::Failed | Stage::Resumed => return,
            Stage::Resuming => self.resuming -= 1,
            _ => {}
        }
        self.pairs[pair].stage = Stage::Failed;
        self.pairs[pair].attempt = None;
        self.failed += 1;
        self.note(what);
        self.disconnect(pair, A);
    }

    fn on_event(&mut self, pair: usize, side: usize, event: &ClientEvent, now: Instant) {
        match (self.pairs[pair].stage, side) {
            (Stage::SettingUp, _) => self.on_setup(pair, side, event),
            (Stage::Resuming, A) => self.on_resuming(pair, event, now),
            (_, A) => {
                // A's setup connection after it was paired (not yet cut): nothing but pings.
                let sid = &self.pairs[pair].sids[A];
                let what = match event {
                    ClientEvent::Opened => return,
                    ClientEvent::Text(text) => format!("{sid} got {text:.100} while paired"),
                    ClientEvent::Closed(code) => format!("{sid} closed while paired (code {code:?})"),
                };
                if matches!(event, ClientEvent::Text(_)) {
                    self.pairs[pair].received += 1;
                }
                self.unexpected += 1;
                self.note(|| what);
            }
            (_, _) => self.on_peer(pair, event),
        }
    }

    fn on_setup(&mut self, pair: usize, side: usize, event: &ClientEvent) {
        let text = match event {
            ClientEvent::Opened => {
                let sid = &self.pairs[pair].sids[side];
                let text = format!(r#"{{"cmd":"sId","sId":"{sid}","resume":true}}"#);
                if let Some(key) = self.pairs[pair].keys[side] {
                    self.fleet.send(key, &text);
                }
                return;
            }
            ClientEvent::Closed(code) => {
                self.setup_errors += 1;
                let what = format!("{} closed during setup (code {code:?})", self.pairs[pair].sids[side]);
                return self.note(|| what);
            }
            ClientEvent::Text(text) => text,
        };
        let p = &mut self.pairs[pair];
        if !p.registered[side] {
            match wire::parse(text) {
                Some(message) if message.cmd == "sId" && message.resume_token.is_some() => {
                    p.registered[side] = true;
                    if side == A {
                        p.token = message.resume_token.unwrap_or_default();
                    }
                    if p.registered == [true, true]
                        && let Some(key) = p.keys[A]
                    {
                        let text = format!(r#"{{"cmd":"session","opponentId":"{}"}}"#, p.sids[B]);
                        self.fleet.send(key, &text);
                    }
                }
                _ => {
                    self.setup_errors += 1;
                    let what = format!("{} registration answered {text:.100} (resume off?)", p.sids[side]);
                    self.note(|| what);
                }
            }
            return;
        }
        if side == A {
            p.received += 1;
        }
        if wire::is_client_list(text) {
            self.list_bytes += text.len() as u64;
            return;
        }
        match wire::parse(text) {
            Some(message) if message.cmd == "session" && side == A => p.session = message.session_id,
            Some(message) if message.cmd == "ssu" && message.state == Some(1) => {
                p.ssu[side] = true;
                if p.session.is_none() {
                    p.session = message.session_id;
                }
            }
            _ => {
                self.setup_errors += 1;
                let what = format!("{} got {text:.100} during setup", p.sids[side]);
                return self.note(|| what);
            }
        }
        if p.ssu == [true, true] {
            p.stage = Stage::Paired;
            self.setup_in_flight -= 1;
            self.paired += 1;
            if self.options.cut_during_setup {
                self.cut(pair);
            }
        }
    }

    fn on_resuming(&mut self, pair: usize, event: &ClientEvent, now: Instant) {
        let text = match event {
            ClientEvent::Opened => {
                let p = &mut self.pairs[pair];
                let text = format!(
                    r#"{{"cmd":"resume","sId":"{}","resumeToken":"{}","received":{}}}"#,
                    p.sids[A], p.token, p.received
                );
                if let (Some(key), Some(attempt)) = (p.keys[A], p.attempt.as_mut()) {
                    self.fleet.send(key, &text);
                    self.fleet.watch_write(key);
                    attempt.sent = Some(now);
                }
                return;
            }
            ClientEvent::Closed(code) => {
                let what = format!("{}: resume connection closed (code {code:?})", self.pairs[pair].sids[A]);
                return self.fail(pair, || what);
            }
            ClientEvent::Text(text) => text,
        };
        let held = self.options.held as u64;
        let p = &mut self.pairs[pair];
        let Some(attempt) = p.attempt.as_mut() else { return };
        // The moment the resume left, once the fleet wrote it (queued before: a bound).
        if let Some(written) = p.keys[A].and_then(|key| self.fleet.written_at(key)) {
            attempt.sent = Some(written);
        }
        let sent = attempt.sent.unwrap_or(attempt.started);
        let ns = |from: Instant| (now - from).as_nanos().max(1) as u64;
        if !attempt.replied {
            match wire::parse(text) {
                Some(m)
                    if m.cmd == "resume"
                        && m.sid.as_deref() == Some(&p.sids[A])
                        && m.resume_token.is_some() =>
                {
                    attempt.replied = true;
                    p.token = m.resume_token.unwrap_or_default();
                    p.received = 0;
                    if held == 0 {
                        let _ = self.connect_to_first.record(ns(attempt.started));
                        let _ = self.resume_to_first.record(ns(sent));
                        let _ = self.resume_to_last.record(ns(sent));
                        self.send_live(pair);
                    }
                }
                Some(m) if m.cmd == "error" => {
                    self.refused += 1;
                    let what = format!("{}: resume refused with {:?}", p.sids[A], m.code);
                    self.fail(pair, || what);
                }
                _ => {
                    self.unexpected += 1;
                    let what = format!("{}: resume answered {text:.100}", p.sids[A]);
                    self.fail(pair, || what);
                }
            }
            return;
        }
        p.received += 1;
        let from_b = |m: &wire::ServerMessage| {
            m.cmd == "icecandidate"
                && m.opponent_id.as_deref() == Some(&p.sids[B])
                && m.session_id.is_some()
                && m.session_id == p.session
        };
        let seq = match (wire::relay_stamp(text), wire::parse(text)) {
            (Some((seq, _)), Some(m)) if from_b(&m) => seq,
            _ => {
                self.unexpected += 1;
                let what = format!("{} got {text:.100} after its resume reply", p.sids[A]);
                return self.fail(pair, || what);
            }
        };
        if seq == attempt.next_seq && seq < held {
            self.replayed += 1;
            attempt.next_seq += 1;
            if seq == 0 {
                let _ = self.connect_to_first.record(ns(attempt.started));
                let _ = self.resume_to_first.record(ns(sent));
            }
            if attempt.next_seq == held {
                let _ = self.resume_to_last.record(ns(sent));
                self.send_live(pair);
            }
        } else if seq == held && attempt.next_seq == held && !attempt.live_to_a {
            attempt.live_to_a = true;
            self.finish_if_done(pair);
        } else {
            self.out_of_order += 1;
            let what = format!("{}: candidate {seq} where {} was due", p.sids[A], attempt.next_seq);
            self.fail(pair, || what);
        }
    }

    /// After the replay: one live candidate each way on the resumed session.
    fn send_live(&mut self, pair: usize) {
        let p = &self.pairs[pair];
        let (Some(a), Some(b), Some(session)) = (p.keys[A], p.keys[B], p.session.as_deref()) else { return };
        wire::candidate(&mut self.buf, session, &self.pad, self.options.held as u64, 0);
        self.fleet.send(b, &self.buf);
        wire::candidate(&mut self.buf, session, &self.pad, 0, 0);
        self.fleet.send(a, &self.buf);
    }

    fn finish_if_done(&mut self, pair: usize) {
        let p = &mut self.pairs[pair];
        if p.attempt.as_ref().is_some_and(|a| a.live_to_a && a.live_to_b) {
            p.stage = Stage::Resumed;
            p.attempt = None;
            self.resumed += 1;
            // Lost again, so the peer stays CALLING and the sockets stay bounded.
            self.resuming -= 1;
            self.disconnect(pair, A);
        }
    }

    /// B after setup: the 9300 that ends its held candidates, then, while its A resumes,
    /// A's live candidate. Anything else is unexpected.
    fn on_peer(&mut self, pair: usize, event: &ClientEvent) {
        let sid = self.pairs[pair].sids[B].clone();
        let text = match event {
            ClientEvent::Text(text) => text,
            ClientEvent::Opened => return,
            ClientEvent::Closed(code) => {
                self.unexpected += 1;
                self.pairs[pair].keys[B] = None;
                return self.note(|| format!("{sid} (peer) closed (code {code:?})"));
            }
        };
        let message = wire::parse(text);
        let cmd = message.as_ref().map(|m| m.cmd.as_str());
        let stage = self.pairs[pair].stage;
        match (cmd, stage) {
            (Some("error"), Stage::Cut) if message.as_ref().and_then(|m| m.code) == Some(9300) => {
                self.pairs[pair].stage = Stage::Held;
                self.barriers += 1;
            }
            (Some("icecandidate"), Stage::Resuming)
                if message.as_ref().and_then(|m| m.opponent_id.as_deref())
                    == Some(self.pairs[pair].sids[A].as_str()) =>
            {
                if let Some(attempt) = self.pairs[pair].attempt.as_mut() {
                    attempt.live_to_b = true;
                }
                self.finish_if_done(pair);
            }
            _ => {
                self.unexpected += 1;
                let code = message.as_ref().and_then(|m| m.code);
                if cmd == Some("leave") || (cmd == Some("error") && code == Some(9401)) {
                    self.peer_leaves += 1;
                }
                self.note(|| format!("{sid} (peer) got {text:.100} ({stage:?})"));
                if stage == Stage::Cut {
                    // Its candidates are not all held: the pair cannot be measured.
                    self.pairs[pair].stage = Stage::Failed;
                    self.failed += 1;
                    self.barriers += 1;
                }
            }
        }
    }
}

pub fn print(report: &ResumeReport) {
    let kib = |v: Option<u64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v} KiB"));
    let bytes = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0} B"));
    let s = &report.server;
    let mut rows = vec![
        ("transport", report.transport.row()),
        (
            "pairs",
            format!(
                "{} (A cut {}, {} held candidates each, {}-byte payloads)",
                report.pairs,
                if report.cut_during_setup {
                    "as each session opened"
                } else {
                    "after every pair was set up"
                },
                report.held_per_client,
                report.payload_bytes
            ),
        ),
        (
            "setup",
            format!(
                "{:.2} s ({} clu bytes received)",
                report.setup_seconds, report.client_list_bytes_received
            ),
        ),
        (
            "away, held",
            format!(
                "server counted {} away {:.3} s after the last reset; {} candidates held in {:.3} s",
                s.away_while_held, report.away_seconds, report.held_messages, report.hold_seconds
            ),
        ),
        (
            "server RSS",
            format!(
                "before {}, registered {}, away + held {}",
                kib(report.server_rss_before_kib),
                kib(report.server_rss_registered_kib),
                kib(report.server_rss_away_kib)
            ),
        ),
        ("per registered client", bytes(report.rss_per_registered_client_bytes)),
        ("per pair, A away", bytes(report.rss_per_pair_with_away_client_bytes)),
        ("growth per away client", bytes(report.rss_growth_per_away_client_bytes)),
        (
            "resumed",
            format!(
                "{} of {} ({} at once), {:.2} s, {:.0}/s; {} refused, {} failed",
                report.resumed,
                report.pairs,
                report.concurrency,
                report.resume_seconds,
                report.resumes_per_second,
                report.refused,
                report.failed
            ),
        ),
        (
            "replayed",
            format!(
                "{} in order, {} lost, {} out of order, {} unexpected, {} peer leaves",
                report.replayed, report.lost, report.out_of_order, report.unexpected, report.peer_leaves
            ),
        ),
        ("connect -> first", report::latency_row(&report.connect_to_first)),
        ("resume -> first", report::latency_row(&report.resume_to_first)),
        ("resume -> last", report::latency_row(&report.resume_to_last)),
        ("server CPU / resume", report::opt(report.server_cpu_us_per_resume, " µs")),
        (
            "listen overflows",
            report.listen_overflows.map_or_else(
                || "n/a".to_owned(),
                |n| format!("{n} SYNs dropped at a full listen queue while resuming (system-wide)"),
            ),
        ),
        ("generator CPU", format!("{:.2} s", report.generator_cpu_seconds.unwrap_or(0.0))),
        (
            "server counters",
            format!(
                "{} resumes, {} refused, {} graces expired, {} over the held limit, {} more registered",
                s.resumes, s.resumes_refused, s.graces_expired, s.held_over_limit, s.registered_end
            ),
        ),
        ("ok", report.ok.to_string()),
    ];
    if let Some(error) = &report.first_error {
        rows.push(("first error", error.clone()));
    }
    report::table("resume", &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_needed_depend_on_when_the_cut_comes_and_how_many_resume_at_once() {
        let options = ResumeOptions { pairs: 10_000, ..ResumeOptions::default() };
        assert_eq!(options.connections(), 20_000, "every pair connected before the cut");
        let early = ResumeOptions { cut_during_setup: true, ..options.clone() };
        assert_eq!(early.connections(), 10_100, "peers + the pairs being set up");
        let all = ResumeOptions { concurrency: 0, ..early.clone() };
        assert_eq!((all.in_flight(), all.connections()), (10_000, 20_000));
        let some = ResumeOptions { concurrency: 300, ..early };
        assert_eq!((some.in_flight(), some.connections()), (300, 10_300));
    }
}
