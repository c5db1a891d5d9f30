//! Reports: a readable table for people, JSON (`--json`) for scripts.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::fleet::Fleet;

/// How the clients reached the server; flattened into every report (`"tls": true`).
#[derive(Debug, Default, Serialize)]
pub struct Transport {
    /// `wss://`: every connection spoke TLS (the server's certificate was not verified).
    pub tls: bool,
    /// The TLS version the connections negotiated, e.g. `TLSv1_3`.
    pub tls_version: Option<String>,
}

impl Transport {
    pub fn of(fleet: &Fleet) -> Transport {
        Transport { tls: fleet.tls(), tls_version: fleet.tls_version.clone() }
    }

    /// The table row's value.
    pub fn row(&self) -> String {
        match (self.tls, &self.tls_version) {
            (false, _) => "ws (plain TCP)".to_owned(),
            (true, Some(version)) => format!("wss ({version}, certificate not verified)"),
            (true, None) => "wss (no TLS session completed)".to_owned(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |ns: u64| ns as f64 / 1e6;
        Latency {
            samples: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// CPU use over the measured window.
#[derive(Debug, Default, Serialize)]
pub struct Cpu {
    /// The load tester's own CPU use, percent of one core. Near 100 means the generator,
    /// not the server, may be the bottleneck.
    pub generator_percent: f64,
    /// Server CPU time over the window, percent of one core (with --server-pid).
    pub server_percent: Option<f64>,
    /// Server CPU per delivered message, microseconds (with --server-pid).
    pub server_us_per_message: Option<f64>,
}

/// Prints `rows` as an aligned two-column table.
pub fn table(title: &str, rows: &[(&str, String)]) {
    println!("{title}");
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, value) in rows {
        println!("  {name:<width$}  {value}");
    }
}

pub fn opt(value: Option<f64>, unit: &str) -> String {
    value.map_or_else(|| "n/a (give --server-pid)".to_owned(), |v| format!("{v:.3}{unit}"))
}

pub fn latency_row(latency: &Latency) -> String {
    format!(
        "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms, latency.samples
    )
}

pub fn generator_warning(cpu: &Cpu) -> Option<String> {
    (cpu.generator_percent > 90.0).then(|| {
        format!("the load tester used {:.0}% of a core: it may be the bottleneck", cpu.generator_percent)
    })
}
