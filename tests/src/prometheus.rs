//! Debian's Prometheus on a tailnet node: it scrapes the VM by its tailnet name, as a
//! user's Prometheus would, and answers PromQL through `promtool query instant`.

use crate::process::{run, text, wait_for};
use crate::tailnode::TailNode;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Prometheus listens, inside the node's namespace.
const LISTEN: &str = "127.0.0.1:9090";

/// A Prometheus server in a tailnet node's namespace; stopped on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    ns: String,
    dir: tempfile::TempDir,
}

/// One series of a query's answer: its labels as promtool prints them, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// `{instance="sql-vm:9187", job="sovereign"}`.
    pub labels: String,
    /// The value.
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus in `node`'s namespace scraping `targets` (`sql-vm:9187`) every
    /// two seconds as job `sovereign`.
    pub fn start(node: &TailNode, targets: &[&str]) -> Result<Prometheus, String> {
        let dir = tempfile::Builder::new()
            .prefix("sov-prometheus-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n\
                 scrape_configs:\n  - job_name: sovereign\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("prometheus.log")).map_err(|e| e.to_string())?;
        let child = node
            .command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting prometheus: {e} (Debian's prometheus package)"))?;
        Ok(Prometheus {
            child,
            ns: node.ns_name().to_string(),
            dir,
        })
    }

    /// The answer to PromQL `expr` now, or why there is none.
    pub fn query(&self, expr: &str) -> Result<Vec<Series>, String> {
        let o = run(Command::new("ip")
            .args(["netns", "exec", &self.ns, "promtool", "query", "instant"])
            .arg(format!("http://{LISTEN}"))
            .arg(expr));
        if !o.status.success() {
            return Err(text(&o));
        }
        Ok(parse(&String::from_utf8_lossy(&o.stdout)))
    }

    /// The single value of `expr` once it has one, within `timeout`.
    pub fn wait_value(&self, expr: &str, timeout: Duration) -> Option<f64> {
        wait_for(timeout, Duration::from_secs(1), || {
            match self.query(expr).ok()?.as_slice() {
                [one] => Some(one.value),
                _ => None,
            }
        })
    }

    /// Prometheus' own log, for a failed test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// promtool's vector lines: `name{labels} => value @[timestamp]`.
fn parse(out: &str) -> Vec<Series> {
    out.lines()
        .filter_map(|l| {
            let (series, rest) = l.split_once(" => ")?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            let labels = series.find('{').map_or("", |i| &series[i..]).to_string();
            Some(Series { labels, value })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_promtools_vector_lines() {
        let out = "pg_up{instance=\"sql-vm:9187\", job=\"sovereign\"} => 1 @[1800000000.5]\n\
                   scalar => 2.5 @[1800000000.5]\n";
        assert_eq!(
            parse(out),
            vec![
                Series {
                    labels: "{instance=\"sql-vm:9187\", job=\"sovereign\"}".into(),
                    value: 1.0
                },
                Series {
                    labels: String::new(),
                    value: 2.5
                }
            ]
        );
        assert!(parse("").is_empty());
    }
}
