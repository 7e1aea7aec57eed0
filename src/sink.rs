//! The last stage, sink: streams a DataFrame into one Parquet or CSV object, atomically.
//!
//! Batches are written to a staging object beside the destination (named `_q2q_staging.*`, which
//! table readers skip) and only a complete file is renamed onto the destination. On the local
//! filesystem the rename is atomic; on object stores it is a server-side copy of a complete object,
//! so readers see either the previous file or the new one, never a partial one. Any failure or
//! interruption deletes the staging object.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt;

use crate::config::OutputFormat;
use crate::error::Result;
use crate::storage::OutputLocation;

/// What was written.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteStats {
    pub rows: u64,
    pub bytes: u64,
}

/// Parquet settings for feature tables: zstd, and row groups large enough for fast scans.
pub fn parquet_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("zstd level 1 is valid"),
        ))
        .set_max_row_group_row_count(Some(1 << 20))
        .build()
}

/// Executes `df` and writes its rows to `location` in `format`; `on_batch` sees each batch first
/// (progress, statistics). Nothing is left at the destination or beside it unless this returns Ok.
pub async fn write_atomic(
    df: DataFrame,
    location: &OutputLocation,
    format: OutputFormat,
    mut on_batch: impl FnMut(&RecordBatch),
) -> Result<WriteStats> {
    let staging = location.staging_sibling();
    let written = write_to(df, location, &staging, format, &mut on_batch).await;
    let result = match written {
        Ok(stats) => location
            .store
            .rename(&staging, &location.path)
            .await
            .map(|_| stats)
            .map_err(Into::into),
        Err(e) => Err(e),
    };
    if result.is_err() {
        discard(location, &staging).await;
    }
    result
}

async fn write_to(
    df: DataFrame,
    location: &OutputLocation,
    staging: &ObjectPath,
    format: OutputFormat,
    on_batch: &mut impl FnMut(&RecordBatch),
) -> Result<WriteStats> {
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df.execute_stream().await?;
    let upload = BufWriter::new(Arc::clone(&location.store), staging.clone());
    let mut stats = WriteStats::default();
    match format {
        OutputFormat::Parquet => {
            let mut writer = AsyncArrowWriter::try_new(upload, schema, Some(parquet_properties()))?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                on_batch(&batch);
                stats.rows += batch.num_rows() as u64;
                writer.write(&batch).await?;
            }
            writer.close().await?;
        }
        OutputFormat::Csv => {
            let mut upload = upload;
            let mut header = true;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                on_batch(&batch);
                stats.rows += batch.num_rows() as u64;
                let mut buffer = Vec::with_capacity(batch.get_array_memory_size());
                CsvWriterBuilder::new()
                    .with_header(header)
                    .build(&mut buffer)
                    .write(&batch)?;
                header = false;
                upload.write_all(&buffer).await?;
            }
            if header {
                // No rows: still a valid CSV with its header.
                let mut buffer = Vec::new();
                CsvWriterBuilder::new()
                    .with_header(true)
                    .build(&mut buffer)
                    .write(&RecordBatch::new_empty(schema))?;
                upload.write_all(&buffer).await?;
            }
            upload.shutdown().await?;
        }
    }
    stats.bytes = location.store.head(staging).await?.size;
    Ok(stats)
}

/// Best-effort removal of a staging object and of any partial upload parts beside it.
pub async fn discard(location: &OutputLocation, staging: &ObjectPath) {
    if let Err(e) = location.store.delete(staging).await
        && !matches!(e, object_store::Error::NotFound { .. })
    {
        tracing::warn!("could not delete staging object {staging}: {e}");
    }
}

/// Removes every staging object this process left beside `location` (after an interruption, when
/// the writer was dropped mid-upload), including local partial-upload files.
pub async fn cleanup_staging(location: &OutputLocation) {
    let prefix = format!("_q2q_staging.{}.", std::process::id());
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
            tracing::warn!("could not list {parent} to clean up staging objects: {e}");
            return;
        }
    };
    for object in listing.objects {
        if object
            .location
            .filename()
            .is_some_and(|name| name.starts_with(&prefix))
        {
            discard(location, &object.location).await;
        }
    }
}
