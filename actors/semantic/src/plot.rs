//! The visual comparison as an SVG: one panel per match, the query and the
//! match drawn z-normalised on the same axes, so their shapes lie on top
//! of each other whatever their levels and scales. `chronicle search
//! ... --plot out.svg` writes it; `out.png` rasterises it.

use std::fmt::Write;

use crate::api::SearchAnswer;

const WIDTH: f64 = 720.0;
const PANEL: f64 = 150.0;
const MARGIN: f64 = 40.0;

/// The SVG of `answer`'s matches (those with a comparison), under `title`.
pub fn svg(answer: &SearchAnswer, title: &str) -> String {
    let panels: Vec<_> = answer
        .matches
        .iter()
        .filter_map(|m| m.comparison.as_ref().map(|c| (m, c)))
        .collect();
    let height = MARGIN + PANEL * panels.len().max(1) as f64 + 10.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif" font-size="12">"#
    );
    let _ = write!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="10" y="20" font-size="14" font-weight="bold">{}</text><text x="{}" y="20" fill="#1f77b4">— query</text><text x="{}" y="20" fill="#d62728">— match</text>"##,
        escape(title),
        WIDTH - 170.0,
        WIDTH - 90.0
    );
    if panels.is_empty() {
        let _ = write!(
            out,
            r#"<text x="10" y="{}">no matches to draw</text>"#,
            MARGIN + 20.0
        );
    }
    for (i, (m, c)) in panels.iter().enumerate() {
        let top = MARGIN + PANEL * i as f64;
        let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            out,
            r##"<rect x="10" y="{top}" width="{}" height="{}" fill="none" stroke="#cccccc"/><text x="16" y="{}">{}. {}{{{}}} similarity {:.3} · agrees: {}</text>"##,
            WIDTH - 20.0,
            PANEL - 8.0,
            top + 15.0,
            i + 1,
            escape(&m.metric),
            escape(&labels.join(",")),
            m.similarity,
            escape(&m.agrees.join(", ")),
        );
        let (lo, hi) = c
            .query
            .iter()
            .chain(&c.matched)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let span = (hi - lo).max(1e-9);
        let (x0, y0, w, h) = (20.0, top + 24.0, WIDTH - 40.0, PANEL - 40.0);
        for (series, colour) in [(&c.query, "#1f77b4"), (&c.matched, "#d62728")] {
            let n = series.len().max(2) as f64 - 1.0;
            let mut points = String::new();
            for (j, v) in series.iter().enumerate() {
                let _ = write!(
                    points,
                    "{:.1},{:.1} ",
                    x0 + w * j as f64 / n,
                    y0 + h * (hi - v) / span
                );
            }
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                points.trim_end()
            );
        }
    }
    out.push_str("</svg>");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
