//! `q2q-prior export ...`: training files for downstream rankers.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::InputSpec;
use crate::error::Result;
use crate::tools::export::lightgbm::{self, ExportSpec, Layout, Split};

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// LightGBM lambdarank files (CSV + .query, Parquet with qid, lightgbm.conf, predict.conf)
    /// from a feature table and labelled pairs.
    Lightgbm(LightgbmArgs),
    /// svmlight / LETOR files (`label qid:N 1:v ...`) for XGBoost, RankLib, Elasticsearch LTR and
    /// Metarank, with the same join, labels and split as `export lightgbm`.
    #[command(
        long_about = "Join a feature table (from `run`) onto labelled (query, product_id) pairs and \
        write svmlight / LETOR ranking files, split into train and valid by query, with the labels, \
        features and split of `export lightgbm`.\n\n\
        Writes into --out: train.svm / valid.svm (one line per pair, `label qid:N 1:v 2:v ...`, rows \
        of a query together, qid numbered per split from 0, 1-based feature indexes, zero values \
        left out; a null feature is refused), feature_map.tsv (XGBoost's feature map: id = index - \
        1, name, type q), features.txt, and train.parquet / \
        valid.parquet with qid, query, product_id, label and the features, row for row with the \
        .svm files."
    )]
    Svmlight(LightgbmArgs),
}

#[derive(Debug, Args)]
#[command(
    long_about = "Join a feature table (from `run`) onto labelled (query, product_id) pairs and \
    write LightGBM lambdarank training files, split into train and valid by query.\n\n\
    Labels: an integer `label` column >= 0 (lambdarank's default label_gain covers 0..30; larger \
    labels get a label_gain line in lightgbm.conf), or, without one, a grade from engagement counts: \
    3 purchased, 2 added to cart, 1 clicked, 0 shown only (e.g. `synth --later-period` output). \
    Pairs missing from the feature table get 0 features and has_prior = 0.\n\n\
    Writes into --out: train.csv / valid.csv (label,<features>), train.csv.query / \
    valid.csv.query (group sizes, which LightGBM reads beside each data file), train.parquet / \
    valid.parquet (qid, query, product_id, label, features), features.txt, lightgbm.conf and \
    predict.conf. With LightGBM's command-line program: cd OUT && lightgbm config=lightgbm.conf \
    && lightgbm config=predict.conf"
)]
pub struct LightgbmArgs {
    /// Feature table written by `run` (file, folder, glob or URL).
    #[arg(long, value_name = "URI")]
    pub feature_table: String,
    /// Labelled pairs: query, product_id and label (or clicks/adds/purchases), plus optional
    /// numeric feature columns.
    #[arg(long, value_name = "URI")]
    pub labels: String,
    /// Output folder (local), written under a staging name and renamed when complete.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// query-hash=P% (stable per query text) or random=P% (seeded): share of queries in train.
    #[arg(long, default_value = "query-hash=80%")]
    pub split: String,
    /// Seed of --split random=P%.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Feature columns, comma-separated: engine features of the table, has_prior, or numeric
    /// columns of the labels [default: the engine's features and has_prior].
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub features: Option<Vec<String>>,
    /// Replace an existing non-empty --out folder.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub engine: super::EngineArgs,
}

pub async fn run(command: ExportCommand) -> Result<()> {
    let (args, layout) = match command {
        ExportCommand::Lightgbm(args) => (args, Layout::Lightgbm),
        ExportCommand::Svmlight(args) => (args, Layout::Svmlight),
    };
    {
        {
            let spec = ExportSpec {
                layout,
                feature_table: InputSpec::new(args.feature_table),
                labels: InputSpec::new(args.labels),
                out: args.out,
                split: Split::parse(&args.split, args.seed)?,
                features: args.features,
                force: args.force,
                execution: args.engine.execution()?,
            };
            // Ctrl-C / SIGTERM drops the export, whose staging folder removes itself
            let summary = tokio::select! {
                biased;
                _ = super::signal::shutdown_signal() => return Err(crate::Error::Interrupted),
                summary = lightgbm::export(&spec) => summary?,
            };
            eprintln!("{}", crate::redact::text(&summary.to_string()));
            Ok(())
        }
    }
}
