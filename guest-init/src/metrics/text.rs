//! Prometheus' text exposition format (version 0.0.4), written by hand: a page is
//! written once per scrape and never kept, so a registry of live metric objects (what
//! client libraries are built around) would only be a detour to these few lines.

use std::fmt::Write;

/// The `Content-Type` a scraper expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (until its source restarts); named `_total`.
    Counter,
}

/// One sample: its labels (name, value) and its value.
pub type Sample = (Vec<(&'static str, String)>, f64);

/// The page being written.
#[derive(Debug, Default)]
pub struct Page {
    out: String,
}

impl Page {
    /// A family with its samples; a family without samples is left out.
    pub fn family(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = Sample>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\n', " "));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (label, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{label}=\"{}\"", escape(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {}", number(value));
        }
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help, [(Vec::new(), value)]);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A value as the format writes it: integers without a fraction, `NaN`, `+Inf`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A flag as a sample value.
pub fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_help_type_and_escaped_labels() {
        let mut p = Page::default();
        p.family(
            "pg_database_size_bytes",
            Kind::Gauge,
            "Size on disk.",
            [(vec![("datname", "a\"b\\c\nd".to_string())], 7_901_711.0)],
        );
        p.single(
            "sovereign_forwarder_reconnects_total",
            Kind::Counter,
            "Reconnects.",
            0.0,
        );
        p.family("empty", Kind::Gauge, "left out", []);
        assert_eq!(
            p.finish(),
            "# HELP pg_database_size_bytes Size on disk.\n\
             # TYPE pg_database_size_bytes gauge\n\
             pg_database_size_bytes{datname=\"a\\\"b\\\\c\\nd\"} 7901711\n\
             # HELP sovereign_forwarder_reconnects_total Reconnects.\n\
             # TYPE sovereign_forwarder_reconnects_total counter\n\
             sovereign_forwarder_reconnects_total 0\n"
        );
    }

    #[test]
    fn numbers_are_written_as_the_format_reads_them() {
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(1_800_000_000.0), "1800000000");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(-1.0), "-1");
    }
}
