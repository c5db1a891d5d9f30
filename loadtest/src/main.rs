//! `loadtest`: command line -> mode -> table or JSON.

use std::process::ExitCode;
use std::time::Duration;

use loadtest::churn::{self, ChurnOptions};
use loadtest::idle::{self, IdleOptions};
use loadtest::relay::{self, RelayOptions};
use loadtest::resume::{self, ResumeOptions};
use loadtest::soak::{self, SoakOptions};
use loadtest::{Target, procfs};

const HELP: &str = "\
loadtest: load generator for signaling-server (speaks only the wire protocol)

USAGE:
    loadtest [COMMON OPTIONS] relay|idle|churn|soak|resume [MODE OPTIONS]

COMMON OPTIONS:
    --url URL            Server to test: ws://HOST:PORT/, or wss://HOST:PORT/ for TLS
                         (every client of every mode, and soak's /metrics over https).
                         TLS does NOT verify the server's certificate: the load tester is
                         for loopback benchmarks against self-signed certificates.
                         [default: ws://127.0.0.1:8080/]
    --server-pid PID     The server's process id (same machine): adds its CPU time per
                         message and its memory to the report.
    --sources N          Loopback source addresses to spread connections over
                         (127.0.0.2 and up; only for a loopback server). [default: 16]
    --json               Print the report as JSON instead of a table.

relay: P pairs in sessions send ICE candidates both ways.
    --pairs P            [default: 100]
    --window W           Messages in flight per direction (1 = ping-pong). [default: 32]
    --rate R             Open loop: offer R messages/s in total, spread over the clients,
                         instead of a window. Latency then counts from the scheduled time.
    --warmup SECONDS     Not measured. [default: 1]
    --duration SECONDS   Measured. [default: 5]
    --payload BYTES      Size of each candidate payload. [default: 200]
    --idle N             Also keep N idle clients connected, registered and paired into
                         sessions (no client lists) for the whole run, set up before the
                         pairs: the relay's latency under the server pinging N idle
                         connections every ping interval. [default: 0]

idle: N registered clients that stay idle.
    --clients N          [default: 1000]
    --concurrency C      Connections being set up at once. [default: 100]
    --settle SECONDS     Time connected after the last registration, before memory is
                         read. [default: 1]
    --in-sessions        Pair the clients into sessions as they register, so they get no
                         client lists (which cost O(clients²) bytes when all wait).

churn: W clients wait and P pairs relay while clients join and leave at a steady rate,
then a burst of N joins, then N leaves.
    --watchers W         [default: 100]
    --pairs P            [default: 10]
    --churn-rate R       Steady joins per second (and leaves, past the population).
                         [default: 100]
    --churn-duration SECONDS
                         [default: 2]
    --churn-population N Churners connected at once in the steady phase. [default: 50]
    --burst N            [default: 1000]
    --concurrency C      Burst connections being set up at once. [default: 500]

soak: for a fixed time, up to N connections churn in a seeded random order: connect,
register, open sessions and relay (call/accept/icecandidate/stop/reject), notify, send
garbage (bad JSON, binary junk, wrong shapes, oversized, bad UTF-8, malformed and
truncated frames), leave abruptly (no close frame) or cleanly. Each client sends about
12 commands/s, so default server limits apply. Afterwards the server's own /metrics must
show no client, no session, no connection (waited for, bounded); with --server-pid its
RSS after the soak is compared with the RSS after a warm-up round (tolerance: 20% of the
start + 2 MiB). Reports `leaked: true|false`; the exit status is 1 when leaked.
    --clients N          Connections open at once, at most. [default: 2000]
    --duration SECONDS   [default: 30]
    --warmup SECONDS     A round of the same load before the start RSS is read, long
                         enough for the server's memory to reach its working size
                         (about 8 s at 3000 clients). [default: 10]
    --seed S             Seeds the random order. [default: 1]
    --settle SECONDS     How long the server may take to get back to idle. [default: 10]

resume: P pairs in sessions, every client registered with \"resume\":true. One side (A) of
each pair loses its connection to a TCP reset (SO_LINGER 0, then close: no close frame);
once the server's /metrics counts them away, the other side relays K candidates to each,
which the server holds. The server's RSS is read before, after registering and after the
cut + held messages (with --server-pid). Then each A resumes on a new connection with its
message count and must get exactly the K candidates in order, then a live one each way;
latency from the new connection and from `resume` to the first replayed message. A
resumed client is reset again at once. Exit status 1 unless every client resumed with
nothing lost. The server's --resume-grace must outlast the run.
    --pairs P            [default: 1000]
    --held K             Candidates held for each away client. [default: 4]
    --payload BYTES      Size of each candidate payload. [default: 200]
    --setup-concurrency N
                         Pairs being connected, registered and paired at once. [default: 50]
    --cut-during-setup   Reset each A as soon as its session is open: the load tester then
                         holds P + 2N sockets instead of 2P (10 000 away clients fit in
                         20 000 open files), and there is no all-registered RSS reading.
    --concurrency C      Resumes in flight at once; 0 = all at once. [default: 1]
    --settle SECONDS     Idle time before each RSS reading. [default: 1]
    --timeout SECONDS    Bound on each phase. [default: 60]

Every mode stops by itself (setup and phases time out after 60 s). Many connections need
a high file-descriptor limit: `ulimit -n 65536` (the current limit is printed when too low).
";

enum Mode {
    Relay(RelayOptions),
    Idle(IdleOptions),
    Churn(ChurnOptions),
    Soak(SoakOptions),
    Resume(ResumeOptions),
}

struct Args {
    url: String,
    server_pid: Option<u32>,
    sources: usize,
    json: bool,
    mode: Mode,
}

fn parse_args() -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut args = Args {
        url: "ws://127.0.0.1:8080/".into(),
        server_pid: None,
        sources: 16,
        json: false,
        mode: Mode::Relay(RelayOptions::default()),
    };
    let mut mode_seen = false;
    fn num<T: std::str::FromStr>(parser: &mut lexopt::Parser, flag: &str) -> Result<T, String> {
        let value = parser.value().map_err(|e| e.to_string())?;
        value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{flag}: bad value {value:?}"))
    }
    fn secs(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, String> {
        let s: f64 = num(parser, flag)?;
        if !(0.0..=3600.0).contains(&s) {
            return Err(format!("{flag}: between 0 and 3600 seconds"));
        }
        Ok(Duration::from_secs_f64(s))
    }
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match (&mut args.mode, arg) {
            (_, Short('h') | Long("help")) => return Ok(None),
            (_, Long("url")) => args.url = num(&mut parser, "--url")?,
            (_, Long("server-pid")) => args.server_pid = Some(num(&mut parser, "--server-pid")?),
            (_, Long("sources")) => args.sources = num(&mut parser, "--sources")?,
            (_, Long("json")) => args.json = true,
            (_, Value(mode)) if !mode_seen => {
                mode_seen = true;
                args.mode = match mode.to_str() {
                    Some("relay") => Mode::Relay(RelayOptions::default()),
                    Some("idle") => Mode::Idle(IdleOptions::default()),
                    Some("churn") => Mode::Churn(ChurnOptions::default()),
                    Some("soak") => Mode::Soak(SoakOptions::default()),
                    Some("resume") => Mode::Resume(ResumeOptions::default()),
                    _ => return Err(format!("unknown mode {mode:?}: relay, idle, churn, soak or resume")),
                };
            }
            (Mode::Relay(o), Long("pairs")) => o.pairs = num(&mut parser, "--pairs")?,
            (Mode::Relay(o), Long("window")) => o.window = num(&mut parser, "--window")?,
            (Mode::Relay(o), Long("rate")) => o.rate = Some(num(&mut parser, "--rate")?),
            (Mode::Relay(o), Long("warmup")) => o.warmup = secs(&mut parser, "--warmup")?,
            (Mode::Relay(o), Long("duration")) => o.duration = secs(&mut parser, "--duration")?,
            (Mode::Relay(o), Long("payload")) => o.payload_bytes = num(&mut parser, "--payload")?,
            (Mode::Relay(o), Long("idle")) => o.idle = num(&mut parser, "--idle")?,
            (Mode::Idle(o), Long("clients")) => o.clients = num(&mut parser, "--clients")?,
            (Mode::Idle(o), Long("concurrency")) => o.concurrency = num(&mut parser, "--concurrency")?,
            (Mode::Idle(o), Long("settle")) => o.settle = secs(&mut parser, "--settle")?,
            (Mode::Idle(o), Long("in-sessions")) => o.in_sessions = true,
            (Mode::Churn(o), Long("watchers")) => o.watchers = num(&mut parser, "--watchers")?,
            (Mode::Churn(o), Long("pairs")) => o.pairs = num(&mut parser, "--pairs")?,
            (Mode::Churn(o), Long("burst")) => o.burst = num(&mut parser, "--burst")?,
            (Mode::Churn(o), Long("concurrency")) => o.concurrency = num(&mut parser, "--concurrency")?,
            (Mode::Churn(o), Long("churn-rate")) => o.churn_rate = num(&mut parser, "--churn-rate")?,
            (Mode::Churn(o), Long("churn-duration")) => {
                o.churn_duration = secs(&mut parser, "--churn-duration")?
            }
            (Mode::Churn(o), Long("churn-population")) => {
                o.churn_population = num(&mut parser, "--churn-population")?
            }
            (Mode::Soak(o), Long("clients")) => o.clients = num(&mut parser, "--clients")?,
            (Mode::Soak(o), Long("duration")) => o.duration = secs(&mut parser, "--duration")?,
            (Mode::Soak(o), Long("warmup")) => o.warmup = secs(&mut parser, "--warmup")?,
            (Mode::Soak(o), Long("seed")) => o.seed = num(&mut parser, "--seed")?,
            (Mode::Soak(o), Long("settle")) => o.settle = secs(&mut parser, "--settle")?,
            (Mode::Resume(o), Long("pairs")) => o.pairs = num(&mut parser, "--pairs")?,
            (Mode::Resume(o), Long("held")) => o.held = num(&mut parser, "--held")?,
            (Mode::Resume(o), Long("payload")) => o.payload_bytes = num(&mut parser, "--payload")?,
            (Mode::Resume(o), Long("setup-concurrency")) => {
                o.setup_concurrency = num(&mut parser, "--setup-concurrency")?
            }
            (Mode::Resume(o), Long("cut-during-setup")) => o.cut_during_setup = true,
            (Mode::Resume(o), Long("concurrency")) => o.concurrency = num(&mut parser, "--concurrency")?,
            (Mode::Resume(o), Long("settle")) => o.settle = secs(&mut parser, "--settle")?,
            (Mode::Resume(o), Long("timeout")) => o.timeout = secs(&mut parser, "--timeout")?,
            (_, other) => return Err(other.unexpected().to_string()),
        }
    }
    if !mode_seen {
        return Err("give a mode: relay, idle, churn, soak or resume".into());
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("loadtest: {message}\nTry --help.");
            return ExitCode::from(2);
        }
    };
    let target = match Target::new(&args.url, args.sources, args.server_pid) {
        Ok(target) => target,
        Err(message) => {
            eprintln!("loadtest: {message}");
            return ExitCode::from(2);
        }
    };
    let connections = match &args.mode {
        Mode::Relay(o) => 2 * o.pairs + o.idle,
        Mode::Idle(o) => o.clients,
        Mode::Churn(o) => o.watchers + 2 * o.pairs + o.burst,
        Mode::Soak(o) => o.clients,
        Mode::Resume(o) => o.connections(),
    };
    if let Some(limit) = procfs::open_files_limit()
        && limit < connections as u64 + 64
    {
        eprintln!(
            "loadtest: {connections} connections need more than the open-files limit {limit}; run `ulimit -n 65536` first"
        );
        return ExitCode::from(2);
    }
    // Soak: the server leaked; resume: not every client resumed with everything.
    let mut leaked = false;
    let result = match &args.mode {
        Mode::Relay(options) => relay::run(&target, options).map(|r| emit(args.json, &r, relay::print)),
        Mode::Idle(options) => idle::run(&target, options).map(|r| emit(args.json, &r, idle::print)),
        Mode::Churn(options) => churn::run(&target, options).map(|r| emit(args.json, &r, churn::print)),
        Mode::Soak(options) => soak::run(&target, options).map(|r| {
            emit(args.json, &r, soak::print);
            leaked = r.leaked;
        }),
        Mode::Resume(options) => resume::run(&target, options).map(|r| {
            emit(args.json, &r, resume::print);
            leaked = !r.ok;
        }),
    };
    match result {
        Ok(()) if leaked => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn emit<R: serde::Serialize>(json: bool, report: &R, print: fn(&R)) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("loadtest: cannot encode the report: {e}"),
        }
    } else {
        print(report);
    }
}
