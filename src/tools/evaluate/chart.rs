//! An SVG chart of an evaluation: one panel per metric, bars per score grouped by segment, with
//! the bootstrap intervals as whiskers. Plain SVG 1.1 written directly (no drawing library): it
//! opens in any browser and embeds in Markdown.

use std::fmt::Write;

use super::bootstrap::Interval;
use super::features::{Evaluation, METRICS};

const PANEL_W: f64 = 360.0;
const PANEL_H: f64 = 260.0;
const MARGIN_L: f64 = 48.0;
const MARGIN_T: f64 = 56.0;
const MARGIN_B: f64 = 64.0;
const COLOURS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart as an SVG document.
pub fn svg(evaluation: &Evaluation) -> String {
    let segments: Vec<&str> = evaluation.segments.iter().map(|s| s.segment).collect();
    let scores: Vec<&str> = evaluation
        .segments
        .first()
        .map(|s| s.scores.iter().map(|r| r.score.as_str()).collect())
        .unwrap_or_default();
    let width = MARGIN_L + METRICS.len() as f64 * (PANEL_W + MARGIN_L);
    let height = MARGIN_T + PANEL_H + MARGIN_B;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>
<text x="{MARGIN_L}" y="22" font-size="15" font-weight="bold">q2q-prior evaluate features: {} queries, k = {}</text>
"#,
        evaluation.evaluated_queries, evaluation.k
    );
    // legend
    for (i, score) in scores.iter().enumerate() {
        let x = MARGIN_L + i as f64 * 110.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="32" width="12" height="12" fill="{}"/><text x="{}" y="43">{}</text>"#,
            COLOURS[i % COLOURS.len()],
            x + 16.0,
            escape(score)
        );
    }
    for (p, metric) in METRICS.iter().enumerate() {
        let x0 = MARGIN_L + p as f64 * (PANEL_W + MARGIN_L);
        let y0 = MARGIN_T;
        let y = |v: f64| y0 + PANEL_H - v.clamp(0.0, 1.0) * PANEL_H;
        let label = match *metric {
            "mrr" => "MRR".to_string(),
            m => format!("{}@{}", m.to_uppercase(), evaluation.k),
        };
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{label}</text>"#,
            x0 + PANEL_W / 2.0,
            y0 - 4.0
        );
        for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let ty = y(tick);
            let _ = writeln!(
                out,
                r##"<line x1="{x0}" y1="{ty}" x2="{}" y2="{ty}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{tick}</text>"##,
                x0 + PANEL_W,
                x0 - 4.0,
                ty + 4.0
            );
        }
        let _ = writeln!(
            out,
            r#"<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/><line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            y0 + PANEL_H,
            y0 + PANEL_H,
            x0 + PANEL_W,
            y0 + PANEL_H
        );
        let group_w = PANEL_W / segments.len().max(1) as f64;
        let bar_w = (group_w * 0.8) / scores.len().max(1) as f64;
        for (g, segment) in evaluation.segments.iter().enumerate() {
            let gx = x0 + g as f64 * group_w + group_w * 0.1;
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle">{} ({})</text>"#,
                gx + group_w * 0.4,
                y0 + PANEL_H + 16.0,
                escape(segment.segment),
                segment.queries
            );
            for (s, result) in segment.scores.iter().enumerate() {
                let interval: &Interval = match *metric {
                    "ndcg" => &result.ndcg,
                    "mrr" => &result.mrr,
                    _ => &result.recall,
                };
                if interval.mean.is_nan() {
                    continue;
                }
                let bx = gx + s as f64 * bar_w;
                let top = y(interval.mean);
                let _ = writeln!(
                    out,
                    r#"<rect x="{bx:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {} {}: {:.4}</title></rect>"#,
                    bar_w * 0.9,
                    y0 + PANEL_H - top,
                    COLOURS[s % COLOURS.len()],
                    escape(segment.segment),
                    escape(&result.score),
                    label,
                    interval.mean
                );
                if let (Some(low), Some(high)) = (interval.low, interval.high) {
                    let cx = bx + bar_w * 0.45;
                    let _ = writeln!(
                        out,
                        r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
                        y(low),
                        y(high),
                        cx - 3.0,
                        y(low),
                        cx + 3.0,
                        y(low),
                        cx - 3.0,
                        y(high),
                        cx + 3.0,
                        y(high)
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        r##"<text x="{MARGIN_L}" y="{}" fill="#555">bars: mean over queries; whiskers: 95% bootstrap interval; segments by traffic (tail &lt; {} &lt;= torso &lt; {} &lt;= head)</text>"##,
        height - 12.0,
        evaluation.segments_by_traffic.tail_below,
        evaluation.segments_by_traffic.head_from
    );
    out.push_str("</svg>\n");
    out
}
