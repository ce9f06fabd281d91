//! Draws the size/quality frontier (docs/frontier.png) from `benchmarks/frontier-nano.csv`,
//! which `scripts/frontier.sh` writes: for each recipe, with and without an importance matrix,
//! the bits per weight it gives DeepSeek-Coder-V2-Lite (x) against the mean KL divergence from
//! BF16 it costs the bundled nano model (y), and the Pareto front (the recipes no other beats on
//! both) as a line. Two sizes are marked: 7.5 GB (an 8 GiB laptop) and Q4_K_M's.
//!
//!   cargo run --release --example frontier_plot -- [CSV] [PNG] [FONT.ttf]
//!
//! The font (any TrueType sans; default DejaVu Sans from the system) is read at run time so that
//! building the example needs no font files.

use std::error::Error;

use plotters::prelude::*;

struct Point {
    label: String,
    imatrix: bool,
    bpw: f64,
    kl: f64,
}

/// Splits a CSV line whose fields may be double-quoted (labels hold commas).
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn read(path: &str) -> Result<Vec<Point>, Box<dyn Error>> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let header = fields(lines.next().ok_or("empty CSV")?);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or(format!("no column {name}"))
    };
    let (l, i, b, k) = (
        col("label")?,
        col("imatrix")?,
        col("lite_bpw")?,
        col("kl_mean")?,
    );
    let mut points = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f = fields(line);
        points.push(Point {
            label: f[l].clone(),
            imatrix: f[i] == "1",
            bpw: f[b].parse()?,
            kl: f[k].parse()?,
        });
    }
    Ok(points)
}

/// Indices of the points no other point beats on both bits per weight and KL, by size.
fn pareto(points: &[Point]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len()).collect();
    // By size, and at equal size the better one first (the other is then dominated).
    idx.sort_by(|&a, &b| {
        points[a]
            .bpw
            .total_cmp(&points[b].bpw)
            .then(points[a].kl.total_cmp(&points[b].kl))
    });
    let mut front = Vec::new();
    let mut best = f64::INFINITY;
    for i in idx {
        if points[i].kl < best {
            best = points[i].kl;
            front.push(i);
        }
    }
    front
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let csv = args
        .first()
        .map_or("benchmarks/frontier-nano.csv", String::as_str);
    let png = args.get(1).map_or("docs/frontier.png", String::as_str);
    let font = args.get(2).map_or(
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        String::as_str,
    );
    let font_bytes: &'static [u8] = Box::leak(std::fs::read(font)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font_bytes)
        .map_err(|_| format!("{font} is not a usable TrueType font"))?;

    let points = read(csv)?;
    let front = pareto(&points);
    let (x0, x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(p.bpw), b.max(p.bpw))
    });
    let (y0, y1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.kl), b.max(p.kl)));

    let root = BitMapBackend::new(png, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Size of DeepSeek-Coder-V2-Lite vs quality cost on the bundled nano model, per recipe",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (x0 - 0.2)..(x1 + 0.4),
            ((y0 * 0.7).max(1e-6)..(y1 * 1.4)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("bits per weight of the Lite file (15.7 B weights; 7.5 GB = 3.82)")
        .y_desc("nano: mean KL divergence from BF16, held-out code (log)")
        .label_style(("sans-serif", 16))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()?;

    // The two sizes the recipes aim at.
    let n_weights = 15_706_484_224f64;
    let laptop = 7.5e9 * 8.0 / n_weights;
    let q4km = points
        .iter()
        .find(|p| p.label == "q4_k_m" && !p.imatrix)
        .map(|p| p.bpw);
    let grey = RGBColor(120, 120, 120);
    for (x, tag) in [(Some(laptop), "7.5 GB"), (q4km, "Q4_K_M size")] {
        let Some(x) = x else { continue };
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, y0 * 0.7), (x, y1 * 1.4)],
            grey.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            tag,
            (x + 0.02, y1 * 1.2),
            ("sans-serif", 15).into_font().color(&grey),
        )))?;
    }
    let front_line: Vec<(f64, f64)> = front
        .iter()
        .map(|&i| (points[i].bpw, points[i].kl))
        .collect();
    chart
        .draw_series(LineSeries::new(
            front_line,
            ShapeStyle::from(&BLACK).stroke_width(2),
        ))?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    chart
        .draw_series(
            points
                .iter()
                .filter(|p| !p.imatrix)
                .map(|p| Circle::new((p.bpw, p.kl), 5, blue.filled())),
        )?
        .label("without importance matrix")
        .legend(move |(x, y)| Circle::new((x + 10, y), 5, blue.filled()));
    chart
        .draw_series(
            points
                .iter()
                .filter(|p| p.imatrix)
                .map(|p| TriangleMarker::new((p.bpw, p.kl), 6, red.filled())),
        )?
        .label("with importance matrix (dscoder imatrix)")
        .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, red.filled()));
    // Names on the front only: elsewhere they would overlap.
    for &i in &front {
        let p = &points[i];
        let tag = format!("{}{}", p.label, if p.imatrix { " +im" } else { "" });
        chart.draw_series(std::iter::once(Text::new(
            tag,
            (p.bpw + 0.03, p.kl),
            ("sans-serif", 14).into_font(),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    eprintln!(
        "wrote {png} ({} points, {} on the front)",
        points.len(),
        front.len()
    );
    Ok(())
}
