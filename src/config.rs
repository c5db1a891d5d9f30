//! Every limit and default the server has, and the command line that sets them.

use std::net::SocketAddr;
use std::time::Duration;

use crate::signaling::ClientListPacing;

/// Server settings. `Config::default()` is what runs with no flags.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub ping_interval: Duration,
    pub max_message: usize,
    pub max_output: usize,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub max_request_head: usize,
    pub shutdown_grace: Duration,
    pub client_list: ClientListPacing,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            ping_interval: Duration::from_secs(3),
            max_message: 64 << 10,
            max_output: 256 << 10,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_request_head: 8 << 10,
            shutdown_grace: Duration::from_secs(2),
            client_list: ClientListPacing::default(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Action {
    Run(Box<Config>),
    Help,
    Version,
}

pub const HELP: &str = "\
signaling-server: a WebRTC signaling server (WebSocket + JSON, one event loop)

USAGE:
    signaling-server [OPTIONS]

OPTIONS:
    --listen ADDR              Address and port to serve on; port 0 picks a free port.
                               Once bound, prints `listening on ADDR` to standard output.
                               [default: 0.0.0.0:8080]
    --ping-interval SECONDS    Ping every connection this often (decimals allowed, e.g. 0.5).
                               A connection silent for two intervals is dropped and its
                               session peer gets `leave`. [default: 3]
    --max-message BYTES        Largest WebSocket message (and frame) accepted; a bigger one
                               closes the connection with 1009. [default: 65536]
    --max-output BYTES         Unsent output allowed per connection (a client that does not
                               read); past it the connection is closed with 1008. Client
                               lists are not counted: each client has at most one unsent.
                               Must be at least max-message + 1024. [default: 262144]
    --max-connections N        Open connections, handshakes included; past it new
                               connections are closed at once. [default: 10000]
    --handshake-timeout SECONDS
                               Time allowed from accept to a complete HTTP request head;
                               slower connections are dropped. [default: 10]
    --max-request-head BYTES   Largest HTTP request head (request line + headers); a bigger
                               one gets 431 and a close. [default: 8192]
    --shutdown-grace SECONDS   On SIGINT/SIGTERM, every connection gets close 1001; output
                               is flushed for at most this long, then the process exits 0.
                               [default: 2]
    --clu-bandwidth BYTES_PER_SECOND
                               Pace of client-list (`clu`) delivery: a new round of lists
                               starts no sooner than the last round's bytes at this rate
                               (and at least 50 ms, at most 200 ms with <= 1000 clients).
                               [default: 268435456]
    -h, --help                 Print this help.
    -V, --version              Print the version.

ENVIRONMENT:
    RUST_LOG                   Log filter for standard error, e.g. info, debug,
                               signaling_server=trace. [default: warn]
";

/// Parses the command line (without the program name).
pub fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Action, String> {
    use lexopt::prelude::*;
    let mut config = Config::default();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Action::Help),
            Short('V') | Long("version") => return Ok(Action::Version),
            Long("listen") => config.listen = value(&mut parser, "--listen")?,
            Long("ping-interval") => config.ping_interval = seconds(&mut parser, "--ping-interval")?,
            Long("max-message") => config.max_message = positive(&mut parser, "--max-message")?,
            Long("max-output") => config.max_output = positive(&mut parser, "--max-output")?,
            Long("max-connections") => config.max_connections = positive(&mut parser, "--max-connections")?,
            Long("handshake-timeout") => {
                config.handshake_timeout = seconds(&mut parser, "--handshake-timeout")?
            }
            Long("max-request-head") => {
                config.max_request_head = positive(&mut parser, "--max-request-head")?
            }
            Long("shutdown-grace") => config.shutdown_grace = seconds(&mut parser, "--shutdown-grace")?,
            Long("clu-bandwidth") => {
                config.client_list.bytes_per_second = positive(&mut parser, "--clu-bandwidth")?
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    if config.max_output < config.max_message + 1024 {
        return Err(format!(
            "--max-output ({}) must be at least --max-message + 1024 ({}): a relayed message must fit",
            config.max_output,
            config.max_message + 1024
        ));
    }
    if config.max_request_head < 256 {
        return Err("--max-request-head must be at least 256".into());
    }
    Ok(Action::Run(Box::new(config)))
}

fn value<T: std::str::FromStr>(parser: &mut lexopt::Parser, flag: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let raw = parser.value().map_err(|e| e.to_string())?;
    let text = raw.to_str().ok_or_else(|| format!("{flag}: not valid UTF-8"))?;
    text.parse().map_err(|e| format!("{flag} {text:?}: {e}"))
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    parser: &mut lexopt::Parser,
    flag: &str,
) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let n: T = value(parser, flag)?;
    if n <= T::default() {
        return Err(format!("{flag} must be greater than 0"));
    }
    Ok(n)
}

fn seconds(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, String> {
    let secs: f64 = value(parser, flag)?;
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("{flag} must be between 0.001 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse_args(args.iter().map(std::ffi::OsString::from))? {
            Action::Run(config) => Ok(*config),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn defaults_need_no_flags() {
        let config = run(&[]).expect("defaults");
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.ping_interval, Duration::from_secs(3));
        assert_eq!(config.max_message, 65536);
    }

    #[test]
    fn flags_set_limits() {
        let config = run(&[
            "--listen",
            "127.0.0.1:0",
            "--ping-interval",
            "0.5",
            "--max-message",
            "1000",
            "--max-output=5000",
            "--max-connections",
            "7",
            "--handshake-timeout",
            "1.5",
            "--shutdown-grace",
            "0.2",
            "--clu-bandwidth",
            "1000",
            "--max-request-head",
            "300",
        ])
        .expect("valid flags");
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.ping_interval, Duration::from_millis(500));
        assert_eq!((config.max_message, config.max_output, config.max_connections), (1000, 5000, 7));
        assert_eq!(config.handshake_timeout, Duration::from_millis(1500));
        assert_eq!(config.shutdown_grace, Duration::from_millis(200));
        assert_eq!(config.client_list.bytes_per_second, 1000);
        assert_eq!(config.max_request_head, 300);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (args, needle) in [
            (&["--ping-interval", "0"][..], "--ping-interval"),
            (&["--ping-interval", "abc"], "--ping-interval"),
            (&["--max-message", "0"], "--max-message"),
            (&["--max-message", "300000"], "--max-output"),
            (&["--listen", "nowhere"], "--listen"),
            (&["--bogus"], "bogus"),
        ] {
            let err = run(args).expect_err("should be refused");
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        assert!(matches!(parse_args(["--help".into()]), Ok(Action::Help)));
    }
}
