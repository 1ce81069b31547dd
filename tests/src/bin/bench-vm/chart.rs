//! The report's PNG: boot to ready by stage (guest clock) for each boot, the
//! forwarders' throughput inside the VMs beside raw vsock, and pgbench's TPS over the
//! tailnet beside the same run inside the guest.

use plotters::prelude::*;
use std::path::Path;

/// One boot: its label and, per stage, when it began and ended (seconds since the
/// guest kernel's start).
pub struct Boot {
    /// "first boot", "later boot".
    pub label: String,
    /// (stage, from, to).
    pub spans: Vec<(String, f64, f64)>,
}

/// A panel of grouped bars: one group per label, one bar per series in each.
pub struct Bars {
    /// The panel's title.
    pub caption: String,
    /// The series' names, in the legend ("over the tailnet", "inside the guest").
    pub series: Vec<String>,
    /// (group label, one value per series; NaN draws no bar).
    pub groups: Vec<(String, Vec<f64>)>,
}

/// The category whose centre is at `v` on an axis of one unit per category, if `v` is
/// one (the axis asks for labels at every half unit).
fn category_at(v: f64) -> Option<usize> {
    let i = (v - 0.5).round();
    if i < 0.0 || (v - 0.5 - i).abs() >= 0.01 || i > 1e6 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked just above
    Some(i as usize)
}

/// Registers the font every label is drawn with (plotters draws no text without one).
pub fn use_font(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{}: not a font plotters can read", path.display()))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn err(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

/// Draws the boot panel and each bar panel side by side into `path`.
pub fn draw(path: &Path, boots: &[Boot], panels: &[Bars]) -> Result<(), String> {
    let width = 620 + 560 * u32::try_from(panels.len()).map_err(|e| err(&e))?;
    let root = BitMapBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, mut rest) = root.split_horizontally(620);
    draw_boots(&left, boots)?;
    for panel in panels {
        let (this, next) = rest.split_horizontally(560);
        draw_bars(&this, panel)?;
        rest = next;
    }
    root.present().map_err(|e| err(&e))
}

fn draw_boots(left: &Area<'_>, boots: &[Boot]) -> Result<(), String> {
    let stages: Vec<String> = boots
        .iter()
        .flat_map(|b| b.spans.iter().map(|s| s.0.clone()))
        .fold(Vec::new(), |mut seen, s| {
            if !seen.contains(&s) {
                seen.push(s);
            }
            seen
        });
    let longest = boots
        .iter()
        .flat_map(|b| b.spans.iter().map(|s| s.2))
        .fold(1.0f64, f64::max);
    let rows = boots.len() as f64;
    let mut c = ChartBuilder::on(left)
        .caption(
            "Boot to ready by stage (guest clock, s)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..longest * 1.05, 0f64..rows)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(boots.len() * 2 + 1)
        .y_label_formatter(&|y| {
            category_at(*y)
                .and_then(|i| boots.get(i))
                .map(|b| b.label.clone())
                .unwrap_or_default()
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (k, stage) in stages.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let bars = boots.iter().enumerate().flat_map(|(i, b)| {
            b.spans.iter().filter(|s| &s.0 == stage).map(move |s| {
                Rectangle::new(
                    [(s.1, i as f64 + 0.2), (s.2, i as f64 + 0.8)],
                    color.filled(),
                )
            })
        });
        c.draw_series(bars)
            .map_err(|e| err(&e))?
            .label(stage.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;

    Ok(())
}

fn draw_bars(area: &Area<'_>, panel: &Bars) -> Result<(), String> {
    let groups = &panel.groups;
    let top = groups
        .iter()
        .flat_map(|g| g.1.iter().copied())
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);
    let mut c = ChartBuilder::on(area)
        .caption(panel.caption.as_str(), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..groups.len() as f64, 0f64..top * 1.15)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            category_at(*x)
                .and_then(|i| groups.get(i))
                .map(|g| g.0.clone())
                .unwrap_or_default()
        })
        .draw()
        .map_err(|e| err(&e))?;
    let width = 0.8 / panel.series.len().max(1) as f64;
    let colors = [BLUE.to_rgba(), RED.to_rgba(), Palette99::pick(4).to_rgba()];
    for (k, name) in panel.series.iter().enumerate() {
        let color = colors[k % colors.len()];
        let bars = groups.iter().enumerate().filter_map(move |(i, g)| {
            let v = *g.1.get(k)?;
            let x = i as f64 + 0.1 + width * k as f64;
            v.is_finite()
                .then(|| Rectangle::new([(x, 0.0), (x + width * 0.95, v)], color.filled()))
        });
        c.draw_series(bars)
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_panel_is_drawn_into_a_png() {
        let font = super::super::chart_font();
        if !font.exists() {
            println!("skipped: no font at {} (fonts-dejavu-core)", font.display());
            return;
        }
        use_font(&font).unwrap();
        let span = |s: &str, a, b| (s.to_string(), a, b);
        let boots = [
            Boot {
                label: "first boot".into(),
                spans: vec![
                    span("kernel", 0.0, 2.1),
                    span("network", 2.1, 3.2),
                    span("postgres", 3.2, 16.7),
                ],
            },
            Boot {
                label: "later boot".into(),
                spans: vec![
                    span("kernel", 0.0, 2.0),
                    span("network", 2.0, 3.0),
                    span("postgres", 3.0, 9.0),
                ],
            },
        ];
        let panels = [
            Bars {
                caption: "Forwarder MB/s".into(),
                series: vec!["ours".into(), "gvforwarder".into(), "raw vsock".into()],
                groups: vec![
                    ("down".into(), vec![61.0, 40.0, 120.0]),
                    ("up".into(), vec![50.0, f64::NAN, 90.0]),
                ],
            },
            Bars {
                caption: "pgbench TPS".into(),
                series: vec!["over the tailnet".into(), "inside the guest".into()],
                groups: vec![("S ×4".into(), vec![280.0, 1678.0])],
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("vm.png");
        draw(&png, &boots, &panels).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        if let Ok(keep) = std::env::var("SOVEREIGN_KEEP_CHART") {
            std::fs::copy(&png, keep).unwrap();
        }
    }
}
