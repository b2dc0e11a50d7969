//! Plots as inline SVG, written by hand: horizontal bars (plain, grouped or
//! stacked, with optional min–max whiskers), scatter plots (optionally
//! joined by lines) and box plots. Each is a `<figure>` whose `<svg>` has
//! a title and description for screen readers, labelled axes with ticks,
//! and a `<title>` on every mark giving its exact value (a tooltip, no
//! script needed).
//!
//! Values that are not finite (NaN, ±inf), and negative bar lengths, are
//! left out and counted in the caption; a plot with nothing left to draw
//! becomes a sentence saying so, never an empty or broken `<svg>`. Every
//! coordinate written is finite.

use std::fmt::Write as _;

use super::escape;
use crate::measure::percentile;

/// A drawn plot: its markup and how many data marks it holds (bars,
/// points, boxes; 0 for the "no data" sentence).
#[derive(Clone, Debug)]
pub struct Plot {
    pub html: String,
    pub marks: usize,
}

/// Colours of the series, in order (Tableau 10, distinguishable in print).
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// The colour of series `i`.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

const WIDTH: f64 = 760.0;
const CHAR_W: f64 = 6.6;
const LABEL_CHARS: usize = 40;

/// A coordinate or length as written: one decimal, 0 if not finite (the
/// callers only pass finite values; this keeps the markup valid anyway).
fn px(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "0".into()
    }
}

/// `text` cut to `max` characters by an ellipsis in the middle (the end
/// of a path or label, its file name or engine, tells rows apart).
fn clip(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    let tail = max.saturating_sub(1) / 2;
    let head = max.saturating_sub(1) - tail;
    let mut s: String = text.chars().take(head).collect();
    s.push('…');
    s.extend(text.chars().skip(n - tail));
    s
}

/// A number for a label: 4 significant digits, no exponent for ordinary
/// magnitudes.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e7).contains(&a) {
        format!("{v:.3e}")
    } else {
        let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.digits$}");
        match s.contains('.') {
            true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
            false => s,
        }
    }
}

/// A linear axis over `[lo, hi]` with "nice" ticks (1, 2, 5 × 10^k).
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Axis {
    /// Covers `[lo, hi]` (finite) with about five ticks.
    fn new(lo: f64, hi: f64) -> Axis {
        let (mut lo, mut hi) = (lo.min(hi), lo.max(hi));
        if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            let pad = if hi == 0.0 { 1.0 } else { hi.abs() * 0.1 };
            lo -= pad;
            hi += pad;
        }
        let raw = (hi - lo) / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        let lo = (lo / step).floor() * step;
        let hi = (hi / step).ceil() * step;
        let n = ((hi - lo) / step).round() as usize;
        let ticks = (0..=n.min(20)).map(|i| lo + i as f64 * step).collect();
        Axis { lo, hi, ticks }
    }

    /// `v` mapped onto `[a, b]` (pixels).
    fn map(&self, v: f64, a: f64, b: f64) -> f64 {
        a + (v - self.lo) / (self.hi - self.lo) * (b - a)
    }
}

/// The start of a plot: `<figure>`, the `<svg>` with its accessible title
/// and description, and the visible title.
fn open(title: &str, desc: &str, height: f64) -> String {
    let id = format!("p{:016x}", fnv(title.as_bytes()) ^ fnv(desc.as_bytes()));
    format!(
        "<figure>\n<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" \
         viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" aria-labelledby=\"{id}t {id}d\">\n\
         <title id=\"{id}t\">{t}</title>\n<desc id=\"{id}d\">{d}</desc>\n\
         <text x=\"8\" y=\"18\" font-size=\"14\" font-weight=\"600\">{t}</text>\n",
        w = px(WIDTH),
        h = px(height),
        t = escape(title),
        d = escape(desc),
    )
}

/// The end of a plot, with its caption.
fn close(svg: &mut String, caption: &str) {
    svg.push_str("</svg>\n");
    if !caption.is_empty() {
        let _ = writeln!(svg, "<figcaption>{}</figcaption>", escape(caption));
    }
    svg.push_str("</figure>");
}

/// FNV-1a, for element ids that differ between plots of one page.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The sentence that stands for a plot with nothing to draw.
fn no_data(title: &str, why: &str) -> Plot {
    Plot {
        html: format!(
            "<p class=\"nodata\">{}: nothing to plot ({}).</p>",
            escape(title),
            escape(why)
        ),
        marks: 0,
    }
}

/// `caption` with the count of values left out appended.
fn with_dropped(caption: &str, dropped: usize) -> String {
    match dropped {
        0 => caption.to_string(),
        n => format!(
            "{caption}{}{n} value{} not drawn (not finite, or a negative length).",
            if caption.is_empty() { "" } else { " " },
            if n == 1 { "" } else { "s" }
        ),
    }
}

/// A legend row of coloured swatches at `y`.
fn legend(svg: &mut String, names: &[String], y: f64) {
    let mut x = 8.0;
    for (i, n) in names.iter().enumerate() {
        let n = clip(n, 30);
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            px(x),
            px(y - 9.0),
            colour(i),
            px(x + 14.0),
            px(y),
            escape(&n)
        );
        x += 24.0 + n.chars().count() as f64 * CHAR_W;
    }
}

/// Ticks and their labels along a horizontal axis at `y`, from `x0` to `x1`,
/// with grid lines up to `top`.
fn x_axis(svg: &mut String, axis: &Axis, x0: f64, x1: f64, y: f64, top: f64, label: &str) {
    let _ = writeln!(
        svg,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#57606a\"/>",
        px(x0),
        px(y),
        px(x1),
        px(y)
    );
    for &t in &axis.ticks {
        let x = axis.map(t, x0, x1);
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{y}\" stroke=\"#d0d7de\" stroke-width=\"0.5\"/>\
             <text x=\"{x}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            escape(&number(t)),
            x = px(x),
            top = px(top),
            y = px(y + 4.0),
            ty = px(y + 16.0)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
        px((x0 + x1) / 2.0),
        px(y + 32.0),
        escape(label)
    );
}

/// One bar of a [`Bars`] row: segments laid end to end (stacked), each
/// `(series, value)`, and an optional min–max whisker.
#[derive(Clone, Debug, Default)]
pub struct Bar {
    /// Shown beside the bar when a row has several (`before`, `after`).
    pub label: String,
    pub segments: Vec<(usize, f64)>,
    pub range: Option<(f64, f64)>,
}

/// One category of a [`Bars`] plot.
#[derive(Clone, Debug, Default)]
pub struct BarRow {
    pub label: String,
    pub bars: Vec<Bar>,
}

/// A bar as drawn: its label, finite segments and whisker.
type DrawnBar<'a> = (&'a str, Vec<(usize, f64)>, Option<(f64, f64)>);

/// Horizontal bars, one row per category (layer, op type, model).
#[derive(Clone, Debug, Default)]
pub struct Bars {
    pub title: String,
    /// The value axis' label, with its unit.
    pub axis: String,
    /// Series names (legend; a segment's colour is its series').
    pub series: Vec<String>,
    pub rows: Vec<BarRow>,
    pub caption: String,
    /// A vertical line at a value (a limit), with its label.
    pub reference: Option<(f64, String)>,
}

impl Bars {
    /// One bar per row, one series.
    pub fn simple(title: &str, axis: &str, rows: &[(String, f64)]) -> Bars {
        Bars {
            title: title.into(),
            axis: axis.into(),
            series: Vec::new(),
            rows: rows
                .iter()
                .map(|(l, v)| BarRow {
                    label: l.clone(),
                    bars: vec![Bar {
                        segments: vec![(0, *v)],
                        ..Bar::default()
                    }],
                })
                .collect(),
            ..Bars::default()
        }
    }

    /// One bar per series in every row (None: that series has no value
    /// in that row).
    pub fn grouped(
        title: &str,
        axis: &str,
        series: &[&str],
        rows: &[(String, Vec<Option<f64>>)],
    ) -> Bars {
        Bars {
            title: title.into(),
            axis: axis.into(),
            series: series.iter().map(|s| s.to_string()).collect(),
            rows: rows
                .iter()
                .map(|(l, vs)| BarRow {
                    label: l.clone(),
                    bars: vs
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| {
                            v.map(|v| Bar {
                                label: series.get(i).map_or(String::new(), |s| s.to_string()),
                                segments: vec![(i, v)],
                                range: None,
                            })
                        })
                        .collect(),
                })
                .collect(),
            ..Bars::default()
        }
    }

    pub fn draw(&self) -> Plot {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        let mut dropped = 0;
        let mut rows: Vec<(&str, Vec<DrawnBar>)> = Vec::new();
        for r in &self.rows {
            let mut bars = Vec::new();
            for b in &r.bars {
                let segs: Vec<(usize, f64)> =
                    b.segments.iter().copied().filter(|s| ok(s.1)).collect();
                dropped += b.segments.len() - segs.len();
                let range = b.range.filter(|(lo, hi)| ok(*lo) && ok(*hi) && lo <= hi);
                dropped += usize::from(b.range.is_some() && range.is_none());
                if !segs.is_empty() {
                    bars.push((b.label.as_str(), segs, range));
                }
            }
            if !bars.is_empty() {
                rows.push((r.label.as_str(), bars));
            }
        }
        if rows.is_empty() {
            return no_data(&self.title, "no finite values");
        }
        let mut hi = 0f64;
        for (_, bars) in &rows {
            for (_, segs, range) in bars {
                hi = hi.max(segs.iter().map(|s| s.1).sum::<f64>());
                if let Some((_, r)) = range {
                    hi = hi.max(*r);
                }
            }
        }
        let reference = self.reference.as_ref().filter(|(v, _)| ok(*v));
        if let Some((v, _)) = reference {
            hi = hi.max(*v);
        }
        let axis = Axis::new(0.0, if hi > 0.0 { hi } else { 1.0 });
        let label_chars = rows
            .iter()
            .map(|(l, _)| l.chars().count().min(LABEL_CHARS))
            .max()
            .unwrap_or(0);
        let sub_chars = rows
            .iter()
            .flat_map(|(_, b)| b.iter().map(|(l, _, _)| l.chars().count().min(16)))
            .max()
            .unwrap_or(0);
        let several = rows.iter().any(|(_, b)| b.len() > 1);
        let x0 = 12.0
            + label_chars as f64 * CHAR_W
            + if several {
                8.0 + sub_chars as f64 * CHAR_W
            } else {
                0.0
            };
        let x1 = WIDTH - 70.0;
        let bar_h = 12.0;
        let legend_h = if self.series.len() > 1 { 20.0 } else { 0.0 };
        let top = 30.0 + legend_h;
        let body: f64 = rows
            .iter()
            .map(|(_, b)| b.len() as f64 * (bar_h + 2.0) + 8.0)
            .sum();
        let height = top + body + 44.0;
        let desc = format!(
            "Horizontal bars, {} row{}; values in {}.",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" },
            self.axis
        );
        let mut svg = open(&self.title, &desc, height);
        if legend_h > 0.0 {
            legend(&mut svg, &self.series, 44.0);
        }
        x_axis(&mut svg, &axis, x0, x1, top + body, top, &self.axis);
        let mut marks = 0;
        let mut y = top + 4.0;
        for (label, bars) in &rows {
            let _ = writeln!(
                svg,
                "<text x=\"8\" y=\"{}\" font-size=\"11\"><title>{}</title>{}</text>",
                px(y + bar_h - 2.0),
                escape(label),
                escape(&clip(label, LABEL_CHARS))
            );
            for (sub, segs, range) in bars {
                if several && !sub.is_empty() {
                    let _ = writeln!(
                        svg,
                        "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#57606a\" text-anchor=\"end\">{}</text>",
                        px(x0 - 4.0),
                        px(y + bar_h - 2.0),
                        escape(&clip(sub, 16))
                    );
                }
                let mut at = 0.0;
                for &(series, v) in segs {
                    let (a, b) = (axis.map(at, x0, x1), axis.map(at + v, x0, x1));
                    let name = self.series.get(series).map_or("", String::as_str);
                    let _ = writeln!(
                        svg,
                        "<rect class=\"mark\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{}</title></rect>",
                        px(a),
                        px(y),
                        px((b - a).max(0.5)),
                        px(bar_h),
                        colour(series),
                        escape(&[*label, sub, name, &number(v)].iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(" · "))
                    );
                    marks += 1;
                    at += v;
                }
                let mut end = at;
                if let Some((lo, hi)) = range {
                    let (a, b) = (axis.map(*lo, x0, x1), axis.map(*hi, x0, x1));
                    let ym = y + bar_h / 2.0;
                    let _ = writeln!(
                        svg,
                        "<path d=\"M{a} {ym}H{b}M{a} {y0}V{y1}M{b} {y0}V{y1}\" stroke=\"#1b1f24\" fill=\"none\"><title>min {} max {}</title></path>",
                        escape(&number(*lo)),
                        escape(&number(*hi)),
                        a = px(a),
                        b = px(b),
                        ym = px(ym),
                        y0 = px(y + 2.0),
                        y1 = px(y + bar_h - 2.0)
                    );
                    end = end.max(*hi);
                }
                let _ = writeln!(
                    svg,
                    "<text x=\"{}\" y=\"{}\" font-size=\"10\">{}</text>",
                    px(axis.map(end, x0, x1) + 4.0),
                    px(y + bar_h - 2.0),
                    escape(&number(at))
                );
                y += bar_h + 2.0;
            }
            y += 8.0;
        }
        if let Some((v, name)) = reference {
            let x = axis.map(*v, x0, x1);
            let _ = writeln!(
                svg,
                "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#cf222e\" stroke-dasharray=\"4 3\"><title>{}</title></line>\
                 <text x=\"{x}\" y=\"{}\" font-size=\"10\" fill=\"#cf222e\" text-anchor=\"middle\">{}</text>",
                px(top - 2.0),
                px(top + body),
                escape(name),
                px(top - 4.0),
                escape(&clip(name, 30)),
                x = px(x)
            );
        }
        close(&mut svg, &with_dropped(&self.caption, dropped));
        Plot { html: svg, marks }
    }
}

/// One point of a [`Scatter`].
#[derive(Clone, Debug, Default)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    /// Its tooltip.
    pub label: String,
    /// Drawn as a ring, not a dot (a candidate that was rejected).
    pub hollow: bool,
}

/// Points of one kind, optionally joined in order of x.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
    pub line: bool,
}

/// A scatter plot (trade-offs: accuracy against size or latency).
#[derive(Clone, Debug, Default)]
pub struct Scatter {
    pub title: String,
    pub x_axis: String,
    pub y_axis: String,
    pub series: Vec<Series>,
    pub caption: String,
    /// A horizontal line at a y value (a budget), with its label.
    pub y_reference: Option<(f64, String)>,
}

impl Scatter {
    pub fn draw(&self) -> Plot {
        let mut dropped = 0;
        let series: Vec<(usize, &Series, Vec<&Point>)> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let pts: Vec<&Point> = s
                    .points
                    .iter()
                    .filter(|p| p.x.is_finite() && p.y.is_finite())
                    .collect();
                dropped += s.points.len() - pts.len();
                (i, s, pts)
            })
            .filter(|(_, _, p)| !p.is_empty())
            .collect();
        if series.is_empty() {
            return no_data(&self.title, "no finite points");
        }
        let all = || series.iter().flat_map(|(_, _, p)| p.iter());
        let fold = |f: fn(&Point) -> f64| {
            all()
                .map(|p| f(p))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        };
        let (xlo, xhi) = fold(|p| p.x);
        let (mut ylo, mut yhi) = fold(|p| p.y);
        let reference = self.y_reference.as_ref().filter(|(v, _)| v.is_finite());
        if let Some((v, _)) = reference {
            ylo = ylo.min(*v);
            yhi = yhi.max(*v);
        }
        let (xa, ya) = (Axis::new(xlo, xhi), Axis::new(ylo, yhi));
        let legend_h = if series.len() > 1 || !self.series[0].name.is_empty() {
            20.0
        } else {
            0.0
        };
        let top = 30.0 + legend_h;
        let (x0, x1) = (70.0, WIDTH - 20.0);
        let (y0, y1) = (top + 260.0, top + 6.0);
        let height = y0 + 44.0;
        let n: usize = series.iter().map(|(_, _, p)| p.len()).sum();
        let desc = format!(
            "Scatter plot of {n} point{}: {} against {}.",
            if n == 1 { "" } else { "s" },
            self.y_axis,
            self.x_axis
        );
        let mut svg = open(&self.title, &desc, height);
        if legend_h > 0.0 {
            let names: Vec<String> = self.series.iter().map(|s| s.name.clone()).collect();
            legend(&mut svg, &names, 44.0);
        }
        x_axis(&mut svg, &xa, x0, x1, y0, y1, &self.x_axis);
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#57606a\"/>",
            px(y1),
            px(y0),
            x = px(x0)
        );
        for &t in &ya.ticks {
            let y = ya.map(t, y0, y1);
            let _ = writeln!(
                svg,
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#d0d7de\" stroke-width=\"0.5\"/>\
                 <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
                px(x0 - 4.0),
                px(x1),
                px(x0 - 6.0),
                px(y + 4.0),
                escape(&number(t)),
                y = px(y)
            );
        }
        let _ = writeln!(
            svg,
            "<text transform=\"translate(14 {}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
            px((y0 + y1) / 2.0),
            escape(&self.y_axis)
        );
        if let Some((v, name)) = reference {
            let y = ya.map(*v, y0, y1);
            let _ = writeln!(
                svg,
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#cf222e\" stroke-dasharray=\"4 3\"><title>{}</title></line>\
                 <text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#cf222e\" text-anchor=\"end\">{}</text>",
                px(x0),
                px(x1),
                escape(name),
                px(x1),
                px(y - 3.0),
                escape(&clip(name, 40)),
                y = px(y)
            );
        }
        let mut marks = 0;
        for (i, s, pts) in &series {
            let c = colour(*i);
            if s.line && pts.len() > 1 {
                let mut sorted = pts.clone();
                sorted.sort_by(|a, b| a.x.total_cmp(&b.x));
                let d: Vec<String> = sorted
                    .iter()
                    .enumerate()
                    .map(|(k, p)| {
                        format!(
                            "{}{} {}",
                            if k == 0 { 'M' } else { 'L' },
                            px(xa.map(p.x, x0, x1)),
                            px(ya.map(p.y, y0, y1))
                        )
                    })
                    .collect();
                let _ = writeln!(
                    svg,
                    "<path d=\"{}\" stroke=\"{c}\" stroke-width=\"1.5\" fill=\"none\" opacity=\"0.7\"/>",
                    d.join("")
                );
            }
            for p in pts {
                let name: Vec<&str> = [s.name.as_str(), p.label.as_str()]
                    .into_iter()
                    .filter(|t| !t.is_empty())
                    .collect();
                let tip = format!(
                    "{}{}{}: {}, {}: {}",
                    name.join(" · "),
                    if name.is_empty() { "" } else { " — " },
                    self.x_axis,
                    number(p.x),
                    self.y_axis,
                    number(p.y),
                );
                let _ = writeln!(
                    svg,
                    "<circle class=\"mark\" cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{}\" stroke=\"{c}\" stroke-width=\"1.5\"><title>{}</title></circle>",
                    px(xa.map(p.x, x0, x1)),
                    px(ya.map(p.y, y0, y1)),
                    if p.hollow { "#fff" } else { c },
                    escape(&tip)
                );
                marks += 1;
            }
        }
        close(&mut svg, &with_dropped(&self.caption, dropped));
        Plot { html: svg, marks }
    }
}

/// Box plots, one row per sample set (a latency distribution per model):
/// whiskers at min and max, the box from the 25th to the 75th percentile,
/// a line at the median.
#[derive(Clone, Debug, Default)]
pub struct Boxes {
    pub title: String,
    pub axis: String,
    pub rows: Vec<(String, Vec<f64>)>,
    pub caption: String,
}

impl Boxes {
    pub fn draw(&self) -> Plot {
        let mut dropped = 0;
        let rows: Vec<(&str, Vec<f64>)> = self
            .rows
            .iter()
            .map(|(l, v)| {
                let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
                dropped += v.len() - s.len();
                s.sort_by(f64::total_cmp);
                (l.as_str(), s)
            })
            .filter(|(_, s)| !s.is_empty())
            .collect();
        if rows.is_empty() {
            return no_data(&self.title, "no finite samples");
        }
        let lo = rows.iter().map(|(_, s)| s[0]).fold(f64::INFINITY, f64::min);
        let hi = rows
            .iter()
            .map(|(_, s)| s[s.len() - 1])
            .fold(f64::NEG_INFINITY, f64::max);
        let axis = Axis::new(lo, hi);
        let label_chars = rows
            .iter()
            .map(|(l, _)| l.chars().count().min(LABEL_CHARS))
            .max()
            .unwrap_or(0);
        let (x0, x1) = (12.0 + label_chars as f64 * CHAR_W, WIDTH - 20.0);
        let (top, row_h) = (34.0, 26.0);
        let body = rows.len() as f64 * row_h;
        let height = top + body + 44.0;
        let desc = format!(
            "Box plots of {} distribution{} in {}: whiskers min and max, box 25th to 75th percentile, line at the median.",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" },
            self.axis
        );
        let mut svg = open(&self.title, &desc, height);
        x_axis(&mut svg, &axis, x0, x1, top + body, top, &self.axis);
        let mut marks = 0;
        for (i, (label, s)) in rows.iter().enumerate() {
            let q = |p: f64| percentile(s, p);
            let (mn, q1, med, q3, mx) = (s[0], q(25.0), q(50.0), q(75.0), s[s.len() - 1]);
            let y = top + i as f64 * row_h + 4.0;
            let h = row_h - 8.0;
            let m = |v: f64| px(axis.map(v, x0, x1));
            let _ = writeln!(
                svg,
                "<text x=\"8\" y=\"{}\" font-size=\"11\"><title>{}</title>{}</text>",
                px(y + h / 2.0 + 4.0),
                escape(label),
                escape(&clip(label, LABEL_CHARS))
            );
            let tip = escape(&format!(
                "{label}: {} samples; min {}, p25 {}, median {}, p75 {}, max {}",
                s.len(),
                number(mn),
                number(q1),
                number(med),
                number(q3),
                number(mx)
            ));
            let _ = writeln!(
                svg,
                "<g class=\"mark\"><title>{tip}</title>\
                 <path d=\"M{a} {ym}H{b}M{a} {y0}V{y1}M{e} {y0}V{y1}M{f} {ym}H{e}\" stroke=\"#1b1f24\" fill=\"none\"/>\
                 <rect x=\"{b}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"{c}\" fill-opacity=\"0.6\" stroke=\"{c}\"/>\
                 <path d=\"M{md} {y}V{yh}\" stroke=\"#1b1f24\" stroke-width=\"2\"/></g>",
                a = m(mn),
                b = m(q1),
                e = m(mx),
                f = m(q3),
                md = m(med),
                ym = px(y + h / 2.0),
                y0 = px(y + 3.0),
                y1 = px(y + h - 3.0),
                y = px(y),
                yh = px(y + h),
                h = px(h),
                w = px((axis.map(q3, x0, x1) - axis.map(q1, x0, x1)).max(1.0)),
                c = colour(i),
            );
            marks += 1;
        }
        close(&mut svg, &with_dropped(&self.caption, dropped));
        Plot { html: svg, marks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every number in an SVG attribute parses as a finite float.
    fn attributes_finite(html: &str) {
        for bad in ["NaN", "inf", "=\"\""] {
            assert!(!html.contains(bad), "{bad} in {html}");
        }
        for (i, _) in html.match_indices("=\"") {
            let rest = &html[i + 2..];
            let v = &rest[..rest.find('"').unwrap_or(0)];
            if let Ok(x) = v.parse::<f64>() {
                assert!(x.is_finite());
            }
        }
    }

    #[test]
    fn bars_draw_stacked_grouped_and_whiskers() {
        let mut b = Bars::grouped(
            "Size per layer",
            "KiB",
            &["before", "after"],
            &[
                ("conv<1>".into(), vec![Some(10.0), Some(2.5)]),
                ("fc".into(), vec![Some(4.0), None]),
            ],
        );
        b.rows[0].bars[1].range = Some((2.0, 3.0));
        b.reference = Some((8.0, "limit".into()));
        let p = b.draw();
        assert_eq!(p.marks, 3);
        assert!(p.html.contains("conv&lt;1&gt;") && !p.html.contains("conv<1>"));
        assert!(p.html.contains("<title") && p.html.contains("<desc"));
        attributes_finite(&p.html);
    }

    #[test]
    fn non_finite_values_are_left_out_and_counted() {
        let p = Bars::simple(
            "t",
            "ms",
            &[
                ("a".into(), f64::NAN),
                ("b".into(), f64::INFINITY),
                ("c".into(), 1.0),
                ("d".into(), -1.0),
            ],
        )
        .draw();
        assert_eq!(p.marks, 1);
        assert!(p.html.contains("3 values not drawn"), "{}", p.html);
        attributes_finite(&p.html);

        let s = Scatter {
            title: "trade-off".into(),
            x_axis: "x".into(),
            y_axis: "y".into(),
            series: vec![Series {
                name: "s".into(),
                points: vec![
                    Point {
                        x: f64::NAN,
                        y: 1.0,
                        ..Point::default()
                    },
                    Point {
                        x: 0.5,
                        y: f64::NEG_INFINITY,
                        ..Point::default()
                    },
                    Point {
                        x: 0.5,
                        y: 0.9,
                        ..Point::default()
                    },
                    Point {
                        x: 0.7,
                        y: 0.8,
                        hollow: true,
                        ..Point::default()
                    },
                ],
                line: true,
            }],
            y_reference: Some((f64::NAN, "budget".into())),
            ..Scatter::default()
        }
        .draw();
        assert_eq!(s.marks, 2);
        attributes_finite(&s.html);

        let bx = Boxes {
            title: "latency".into(),
            axis: "ms".into(),
            rows: vec![
                ("m".into(), vec![1.0, f64::NAN, 2.0, 3.0]),
                ("e".into(), vec![f64::INFINITY]),
            ],
            ..Boxes::default()
        }
        .draw();
        assert_eq!(bx.marks, 1);
        attributes_finite(&bx.html);
    }

    #[test]
    fn empty_data_is_a_sentence_not_an_svg() {
        for p in [
            Bars::simple("nothing", "ms", &[]).draw(),
            Bars::simple("nan only", "ms", &[("a".into(), f64::NAN)]).draw(),
            Scatter {
                title: "none".into(),
                ..Scatter::default()
            }
            .draw(),
            Boxes {
                title: "none".into(),
                rows: vec![("a".into(), vec![])],
                ..Boxes::default()
            }
            .draw(),
        ] {
            assert_eq!(p.marks, 0);
            assert!(
                !p.html.contains("<svg") && p.html.contains("nothing to plot"),
                "{}",
                p.html
            );
        }
    }

    #[test]
    fn one_value_and_all_zero_still_make_a_valid_axis() {
        let p = Bars::simple("zeros", "ms", &[("a".into(), 0.0), ("b".into(), 0.0)]).draw();
        assert_eq!(p.marks, 2);
        attributes_finite(&p.html);
        let b = Boxes {
            title: "one".into(),
            axis: "ms".into(),
            rows: vec![("a".into(), vec![5.0])],
            ..Boxes::default()
        }
        .draw();
        assert_eq!(b.marks, 1);
        attributes_finite(&b.html);
        let s = Scatter {
            title: "same".into(),
            series: vec![Series {
                points: vec![
                    Point {
                        x: 1.0,
                        y: 1.0,
                        ..Point::default()
                    };
                    2
                ],
                ..Series::default()
            }],
            ..Scatter::default()
        }
        .draw();
        assert_eq!(s.marks, 2);
        attributes_finite(&s.html);
    }

    #[test]
    fn long_labels_keep_both_ends() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(
            clip("/very/long/path/model.onnx (mlc)", 15),
            "/very/l…x (mlc)"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(1234.6), "1235");
        assert_eq!(number(0.12345), "0.1235");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(1e-5), "1.000e-5");
        let a = Axis::new(0.0, 9.3);
        assert_eq!(a.ticks, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
    }
}
