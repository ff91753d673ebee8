//! The deployment page's charts: request rate, error rate and p95 latency per version over
//! the rollout, as server-rendered SVG (no script needed), each with a title and a
//! description for screen readers, and the same figures as a table.
//!
//! Pure: [`charts`] turns the deployment's series into coordinates; the template draws
//! them (and escapes every version name).

use ferry_core::series::{SeriesPoint, VersionSeries};

/// The SVG's coordinate system (`viewBox="0 0 WIDTH HEIGHT"`), scaled to the chart's width.
/// Narrow on purpose: a chart is about as wide on a phone (~340 px) as in a desktop
/// grid, so the axis labels (`FONT` units, console.css) render at about their size in CSS
/// pixels: ≥ 11 px from 300 px of chart width up.
pub(crate) const WIDTH: f64 = 360.0;
pub(crate) const HEIGHT: f64 = 210.0;
/// The axis labels' font size in SVG units (console.css says the same).
const FONT: f64 = 14.0;
/// The plot area inside it: room for the y labels on the left, the x labels below, and
/// half of the right-most x label (centred on the axis's end) on the right.
const LEFT: f64 = 44.0;
const RIGHT: f64 = 334.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 180.0;
/// Versions drawn, at most (a rollout has two).
const MAX_VERSIONS: usize = 4;

/// A label on an axis, at its position in SVG units.
#[derive(Clone)]
pub(crate) struct Tick {
    pub at: String,
    pub label: String,
}

/// One version's line: an SVG path (a new segment after a gap, where the interval had no
/// request to measure) and a dot per point.
pub(crate) struct Line {
    pub version: String,
    /// `v0`, `v1`…: the line's colour and dash pattern (console.css).
    pub class: String,
    pub path: String,
    pub dots: Vec<(String, String)>,
}

/// One chart.
pub(crate) struct Chart {
    /// Element id (`chart-rate`, `chart-errors`, `chart-p95`).
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    /// What it shows, in words (the SVG's `<desc>`).
    pub desc: String,
    pub x_ticks: Vec<Tick>,
    pub y_ticks: Vec<Tick>,
    pub lines: Vec<Line>,
}

/// One row of the figures' table.
pub(crate) struct Row {
    /// Seconds since the rollout started, at the end of the interval.
    pub at: String,
    pub version: String,
    pub requests: u64,
    pub rate: String,
    pub errors: String,
    pub p95: String,
}

/// The charts of a deployment's series, and their figures as a table.
pub(crate) struct Charts {
    pub charts: Vec<Chart>,
    pub rows: Vec<Row>,
    /// Versions in drawing order, with their line's class (the legend).
    pub legend: Vec<(String, String)>,
    pub width: f64,
    pub height: f64,
    /// The plot area's left and right edges (the grid lines).
    pub left: f64,
    pub right: f64,
    /// Where the y labels end (right-aligned) and the x labels' baseline.
    pub y_label_x: f64,
    pub x_label_y: f64,
}

/// A metric drawn by one chart.
#[derive(Clone, Copy)]
enum Metric {
    Rate,
    Errors,
    P95,
}

impl Metric {
    fn value(self, p: &SeriesPoint) -> Option<f64> {
        match self {
            Metric::Rate => Some(p.rate_per_s()),
            Metric::Errors => p.error_pct(),
            Metric::P95 => p.p95_ms(),
        }
    }
}

/// The charts of `series` over the rollout that started at `start_ms`; None without a point.
/// `order` lists versions to draw first (the stable one, then the new one); any other
/// version follows by name.
pub(crate) fn charts(series: &[VersionSeries], order: &[&str], start_ms: i64) -> Option<Charts> {
    let mut versions: Vec<&VersionSeries> =
        series.iter().filter(|s| !s.points.is_empty()).collect();
    versions.sort_by_key(|s| {
        (
            order
                .iter()
                .position(|o| *o == s.version)
                .unwrap_or(order.len()),
            s.version.clone(),
        )
    });
    versions.truncate(MAX_VERSIONS);
    let first = versions
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|p| p.t_ms - p.span_ms)
        .min()?;
    let end = versions
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|p| p.t_ms)
        .max()?;
    let start = start_ms.min(first);
    let x_max = nice(((end - start) as f64 / 1000.0).max(1.0));
    let x = |t_ms: i64| LEFT + ((t_ms - start) as f64 / 1000.0) / x_max * (RIGHT - LEFT);
    let x_ticks: Vec<Tick> = ticks(x_max)
        .into_iter()
        .map(|s| Tick {
            at: fmt(LEFT + s / x_max * (RIGHT - LEFT)),
            label: format!("{}s", figure(s)),
        })
        .collect();
    let legend: Vec<(String, String)> = versions
        .iter()
        .enumerate()
        .map(|(i, s)| (s.version.clone(), format!("v{i}")))
        .collect();
    let span_s = figure((end - start) as f64 / 1000.0);
    let chart = |metric: Metric, id, title, unit: &'static str| {
        let top = versions
            .iter()
            .flat_map(|s| s.points.iter())
            .filter_map(|p| metric.value(p))
            .fold(0.0f64, f64::max);
        let y_max = nice(top);
        let y = |v: f64| BOTTOM - v / y_max * (BOTTOM - TOP);
        let lines = versions
            .iter()
            .zip(&legend)
            .map(|(s, (_, class))| {
                let mut path = String::new();
                let mut dots = Vec::new();
                let mut open = false;
                for p in &s.points {
                    match metric.value(p) {
                        Some(v) => {
                            let (px, py) = (fmt(x(p.t_ms)), fmt(y(v)));
                            path.push_str(&format!("{}{px} {py}", if open { " L" } else { " M" }));
                            dots.push((px, py));
                            open = true;
                        }
                        None => open = false,
                    }
                }
                Line {
                    version: s.version.clone(),
                    class: class.clone(),
                    path: path.trim_start().to_string(),
                    dots,
                }
            })
            .collect();
        let peaks: Vec<String> = versions
            .iter()
            .map(|s| {
                let peak = s
                    .points
                    .iter()
                    .filter_map(|p| metric.value(p))
                    .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
                match peak {
                    Some(v) => format!("{} peaks at {} {unit}", s.version, figure(v)),
                    None => format!("{} has no measurement", s.version),
                }
            })
            .collect();
        Chart {
            id,
            title,
            unit,
            desc: format!(
                "{title} in {unit} per version over the first {span_s} seconds of the rollout: {}.",
                peaks.join("; ")
            ),
            x_ticks: x_ticks.clone(),
            y_ticks: ticks(y_max)
                .into_iter()
                .map(|v| Tick {
                    at: fmt(y(v)),
                    label: figure(v),
                })
                .collect(),
            lines,
        }
    };
    let charts = vec![
        chart(Metric::Rate, "chart-rate", "Request rate", "req/s"),
        chart(Metric::Errors, "chart-errors", "Error rate", "%"),
        chart(Metric::P95, "chart-p95", "p95 latency", "ms"),
    ];
    let mut points: Vec<(&str, &SeriesPoint)> = versions
        .iter()
        .flat_map(|s| s.points.iter().map(move |p| (s.version.as_str(), p)))
        .collect();
    points.sort_by_key(|(_, p)| p.t_ms);
    let rows = points
        .into_iter()
        .map(|(version, p)| Row {
            at: figure((p.t_ms - start) as f64 / 1000.0),
            version: version.to_string(),
            requests: p.requests,
            rate: figure(p.rate_per_s()),
            errors: p.error_pct().map(figure).unwrap_or_else(|| "–".into()),
            p95: p.p95_ms().map(figure).unwrap_or_else(|| "–".into()),
        })
        .collect();
    Some(Charts {
        charts,
        rows,
        legend,
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        right: RIGHT,
        y_label_x: LEFT - 6.0,
        x_label_y: BOTTOM + FONT + 4.0,
    })
}

/// The smallest of 1, 2, 5 × 10ⁿ at least `v` (1 for 0 or less): the top of an axis.
fn nice(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&n| n >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// 0, a quarter, half, three quarters and all of `max`.
fn ticks(max: f64) -> Vec<f64> {
    (0..=4).map(|i| max * f64::from(i) / 4.0).collect()
}

/// An SVG coordinate, to a tenth.
fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// A figure for people: at most three significant digits, no trailing zeros.
fn figure(v: f64) -> String {
    let text = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_s: i64, requests: u64, errors: u64, p95_ms: Option<u64>) -> SeriesPoint {
        SeriesPoint {
            t_ms: t_s * 1000,
            span_ms: 1000,
            requests,
            errors,
            p95_us: p95_ms.map(|ms| ms * 1000),
        }
    }

    #[test]
    fn axes_and_numbers_are_round() {
        assert_eq!(
            [0.0, 0.3, 1.0, 1.2, 7.0, 30.0, 101.0].map(nice),
            [1.0, 0.5, 1.0, 2.0, 10.0, 50.0, 200.0]
        );
        assert_eq!(ticks(20.0), vec![0.0, 5.0, 10.0, 15.0, 20.0]);
        assert_eq!(
            [0.0, 0.126, 2.5, 12.26, 150.4].map(figure),
            ["0", "0.13", "2.5", "12.3", "150"]
        );
    }

    #[test]
    fn a_canary_with_two_versions_draws_one_line_per_version() {
        let series = vec![
            VersionSeries {
                version: "2.0.0<script>".into(),
                points: vec![
                    point(11, 0, 0, None),
                    point(12, 10, 5, Some(40)),
                    point(13, 20, 10, Some(80)),
                ],
            },
            VersionSeries {
                version: "1.0.0".into(),
                points: vec![
                    point(11, 40, 0, Some(5)),
                    point(12, 30, 0, Some(6)),
                    point(13, 20, 0, Some(5)),
                ],
            },
        ];
        let c = charts(&series, &["1.0.0", "2.0.0<script>"], 10_000).expect("charts");
        // stable first, then the canary
        assert_eq!(
            c.legend,
            vec![
                ("1.0.0".to_string(), "v0".to_string()),
                ("2.0.0<script>".to_string(), "v1".to_string())
            ]
        );
        let titles: Vec<&str> = c.charts.iter().map(|c| c.title).collect();
        assert_eq!(titles, ["Request rate", "Error rate", "p95 latency"]);
        let rate = &c.charts[0];
        assert_eq!(rate.lines.len(), 2);
        // x: 0…5 s (3 s rounded up); y: 0…50 req/s (40 rounded up)
        assert_eq!(rate.x_ticks.last().map(|t| t.label.as_str()), Some("5s"));
        assert_eq!(rate.y_ticks.last().map(|t| t.label.as_str()), Some("50"));
        assert_eq!(rate.y_ticks.first().map(|t| t.at.as_str()), Some("180.0"));
        // 40 req/s at t=1 s: x = 44 + 1/5 × 290, y = 180 − 40/50 × 170
        assert!(
            rate.lines[0].path.starts_with("M102.0 44.0 L"),
            "{}",
            rate.lines[0].path
        );
        assert_eq!(rate.lines[0].dots.len(), 3);
        // The canary had no request in its first interval: no error rate, the line starts later.
        let errors = &c.charts[1];
        assert_eq!(errors.lines[1].dots.len(), 2);
        assert!(errors.lines[1].path.starts_with('M') && !errors.lines[1].path.contains(" M"));
        assert_eq!(errors.y_ticks.last().map(|t| t.label.as_str()), Some("50"));
        assert!(
            errors.desc.contains("2.0.0<script> peaks at 50 %"),
            "{}",
            errors.desc
        );
        assert!(
            c.charts[2].desc.contains("1.0.0 peaks at 6 ms"),
            "{}",
            c.charts[2].desc
        );
        // the table: every point, in time order
        assert_eq!(c.rows.len(), 6);
        assert_eq!(c.rows[0].at, "1");
        assert!(
            c.rows
                .iter()
                .any(|r| r.version == "2.0.0<script>" && r.errors == "–")
        );
        assert!(charts(&[], &[], 0).is_none(), "no point, no chart");
    }

    /// The template of the charts (included by the deployment page) on its own.
    #[derive(askama::Template)]
    #[template(source = "{% include \"console/charts.html\" %}", ext = "html")]
    struct Section {
        charts: Option<Charts>,
    }

    #[test]
    fn the_svg_has_axes_one_path_per_version_a_description_and_a_table() {
        use askama::Template;
        let series = vec![
            VersionSeries {
                version: "1.0.0".into(),
                points: vec![point(1, 40, 0, Some(5)), point(2, 30, 0, Some(6))],
            },
            VersionSeries {
                version: "2.0.0<script>alert(1)</script>".into(),
                points: vec![point(1, 10, 5, Some(40)), point(2, 20, 10, Some(80))],
            },
        ];
        let html = Section {
            charts: charts(&series, &["1.0.0"], 0),
        }
        .render()
        .expect("render");
        assert!(
            !html.contains("<script>"),
            "a version is text, never markup: {html}"
        );
        assert!(
            html.contains("2.0.0&#60;script&#62;") || html.contains("2.0.0&lt;script&gt;"),
            "{html}"
        );
        assert_eq!(
            html.matches("<svg viewBox=\"0 0 360 210\" role=\"img\"")
                .count(),
            3
        );
        for id in ["chart-rate", "chart-errors", "chart-p95"] {
            assert!(
                html.contains(&format!("aria-labelledby=\"{id}-title {id}-desc\"")),
                "{id}"
            );
            assert!(html.contains(&format!("<title id=\"{id}-title\">")), "{id}");
            assert!(html.contains(&format!("<desc id=\"{id}-desc\">")), "{id}");
        }
        // one path per version and chart, the stable version's first
        assert_eq!(html.matches("<path class=\"line v0\"").count(), 3);
        assert_eq!(html.matches("<path class=\"line v1\"").count(), 3);
        assert!(html.find("line v0").unwrap_or(usize::MAX) < html.find("line v1").unwrap_or(0));
        // axes: 5 labels each (0 … max)
        assert_eq!(html.matches("text-anchor=\"end\"").count(), 15);
        assert!(
            html.contains(">0s</text>") && html.contains(">2s</text>"),
            "{html}"
        );
        // the same figures as a table: 4 rows
        assert_eq!(html.matches("<tr><td class=\"mono\">").count(), 4);
        assert!(html.contains("<th scope=\"col\">p95 (ms)</th>"));
        let none = Section { charts: None }.render().expect("render");
        assert!(
            none.contains(
                "<section id=\"charts\" data-live-part aria-labelledby=\"h-charts\" hidden>"
            ) && !none.contains("<svg"),
            "no series: a hidden place for the charts, to be filled live: {none}"
        );
    }

    #[test]
    fn a_gap_starts_a_new_segment() {
        let series = vec![VersionSeries {
            version: "1".into(),
            points: vec![
                point(1, 5, 0, Some(1)),
                point(2, 0, 0, None),
                point(3, 5, 1, Some(2)),
            ],
        }];
        let c = charts(&series, &[], 0).expect("charts");
        let p95 = &c.charts[2].lines[0];
        assert_eq!(p95.path.matches('M').count(), 2, "{}", p95.path);
        assert!(!p95.path.contains('L'));
        // the rate has no gap: an idle interval is 0 req/s
        assert_eq!(c.charts[0].lines[0].path.matches('L').count(), 2);
    }
}
