//! Figure 2: the three data sets (top) and, at the optimum $w^*$ of each,
//! the ellipses $\{w : (w - w^*)^\top M (w - w^*) = 9\}$ of $M = N F$ and
//! $M = N\,\mathrm{EF}$ over the loss contours (bottom), titled with the
//! eigenvalues of $F^{-1}\mathrm{EF}$ and their bootstrap p-value.

use std::path::Path;

use plotters::prelude::*;

use super::Study;
use super::data::Classes;
use super::draw::{self, Canvas, DrawResult, SS, Swatch, colours, font, s, text_err};
use super::fields::linspace;
use super::misspec::{CaseResult, Logistic};

const PANEL: (u32, u32) = (420, 400);
const LEGEND: u32 = 56;

/// Writes figure 2 to `path`.
pub fn figure(path: &Path, study: &Study) -> kfac_nn::Result<()> {
    let size = (3 * PANEL.0, 2 * PANEL.1 + LEGEND);
    draw::save_png(path, size, |root| {
        let (top, bottom) = root.split_vertically(s(2 * PANEL.1));
        let panels = top.split_evenly((2, 3));
        for (k, (case, data)) in study.misspecification.iter().zip(&study.classes).enumerate() {
            data_panel(&panels[k], case, data)?;
            ellipse_panel(&panels[3 + k], case, data)?;
        }
        let entries = [
            (Swatch::Line(colours::CONTOUR, 2), "loss contour"),
            (Swatch::Line(colours::YELLOW, 4), "Fisher, N F"),
            (Swatch::Dashed(colours::RED, 4), "empirical Fisher, N EF"),
            (Swatch::Marker(5, 9.0, true), "minimum w*"),
        ];
        draw::legend(&bottom, &entries, 17)
    })
}

fn data_panel(area: &Canvas<'_>, case: &CaseResult, data: &Classes) -> DrawResult {
    let title = format!("{}: data", case.case.title());
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(22))
        .margin(s(12))
        .x_label_area_size(s(36))
        .y_label_area_size(s(44))
        .build_cartesian_2d(-9.0..9.0, -9.0..9.0)
        .map_err(text_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(5)
        .y_labels(5)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("x₁")
        .y_desc("x₂")
        .label_style(font(15))
        .axis_desc_style(font(17))
        .draw()
        .map_err(text_err)?;
    let inside = |x: f64, y: f64| x.abs() <= 9.0 && y.abs() <= 9.0;
    let points = || data.x.rows().into_iter().zip(data.y.iter()).filter(|(r, _)| inside(r[0], r[1]));
    let class0 = points()
        .filter(|(_, y)| **y < 0.5)
        .map(|(r, _)| TriangleMarker::new((r[0], r[1]), s(4), colours::BLUE.mix(0.45)));
    chart.draw_series(class0).map_err(text_err)?;
    let class1 =
        points().filter(|(_, y)| **y > 0.5).map(|(r, _)| Cross::new((r[0], r[1]), s(3), colours::YELLOW.mix(0.6)));
    chart.draw_series(class1).map_err(text_err)?;
    Ok(())
}

/// A square box around $w^*$ that holds both ellipses with a margin.
fn window(case: &CaseResult) -> ([f64; 2], [f64; 2]) {
    let c = case.optimum;
    let half = case
        .fisher_ellipse
        .iter()
        .chain(&case.empirical_fisher_ellipse)
        .map(|p| (p[0] - c[0]).abs().max((p[1] - c[1]).abs()))
        .fold(0.0, f64::max)
        * 1.3;
    ([c[0] - half, c[1] - half], [c[0] + half, c[1] + half])
}

fn ellipse_panel(area: &Canvas<'_>, case: &CaseResult, data: &Classes) -> DrawResult {
    let (lo, hi) = window(case);
    let [l1, l2] = case.eigenvalues;
    let title = format!("eig(F⁻¹ EF) = {l1:.2}, {l2:.2}; p = {:.3}", case.null.p_value);
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(19))
        .margin(s(12))
        .x_label_area_size(s(36))
        .y_label_area_size(s(56))
        .build_cartesian_2d(lo[0]..hi[0], lo[1]..hi[1])
        .map_err(text_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(4)
        .y_labels(4)
        .x_label_formatter(&|v| format!("{v:.2}"))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .x_desc("w₁")
        .y_desc("w₂")
        .label_style(font(15))
        .axis_desc_style(font(17))
        .draw()
        .map_err(text_err)?;
    contours(&mut chart, data, lo, hi)?;
    let line = |pts: &[[f64; 2]]| draw::clip_polyline(pts, lo, hi);
    for piece in line(&case.fisher_ellipse) {
        chart.draw_series(LineSeries::new(piece, colours::YELLOW.stroke_width(s(4)))).map_err(text_err)?;
    }
    for piece in line(&case.empirical_fisher_ellipse) {
        chart
            .draw_series(DashedLineSeries::new(piece, s(14), s(8), colours::RED.stroke_width(s(4))))
            .map_err(text_err)?;
    }
    let star = draw::marker_shape(5, 9.0 * f64::from(SS), true);
    let w = case.optimum;
    chart
        .draw_series(std::iter::once(EmptyElement::at((w[0], w[1])) + Polygon::new(star, BLACK.filled())))
        .map_err(text_err)?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Four levels of the cross-entropy over the box, $L_\min + (L_\max - L_\min)(k/5)^2$.
fn contours(chart: &mut Chart<'_, '_>, data: &Classes, lo: [f64; 2], hi: [f64; 2]) -> DrawResult {
    let problem = Logistic::new(data);
    let (xs, ys) = (linspace(lo[0], hi[0], 81), linspace(lo[1], hi[1], 81));
    let values: Vec<Vec<f64>> = ys.iter().map(|&b| xs.iter().map(|&a| problem.loss([a, b])).collect()).collect();
    let (min, max) =
        values.iter().flatten().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    for k in 1..=4 {
        let level = min + (max - min) * (k as f64 / 5.0).powi(2);
        let segments = draw::contour(&xs, &ys, &values, level);
        let lines = segments
            .into_iter()
            .map(|[p, q]| PathElement::new(vec![(p[0], p[1]), (q[0], q[1])], colours::CONTOUR.stroke_width(s(2))));
        chart.draw_series(lines).map_err(text_err)?;
    }
    Ok(())
}
