//! The per-run report: `timeline.svg` (throughput and latency per second, with the fault
//! windows shaded) and `report.html` (verdicts, notes, faults, and for an invalid verdict the
//! operations and faults around its counterexample).

use crate::checker::{Outcome, Verdict};
use crate::history::{Event, Kind, calls};
use crate::nemesis::FaultWindow;
use anyhow::Result;
use plotters::prelude::*;
use std::fmt::Write;
use std::path::Path;

const NS_PER_S: u64 = 1_000_000_000;
/// Operations shown around a counterexample: those overlapping this many seconds on each side.
const WINDOW_NS: u64 = 2 * NS_PER_S;
/// Rows of the counterexample table, at most (the HTML stays readable).
const WINDOW_ROWS_MAX: usize = 400;

/// Per-second figures of a history.
#[derive(Debug, Default, Clone)]
pub struct Second {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Buckets completions by the second they completed in.
pub fn per_second(events: &[Event]) -> Vec<Second> {
    let Ok(all) = calls(events) else { return Vec::new() };
    let end = events.last().map_or(0, |e| e.time_ns);
    let n = usize::try_from(end / NS_PER_S + 1).unwrap_or(0);
    let mut secs = vec![Second::default(); n];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); n];
    for c in &all {
        let Some(done) = c.complete_index else { continue };
        let t = events[done].time_ns;
        let i = usize::try_from(t / NS_PER_S).unwrap_or(0).min(n - 1);
        match c.outcome {
            Kind::Ok => secs[i].ok += 1,
            Kind::Fail => secs[i].fail += 1,
            _ => secs[i].info += 1,
        }
        lat[i].push((t - events[c.invoke_index].time_ns) as f64 / 1e6);
    }
    for (s, l) in secs.iter_mut().zip(&mut lat) {
        if l.is_empty() {
            continue;
        }
        l.sort_by(f64::total_cmp);
        let at = |q: f64| l[((l.len() - 1) as f64 * q).round() as usize];
        s.p50_ms = at(0.5);
        s.p99_ms = at(0.99);
    }
    secs
}

/// A line of a chart: its legend, colour and the figure it plots.
type Series<T> = (&'static str, RGBColor, fn(&Second) -> T);

fn timeline_svg(path: &Path, secs: &[Second], faults: &[FaultWindow]) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(320);
    let x_max = secs.len().max(1) as f64;
    let shade = RGBColor(255, 200, 200).mix(0.5);
    let windows: Vec<(f64, f64)> =
        faults.iter().map(|f| (f.start_ns as f64 / 1e9, f.end_ns as f64 / 1e9)).collect();

    let y_ops = secs.iter().map(|s| s.ok + s.fail + s.info).max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&top)
        .caption("operations completed per second (shaded: faults)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_max, 0f64..y_ops * 1.1)?;
    chart.configure_mesh().x_desc("seconds").y_desc("ops/s").draw()?;
    chart.draw_series(
        windows.iter().map(|&(a, b)| Rectangle::new([(a, 0.0), (b, y_ops * 1.1)], shade.filled())),
    )?;
    let series: [Series<u64>; 3] = [
        ("ok", RGBColor(30, 120, 30), |s| s.ok),
        ("fail", RGBColor(200, 120, 0), |s| s.fail),
        ("info (unknown)", RGBColor(200, 0, 0), |s| s.info),
    ];
    for (name, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                secs.iter().enumerate().map(|(i, s)| (i as f64 + 0.5, f(s) as f64)),
                color,
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;

    let y_lat = secs.iter().map(|s| s.p99_ms).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency of completed operations, ms", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_max, 0f64..y_lat * 1.1)?;
    chart.configure_mesh().x_desc("seconds").y_desc("ms").draw()?;
    chart.draw_series(
        windows.iter().map(|&(a, b)| Rectangle::new([(a, 0.0), (b, y_lat * 1.1)], shade.filled())),
    )?;
    let series: [Series<f64>; 2] =
        [("p50", RGBColor(0, 90, 200), |s| s.p50_ms), ("p99", RGBColor(140, 0, 160), |s| s.p99_ms)];
    for (name, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                secs.iter().enumerate().map(|(i, s)| (i as f64 + 0.5, f(s))),
                color,
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn secs(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

/// The operations and faults around a counterexample, as HTML.
fn window_html(events: &[Event], faults: &[FaultWindow], at: &[usize]) -> String {
    let mut h = String::new();
    let times: Vec<u64> = at.iter().filter_map(|&i| events.get(i)).map(|e| e.time_ns).collect();
    let (Some(&lo), Some(&hi)) = (times.iter().min(), times.iter().max()) else { return h };
    let (lo, hi) = (lo.saturating_sub(WINDOW_NS), hi + WINDOW_NS);
    let _ = write!(h, "<h3>Around the counterexample ({} s to {} s)</h3>", secs(lo), secs(hi));
    let near: Vec<&FaultWindow> =
        faults.iter().filter(|f| f.start_ns <= hi && f.end_ns >= lo).collect();
    if near.is_empty() {
        h.push_str("<p>No fault overlaps this window.</p>");
    } else {
        h.push_str("<ul>");
        for f in near {
            let _ = write!(
                h,
                "<li>{} s – {} s: {}</li>",
                secs(f.start_ns),
                secs(f.end_ns),
                esc(&f.fault)
            );
        }
        h.push_str("</ul>");
    }
    let Ok(all) = calls(events) else { return h };
    h.push_str("<table><tr><th>invoked s</th><th>done s</th><th>process</th><th>outcome</th><th>operation</th></tr>");
    let rows = all.iter().filter(|c| {
        let start = events[c.invoke_index].time_ns;
        let end = c.complete_index.map_or(u64::MAX, |i| events[i].time_ns);
        start <= hi && end >= lo
    });
    for c in rows.take(WINDOW_ROWS_MAX) {
        let mark = if at.contains(&c.invoke_index) { " class=\"bad\"" } else { "" };
        let _ = write!(
            h,
            "<tr{mark}><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
            secs(events[c.invoke_index].time_ns),
            c.complete_index.map_or("-".into(), |i| secs(events[i].time_ns)),
            c.process,
            c.outcome,
            esc(&serde_json::to_string(&c.op).unwrap_or_default())
        );
    }
    h.push_str("</table>");
    h
}

/// Writes `timeline.svg` and `report.html` into `dir`.
pub fn write(
    dir: &Path,
    events: &[Event],
    faults: &[FaultWindow],
    verdicts: &[Verdict],
    notes: &[String],
) -> Result<()> {
    let per_sec = per_second(events);
    timeline_svg(&dir.join("timeline.svg"), &per_sec, faults)?;
    let overall = Outcome::of(verdicts);
    let valid = overall == Outcome::Valid;
    let mut h = String::from(
        "<!doctype html><meta charset=utf-8><title>ringkv chaos run</title><style>\
         body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}\
         tr.bad{background:#fcc}.ok{color:#070}.bad{color:#b00}</style>",
    );
    let _ = write!(
        h,
        "<h1>ringkv chaos run: <span class={}>{}</span></h1>",
        if valid { "ok" } else { "bad" },
        overall
    );
    let total: u64 = per_sec.iter().map(|s| s.ok + s.fail + s.info).sum();
    let _ = write!(
        h,
        "<p>{} events, {total} completed operations, {} faults over {} s.</p>",
        events.len(),
        faults.len(),
        per_sec.len()
    );
    for n in notes {
        let _ = write!(h, "<p><b>note:</b> {}</p>", esc(n));
    }
    h.push_str(
        "<h2>Verdicts</h2><table><tr><th>checker</th><th>verdict</th><th>operations</th></tr>",
    );
    for v in verdicts {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class={}>{}</td><td>{}</td></tr>",
            v.checker,
            if v.valid { "ok" } else { "bad" },
            v.outcome(),
            v.ops
        );
    }
    h.push_str("</table><img src=timeline.svg alt=timeline>");
    for v in verdicts.iter().filter(|v| !v.valid) {
        let _ = write!(h, "<h2>{}: counterexamples and undecided keys</h2><ol>", v.checker);
        for c in v.counterexamples.iter().chain(&v.unknown).take(20) {
            let _ = write!(h, "<li><code>{}</code></li>", esc(c));
        }
        h.push_str("</ol>");
        h.push_str(&window_html(events, faults, &v.events));
    }
    h.push_str("<h2>Faults</h2><table><tr><th>from s</th><th>to s</th><th>fault</th></tr>");
    for f in faults {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            secs(f.start_ns),
            secs(f.end_ns),
            esc(&f.fault)
        );
    }
    h.push_str("</table>");
    std::fs::write(dir.join("report.html"), h)?;
    Ok(())
}
