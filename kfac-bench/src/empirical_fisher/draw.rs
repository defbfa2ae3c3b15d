//! Drawing helpers shared by the two figures: clipping, arrows, markers,
//! contour lines, the legend, and writing a PNG atomically.
//!
//! plotters' bitmap backend does not antialias, so a figure is drawn at
//! [`SS`] times its size and averaged down over $SS \times SS$ pixel blocks.
//! Every size in pixels in the figures' code goes through [`s`].

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::fields::Point;

/// The drawing area of a whole figure.
pub type Canvas<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A drawing error as text.
pub type DrawResult<T = ()> = std::result::Result<T, String>;

/// Converts a plotters error to text.
pub fn text_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The supersampling factor.
pub const SS: u32 = 2;

/// A size in the final image's pixels, in the drawing's pixels.
pub fn s(pixels: u32) -> u32 {
    pixels * SS
}

/// The font of every label, sized in the final image's pixels.
pub fn font(size: u32) -> TextStyle<'static> {
    ("sans-serif", s(size)).into_font().into()
}

/// Colours of the paper (Paul Tol's high-contrast scheme) and two more.
pub mod colours {
    use plotters::style::RGBColor;
    /// GD, and class 0.
    pub const BLUE: RGBColor = RGBColor(0, 68, 136);
    /// NGD and the Fisher, and class 1.
    pub const YELLOW: RGBColor = RGBColor(221, 170, 51);
    /// The empirical Fisher.
    pub const RED: RGBColor = RGBColor(187, 85, 102);
    /// K-FAC of the EF.
    pub const GREEN: RGBColor = RGBColor(34, 136, 51);
    /// EKFAC of the EF.
    pub const PURPLE: RGBColor = RGBColor(120, 40, 150);
    /// The arrows.
    pub const ARROW: RGBColor = RGBColor(140, 140, 140);
    /// The loss contours.
    pub const CONTOUR: RGBColor = RGBColor(185, 185, 185);
}

/// Draws a figure of `size` pixels with `draw` (on a canvas [`SS`] times
/// larger) into a temporary file beside `path`, then renames it over `path`:
/// a failure never leaves a partial PNG.
pub fn save_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Canvas<'_>) -> DrawResult) -> kfac_nn::Result<()> {
    kfac_nn::report::register_font();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp.png", std::process::id()));
    let result = (|| {
        let big = (s(size.0), s(size.1));
        let mut buffer = vec![255u8; 3 * big.0 as usize * big.1 as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buffer, big).into_drawing_area();
            draw(&root)?;
            root.present().map_err(text_err)?;
        }
        let small = downsample(&buffer, big.0 as usize, big.1 as usize);
        let mut out = BitMapBackend::new(&tmp, size);
        out.blit_bitmap((0, 0), size, &small).map_err(text_err)?;
        out.present().map_err(text_err)
    })();
    let renamed = result.and_then(|()| std::fs::rename(&tmp, path).map_err(text_err));
    renamed.map_err(|reason| {
        let _ = std::fs::remove_file(&tmp);
        kfac_nn::Error::Plot { path: path.to_path_buf(), reason }
    })
}

/// The mean of each [`SS`] x [`SS`] block of an RGB image `w` x `h` pixels.
fn downsample(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    let k = SS as usize;
    let (sw, sh) = (w / k, h / k);
    let mut out = vec![0u8; 3 * sw * sh];
    for y in 0..sh {
        for x in 0..sw {
            for c in 0..3 {
                let mut sum = 0u32;
                for dy in 0..k {
                    for dx in 0..k {
                        sum += u32::from(rgb[3 * ((y * k + dy) * w + x * k + dx) + c]);
                    }
                }
                out[3 * (y * sw + x) + c] = ((sum + (k * k / 2) as u32) / (k * k) as u32) as u8;
            }
        }
    }
    out
}

/// The part of the segment $[a, b]$ inside the box $[lo, hi]$ (Liang–Barsky).
pub fn clip_segment(a: Point, b: Point, lo: Point, hi: Point) -> Option<(Point, Point)> {
    let d = [b[0] - a[0], b[1] - a[1]];
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for k in 0..2 {
        for (p, q) in [(-d[k], a[k] - lo[k]), (d[k], hi[k] - a[k])] {
            if p == 0.0 {
                if q < 0.0 {
                    return None;
                }
            } else {
                let t = q / p;
                if p < 0.0 {
                    t0 = t0.max(t);
                } else {
                    t1 = t1.min(t);
                }
            }
        }
    }
    (t0 <= t1).then(|| ([a[0] + t0 * d[0], a[1] + t0 * d[1]], [a[0] + t1 * d[0], a[1] + t1 * d[1]]))
}

/// The pieces of a polyline inside the box $[lo, hi]$.
pub fn clip_polyline(points: &[Point], lo: Point, hi: Point) -> Vec<Vec<(f64, f64)>> {
    let mut pieces: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for w in points.windows(2) {
        match clip_segment(w[0], w[1], lo, hi) {
            Some((p, q)) => {
                let start = (p[0], p[1]);
                if current.last() != Some(&start) {
                    if current.len() > 1 {
                        pieces.push(std::mem::take(&mut current));
                    }
                    current.clear();
                    current.push(start);
                }
                current.push((q[0], q[1]));
            }
            None => {
                if current.len() > 1 {
                    pieces.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    if current.len() > 1 {
        pieces.push(current);
    }
    pieces
}

/// An arrow from `from` along `v` (data units): its shaft and its head
/// (a triangle), the head `head` long at most and half the arrow at most.
pub fn arrow(from: Point, v: Point, head: f64) -> (Point, Vec<Point>) {
    let len = v[0].hypot(v[1]);
    let tip = [from[0] + v[0], from[1] + v[1]];
    if len == 0.0 {
        return (tip, vec![]);
    }
    let h = head.min(0.5 * len);
    let (u, n) = ([v[0] / len, v[1] / len], [-v[1] / len, v[0] / len]);
    let base = [tip[0] - h * u[0], tip[1] - h * u[1]];
    let w = 0.45 * h;
    (base, vec![tip, [base[0] + w * n[0], base[1] + w * n[1]], [base[0] - w * n[0], base[1] - w * n[1]]])
}

/// The vertices of a regular polygon (`star` alternates two radii) of
/// radius `r` pixels of the drawing around the origin, first vertex up.
pub fn marker_shape(corners: usize, r: f64, star: bool) -> Vec<(i32, i32)> {
    let count = if star { 2 * corners } else { corners };
    (0..count)
        .map(|k| {
            let phi = std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * k as f64 / count as f64;
            let radius = if star && k % 2 == 1 { 0.45 * r } else { r };
            ((radius * phi.cos()).round() as i32, (-radius * phi.sin()).round() as i32)
        })
        .collect()
}

/// The segments of the contour line $\{f = \text{level}\}$ of values sampled
/// on the grid `xs` × `ys` (`values[j][i]` at $(x_i, y_j)$), by marching squares.
pub fn contour(xs: &[f64], ys: &[f64], values: &[Vec<f64>], level: f64) -> Vec<[Point; 2]> {
    let mut out = Vec::new();
    for j in 0..ys.len().saturating_sub(1) {
        for i in 0..xs.len().saturating_sub(1) {
            let corners = [(i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1)];
            let mut cuts: Vec<Point> = Vec::with_capacity(4);
            for k in 0..4 {
                let ((ia, ja), (ib, jb)) = (corners[k], corners[(k + 1) % 4]);
                let (fa, fb) = (values[ja][ia] - level, values[jb][ib] - level);
                if (fa < 0.0) != (fb < 0.0) {
                    let t = fa / (fa - fb);
                    cuts.push([xs[ia] + t * (xs[ib] - xs[ia]), ys[ja] + t * (ys[jb] - ys[ja])]);
                }
            }
            match cuts.len() {
                2 => out.push([cuts[0], cuts[1]]),
                4 => {
                    out.push([cuts[0], cuts[1]]);
                    out.push([cuts[2], cuts[3]]);
                }
                _ => {}
            }
        }
    }
    out
}

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy)]
pub enum Swatch {
    /// A line of this colour and width.
    Line(RGBColor, u32),
    /// A dashed line.
    Dashed(RGBColor, u32),
    /// A marker: corners, radius, star or not.
    Marker(usize, f64, bool),
}

/// One row of legend entries, centred in `area`.
pub fn legend(area: &Canvas<'_>, entries: &[(Swatch, &str)], size: u32) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let style = font(size);
    let px = |v: u32| s(v) as i32;
    let swatch = px(44);
    let widths: Vec<i32> = entries
        .iter()
        .map(|(_, t)| area.estimate_text_size(t, &style).map(|(tw, _)| tw as i32).unwrap_or(8 * t.len() as i32))
        .collect();
    let gap = px(28);
    let total: i32 = widths.iter().map(|w| w + swatch + px(8) + gap).sum::<i32>() - gap;
    let mut x = ((w as i32 - total) / 2).max(px(4));
    let y = h as i32 / 2;
    for ((swatch_kind, text), tw) in entries.iter().zip(widths) {
        match *swatch_kind {
            Swatch::Line(c, width) => area
                .draw(&PathElement::new(vec![(x, y), (x + swatch, y)], c.stroke_width(s(width))))
                .map_err(text_err)?,
            Swatch::Dashed(c, width) => area
                .draw(&DashedPathElement::new(vec![(x, y), (x + swatch, y)], px(9), px(6), c.stroke_width(s(width))))
                .map_err(text_err)?,
            Swatch::Marker(corners, r, star) => {
                let pts: Vec<(i32, i32)> = marker_shape(corners, r * f64::from(SS), star)
                    .into_iter()
                    .map(|(dx, dy)| (x + swatch / 2 + dx, y + dy))
                    .collect();
                area.draw(&Polygon::new(pts, BLACK.filled())).map_err(text_err)?
            }
        }
        let anchor = plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Left,
            plotters::style::text_anchor::VPos::Center,
        );
        area.draw(&Text::new(text.to_string(), (x + swatch + px(8), y), style.clone().pos(anchor)))
            .map_err(text_err)?;
        x += swatch + px(8) + tw + gap;
    }
    Ok(())
}
