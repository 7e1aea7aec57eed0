//! Training files for LightGBM's lambdarank from a feature table and labelled pairs.
//!
//! Per split (`train`, `valid`): `<split>.csv` (header `label,group,<features>`, numeric only, the
//! rows of a query contiguous), `<split>.csv.query` (group sizes, which LightGBM also finds by
//! name), `<split>.parquet` (integer `qid`, the keys, label and features, for Python), plus
//! `features.txt` and a `lightgbm.conf` that trains as it is (`lightgbm config=lightgbm.conf` in
//! the folder). A query is never split across the two sets. The folder is written under a staging
//! name and renamed into place when complete.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use futures::StreamExt;

use crate::config::{ExecutionConfig, InputSpec};
use crate::error::{Error, Result};
use crate::io::sink::folder::StagedFolder;
use crate::io::sink::{self, parquet_properties};
use crate::io::tables;
use crate::session;
use crate::tools::feature_table::{self, ENGINE_FEATURES};
use crate::tools::labels;

/// `has_prior`: 1 when the feature table has a prior for the pair (some neighbour engaged with the
/// product), 0 otherwise, including pairs missing from the table.
pub const HAS_PRIOR: &str = "has_prior";

/// How queries are assigned to train and valid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    pub method: SplitMethod,
    /// Share of queries in train, in (0, 1).
    pub train: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMethod {
    /// A fixed hash of the query text: a query stays on its side across runs and datasets.
    QueryHash,
    /// A seeded random draw per query (reproducible with the same seed).
    Random { seed: u64 },
}

impl Split {
    /// Parses `query-hash=80%` or `random=80%` (the seed comes separately).
    pub fn parse(text: &str, seed: u64) -> Result<Split> {
        let bad = || {
            Error::config(format!(
                "--split '{text}': expected query-hash=P% or random=P% with 0 < P < 100, e.g. query-hash=80%"
            ))
        };
        let (method, share) = text.split_once('=').ok_or_else(bad)?;
        let method = match method {
            "query-hash" => SplitMethod::QueryHash,
            "random" => SplitMethod::Random { seed },
            _ => return Err(bad()),
        };
        let percent: f64 = share.trim_end_matches('%').parse().map_err(|_| bad())?;
        if !(percent > 0.0 && percent < 100.0) {
            return Err(bad());
        }
        Ok(Split {
            method,
            train: percent / 100.0,
        })
    }

    /// Whether `query` goes to train.
    pub fn is_train(&self, query: &str) -> bool {
        let key = match self.method {
            SplitMethod::QueryHash => 0,
            SplitMethod::Random { seed } => splitmix64(seed ^ 0x5851_F42D_4C95_7F2D),
        };
        let h = splitmix64(crate::hash::fnv1a64(query.as_bytes()) ^ key);
        // 53 bits of the hash as a uniform number in [0, 1)
        ((h >> 11) as f64 / (1u64 << 53) as f64) < self.train
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.method {
            SplitMethod::QueryHash => write!(f, "query-hash={}%", self.train * 100.0),
            SplitMethod::Random { seed } => {
                write!(f, "random={}% (seed {seed})", self.train * 100.0)
            }
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    pub feature_table: InputSpec,
    pub labels: InputSpec,
    pub out: PathBuf,
    pub split: Split,
    /// Feature columns; `None` = every engine feature of the table and `has_prior`. Numeric
    /// columns of the labelled input come in only when named (they may be outcomes: a leak).
    pub features: Option<Vec<String>>,
    /// Replace an existing, non-empty output folder.
    pub force: bool,
    pub execution: ExecutionConfig,
    pub layout: Layout,
}

/// The ranker files of each split (a Parquet copy with qid, query and product_id is always
/// written beside them, row for row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// LightGBM: `<split>.csv` (label, features) with `<split>.csv.query` group sizes, and
    /// `lightgbm.conf` / `predict.conf` for its command-line program.
    Lightgbm,
    /// svmlight / LETOR (XGBoost, RankLib, Elasticsearch LTR, Metarank): `<split>.svm` lines
    /// `label qid:N 1:v 2:v ...` (1-based feature indexes, as RankLib requires; zeros left out),
    /// and `feature_map.tsv` in XGBoost's feature-map format (0-based: feature `i` of the file is
    /// column `i - 1` once read with `zero_based=False`).
    Svmlight,
}

/// Rows, queries and labels of one split.
#[derive(Debug, Clone, Default)]
pub struct SplitSummary {
    pub name: &'static str,
    pub rows: u64,
    pub queries: u64,
    /// Rows per label value.
    pub labels: std::collections::BTreeMap<i64, u64>,
    /// Rows with `has_prior` = 1.
    pub with_prior: u64,
}

#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub layout: Layout,
    pub out: PathBuf,
    pub features: Vec<String>,
    pub splits: [SplitSummary; 2],
    pub max_label: i64,
}

impl fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "export {}: {} -> {}",
            match self.layout {
                Layout::Lightgbm => "lightgbm",
                Layout::Svmlight => "svmlight",
            },
            self.features.join(","),
            self.out.display()
        )?;
        for s in &self.splits {
            let labels: Vec<String> = s.labels.iter().map(|(l, n)| format!("{l}:{n}")).collect();
            writeln!(
                f,
                "  {:<5} {:>10} rows {:>8} queries  labels {}  with prior {:.1}%",
                s.name,
                s.rows,
                s.queries,
                labels.join(" "),
                100.0 * s.with_prior as f64 / s.rows.max(1) as f64
            )?;
        }
        match self.layout {
            Layout::Lightgbm => write!(
                f,
                "  train with: cd {} && lightgbm config=lightgbm.conf, then lightgbm config=predict.conf",
                self.out.display()
            ),
            Layout::Svmlight => write!(
                f,
                "  train.svm / valid.svm (features by index in feature_map.tsv) in {}",
                self.out.display()
            ),
        }
    }
}

/// Joins the features onto the labelled pairs, splits by query and writes the folder.
pub async fn export(spec: &ExportSpec) -> Result<ExportSummary> {
    sink::folder::check_replaceable(&spec.out, spec.force)?;
    let ctx = session::new_context(&spec.execution)?;
    let table = feature_table::open(&ctx, "feature table", &spec.feature_table).await?;
    let labels = labels::open(&ctx, "labels", &spec.labels).await?;
    let features = choose_features(spec, &table, &labels)?;
    ctx.register_table("features", table.input.typed.clone().into_view())?;
    ctx.register_table("labels", labels.input.typed.clone().into_view())?;

    let has_prior = if table.numeric.iter().any(|c| c == "n_contributing") {
        "CASE WHEN f.n_contributing > 0 THEN 1 ELSE 0 END"
    } else if table.numeric.iter().any(|c| c == "prior") {
        "CASE WHEN f.prior > 0 THEN 1 ELSE 0 END"
    } else {
        "0"
    };
    let mut select = vec![
        "l.query AS query".to_string(),
        "l.product_id AS product_id".to_string(),
        "l.label AS label".to_string(),
        format!("{has_prior} AS {HAS_PRIOR}"),
    ];
    for name in &features {
        if name == HAS_PRIOR {
            continue;
        }
        let quoted = tables::quote_identifier(name);
        if labels.extra.contains(name) {
            select.push(format!("l.{quoted} AS {quoted}"));
        } else {
            select.push(format!("COALESCE(f.{quoted}, 0) AS {quoted}"));
        }
    }
    let sql = format!(
        "SELECT {} FROM labels AS l LEFT JOIN features AS f \
         ON l.query = f.query AND l.product_id = f.product_id \
         ORDER BY l.query, l.product_id",
        select.join(", ")
    );
    let joined = ctx.sql(&sql).await?;

    // removed on every way out but a successful publish, including a cancelled future
    let staging = StagedFolder::create(&spec.out)?;
    let dir = staging.path().to_path_buf();
    let splits = write_splits(joined, &features, spec, &dir).await?;
    write_metadata(&dir, spec.layout, &features, labels.max_label)?;
    staging.publish()?;
    Ok(ExportSummary {
        layout: spec.layout,
        out: spec.out.clone(),
        features,
        splits,
        max_label: labels.max_label,
    })
}

fn choose_features(
    spec: &ExportSpec,
    table: &feature_table::FeatureTable,
    labels: &labels::Labels,
) -> Result<Vec<String>> {
    let available = |name: &str| {
        name == HAS_PRIOR
            || labels.extra.iter().any(|c| c == name)
            || table.numeric.iter().any(|c| c == name)
    };
    match &spec.features {
        None => {
            let mut chosen: Vec<String> = ENGINE_FEATURES
                .iter()
                .filter(|f| table.numeric.iter().any(|c| c == *f))
                .map(|f| f.to_string())
                .collect();
            chosen.push(HAS_PRIOR.to_string());
            Ok(chosen)
        }
        Some(list) => {
            let mut chosen: Vec<String> = Vec::new();
            for name in list {
                if !available(name) {
                    let mut have: Vec<&str> = table.numeric.iter().map(String::as_str).collect();
                    have.push(HAS_PRIOR);
                    have.extend(labels.extra.iter().map(String::as_str));
                    return Err(Error::config(format!(
                        "--features: no numeric column '{name}' in the feature table or the labels; available: {}",
                        have.join(", ")
                    )));
                }
                if matches!(
                    name.as_str(),
                    "label" | "group" | "qid" | "query" | "product_id"
                ) {
                    return Err(Error::config(format!(
                        "--features: '{name}' is a key or label column, not a feature"
                    )));
                }
                if chosen.contains(name) {
                    return Err(Error::config(format!(
                        "--features: '{name}' is listed twice"
                    )));
                }
                let in_table = name == HAS_PRIOR || table.numeric.iter().any(|c| c == name);
                if in_table && labels.extra.iter().any(|c| c == name) {
                    return Err(Error::config(format!(
                        "--features: '{name}' is a column of both the feature table and the labels; \
                         rename the labels' column"
                    )));
                }
                chosen.push(name.clone());
            }
            Ok(chosen)
        }
    }
}

/// The files of one split, open for writing.
/// The ranker file of a split.
enum RankerFile {
    /// `<split>.csv` and its `.query` group sizes (rows of the current group counted until the
    /// next starts).
    Lightgbm {
        // boxed: the CSV writer is large beside a BufWriter
        csv: Box<datafusion::arrow::csv::Writer<BufWriter<File>>>,
        schema: SchemaRef,
        groups: BufWriter<File>,
        group_rows: u64,
    },
    Svmlight(BufWriter<File>),
}

struct SplitWriter {
    summary: SplitSummary,
    file: RankerFile,
    parquet: ArrowWriter<File>,
    parquet_schema: SchemaRef,
}

impl SplitWriter {
    fn create(
        dir: &Path,
        name: &'static str,
        layout: Layout,
        features: &[(String, DataType)],
    ) -> Result<Self> {
        let mut csv_fields = vec![Field::new("label", DataType::Int64, false)];
        let mut parquet_fields = vec![
            Field::new("qid", DataType::Int64, false),
            Field::new("query", DataType::Utf8, false),
            Field::new("product_id", DataType::Utf8, false),
            Field::new("label", DataType::Int64, false),
        ];
        for (f, t) in features {
            csv_fields.push(Field::new(f, t.clone(), true));
            parquet_fields.push(Field::new(f, t.clone(), true));
        }
        let parquet_schema = Arc::new(Schema::new(parquet_fields));
        let file = match layout {
            Layout::Lightgbm => RankerFile::Lightgbm {
                csv: Box::new(
                    datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .build(BufWriter::new(File::create(
                            dir.join(format!("{name}.csv")),
                        )?)),
                ),
                schema: Arc::new(Schema::new(csv_fields)),
                groups: BufWriter::new(File::create(dir.join(format!("{name}.csv.query")))?),
                group_rows: 0,
            },
            Layout::Svmlight => RankerFile::Svmlight(BufWriter::new(File::create(
                dir.join(format!("{name}.svm")),
            )?)),
        };
        Ok(SplitWriter {
            summary: SplitSummary {
                name,
                ..Default::default()
            },
            file,
            parquet: ArrowWriter::try_new(
                File::create(dir.join(format!("{name}.parquet")))?,
                Arc::clone(&parquet_schema),
                Some(parquet_properties()),
            )?,
            parquet_schema,
        })
    }

    /// A row of the current group (query) was written.
    fn count_row(&mut self) {
        if let RankerFile::Lightgbm { group_rows, .. } = &mut self.file {
            *group_rows += 1;
        }
    }

    fn end_group(&mut self) -> Result<()> {
        if let RankerFile::Lightgbm {
            groups, group_rows, ..
        } = &mut self.file
            && *group_rows > 0
        {
            writeln!(groups, "{group_rows}")?;
            *group_rows = 0;
        }
        Ok(())
    }

    /// Writes rows to the ranker file: `labels` and `qids` per row, the feature columns (named
    /// `names`).
    fn write_rows(
        &mut self,
        labels: &ArrayRef,
        qids: &[i64],
        names: &[String],
        features: &[ArrayRef],
    ) -> Result<()> {
        match &mut self.file {
            RankerFile::Lightgbm { csv, schema, .. } => {
                let mut columns = vec![Arc::clone(labels)];
                columns.extend(features.iter().cloned());
                csv.write(&RecordBatch::try_new(Arc::clone(schema), columns)?)?;
            }
            RankerFile::Svmlight(out) => {
                let labels = labels.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                let values: Vec<ArrayRef> = features
                    .iter()
                    .map(|c| cast(c, &DataType::Float64))
                    .collect::<std::result::Result<_, _>>()?;
                let values: Vec<&datafusion::arrow::array::Float64Array> =
                    values.iter().map(|c| c.as_primitive()).collect();
                let mut line = String::new();
                for (row, qid) in qids.iter().enumerate() {
                    use datafusion::arrow::array::Array;
                    use std::fmt::Write as _;
                    line.clear();
                    let _ = write!(line, "{} qid:{qid}", labels.value(row));
                    for (i, column) in values.iter().enumerate() {
                        if column.is_null(row) {
                            // a left-out feature reads as 0 in svmlight, not as missing
                            return Err(Error::config(format!(
                                "feature '{}' is null in a labelled row: svmlight has no missing \
                                 values; fill the column or leave it out of --features",
                                names[i]
                            )));
                        }
                        let v = column.value(row);
                        if v != 0.0 {
                            let _ = write!(line, " {}:{v}", i + 1);
                        }
                    }
                    line.push('\n');
                    out.write_all(line.as_bytes())?;
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<SplitSummary> {
        self.end_group()?;
        match self.file {
            RankerFile::Lightgbm {
                csv, mut groups, ..
            } => {
                groups.flush()?;
                csv.into_inner().flush()?;
            }
            RankerFile::Svmlight(mut out) => out.flush()?,
        }
        self.parquet.close()?;
        Ok(self.summary)
    }
}

async fn write_splits(
    joined: datafusion::prelude::DataFrame,
    features: &[String],
    spec: &ExportSpec,
    dir: &Path,
) -> Result<[SplitSummary; 2]> {
    let schema = joined.schema().as_arrow().clone();
    let types: Vec<(String, DataType)> = features
        .iter()
        .map(|f| {
            let t = schema.field_with_name(f).map(|x| x.data_type().clone());
            (f.clone(), t.unwrap_or(DataType::Float64))
        })
        .collect();
    let mut writers = [
        SplitWriter::create(dir, "train", spec.layout, &types)?,
        SplitWriter::create(dir, "valid", spec.layout, &types)?,
    ];
    let mut stream = joined.execute_stream().await?;
    let mut current: Option<(String, usize)> = None;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let queries = cast(
            batch.column_by_name("query").expect("selected"),
            &DataType::Utf8,
        )?;
        let queries = queries.as_string::<i32>();
        let labels = batch.column_by_name("label").expect("selected");
        let labels = labels.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let has_prior = cast(
            batch.column_by_name(HAS_PRIOR).expect("selected"),
            &DataType::Int64,
        )?;
        let has_prior = has_prior.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let mut rows: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        let mut qids: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
        for row in 0..batch.num_rows() {
            let query = queries.value(row);
            let side = match &current {
                Some((q, side)) if q == query => *side,
                _ => {
                    let side = usize::from(!spec.split.is_train(query));
                    writers[side].end_group()?;
                    writers[side].summary.queries += 1;
                    current = Some((query.to_string(), side));
                    side
                }
            };
            let w = &mut writers[side];
            w.count_row();
            w.summary.rows += 1;
            *w.summary.labels.entry(labels.value(row)).or_default() += 1;
            w.summary.with_prior += u64::from(has_prior.value(row) > 0);
            rows[side].push(row as u32);
            qids[side].push(w.summary.queries as i64 - 1);
        }
        for side in 0..2 {
            if rows[side].is_empty() {
                continue;
            }
            let indices = UInt32Array::from(std::mem::take(&mut rows[side]));
            let pick = |name: &str| -> Result<ArrayRef> {
                Ok(take(
                    batch.column_by_name(name).expect("selected"),
                    &indices,
                    None,
                )?)
            };
            let qid: ArrayRef = Arc::new(Int64Array::from(std::mem::take(&mut qids[side])));
            let feature_columns: Vec<ArrayRef> =
                features.iter().map(|f| pick(f)).collect::<Result<_>>()?;
            let w = &mut writers[side];
            let qid_values = qid.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            w.write_rows(
                &pick("label")?,
                qid_values.values(),
                features,
                &feature_columns,
            )?;
            let mut parquet_columns = vec![
                qid,
                cast(&pick("query")?, &DataType::Utf8)?,
                cast(&pick("product_id")?, &DataType::Utf8)?,
                pick("label")?,
            ];
            parquet_columns.extend(feature_columns);
            w.parquet.write(&RecordBatch::try_new(
                Arc::clone(&w.parquet_schema),
                parquet_columns,
            )?)?;
        }
    }
    let [train, valid] = writers;
    let splits = [train.finish()?, valid.finish()?];
    for s in &splits {
        if s.queries == 0 {
            return Err(Error::config(format!(
                "the {} split has no queries: {} queries in the labels are too few for --split {}",
                s.name,
                splits.iter().map(|s| s.queries).sum::<u64>(),
                spec.split
            )));
        }
    }
    Ok(splits)
}

/// `features.txt`, and `lightgbm.conf` + `predict.conf` or `feature_map.tsv`.
fn write_metadata(dir: &Path, layout: Layout, features: &[String], max_label: i64) -> Result<()> {
    std::fs::write(dir.join("features.txt"), features.join("\n") + "\n")?;
    if layout == Layout::Svmlight {
        // XGBoost's feature map: 0-based ids (its loader checks them), i.e. the .svm file's index
        // minus one; q: a quantity
        let map: String = features
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{i}\t{name}\tq\n"))
            .collect();
        std::fs::write(dir.join("feature_map.tsv"), map)?;
        return Ok(());
    }
    // The CSVs hold label and features only: LightGBM reads the groups from `<data>.query`
    // beside each data file (a group column would make it ignore those files, and stay a
    // feature slot of the model).
    let mut conf = format!(
        "# Written by q2q-prior {} (export lightgbm). From this folder:\n\
         #   lightgbm config=lightgbm.conf    (trains model.txt; groups from train.csv.query)\n\
         #   lightgbm config=predict.conf     (scores valid.csv into valid.predictions.txt)\n\
         # Features: {}\n\
         task = train\n\
         objective = lambdarank\n\
         metric = ndcg\n\
         eval_at = 1,3,10\n\
         data = train.csv\n\
         valid_data = valid.csv\n\
         header = true\n\
         label_column = name:label\n\
         num_iterations = 200\n\
         learning_rate = 0.05\n\
         num_leaves = 31\n\
         min_data_in_leaf = 20\n\
         early_stopping_round = 20\n\
         output_model = model.txt\n",
        env!("CARGO_PKG_VERSION"),
        features.join(",")
    );
    // lambdarank's default label_gain (2^i - 1) covers labels 0..=30; labels stop at 31
    if max_label > 30 {
        let gains: Vec<String> = (0..=max_label)
            .map(|i| format!("{}", 2f64.powi(i as i32) - 1.0))
            .collect();
        conf.push_str(&format!("label_gain = {}\n", gains.join(",")));
    }
    std::fs::write(dir.join("lightgbm.conf"), conf)?;
    std::fs::write(
        dir.join("predict.conf"),
        "# Scores valid.csv with the model lightgbm.conf trained: one score per row, in row order\n\
         # (valid.parquet has the query and product_id of each row).\n\
         task = predict\n\
         data = valid.csv\n\
         header = true\n\
         label_column = name:label\n\
         input_model = model.txt\n\
         output_result = valid.predictions.txt\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_specs() {
        let s = Split::parse("query-hash=80%", 1).unwrap();
        assert_eq!(s.method, SplitMethod::QueryHash);
        assert!((s.train - 0.8).abs() < 1e-12);
        assert_eq!(
            Split::parse("random=75", 9).unwrap().method,
            SplitMethod::Random { seed: 9 }
        );
        for bad in [
            "query-hash",
            "hash=80%",
            "random=0%",
            "random=100%",
            "random=x",
        ] {
            assert!(Split::parse(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_hash_is_stable_and_near_the_share() {
        let s = Split::parse("query-hash=80%", 0).unwrap();
        let again = Split::parse("query-hash=80%", 123).unwrap();
        let queries: Vec<String> = (0..20_000).map(|i| format!("query {i}")).collect();
        let train = queries.iter().filter(|q| s.is_train(q)).count();
        assert!((15_600..=16_400).contains(&train), "{train}");
        assert!(queries.iter().all(|q| s.is_train(q) == again.is_train(q)));
        // a random split depends on its seed
        let r1 = Split::parse("random=80%", 1).unwrap();
        let r2 = Split::parse("random=80%", 2).unwrap();
        assert!(queries.iter().any(|q| r1.is_train(q) != r2.is_train(q)));
    }
}
