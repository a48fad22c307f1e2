//! The timeline picture of a run: faults as bands (coloured by class),
//! answered operations per second and their median latency as lines,
//! violations as red marks. Drawn as SVG; the PNG is the same SVG
//! rasterised (resvg), so the two never disagree.

use std::fmt::Write as _;

use crate::run::Report;
use crate::ChaosError;

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 90.0;
/// Height of each of the two panels (throughput, latency).
const PANEL: f64 = 150.0;
const GAP: f64 = 40.0;
/// Width of a bucket the lines are drawn from.
const BUCKET_S: f64 = 0.5;

fn colour(class: &str) -> &'static str {
    match class {
        "process" => "#f4a261",
        "network" => "#8ecae6",
        "disk" => "#cdb4db",
        "clock" => "#b7e4c7",
        _ => "#dddddd",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document.
pub fn svg(report: &Report) -> String {
    // The workload's span: the last answer or fault, not the checking after it.
    let last_op = report
        .ops
        .iter()
        .map(|o| o.ret.unwrap_or(o.call))
        .max()
        .unwrap_or(0) as f64
        / 1e9;
    let last_fault = report.faults.iter().map(|f| f.healed_s).fold(0.0, f64::max);
    let duration = last_op.max(last_fault).max(1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |s: f64| LEFT + plot_w * (s / duration).clamp(0.0, 1.0);
    let buckets = (duration / BUCKET_S).ceil() as usize + 1;
    let mut answered = vec![0u64; buckets];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); buckets];
    for op in &report.ops {
        if let Some(ret) = op.ret {
            let b = ((ret as f64 / 1e9) / BUCKET_S) as usize;
            if b < buckets {
                answered[b] += 1;
                latencies[b].push((ret - op.call) as f64 / 1e6);
            }
        }
    }
    let rate: Vec<f64> = answered.iter().map(|&n| n as f64 / BUCKET_S).collect();
    let median: Vec<f64> = latencies
        .iter_mut()
        .map(|l| {
            if l.is_empty() {
                return 0.0;
            }
            l.sort_by(f64::total_cmp);
            l[l.len() / 2]
        })
        .collect();
    let history_rows = report.failing_history.as_ref().map_or(0, |h| {
        let mut clients: Vec<u64> = h.ops.iter().map(|o| o.client).collect();
        clients.sort_unstable();
        clients.dedup();
        clients.len()
    });
    let history_height = if history_rows == 0 {
        0.0
    } else {
        HISTORY_TOP + ROW * history_rows as f64 + 30.0
    };
    let height = TOP + 2.0 * PANEL + GAP + 60.0 + history_height;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15">chaos run: plan {}, seed {}, {} nodes, {} faults, {} violations</text>
"#,
        escape(&report.plan),
        report.seed,
        report.nodes,
        report.faults.len(),
        report.violations.len()
    );
    let panels = [
        ("answered operations / s", TOP, &rate),
        ("median latency (ms)", TOP + PANEL + GAP, &median),
    ];
    for f in &report.faults {
        let (a, b) = (x(f.start_s), x(f.healed_s));
        for (_, top, _) in &panels {
            let _ = writeln!(
                out,
                r#"<rect x="{a:.1}" y="{top:.1}" width="{:.1}" height="{PANEL}" fill="{}" opacity="0.7"><title>{}</title></rect>"#,
                (b - a).max(1.0),
                colour(f.class),
                escape(&f.description)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{a:.1}" y="{:.1}" font-size="10" transform="rotate(-25 {a:.1} {:.1})">{}</text>"#,
            TOP - 4.0,
            TOP - 4.0,
            escape(&short(&f.description))
        );
    }
    for (label, top, values) in panels {
        let max = values.iter().copied().fold(0.0f64, f64::max).max(1.0);
        let y = |v: f64| top + PANEL - PANEL * (v / max);
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#444"/>
<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{label}</text>
<text x="{:.1}" y="{:.1}" text-anchor="end">{max:.0}</text>
<text x="{:.1}" y="{:.1}" text-anchor="end">0</text>"##,
            WIDTH - RIGHT - 4.0,
            top + 14.0,
            LEFT - 6.0,
            top + 10.0,
            LEFT - 6.0,
            top + PANEL
        );
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x((i as f64 + 0.5) * BUCKET_S), y(v)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#1d3557" stroke-width="1.5"/>"##,
            points.join(" ")
        );
    }
    let bottom = TOP + 2.0 * PANEL + GAP;
    for t in &report.violation_times {
        let _ = writeln!(
            out,
            r#"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{bottom}" stroke="red" stroke-width="2"/>"#,
            x(*t)
        );
    }
    // Seconds along the bottom.
    let step = [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0]
        .into_iter()
        .find(|s| duration / s <= 20.0)
        .unwrap_or(1800.0);
    let mut t = 0.0;
    while t <= duration {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"#,
            x(t),
            bottom + 18.0
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">seconds</text>"#,
        WIDTH - RIGHT,
        bottom + 32.0
    );
    let mut lx = LEFT;
    for class in ["process", "network", "disk", "clock"] {
        let _ = writeln!(
            out,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{class}</text>"#,
            bottom + 38.0,
            colour(class),
            lx + 16.0,
            bottom + 48.0
        );
        lx += 90.0;
    }
    let _ = writeln!(
        out,
        r#"<line x1="{lx:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="red" stroke-width="2"/><text x="{:.1}" y="{:.1}">violation</text>"#,
        lx + 12.0,
        bottom + 44.0,
        bottom + 44.0,
        lx + 16.0,
        bottom + 48.0
    );
    if let Some(h) = &report.failing_history {
        draw_history(&mut out, h, TOP + 2.0 * PANEL + GAP + 60.0);
    }
    out.push_str("</svg>\n");
    out
}

/// Space above the failing history's rows, and each row's height.
const HISTORY_TOP: f64 = 50.0;
const ROW: f64 = 28.0;

/// The minimal failing history below the panels: a row per client, each
/// operation a bar from its invocation to its completion on the history's
/// own time scale (an unknown outcome runs to the right edge, dashed).
fn draw_history(out: &mut String, h: &crate::run::FailingHistory, top: f64) {
    let mut clients: Vec<u64> = h.ops.iter().map(|o| o.client).collect();
    clients.sort_unstable();
    clients.dedup();
    let start = h.ops.iter().map(|o| o.call_s).fold(f64::INFINITY, f64::min);
    let end = h
        .ops
        .iter()
        .map(|o| o.ret_s.unwrap_or(o.call_s))
        .fold(start, f64::max);
    let span = (end - start).max(1e-6);
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |s: f64| LEFT + plot_w * 0.9 * ((s - start) / span).clamp(0.0, 1.0);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" font-size="13" fill="red">register key {} is not linearizable: a minimal failing history ({:.3} ms from first call to last answer)</text>"#,
        top + 24.0,
        escape(&h.key),
        span * 1e3
    );
    for (i, op) in h.ops.iter().enumerate() {
        let row = clients.binary_search(&op.client).unwrap_or(0);
        let y = top + HISTORY_TOP + ROW * row as f64;
        let a = x(op.call_s);
        let (b, dash) = match op.ret_s {
            Some(r) => (x(r), ""),
            None => (WIDTH - RIGHT, r#" stroke-dasharray="4 3""#),
        };
        let _ = writeln!(
            out,
            r##"<rect x="{a:.1}" y="{y:.1}" width="{:.1}" height="10" fill="#e63946" opacity="0.6" stroke="#9d0208"{dash}/>
<text x="{a:.1}" y="{:.1}" font-size="10">{i}: {}</text>"##,
            (b - a).max(2.0),
            y + 22.0,
            escape(&op.label)
        );
    }
    for (row, c) in clients.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">client {c}</text>"#,
            LEFT - 6.0,
            top + HISTORY_TOP + ROW * row as f64 + 10.0
        );
    }
}

/// A band's label: the description up to its first colon or 28 characters.
fn short(description: &str) -> String {
    let s = description.split(':').next().unwrap_or(description);
    s.chars().take(28).collect()
}

/// The SVG rasterised to PNG (system fonts for the text, where there are any).
pub fn png(svg: &str) -> Result<Vec<u8>, ChaosError> {
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg, &options)
        .map_err(|e| ChaosError::Process(format!("timeline svg: {e}")))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| ChaosError::Process("timeline: empty picture".into()))?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| ChaosError::Process(format!("timeline png: {e}")))
}
