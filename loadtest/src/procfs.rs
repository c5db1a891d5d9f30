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

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` in /proc/net/netstat). Counts every listener of the network
/// namespace, not only the server's: a difference over a run on an otherwise quiet
/// loopback is the server's. A dropped SYN is retried by the client after 1 s, then 3 s.
pub fn listen_overflows() -> Option<u64> {
    netstat_field("TcpExt:", "ListenOverflows")
}

fn netstat_field(section: &str, name: &str) -> Option<u64> {
    netstat_value(&std::fs::read_to_string("/proc/net/netstat").ok()?, section, name)
}

/// A value of /proc/net/netstat's text: each section is a line of names, then a line of
/// values in the same order.
fn netstat_value(text: &str, section: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|line| line.starts_with(section));
    let (names, values) = (lines.next()?, lines.next()?);
    let index = names.split_whitespace().position(|field| field == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_values_are_found_by_section_and_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 4 20243 7\n\
                    IpExt: InNoRoutes ListenOverflows\nIpExt: 1 99\n";
        assert_eq!(netstat_value(text, "TcpExt:", "ListenOverflows"), Some(20243));
        assert_eq!(netstat_value(text, "IpExt:", "ListenOverflows"), Some(99));
        assert_eq!(netstat_value(text, "TcpExt:", "Nothing"), None);
        assert!(listen_overflows().is_some(), "this Linux has /proc/net/netstat");
    }
}
