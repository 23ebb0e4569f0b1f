//! Summary statistics for the benchmarks (`tests/benches`): median and nearest-rank p99.

use std::time::Duration;

/// Median and p99 of a set of samples.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: Duration,
    pub p99: Duration,
    /// How many samples.
    pub n: usize,
}

/// Sorts `samples` and summarises them. Panics on an empty slice (a benchmark that took no
/// samples has nothing to report).
pub fn stats(samples: &mut [Duration]) -> Stats {
    assert!(!samples.is_empty(), "stats of no samples");
    samples.sort_unstable();
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2
    };
    // Nearest rank: the smallest sample with at least 99% of the samples at or below it.
    let p99 = samples[(n * 99).div_ceil(100).saturating_sub(1)];
    Stats { median, p99, n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two_and_p99_is_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = stats(&mut v);
        assert_eq!(s.median, Duration::from_nanos(50_500));
        assert_eq!(s.p99, Duration::from_micros(99));
        assert_eq!(s.n, 100);
        let mut one = [Duration::from_micros(7)];
        assert_eq!(stats(&mut one).p99, Duration::from_micros(7));
    }
}
