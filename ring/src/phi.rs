//! Phi-accrual failure detection (Hayashibara et al., 2004).
//!
//! Instead of a yes/no timeout, phi expresses how unlikely the current
//! silence is given the heartbeat intervals seen so far: phi = 1 means a 10%
//! chance the node is still alive and merely late, phi = 8 about 1e-8. The
//! caller passes heartbeat arrival times and `now`; nothing here reads a
//! clock. Intervals are modelled as a normal distribution over a bounded
//! window of recent samples.

use std::collections::VecDeque;

/// Tuning of a detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhiConfig {
    /// A node is considered down once phi reaches this.
    pub threshold: f64,
    /// Intervals remembered (the sample window).
    pub window: usize,
    /// Floor on the standard deviation, so a perfectly regular history
    /// does not make one late heartbeat look fatal.
    pub std_dev_min_ms: f64,
    /// Pause tolerated on top of the observed mean (GC, a busy VM).
    pub acceptable_pause_ms: f64,
    /// Interval assumed before any has been observed.
    pub first_interval_ms: f64,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            window: 200,
            std_dev_min_ms: 100.0,
            acceptable_pause_ms: 1000.0,
            first_interval_ms: 1000.0,
        }
    }
}

/// The detector for one peer.
#[derive(Clone, Debug)]
pub struct PhiAccrual {
    config: PhiConfig,
    intervals_ms: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last_heartbeat_ms: Option<u64>,
}

impl PhiAccrual {
    pub fn new(config: PhiConfig) -> PhiAccrual {
        assert!(config.window >= 2, "phi window must hold at least 2 samples");
        PhiAccrual {
            config,
            intervals_ms: VecDeque::with_capacity(config.window),
            sum: 0.0,
            sum_sq: 0.0,
            last_heartbeat_ms: None,
        }
    }

    /// Records a heartbeat that arrived at `now_ms`. Out-of-order times (a
    /// heartbeat older than the last) are ignored.
    pub fn heartbeat(&mut self, now_ms: u64) {
        match self.last_heartbeat_ms {
            None => self.push(self.config.first_interval_ms),
            Some(last) if now_ms <= last => return,
            Some(last) => self.push((now_ms - last) as f64),
        }
        self.last_heartbeat_ms = Some(now_ms);
    }

    fn push(&mut self, interval: f64) {
        if self.intervals_ms.len() == self.config.window {
            let old = self.intervals_ms.pop_front().expect("window is full");
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.intervals_ms.push_back(interval);
        self.sum += interval;
        self.sum_sq += interval * interval;
    }

    /// Phi at `now_ms`: 0 before the first heartbeat.
    pub fn phi(&self, now_ms: u64) -> f64 {
        let Some(last) = self.last_heartbeat_ms else { return 0.0 };
        let n = self.intervals_ms.len() as f64;
        let mean = self.sum / n + self.config.acceptable_pause_ms;
        let variance = (self.sum_sq / n - (self.sum / n).powi(2)).max(0.0);
        let std_dev = variance.sqrt().max(self.config.std_dev_min_ms);
        let elapsed = now_ms.saturating_sub(last) as f64;
        // P(interval > elapsed) under a normal distribution, by the
        // logistic approximation of its CDF; then -log10 of it.
        let y = (elapsed - mean) / std_dev;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p_later = if elapsed > mean {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        -p_later.max(f64::MIN_POSITIVE).log10()
    }

    /// Whether the peer counts as up at `now_ms`.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.phi(now_ms) < self.config.threshold
    }
}
