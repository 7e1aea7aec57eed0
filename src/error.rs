//! The crate's error type and the exit codes the binary maps it to.
//!
//! Bad input (data, paths, configuration) is exit code 2 and always says which input, which
//! column, an example row and what was expected. Everything else is an internal error, exit 1.

use std::fmt;

use datafusion::error::DataFusionError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key or flag has a value the job cannot run with.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An input is missing, unreadable or violates the job's contract.
    #[error("{0}")]
    BadInput(Box<BadInput>),

    /// A SQL statement or shell command the user can fix (syntax, unknown table, types).
    #[error("{0}")]
    Statement(String),

    /// `validate` found failing checks (already reported on stdout).
    #[error("{0} check(s) failed")]
    ChecksFailed(usize),

    /// Some backfill partitions failed (listed in the report on stderr).
    #[error("{0} partition(s) failed")]
    PartitionsFailed(usize),

    /// The run was interrupted (Ctrl-C / SIGTERM) and cleaned up after itself.
    #[error("interrupted; nothing was written to the destination")]
    Interrupted,

    /// The run took longer than `execution.timeout_secs` and was stopped like an interrupted one.
    #[error(
        "the run did not finish within {secs} s (execution.timeout_secs, --timeout-secs); \
         nothing was written to the destination"
    )]
    TimedOut { secs: u64, on_cluster: bool },

    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),

    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),

    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Exit code for the binary: 2 for anything the user can fix in their input or config.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_)
            | Error::BadInput(_)
            | Error::Statement(_)
            | Error::ChecksFailed(_) => 2,
            Error::Interrupted => 130,
            _ => 1,
        }
    }

    /// The engine hit its memory limit (as opposed to a bug or bad input).
    pub fn is_resources_exhausted(&self) -> bool {
        matches!(self, Error::DataFusion(e) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)))
    }

    /// Advice printed under the error, if there is any.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::TimedOut {
                on_cluster: true, ..
            } => Some(
                "see the scheduler's log: is any executor registered? Ballista 55 can also \
                 stall a job after losing an executor (docs/DISTRIBUTED.md, \"When an executor \
                 dies\"). The job may still be listed there; rerunning is safe.",
            ),
            _ => self.is_resources_exhausted().then_some(
                "the query engine ran out of its memory budget; raise --memory-limit \
                 (execution.memory_limit) or lower --target-partitions",
            ),
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }
}

impl From<BadInput> for Error {
    fn from(value: BadInput) -> Self {
        Error::BadInput(Box::new(value))
    }
}

/// What is wrong with an input, where, and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct BadInput {
    /// The input's role (`engagement`, `neighbours`) and its URI.
    pub input: String,
    pub uri: String,
    /// The column at fault, when one is.
    pub column: Option<String>,
    /// What is wrong, e.g. "3 rows have clicks > impressions".
    pub problem: String,
    /// What the job expected instead.
    pub expected: Option<String>,
    /// One offending row, rendered as `col=value` pairs.
    pub example: Option<String>,
}

impl BadInput {
    pub fn new(input: &str, uri: &str, problem: impl Into<String>) -> Self {
        BadInput {
            input: input.to_string(),
            uri: uri.to_string(),
            column: None,
            problem: problem.into(),
            expected: None,
            example: None,
        }
    }

    pub fn column(mut self, column: impl Into<String>) -> Self {
        self.column = Some(column.into());
        self
    }

    pub fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    pub fn example(mut self, example: impl Into<String>) -> Self {
        self.example = Some(example.into());
        self
    }
}

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad input '{}' ({})",
            self.input,
            crate::redact::text(&self.uri)
        )?;
        if let Some(column) = &self.column {
            write!(f, ", column '{column}'")?;
        }
        write!(f, ": {}", self.problem)?;
        if let Some(expected) = &self.expected {
            write!(f, "\n  expected: {expected}")?;
        }
        if let Some(example) = &self.example {
            write!(f, "\n  example row: {example}")?;
        }
        Ok(())
    }
}
