//! What `run` prints when it is done: rows, timings, the merge plan's profile, spill, output.

use crate::io::sink::{self, WriteStats};
use crate::pipeline;
use std::fmt;
use std::time::Duration;

/// What a run did, printed on stderr at the end.
#[derive(Debug, Clone, Default)]
pub struct JobSummary {
    pub output: String,
    /// How the features were computed: weighting and blend, e.g. `prior mean, blend bayes (m = 30)`.
    pub formulas: String,
    pub engagement_rows: u64,
    pub neighbour_rows: u64,
    /// Rows of `history`: distinct (query, product_id) engagement pairs.
    pub history_rows: u64,
    pub neighbour_set_rows: u64,
    /// Queries with a non-empty neighbour set, i.e. with at least one prior pair.
    pub queries_with_prior: u64,
    pub written: WriteStats,
    /// Files the vacuum after a Delta commit deleted.
    pub vacuumed: Option<usize>,
    pub warnings: Vec<String>,
    pub check_time: Duration,
    /// The plan's name (`merge` or `sql`).
    pub plan: &'static str,
    /// The merge plan's own measurements (summed over input partitions); `None` for `sql`.
    pub merge: Option<MergeProfile>,
    /// The neighbour sets' own stage (the SQL plan, or a cluster's count of the sets when the
    /// client writes the file); `None` when the merge operator computed them.
    pub neighbour_sets_time: Option<Duration>,
    pub features_time: Duration,
    pub total_time: Duration,
}

/// Where the merge plan's time went (see [`pipeline::merge::MergeMetrics`]). The writer runs
/// concurrently: `prior_blend` and the Parquet encoding overlap.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeProfile {
    pub read_history: Duration,
    pub read_neighbours: Duration,
    pub build_index: Duration,
    /// The workers' time computing rows, summed (more than the wall time when they run at once).
    pub prior_blend: Duration,
    /// Output partitions of the operator (summed over input partitions).
    pub partitions: usize,
    pub history_rows: u64,
    /// History rows the partitions need, summed: over `history_rows`, the replication factor
    /// of a split by query.
    pub history_rows_needed: u64,
    /// The history's spill files, their bytes and rows (0 when it fitted in memory).
    pub spill_files: u64,
    pub spilled_bytes: u64,
    pub spilled_rows: u64,
    /// Blocks the spilled history was read back in, the rows read and the time (summed).
    pub history_blocks: u64,
    pub history_rows_loaded: u64,
    pub load_history: Duration,
    /// Rewriting the spilled history in query order, so blocks read only what they need.
    pub sort_history: Duration,
}

impl MergeProfile {
    pub(super) fn add(&mut self, m: &pipeline::merge::MergeMetrics) {
        let d =
            |t: &datafusion::physical_plan::metrics::Time| Duration::from_nanos(t.value() as u64);
        self.read_history += d(&m.read_history);
        self.read_neighbours += d(&m.read_neighbours);
        self.build_index += d(&m.build_index);
        self.prior_blend += d(&m.prior_blend);
        self.history_rows += m.history_rows.value() as u64;
        self.history_rows_needed += m.history_rows_needed.value() as u64;
        self.spill_files += m.spill.spill_file_count.value() as u64;
        self.spilled_bytes += m.spill.spilled_bytes.value() as u64;
        self.spilled_rows += m.spill.spilled_rows.value() as u64;
        self.history_blocks += m.history_blocks.value() as u64;
        self.history_rows_loaded += m.history_rows_loaded.value() as u64;
        self.load_history += d(&m.load_history);
        self.sort_history += d(&m.sort_history);
    }
}

impl JobSummary {
    /// Output pairs that exist only through the prior (no engagement row).
    pub fn prior_only_pairs(&self) -> u64 {
        self.written.rows.saturating_sub(self.history_rows)
    }
}

impl fmt::Display for JobSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: Duration| format!("{:.2}s", d.as_secs_f64());
        writeln!(
            f,
            "q2q-prior run: wrote {} rows ({} bytes) to {}{} (plan: {})",
            self.written.rows,
            self.written.bytes,
            self.output,
            match (&self.written.delta_version, self.written.parts.len()) {
                (Some(v), _) => format!(" (Delta table, version {v})"),
                (None, 0) => String::new(),
                (None, n) => {
                    let writers: std::collections::BTreeSet<&str> = self
                        .written
                        .parts
                        .iter()
                        .map(|p| p.writer.as_str())
                        .collect();
                    format!(" as {n} part files by {} writer(s)", writers.len())
                }
            },
            self.plan
        )?;
        writeln!(f, "  features: {}", self.formulas)?;
        writeln!(
            f,
            "  stage            rows in                        rows out      wall"
        )?;
        writeln!(
            f,
            "  inputs+checks    engagement {:>10}  neighbours {:>10}                 {:>8}",
            self.engagement_rows,
            self.neighbour_rows,
            secs(self.check_time)
        )?;
        writeln!(
            f,
            "  history          {:>10}                        {:>10}  (lazy)",
            self.engagement_rows, self.history_rows
        )?;
        if let Some(m) = &self.merge {
            writeln!(
                f,
                "  merge plan (one operator; the writer encodes concurrently) {:>8}",
                secs(self.features_time)
            )?;
            writeln!(
                f,
                "    read history + H, intern        {:>10}                 {:>8}",
                self.history_rows,
                secs(m.read_history)
            )?;
            writeln!(
                f,
                "    read neighbours, filter         {:>10}                 {:>8}",
                self.neighbour_rows,
                secs(m.read_neighbours)
            )?;
            writeln!(
                f,
                "    index + neighbour sets                     {:>10}  {:>8}",
                self.neighbour_set_rows,
                secs(m.build_index)
            )?;
            writeln!(
                f,
                "    prior + blend ({:>3} partitions)           {:>10}  {:>8} (workers' time, summed)",
                m.partitions,
                self.written.rows,
                secs(m.prior_blend)
            )?;
            writeln!(
                f,
                "    history a partition needs, summed: {:.2}x the history (a split by query \
                 replicates a neighbour's history into every partition citing it)",
                m.history_rows_needed as f64 / m.history_rows.max(1) as f64
            )?;
            if m.spill_files == 0 {
                writeln!(
                    f,
                    "    spilled: nothing (history and neighbour candidates fitted in memory)"
                )?;
            } else {
                writeln!(
                    f,
                    "    spilled: {} rows, {} bytes in {} spill files (history and neighbour \
                     candidates as read, then the history again to sort it by query, in {}); \
                     history read back in {} blocks, {:.2}x the history, {} (partitions' \
                     time, summed)",
                    m.spilled_rows,
                    m.spilled_bytes,
                    m.spill_files,
                    secs(m.sort_history),
                    m.history_blocks,
                    m.history_rows_loaded as f64 / m.history_rows.max(1) as f64,
                    secs(m.load_history)
                )?;
            }
        } else {
            writeln!(
                f,
                "  neighbour_sets   {:>10}                        {:>10}  {:>8}",
                self.neighbour_rows,
                self.neighbour_set_rows,
                self.neighbour_sets_time
                    .map_or_else(|| "(in the merge stage)".to_string(), secs)
            )?;
            writeln!(
                f,
                "  prior+blend+sink {:>10}                        {:>10}  {:>8}  (one fused plan)",
                self.history_rows,
                self.written.rows,
                secs(self.features_time)
            )?;
            // on a cluster the merge operators report through the writers of the parts
            if let Some((held, history)) = sink::parts::history_held(&self.written.parts) {
                writeln!(
                    f,
                    "    history the tasks held, summed: {:.2}x the history ({held} rows of \
                     {history}; a split by query replicates a neighbour's history into every \
                     task citing it)",
                    held as f64 / history.max(1) as f64
                )?;
            }
        }
        writeln!(f, "  queries with a prior: {}", self.queries_with_prior)?;
        writeln!(
            f,
            "  (q,p) pairs only through the prior: {}",
            self.prior_only_pairs()
        )?;
        if let Some(n) = self.vacuumed {
            writeln!(
                f,
                "  vacuum: deleted {n} file(s) no table version within the retention needs"
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        write!(f, "  total wall time: {}", secs(self.total_time))
    }
}
