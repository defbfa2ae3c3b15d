//! The same measurements over other seeds: how much of the figures is the
//! sample.
//!
//! The EF's step is inversely proportional to the residuals' size weighted
//! by $x^2$ and $x^4$, so one large $x$ (the inputs are log-normal) slows the
//! EF flow down everywhere: with a heavy-tailed sample some EF paths do not
//! reach the optimum within the 50,000 steps of the authors' figure.

use kfac_linalg_faer::Faer;
use rayon::prelude::*;

use super::data::{self, Case};
use super::fields::{Field, Fields, LeastSquares, cosine, linspace};
use super::{EmpiricalFisherConfig, misspec, trajectories};

/// One seed's numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The largest $x$ of the regression sample.
    pub x_max: f64,
    /// $(b^*, \theta^*)$.
    pub optimum: [f64; 2],
    /// The distance of each EF trajectory's end (one per start) from the optimum.
    pub ef_end_distances: Vec<f64>,
    /// The distance of each NGD trajectory's end.
    pub ngd_end_distances: Vec<f64>,
    /// The cosine of EF and NGD over the grid: median and minimum.
    pub ef_vs_ngd_cosine: [f64; 2],
    /// The eigenvalues of $F^{-1}\mathrm{EF}$ for each data set of figure 2.
    pub misspec_eigenvalues: Vec<[f64; 2]>,
    /// Their bootstrap p-values.
    pub misspec_p_values: Vec<f64>,
}

fn regression_part(config: &EmpiricalFisherConfig, seed: u64) -> kfac_core::Result<SeedResult> {
    let la = Faer::sequential();
    let data = data::regression(config.points, seed);
    let problem = LeastSquares::new(&data);
    let optimum = problem.optimum(&la)?;
    let mut fields = Fields::new(&la, &problem)?;
    let mut ends = |field| -> kfac_core::Result<Vec<f64>> {
        config
            .starts
            .iter()
            .map(|&s| {
                let path = trajectories::integrate(&mut fields, field, s, config.steps, config.step_size)?;
                Ok(trajectories::distance(*path.last().unwrap_or(&s), optimum))
            })
            .collect()
    };
    let ef_end_distances = ends(Field::Ef)?;
    let ngd_end_distances = ends(Field::Ngd)?;
    let axis = linspace(config.range[0], config.range[1], config.grid);
    let mut cosines = Vec::with_capacity(axis.len() * axis.len());
    for &theta in &axis {
        for &b in &axis {
            cosines.push(cosine(fields.eval(Field::Ef, [b, theta])?, fields.eval(Field::Ngd, [b, theta])?));
        }
    }
    Ok(SeedResult {
        seed,
        x_max: data.x.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        optimum,
        ef_end_distances,
        ngd_end_distances,
        ef_vs_ngd_cosine: [crate::stats::median(&cosines), cosines.iter().copied().fold(f64::INFINITY, f64::min)],
        misspec_eigenvalues: vec![],
        misspec_p_values: vec![],
    })
}

/// The regression's and the misspecification test's numbers for `seed`.
pub fn seed_result(config: &EmpiricalFisherConfig, seed: u64) -> kfac_nn::Result<SeedResult> {
    let mut r = regression_part(config, seed)?;
    let la = Faer::sequential();
    for case in Case::ALL {
        let d = data::classes(case, config.per_class, seed);
        let problem = misspec::Logistic::new(&d);
        let (w, _) = problem.newton(&la, [0.0, 0.0])?;
        let (_, _, ev) = misspec::curvatures(&la, &problem, w)?;
        let mut rng = kfac_nn::rng::Rng::stream(seed, 100 + case as u64);
        let null = misspec::bootstrap(&la, &problem, w, config.replicates, &mut rng)?;
        r.misspec_eigenvalues.push(ev);
        r.misspec_p_values.push(misspec::null_test(null, misspec::statistic(ev)).p_value);
    }
    Ok(r)
}

/// [`seed_result`] for every seed of `config.sweep_seeds`, in parallel.
pub fn sweep(config: &EmpiricalFisherConfig) -> kfac_nn::Result<Vec<SeedResult>> {
    config.sweep_seeds.par_iter().map(|&s| seed_result(config, s)).collect()
}
