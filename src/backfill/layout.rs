//! Where a backfill's data is: the date folders (`dt=YYYY-MM-DD/`) of the inputs and of the
//! output, the engagement window and neighbour snapshot of a day, and fingerprints of what a day
//! reads.

use std::collections::BTreeMap;

use chrono::{Days, NaiveDate};
use object_store::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::hash::hex;

pub use crate::io::storage::Root;

/// The local filesystem store writes every object to `<name>#<n>` first and renames it when
/// complete; a process killed meanwhile leaves that file, which listings do not show. Returns
/// those below `relative` (a local root only) that are at least `min_age` old.
pub fn local_temp_files(
    root: &Root,
    relative: &str,
    min_age: std::time::Duration,
) -> Vec<std::path::PathBuf> {
    let Some(base) = &root.local else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(base.join(relative)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let is_temp = name
                .rsplit_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            is_temp && age >= min_age
        })
        .map(|e| e.path())
        .collect()
}

/// A file name that readers skip (`_SUCCESS`, `_manifest.json`, staging files, `.crc`).
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('.')
}

/// The data files of a dataset grouped by their `key=YYYY-MM-DD` folder, directly below the root.
/// Files elsewhere, hidden files, and folders below hidden folders are ignored.
#[derive(Debug, Clone, Default)]
pub struct DatedFiles {
    pub by_day: BTreeMap<NaiveDate, Vec<ObjectMeta>>,
    /// Files below the root that are not in a date folder (a dataset without date folders).
    pub undated: Vec<ObjectMeta>,
}

impl DatedFiles {
    pub async fn list(root: &Root, key: &str) -> Result<DatedFiles> {
        let mut found = DatedFiles::default();
        for meta in root.list().await? {
            let parts = root.relative(&meta);
            if parts.iter().any(|p| is_hidden(p)) {
                continue;
            }
            match parts.first().and_then(|first| parse_day(key, first)) {
                Some(day) if parts.len() > 1 => found.by_day.entry(day).or_default().push(meta),
                _ => found.undated.push(meta),
            }
        }
        Ok(found)
    }
}

/// `dt=2026-01-31` -> 2026-01-31 for key `dt`.
pub fn parse_day(key: &str, folder: &str) -> Option<NaiveDate> {
    let value = folder.strip_prefix(key)?.strip_prefix('=')?;
    NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()
}

pub fn folder(key: &str, day: NaiveDate) -> String {
    format!("{key}={}", day.format("%Y-%m-%d"))
}

/// The engagement days day `day` reads: the `window_days` days ending the day before.
pub fn window(day: NaiveDate, window_days: u32) -> (NaiveDate, NaiveDate) {
    let last = day - Days::new(1);
    let first = day - Days::new(u64::from(window_days));
    (first, last)
}

/// Every day from `from` to `to`, inclusive.
pub fn days(from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
    from.iter_days().take_while(|d| *d <= to).collect()
}

/// SHA-256 over the location, size and version (ETag, else modification time) of each file, in
/// location order: changes whenever a file a day reads is added, removed or rewritten.
pub fn fingerprint<'a>(files: impl IntoIterator<Item = &'a ObjectMeta>) -> String {
    let mut lines: Vec<String> = files
        .into_iter()
        .map(|m| {
            let version = m
                .e_tag
                .clone()
                .unwrap_or_else(|| m.last_modified.to_rfc3339());
            format!("{}\t{}\t{}", m.location, m.size, version)
        })
        .collect();
    lines.sort();
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// The dataset must have date folders for a backfill to find days in it.
pub fn require_days(role: &str, root: &Root, files: &DatedFiles, key: &str) -> Result<()> {
    if files.by_day.is_empty() {
        return Err(Error::config(format!(
            "backfill reads {role} by day: expected folders {}/{key}=YYYY-MM-DD/ with data files, found {}",
            root.uri,
            if files.undated.is_empty() {
                "no files".to_string()
            } else {
                format!(
                    "{} file(s) outside date folders (e.g. {})",
                    files.undated.len(),
                    files.undated[0].location
                )
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_end_the_day_before() {
        let d = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let (first, last) = window(d, 365);
        assert_eq!(last, NaiveDate::from_ymd_opt(2025, 12, 31).unwrap());
        assert_eq!(first, NaiveDate::from_ymd_opt(2025, 1, 1).unwrap());
        assert_eq!(days(first, last).len(), 365);
        let (first, last) = window(d, 1);
        assert_eq!(first, last);
    }

    #[test]
    fn date_folders() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 9).unwrap();
        assert_eq!(folder("dt", d), "dt=2026-03-09");
        assert_eq!(parse_day("dt", "dt=2026-03-09"), Some(d));
        assert_eq!(parse_day("dt", "ds=2026-03-09"), None);
        assert_eq!(parse_day("dt", "dt=yesterday"), None);
        assert!(is_hidden("_SUCCESS") && is_hidden(".part.crc") && !is_hidden("part-0.parquet"));
    }
}
