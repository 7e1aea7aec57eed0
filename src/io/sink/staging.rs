//! The staging object of an atomic write, and what is checked at the destination before a job
//! computes anything.
//!
//! A run stages its output as `_q2q_staging.<machine>.<pid>.<start>.<nanos>.<name>.partial`
//! beside the destination `<name>`: the leading `_` hides it from pyarrow, Spark and Hive, the
//! `.partial` from DataFusion, and the name says whose it is. A run killed while writing (SIGKILL,
//! the OOM killer) leaves that object, or the local store's `<object>#<n>` temp file, behind;
//! [`prepare`] removes those of dead runs before the next write to the same destination:
//!
//! - a run on this machine (same host, boot and PID namespace) whose process is gone: decided by
//!   the process alone, never by age, so a live run's object is never taken;
//! - a run elsewhere (or of an unknown machine), once the object has not changed for
//!   [`STALE_AFTER`]. A live run writes its staging file continuously and renames it within
//!   seconds of completing it; on object stores the object appears once complete, and its
//!   Last-Modified may be the time the upload started, so the limit is a day, not an hour.

use std::path::Path;
use std::time::Duration;

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use crate::error::{Error, Result};
use crate::io::storage::OutputLocation;
use crate::process;

const PREFIX: &str = "_q2q_staging.";
const SUFFIX: &str = ".partial";

/// Staging objects of runs on other machines unchanged for this long are leftovers.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A fresh staging path beside `location`'s destination, unique to this process and moment.
pub fn sibling(location: &OutputLocation) -> ObjectPath {
    let name = location.path.filename().unwrap_or("output");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let pid = std::process::id();
    let start = process::start_ticks(pid).unwrap_or(0);
    let tag = process::machine_tag();
    let staged = format!("{PREFIX}{tag}.{pid}.{start}.{nanos}.{name}{SUFFIX}");
    let parts: Vec<_> = location.path.parts().collect();
    match parts.split_last() {
        Some((_, parents)) => parents
            .iter()
            .cloned()
            .chain([staged.as_str().into()])
            .collect(),
        None => ObjectPath::from(staged),
    }
}

/// The object name of a local store's temp file (`<object>#<n>`), or `file` itself.
fn object_name(file: &str) -> &str {
    match file.rsplit_once('#') {
        Some((object, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => object,
        _ => file,
    }
}

/// The fields between [`PREFIX`] and `.<destination>.partial`, when `file` stages `destination`
/// (as written, or percent-escaped as object_store writes a path part: `~` becomes `%7E`).
fn fields_of<'a>(file: &'a str, destination: &str) -> Option<&'a str> {
    let rest = object_name(file)
        .strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?;
    let escaped = object_store::path::PathPart::from(destination);
    [destination, escaped.as_ref()]
        .into_iter()
        .find_map(|d| rest.strip_suffix(d)?.strip_suffix('.'))
}

/// Whose a staging file name is: `Some((machine, pid, start))` when it stages `destination`
/// (`None` for other names, and for other destinations' staging files).
fn owner_of(file: &str, destination: &str) -> Option<(String, u32, u64)> {
    let mut fields = fields_of(file, destination)?.splitn(4, '.');
    let machine = fields.next()?.to_string();
    let pid = fields.next()?.parse().ok()?;
    let start = fields.next()?.parse().ok()?;
    fields.next()?.parse::<u128>().ok()?;
    Some((machine, pid, start))
}

/// The older name `_q2q_staging.<pid>.<nanos>.<destination>.partial`, exactly.
fn is_legacy(file: &str, destination: &str) -> bool {
    fields_of(file, destination).is_some_and(|fields| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        matches!(fields.split_once('.'), Some((pid, nanos)) if digits(pid) && digits(nanos))
    })
}

/// A staging file of a run that can no longer finish it.
fn is_leftover(file: &str, destination: &str, unchanged_for: Duration) -> bool {
    if !file.starts_with(PREFIX) {
        return false;
    }
    let here = process::machine_tag();
    match owner_of(file, destination) {
        // on this machine the process decides: gone, or a reused pid with another start time
        Some((machine, pid, start)) if !here.is_empty() && machine == here => {
            pid != std::process::id() && process::start_ticks(pid).is_none_or(|now| now != start)
        }
        Some(_) => unchanged_for >= STALE_AFTER,
        None => is_legacy(file, destination) && unchanged_for >= STALE_AFTER,
    }
}

/// A staging folder (`name`, directly below a parts output) of a run that can no longer finish
/// it; `meta` is one of the objects in it.
pub fn is_leftover_folder(name: &str, destination: &str, meta: &object_store::ObjectMeta) -> bool {
    let unchanged_for = (chrono::Utc::now() - meta.last_modified)
        .to_std()
        .unwrap_or_default();
    is_leftover(name, destination, unchanged_for)
}

/// Before a job computes anything: fails (exit 2) when the destination cannot be written, and
/// removes the staging files that dead runs left beside it (see the module documentation).
pub async fn prepare(location: &OutputLocation) -> Result<()> {
    match &location.local_dir {
        Some(dir) => {
            check_local(location, dir)?;
            remove_local_leftovers(location, dir);
            Ok(())
        }
        None => {
            probe_store(location).await?;
            remove_store_leftovers(location).await;
            Ok(())
        }
    }
}

fn not_writable(location: &OutputLocation, why: impl std::fmt::Display) -> Error {
    Error::config(format!(
        "output '{}' cannot be written: {why}",
        location.uri
    ))
}

/// The destination's folder is (or can be created as) a writable folder, and the destination
/// itself is not a folder. Creates nothing that stays.
fn check_local(location: &OutputLocation, dir: &Path) -> Result<()> {
    if let Some(name) = location.path.filename()
        && dir.join(name).is_dir()
    {
        return Err(not_writable(
            location,
            "it is an existing folder (end it with / to write a folder of part files there)",
        ));
    }
    let mut existing = dir;
    while !existing.exists() {
        existing = match existing.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    if !existing.is_dir() {
        return Err(not_writable(
            location,
            format!("{} is a file, not a folder", existing.display()),
        ));
    }
    // a probe under a staging name of this run (removed at once; a leftover is cleaned as one)
    let probe = existing.join(
        sibling(location)
            .filename()
            .unwrap_or("_q2q_staging.partial"),
    );
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(not_writable(
            location,
            format!("cannot create files in {}: {e}", existing.display()),
        )),
    }
}

fn remove_local_leftovers(location: &OutputLocation, dir: &Path) {
    let Some(destination) = location.path.filename() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let unchanged_for = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if is_leftover(&name, destination, unchanged_for) {
            tracing::info!("removing {name}, left by a run that did not finish");
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!("could not remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// Puts and deletes an empty staging object: bad credentials, a missing bucket or a read-only
/// prefix fail here instead of after the job.
async fn probe_store(location: &OutputLocation) -> Result<()> {
    let probe = sibling(location);
    location
        .store
        .put(&probe, Vec::<u8>::new().into())
        .await
        .map_err(|e| not_writable(location, e))?;
    if let Err(e) = location.store.delete(&probe).await {
        tracing::warn!("could not delete the write probe {probe}: {e}");
    }
    Ok(())
}

async fn remove_store_leftovers(location: &OutputLocation) {
    let Some(destination) = location.path.filename() else {
        return;
    };
    let parent: ObjectPath = {
        let parts: Vec<_> = location.path.parts().collect();
        parts[..parts.len().saturating_sub(1)]
            .iter()
            .cloned()
            .collect()
    };
    let listing = match location.store.list_with_delimiter(Some(&parent)).await {
        Ok(listing) => listing,
        Err(e) => {
            tracing::warn!("could not list {parent} for leftover staging objects: {e}");
            return;
        }
    };
    let now = chrono::Utc::now();
    let leftovers: Vec<ObjectPath> = listing
        .objects
        .into_iter()
        .filter(|meta| {
            let unchanged_for = (now - meta.last_modified).to_std().unwrap_or_default();
            meta.location
                .filename()
                .is_some_and(|name| is_leftover(name, destination, unchanged_for))
        })
        .map(|meta| meta.location)
        .collect();
    for path in leftovers {
        tracing::info!("removing {path}, left by a run that did not finish");
        if let Err(e) = location.store.delete(&path).await {
            tracing::warn!("could not remove {path}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_say_whose_they_are() {
        let name = "_q2q_staging.a1b2c3.4242.99.1700000000000000000.f.parquet.partial";
        assert_eq!(
            owner_of(name, "f.parquet"),
            Some(("a1b2c3".to_string(), 4242, 99))
        );
        assert_eq!(
            owner_of(&format!("{name}#3"), "f.parquet"),
            Some(("a1b2c3".to_string(), 4242, 99)),
            "the local store's temp file of it"
        );
        assert_eq!(owner_of(name, "g.parquet"), None, "another destination's");
        assert_eq!(owner_of("part-0.parquet", "f.parquet"), None);
    }

    #[test]
    fn leftovers_of_dead_runs_here_go_at_once_live_ones_never_others_after_a_day() {
        let here = process::machine_tag();
        let dead = format!("_q2q_staging.{here}.{}.1.1.f.parquet.partial", u32::MAX - 1);
        assert!(is_leftover(&dead, "f.parquet", Duration::ZERO) || here.is_empty());
        let pid = std::process::id();
        let start = process::start_ticks(pid).unwrap_or(0);
        let mine = format!("_q2q_staging.{here}.{pid}.{start}.1.f.parquet.partial");
        assert!(!is_leftover(&mine, "f.parquet", STALE_AFTER * 2));
        if !here.is_empty() {
            // a live process here is never taken, however old its file looks
            let parent = std::os::unix::process::parent_id();
            let live = format!(
                "_q2q_staging.{here}.{parent}.{}.1.f.parquet.partial",
                process::start_ticks(parent).unwrap_or(0)
            );
            assert!(!is_leftover(&live, "f.parquet", STALE_AFTER * 2));
        }
        let elsewhere = "_q2q_staging.ffffff.1.1.1.f.parquet.partial";
        assert!(!is_leftover(
            elsewhere,
            "f.parquet",
            Duration::from_secs(3600)
        ));
        assert!(is_leftover(elsewhere, "f.parquet", STALE_AFTER));
        let legacy = "_q2q_staging.77.1700000000.f.parquet.partial";
        assert!(!is_leftover(legacy, "f.parquet", Duration::from_secs(60)));
        assert!(is_leftover(legacy, "f.parquet", STALE_AFTER));
        assert!(!is_leftover("f.parquet", "f.parquet", STALE_AFTER * 2));
        for other in [
            "_q2q_staging.ffffff.1.1.1.g.parquet.partial",
            // other destinations whose names end like this one's
            "_q2q_staging.ffffff.1.1.1.x.f.parquet.partial",
            "_q2q_staging.77.1700000000.x.f.parquet.partial",
        ] {
            assert!(!is_leftover(other, "f.parquet", STALE_AFTER * 2), "{other}");
        }
        // a name object_store escapes is recognised in its escaped form
        let escaped = format!(
            "_q2q_staging.{here}.{}.1.1.f%7Ev2.parquet.partial",
            u32::MAX - 1
        );
        assert!(is_leftover(&escaped, "f~v2.parquet", Duration::ZERO) || here.is_empty());
    }
}
