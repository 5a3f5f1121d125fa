//! Results: one JSON per run, a markdown table and SVG plots per results folder.

use crate::workload::Workload;
use anyhow::Result;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl From<&Histogram<u64>> for LatencySummary {
    fn from(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub name: String,
    pub workload: Workload,
    pub distribution: Option<String>,
    pub clients: usize,
    pub connections: usize,
    /// Open-loop target rate, ops/s; `None` for closed loop.
    pub rate: Option<f64>,
    pub consistency: String,
    pub value_bytes: usize,
    pub duration_s: f64,
    /// Successful operations.
    pub ops: u64,
    pub throughput_ops_s: f64,
    /// Per operation kind.
    pub latency: BTreeMap<String, LatencySummary>,
    pub all: LatencySummary,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// Successful operations completed in each second of the run.
    pub per_second: Vec<u64>,
    /// Figures a lab sweep adds (per-node load spread, unavailability, ...).
    pub extra: BTreeMap<String, f64>,
}

/// The markdown table of `runs`, with `extra` columns named in `extra_cols`.
pub fn markdown(runs: &[RunResult], extra_cols: &[&str]) -> String {
    let mut t =
        String::from("| run | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |");
    for c in extra_cols {
        let _ = write!(t, " {c} |");
    }
    t.push_str("\n|---|---:|---:|---:|---:|---:|---:|---:|");
    for _ in extra_cols {
        t.push_str("---:|");
    }
    t.push('\n');
    for r in runs {
        let errors: u64 = r.errors.values().sum();
        let _ = write!(
            t,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            r.name,
            r.throughput_ops_s,
            r.all.p50_ms,
            r.all.p90_ms,
            r.all.p99_ms,
            r.all.p999_ms,
            r.all.max_ms,
            errors
        );
        for c in extra_cols {
            match r.extra.get(*c) {
                // Counts as counts; ratios and CPU seconds per 1,000 operations (often below
                // 0.1) with three decimals.
                Some(v) if v.fract() == 0.0 => {
                    let _ = write!(t, " {v:.0} |");
                }
                Some(v) => {
                    let _ = write!(t, " {v:.3} |");
                }
                None => t.push_str(" - |"),
            }
        }
        t.push('\n');
    }
    t
}

/// Throughput per second of every run, one line each.
pub fn plot_timeline(path: &Path, title: &str, runs: &[RunResult]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = runs.iter().map(|r| r.per_second.len()).max().unwrap_or(1).max(1) as f64;
    let y_max =
        runs.iter().flat_map(|r| r.per_second.iter()).copied().max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.1)?;
    chart.configure_mesh().x_desc("seconds").y_desc("ops/s").draw()?;
    for (i, r) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.per_second.iter().enumerate().map(|(s, n)| (s as f64 + 0.5, *n as f64)),
                color,
            ))?
            .label(r.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}

/// Throughput (bars) and p99 (points, right scale) per run.
pub fn plot_bars(path: &Path, title: &str, runs: &[RunResult]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = runs.len().max(1);
    let y_max = runs.iter().map(|r| r.throughput_ops_s).fold(1.0, f64::max);
    let p_max = runs.iter().map(|r| r.all.p99_ms).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(80)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..y_max * 1.1)?
        .set_secondary_coord(0f64..n as f64, 0f64..p_max * 1.2);
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| names.get(x.floor() as usize).cloned().unwrap_or_default())
        .y_desc("ops/s (bars)")
        .draw()?;
    chart.configure_secondary_axes().y_desc("p99 ms (dots)").draw()?;
    chart.draw_series(runs.iter().enumerate().map(|(i, r)| {
        Rectangle::new(
            [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, r.throughput_ops_s)],
            BLUE.mix(0.5).filled(),
        )
    }))?;
    chart.draw_secondary_series(
        runs.iter()
            .enumerate()
            .map(|(i, r)| Circle::new((i as f64 + 0.5, r.all.p99_ms), 5, RED.filled())),
    )?;
    root.present()?;
    Ok(())
}

/// Writes `runs` as `results.json`, `results.md`, `throughput.svg` and `timeline.svg`.
pub fn write_folder(
    dir: &Path,
    title: &str,
    runs: &[RunResult],
    extra_cols: &[&str],
) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(runs)?)?;
    let table = markdown(runs, extra_cols);
    std::fs::write(dir.join("results.md"), format!("# {title}\n\n{table}"))?;
    plot_bars(&dir.join("throughput.svg"), title, runs)?;
    plot_timeline(&dir.join("timeline.svg"), title, runs)?;
    Ok(table)
}
