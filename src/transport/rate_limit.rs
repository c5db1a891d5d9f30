//! The per-connection command rate limit: a token bucket, and a second threshold for
//! clients that keep flooding after being told.

use std::time::{Duration, Instant};

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate: drop the command and answer 9500.
    Drop,
    /// Over the rate again and again: close the connection (1008).
    Disconnect,
}

/// How long dropped commands are counted toward disconnecting.
const STRIKE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct RateLimiter {
    tokens: f64,
    refilled: Instant,
    strikes: u32,
    strikes_since: Instant,
}

impl RateLimiter {
    pub fn new(now: Instant, burst: u32) -> Self {
        RateLimiter { tokens: f64::from(burst), refilled: now, strikes: 0, strikes_since: now }
    }

    /// One command arrives. `rate` 0 means unlimited.
    pub fn check(&mut self, now: Instant, rate: f64, burst: u32) -> Verdict {
        if rate <= 0.0 {
            return Verdict::Allow;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.strikes_since) > STRIKE_WINDOW {
            self.strikes = 0;
            self.strikes_since = now;
        }
        self.strikes += 1;
        if self.strikes > burst { Verdict::Disconnect } else { Verdict::Drop }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(start, 10);
        for _ in 0..10 {
            assert_eq!(limiter.check(start, 100.0, 10), Verdict::Allow);
        }
        assert_eq!(limiter.check(start, 100.0, 10), Verdict::Drop);
        // 100/s: one more token every 10 ms.
        assert_eq!(limiter.check(start + Duration::from_millis(10), 100.0, 10), Verdict::Allow);
        assert_eq!(limiter.check(start + Duration::from_millis(10), 100.0, 10), Verdict::Drop);
        // Idle time refills up to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(limiter.check(later, 100.0, 10), Verdict::Allow);
        }
        assert_eq!(limiter.check(later, 100.0, 10), Verdict::Drop);
    }

    #[test]
    fn flooding_past_the_second_threshold_disconnects() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(start, 5);
        let verdicts: Vec<Verdict> = (0..11).map(|_| limiter.check(start, 1.0, 5)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Allow).count(), 5);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Drop).count(), 5);
        assert_eq!(verdicts.last(), Some(&Verdict::Disconnect));
    }

    #[test]
    fn strikes_are_forgotten_after_a_quiet_second() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(start, 2);
        limiter.check(start, 0.001, 2);
        limiter.check(start, 0.001, 2);
        assert_eq!(limiter.check(start, 0.001, 2), Verdict::Drop);
        assert_eq!(limiter.check(start, 0.001, 2), Verdict::Drop);
        let later = start + Duration::from_secs(2);
        assert_eq!(limiter.check(later, 0.001, 2), Verdict::Drop, "the count starts over");
        assert_eq!(limiter.check(later, 0.001, 2), Verdict::Drop);
        assert_eq!(limiter.check(later, 0.001, 2), Verdict::Disconnect);
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(start, 1);
        for _ in 0..10_000 {
            assert_eq!(limiter.check(start, 0.0, 1), Verdict::Allow);
        }
    }
}
