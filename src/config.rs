//! Every limit and default the server has, and the command line that sets them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::signaling::ClientListPacing;

/// Server settings. `Config::default()` is what runs with no flags.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub ping_interval: Duration,
    pub max_message: usize,
    pub max_output: usize,
    /// Held output (client lists included) tolerated for `max_output_soft_for`.
    pub max_output_soft: usize,
    pub max_output_soft_for: Duration,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub max_request_head: usize,
    pub shutdown_grace: Duration,
    pub client_list: ClientListPacing,
    /// Commands per second a connection may send on average; 0 turns rate limiting off.
    pub rate_limit: f64,
    /// Commands a connection may send back to back before the rate applies.
    pub rate_burst: u32,
    /// Open connections per source IP; 0 means no per-IP limit.
    pub max_connections_per_ip: usize,
    /// When not empty, upgrades from a browser (with an Origin header) must come from one of
    /// these origins.
    pub allowed_origins: Vec<String>,
    /// When set, upgrades need a valid `?token=` (see [`crate::auth`]).
    pub auth_secret: Option<Vec<u8>>,
    /// Upgrades on this path get an echo connection (for RFC 6455 conformance tests).
    pub echo_path: Option<String>,
    pub echo_max_message: usize,
    /// With both set, the listener speaks only TLS (PEM files; SIGHUP reloads them).
    pub tls: Option<TlsFiles>,
    /// How long a resumable client whose connection was lost stays registered, waiting
    /// for a resume; zero turns resume off.
    pub resume_grace: Duration,
    /// Registered clients one room may hold (away ones included); 0: no bound.
    pub max_room_clients: usize,
}

/// The certificate chain (leaf first) and private key of `--tls-cert` and `--tls-key`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            ping_interval: Duration::from_secs(3),
            max_message: 64 << 10,
            max_output: 256 << 10,
            max_output_soft: 64 << 10,
            max_output_soft_for: Duration::from_secs(10),
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_request_head: 8 << 10,
            shutdown_grace: Duration::from_secs(2),
            client_list: ClientListPacing::default(),
            rate_limit: 500.0,
            rate_burst: 500,
            max_connections_per_ip: 1000,
            allowed_origins: Vec::new(),
            auth_secret: None,
            echo_path: None,
            echo_max_message: 16 << 20,
            tls: None,
            resume_grace: Duration::from_secs(15),
            max_room_clients: 0,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Action {
    Run(Box<Config>),
    Help,
    Version,
    /// `signaling-server token ...`: print an auth token.
    Token {
        secret: String,
        sid: String,
        ttl: Duration,
        /// The one room the token is valid in; `None`: every room.
        room: Option<String>,
    },
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
    --max-output-soft BYTES    Soft output limit: a connection holding more than this unsent,
                               client lists included, for --max-output-soft-seconds in a row
                               is closed with 1008 however fast it reads. [default: 65536]
    --max-output-soft-seconds SECONDS
                               How long output may stay over the soft limit. [default: 10]
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
    --rate-limit PER_SECOND    Commands per second one connection may send on average. A
                               command over the limit is dropped and answered with error
                               9500; more than --rate-burst of them within one second close
                               the connection with 1008. 0 turns rate limiting off (for
                               benchmarks). [default: 500]
    --rate-burst N             Commands a connection may send back to back. [default: 500]
    --max-connections-per-ip N Open connections from one source IP; past it new ones get
                               HTTP 503. Behind a reverse proxy every client has the proxy's
                               address: raise this or set 0 (no limit). [default: 1000]
    --allowed-origin ORIGIN    Accept WebSocket upgrades only from pages of this origin, e.g.
                               https://app.example.com (repeatable). Others get HTTP 403.
                               Requests without an Origin header (native apps) are allowed.
                               [default: any origin]
    --auth-secret SECRET       Require `?token=...` on the upgrade URL: an HMAC-SHA256 token
                               naming the one sId the connection may register (see `token`
                               below). Missing, forged or expired tokens get HTTP 401;
                               registering another sId gets error 9103. [default: off]
    --echo-path PATH           Upgrades on this exact path (e.g. /echo) echo every message
                               back instead of signaling: for RFC 6455 conformance tests
                               only. [default: off]
    --echo-max-message BYTES   Largest message on the echo path. [default: 16777216]
    --tls-cert FILE            Serve TLS (wss:// and https://) instead of plain TCP, with this
                               PEM certificate chain (leaf first). Needs --tls-key. SIGHUP
                               reloads both files: new connections get the new pair, open
                               ones keep theirs; a bad file then keeps the old pair and logs
                               an error. [default: off]
    --tls-key FILE             The PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
                               [default: off]
    --resume-grace SECONDS     A client that registered with \"resume\":true and loses its
                               connection without a close frame (reset, network change,
                               liveness timeout) stays registered this long, in its session,
                               its messages held (at most --max-output bytes, past it it is
                               gone), until it resumes on a new connection. After it, its
                               peer gets `leave`. At most --max-connections clients are
                               away at once. 0 turns resume off. [default: 15]
    --max-room-clients N       Registered clients one room may hold, the default room
                               included and away clients counted; a registration past it
                               gets error 9105. Rooms are chosen with ?room=NAME on the
                               upgrade URL (1-64 bytes of A-Z a-z 0-9 . _ ~ -, otherwise
                               HTTP 400). 0: no bound. [default: 0]
    -h, --help                 Print this help.
    -V, --version              Print the version.

SUBCOMMANDS:
    signaling-server token --secret SECRET --sid SID [--ttl SECONDS] [--room ROOM]
                               Print a token for --auth-secret that lets its holder register
                               SID for the next SECONDS; with --room, only on an upgrade into
                               ROOM (HTTP 401 elsewhere). [default ttl: 3600, any room]

ENVIRONMENT:
    RUST_LOG                   Log filter for standard error, e.g. info, debug,
                               signaling_server=trace. [default: warn]
";

/// Parses the command line (without the program name).
pub fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Action, String> {
    use lexopt::prelude::*;
    let mut config = Config::default();
    let (mut tls_cert, mut tls_key): (Option<PathBuf>, Option<PathBuf>) = (None, None);
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Value(word) if word == "token" => return parse_token_args(&mut parser),
            Short('h') | Long("help") => return Ok(Action::Help),
            Short('V') | Long("version") => return Ok(Action::Version),
            Long("listen") => config.listen = value(&mut parser, "--listen")?,
            Long("ping-interval") => config.ping_interval = seconds(&mut parser, "--ping-interval")?,
            Long("max-message") => config.max_message = positive(&mut parser, "--max-message")?,
            Long("max-output") => config.max_output = positive(&mut parser, "--max-output")?,
            Long("max-output-soft") => config.max_output_soft = positive(&mut parser, "--max-output-soft")?,
            Long("max-output-soft-seconds") => {
                config.max_output_soft_for = seconds(&mut parser, "--max-output-soft-seconds")?
            }
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
            Long("rate-limit") => {
                config.rate_limit = value(&mut parser, "--rate-limit")?;
                if !(0.0..=1e9).contains(&config.rate_limit) {
                    return Err("--rate-limit must be between 0 and 1e9".into());
                }
            }
            Long("rate-burst") => config.rate_burst = positive(&mut parser, "--rate-burst")?,
            Long("max-connections-per-ip") => {
                config.max_connections_per_ip = value(&mut parser, "--max-connections-per-ip")?
            }
            Long("allowed-origin") => {
                let origin: String = value(&mut parser, "--allowed-origin")?;
                config.allowed_origins.push(origin.trim_end_matches('/').to_owned());
            }
            Long("auth-secret") => {
                let secret: String = value(&mut parser, "--auth-secret")?;
                if secret.len() < 16 {
                    return Err("--auth-secret must be at least 16 bytes".into());
                }
                config.auth_secret = Some(secret.into_bytes());
            }
            Long("echo-path") => {
                let path: String = value(&mut parser, "--echo-path")?;
                if !path.starts_with('/') {
                    return Err("--echo-path must start with /".into());
                }
                config.echo_path = Some(path);
            }
            Long("tls-cert") => tls_cert = Some(value::<String>(&mut parser, "--tls-cert")?.into()),
            Long("tls-key") => tls_key = Some(value::<String>(&mut parser, "--tls-key")?.into()),
            Long("resume-grace") => {
                let secs: f64 = value(&mut parser, "--resume-grace")?;
                if !(0.0..=86_400.0).contains(&secs) {
                    return Err("--resume-grace must be between 0 and 86400 seconds".into());
                }
                config.resume_grace = Duration::from_secs_f64(secs);
            }
            Long("max-room-clients") => config.max_room_clients = value(&mut parser, "--max-room-clients")?,
            Long("echo-max-message") => {
                config.echo_max_message = positive(&mut parser, "--echo-max-message")?
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
    config.tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => return Err("--tls-cert needs --tls-key (the certificate's private key)".into()),
        (None, Some(_)) => return Err("--tls-key needs --tls-cert (the certificate chain)".into()),
    };
    if config.max_request_head < 256 {
        return Err("--max-request-head must be at least 256".into());
    }
    Ok(Action::Run(Box::new(config)))
}

fn parse_token_args(parser: &mut lexopt::Parser) -> Result<Action, String> {
    use lexopt::prelude::*;
    let (mut secret, mut sid, mut ttl, mut room) = (None, None, Duration::from_secs(3600), None);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("secret") => secret = Some(value::<String>(parser, "--secret")?),
            Long("sid") => sid = Some(value::<String>(parser, "--sid")?),
            Long("ttl") => ttl = seconds(parser, "--ttl")?,
            Long("room") => {
                let name: String = value(parser, "--room")?;
                if !crate::transport::is_room_name(&name) {
                    return Err("token: --room must be 1-64 bytes of A-Z a-z 0-9 . _ ~ -".into());
                }
                room = Some(name);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let secret = secret.ok_or("token: --secret is required")?;
    let sid = sid.ok_or("token: --sid is required")?;
    if sid.trim() != sid || sid.is_empty() || sid.len() > crate::protocol::MAX_ID_BYTES {
        return Err("token: --sid must be 1-64 bytes without surrounding white space".into());
    }
    Ok(Action::Token { secret, sid, ttl, room })
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
