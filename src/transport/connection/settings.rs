//! What the connection machine needs to know of the configuration.

use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;

use crate::config::Config;

/// What the machine needs to know of the configuration; one per server, shared by all.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ws: WebSocketConfig,
    /// For connections on the conformance echo path (larger messages).
    pub echo_ws: WebSocketConfig,
    /// Unsent messages allowed (hard limit, client lists not counted): past it, 1008.
    pub max_output: usize,
    /// The echo path's own output bound.
    pub echo_max_output: usize,
    /// Unsent bytes, client lists included, tolerated for `max_output_soft_for`.
    pub max_output_soft: usize,
    pub max_output_soft_for: Duration,
    pub ping_interval: Duration,
    pub handshake_timeout: Duration,
    pub max_request_head: usize,
    /// Commands per second (0: unlimited) and back to back.
    pub rate_limit: f64,
    pub rate_burst: u32,
    /// How long a closing connection may take to acknowledge our close frame.
    pub close_linger: Duration,
}

/// tungstenite's own read buffer per connection, and the most it takes from the input per
/// call. Small on purpose: thousands of idle clients each hold one; sockets are read in
/// large chunks into the loop's single inbox instead.
const READ_BUFFER: usize = 256;

impl Settings {
    /// The machines' share of the configuration.
    pub fn new(config: &Config, close_linger: Duration) -> Settings {
        let ws = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Frames go straight into the connection's own output, never held back.
            .write_buffer_size(0)
            .max_message_size(Some(config.max_message))
            .max_frame_size(Some(config.max_message));
        let echo_ws =
            ws.max_message_size(Some(config.echo_max_message)).max_frame_size(Some(config.echo_max_message));
        Settings {
            ws,
            echo_ws,
            max_output: config.max_output,
            echo_max_output: 2 * config.echo_max_message,
            max_output_soft: config.max_output_soft,
            max_output_soft_for: config.max_output_soft_for,
            ping_interval: config.ping_interval,
            handshake_timeout: config.handshake_timeout,
            max_request_head: config.max_request_head,
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            close_linger,
        }
    }

    /// A connection silent this long is gone; one whose writes take nothing this long is
    /// not reading.
    /// The output bound of a connection: the echo path has its own.
    pub(super) fn output_cap(&self, echo: bool) -> usize {
        if echo { self.echo_max_output } else { self.max_output }
    }

    pub(super) fn silence_limit(&self) -> Duration {
        self.ping_interval * 2
    }
}
