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
    /// Clients that did not register, or got an error or lost their connection afterwards.
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
    let mut crowd = Crowd::new(options.clients, options.concurrency, options.in_sessions, prefix);
    let mut events = Vec::new();
    let began = Instant::now();
    let mut all_registered: Option<Instant> = None;
    loop {
        crowd.connect_more(&mut fleet)?;
        fleet.turn(Duration::from_millis(10), &mut events)?;
        let now = Instant::now();
        for (key, event) in events.drain(..) {
            crowd.on_event(&mut fleet, key, &event);
        }
        if all_registered.is_none() && crowd.all_registered() {
            all_registered = Some(now);
        }
        if let Some(done) = all_registered
            && now >= done + options.settle
        {
            break;
        }
        if now - began > options.timeout {
            return Err(io::Error::other(format!(
                "{} of {} registered within {:?}; first error: {:?}",
                crowd.registered, options.clients, options.timeout, crowd.first_error
            )));
        }
    }
    let rss_after = target.server_pid.and_then(procfs::rss_kib);
    let seconds = all_registered.map_or(0.0, |done| (done - began).as_secs_f64()).max(1e-9);
    let registered = crowd.registered;
    Ok(IdleReport {
        transport: Transport::of(&fleet),
        clients: options.clients,
        registered,
        failed: crowd.failed + crowd.errors,
        first_error: crowd.first_error,
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
        client_list_bytes_received: crowd.list_bytes,
        in_sessions: options.in_sessions,
        sessions: crowd.sessions,
        generator_cpu_seconds: generator.elapsed().map(|d| d.as_secs_f64()),
        server_cpu_seconds: server_cpu.as_ref().and_then(procfs::CpuMeter::elapsed).map(|d| d.as_secs_f64()),
    })
}

/// Where a crowd client is.
#[derive(Clone, Copy, PartialEq)]
enum Member {
    NotOurs,
    Registering,
    Registered,
    Gone,
}

/// Clients that connect (at most `concurrency` handshakes at once), register as
/// `PREFIX-KEY` and then stay idle, reading what the server sends (and so answering its
/// pings), optionally paired into sessions as they register. The `idle` mode is one crowd;
/// `relay --idle N` keeps one next to its pairs. Other clients may share the fleet:
/// [`Crowd::on_event`] only takes the crowd's own.
pub(crate) struct Crowd {
    clients: usize,
    concurrency: usize,
    in_sessions: bool,
    prefix: String,
    /// By fleet key.
    members: Vec<Member>,
    started: usize,
    in_flight: usize,
    pub registered: usize,
    /// Clients that never registered.
    pub failed: u64,
    /// Registered clients that got an error or lost their connection.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Bytes of client lists (`clu`) received.
    pub list_bytes: u64,
    waiting_partner: Option<usize>,
    sessions_requested: usize,
    /// Sessions opened (the opener's `session` reply).
    pub sessions: usize,
}

impl Crowd {
    pub fn new(clients: usize, concurrency: usize, in_sessions: bool, prefix: String) -> Crowd {
        Crowd {
            clients,
            concurrency: concurrency.max(1),
            in_sessions,
            prefix,
            members: Vec::new(),
            started: 0,
            in_flight: 0,
            registered: 0,
            failed: 0,
            errors: 0,
            first_error: None,
            list_bytes: 0,
            waiting_partner: None,
            sessions_requested: 0,
            sessions: 0,
        }
    }

    /// Starts connections until `concurrency` are between connect and registration.
    pub fn connect_more(&mut self, fleet: &mut Fleet) -> io::Result<()> {
        while self.started < self.clients && self.in_flight < self.concurrency {
            let key = fleet.connect()?;
            if self.members.len() <= key {
                self.members.resize(key + 1, Member::NotOurs);
            }
            self.members[key] = Member::Registering;
            self.started += 1;
            self.in_flight += 1;
        }
        Ok(())
    }

    /// Every client registered or failed to.
    pub fn all_registered(&self) -> bool {
        self.registered + self.failed as usize >= self.clients
    }

    /// Every client registered or failed to, and every session asked for was opened (or
    /// an error came instead).
    pub fn ready(&self) -> bool {
        self.all_registered() && self.sessions + self.errors as usize >= self.sessions_requested
    }

    /// Handles an event if it is one of the crowd's clients'; returns whether it was.
    pub fn on_event(&mut self, fleet: &mut Fleet, key: usize, event: &ClientEvent) -> bool {
        let member = self.members.get(key).copied().unwrap_or(Member::NotOurs);
        if member == Member::NotOurs {
            return false;
        }
        match event {
            ClientEvent::Opened => {
                fleet.send(key, &format!(r#"{{"cmd":"sId","sId":"{}-{key}"}}"#, self.prefix))
            }
            ClientEvent::Text(text) if wire::is_client_list(text) => self.list_bytes += text.len() as u64,
            ClientEvent::Text(text) => match wire::parse(text) {
                Some(message) if message.cmd == "sId" && member == Member::Registering => {
                    self.members[key] = Member::Registered;
                    self.registered += 1;
                    self.in_flight -= 1;
                    if self.in_sessions {
                        match self.waiting_partner.take() {
                            Some(partner) => {
                                let session = format!(
                                    r#"{{"cmd":"session","opponentId":"{}-{partner}"}}"#,
                                    self.prefix
                                );
                                fleet.send(key, &session);
                                self.sessions_requested += 1;
                            }
                            None => self.waiting_partner = Some(key),
                        }
                    }
                }
                Some(message) if message.cmd == "session" => self.sessions += 1,
                Some(message) if message.cmd == "ssu" => {}
                _ => self.fail(key, member, || format!("{text:.100}")),
            },
            ClientEvent::Closed(code) => {
                self.fail(key, member, || format!("connection closed (code {code:?})"));
                self.members[key] = Member::Gone;
                if self.waiting_partner == Some(key) {
                    self.waiting_partner = None;
                }
            }
        }
        true
    }

    fn fail(&mut self, key: usize, member: Member, what: impl FnOnce() -> String) {
        match member {
            Member::Registering => {
                self.failed += 1;
                self.in_flight -= 1;
                self.members[key] = Member::Gone;
            }
            Member::Registered => self.errors += 1,
            Member::NotOurs | Member::Gone => return,
        }
        self.first_error.get_or_insert_with(what);
    }
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
