//! Steps 1, 3 and 4 of the parts protocol (the module above): the client's side, preparing the
//! destination, checking and committing what the writers staged, or discarding it.

use std::fmt;
use std::sync::Arc;

use datafusion::common::DataFusionError;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{STAGED, SUCCESS, WrittenPart, part_name, part_number};
use crate::config::OutputFormat;
use crate::error::{Error, Result};
use crate::io::sink::WriteStats;
use crate::io::storage::Root;

/// The destination folder of a parts output and this run's staging folder in it.
#[derive(Debug, Clone)]
pub struct Staging {
    pub root: Root,
    /// The staging folder, in the root's store.
    pub prefix: ObjectPath,
    /// Its URL, with a trailing slash (what the writers get).
    pub url: String,
    /// The destination did not exist: on failure it is removed again.
    created: bool,
}

/// A staging folder name of this process, now.
fn staging_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let pid = std::process::id();
    let start = crate::process::start_ticks(pid).unwrap_or(0);
    format!(
        "_q2q_staging.{}.{pid}.{start}.{nanos}.{STAGED}.partial",
        crate::process::machine_tag()
    )
}

fn refused(root: &Root, why: impl fmt::Display) -> Error {
    Error::config(format!(
        "output folder '{}' {why}",
        crate::redact::text(&root.uri)
    ))
}

impl Staging {
    /// Step 1 of the protocol: checks the destination, removes dead runs' staging folders and
    /// picks this run's. Writes nothing that stays.
    pub async fn prepare(root: Root) -> Result<Staging> {
        let created = match &root.local {
            Some(dir) if dir.is_file() => return Err(refused(&root, "is a file")),
            Some(dir) => !dir.exists(),
            None => false,
        };
        let listing = root.list().await?;
        let mut leftovers = std::collections::BTreeSet::new();
        for meta in &listing {
            let relative = root.relative(meta);
            let Some(first) = relative.first() else {
                continue;
            };
            if first.starts_with("_q2q_staging.") {
                if crate::io::sink::staging::is_leftover_folder(first, STAGED, meta) {
                    leftovers.insert(first.clone());
                }
                continue;
            }
            let ours = relative.len() == 1 && (first == SUCCESS || part_number(first).is_some());
            if !ours {
                return Err(refused(
                    &root,
                    format!(
                        "holds files that are not the parts of a run (e.g. '{}'): give a new \
                         or empty folder, or one a run wrote",
                        relative.join("/")
                    ),
                ));
            }
        }
        for name in leftovers {
            tracing::info!("removing {name}, left by a run that did not finish");
            remove_folder(&root, &root.path_of(&name)).await;
        }
        let name = staging_name();
        let prefix = root.path_of(&name);
        let url = format!("{}{name}/", root.url);
        // bad credentials, a missing bucket or a read-only folder fail now, not after the job
        let probe = prefix.clone().join("_probe");
        if let Some(dir) = &root.local {
            std::fs::create_dir_all(dir)
                .map_err(|e| refused(&root, format!("cannot be created: {e}")))?;
        }
        root.store
            .put(&probe, Vec::<u8>::new().into())
            .await
            .map_err(|e| refused(&root, format!("cannot be written: {e}")))?;
        let staging = Staging {
            root,
            prefix,
            url,
            created,
        };
        // nothing stays until the writers write: the folders the probe made go too
        staging.discard().await;
        Ok(staging)
    }

    /// Step 3: commits the parts the writers reported, in the order of their partitions (then
    /// names): part i of the folder is the i-th. `expected`: how many there must be, when the
    /// caller knows (locally: the plan's partitions).
    pub async fn commit(
        &self,
        parts: Vec<WrittenPart>,
        expected: Option<usize>,
        format: OutputFormat,
    ) -> Result<WriteStats> {
        let mut parts = checked(&self.root.store, &self.prefix, parts, expected).await?;
        let store = &self.root.store;
        let success = self.root.path_of(SUCCESS);
        match store.delete(&success).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        for (i, part) in parts.iter_mut().enumerate() {
            let staged = self.prefix.clone().join(part.file.as_str());
            part.file = part_name(i, format);
            store
                .rename(&staged, &self.root.path_of(&part.file))
                .await?;
        }
        // the previous run's parts beyond this run's
        for meta in self.root.list().await? {
            let relative = self.root.relative(&meta);
            if let [name] = relative.as_slice()
                && part_number(name).is_some()
                && !parts.iter().any(|p| &p.file == name)
            {
                store.delete(&meta.location).await?;
            }
        }
        let stats = WriteStats::of_parts(parts);
        let listing = serde_json::json!({
            "format": format.to_string(),
            "rows": stats.rows,
            "parts": stats.parts,
        });
        store
            .put(
                &success,
                serde_json::to_vec_pretty(&listing)
                    .map_err(|e| Error::Io(std::io::Error::other(e)))?
                    .into(),
            )
            .await?;
        remove_folder(&self.root, &self.prefix).await;
        Ok(stats)
    }

    /// Step 4: removes what this run staged (and the destination, if this run created it and
    /// it is empty).
    pub async fn discard(&self) {
        remove_folder(&self.root, &self.prefix).await;
        if self.created
            && let Some(dir) = &self.root.local
        {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The parts the writers reported into the staging folder `prefix`, in the order of their
/// partitions (then names), a repeated report row once; each staged file must be there with the
/// size its writer reported. `expected`: how many parts there must be, when the caller knows.
pub async fn checked(
    store: &Arc<dyn ObjectStore>,
    prefix: &ObjectPath,
    mut parts: Vec<WrittenPart>,
    expected: Option<usize>,
) -> Result<Vec<WrittenPart>> {
    parts.sort_by(|a, b| (a.part, &a.file).cmp(&(b.part, &b.file)));
    // a report row repeated is the same file
    parts.dedup();
    if let Some(expected) = expected
        && parts.len() != expected
    {
        return Err(Error::DataFusion(DataFusionError::Internal(format!(
            "{} parts were reported, not {expected}: {parts:?}",
            parts.len()
        ))));
    }
    for part in &parts {
        let staged = prefix.clone().join(part.file.as_str());
        let size = store.head(&staged).await?.size;
        if size != part.bytes {
            return Err(Error::DataFusion(DataFusionError::Internal(format!(
                "staged part {} has {size} bytes, its writer reported {}",
                part.file, part.bytes
            ))));
        }
    }
    Ok(parts)
}

/// Best-effort removal of a folder and everything below it (a local store's temp files too).
async fn remove_folder(root: &Root, prefix: &ObjectPath) {
    if let Some(dir) = &root.local {
        let path = dir.join(prefix.filename().unwrap_or_default());
        if let Err(e) = std::fs::remove_dir_all(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", path.display());
        }
        return;
    }
    let objects: Vec<_> = match root.list_below(prefix).await {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!("could not list {prefix}: {e}");
            return;
        }
    };
    for meta in objects {
        if let Err(e) = root.store.delete(&meta.location).await {
            tracing::warn!("could not remove {}: {e}", meta.location);
        }
    }
}
