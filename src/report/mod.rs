//! Self-contained HTML reports: one file a reviewer opens anywhere, with no
//! network and no script. A [`Page`] is a header block, sections of text
//! and tables, and plots drawn as inline SVG by [`svg`] (one place for
//! every report's plots: compress, tune, check, bench).
//!
//! Everything a report shows may come from a model file (node and layer
//! names, paths) and is escaped here ([`escape`]); callers hand in plain
//! text, never markup, except plots made by [`svg`].

pub mod svg;

use std::fmt::Write as _;

use crate::provenance::Header;

/// `text` made safe inside HTML/SVG text and attribute values: markup
/// characters as entities, control characters (which XML forbids) as
/// U+FFFD.
pub fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            '\t' | '\n' | '\r' => s.push(c),
            c if c.is_control() => s.push('\u{FFFD}'),
            c => s.push(c),
        }
    }
    s
}

/// A table cell's look: plain, or a verdict coloured as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Bad,
}

/// An HTML report being written (see the module docs).
pub struct Page {
    title: String,
    body: String,
}

impl Page {
    /// A page titled `title` (also its first heading).
    pub fn new(title: &str) -> Page {
        Page {
            title: title.to_string(),
            body: String::new(),
        }
    }

    /// The provenance block every report starts with.
    pub fn header(&mut self, h: &Header) {
        let mut rows = vec![
            ("command".to_string(), h.command_line.join(" ")),
            (
                "mlc".to_string(),
                format!("{} (report schema {})", h.mlc_version, h.schema_version),
            ),
            ("date".to_string(), h.date.clone()),
            (
                "CPU".to_string(),
                format!(
                    "{}, {} cores; {} thread{} measured",
                    h.cpu,
                    h.cores,
                    h.threads,
                    if h.threads == 1 { "" } else { "s" }
                ),
            ),
            ("CPU features".to_string(), h.cpu_features.join(" ")),
        ];
        if let Some(m) = &h.model {
            rows.push(("model".to_string(), m.clone()));
        }
        if let Some(sha) = &h.model_sha256 {
            rows.push(("model SHA-256".to_string(), sha.clone()));
        }
        self.facts(&rows);
    }

    /// A block of label and value pairs.
    pub fn facts(&mut self, rows: &[(String, String)]) {
        self.body += "<dl class=\"facts\">\n";
        for (k, v) in rows {
            let _ = writeln!(self.body, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
        }
        self.body += "</dl>\n";
    }

    pub fn heading(&mut self, text: &str) {
        let _ = writeln!(self.body, "<h2>{}</h2>", escape(text));
    }

    pub fn paragraph(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p>{}</p>", escape(text));
    }

    /// A highlighted paragraph (a warning the reader must not miss).
    pub fn warning(&mut self, text: &str) {
        let _ = writeln!(self.body, "<p class=\"warn\">{}</p>", escape(text));
    }

    /// Preformatted text (a printed summary).
    pub fn pre(&mut self, text: &str) {
        let _ = writeln!(self.body, "<pre>{}</pre>", escape(text));
    }

    /// A table; numeric-looking cells are right-aligned by the caller's
    /// choice of `numeric` columns.
    pub fn table(&mut self, head: &[&str], rows: &[Vec<(String, Tone)>], numeric: &[usize]) {
        self.body += "<div class=\"scroll\"><table>\n<thead><tr>";
        for h in head {
            let _ = write!(self.body, "<th scope=\"col\">{}</th>", escape(h));
        }
        self.body += "</tr></thead>\n<tbody>\n";
        for row in rows {
            self.body += "<tr>";
            for (i, (cell, tone)) in row.iter().enumerate() {
                let mut class = Vec::new();
                if numeric.contains(&i) {
                    class.push("num");
                }
                match tone {
                    Tone::Plain => {}
                    Tone::Good => class.push("good"),
                    Tone::Bad => class.push("bad"),
                }
                let class = match class.is_empty() {
                    true => String::new(),
                    false => format!(" class=\"{}\"", class.join(" ")),
                };
                let _ = write!(self.body, "<td{class}>{}</td>", escape(cell));
            }
            self.body += "</tr>\n";
        }
        self.body += "</tbody></table></div>\n";
    }

    /// A plot made by [`svg`] (already escaped markup).
    pub fn plot(&mut self, plot: svg::Plot) {
        self.body += &plot.html;
        self.body.push('\n');
    }

    /// The whole document.
    pub fn finish(self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n\
             <h1>{title}</h1>\n{body}</main>\n</body>\n</html>\n",
            title = escape(&self.title),
            body = self.body
        )
    }
}

/// The page's only styling: readable text, tables, plot frames.
const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1b1f24;background:#fff;margin:0}
main{max-width:1000px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 12px;word-break:break-all}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px;background:#f6f8fa;padding:10px 14px;border-radius:6px}
dl.facts dt{font-weight:600;color:#57606a}
dl.facts dd{margin:0;word-break:break-all}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.good{color:#1a7f37;font-weight:600}
td.bad{color:#cf222e;font-weight:600}
p.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:6px}
p.nodata{color:#57606a;font-style:italic}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px}
figure{margin:14px 0}
figcaption{font-size:12px;color:#57606a}
svg.plot{max-width:100%;height:auto;font-family:system-ui,sans-serif}
svg.plot text{fill:#1b1f24}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralizes_markup_and_controls() {
        assert_eq!(
            escape("<script>alert('x&y')</script>\"\u{0}"),
            "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;&quot;\u{FFFD}"
        );
        assert_eq!(escape("conv_1/Relu:0 ünï"), "conv_1/Relu:0 ünï");
    }

    #[test]
    fn a_page_escapes_every_text_it_is_given() {
        let mut p = Page::new("<b>model</b>");
        p.facts(&[("cmd".into(), "mlc <x>".into())]);
        p.heading("h<");
        p.paragraph("a&b");
        p.table(&["n<"], &[vec![("</td><script>".into(), Tone::Bad)]], &[0]);
        let html = p.finish();
        assert!(!html.contains("<b>model"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;/td&gt;&lt;script&gt;"));
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("class=\"num bad\""));
    }
}
