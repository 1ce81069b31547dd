//! What is wrong with a spec, said so that a user can fix it: one line per field,
//! naming the field and the value.

use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// One spec field that is not acceptable: printed as `field = value: why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field name, e.g. `data_disk.size_gib`.
    pub field: String,
    /// The offending value as written (never a secret).
    pub value: String,
    /// What is wrong and what is expected.
    pub why: String,
}

impl Problem {
    /// Builds a problem from anything printable.
    pub fn new(
        field: impl Into<String>,
        value: impl fmt::Display,
        why: impl Into<String>,
    ) -> Problem {
        Problem {
            field: field.into(),
            value: value.to_string(),
            why: why.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}: {}", self.field, self.value, self.why)
    }
}

/// Why a spec could not be loaded or is not acceptable.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("cannot read VM spec {path}: {source}")]
    Read {
        /// The spec file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    #[error("VM spec {path} is not valid: {message}")]
    Parse {
        /// The spec file.
        path: PathBuf,
        /// toml's message, which names the line and the field.
        message: String,
    },
    #[error("VM spec {source_name} has {} problem(s):\n{}", .problems.len(), lines(.problems))]
    Invalid {
        /// `built-in sql` or the spec file's path.
        source_name: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  ✗ {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
