//! Sending a block's state from one rank to the others: how the owner of a
//! layer's refresh hands its new cache to every rank.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};

use super::Communicator;
use crate::error::{Error, Result};
use crate::scalar::Real;
use crate::state::BlockState;

/// The entries of a block state a refresh reads and never writes: the
/// Kronecker factors, identical on every rank once the statistics are
/// reduced, so they are not sent.
pub const UNCHANGED_BY_REFRESH: [&str; 2] = ["A", "B"];

/// What the root of [`broadcast_state`] sends: the state after its
/// refresh, or the refresh's error as text.
pub type Outcome<T> = std::result::Result<BlockState<T>, String>;

/// Broadcasts rank `root`'s `outcome` (only read on the root) and returns,
/// on every rank, the state it sent with the entries named in
/// [`UNCHANGED_BY_REFRESH`] taken from `own` (this rank's current state of
/// the block): its tensors and scalars, the kind and shape of `own`.
///
/// Three broadcasts: two lengths, a header of `f64` (names, dimensions,
/// scalars) and the tensors' values.
///
/// # Errors
///
/// [`Error::Communication`] when the root's refresh failed (its message,
/// on every rank) or a transfer fails or is malformed.
pub fn broadcast_state<T: Real>(
    comm: &dyn Communicator,
    root: usize,
    outcome: Option<Outcome<T>>,
    own: &BlockState<T>,
) -> Result<BlockState<T>> {
    let (mut header, mut data) = match (comm.rank() == root, &outcome) {
        (true, Some(o)) => encode(o),
        (true, None) => (vec![0.0, 0.0], Vec::new()),
        _ => (Vec::new(), Vec::new()),
    };
    let mut lens = [header.len() as f64, data.len() as f64];
    comm.broadcast_f64(&mut lens, root)?;
    header.resize(lens[0] as usize, 0.0);
    data.resize(lens[1] as usize, T::zero());
    comm.broadcast_f64(&mut header, root)?;
    if !data.is_empty() {
        T::broadcast(comm, &mut data, root)?;
    }
    decode(&header, &data, own).map_err(|what| Error::Communication { what: format!("rank {root}: {what}") })
}

fn push_name(h: &mut Vec<f64>, name: &str) {
    h.push(name.len() as f64);
    h.extend(name.bytes().map(f64::from));
}

fn encode<T: Real>(outcome: &Outcome<T>) -> (Vec<f64>, Vec<T>) {
    let mut h = Vec::new();
    let mut data = Vec::new();
    match outcome {
        Err(msg) => {
            h.push(0.0);
            push_name(&mut h, msg);
        }
        Ok(st) => {
            h.push(1.0);
            let sent: Vec<_> = st.tensors.iter().filter(|(k, _)| !UNCHANGED_BY_REFRESH.contains(&k.as_str())).collect();
            h.push(sent.len() as f64);
            for (name, t) in sent {
                push_name(&mut h, name);
                h.push(t.ndim() as f64);
                h.extend(t.shape().iter().map(|&d| d as f64));
                data.extend(t.iter().copied());
            }
            h.push(st.scalars.len() as f64);
            for (name, &v) in &st.scalars {
                push_name(&mut h, name);
                h.push(v);
            }
        }
    }
    (h, data)
}

/// Reads the header left to right.
struct Cursor<'a> {
    h: &'a [f64],
    at: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> std::result::Result<f64, String> {
        let v = self.h.get(self.at).copied().ok_or("a truncated header")?;
        self.at += 1;
        Ok(v)
    }

    fn count(&mut self) -> std::result::Result<usize, String> {
        let v = self.next()?;
        if v >= 0.0 && v.fract() == 0.0 && v <= self.h.len().max(1 << 40) as f64 {
            Ok(v as usize)
        } else {
            Err(format!("a malformed count {v}"))
        }
    }

    fn name(&mut self) -> std::result::Result<String, String> {
        let n = self.count()?;
        let bytes = (0..n).map(|_| self.next().map(|b| b as u8)).collect::<std::result::Result<Vec<u8>, _>>()?;
        String::from_utf8(bytes).map_err(|_| "a malformed name".to_string())
    }
}

fn decode<T: Real>(h: &[f64], data: &[T], own: &BlockState<T>) -> std::result::Result<BlockState<T>, String> {
    let mut c = Cursor { h, at: 0 };
    if c.next()? != 1.0 {
        return Err(format!("refresh failed: {}", c.name()?));
    }
    let mut tensors: BTreeMap<String, ArrayD<T>> = own
        .tensors
        .iter()
        .filter(|(k, _)| UNCHANGED_BY_REFRESH.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut at = 0;
    for _ in 0..c.count()? {
        let name = c.name()?;
        let dims = (0..c.count()?).map(|_| c.count()).collect::<std::result::Result<Vec<usize>, _>>()?;
        let len: usize = dims.iter().product();
        let values = data.get(at..at + len).ok_or("truncated values")?.to_vec();
        at += len;
        let t = ArrayD::from_shape_vec(IxDyn(&dims), values).map_err(|e| e.to_string())?;
        tensors.insert(name, t);
    }
    let mut scalars = BTreeMap::new();
    for _ in 0..c.count()? {
        let name = c.name()?;
        scalars.insert(name, c.next()?);
    }
    if at != data.len() || c.at != h.len() {
        return Err("trailing values".into());
    }
    Ok(BlockState { kind: own.kind.clone(), shape: own.shape, tensors, scalars })
}

/// The owner of each layer's refresh: the longest-processing-time greedy
/// rule of KAISA. With `costs[l]` the cost of layer $l$ (for Kronecker
/// factors $\dim A^3 + d_\text{out}^3$, the work of their
/// eigendecompositions), layers are taken by decreasing cost (ties: lower
/// layer first) and each goes to the rank with the least cost so far
/// (ties: lower rank). The rule is deterministic, so every rank computes the
/// same assignment; its makespan is within $4/3$ of the optimum (Graham, 1969).
pub fn assign_owners(costs: &[f64], size: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let mut load = vec![0.0f64; size.max(1)];
    let mut owner = vec![0; costs.len()];
    for l in order {
        let r = (0..load.len()).min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b))).unwrap_or(0);
        owner[l] = r;
        load[r] += costs[l];
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::SingleProcess;
    use crate::shape::LayerShape;

    #[test]
    fn owners_balance_the_cost_greedily() {
        assert_eq!(assign_owners(&[1.0, 8.0, 3.0, 3.0], 2), vec![1, 0, 1, 1]);
        assert_eq!(assign_owners(&[5.0, 5.0, 5.0], 3), vec![0, 1, 2]);
        assert_eq!(assign_owners(&[2.0, 1.0], 1), vec![0, 0]);
    }

    #[test]
    fn a_state_survives_its_encoding_bit_for_bit_except_the_factors() {
        let shape = LayerShape::new(2, 3);
        let mut st = BlockState::<f32>::new("ekfac", shape);
        st.matrix("A", &ndarray::Array2::from_elem((3, 3), 1.5));
        st.matrix("ua", &ndarray::Array2::from_shape_fn((3, 3), |(i, j)| (i as f32 - 1.3 * j as f32).sin()));
        st.vector("sa", &ndarray::Array1::from_vec(vec![-0.0, 1e-30, f32::MAX]));
        st.scalar("S.weight", 0.25);
        let mut own = BlockState::<f32>::new("ekfac", shape);
        own.matrix("A", &ndarray::Array2::from_elem((3, 3), 1.5));
        own.matrix("stale", &ndarray::Array2::zeros((1, 1)));
        let got = broadcast_state(&SingleProcess, 0, Some(Ok(st.clone())), &own).unwrap();
        assert_eq!(got.tensors.keys().collect::<Vec<_>>(), vec!["A", "sa", "ua"]);
        for (k, v) in &st.tensors {
            let bits = |a: &ArrayD<f32>| a.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.tensors[k]), bits(v), "{k}");
        }
        assert_eq!(got.scalars, st.scalars);
    }

    #[test]
    fn a_failed_refresh_is_an_error_on_every_rank() {
        let own = BlockState::<f64>::new("ekfac", LayerShape::new(1, 1));
        let e = broadcast_state(&SingleProcess, 0, Some(Err("eigh did not converge".into())), &own).unwrap_err();
        assert!(e.to_string().contains("eigh did not converge"), "{e}");
    }
}
