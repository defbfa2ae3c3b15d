//! Combining the parts of a data-parallel step ([`Reducer`]).

use super::{Communicator, Element, Reduction};
use crate::error::{Error, Result};
use crate::scalar::Real;

/// How a step's parts are combined across the ranks: the communicator, the
/// order of summation, and the number of parts each rank holds (the same
/// on every rank). See the [module docs](super).
#[derive(Clone, Copy)]
pub struct Reducer<'c> {
    comm: &'c dyn Communicator,
    reduction: Reduction,
    local_parts: usize,
}

impl std::fmt::Debug for Reducer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reducer")
            .field("rank", &self.comm.rank())
            .field("size", &self.comm.size())
            .field("reduction", &self.reduction)
            .field("local_parts", &self.local_parts)
            .finish()
    }
}

impl<'c> Reducer<'c> {
    /// A reducer over `comm` for ranks that each hold `local_parts` parts.
    /// With more than one rank this is collective: it checks that every
    /// rank holds as many parts and uses the same order of summation.
    ///
    /// # Errors
    ///
    /// [`Error::Communication`] when `local_parts` is 0 or the ranks disagree.
    pub fn new(comm: &'c dyn Communicator, reduction: Reduction, local_parts: usize) -> Result<Self> {
        if local_parts == 0 {
            return Err(Error::Communication { what: "a step with no part on this rank".into() });
        }
        if comm.size() > 1 {
            let (k, m) = (local_parts as f64, f64::from(u8::from(reduction == Reduction::Ordered)));
            let mut check = [k, k * k, m, 1.0];
            comm.all_reduce_sum_f64(&mut check)?;
            let p = check[3];
            // Σk = Pk and Σk² = Pk² together hold only when every k is equal.
            if check[0] != p * k || check[1] != p * k * k || (check[2] != 0.0 && check[2] != p) {
                return Err(Error::Communication {
                    what: "the ranks hold different numbers of parts or use different reductions".into(),
                });
            }
        }
        Ok(Self { comm, reduction, local_parts })
    }

    /// The communicator.
    pub fn comm(&self) -> &'c dyn Communicator {
        self.comm
    }

    /// The order of summation.
    pub fn reduction(&self) -> Reduction {
        self.reduction
    }

    /// The parts this rank holds.
    pub fn local_parts(&self) -> usize {
        self.local_parts
    }

    /// The parts of all ranks.
    pub fn global_parts(&self) -> usize {
        self.local_parts * self.comm.size()
    }

    /// Whether there is one part in all: values are then taken as they are.
    pub fn is_single(&self) -> bool {
        self.global_parts() == 1
    }

    /// $\sum_p v_p$ over every part of every rank (`parts`: this rank's,
    /// all of one length).
    ///
    /// # Errors
    ///
    /// [`Error::Communication`]: a transport failure, or parts of
    /// different lengths.
    pub fn sum<T: Real>(&self, parts: Vec<Vec<T>>) -> Result<Vec<T>> {
        self.combine(parts, None)
    }

    /// $\sum_p (n_p/N)\,v_p$ over every part of every rank, $n_p$ =
    /// `counts[p]` and $N$ their sum over all ranks.
    ///
    /// # Errors
    ///
    /// As [`sum`](Self::sum); also when $N = 0$ or `counts` does not have
    /// one entry per part.
    pub fn mean<T: Real>(&self, parts: Vec<Vec<T>>, counts: &[f64]) -> Result<Vec<T>> {
        if counts.len() != parts.len() {
            return Err(Error::Communication { what: format!("{} counts for {} parts", counts.len(), parts.len()) });
        }
        self.combine(parts, Some(counts))
    }

    /// Sums of `f64` values that are whole numbers (counts): exact in any
    /// order, so always one all-reduce.
    ///
    /// # Errors
    ///
    /// A transport failure.
    pub fn sum_counts(&self, counts: &mut [f64]) -> Result<()> {
        self.comm.all_reduce_sum_f64(counts)
    }

    fn combine<T: Real>(&self, mut parts: Vec<Vec<T>>, counts: Option<&[f64]>) -> Result<Vec<T>> {
        let n = parts.first().map_or(0, Vec::len);
        if parts.len() != self.local_parts || parts.iter().any(|p| p.len() != n) {
            return Err(Error::Communication {
                what: format!("{} parts of unequal lengths, {} expected", parts.len(), self.local_parts),
            });
        }
        if self.is_single() {
            return Ok(parts.pop().unwrap_or_default());
        }
        match self.reduction {
            Reduction::Sum => {
                let weights = match counts {
                    Some(c) => {
                        let mut total = [c.iter().sum::<f64>()];
                        self.sum_counts(&mut total)?;
                        Some(weights(c, total[0])?)
                    }
                    None => None,
                };
                let mut acc = fold_owned(parts, weights.as_deref());
                T::all_reduce_sum(self.comm, &mut acc)?;
                Ok(acc)
            }
            Reduction::Ordered => {
                let size = self.comm.size();
                let local: Vec<T> = parts.concat();
                let mut all = vec![T::zero(); local.len() * size];
                T::all_gather(self.comm, &local, &mut all)?;
                let weights = match counts {
                    Some(c) => {
                        let mut every = vec![0.0; c.len() * size];
                        f64::all_gather(self.comm, c, &mut every)?;
                        // Whole numbers: the total is exact in any order.
                        let total = every.iter().sum::<f64>();
                        Some(weights(&every, total)?)
                    }
                    None => None,
                };
                let chunks = all.chunks_exact(n.max(1)).take(self.global_parts());
                Ok(fold(chunks, weights.as_deref(), n))
            }
        }
    }
}

fn weights(counts: &[f64], total: f64) -> Result<Vec<f64>> {
    if total.is_nan() || total <= 0.0 {
        return Err(Error::Communication { what: format!("a mean over {total} examples") });
    }
    Ok(counts.iter().map(|&c| c / total).collect())
}

/// [`fold`] of parts it owns: the sum is accumulated in the first part
/// (the same operations in the same order, so the same bits, without
/// copying the first part).
fn fold_owned<T: Real>(parts: Vec<Vec<T>>, weights: Option<&[f64]>) -> Vec<T> {
    let mut parts = parts.into_iter();
    let Some(mut acc) = parts.next() else { return Vec::new() };
    if let Some(w) = weights {
        let w0 = T::from_f64_lossy(w[0]);
        acc.iter_mut().for_each(|a| *a = w0 * *a);
    }
    for (p, part) in parts.enumerate() {
        match weights.map(|w| T::from_f64_lossy(w[p + 1])) {
            None => acc.iter_mut().zip(&part).for_each(|(a, &x)| *a += x),
            Some(w) => acc.iter_mut().zip(&part).for_each(|(a, &x)| *a += w * x),
        }
    }
    acc
}

/// $\sum_p w_p v_p$ (or $\sum_p v_p$), one part after the other in the
/// given order: the first part (times its weight) starts the sum.
fn fold<'a, T: Real>(parts: impl Iterator<Item = &'a [T]>, weights: Option<&[f64]>, n: usize) -> Vec<T> {
    let mut acc: Option<Vec<T>> = None;
    for (p, part) in parts.enumerate() {
        let w = weights.map(|w| T::from_f64_lossy(w[p]));
        match (&mut acc, w) {
            (None, None) => acc = Some(part.to_vec()),
            (None, Some(w)) => acc = Some(part.iter().map(|&x| w * x).collect()),
            (Some(a), None) => a.iter_mut().zip(part).for_each(|(a, &x)| *a += x),
            (Some(a), Some(w)) => a.iter_mut().zip(part).for_each(|(a, &x)| *a += w * x),
        }
    }
    acc.unwrap_or_else(|| vec![T::zero(); n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::SingleProcess;

    /// Rank 0 of two, whose partner's contribution to every sum is fixed.
    struct Pair {
        partner: Vec<f64>,
    }

    impl Communicator for Pair {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
            unreachable!("f64 only")
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            // IEEE addition commutes exactly, so the order of the two ranks does not matter.
            buf.iter_mut().zip(&self.partner).for_each(|(b, &p)| *b += p);
            Ok(())
        }
        fn broadcast_f32(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
            Ok(())
        }
        fn broadcast_f64(&self, _buf: &mut [f64], _root: usize) -> Result<()> {
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_padded_gather_is_exact_for_every_value() {
        // The partner's padded buffer: -0 in rank 0's half, its values in its own.
        let theirs = [-0.0, 0.0, 1e-310, -3.5];
        let pair = Pair { partner: [-0.0; 4].iter().chain(&theirs).copied().collect() };
        let mine = [0.0, -0.0, f64::MAX, -1e-300];
        let mut out = [1.0; 8];
        pair.all_gather_f64(&mine, &mut out).unwrap();
        let want: Vec<u64> = mine.iter().chain(&theirs).map(|x| x.to_bits()).collect();
        assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        assert!(pair.all_gather_f64(&mine, &mut [0.0; 7]).is_err());
    }

    #[test]
    fn one_part_in_all_is_taken_as_it_is() {
        let r = Reducer::new(&SingleProcess, Reduction::Sum, 1).unwrap();
        let v = vec![-0.0f64, 0.1, f64::MIN_POSITIVE];
        let got = r.mean(vec![v.clone()], &[7.0]).unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn means_are_weighted_by_the_examples_and_summed_in_order() {
        for reduction in [Reduction::Sum, Reduction::Ordered] {
            let r = Reducer::new(&SingleProcess, reduction, 3).unwrap();
            let parts = vec![vec![1.0f64, 2.0], vec![4.0, 8.0], vec![16.0, 32.0]];
            let got = r.mean(parts.clone(), &[1.0, 1.0, 2.0]).unwrap();
            // (1/4)·1 + (1/4)·4 + (1/2)·16, in that order.
            assert_eq!(got, vec![0.25 * 1.0 + 0.25 * 4.0 + 0.5 * 16.0, 0.25 * 2.0 + 0.25 * 8.0 + 0.5 * 32.0]);
            assert_eq!(r.sum(parts).unwrap(), vec![21.0, 42.0]);
        }
    }

    #[test]
    fn bad_parts_are_refused() {
        let r = Reducer::new(&SingleProcess, Reduction::Sum, 2).unwrap();
        assert!(r.sum(vec![vec![1.0f64]]).is_err());
        assert!(r.sum(vec![vec![1.0f64], vec![1.0, 2.0]]).is_err());
        assert!(r.mean(vec![vec![1.0f64], vec![2.0]], &[0.0, 0.0]).is_err());
        assert!(Reducer::new(&SingleProcess, Reduction::Sum, 0).is_err());
    }
}
