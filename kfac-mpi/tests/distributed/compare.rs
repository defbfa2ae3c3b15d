//! Comparing two runs: bit for bit, or within a tolerance.

use kfac_core::Real;
use ndarray::Array2;

use super::net::Run;

fn bits<T: Real>(x: T) -> u64 {
    x.to_f64_exact().to_bits()
}

/// `Err` naming the first entry that differs in any bit: weights, losses,
/// velocities, the adaptive state, every tensor and scalar of every block.
pub fn identical<T: Real>(a: &Run<T>, b: &Run<T>) -> Result<(), String> {
    let same = |x: &Array2<T>, y: &Array2<T>| x.dim() == y.dim() && x.iter().zip(y).all(|(&p, &q)| bits(p) == bits(q));
    for (l, (x, y)) in a.weights.iter().zip(&b.weights).enumerate() {
        if !same(x, y) {
            return Err(format!("the weights of layer {l} differ (max |diff| {:e})", max_diff(x, y)));
        }
    }
    if a.losses.iter().map(|x| x.to_bits()).ne(b.losses.iter().map(|x| x.to_bits())) {
        return Err("the losses differ".into());
    }
    for (x, y) in a.state.velocity.iter().zip(&b.state.velocity) {
        if !same(x, y) {
            return Err("the velocities differ".into());
        }
    }
    if a.state.adaptive != b.state.adaptive {
        return Err(format!("the adaptive states differ: {:?} vs {:?}", a.state.adaptive, b.state.adaptive));
    }
    let (pa, pb) = (&a.state.preconditioner, &b.state.preconditioner);
    if pa.step != pb.step || pa.skipped != pb.skipped {
        return Err("the preconditioners' counters differ".into());
    }
    for (l, (x, y)) in pa.blocks.iter().zip(&pb.blocks).enumerate() {
        if x.tensors.keys().ne(y.tensors.keys()) {
            return Err(format!("block {l} holds different tensors"));
        }
        for (k, t) in &x.tensors {
            if t.iter().map(|&v| bits(v)).ne(y.tensors[k].iter().map(|&v| bits(v))) {
                return Err(format!("block {l}: tensor {k} differs"));
            }
        }
        if x.scalars.iter().map(|(k, v)| (k, v.to_bits())).ne(y.scalars.iter().map(|(k, v)| (k, v.to_bits()))) {
            return Err(format!("block {l}: the scalars differ"));
        }
    }
    Ok(())
}

/// $\max_{ij} |x_{ij} - y_{ij}|$.
pub fn max_diff<T: Real>(x: &Array2<T>, y: &Array2<T>) -> f64 {
    x.iter().zip(y).map(|(&p, &q)| (p.to_f64_exact() - q.to_f64_exact()).abs()).fold(0.0, f64::max)
}

/// The largest difference of the weights relative to the largest weight:
/// $\max_l \max_{ij} |W_{ij} - W'_{ij}| / \max_l \max_{ij} |W_{ij}|$.
pub fn relative_weight_diff<T: Real>(a: &Run<T>, b: &Run<T>) -> f64 {
    let scale = a.weights.iter().flat_map(|w| w.iter()).map(|x| x.to_f64_exact().abs()).fold(0.0, f64::max);
    let diff = a.weights.iter().zip(&b.weights).map(|(x, y)| max_diff(x, y)).fold(0.0, f64::max);
    diff / scale.max(f64::MIN_POSITIVE)
}
