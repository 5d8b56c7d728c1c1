//! `--plot FILE`: the latency distribution of each target as SVG, on a "nines" axis so the
//! tail (99 %, 99.9 %, 99.99 %) is as wide as the body.

use std::path::Path;

use anyhow::Context;

use super::Report;
use crate::latency::Latencies;

/// Draws each run's latency distribution (a line per target) into `path`.
///
/// # Errors
/// When drawing or writing the SVG fails.
pub fn write(path: &Path, runs: &[(&Report, &Latencies)]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(report, latencies)| (report.target.clone(), nines(&latencies.distribution())))
        .collect();
    let max_y = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(0.1f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let first = runs.first().map(|(r, _)| *r).context("no run to plot")?;
    let title = format!(
        "{} latency distribution ({} peers)",
        first.scenario, first.peers
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0f64..4.0f64, 0.0f64..max_y)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("schedule-to-receive latency (ms)")
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            3 => "99.9%".into(),
            4 => "99.99%".into(),
            _ => String::new(),
        })
        .x_labels(5)
        .draw()?;
    let colors = [RED, BLUE, GREEN];
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present().context("writing the SVG")?;
    Ok(())
}

/// Maps percentiles onto a "nines" axis: 0 → 0, 90 → 1, 99 → 2, 99.9 → 3, 99.99 → 4.
fn nines(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .map(|&(p, ms)| {
            let x = if p >= 100.0 {
                4.0
            } else {
                (-(1.0 - p / 100.0).log10()).clamp(0.0, 4.0)
            };
            (x, ms)
        })
        .collect()
}
