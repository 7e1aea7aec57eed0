//! A local folder written whole or not at all (`export lightgbm`'s training folder): built under
//! a staging name beside the destination, then renamed onto it; a previous folder is replaced
//! only once the new one is complete, and a failure (or a dropped future) removes the staging
//! folder.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A folder being built beside `out`: deleted when dropped unless published.
pub struct StagedFolder {
    staging: Option<PathBuf>,
    out: PathBuf,
}

impl StagedFolder {
    /// Creates the staging folder beside `out` (and `out`'s parent folders if missing).
    pub fn create(out: &Path) -> Result<StagedFolder> {
        Ok(StagedFolder {
            staging: Some(staging_dir(out)?),
            out: out.to_path_buf(),
        })
    }

    /// Where to write the folder's files.
    pub fn path(&self) -> &Path {
        self.staging.as_deref().expect("not yet published")
    }

    /// Moves the complete folder onto the destination.
    pub fn publish(mut self) -> Result<()> {
        let dir = self.staging.take().expect("not yet published");
        let published = publish(&dir, &self.out);
        if published.is_err() {
            self.staging = Some(dir);
        }
        published
    }
}

impl Drop for StagedFolder {
    fn drop(&mut self) {
        if let Some(dir) = self.staging.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Refuses to replace a non-empty folder unless `force`, and anything but a folder of its own.
pub fn check_replaceable(out: &Path, force: bool) -> Result<()> {
    if out.file_name().is_none() || out == Path::new(".") {
        return Err(Error::config(format!(
            "--out {}: name a folder of its own (it is replaced as a whole), e.g. lgb/",
            out.display()
        )));
    }
    if out.is_file() {
        return Err(Error::config(format!(
            "--out {} is a file; it must be a folder (created if missing)",
            out.display()
        )));
    }
    let non_empty = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if non_empty && !force {
        return Err(Error::config(format!(
            "--out {} exists and is not empty; use --force to replace it",
            out.display()
        )));
    }
    Ok(())
}

fn staging_dir(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = parent.join(format!(
        "_q2q_staging.{}.{nanos}.{name}.partial",
        std::process::id()
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// Moves the complete staging folder onto `out` (replacing what `check_destination` allowed).
fn publish(staging: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = staging.with_extension("old");
        std::fs::rename(out, &old)?;
        if let Err(e) = std::fs::rename(staging, out) {
            let _ = std::fs::rename(&old, out);
            return Err(e.into());
        }
        if let Err(e) = std::fs::remove_dir_all(&old) {
            // the new folder is in place; the old one is only garbage now
            tracing::warn!(
                "could not remove the replaced folder {}: {e}",
                old.display()
            );
        }
    } else {
        std::fs::rename(staging, out)?;
    }
    Ok(())
}
