//! The MLP as kfac-core's [`CurvatureModel`]: exact quadratic forms by
//! forward-mode products ([`fisher_gram`]), or kfac-core's finite-difference
//! fallback ([`FiniteDifferences`](kfac::optim::FiniteDifferences)) through
//! [`OutputModel`]; the loss at $\theta + \delta$ from a forward pass of a
//! scratch copy of the network.

use kfac::LinAlg;
use kfac::optim::{CurvatureModel, OutputModel};
use ndarray::{Array2, ArrayView2, Zip};

use crate::backend::Scalar;
use crate::curvature::fisher_gram;
use crate::error::{Error, Result};
use crate::loss::Loss;
use crate::mlp::{Forward, Mlp, NoHook};

/// How the adaptive rule's quadratic forms $u^\top F v$ are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CurvatureProducts {
    /// Exact Jacobian-vector products by forward mode (the R-operator).
    #[default]
    Exact,
    /// kfac-core's fallback for frameworks without forward mode: central
    /// differences of the network's outputs, two forward passes per direction.
    FiniteDifferences,
}

/// The MLP on one step's batch.
pub(crate) struct MlpModel<'a, T: Scalar> {
    pub la: &'a dyn LinAlg<T>,
    pub mlp: &'a Mlp<T>,
    pub fwd: &'a Forward<T>,
    pub x: ArrayView2<'a, T>,
    pub t: ArrayView2<'a, T>,
    pub loss: Loss,
    /// A copy of the network that holds $\theta + \delta$, reused from step to step.
    pub scratch: &'a mut Option<Mlp<T>>,
}

impl<T: Scalar> MlpModel<'_, T> {
    /// The network with weights $\theta + \delta$, each entry rounded once.
    fn shifted(&mut self, delta: &[Array2<T>]) -> Result<&Mlp<T>> {
        if delta.len() != self.mlp.layers.len() {
            let n = self.mlp.layers.len();
            return Err(Error::Shape { what: "direction (layers)", expected: (n, 1), found: (delta.len(), 1) });
        }
        let fits = |s: &Mlp<T>| s.layers.iter().zip(&self.mlp.layers).all(|(a, b)| a.w.dim() == b.w.dim());
        if !self.scratch.as_ref().is_some_and(fits) {
            *self.scratch = Some(self.mlp.clone());
        }
        let scratch = self.scratch.as_mut().expect("set above");
        for ((s, l), d) in scratch.layers.iter_mut().zip(&self.mlp.layers).zip(delta) {
            if d.dim() != l.w.dim() {
                return Err(Error::Shape { what: "direction", expected: l.w.dim(), found: d.dim() });
            }
            s.activation = l.activation;
            s.kind = l.kind;
            Zip::from(&mut s.w).and(&l.w).and(d).for_each(|s, &w, &d| *s = w + d);
        }
        scratch.parallelism = self.mlp.parallelism;
        Ok(scratch)
    }
}

impl<T: Scalar> CurvatureModel<T> for MlpModel<'_, T> {
    type Error = Error;

    fn fisher_gram(&mut self, dirs: &[&[Array2<T>]]) -> Result<Vec<Vec<f64>>> {
        fisher_gram(self.la, self.mlp, self.fwd, self.loss, dirs)
    }

    fn loss_at(&mut self, delta: &[Array2<T>]) -> Result<f64> {
        let (la, x, t, loss) = (self.la, self.x, self.t, self.loss);
        let after = self.shifted(delta)?.forward(la, x, &mut NoHook)?;
        loss.value(after.output(), t).map_err(Error::from)
    }
}

impl<T: Scalar> OutputModel<T> for MlpModel<'_, T> {
    type Error = Error;

    fn outputs_at(&mut self, delta: &[Array2<T>]) -> Result<Array2<T>> {
        let (la, x) = (self.la, self.x);
        let fwd = self.shifted(delta)?.forward(la, x, &mut NoHook)?;
        Ok(fwd.output().to_owned())
    }

    fn loss_at(&mut self, delta: &[Array2<T>]) -> Result<f64> {
        CurvatureModel::loss_at(self, delta)
    }
}
