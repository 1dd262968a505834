//! What is wrong with a configuration, and where.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a configuration: the path of the field (`routes[3].cache.ttl`), the
/// line and column when the format tells them, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field's path from the top of the file: `routes[3].cache.ttl`, `usage.plans.basic`;
    /// empty for the file as a whole.
    pub path: String,
    /// The line (from 1), for errors found while reading the file.
    pub line: Option<usize>,
    /// The column (from 1), with the line.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    pub(crate) fn at(path: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            path: path.into(),
            line: None,
            column: None,
            message: message.to_string(),
        }
    }
}

/// A configuration that cannot be read or built: every problem found, each with the path of
/// its field, and the file's name when it came from one. Nothing is applied when there is
/// one: a reload that fails leaves the running configuration in place.
///
/// Displayed one problem per line, as compilers do:
/// `gateway.yaml:12:12: routes[3].cache.ttl: expected a duration like "30s", "5m" or "500ms", found "thirty"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    file: Option<PathBuf>,
    problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty());
        Self {
            file: None,
            problems,
        }
    }

    pub(crate) fn one(path: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::new(vec![Problem::at(path, message)])
    }

    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_owned());
        self
    }

    /// The problems, in the order found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The file the configuration was read from, when it was.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            if let Some(file) = &self.file {
                write!(f, "{}:", file.display())?;
                if let Some(line) = problem.line {
                    write!(f, "{line}:")?;
                    if let Some(column) = problem.column {
                        write!(f, "{column}:")?;
                    }
                }
                f.write_str(" ")?;
            } else if let Some(line) = problem.line {
                write!(f, "line {line}")?;
                if let Some(column) = problem.column {
                    write!(f, ", column {column}")?;
                }
                f.write_str(": ")?;
            }
            if !problem.path.is_empty() {
                write!(f, "{}: ", problem.path)?;
            }
            f.write_str(&problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
