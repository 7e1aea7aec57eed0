//! The last stage, sink: streams a DataFrame into one Parquet, CSV or NDJSON object, atomically.
//!
//! Batches are written to a staging object beside the destination (`_q2q_staging.*.partial`, which
//! table readers skip) and only a complete file is renamed onto the destination. On the local
//! filesystem the rename is atomic; on object stores it is a server-side copy of a complete object,
//! so readers see either the previous file or the new one, never a partial one. A failure deletes
//! the staging object; a cancellation also aborts the multipart upload in flight. Parquet goes
//! through DataFusion's own sink, its columns encoded on several cores (`parquet.rs`).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::execution::TaskContext;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::config::OutputFormat;
use crate::error::{Error, Result};
use crate::io::storage::OutputLocation;

pub mod delta;
pub mod folder;
mod parquet;
pub mod parts;
pub mod sha256_writer;
pub mod staging;
pub use parquet::parquet_options;
pub use sha256_writer::Sha256Writer;

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct WriteStats {
    pub rows: u64,
    pub bytes: u64,
    /// SHA-256 of the file's bytes, hex (computed while writing; empty for a Delta table).
    pub sha256: String,
    /// The version a Delta commit created.
    pub delta_version: Option<u64>,
    /// The part files of a folder output (empty for one file).
    pub parts: Vec<parts::WrittenPart>,
}

impl WriteStats {
    /// What a folder of `parts` holds: their rows and bytes summed.
    pub fn of_parts(parts: Vec<parts::WrittenPart>) -> WriteStats {
        WriteStats {
            rows: parts.iter().map(|p| p.rows).sum(),
            bytes: parts.iter().map(|p| p.bytes).sum(),
            parts,
            ..Default::default()
        }
    }
}

/// The zstd level of every Parquet file the engine writes.
const PARQUET_ZSTD_LEVEL: i32 = 1;
/// Rows per Parquet row group: large enough for fast scans.
const PARQUET_ROW_GROUP_ROWS: usize = 1 << 20;

/// Parquet settings for feature tables written by parquet's writers (Delta files, LightGBM's
/// export); [`parquet_options`] is the same for DataFusion's sink.
pub fn parquet_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(PARQUET_ZSTD_LEVEL).expect("a valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS))
        .build()
}

/// Executes `df` and writes its rows to `location` in `format`; `on_batch` sees each batch first
/// (progress, statistics). Nothing is left at the destination or beside it unless this returns Ok.
/// Once the file is complete the rename is not interrupted: a cancellation then arrives too late
/// and the run succeeds.
pub async fn write_atomic(
    df: DataFrame,
    location: &OutputLocation,
    format: OutputFormat,
    cancel: &CancellationToken,
    on_batch: impl FnMut(&RecordBatch),
) -> Result<WriteStats> {
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    write_plan_atomic(plan, task, location, format, cancel, on_batch).await
}

/// [`write_atomic`] for a physical plan already made (e.g. to read its metrics afterwards).
pub async fn write_plan_atomic(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    location: &OutputLocation,
    format: OutputFormat,
    cancel: &CancellationToken,
    on_batch: impl FnMut(&RecordBatch),
) -> Result<WriteStats> {
    let stream = execute_stream(plan, task)?;
    write_stream_atomic(stream, location, format, cancel, on_batch).await
}

/// [`write_atomic`] for a stream of batches (rows made outside a plan, e.g. by `synth`): staged
/// beside `location` and renamed into place when complete; an error in the stream, or a
/// cancellation, leaves nothing.
pub async fn write_stream_atomic(
    stream: datafusion::execution::SendableRecordBatchStream,
    location: &OutputLocation,
    format: OutputFormat,
    cancel: &CancellationToken,
    mut on_batch: impl FnMut(&RecordBatch),
) -> Result<WriteStats> {
    if format == OutputFormat::Delta {
        return Err(Error::config(
            "a Delta table is a folder, not a file: write it with `run` or `backfill`",
        ));
    }
    let created_dirs = match &location.local_dir {
        Some(dir) => create_missing_dirs(dir)?,
        None => Vec::new(),
    };
    let staging = staging::sibling(location);
    let schema = stream.schema();
    let mut result = write_stream(
        stream,
        schema,
        &location.store,
        &staging,
        format,
        cancel,
        &mut on_batch,
    )
    .await;
    if let Ok(stats) = result {
        result = location
            .store
            .rename(&staging, &location.path)
            .await
            .map(|_| stats)
            .map_err(Into::into);
    }
    if result.is_err() {
        discard(location, &staging).await;
        // deepest first; only succeeds when empty: never removes anything but what this run created
        for dir in created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

/// Creates `dir` and its missing ancestors; returns those it created, outermost first.
fn create_missing_dirs(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let missing: Vec<std::path::PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.exists())
        .map(std::path::Path::to_path_buf)
        .collect();
    let mut created = Vec::with_capacity(missing.len());
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(&d) {
            Ok(()) => created.push(d),
            // a concurrent run made it: not ours to remove
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                for d in created.iter().rev() {
                    let _ = std::fs::remove_dir(d);
                }
                return Err(Error::config(format!(
                    "cannot create output folder {}: {e}",
                    d.display()
                )));
            }
        }
    }
    Ok(created)
}

/// The next batch of the stream, or `None` at its end; `Err(Interrupted)` once cancelled.
async fn next_batch(
    stream: &mut datafusion::execution::SendableRecordBatchStream,
    cancel: &CancellationToken,
) -> Result<Option<RecordBatch>> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Interrupted),
        batch = stream.next() => Ok(batch.transpose()?),
    }
}

/// Writes `stream`'s batches as one object at `path` of `store` in `format` (Parquet, CSV or
/// NDJSON), complete or not at all: an error or a cancellation aborts the upload.
pub async fn write_stream(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    schema: datafusion::arrow::datatypes::SchemaRef,
    store: &Arc<dyn object_store::ObjectStore>,
    path: &ObjectPath,
    format: OutputFormat,
    cancel: &CancellationToken,
    on_batch: &mut impl FnMut(&RecordBatch),
) -> Result<WriteStats> {
    let mut stats = WriteStats::default();
    match format {
        OutputFormat::Parquet => {
            (stats.rows, stats.sha256) =
                parquet::write(stream, schema, store, path, cancel, on_batch).await?;
        }
        OutputFormat::Csv | OutputFormat::Json | OutputFormat::Delta => {
            let mut upload = Sha256Writer::new(BufWriter::new(Arc::clone(store), path.clone()));
            let mut header = true;
            loop {
                let batch = match next_batch(&mut stream, cancel).await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(e) => {
                        abort(upload).await;
                        return Err(e);
                    }
                };
                on_batch(&batch);
                stats.rows += batch.num_rows() as u64;
                let bytes = match format {
                    OutputFormat::Json => ndjson_bytes(&batch)?,
                    _ => csv_bytes(&batch, header)?,
                };
                upload.write_all(&bytes).await?;
                header = false;
            }
            if header && format == OutputFormat::Csv {
                // No rows: still a valid CSV with its header.
                upload
                    .write_all(&csv_bytes(&RecordBatch::new_empty(schema), true)?)
                    .await?;
            }
            upload.shutdown().await?;
            stats.sha256 = upload.finish();
        }
    }
    stats.bytes = store.head(path).await?.size;
    Ok(stats)
}

fn csv_bytes(batch: &RecordBatch, header: bool) -> Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(batch.get_array_memory_size());
    CsvWriterBuilder::new()
        .with_header(header)
        .build(&mut buffer)
        .write(batch)?;
    Ok(buffer)
}

/// One JSON object per row and line; NULLs are written as `null` rather than left out.
pub fn ndjson_bytes(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(batch.get_array_memory_size());
    let mut writer = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut buffer);
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(buffer)
}

/// Aborts an upload in flight (a multipart upload on object stores, a temp file locally).
async fn abort(upload: Sha256Writer<BufWriter>) {
    let mut upload = upload.into_inner();
    if let Err(e) = upload.abort().await {
        tracing::warn!("could not abort the staging upload: {e}");
    }
}

/// Best-effort removal of a staging object.
pub async fn discard(location: &OutputLocation, staging: &ObjectPath) {
    if let Err(e) = location.store.delete(staging).await
        && !matches!(e, object_store::Error::NotFound { .. })
    {
        tracing::warn!("could not delete staging object {staging}: {e}");
    }
}
