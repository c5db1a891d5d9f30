//! The `signaling-server` binary: flags → [`Config`] → bind → serve → exit code.

use std::io::Write;
use std::process::ExitCode;

use signaling_server::config::{self, Action, Config};
use signaling_server::transport::{Server, ServerHandle, StartError};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let config: Config = match config::parse_args(std::env::args_os().skip(1)) {
        Ok(Action::Run(config)) => *config,
        Ok(Action::Help) => {
            print!("{}", config::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Action::Token { secret, sid, ttl, room }) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let expires = (now + ttl).as_secs();
            println!("{}", signaling_server::auth::mint(secret.as_bytes(), &sid, room.as_deref(), expires));
            return ExitCode::SUCCESS;
        }
        Ok(Action::Version) => {
            println!("signaling-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("signaling-server: {message}\nTry --help.");
            return ExitCode::from(2);
        }
    };
    let listen = config.listen;
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(StartError::Tls(message)) => {
            eprintln!("signaling-server: {message}");
            return ExitCode::from(2);
        }
        Err(StartError::Io(e)) => {
            eprintln!("signaling-server: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before the line below: whoever reads it may signal at once.
    if let Err(e) = forward_signals(server.handle()) {
        eprintln!("signaling-server: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    // Scripts and tests read this line to learn the port, whatever the log level.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on {}", server.local_addr());
    let _ = stdout.flush();
    drop(stdout);
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signaling-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM shut the server down; SIGHUP reloads the TLS certificate. A thread of
/// its own waits for them (off the hot path: it sleeps until a signal comes) and wakes the
/// loop through its handle, so the loop itself knows nothing of signals and runs the same
/// in-process in tests.
fn forward_signals(handle: ServerHandle) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            match signal {
                SIGINT | SIGTERM => handle.shutdown(),
                SIGHUP => handle.reload_tls(),
                _ => {}
            }
        }
    })?;
    Ok(())
}
