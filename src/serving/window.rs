//! Sliding windows of request outcomes per model, for the automatic rollback: per second, how
//! many requests the model computed, how many of them failed in the model (an engine fault),
//! and a latency histogram. A caller's bad input, a deadline it set too short and a request
//! refused for overload are not the model's outcomes and are never recorded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sub-buckets per power of two of the latency histogram (a p99 good to 19%).
const PER_OCTAVE: f64 = 4.0;
/// Histogram bins: latencies from 1 µs to about 2^32 µs (over an hour).
const BINS: usize = 128;
/// The longest window kept, in seconds.
const LONGEST: u64 = 3600;

#[derive(Clone)]
struct Second {
    at: u64,
    total: u64,
    faults: u64,
    latency: [u32; BINS],
}

/// 2^(1/4), 2^(1/2), 2^(3/4): where a mantissa in [1, 2) starts each quarter of its octave.
const QUARTERS: [f64; 3] = [1.189_207_115_002_721, std::f64::consts::SQRT_2, 1.681_792_830_507_429];

/// floor(4 · log2(µs)), read off the float's exponent (the octave) and mantissa (the quarter):
/// every request records one, and a logarithm costs more than the rest of the record.
fn bin(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= 1.0 {
        return 0;
    }
    let bits = us.to_bits();
    let octave = ((bits >> 52) & 0x7ff).saturating_sub(1023) as usize;
    let mantissa = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    let quarter = QUARTERS.iter().filter(|q| mantissa >= **q).count();
    (octave * PER_OCTAVE as usize + quarter).min(BINS - 1)
}

fn bin_upper(b: usize) -> Duration {
    Duration::from_secs_f64(2f64.powf((b + 1) as f64 / PER_OCTAVE) / 1e6)
}

/// What a window holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowFigures {
    /// Requests the model computed (or failed in).
    pub total: u64,
    /// Of those, the model's failures.
    pub faults: u64,
    /// The 99th percentile latency (an upper bound, to 19%); `None` without requests.
    pub p99: Option<Duration>,
}

impl WindowFigures {
    /// faults / total; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.faults as f64 / self.total as f64
        }
    }
}

/// Every model's window.
#[derive(Debug)]
pub struct Windows {
    started: Instant,
    models: Mutex<HashMap<i64, VecDeque<Second>>>,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            models: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for Second {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Second")
            .field("at", &self.at)
            .field("total", &self.total)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Windows {
    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Records one outcome of `model_id`: computed in `latency`, or a fault of the model.
    pub fn record(&self, model_id: i64, fault: bool, latency: Duration) {
        let now = self.now();
        let mut models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let seconds = models.entry(model_id).or_default();
        if seconds.back().is_none_or(|s| s.at != now) {
            seconds.push_back(Second {
                at: now,
                total: 0,
                faults: 0,
                latency: [0; BINS],
            });
        }
        while seconds.front().is_some_and(|s| s.at + LONGEST < now) {
            seconds.pop_front();
        }
        let s = seconds.back_mut().expect("pushed above");
        s.total += 1;
        if fault {
            s.faults += 1;
        } else {
            s.latency[bin(latency)] += 1;
        }
    }

    /// The last `window` seconds of `model_id` (the current second included).
    pub fn figures(&self, model_id: i64, window: Duration) -> WindowFigures {
        let now = self.now();
        let span = window.as_secs().clamp(1, LONGEST);
        let models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = WindowFigures {
            total: 0,
            faults: 0,
            p99: None,
        };
        let mut latency = [0u64; BINS];
        for s in models
            .get(&model_id)
            .into_iter()
            .flatten()
            .filter(|s| s.at + span > now)
        {
            out.total += s.total;
            out.faults += s.faults;
            for (sum, n) in latency.iter_mut().zip(s.latency) {
                *sum += u64::from(n);
            }
        }
        let timed: u64 = latency.iter().sum();
        if timed > 0 {
            let rank = (timed as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            for (b, n) in latency.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    out.p99 = Some(bin_upper(b));
                    break;
                }
            }
        }
        out
    }

    /// Forgets `model_id`'s outcomes: a new term (it became the canary, or the active model).
    pub fn reset(&self, model_id: i64) {
        self.models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&model_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_quarter_octaves_of_a_microsecond() {
        let log = |us: f64| ((us.log2() * PER_OCTAVE) as usize).min(BINS - 1);
        let mut us = 1.000_1_f64;
        while us < 1e10 {
            // Away from the edges, where a logarithm's rounding may fall either side.
            let edge = (us.log2() * PER_OCTAVE).fract();
            if edge > 1e-9 && edge < 1.0 - 1e-9 {
                assert_eq!(bin(Duration::from_secs_f64(us / 1e6)), log(us), "{us} µs");
            }
            us *= 1.013;
        }
        assert_eq!(bin(Duration::ZERO), 0);
        assert_eq!(bin(Duration::from_micros(1)), 0);
        assert_eq!(bin(Duration::from_micros(2)), 4);
        assert_eq!(bin(Duration::from_micros(100)), 26);
        assert_eq!(bin(Duration::from_secs(100_000)), BINS - 1);
        for b in 0..BINS - 1 {
            // A latency just under a bin's upper bound lands in that bin.
            assert_eq!(bin(bin_upper(b).mul_f64(0.999)), b, "bin {b}");
        }
    }

    #[test]
    fn a_window_counts_faults_and_a_p99() {
        let w = Windows::default();
        // 100 computed, one of them slow; 25 faults (no latency).
        for i in 0..100 {
            w.record(1, false, Duration::from_micros(if i == 99 { 50_000 } else { 100 }));
        }
        for _ in 0..25 {
            w.record(1, true, Duration::ZERO);
        }
        let f = w.figures(1, Duration::from_secs(60));
        assert_eq!((f.total, f.faults), (125, 25));
        assert!((f.error_rate() - 0.2).abs() < 1e-9);
        let p99 = f.p99.unwrap();
        assert!(
            p99 >= Duration::from_micros(100) && p99 < Duration::from_micros(200),
            "{p99:?}"
        );
        assert_eq!(w.figures(2, Duration::from_secs(60)).total, 0);
        w.reset(1);
        assert_eq!(w.figures(1, Duration::from_secs(60)).total, 0);
    }
}
