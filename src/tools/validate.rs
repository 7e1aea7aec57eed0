//! `validate`: every input check the job relies on, reported one line each instead of stopping at
//! the first failure, plus diagnostics of how much the neighbour lists can contribute.
//!
//! The schema checks, row checks ([`crate::pipeline::checks`]) and the duplicate-key count are the
//! functions `run` calls; only the reporting differs. Diagnostics are computed per slice with the
//! job's own stage views, so "usable neighbours" means exactly what `neighbour_sets` keeps.

use std::fmt;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::config::{DuplicatePolicy, JobConfig};
use crate::error::{Error, Result};
use crate::io::checks::Severity;
use crate::io::tables;
use crate::io::tables::Input;
use crate::pipeline;
use crate::pipeline::inputs::{self, ENGAGEMENT, Inputs, NEIGHBOURS};
use crate::session;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    /// Not evaluated because a check it depends on failed.
    Skip,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Skip => "SKIP",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub status: Status,
    /// `engagement`, `neighbours`, or `inputs` for checks across both.
    pub input: &'static str,
    pub check: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Offending rows (or keys, queries), when the check counts something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// What `count` is out of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
}

impl Line {
    fn new(status: Status, input: &'static str, check: impl Into<String>) -> Line {
        Line {
            status,
            input,
            check: check.into(),
            column: None,
            count: None,
            total: None,
            detail: String::new(),
            expected: None,
            example: None,
        }
    }

    fn counted(mut self, count: u64, total: u64, what: &str) -> Line {
        self.count = Some(count);
        self.total = Some(total);
        self.detail = format!("{count} of {total}{} {what}", percent(count, total));
        self
    }

    fn detail(mut self, detail: impl Into<String>) -> Line {
        self.detail = detail.into();
        self
    }
}

fn percent(count: u64, total: u64) -> String {
    if count == 0 || total == 0 {
        String::new()
    } else {
        format!(" ({:.2}%)", 100.0 * count as f64 / total as f64)
    }
}

/// The whole report, in check order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub status: Option<Status>,
    pub pass: usize,
    pub skip: usize,
    pub warn: usize,
    pub fail: usize,
    pub checks: Vec<Line>,
}

impl Report {
    fn push(&mut self, line: Line) {
        match line.status {
            Status::Pass => self.pass += 1,
            Status::Skip => self.skip += 1,
            Status::Warn => self.warn += 1,
            Status::Fail => self.fail += 1,
        }
        self.status = self.status.max(Some(line.status));
        self.checks.push(line);
    }

    pub fn failed(&self) -> bool {
        self.fail > 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|l| l.check.len()).max().unwrap_or(0);
        for line in &self.checks {
            write!(
                f,
                "{}  {:<10}  {:<width$}  {}",
                line.status, line.input, line.check, line.detail
            )?;
            if line.status != Status::Pass {
                if let Some(column) = &line.column {
                    write!(f, "; column '{column}'")?;
                }
                if let Some(expected) = &line.expected {
                    write!(f, "; expected {expected}")?;
                }
                if let Some(example) = &line.example {
                    write!(f, "; e.g. {example}")?;
                }
            }
            writeln!(f)?;
        }
        write!(
            f,
            "validate: {} PASS, {} WARN, {} FAIL",
            self.pass, self.warn, self.fail
        )?;
        if self.skip > 0 {
            write!(f, ", {} SKIP", self.skip)?;
        }
        Ok(())
    }
}

/// Thresholds of the diagnostics (the checks themselves have fixed severities).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A diagnostic that is a share (neighbour rows without history, queries with fewer than k
    /// usable neighbours) is a WARN above this fraction.
    pub warn_share: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options { warn_share: 0.1 }
    }
}

/// Runs every check on the inputs of `config` and returns the report; an `Err` only for
/// configuration errors and internal failures, never for bad data.
pub async fn validate(config: &JobConfig, options: Options) -> Result<Report> {
    let (engagement_spec, neighbours_spec) = config.input_specs()?;
    let ctx = session::new_context(&config.execution)?;
    let mut report = Report::default();

    let engagement = schema_line(
        &mut report,
        ENGAGEMENT,
        inputs::open_engagement(&ctx, engagement_spec, &config.features).await,
    )?;
    let neighbours = schema_line(
        &mut report,
        NEIGHBOURS,
        inputs::open_neighbours(&ctx, neighbours_spec).await,
    )?;

    let compatible = match (&engagement, &neighbours) {
        (Some(engagement), Some(neighbours)) => {
            match inputs::check_compatible(engagement, neighbours) {
                Ok(()) => {
                    report.push(
                        Line::new(Status::Pass, "inputs", "compatible").detail(format!(
                            "partition columns [{}] / [{}], normalize {}",
                            engagement.partitions.columns.join(", "),
                            neighbours.partitions.columns.join(", "),
                            engagement.normalize
                        )),
                    );
                    true
                }
                Err(Error::BadInput(bad)) => {
                    let mut line =
                        Line::new(Status::Fail, "inputs", "compatible").detail(bad.problem);
                    line.column = bad.column;
                    line.expected = bad.expected;
                    report.push(line);
                    false
                }
                Err(other) => return Err(other),
            }
        }
        _ => false,
    };

    let mut readable = [false, false];
    for (slot, input) in [&engagement, &neighbours].into_iter().enumerate() {
        if let Some(input) = input {
            readable[slot] = row_checks(&mut report, input, config).await?;
        }
    }

    match (engagement, neighbours) {
        (Some(engagement), Some(neighbours)) if compatible && readable == [true, true] => {
            let inputs = Inputs {
                engagement,
                neighbours,
            };
            inputs.register_views(&ctx)?;
            joint_diagnostics(&mut report, &ctx, &inputs, config, options).await?;
        }
        (_, neighbours) => {
            for check in ["neighbours_without_history", "queries_below_top_k"] {
                report.push(Line::new(Status::Skip, NEIGHBOURS, check).detail(
                    "not computed: needs both inputs readable and compatible (see the FAIL lines)",
                ));
            }
            match neighbours {
                Some(neighbours) if readable[1] => {
                    neighbours.register_view(&ctx)?;
                }
                _ => {
                    report.push(
                        Line::new(Status::Skip, NEIGHBOURS, "score_distribution")
                            .detail("not computed: the neighbours input cannot be read"),
                    );
                    return Ok(report);
                }
            }
        }
    }
    score_distribution(&mut report, &ctx, config).await?;
    Ok(report)
}

/// The schema line of an input: PASS with its columns, or FAIL with what is wrong (then the
/// input's row checks are skipped).
fn schema_line(
    report: &mut Report,
    role: &'static str,
    opened: Result<Input>,
) -> Result<Option<Input>> {
    match opened {
        Ok(input) => {
            let columns: Vec<String> = input
                .raw
                .schema()
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect();
            report.push(Line::new(Status::Pass, role, "schema").detail(format!(
                "{} {}: {}",
                input.format,
                input.uri,
                columns.join(", ")
            )));
            Ok(Some(input))
        }
        Err(Error::BadInput(bad)) => {
            let mut line = Line::new(Status::Fail, role, "schema")
                .detail(format!("{} ({}); row checks skipped", bad.problem, bad.uri));
            line.column = bad.column;
            line.expected = bad.expected;
            line.example = bad.example;
            report.push(line);
            Ok(None)
        }
        Err(other) => Err(other),
    }
}

/// Row count, every row check and the duplicate-key count of one input. Returns whether its rows
/// could be read (the diagnostics need both inputs readable).
async fn row_checks(report: &mut Report, input: &Input, config: &JobConfig) -> Result<bool> {
    let scan = match crate::pipeline::checks::scan_checks(input).await {
        Ok(scan) => scan,
        Err(Error::BadInput(bad)) => {
            let mut line = Line::new(Status::Fail, input.role, "readable").detail(bad.problem);
            line.expected = bad.expected;
            report.push(line);
            return Ok(false);
        }
        Err(other) => return Err(other),
    };
    if scan.rows == 0 {
        let bad = tables::no_rows(input);
        let mut line = Line::new(Status::Fail, input.role, "rows").detail(bad.problem);
        line.count = Some(0);
        line.expected = bad.expected;
        report.push(line);
        return Ok(false);
    }
    report.push(
        Line::new(Status::Pass, input.role, "rows")
            .detail(format!("{} rows", scan.rows))
            .with_count(scan.rows),
    );
    for result in scan.results.iter().cloned() {
        let status = match (result.violations, result.check.severity) {
            (0, _) => Status::Pass,
            (_, Severity::Warn) => Status::Warn,
            (_, Severity::Fail) => Status::Fail,
        };
        let mut line = Line::new(status, input.role, result.check.id).counted(
            result.violations,
            scan.rows,
            "rows",
        );
        line.column = Some(result.check.column.to_string());
        line.expected = Some(result.check.expected.to_string());
        line.example = result.example;
        report.push(line);
    }
    let duplicates = crate::pipeline::checks::duplicate_keys(input).await?;
    let status = match (duplicates.duplicated, input.role) {
        (0, _) => Status::Pass,
        (_, ENGAGEMENT) if config.features.on_duplicate == DuplicatePolicy::Error => Status::Fail,
        _ => Status::Warn,
    };
    let mut line = Line::new(status, input.role, "duplicate_keys").counted(
        duplicates.duplicated,
        duplicates.keys,
        &format!("({}) keys have more than one row", duplicates.columns),
    );
    line.column = Some(duplicates.columns.clone());
    line.expected = Some(if input.role == ENGAGEMENT {
        match config.features.on_duplicate {
            DuplicatePolicy::Error => crate::pipeline::checks::DUPLICATES_EXPECTED.to_string(),
            DuplicatePolicy::Sum => {
                "one row per key (on_duplicate = \"sum\": they are added up)".to_string()
            }
        }
    } else {
        "one row per key (the highest score is kept)".to_string()
    });
    line.example = duplicates.example;
    report.push(line);
    if input.summed_from.is_some() && !report_has_failed(report, input.role) {
        let overflow = crate::pipeline::checks::sum_overflow(input, &scan).await?;
        let mut line = match &overflow {
            None => Line::new(
                Status::Pass,
                input.role,
                crate::pipeline::checks::SumOverflow::ID,
            )
            .detail("every key's summed counts fit 64-bit integers"),
            Some(o) => Line::new(
                Status::Fail,
                input.role,
                crate::pipeline::checks::SumOverflow::ID,
            )
            .detail(format!(
                "{} key(s) sum to more {} than fits",
                o.keys, o.column
            ))
            .with_count(o.keys),
        };
        if let Some(o) = overflow {
            line.column = Some(o.column.to_string());
            line.example = o.example;
        }
        line.expected = Some(crate::pipeline::checks::SumOverflow::EXPECTED.to_string());
        report.push(line);
    }
    Ok(true)
}

/// Whether `report` has a FAIL line for `role` already (a count that is not a valid count makes
/// its sums meaningless).
fn report_has_failed(report: &Report, role: &str) -> bool {
    report
        .checks
        .iter()
        .any(|l| l.input == role && l.status == Status::Fail)
}

impl Line {
    fn with_count(mut self, count: u64) -> Line {
        self.count = Some(count);
        self
    }
}

/// Per slice, with the job's views: neighbour rows whose neighbour has no engagement, and
/// queries whose usable neighbour set is smaller than k.
const NEIGHBOURS_WITHOUT_HISTORY: &str = "
SELECT COUNT(*) AS total,
       SUM(CASE WHEN h.query IS NULL THEN 1 ELSE 0 END) AS missing
FROM neighbours AS n
LEFT JOIN (SELECT DISTINCT query FROM history) AS h ON n.neighbour = h.query";

const QUERIES_BELOW_K: &str = "
SELECT COUNT(*) AS total,
       SUM(CASE WHEN COALESCE(s.n, 0) < $top_k THEN 1 ELSE 0 END) AS short,
       SUM(CASE WHEN s.n IS NULL THEN 1 ELSE 0 END) AS empty
FROM (SELECT DISTINCT query FROM neighbours) AS q
LEFT JOIN (SELECT query, MAX(n_neighbours) AS n FROM neighbour_sets GROUP BY query) AS s
  ON q.query = s.query";

/// Over finite scores only: NaN and infinities are the score check's FAIL, not a distribution.
const SCORE_DISTRIBUTION: &str = "
SELECT MIN(score), MEDIAN(score), MAX(score), AVG(score),
       SUM(CASE WHEN score < $min_score THEN 1 ELSE 0 END), COUNT(*)
FROM neighbours
WHERE score >= -1.7976931348623157e308 AND score <= 1.7976931348623157e308";

async fn joint_diagnostics(
    report: &mut Report,
    ctx: &SessionContext,
    inputs: &Inputs,
    config: &JobConfig,
    options: Options,
) -> Result<()> {
    let params = &config.features;
    let k = i64::from(params.top_k);
    let share_status = |count: u64, total: u64| {
        if total > 0 && count as f64 / total as f64 > options.warn_share {
            Status::Warn
        } else {
            Status::Pass
        }
    };
    let (mut rows, mut missing, mut queries, mut short, mut empty) = (0, 0, 0, 0, 0);
    let new_session = session::siblings(ctx, &config.execution);
    let slices = pipeline::slices(ctx, inputs, &new_session)?;
    // with engagement partitions the job uses the neighbour lists once per partition: so do these
    let per_partition = if slices.len() > 1 {
        format!(
            "; counted per engagement partition ({} partitions), as the job uses them",
            slices.len()
        )
    } else {
        String::new()
    };
    for slice in slices {
        pipeline::register_stages(
            &slice.ctx,
            params,
            crate::config::PlanKind::Sql,
            (None, pipeline::merge::Split::Ranges),
            &[],
        )
        .await?;
        let batches = slice
            .ctx
            .sql(NEIGHBOURS_WITHOUT_HISTORY)
            .await?
            .collect()
            .await?;
        rows += int(&batches, 0);
        missing += int(&batches, 1);
        let batches = slice
            .ctx
            .sql(QUERIES_BELOW_K)
            .await?
            .with_param_values(vec![("top_k", k.into())])?
            .collect()
            .await?;
        queries += int(&batches, 0);
        short += int(&batches, 1);
        empty += int(&batches, 2);
    }
    let mut line = Line::new(
        share_status(missing, rows),
        NEIGHBOURS,
        "neighbours_without_history",
    )
    .counted(
        missing,
        rows,
        "neighbour rows name a query without engagement (they cannot contribute to a prior)",
    );
    line.detail.push_str(&per_partition);
    line.column = Some("neighbour".into());
    line.expected = Some(format!(
        "at most {:.0}% (--warn-share)",
        100.0 * options.warn_share
    ));
    report.push(line);

    let mut line = Line::new(
        share_status(short, queries),
        NEIGHBOURS,
        "queries_below_top_k",
    )
    .counted(
        short,
        queries,
        &format!("queries have fewer than k={k} usable neighbours"),
    );
    line.detail.push_str(&format!(
        "; {empty} have none (no prior at all){per_partition}"
    ));
    line.column = Some("query".into());
    line.expected = Some(format!(
        "at most {:.0}% (--warn-share); usable = not the query itself, score >= min_score, with engagement",
        100.0 * options.warn_share
    ));
    report.push(line);
    Ok(())
}

/// min / median / max / mean of the finite scores, and how many fall below min_score.
async fn score_distribution(
    report: &mut Report,
    ctx: &SessionContext,
    config: &JobConfig,
) -> Result<()> {
    let params = &config.features;
    let batches = ctx
        .sql(SCORE_DISTRIBUTION)
        .await?
        .with_param_values(vec![("min_score", params.min_score.into())])?
        .collect()
        .await?;
    let (below, total) = (int(&batches, 4), int(&batches, 5));
    let status = if total > 0 && below == total {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut line = Line::new(status, NEIGHBOURS, "score_distribution").detail(format!(
        "min {} / median {} / max {} / mean {} of {total} finite scores; {below} of {total}{} below min_score {}",
        float(&batches, 0),
        float(&batches, 1),
        float(&batches, 2),
        float(&batches, 3),
        percent(below, total),
        params.min_score,
    ));
    line.column = Some("score".into());
    line.count = Some(below);
    line.total = Some(total);
    line.expected = Some("some rows at or above min_score".into());
    report.push(line);
    Ok(())
}

fn first_row(batches: &[RecordBatch]) -> Option<&RecordBatch> {
    batches.iter().find(|b| b.num_rows() > 0)
}

/// An integer aggregate (NULL, e.g. SUM over no rows, is 0).
fn int(batches: &[RecordBatch], column: usize) -> u64 {
    first_row(batches).map_or(0, |b| {
        let c = b.column(column);
        if c.is_null(0) {
            return 0;
        }
        match c.data_type() {
            DataType::Int64 => c.as_primitive::<Int64Type>().value(0).max(0) as u64,
            _ => datafusion::arrow::compute::cast(c, &DataType::Int64)
                .map(|c| c.as_primitive::<Int64Type>().value(0).max(0) as u64)
                .unwrap_or(0),
        }
    })
}

/// A float aggregate, printed with up to 6 significant decimals.
fn float(batches: &[RecordBatch], column: usize) -> String {
    first_row(batches)
        .and_then(|b| {
            let c = datafusion::arrow::compute::cast(b.column(column), &DataType::Float64).ok()?;
            let c = c.as_primitive::<Float64Type>();
            (!c.is_null(0)).then(|| format!("{:.6}", c.value(0)))
        })
        .map(|s| s.trim_end_matches('0').trim_end_matches('.').to_string())
        .unwrap_or_else(|| "NULL".into())
}
