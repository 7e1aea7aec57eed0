//! The SQL shell's engine: a session with the job's inputs, stage views and UDFs, and the
//! execution of statements and meta-commands. The command line (`cli::sql`) feeds it items from a
//! REPL, `-c`, a file or stdin.
//!
//! Everything is registered through the same functions `run` uses ([`session`],
//! [`inputs`], [`pipeline::register_job_views`]), lazily: opening the shell reads file metadata
//! only, and a view is computed when a statement reads it.

pub mod print;
pub mod statements;
mod url_table;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::config::JobConfig;
use crate::error::{Error, Result};
use crate::io::tables;
use crate::pipeline::{self, inputs};
use crate::session;
use print::{DisplayFormat, Printed};

/// What the shell knows about a registered name, for `\d` and `\sql`.
#[derive(Debug, Clone)]
struct Source {
    name: String,
    kind: &'static str,
    detail: String,
}

/// Whether to go on after an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// The result of one statement, for the status line.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub printed: Printed,
    pub elapsed: Duration,
    /// The statement returns no columns (DDL, SET): nothing was printed.
    pub silent: bool,
}

pub struct Shell {
    ctx: SessionContext,
    config: JobConfig,
    sources: Vec<Source>,
    pub format: DisplayFormat,
    pub maxrows: Option<usize>,
}

pub const HELP: &str = r"Statements end with ';' and may span lines. Meta-commands (no ';'):
  \d            list tables and views (inputs, pipeline stages, your own)
  \d NAME       columns and types of a table or view
  \sql NAME     the SQL that defines a pipeline stage (history, neighbour_sets, prior, features)
  \format NAME  switch the output format: table, csv, tsv, json, ndjson
  \?            this help
  \q            quit (or Ctrl-D)
Ctrl-C cancels the running statement. EXPLAIN / EXPLAIN ANALYZE show plans; SHOW FUNCTIONS lists
functions, including q2q_alpha(impressions, max_impressions, gamma), q2q_blend(h, prior, alpha, beta)
and normalize_query(text [, lang]). COPY (SELECT ...) TO 's3://bucket/x.parquet' writes to object stores;
SELECT * FROM 'path/or/url.parquet' reads a file directly, and FROM 'folder/' a folder or a Delta table
(CREATE EXTERNAL TABLE t STORED AS DELTA LOCATION 'folder/' names one; \d shows its version).";

impl Shell {
    /// A session with the UDFs, and the inputs and stage views of `config` when they are set.
    /// Reads file metadata only; nothing is computed until a statement needs it.
    pub async fn open(config: JobConfig) -> Result<Shell> {
        let ctx = url_table::enable(session::new_context(&config.execution)?);
        let mut sources = Vec::new();
        let describe = |input: &tables::Input| Source {
            name: input.role.to_string(),
            kind: "input",
            detail: format!("{} {}", input.format, crate::redact::text(&input.uri)),
        };
        match (&config.engagement, &config.neighbours) {
            (Some(e), Some(n)) => {
                let inputs = inputs::Inputs {
                    engagement: inputs::open_engagement(&ctx, e, &config.features).await?,
                    neighbours: inputs::open_neighbours(&ctx, n).await?,
                };
                inputs.register_views(&ctx)?;
                sources.push(describe(&inputs.engagement));
                sources.push(describe(&inputs.neighbours));
                if let Err(e) = inputs::check_compatible(&inputs.engagement, &inputs.neighbours) {
                    // the inputs stay queryable, to look into why
                    eprintln!("warning: stage views not registered: {e}");
                    return Ok(Shell {
                        ctx,
                        config,
                        sources,
                        format: DisplayFormat::Table,
                        maxrows: None,
                    });
                }
                session::register_job_views(&ctx, &inputs, &config, &[]).await?;
                let partitioned = !inputs.engagement.partitions.columns.is_empty();
                for stage in &pipeline::STAGES {
                    sources.push(Source {
                        name: stage.name.to_string(),
                        kind: "stage",
                        detail: format!(
                            "sql/{}.sql{}{}",
                            stage.name,
                            if merged(stage.name, &config.execution) {
                                ", computed by PriorMergeExec (execution.plan = merge)"
                            } else {
                                ""
                            },
                            if partitioned {
                                format!(
                                    ", per partition of [{}]",
                                    inputs.engagement.partitions.columns.join(", ")
                                )
                            } else {
                                String::new()
                            }
                        ),
                    });
                }
            }
            (Some(spec), None) => {
                let input = inputs::open_engagement(&ctx, spec, &config.features).await?;
                input.register_view(&ctx)?;
                sources.push(describe(&input));
            }
            (None, Some(spec)) => {
                let input = inputs::open_neighbours(&ctx, spec).await?;
                input.register_view(&ctx)?;
                sources.push(describe(&input));
            }
            (None, None) => {}
        }
        Ok(Shell {
            ctx,
            config,
            sources,
            format: DisplayFormat::Table,
            maxrows: None,
        })
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// A one-line description of what is registered, for the REPL's banner.
    pub fn banner(&self) -> String {
        if self.sources.is_empty() {
            return "no inputs configured (--config, --engagement, --neighbours): UDFs only".into();
        }
        let names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        let mut banner = format!("tables: {}", names.join(", "));
        if self.sources.len() < 2 + pipeline::STAGES.len() {
            banner.push_str(" (stage views need both inputs)");
        }
        banner
    }

    /// Plans one SQL statement (DDL such as CREATE VIEW or SET takes effect here).
    pub async fn plan(&self, sql: &str) -> Result<DataFrame> {
        self.ctx.sql(sql).await.map_err(statement_error)
    }

    /// Runs one SQL statement and prints its result to `out`.
    pub async fn run_sql(&self, sql: &str, out: &mut dyn Write) -> Result<Outcome> {
        let start = Instant::now();
        let df = self.plan(sql).await?;
        let silent = df.schema().fields().is_empty();
        let stream = df.execute_stream().await.map_err(statement_error)?;
        let printed = if silent {
            // still drive it: some statements act when executed
            print::print_stream(stream, DisplayFormat::Csv, Some(0), &mut std::io::sink()).await
        } else {
            print::print_stream(stream, self.format, self.maxrows, out).await
        }
        .map_err(|e| match e {
            Error::DataFusion(e) => statement_error(e),
            Error::Arrow(e) => statement_error(DataFusionError::ArrowError(Box::new(e), None)),
            other => other,
        })?;
        Ok(Outcome {
            printed,
            elapsed: start.elapsed(),
            silent,
        })
    }

    /// Runs a meta-command (`\d`, `\sql`, ...).
    pub async fn run_meta(&mut self, line: &str, out: &mut dyn Write) -> Result<Flow> {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let argument = words.next();
        if let Some(extra) = words.next() {
            return Err(Error::Statement(format!(
                "{command} takes at most one argument, got '{extra}' too"
            )));
        }
        match (command, argument) {
            ("\\q" | "\\quit", None) => return Ok(Flow::Quit),
            ("\\?" | "\\h" | "\\help", None) => writeln!(out, "{HELP}")?,
            ("\\d", None) => self.list_tables(out).await?,
            ("\\d", Some(name)) => self.describe(name, out).await?,
            ("\\sql", Some(name)) => self.stage_sql(name, out)?,
            ("\\format" | "\\pset", Some(name)) => {
                self.format = DisplayFormat::parse(name).ok_or_else(|| {
                    Error::Statement(format!(
                        "unknown format '{name}': use table, csv, tsv, json or ndjson"
                    ))
                })?;
            }
            ("\\sql" | "\\format" | "\\pset", None) => {
                return Err(Error::Statement(format!(
                    "{command} needs an argument; \\? for help"
                )));
            }
            _ => {
                return Err(Error::Statement(format!(
                    "unknown command '{line}'; \\? lists the commands"
                )));
            }
        }
        Ok(Flow::Continue)
    }

    async fn print_batch(&self, batch: RecordBatch, out: &mut dyn Write) -> Result<()> {
        let stream = self.ctx.read_batch(batch)?.execute_stream().await?;
        print::print_stream(stream, self.format, None, out).await?;
        Ok(())
    }

    /// `\d`: every table and view of the default schema, with what it is.
    async fn list_tables(&self, out: &mut dyn Write) -> Result<()> {
        let schema = self
            .ctx
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .ok_or_else(|| Error::Statement("the default schema is missing".into()))?;
        let mut names = schema.table_names();
        names.sort();
        let (mut kinds, mut details) = (Vec::new(), Vec::new());
        for name in &names {
            match self.sources.iter().find(|s| &s.name == name) {
                Some(source) => {
                    kinds.push(source.kind.to_string());
                    details.push(source.detail.clone());
                }
                None => {
                    let table = schema.table(name).await?;
                    match table
                        .as_ref()
                        .and_then(|t| t.downcast_ref::<url_table::DeltaView>())
                    {
                        Some(delta) => {
                            kinds.push("delta table".into());
                            details.push(format!("{}, version {}", delta.uri, delta.version));
                        }
                        None => {
                            kinds.push(match table {
                                Some(t) => format!("{:?}", t.table_type()).to_lowercase(),
                                None => "table".into(),
                            });
                            details.push("created in this session".into());
                        }
                    }
                }
            }
        }
        let batch = string_batch(&[("name", names), ("kind", kinds), ("source", details)])?;
        self.print_batch(batch, out).await
    }

    /// `\d NAME`: columns, types and nullability.
    async fn describe(&self, name: &str, out: &mut dyn Write) -> Result<()> {
        let df = self.ctx.table(name).await.map_err(|_| {
            Error::Statement(format!("no table or view named '{name}'; \\d lists them"))
        })?;
        let fields = df.schema().fields();
        let batch = string_batch(&[
            ("column", fields.iter().map(|f| f.name().clone()).collect()),
            (
                "type",
                fields.iter().map(|f| f.data_type().to_string()).collect(),
            ),
            (
                "nullable",
                fields
                    .iter()
                    .map(|f| if f.is_nullable() { "YES" } else { "NO" }.to_string())
                    .collect(),
            ),
        ])?;
        self.print_batch(batch, out).await
    }

    /// `\sql NAME`: the stage's SQL file as the job runs it, with its parameter values.
    fn stage_sql(&self, name: &str, out: &mut dyn Write) -> Result<()> {
        let Some(stage) = pipeline::stage(name) else {
            let hint = match self.sources.iter().find(|s| s.name == name) {
                Some(source) => format!("'{name}' is an {}: {}", source.kind, source.detail),
                None => format!("'{name}' is not a pipeline stage"),
            };
            let stages: Vec<&str> = pipeline::STAGES.iter().map(|s| s.name).collect();
            return Err(Error::Statement(format!(
                "{hint}; stages are {}",
                stages.join(", ")
            )));
        };
        let params: Vec<String> = (stage.params)(&self.config.features)
            .into_iter()
            .map(|(k, v)| format!("${k} = {v}"))
            .collect();
        writeln!(out, "-- sql/{}.sql, view `{}`", stage.name, stage.name)?;
        if !params.is_empty() {
            writeln!(out, "-- parameters: {}", params.join(", "))?;
        }
        if merged(stage.name, &self.config.execution) {
            writeln!(
                out,
                "-- computed by PriorMergeExec (execution.plan = merge), which gives the rows of \
                 this SQL and of the neighbour_sets and prior stages; --plan sql runs the SQL"
            )?;
        }
        write!(out, "{}", stage.sql)?;
        if !stage.sql.ends_with('\n') {
            writeln!(out)?;
        }
        Ok(())
    }
}

fn string_batch(columns: &[(&str, Vec<String>)]) -> Result<RecordBatch> {
    let schema = Schema::new(
        columns
            .iter()
            .map(|(name, _)| Field::new(*name, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    );
    let arrays = columns
        .iter()
        .map(|(_, values)| Arc::new(StringArray::from(values.clone())) as _)
        .collect();
    Ok(RecordBatch::try_new(Arc::new(schema), arrays)?)
}

/// A statement the user can fix (syntax, unknown table or column, types) is a statement error
/// (exit 2); running out of memory or I/O failures stay what they are.
pub fn statement_error(e: DataFusionError) -> Error {
    use datafusion::arrow::error::ArrowError as A;
    match e.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(..)
        | DataFusionError::Configuration(..)
        | DataFusionError::Execution(..) => Error::Statement(e.to_string()),
        // what the statement computes: 1/0, a failing CAST, a value out of range, text that is not
        // CSV (nested values)
        DataFusionError::ArrowError(a, _)
            if matches!(
                a.as_ref(),
                A::DivideByZero
                    | A::CastError(_)
                    | A::ParseError(_)
                    | A::ComputeError(_)
                    | A::InvalidArgumentError(_)
                    | A::ArithmeticOverflow(_)
                    | A::CsvError(_)
            ) =>
        {
            Error::Statement(e.to_string())
        }
        _ => Error::DataFusion(e),
    }
}

/// Whether the merge plan computes this stage's view (it replaces `features`).
fn merged(stage: &str, execution: &crate::config::ExecutionConfig) -> bool {
    stage == pipeline::blend::STAGE.name && execution.plan == crate::config::PlanKind::Merge
}
