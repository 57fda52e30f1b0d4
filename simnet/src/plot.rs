//! SVG plots of a run (plotters): WAN throughput over time (total and the
//! first branches), the completion-time CDF, elections over time, and bytes
//! by source.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::report::RunResult;
use crate::sim::{Outcome, PLOTTED_BRANCHES};

/// A plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlotError(String);

fn err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError(e.to_string())
}

const SIZE: (u32, u32) = (900, 500);

/// Writes `wan.svg`, `completion.svg`, `elections.svg` and `sources.svg` into `dir`.
pub fn all(o: &Outcome, r: &RunResult, dir: &Path) -> Result<(), PlotError> {
    wan(o, &dir.join("wan.svg"))?;
    completion(o, &dir.join("completion.svg"))?;
    elections(o, &dir.join("elections.svg"))?;
    sources(r, &dir.join("sources.svg"))?;
    Ok(())
}

fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

/// Points of a line.
type Points = Vec<(f64, f64)>;

/// A named line of points.
type Line = (String, Points);

/// WAN MB/s per second of simulated time: all branches (top) and the
/// first few branches (bottom, when there are several).
fn wan(o: &Outcome, path: &Path) -> Result<(), PlotError> {
    let series = |v: &[u64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(s, b)| (s as f64, *b as f64 / 1e6))
            .collect()
    };
    let total = series(&o.trace.wan_per_s);
    let xmax = (total.len() as f64).max(1.0);
    let root = SVGBackend::new(path, (SIZE.0, SIZE.1 * 3 / 2)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let several = o.branches.len() > 1;
    let (top, bottom) = if several {
        let (t, b) = root.split_vertically(SIZE.1 * 3 / 4);
        (t, Some(b))
    } else {
        (root.clone(), None)
    };
    let mut panels: Vec<(_, String, Vec<Line>)> = vec![(
        top,
        "WAN throughput, DP to all branches".to_owned(),
        vec![("all branches".to_owned(), total)],
    )];
    if let Some(b) = bottom {
        let lines = o
            .trace
            .branch_wan_per_s
            .iter()
            .enumerate()
            .take(PLOTTED_BRANCHES)
            .map(|(i, v)| (format!("branch {i}"), series(v)))
            .collect();
        panels.push((b, "WAN throughput of the first branches".to_owned(), lines));
    }
    for (area, title, lines) in panels {
        let ymax = lines
            .iter()
            .flat_map(|l| l.1.iter().map(|p| p.1))
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.1;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("simulated seconds")
            .y_desc("MB/s")
            .draw()
            .map_err(err)?;
        let one = lines.len() == 1;
        let colored = lines
            .into_iter()
            .enumerate()
            .map(|(i, (name, pts))| (name, pts, if one { BLACK } else { palette(i) }))
            .collect();
        draw_lines(&mut chart, colored)?;
    }
    root.present().map_err(err)
}

type Chart<'a> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Named lines with a legend.
fn draw_lines(
    chart: &mut Chart<'_>,
    lines: Vec<(String, Points, RGBColor)>,
) -> Result<(), PlotError> {
    for (name, pts, c) in lines {
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Fraction of agents done by time t.
fn completion(o: &Outcome, path: &Path) -> Result<(), PlotError> {
    let c = &o.completion_s;
    let n = c.len().max(1) as f64;
    let xmax = c.last().copied().unwrap_or(1.0).max(1e-3) * 1.05;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Completion time (asking to having the content)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("fraction of agents done")
        .draw()
        .map_err(err)?;
    // At most ~2000 points: every k-th agent.
    let step = (c.len() / 2000).max(1);
    let pts: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(
            c.iter()
                .enumerate()
                .filter(|(i, _)| i % step == 0 || *i + 1 == c.len())
                .map(|(i, t)| (*t, (i + 1) as f64 / n)),
        )
        .collect();
    chart
        .draw_series(LineSeries::new(pts, palette(0).stroke_width(2)))
        .map_err(err)?;
    root.present().map_err(err)
}

/// Cumulative masters elected and re-elections over time.
fn elections(o: &Outcome, path: &Path) -> Result<(), PlotError> {
    let ev = &o.trace.elections;
    let xmax = ev
        .last()
        .map_or(1.0, |e| e.0 as f64 / 1e6)
        .max(o.sim_seconds)
        .max(1e-3);
    let ymax = (ev.len() as f64).max(1.0) * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Masters elected over time", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("simulated seconds")
        .y_desc("cumulative count")
        .draw()
        .map_err(err)?;
    let mut lines = Vec::new();
    for (k, (name, re_only)) in [("elections", false), ("re-elections", true)]
        .into_iter()
        .enumerate()
    {
        let mut n = 0.0;
        let mut pts = vec![(0.0, 0.0)];
        for e in ev.iter().filter(|e| !re_only || e.2) {
            let t = e.0 as f64 / 1e6;
            pts.push((t, n));
            n += 1.0;
            pts.push((t, n));
        }
        pts.push((xmax, n));
        lines.push((name.to_owned(), pts, palette(k)));
    }
    draw_lines(&mut chart, lines)?;
    root.present().map_err(err)
}

/// Bytes by source, as bars.
fn sources(r: &RunResult, path: &Path) -> Result<(), PlotError> {
    let s = &r.sources;
    let bars = [
        ("local seed", s.local),
        ("alt-copy", s.alt_copy),
        ("LAN peer", s.lan_peer),
        ("DP (WAN)", s.dp),
    ];
    let ymax = bars.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64 / 1e9 * 1.15;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Bytes by source (all agents)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..4.0, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("GB")
        .draw()
        .map_err(err)?;
    for (i, (name, v)) in bars.iter().enumerate() {
        let x = i as f64;
        let h = *v as f64 / 1e9;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, h)],
                palette(i).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{name}: {h:.2} GB"),
                (x + 0.12, h + ymax * 0.03),
                ("sans-serif", 14),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)
}
