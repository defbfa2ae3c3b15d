//! Figure 1: the data with the fitted line, then the fields of GD, NGD, EF
//! and K-FAC/EKFAC of the EF on the $(b, \theta)$ plane, with the loss
//! contours and the trajectories (a hexagon at the start, a star at the end).
//!
//! Arrows are not normalised: as in the authors' plot (matplotlib's `quiver`
//! with `scale = 30`), a vector $v$ is drawn $\lVert v \rVert / 30$ of the panel's
//! width long.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::draw::{self, Canvas, DrawResult, SS, Swatch, colours, font, s, text_err};
use super::fields::{Field, LeastSquares, Point, linspace};
use super::{GridPoint, Study};

/// A panel's chart.
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Side of a panel, and the figure's size.
const PANEL: (u32, u32) = (380, 430);
const LEGEND: u32 = 56;

/// matplotlib's `quiver(scale = 30)`: a vector of norm 30 spans the panel.
const QUIVER_SCALE: f64 = 30.0;

/// How a trajectory is drawn.
#[derive(Debug, Clone, Copy)]
struct PathStyle {
    field: Field,
    colour: RGBColor,
    dashed: bool,
}

fn style(field: Field) -> PathStyle {
    let (colour, dashed) = match field {
        Field::Gd => (colours::BLUE, false),
        Field::Ngd => (colours::YELLOW, false),
        Field::Ef => (colours::RED, false),
        Field::KfacEf => (colours::GREEN, false),
        Field::EkfacEf => (colours::PURPLE, true),
    };
    PathStyle { field, colour, dashed }
}

/// Writes figure 1 to `path`.
pub fn figure(path: &Path, study: &Study) -> kfac_nn::Result<()> {
    let size = (5 * PANEL.0, PANEL.1 + LEGEND);
    draw::save_png(path, size, |root| {
        let (top, bottom) = root.split_vertically(s(PANEL.1));
        let panels = top.split_evenly((1, 5));
        data_panel(&panels[0], study)?;
        let specs: [(&str, Field, &[Field]); 4] = [
            ("GD", Field::Gd, &[Field::Gd]),
            ("NGD", Field::Ngd, &[Field::Ngd]),
            ("EF", Field::Ef, &[Field::Ef]),
            ("K-FAC / EKFAC of the EF", Field::KfacEf, &[Field::KfacEf, Field::EkfacEf]),
        ];
        for (area, (title, arrows, paths)) in panels[1..].iter().zip(specs) {
            field_panel(area, study, title, arrows, paths)?;
        }
        draw::legend(&bottom, &legend_entries(), 17)
    })
}

fn legend_entries() -> Vec<(Swatch, &'static str)> {
    vec![
        (Swatch::Line(colours::CONTOUR, 2), "loss contour"),
        (Swatch::Line(colours::BLUE, 4), "GD"),
        (Swatch::Line(colours::YELLOW, 4), "NGD"),
        (Swatch::Line(colours::RED, 4), "EF"),
        (Swatch::Line(colours::GREEN, 4), "K-FAC of the EF"),
        (Swatch::Dashed(colours::PURPLE, 3), "EKFAC of the EF"),
        (Swatch::Marker(6, 7.0, false), "start"),
        (Swatch::Marker(5, 10.0, true), "end (50,000 steps)"),
    ]
}

fn data_panel(area: &Canvas<'_>, study: &Study) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption("Data", font(22))
        .margin(s(12))
        .x_label_area_size(s(36))
        .y_label_area_size(s(44))
        .build_cartesian_2d(-1.0..10.0, -2.0..22.0)
        .map_err(text_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("x")
        .y_desc("y")
        .label_style(font(15))
        .axis_desc_style(font(17))
        .draw()
        .map_err(text_err)?;
    let data = &study.regression_data;
    let xs = data.x.column(0);
    let dots = xs.iter().zip(data.y.iter()).map(|(&x, &y)| Circle::new((x, y), s(2), colours::BLUE.mix(0.35).filled()));
    chart.draw_series(dots).map_err(text_err)?;
    let [b, theta] = study.regression.optimum;
    let line: Vec<(f64, f64)> = [0.0, 9.0].iter().map(|&x| (x, theta * x + b)).collect();
    chart.draw_series(DashedLineSeries::new(line, s(10), s(6), BLACK.stroke_width(s(3)))).map_err(text_err)?;
    let label = format!("y = {theta:.3} x + {b:.3}");
    chart.draw_series(std::iter::once(Text::new(label, (-0.5, 20.5), font(16)))).map_err(text_err)?;
    Ok(())
}

fn field_panel(area: &Canvas<'_>, study: &Study, title: &str, arrows: Field, paths: &[Field]) -> DrawResult {
    let [lo, hi] = study.config.range;
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(22))
        .margin(s(12))
        .x_label_area_size(s(36))
        .y_label_area_size(s(44))
        .build_cartesian_2d(lo..hi, lo..hi)
        .map_err(text_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(7)
        .y_labels(7)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("b")
        .y_desc("θ")
        .label_style(font(15))
        .axis_desc_style(font(18))
        .draw()
        .map_err(text_err)?;
    contours(&mut chart, study)?;
    quiver(&mut chart, &study.regression.grid, arrows, hi - lo, ([lo, lo], [hi, hi]))?;
    for &field in paths {
        trajectories(&mut chart, study, style(field), ([lo, lo], [hi, hi]))?;
    }
    markers(&mut chart, study, paths)
}

/// Six levels of the loss, $L_\min + (L_\max - L_\min)(k/7)^2$ over the
/// plotted box (for a quadratic, equally spaced ellipses), drawn by
/// marching squares on a fine grid.
fn contours(chart: &mut Chart<'_, '_>, study: &Study) -> DrawResult {
    let problem = LeastSquares::new(&study.regression_data);
    let [lo, hi] = study.config.range;
    let axis = linspace(lo, hi, 121);
    let values: Vec<Vec<f64>> = axis.iter().map(|&t| axis.iter().map(|&b| problem.loss([b, t])).collect()).collect();
    let (min, max) =
        values.iter().flatten().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    for k in 1..=6 {
        let level = min + (max - min) * (k as f64 / 7.0).powi(2);
        let segments = draw::contour(&axis, &axis, &values, level);
        let lines = segments
            .into_iter()
            .map(|[p, q]| PathElement::new(vec![(p[0], p[1]), (q[0], q[1])], colours::CONTOUR.stroke_width(s(2))));
        chart.draw_series(lines).map_err(text_err)?;
    }
    Ok(())
}

fn quiver(
    chart: &mut Chart<'_, '_>,
    grid: &[GridPoint],
    field: Field,
    width: f64,
    bounds: (Point, Point),
) -> DrawResult {
    let pick = |g: &GridPoint| match field {
        Field::Gd => g.gd,
        Field::Ngd => g.ngd,
        Field::Ef => g.ef,
        Field::KfacEf => g.kfac_ef,
        Field::EkfacEf => g.ekfac_ef,
    };
    let scale = width / QUIVER_SCALE;
    let head = 0.025 * width;
    for g in grid {
        let v = pick(g);
        let (base, tri) = draw::arrow(g.at, [scale * v[0], scale * v[1]], head);
        if let Some((p, q)) = draw::clip_segment(g.at, base, bounds.0, bounds.1) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(p[0], p[1]), (q[0], q[1])],
                    colours::ARROW.stroke_width(s(2)),
                )))
                .map_err(text_err)?;
        }
        let inside =
            |p: &Point| p[0] >= bounds.0[0] && p[0] <= bounds.1[0] && p[1] >= bounds.0[1] && p[1] <= bounds.1[1];
        if !tri.is_empty() && tri.iter().all(inside) {
            let pts: Vec<(f64, f64)> = tri.iter().map(|p| (p[0], p[1])).collect();
            chart.draw_series(std::iter::once(Polygon::new(pts, colours::ARROW.filled()))).map_err(text_err)?;
        }
    }
    Ok(())
}

fn trajectories(chart: &mut Chart<'_, '_>, study: &Study, style: PathStyle, bounds: (Point, Point)) -> DrawResult {
    for &start in &study.config.starts {
        let Some(t) = study.trajectory(style.field, start) else { continue };
        let thinned: Vec<Point> = t.path.iter().step_by(10).chain(t.path.last()).copied().collect();
        for piece in draw::clip_polyline(&thinned, bounds.0, bounds.1) {
            if style.dashed {
                chart
                    .draw_series(DashedLineSeries::new(piece, s(9), s(7), style.colour.stroke_width(s(3))))
                    .map_err(text_err)?;
            } else {
                chart.draw_series(LineSeries::new(piece, style.colour.stroke_width(s(5)))).map_err(text_err)?;
            }
        }
    }
    Ok(())
}

fn markers(chart: &mut Chart<'_, '_>, study: &Study, paths: &[Field]) -> DrawResult {
    let hexagon = draw::marker_shape(6, 7.0 * f64::from(SS), false);
    let star = draw::marker_shape(5, 10.0 * f64::from(SS), true);
    let at = |p: Point, shape: &Vec<(i32, i32)>| {
        EmptyElement::at((p[0], p[1])) + Polygon::new(shape.clone(), BLACK.filled())
    };
    chart.draw_series(study.config.starts.iter().map(|&p| at(p, &hexagon))).map_err(text_err)?;
    let ends: Vec<Point> = paths
        .iter()
        .flat_map(|&f| study.config.starts.iter().filter_map(move |&s| study.trajectory(f, s)))
        .map(|t| t.end)
        .collect();
    chart.draw_series(ends.iter().map(|&e| at(e, &star))).map_err(text_err)?;
    Ok(())
}
