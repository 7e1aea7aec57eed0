//! `q2q-prior validate`: run every input check the job relies on and report each one.

use std::io::Write;

use clap::{Args, ValueEnum};

use super::JobArgs;
use crate::error::{Error, Result};
use crate::redact;
use crate::tools::validate::{self, Options};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// One line per check: STATUS, input, check, counts and details.
    Text,
    /// One JSON object with the overall status, the counts and every check.
    Json,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Run every input check the feature job relies on, without computing features, and \
    print one line per check with PASS, WARN or FAIL and its counts: schema and types, row count, \
    null or empty keys, negative or inconsistent counts, duplicate keys, NaN/inf scores, self-pairs, \
    neighbours without engagement, queries with fewer than k usable neighbours, score distribution.\n\n\
    The checks are the ones `run` applies (run stops at the first FAIL). The report goes to stdout. \
    Exit code 0 when nothing FAILs, 2 otherwise."
)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Shares (neighbour rows without engagement, queries below k) above this fraction are a WARN.
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    pub warn_share: f64,
}

pub async fn run(args: ValidateArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.warn_share) {
        return Err(Error::config(format!(
            "--warn-share must be a fraction between 0 and 1, got {}",
            args.warn_share
        )));
    }
    let config = args.job.load()?;
    let report = validate::validate(
        &config,
        Options {
            warn_share: args.warn_share,
        },
    )
    .await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        ReportFormat::Text => writeln!(out, "{}", redact::text(&report.to_string()))?,
        ReportFormat::Json => {
            let json = serde_json::to_string_pretty(&report).map_err(std::io::Error::from)?;
            writeln!(out, "{}", redact::text(&json))?;
        }
    }
    out.flush()?;
    if report.failed() {
        return Err(Error::ChecksFailed(report.fail));
    }
    Ok(())
}
