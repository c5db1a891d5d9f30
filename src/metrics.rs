//! Counters for `/metrics`, in the Prometheus text format.
//!
//! Plain integers: the loop is the only writer and the only reader, so there are no
//! atomics and no locks. The core keeps its own counters ([`CoreStats`]); this module
//! holds the transport's and renders both.

use std::fmt::Write;
use std::time::Duration;

use crate::indexed_enum::indexed_enum;
use crate::protocol::{CommandKind, ErrorCode};
use crate::signaling::{CoreCounters, CoreStats};

indexed_enum! {
    /// Why a connection ended: the `reason` label of `signaling_connections_closed_total`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum CloseReason {
        /// The client sent a close frame.
        ClientClose,
        /// TCP ended without a close frame: reset, EOF, or a failed write.
        ConnectionLost,
        LivenessTimeout,
        MessageTooBig,
        OutputLimit,
        /// Held output (client lists included) stayed over `--max-output-soft` too long.
        OutputSoftLimit,
        ProtocolError,
        InvalidUtf8,
        /// Kept flooding past the rate limit.
        RateLimit,
        HandshakeTimeout,
        /// A newer connection resumed this one's client (close code 4001).
        TakenOver,
        /// A plain HTTP request was answered (or refused) and the connection closed.
        Http,
        Shutdown,
    }
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client_close",
            CloseReason::ConnectionLost => "connection_lost",
            CloseReason::LivenessTimeout => "liveness_timeout",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::OutputLimit => "output_limit",
            CloseReason::OutputSoftLimit => "output_soft_limit",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::RateLimit => "rate_limit",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::TakenOver => "taken_over",
            CloseReason::Http => "http",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Upper bounds of the loop-iteration histogram buckets, in seconds.
const TURN_BUCKETS: [f64; 10] = [0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5];

#[derive(Debug, Default)]
pub struct Metrics {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub connections_accepted: u64,
    /// Refused at accept because `--max-connections` were open.
    pub connections_refused: u64,
    closed: [u64; CloseReason::COUNT],
    turn_buckets: [u64; TURN_BUCKETS.len()],
    turn_count: u64,
    turn_seconds: f64,
}

impl Metrics {
    pub fn closed(&mut self, reason: CloseReason) {
        self.closed[reason.index()] += 1;
    }

    /// Records the work time of one loop iteration (not the time it slept).
    pub fn turn(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        self.turn_count += 1;
        self.turn_seconds += seconds;
        if let Some(bucket) = TURN_BUCKETS.iter().position(|&le| seconds <= le) {
            self.turn_buckets[bucket] += 1;
        }
    }

    /// The whole `/metrics` body.
    pub fn render(&self, core: &CoreStats, counters: &CoreCounters, open_connections: usize) -> String {
        let mut out = String::with_capacity(4096);
        let open = open_connections as u64;
        let registered = core.registered as u64;
        family(
            &mut out,
            "signaling_connections_open",
            "gauge",
            "Open TCP connections, handshakes included.",
            None,
            [("", open)],
        );
        family(
            &mut out,
            "signaling_clients_registered",
            "gauge",
            "Clients registered with an sId.",
            None,
            [("", registered)],
        );
        family(
            &mut out,
            "signaling_clients_away",
            "gauge",
            "Registered clients whose connection was lost, waiting for a resume (--resume-grace).",
            None,
            [("", core.away as u64)],
        );
        family(
            &mut out,
            "signaling_rooms_open",
            "gauge",
            "Rooms with at least one registered client, the default room included.",
            None,
            [("", core.rooms as u64)],
        );
        family(
            &mut out,
            "signaling_room_clients_max",
            "gauge",
            "Registered clients of the largest room (room names are not labels: clients choose them).",
            None,
            [("", core.largest_room as u64)],
        );
        family(
            &mut out,
            "signaling_client_list_changes_kept",
            "gauge",
            "Client-list changes kept for delta clients that are behind, over all rooms.",
            None,
            [("", core.client_list_changes_kept as u64)],
        );
        let sessions = [
            ("new", core.sessions_new as u64),
            ("pending", core.sessions_pending as u64),
            ("active", core.sessions_active as u64),
        ];
        family(&mut out, "signaling_sessions", "gauge", "Live sessions by state.", Some("state"), sessions);
        let commands = CommandKind::ALL
            .iter()
            .map(|&kind| (kind.name(), counters.commands[kind.index()]))
            .chain([("invalid", counters.invalid_messages)]);
        family(
            &mut out,
            "signaling_commands_received_total",
            "counter",
            "Client messages by command; \"invalid\" failed checks 1-3 (not JSON, wrong shape, unknown command).",
            Some("cmd"),
            commands,
        );
        let codes: Vec<String> = ErrorCode::ALL.iter().map(|code| code.code().to_string()).collect();
        let errors = codes.iter().zip(counters.errors).map(|(code, count)| (code.as_str(), count));
        family(
            &mut out,
            "signaling_errors_sent_total",
            "counter",
            "Error messages sent, by code.",
            Some("code"),
            errors,
        );
        for (name, help, value) in [
            ("signaling_bytes_received_total", "Bytes read from client sockets.", self.bytes_received),
            ("signaling_bytes_sent_total", "Bytes written to client sockets.", self.bytes_sent),
            (
                "signaling_client_lists_sent_total",
                "Client-list messages (clu snapshots and cld changes) queued to clients.",
                core.client_lists_sent,
            ),
            (
                "signaling_client_list_bytes_total",
                "Bytes of clu and cld messages queued.",
                core.client_list_bytes,
            ),
            (
                "signaling_client_list_changes_sent_total",
                "cld messages (delta presence) among the client-list messages.",
                core.client_list_changes_sent,
            ),
            ("signaling_connections_accepted_total", "TCP connections accepted.", self.connections_accepted),
            (
                "signaling_resumes_total",
                "Resumes that took a client over on a new connection.",
                counters.resumes,
            ),
            ("signaling_resumes_refused_total", "Resumes refused with error 9104.", counters.resumes_refused),
            (
                "signaling_resume_graces_expired_total",
                "Away clients whose --resume-grace ran out: they are gone, their peers got leave.",
                counters.graces_expired,
            ),
            (
                "signaling_resume_held_over_limit_total",
                "Away clients gone because what was held for them passed --max-output.",
                counters.held_over_limit,
            ),
            (
                "signaling_connections_refused_total",
                "Connections refused with 503 at --max-connections or --max-connections-per-ip.",
                self.connections_refused,
            ),
        ] {
            family(&mut out, name, "counter", help, None, [("", value)]);
        }
        let closed = CloseReason::ALL.iter().map(|&reason| (reason.label(), self.closed[reason.index()]));
        family(
            &mut out,
            "signaling_connections_closed_total",
            "counter",
            "Connections ended, by reason.",
            Some("reason"),
            closed,
        );

        out.push_str("# HELP signaling_loop_iteration_seconds Work time of one event-loop iteration (sleep excluded).\n");
        out.push_str("# TYPE signaling_loop_iteration_seconds histogram\n");
        let mut cumulative = 0;
        for (le, count) in TURN_BUCKETS.iter().zip(self.turn_buckets) {
            cumulative += count;
            let _ = writeln!(out, "signaling_loop_iteration_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "signaling_loop_iteration_seconds_bucket{{le=\"+Inf\"}} {}", self.turn_count);
        let _ = writeln!(out, "signaling_loop_iteration_seconds_sum {}", self.turn_seconds);
        let _ = writeln!(out, "signaling_loop_iteration_seconds_count {}", self.turn_count);
        out
    }
}

/// One metric family: its HELP and TYPE lines, then a sample per `(label value, value)`
/// (`label` `None`: one unlabelled sample).
fn family<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: Option<&str>,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    for (value_of_label, value) in samples {
        let _ = match label {
            Some(label) => writeln!(out, "{name}{{{label}=\"{value_of_label}\"}} {value}"),
            None => writeln!(out, "{name} {value}"),
        };
    }
}
