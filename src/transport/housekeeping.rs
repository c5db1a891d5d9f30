//! Timed rules run in slices: each housekeeping tick visits one slice of the slab, so the
//! pings, timeouts and the flushes they cause for 10 k connections are spread over the
//! sweep instead of landing in one turn.

use std::ops::Range;
use std::time::Duration;

/// Ticks a full sweep of the slab takes.
pub const SLICES: usize = 8;

/// Where the next slice starts.
#[derive(Debug, Default)]
pub struct Sweep {
    cursor: usize,
}

impl Sweep {
    /// The slab keys to visit this tick, for a slab of `capacity` keys.
    pub fn next_slice(&mut self, capacity: usize) -> Range<usize> {
        let chunk = capacity.div_ceil(SLICES).max(1);
        let start = self.cursor.min(capacity);
        let end = (start + chunk).min(capacity);
        self.cursor = if end >= capacity { 0 } else { end };
        start..end
    }
}

/// How long a full sweep takes: deadlines are met within a quarter of the shortest one,
/// and never more than 250 ms late.
pub fn sweep_period(ping_interval: Duration, handshake_timeout: Duration) -> Duration {
    (ping_interval.min(handshake_timeout) / 4).clamp(Duration::from_millis(8), Duration::from_millis(250))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_every_key_in_each_sweep() {
        let mut sweep = Sweep::default();
        for capacity in [0, 1, 7, 8, 9, 1000, 10_001] {
            let mut seen = vec![0u32; capacity];
            for _ in 0..SLICES {
                for key in sweep.next_slice(capacity) {
                    seen[key] += 1;
                }
            }
            // A slab smaller than the slice count has some keys visited twice: harmless.
            assert!(seen.iter().all(|&n| n >= 1), "capacity {capacity}: {seen:?}");
            if capacity % SLICES == 0 {
                assert!(seen.iter().all(|&n| n == 1), "capacity {capacity}: {seen:?}");
                assert_eq!(sweep.cursor, 0, "a sweep ends where the next begins");
            }
            sweep = Sweep::default();
        }
    }

    #[test]
    fn a_shrunk_slab_restarts_the_sweep() {
        let mut sweep = Sweep::default();
        sweep.next_slice(1000);
        sweep.next_slice(1000);
        assert_eq!(sweep.next_slice(10), 10..10);
        assert_eq!(sweep.next_slice(10), 0..2);
    }
}
