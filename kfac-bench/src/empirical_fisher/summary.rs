//! The study's numbers as Markdown tables (`empirical_fisher.md`).

use super::Study;
use super::sweep::SeedResult;

/// The study's numbers as a Markdown summary.
pub fn table(study: &Study) -> String {
    let r = &study.regression;
    let mut s = format!(
        "optimum (b, theta) = ({:.4}, {:.4}), loss {:.4}\n\n| field | start | end (b, theta) | distance | length |\n|---|---|---|---|---|\n",
        r.optimum[0], r.optimum[1], r.loss_at_optimum
    );
    for t in &r.trajectories {
        s += &format!(
            "| {} | ({}, {}) | ({:.6}, {:.6}) | {:.2e} | {:.3} |\n",
            t.field.name(),
            t.start[0],
            t.start[1],
            t.end[0],
            t.end[1],
            t.distance,
            t.length
        );
    }
    let c = &r.cosines;
    s += &format!(
        "\nNGD's largest deviation from a straight line: {:.2e}\ncosines over the grid (median, min): EF vs NGD {:.3}, {:.3}; K-FAC-EF vs NGD {:.6}, {:.6}; EKFAC-EF vs NGD {:.4}, {:.4}; K-FAC-EF vs F alone 1 - {:.1e}\n\n| data set | w* | accuracy | eig(F^-1 EF) | max abs(eig - 1) | bootstrap 99.5 % | p |\n|---|---|---|---|---|---|---|\n",
        r.ngd_max_deviation,
        c.ef_vs_ngd.median,
        c.ef_vs_ngd.min,
        c.kfac_ef_vs_ngd.median,
        c.kfac_ef_vs_ngd.min,
        c.ekfac_ef_vs_ngd.median,
        c.ekfac_ef_vs_ngd.min,
        1.0 - c.kfac_ef_vs_fisher_only.min
    );
    for m in &study.misspecification {
        s += &format!(
            "| {} | ({:.3}, {:.3}) | {:.1} % | {:.3}, {:.3} | {:.3} | {:.3} | {:.4} |\n",
            m.case.title(),
            m.optimum[0],
            m.optimum[1],
            100.0 * m.accuracy,
            m.eigenvalues[0],
            m.eigenvalues[1],
            m.statistic,
            m.null.quantile_995,
            m.null.p_value
        );
    }
    if !study.sweep.is_empty() {
        s += &sweep_table(&study.sweep);
    }
    s
}

fn sweep_table(sweep: &[SeedResult]) -> String {
    let mut s = String::from(
        "\n| seed | max x | EF end distances | cos EF-NGD median, min | eig(F^-1 EF) correct / A / B | p |\n|---|---|---|---|---|---|\n",
    );
    for r in sweep {
        let d: Vec<String> = r.ef_end_distances.iter().map(|d| format!("{d:.1e}")).collect();
        let e: Vec<String> = r.misspec_eigenvalues.iter().map(|e| format!("{:.2}, {:.2}", e[0], e[1])).collect();
        let p: Vec<String> = r.misspec_p_values.iter().map(|p| format!("{p:.3}")).collect();
        s += &format!(
            "| {} | {:.2} | {} | {:.2}, {:.2} | {} | {} |\n",
            r.seed,
            r.x_max,
            d.join(", "),
            r.ef_vs_ngd_cosine[0],
            r.ef_vs_ngd_cosine[1],
            e.join(" / "),
            p.join(" / ")
        );
    }
    s
}
