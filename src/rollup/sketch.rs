//! Sign-in durations as a log histogram: percentiles over any window in
//! fixed memory, mergeable across buckets, nodes and stores.
//!
//! Below [`EXACT_BELOW`] ms every millisecond has its own bin; above, bins
//! grow by [`GROWTH`], and a percentile is reported as its bin's midpoint,
//! so it is within [`RELATIVE_ERROR`] of the exact nearest-rank value.

use std::collections::BTreeMap;

/// Durations below this many ms are counted exactly.
pub const EXACT_BELOW: u64 = 100;

/// Each bin above [`EXACT_BELOW`] is this much wider than the one before.
pub const GROWTH: f64 = 1.02;

/// The worst relative error of a reported percentile: half a bin's width.
pub const RELATIVE_ERROR: f64 = (GROWTH - 1.0) / 2.0;

/// The bin of a duration.
pub fn bin(ms: u64) -> u32 {
    if ms < EXACT_BELOW {
        ms as u32
    } else {
        let steps = ((ms as f64) / EXACT_BELOW as f64).ln() / GROWTH.ln();
        EXACT_BELOW as u32 + steps.floor() as u32
    }
}

/// The smallest duration of a bin and the first of the next.
fn bounds(bin: u32) -> (f64, f64) {
    if u64::from(bin) < EXACT_BELOW {
        (f64::from(bin), f64::from(bin) + 1.0)
    } else {
        let k = f64::from(bin - EXACT_BELOW as u32);
        let low = EXACT_BELOW as f64 * GROWTH.powf(k);
        (low, low * GROWTH)
    }
}

/// The value a bin reports: exact below [`EXACT_BELOW`], else its midpoint.
pub fn value_of(bin: u32) -> u64 {
    let (low, high) = bounds(bin);
    if u64::from(bin) < EXACT_BELOW {
        low as u64
    } else {
        ((low + high) / 2.0).round() as u64
    }
}

/// Counts of durations by bin, and the exact largest one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durations {
    bins: BTreeMap<u32, u64>,
    count: u64,
    max: Option<u64>,
}

impl Durations {
    /// Counts one duration.
    pub fn add(&mut self, ms: u64) {
        self.add_bin(bin(ms), 1);
        self.max = Some(self.max.map_or(ms, |m| m.max(ms)));
    }

    /// Counts `n` durations of bin `bin` (as read back from a store).
    pub fn add_bin(&mut self, bin: u32, n: u64) {
        if n == 0 {
            return;
        }
        *self.bins.entry(bin).or_default() += n;
        self.count += n;
    }

    /// Raises the exact maximum (as read back from a store).
    pub fn note_max(&mut self, ms: u64) {
        self.max = Some(self.max.map_or(ms, |m| m.max(ms)));
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Durations) {
        for (&bin, &n) in &other.bins {
            self.add_bin(bin, n);
        }
        if let Some(max) = other.max {
            self.note_max(max);
        }
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The exact largest duration.
    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// The nearest-rank value at quantile `q` (0..=1), within [`RELATIVE_ERROR`].
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (&bin, &n) in &self.bins {
            seen += n;
            if seen >= rank {
                let v = value_of(bin);
                // The midpoint of the last bin may pass the true maximum.
                return Some(self.max.map_or(v, |m| v.min(m)));
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_the_stated_error_of_the_exact_ones() {
        let mut d = Durations::default();
        let mut exact: Vec<u64> = (0..10_000u64).map(|i| (i * 7919) % 60_000 + 1).collect();
        for &ms in &exact {
            d.add(ms);
        }
        exact.sort();
        for q in [0.5, 0.95, 0.99] {
            let rank = (q * exact.len() as f64).ceil() as usize - 1;
            let want = exact[rank] as f64;
            let got = d.quantile(q).unwrap() as f64;
            assert!(
                (got - want).abs() <= want * RELATIVE_ERROR + 1.0,
                "q{q}: {got} vs {want}"
            );
        }
        assert_eq!(d.max(), exact.last().copied());
        assert_eq!(d.count(), 10_000);
    }

    #[test]
    fn small_durations_are_exact_and_merging_adds_up() {
        let (mut a, mut b) = (Durations::default(), Durations::default());
        for ms in [3, 3, 7] {
            a.add(ms);
        }
        b.add(99);
        a.merge(&b);
        assert_eq!(a.quantile(0.5), Some(3));
        assert_eq!(a.quantile(1.0), Some(99));
        assert_eq!(a.count(), 4);
        assert_eq!(Durations::default().quantile(0.5), None);
    }

    #[test]
    fn bins_grow_monotonically() {
        let mut last = 0;
        for ms in 0..200_000u64 {
            let b = bin(ms);
            assert!(b >= last, "{ms}");
            last = b;
            let (low, high) = bounds(b);
            assert!(
                (ms as f64) >= low.floor() - 1.0 && (ms as f64) < high + 1.0,
                "{ms} in {low}..{high}"
            );
        }
    }
}
