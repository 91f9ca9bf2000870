//! The SVG chart of a run (`docs/benchmarks.svg` for a full run): four panels —
//! throughput ratios, the cold-key storm, invalidation rates, Redis memory per entry.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{commit, today, Group, Line, Results, Settings};

const ASIDE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const RAW: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);
const CACHED: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const BETTER: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const WORSE: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const FONT: &str = "sans-serif";

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Fallible = Result<(), Box<dyn std::error::Error>>;

pub fn write(path: &Path, results: &Results, s: &Settings) -> Fallible {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (1400, 1060)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "aside vs raw redis-rs, the cached crate (4.x) and moka — `cargo bench --bench compare`{}, {}, commit {}, {} CPUs",
        if s.quick { " -- --quick" } else { "" },
        today(),
        commit(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let root = root.titled(&title, (FONT, 19))?;
    let (top, bottom) = root.split_vertically(560);
    ratios(&top, &results.lines)?;
    let panels = bottom.split_evenly((1, 3));
    storm(&panels[0], results)?;
    invalidation(&panels[1], &results.lines)?;
    footprint(&panels[2], &results.lines)?;
    root.present()?;
    Ok(())
}

fn color_of(baseline: &str) -> RGBColor {
    if baseline.starts_with("cached") {
        CACHED
    } else {
        RAW
    }
}

/// The target a comparison line is held to (aside ÷ baseline), if any.
fn target(case: &str) -> Option<f64> {
    // Both entry formats' hit lines: `hit vs ...` and `hit, msgpack entries, vs ...`.
    if case.starts_with("hit") && case.contains("vs raw redis-rs") {
        Some(0.9)
    } else if case.starts_with("hit") && case.contains("vs cached") {
        Some(1.0)
    } else if case.starts_with("memory hit vs raw moka") || case.starts_with("tiered hit vs raw moka") {
        Some(0.5)
    } else {
        None
    }
}

/// A comparison line's case, shortened for the chart.
fn chart_case(line: &Line) -> String {
    match line.case.split_once(" (8 processes") {
        Some(_) if line.case.starts_with("cold-key storm") => {
            format!("cold-key storm, callers served/s vs {}", short(&line.baseline))
        }
        _ => line.case.replace("vs cached", &format!("vs {}", short(&line.baseline))),
    }
}

/// Throughput of aside ÷ each baseline, one horizontal bar per comparison line.
fn ratios(area: &Area<'_>, lines: &[Line]) -> Fallible {
    let lines: Vec<&Line> = lines
        .iter()
        .filter(|l| matches!(l.group, Group::Redis | Group::Memory) || (l.group == Group::Storm && l.unit == "ops/s"))
        .rev()
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    let lo = lines.iter().map(|l| l.ratio()).fold(0.5f64, f64::min) / 1.3;
    let hi = lines.iter().map(|l| l.ratio()).fold(1.0f64, f64::max) * 3.2;
    let names: Vec<String> = lines.iter().map(|l| chart_case(l)).collect();
    let n = lines.len();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Throughput, aside ÷ baseline (log scale): green = aside faster, red = slower; | = target",
            (FONT, 17),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(390)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_labels(8)
        .x_label_formatter(&|x| format!("{x:.2}×"))
        .y_label_style((FONT, 13))
        .x_desc("aside ops/s ÷ baseline ops/s")
        .draw()?;
    chart.draw_series(lines.iter().enumerate().map(|(i, l)| {
        let color = if l.ratio() >= 1.0 { BETTER } else { WORSE };
        let (a, b) = if l.ratio() >= 1.0 {
            (1.0, l.ratio())
        } else {
            (l.ratio(), 1.0)
        };
        let mut bar = Rectangle::new(
            [(a, SegmentValue::Exact(i)), (b, SegmentValue::Exact(i + 1))],
            color.mix(0.7).filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(lines.iter().enumerate().filter_map(|(i, l)| {
        let t = target(&l.case)?;
        Some(PathElement::new(
            vec![(t, SegmentValue::Exact(i)), (t, SegmentValue::Exact(i + 1))],
            BLACK.stroke_width(3),
        ))
    }))?;
    chart.draw_series(lines.iter().enumerate().map(|(i, l)| {
        Text::new(
            format!("{:.2}×  ({} vs {} ops/s)", l.ratio(), si(l.aside), si(l.base)),
            (l.ratio().max(1.0) * 1.04, SegmentValue::CenterOf(i)),
            TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
        BLACK.mix(0.6).stroke_width(1),
    )))?;
    // Reference lines the log axis does not label by itself.
    let guides: Vec<f64> = [0.05, 0.1, 0.25, 0.5, 2.0, 5.0]
        .into_iter()
        .filter(|g| (lo..hi / 1.5).contains(g))
        .collect();
    chart.draw_series(guides.iter().map(|&g| {
        PathElement::new(
            vec![(g, SegmentValue::Exact(0)), (g, SegmentValue::Exact(n))],
            BLACK.mix(0.15).stroke_width(1),
        )
    }))?;
    chart.draw_series(guides.iter().map(|&g| {
        Text::new(
            format!("{g}×"),
            (g, SegmentValue::Exact(n)),
            (FONT, 11)
                .into_font()
                .color(&BLACK.mix(0.55))
                .pos(Pos::new(HPos::Center, VPos::Bottom)),
        )
    }))?;
    Ok(())
}

/// Computations per cold-key storm, per contender (log scale), with the time until all were served.
fn storm(area: &Area<'_>, results: &Results) -> Fallible {
    if results.storms.is_empty() {
        return Ok(());
    }
    let n = results.storms.len();
    let counts: Vec<f64> = results
        .storms
        .iter()
        .map(|(_, c, _)| crate::median(c.iter().map(|&x| x as f64).collect()))
        .collect();
    let hi = counts.iter().copied().fold(1.0, f64::max) * 4.0;
    let names: Vec<String> = results
        .storms
        .iter()
        .map(|(who, _, _)| match who.as_str() {
            w if w.starts_with("plain") => "GET/compute/SET".to_owned(),
            w if w.starts_with("cached") => "cached".to_owned(),
            w => w.to_owned(),
        })
        .collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Cold-key storm: computations for {} callers (time until all served)",
                results.storm_callers
            ),
            (FONT, 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d((0..n).into_segmented(), (0.5f64..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style((FONT, 12))
        .y_desc("computations (log)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(results.storms.iter().enumerate().map(|(i, (who, _, _))| {
        let mut bar = Rectangle::new(
            [(SegmentValue::Exact(i), 0.5), (SegmentValue::Exact(i + 1), counts[i])],
            if who == "aside" { ASIDE } else { color_of(who) }.filled(),
        );
        bar.set_margin(0, 0, 14, 14);
        bar
    }))?;
    chart.draw_series(results.storms.iter().enumerate().map(|(i, (_, _, time))| {
        Text::new(
            format!("{:.0} ({:.0} ms)", counts[i], time.as_secs_f64() * 1e3),
            (SegmentValue::CenterOf(i), counts[i] * 1.25),
            TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
        )
    }))?;
    Ok(())
}

/// Entries removed per second, aside next to its baselines (log scale).
fn invalidation(area: &Area<'_>, lines: &[Line]) -> Fallible {
    bars(
        area,
        lines,
        Group::Invalidation,
        "Invalidation: entries removed per second (log)",
        true,
        |case| {
            case.replace("invalidate_", "")
                .replace(" entries)", ")")
                .replace(" vs raw redis-rs", "")
                .replace(" vs cached", "")
        },
    )
}

/// Redis bytes per entry (lower is better).
fn footprint(area: &Area<'_>, lines: &[Line]) -> Fallible {
    bars(
        area,
        lines,
        Group::Footprint,
        "Redis memory: bytes per entry (lower is better)",
        false,
        |case| {
            if case.contains("untagged") {
                "untagged".to_owned()
            } else {
                "1 tag".to_owned()
            }
        },
    )
}

/// Vertical bars: for each case (as `label` names it), aside then each distinct baseline.
fn bars(
    area: &Area<'_>,
    lines: &[Line],
    group: Group,
    caption: &str,
    log: bool,
    label: impl Fn(&str) -> String,
) -> Fallible {
    let lines: Vec<&Line> = lines.iter().filter(|l| l.group == group).collect();
    if lines.is_empty() {
        return Ok(());
    }
    // One cluster per case: aside's value once, then each baseline's.
    /// A case, and each contender's bar in it (name, value, colour).
    type Cluster = (String, Vec<(String, f64, RGBColor)>);
    let mut clusters: Vec<Cluster> = Vec::new();
    for l in &lines {
        let name = label(&l.case);
        let index = match clusters.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                clusters.push((name, vec![("aside".to_owned(), l.aside, ASIDE)]));
                clusters.len() - 1
            }
        };
        clusters[index]
            .1
            .push((short(&l.baseline), l.base, color_of(&l.baseline)));
    }
    let bars: Vec<(usize, String, f64, RGBColor)> = clusters
        .iter()
        .enumerate()
        .flat_map(|(c, (_, bars))| bars.iter().map(move |(who, v, color)| (c, who.clone(), *v, *color)))
        .collect();
    let slots = bars.len() + clusters.len() - 1;
    let max = bars.iter().map(|b| b.2).fold(1.0, f64::max);
    let min = bars.iter().map(|b| b.2).fold(f64::MAX, f64::min);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, (FONT, 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60);
    // Each bar sits in a slot; one empty slot separates clusters.
    let mut positions = Vec::new();
    let mut slot = 0usize;
    let mut previous = None;
    for (c, ..) in &bars {
        if previous.is_some_and(|p| p != *c) {
            slot += 1;
        }
        positions.push(slot);
        slot += 1;
        previous = Some(*c);
    }
    let centers: Vec<(f64, String)> = clusters
        .iter()
        .enumerate()
        .map(|(c, (name, _))| {
            let mine: Vec<usize> = bars
                .iter()
                .zip(&positions)
                .filter(|((cc, ..), _)| *cc == c)
                .map(|(_, &p)| p)
                .collect();
            let center = (mine[0] + mine[mine.len() - 1] + 1) as f64 / 2.0;
            (center, name.clone())
        })
        .collect();
    let x_range = 0f64..slots as f64;
    let value_label = |v: f64| if log { si(v) } else { format!("{v:.0}") };
    let floor = if log { min / 3.0 } else { 0.0 };
    if log {
        let mut chart = builder.build_cartesian_2d(x_range, (floor..max * 6.0).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(0)
            .y_label_formatter(&|v| si(*v))
            .draw()?;
        draw_bars(&mut chart, &bars, &positions, floor, &value_label)?;
        legend(&mut chart)?;
        cluster_labels(area, &chart, &centers, floor)?;
    } else {
        let mut chart = builder.build_cartesian_2d(x_range, floor..max * 1.3)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(0)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        draw_bars(&mut chart, &bars, &positions, floor, &value_label)?;
        legend(&mut chart)?;
        cluster_labels(area, &chart, &centers, floor)?;
    }
    Ok(())
}

/// Writes each cluster's name under the x axis, centred on its bars.
fn cluster_labels<'a, Y>(
    area: &Area<'_>,
    chart: &ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    centers: &[(f64, String)],
    floor: f64,
) -> Fallible
where
    Y: Ranged<ValueType = f64>,
{
    let (base_x, base_y) = area.get_base_pixel();
    for (center, name) in centers {
        let (x, y) = chart.backend_coord(&(*center, floor));
        area.draw(&Text::new(
            name.clone(),
            (x - base_x, y - base_y + 8),
            TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    Ok(())
}

fn draw_bars<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    bars: &[(usize, String, f64, RGBColor)],
    positions: &[usize],
    floor: f64,
    value_label: &dyn Fn(f64) -> String,
) -> Fallible
where
    Y: Ranged<ValueType = f64>,
{
    chart.draw_series(bars.iter().zip(positions).map(|((_, _, v, color), &p)| {
        let mut bar = Rectangle::new([(p as f64, floor), (p as f64 + 1.0, *v)], color.filled());
        bar.set_margin(0, 0, 3, 3);
        bar
    }))?;
    chart.draw_series(bars.iter().zip(positions).map(|((_, _, v, _), &p)| {
        Text::new(
            value_label(*v),
            (p as f64 + 0.5, *v),
            TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
        )
    }))?;
    Ok(())
}

fn legend<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
) -> Fallible
where
    Y: Ranged<ValueType = f64>,
{
    for (name, color) in [("aside", ASIDE), ("raw redis-rs", RAW), ("cached", CACHED)] {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 11))
        .draw()?;
    Ok(())
}

/// A baseline's label, shortened for the chart.
fn short(label: &str) -> String {
    let label = label.trim_end_matches(" (callers served/s)");
    if label.starts_with("cached #[concurrent_cached]") {
        "cached #[concurrent_cached]".to_owned()
    } else if label.starts_with("cached #[cached]") {
        "cached #[cached] (memory, no decode)".to_owned()
    } else if label.starts_with("cached AsyncRedisCache") {
        "cached".to_owned()
    } else {
        label.to_owned()
    }
}

/// 1234567 → "1.23M".
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
