//! A small seeded generator whose whole state is one number.
//!
//! Training draws random numbers for the initialisation, the data order and
//! the targets sampled for the true Fisher. [`Rng`] is SplitMix64 (Steele,
//! Lea & Flood, 2014): 64 bits of state, so it can be saved in a checkpoint
//! and restored exactly, and its output is fixed by this file alone, not by
//! the version of a dependency.

/// SplitMix64 with uniform and normal draws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream for purpose `stream` (e.g. one per layer),
    /// derived from `seed`.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut r = Self::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    /// The state (to save).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// A generator continuing from a saved state.
    pub fn from_state(state: u64) -> Self {
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in $[0, 1)$, 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in $(0, 1)$: never 0, for logarithms.
    pub fn uniform_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal, by the Box–Muller transform (one draw per call).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform_open(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform integer in `0..n` (`n > 0`), by rejection (no modulo bias).
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Shuffles `v` in place (Fisher–Yates).
    pub fn shuffle<X>(&mut self, v: &mut [X]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_and_reproducibility() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 1/sqrt(n) = 0.0022 for the mean, sqrt(2/n) = 0.0032 for the variance.
        assert!(mean.abs() < 5.0 * 0.0022, "{mean}");
        assert!((var - 1.0).abs() < 5.0 * 0.0032, "{var}");
        let mut a = Rng::new(3);
        let mut b = Rng::from_state(Rng::new(3).state());
        assert_eq!(a.next_u64(), b.next_u64());
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[r.below(3)] += 1;
        }
        assert!(counts.iter().all(|&c| (c as f64 - 10_000.0).abs() < 5.0 * 82.0), "{counts:?}");
    }
}
