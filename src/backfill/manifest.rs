//! A published partition's `_manifest.json`, the hash of the configuration that built it, and
//! what a partition's folder says about its state (missing, incomplete, damaged, stale, current).

use chrono::NaiveDate;
use object_store::ObjectMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{BackfillConfig, Blend, FeatureParams, JobConfig, OutputFormat};
use crate::hash::hex;

pub const MANIFEST: &str = "_manifest.json";
pub const SUCCESS: &str = "_SUCCESS";
pub const FORMAT: &str = "q2q-prior/backfill-partition/1";

/// One data file of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the partition folder.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `_manifest.json`: what a partition holds and what it was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub partition: String,
    pub date: NaiveDate,
    pub row_count: u64,
    pub files: Vec<ManifestFile>,
    #[serde(flatten)]
    pub build: Build,
}

/// What a day was built from and by whom: the part of a partition's record both layouts keep
/// (the Parquet folder's `_manifest.json`, a Delta commit's `commitInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// Hash of every setting that changes the rows ([`config_hash`]).
    pub config_hash: String,
    /// Hash of the input files the day read ([`super::layout::fingerprint`]).
    pub input_fingerprint: String,
    pub engagement_window: [NaiveDate; 2],
    pub engagement_days: usize,
    pub engagement_files: usize,
    /// The neighbour lists read: a snapshot folder or a fixed path.
    pub neighbours: String,
    pub engine_version: String,
    pub run_id: String,
    /// RFC 3339, UTC.
    pub created_timestamp: String,
}

/// The format of a Delta commit's day record.
pub const DELTA_FORMAT: &str = "q2q-prior/backfill-delta-day/1";

/// A backfill commit's record of the day it replaced, in the commit's `commitInfo` (key
/// [`crate::io::sink::delta::COMMIT_INFO_KEY`]); its row count is the commit's own
/// `operationMetrics.num_added_rows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayRecord {
    pub format: String,
    pub partition: String,
    pub date: NaiveDate,
    #[serde(flatten)]
    pub build: Build,
}

/// The settings that decide a partition's rows, hashed: formula parameters, normalization,
/// output format, window, snapshot choice, sorting and the output columns. Execution settings
/// (memory, parallelism, plan, join algorithm) change how, not what, and are left out.
pub fn config_hash(config: &JobConfig, features: &FeatureParams) -> String {
    #[derive(Serialize)]
    struct Semantics<'a> {
        layout: &'a str,
        features: Features<'a>,
        engagement_normalize: bool,
        neighbours_normalize: bool,
        format: OutputFormat,
        backfill: (&'a u32, &'a str, crate::config::SnapshotMode),
        sort_output: bool,
    }
    let BackfillConfig {
        window_days,
        date_partition,
        neighbours_snapshot,
        ..
    } = &config.backfill;
    let semantics = Semantics {
        layout: FORMAT,
        features: Features::of(features),
        engagement_normalize: config.engagement.as_ref().is_some_and(|s| s.normalize),
        neighbours_normalize: config.neighbours.as_ref().is_some_and(|s| s.normalize),
        format: config.output_format().unwrap_or_default(),
        backfill: (window_days, date_partition, *neighbours_snapshot),
        sort_output: config.execution.sort_output,
    };
    let json = serde_json::to_vec(&semantics).expect("plain data serializes");
    format!("sha256:{}", hex(&Sha256::digest(&json)))
}

/// [`FeatureParams`] as hashed: every field, in the order they had before `blend` existed, and
/// the blend with its `pseudo_impressions` only when it is not the paper's (which reads neither),
/// so partitions built before the blend existed stay current. Destructured without `..`: a new
/// parameter does not compile until it is hashed here too.
#[derive(Serialize)]
struct Features<'a> {
    top_k: &'a u32,
    min_score: &'a f64,
    gamma: &'a f64,
    beta: &'a f64,
    click_weight: &'a f64,
    add_weight: &'a f64,
    purchase_weight: &'a f64,
    smoothing: &'a f64,
    prior_weighting: &'a crate::config::PriorWeighting,
    on_duplicate: &'a crate::config::DuplicatePolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    blend: Option<(&'a Blend, &'a f64)>,
}

impl<'a> Features<'a> {
    fn of(features: &'a FeatureParams) -> Self {
        let FeatureParams {
            top_k,
            min_score,
            gamma,
            beta,
            click_weight,
            add_weight,
            purchase_weight,
            smoothing,
            prior_weighting,
            blend,
            pseudo_impressions,
            on_duplicate,
        } = features;
        Features {
            top_k,
            min_score,
            gamma,
            beta,
            click_weight,
            add_weight,
            purchase_weight,
            smoothing,
            prior_weighting,
            on_duplicate,
            blend: (*blend != Blend::Paper).then_some((blend, pseudo_impressions)),
        }
    }
}

/// A partition folder as found.
#[derive(Debug, Clone, PartialEq)]
pub enum PartitionState {
    /// No files at all.
    Missing,
    /// Data without `_SUCCESS` or without a readable manifest: a build that did not finish.
    Incomplete(String),
    /// Complete by its markers, but its files do not match its manifest.
    Damaged(String),
    /// Complete and intact; built from other settings or inputs.
    Stale(String),
    Current,
}

impl PartitionState {
    /// Judges a partition from its listing and manifest text against what it should be built from.
    pub fn judge(
        files: &[(String, ObjectMeta)],
        manifest: Option<&[u8]>,
        config_hash: &str,
        input_fingerprint: &str,
    ) -> PartitionState {
        if files.is_empty() {
            return PartitionState::Missing;
        }
        let has = |name: &str| files.iter().any(|(n, _)| n == name);
        if !has(SUCCESS) {
            return PartitionState::Incomplete("no _SUCCESS".into());
        }
        let Some(text) = manifest else {
            return PartitionState::Incomplete("no _manifest.json".into());
        };
        let manifest: Manifest = match serde_json::from_slice(text) {
            Ok(m) => m,
            Err(e) => return PartitionState::Incomplete(format!("unreadable _manifest.json: {e}")),
        };
        for listed in &manifest.files {
            match files.iter().find(|(n, _)| *n == listed.path) {
                None => return PartitionState::Damaged(format!("{} is missing", listed.path)),
                Some((_, meta)) if meta.size != listed.size => {
                    return PartitionState::Damaged(format!(
                        "{} has {} bytes, the manifest says {}",
                        listed.path, meta.size, listed.size
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some((extra, _)) = files.iter().find(|(n, _)| {
            !super::layout::is_hidden(n) && !manifest.files.iter().any(|f| f.path == *n)
        }) {
            return PartitionState::Damaged(format!("{extra} is not in the manifest"));
        }
        PartitionState::of_build(&manifest.build, config_hash, input_fingerprint)
    }

    /// A day of a Delta table, from the rows the table holds for it (`None`: no file) and the
    /// newest backfill commit that replaced it (its record and the rows it added).
    pub fn judge_delta(
        rows: Option<u64>,
        built: Option<(&DayRecord, u64)>,
        config_hash: &str,
        input_fingerprint: &str,
    ) -> PartitionState {
        match (rows, built) {
            (None, None) => PartitionState::Missing,
            (Some(_), None) => PartitionState::Incomplete(
                "its rows have no q2q-prior build record in the Delta log".into(),
            ),
            (rows, Some((_, added))) if rows.unwrap_or(0) != added => {
                PartitionState::Damaged(format!(
                    "the table holds {} rows for it, its build added {added}",
                    rows.unwrap_or(0)
                ))
            }
            (_, Some((record, _))) => {
                PartitionState::of_build(&record.build, config_hash, input_fingerprint)
            }
        }
    }

    fn of_build(build: &Build, config_hash: &str, input_fingerprint: &str) -> PartitionState {
        if build.config_hash != config_hash {
            return PartitionState::Stale("config changed".into());
        }
        if build.input_fingerprint != input_fingerprint {
            return PartitionState::Stale("inputs changed".into());
        }
        PartitionState::Current
    }

    /// Why it must be (re)built, or `None` when it is current.
    pub fn reason(&self) -> Option<String> {
        match self {
            PartitionState::Missing => Some("missing".into()),
            PartitionState::Incomplete(why) => Some(format!("incomplete ({why})")),
            PartitionState::Damaged(why) => Some(format!("damaged ({why})")),
            PartitionState::Stale(why) => Some(format!("stale ({why})")),
            PartitionState::Current => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path as ObjectPath;

    fn meta(name: &str, size: u64) -> (String, ObjectMeta) {
        (
            name.to_string(),
            ObjectMeta {
                location: ObjectPath::from(format!("out/dt=2026-01-02/{name}")),
                last_modified: chrono::DateTime::UNIX_EPOCH,
                size,
                e_tag: None,
                version: None,
            },
        )
    }

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            partition: "dt=2026-01-02".into(),
            date: NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
            row_count: 10,
            files: vec![ManifestFile {
                path: "part-00000.parquet".into(),
                size: 100,
                sha256: "ab".into(),
            }],
            build: build(),
        }
    }

    fn build() -> Build {
        Build {
            config_hash: "c".into(),
            input_fingerprint: "i".into(),
            engagement_window: [NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(); 2],
            engagement_days: 1,
            engagement_files: 1,
            neighbours: "n".into(),
            engine_version: "0".into(),
            run_id: "r".into(),
            created_timestamp: "t".into(),
        }
    }

    #[test]
    fn delta_days_from_their_rows_and_last_build() {
        let record = DayRecord {
            format: DELTA_FORMAT.into(),
            partition: "dt=2026-01-02".into(),
            date: NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
            build: build(),
        };
        let judge = |rows, built, c, i| PartitionState::judge_delta(rows, built, c, i).reason();
        assert_eq!(judge(None, None, "c", "i").unwrap(), "missing");
        assert!(
            judge(Some(5), None, "c", "i")
                .unwrap()
                .contains("no q2q-prior build record")
        );
        assert_eq!(judge(Some(5), Some((&record, 5)), "c", "i"), None);
        assert_eq!(
            judge(None, Some((&record, 0)), "c", "i"),
            None,
            "an empty day"
        );
        assert!(
            judge(Some(4), Some((&record, 5)), "c", "i")
                .unwrap()
                .contains("holds 4 rows for it, its build added 5")
        );
        assert_eq!(
            judge(Some(5), Some((&record, 5)), "other", "i").unwrap(),
            "stale (config changed)"
        );
        assert_eq!(
            judge(Some(5), Some((&record, 5)), "c", "other").unwrap(),
            "stale (inputs changed)"
        );
        let text = serde_json::to_value(&record).unwrap();
        assert_eq!(
            text["config_hash"], "c",
            "the build's fields sit beside the day's"
        );
        assert_eq!(serde_json::from_value::<DayRecord>(text).unwrap(), record);
    }

    #[test]
    fn the_blend_is_hashed_unless_it_is_the_papers() {
        let config = JobConfig::default();
        let hash = |f: &FeatureParams| config_hash(&config, f);
        let paper = FeatureParams::default();
        // the hash of the defaults computed by commit 905da49, before `blend` existed
        assert_eq!(
            hash(&paper),
            "sha256:2ce9d59f4d008f32e62c782c2ec47773848a5e2aeafa57db719d677de90097ea",
            "partitions built before the blend existed stay current"
        );
        let other_m = FeatureParams {
            pseudo_impressions: 50.0,
            ..paper.clone()
        };
        assert_eq!(hash(&paper), hash(&other_m), "the paper's blend reads no m");
        let bayes = FeatureParams {
            blend: Blend::Bayes,
            ..paper.clone()
        };
        let bayes_50 = FeatureParams {
            pseudo_impressions: 50.0,
            ..bayes.clone()
        };
        assert_ne!(hash(&bayes), hash(&paper));
        assert_ne!(hash(&bayes), hash(&bayes_50));
    }

    #[test]
    fn states_from_listing_and_manifest() {
        let text = serde_json::to_vec(&manifest()).unwrap();
        let judge = |files: &[(String, ObjectMeta)], m: Option<&[u8]>| {
            PartitionState::judge(files, m, "c", "i").reason()
        };
        assert_eq!(judge(&[], None).unwrap(), "missing");
        let data = meta("part-00000.parquet", 100);
        let success = meta(SUCCESS, 0);
        let man = meta(MANIFEST, 10);
        assert!(
            judge(std::slice::from_ref(&data), None)
                .unwrap()
                .contains("no _SUCCESS")
        );
        assert!(
            judge(&[data.clone(), success.clone()], None)
                .unwrap()
                .contains("no _manifest")
        );
        let all = [data.clone(), success.clone(), man.clone()];
        assert_eq!(judge(&all, Some(&text)), None);
        assert!(judge(&all, Some(b"{")).unwrap().contains("unreadable"));
        let short = [meta("part-00000.parquet", 99), success.clone(), man.clone()];
        assert!(judge(&short, Some(&text)).unwrap().contains("99 bytes"));
        let extra = [
            data.clone(),
            meta("part-00001.parquet", 5),
            success.clone(),
            man.clone(),
        ];
        assert!(judge(&extra, Some(&text)).unwrap().contains("part-00001"));
        assert_eq!(
            PartitionState::judge(&all, Some(&text), "other", "i").reason(),
            Some("stale (config changed)".into())
        );
        assert_eq!(
            PartitionState::judge(&all, Some(&text), "c", "other").reason(),
            Some("stale (inputs changed)".into())
        );
        // staging leftovers are hidden: they do not damage a complete partition
        let leftover = [
            data,
            meta("_q2q_staging.1.2.part-00000.parquet.partial", 7),
            success,
            man,
        ];
        assert_eq!(judge(&leftover, Some(&text)), None);
    }
}
