//! CPU time and resident memory of a process, from /proc (Linux).

use std::time::Duration;

/// CPU time a process has used so far. `/proc/PID/schedstat` counts nanoseconds on the
/// CPU; the `stat` ticks (10 ms) are the fallback.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        && let Some(ns) = text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok())
        && threads(pid) == Some(1)
    {
        return Some(Duration::from_nanos(ns));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis((utime + stime) * 10))
}

fn threads(pid: u32) -> Option<u32> {
    status_field(pid, "Threads:")
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field<T: std::str::FromStr>(pid: u32, name: &str) -> Option<T> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
}

/// CPU used by a process between two points in time.
pub struct CpuMeter {
    pid: u32,
    start: Option<Duration>,
}

impl CpuMeter {
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter { pid, start: cpu_time(pid) }
    }

    pub fn elapsed(&self) -> Option<Duration> {
        Some(cpu_time(self.pid)?.saturating_sub(self.start?))
    }
}

/// The file-descriptor limit: raised to the hard limit is the caller's job (`ulimit -n`).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits.lines().find(|line| line.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()
}
