//! Parquet through DataFusion's own sink (`ParquetSink` with `allow_single_file_parallelism`: each
//! row group's columns encoded as parallel tasks), into one object we name, hashed as it is
//! uploaded. It replaced a hand-written column-parallel writer that was 1.15x slower at 1M queries
//! (docs/BENCHMARKS.md, issue 22).
//!
//! The sink writes to a path of a store it finds in its task's runtime; it gets a runtime of its
//! own holding one store, [`HashedObject`], that sends every write to the real destination and
//! hashes the bytes on their way (parts of a multipart upload are handed over in file order), so a
//! file's SHA-256 costs no second read. An upload the sink drops unfinished (an error, a
//! cancellation) is aborted, and a file it finished after its input failed is deleted.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::TableParquetOptions;
use datafusion::datasource::file_format::parquet::ParquetSink;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileOutputMode, FileSink, FileSinkConfig};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// The one store of the sink's runtime, and the one object it writes there.
const SINK_STORE: &str = "q2q-sink://out";
const SINK_OBJECT: &str = "q2q-sink://out/file.parquet";

/// [`super::parquet_properties`] for DataFusion's sink, with its column-parallel encoding (one row
/// group in flight: two measured slower here, docs/BENCHMARKS.md).
pub fn parquet_options() -> TableParquetOptions {
    let mut options = TableParquetOptions::default();
    options.global.compression = Some(format!("zstd({})", super::PARQUET_ZSTD_LEVEL));
    options.global.max_row_group_size = super::PARQUET_ROW_GROUP_ROWS;
    options.global.allow_single_file_parallelism = true;
    options.global.maximum_parallel_row_group_writers = 1;
    options
}

/// Writes `stream`'s batches as one Parquet object at `path` of `store`; `on_batch` sees each
/// batch first. Returns the rows written and the file's SHA-256 (hex). On an error or a
/// cancellation nothing is left at `path`: an unfinished upload is aborted, a finished one deleted.
pub(super) async fn write(
    mut stream: SendableRecordBatchStream,
    schema: SchemaRef,
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    cancel: &CancellationToken,
    on_batch: &mut impl FnMut(&RecordBatch),
) -> Result<(u64, String)> {
    let object = Arc::new(HashedObject {
        store: Arc::clone(store),
        path: path.clone(),
        hasher: Arc::new(Mutex::new(Sha256::new())),
        uploads: Arc::default(),
    });
    let runtime = RuntimeEnvBuilder::new().build()?;
    runtime.register_object_store(
        ObjectStoreUrl::parse(SINK_STORE)?.as_ref(),
        Arc::clone(&object) as Arc<dyn ObjectStore>,
    );
    let task = Arc::new(TaskContext::default().with_runtime(Arc::new(runtime)));
    let config = FileSinkConfig {
        original_url: SINK_OBJECT.into(),
        object_store_url: ObjectStoreUrl::parse(SINK_STORE)?,
        file_group: FileGroup::default(),
        table_paths: vec![ListingTableUrl::parse(SINK_OBJECT)?],
        output_schema: Arc::clone(&schema),
        table_partition_cols: vec![],
        insert_op: InsertOp::Append,
        keep_partition_by_columns: false,
        file_extension: "parquet".into(),
        file_output_mode: FileOutputMode::SingleFile,
    };
    let sink = ParquetSink::new(config, parquet_options());

    // this task reads the input (progress, cancellation) and hands the batches to the sink's
    let (tx, rx) = tokio::sync::mpsc::channel::<datafusion::error::Result<RecordBatch>>(2);
    let input = RecordBatchStreamAdapter::new(
        schema,
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }),
    );
    let feed = async move {
        let mut rows = 0u64;
        loop {
            match super::next_batch(&mut stream, cancel).await {
                Ok(Some(batch)) => {
                    on_batch(&batch);
                    rows += batch.num_rows() as u64;
                    if tx.send(Ok(batch)).await.is_err() {
                        // the sink stopped: its error says why
                        return Ok(rows);
                    }
                }
                Ok(None) => return Ok(rows),
                Err(e) => {
                    let _ = tx
                        .send(Err(DataFusionError::Execution(format!(
                            "the input of the Parquet writer failed: {e}"
                        ))))
                        .await;
                    return Err(e);
                }
            }
        }
    };
    let (fed, written) = tokio::join!(feed, sink.write_all(Box::pin(input), &task));
    let (rows, sink_rows) = match (fed, written) {
        (Ok(rows), Ok(sink_rows)) => (rows, sink_rows),
        (fed, written) => {
            object.uploads.settle().await;
            // the sink completes the file when its input ends early, even with an error
            match store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!("could not delete the unfinished {path}: {e}"),
            }
            fed?;
            written?;
            unreachable!("one of them failed")
        }
    };
    if sink_rows != rows {
        return Err(Error::DataFusion(DataFusionError::Internal(format!(
            "the Parquet sink wrote {sink_rows} rows of {rows}"
        ))));
    }
    let hasher = std::mem::take(&mut *object.hasher.lock().expect("not poisoned"));
    Ok((rows, crate::hash::hex(&hasher.finalize())))
}

/// A store of one object: every write goes to `path` of `store`, its bytes hashed on the way.
#[derive(Debug)]
struct HashedObject {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    hasher: Arc<Mutex<Sha256>>,
    uploads: Arc<Uploads>,
}

/// The uploads in flight and the aborts of those dropped unfinished, so that a failed write
/// returns only once its upload is gone (a local store's temp file deleted).
#[derive(Debug, Default)]
struct Uploads {
    open: std::sync::atomic::AtomicUsize,
    aborts: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Uploads {
    /// Waits (up to 30 s) for the sink's tasks to drop their uploads, then for the aborts.
    async fn settle(&self) {
        let start = std::time::Instant::now();
        while self.open.load(std::sync::atomic::Ordering::Acquire) > 0
            && start.elapsed() < std::time::Duration::from_secs(30)
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let aborts = std::mem::take(&mut *self.aborts.lock().expect("not poisoned"));
        for abort in aborts {
            let _ = abort.await;
        }
    }
}

impl fmt::Display for HashedObject {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "HashedObject({}, {})", self.store, self.path)
    }
}

fn hash(hasher: &Mutex<Sha256>, payload: &PutPayload) {
    let mut hasher = hasher.lock().expect("not poisoned");
    for chunk in payload.iter() {
        hasher.update(chunk);
    }
}

fn unsupported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("the Parquet sink's store only writes its one object, it cannot {what}")
            .into(),
    }
}

#[async_trait]
impl ObjectStore for HashedObject {
    async fn put_opts(
        &self,
        _location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        hash(&self.hasher, &payload);
        self.store.put_opts(&self.path, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        _location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.store.put_multipart_opts(&self.path, opts).await?;
        self.uploads
            .open
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(Box::new(HashedUpload {
            upload: Some(upload),
            hasher: Arc::clone(&self.hasher),
            uploads: Arc::clone(&self.uploads),
        }))
    }

    async fn get_opts(
        &self,
        _location: &ObjectPath,
        _options: GetOptions,
    ) -> object_store::Result<GetResult> {
        Err(unsupported("read"))
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        use futures::StreamExt;
        locations.map(|_| Err(unsupported("delete"))).boxed()
    }

    fn list(
        &self,
        _prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        Box::pin(futures::stream::once(async { Err(unsupported("list")) }))
    }

    async fn list_with_delimiter(
        &self,
        _prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        Err(unsupported("list"))
    }

    async fn copy_opts(
        &self,
        _from: &ObjectPath,
        _to: &ObjectPath,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(unsupported("copy"))
    }
}

/// A multipart upload whose parts are hashed in the order they are handed over (the file's
/// order), and which is aborted if dropped before it completes.
#[derive(Debug)]
struct HashedUpload {
    upload: Option<Box<dyn MultipartUpload>>,
    hasher: Arc<Mutex<Sha256>>,
    uploads: Arc<Uploads>,
}

#[async_trait]
impl MultipartUpload for HashedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        hash(&self.hasher, &data);
        match &mut self.upload {
            Some(upload) => upload.put_part(data),
            None => Box::pin(async { Err(unsupported("write after completing")) }),
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = match &mut self.upload {
            Some(upload) => upload.complete().await,
            None => return Err(unsupported("complete twice")),
        };
        if result.is_ok() {
            self.upload = None;
        }
        result
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        match self.upload.take() {
            Some(mut upload) => upload.abort().await,
            None => Ok(()),
        }
    }
}

impl Drop for HashedUpload {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let abort = runtime.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!("could not abort an unfinished Parquet upload: {e}");
                }
            });
            self.uploads
                .aborts
                .lock()
                .expect("not poisoned")
                .push(abort);
        }
        self.uploads
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::UInt64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("x", DataType::UInt64, false)]))
    }

    /// `batches` batches of 1M pseudo-random (incompressible) values: 8 MB each, so more than
    /// the sink's 10 MiB buffer goes out as a multipart upload; then `tail`, if any.
    fn input(
        batches: usize,
        tail: Option<DataFusionError>,
    ) -> (SendableRecordBatchStream, Vec<RecordBatch>) {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let made: Vec<RecordBatch> = (0..batches)
            .map(|_| {
                let values: UInt64Array = (0..1_000_000)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state
                    })
                    .collect();
                RecordBatch::try_new(schema(), vec![Arc::new(values)]).unwrap()
            })
            .collect();
        let items: Vec<datafusion::error::Result<RecordBatch>> =
            made.iter().cloned().map(Ok).chain(tail.map(Err)).collect();
        let stream = RecordBatchStreamAdapter::new(schema(), futures::stream::iter(items));
        (Box::pin(stream), made)
    }

    #[tokio::test]
    async fn the_hash_is_the_written_objects_and_the_rows_read_back() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = ObjectPath::from("out/features.parquet");
        let (stream, batches) = input(3, None);
        let mut seen = 0;
        let (rows, sha) = write(
            stream,
            schema(),
            &store,
            &path,
            &CancellationToken::new(),
            &mut |b| seen += b.num_rows(),
        )
        .await
        .unwrap();
        assert_eq!((rows, seen), (3_000_000, 3_000_000));
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert!(
            bytes.len() > 20 << 20,
            "{} bytes: not a multipart upload",
            bytes.len()
        );
        assert_eq!(sha, crate::hash::hex(&Sha256::digest(&bytes)));
        let read: Vec<RecordBatch> =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                bytes,
                1 << 20,
            )
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        let values = |b: &[RecordBatch]| -> Vec<u64> {
            b.iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<UInt64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect()
        };
        assert_eq!(values(&read), values(&batches));
    }

    #[tokio::test]
    async fn a_failing_input_leaves_nothing_in_a_local_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let path = ObjectPath::from("features.parquet");
        let (stream, _) = input(
            3,
            Some(DataFusionError::Execution("the input broke".into())),
        );
        let failed = write(
            stream,
            schema(),
            &store,
            &path,
            &CancellationToken::new(),
            &mut |_| {},
        )
        .await;
        assert!(failed.is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn a_cancelled_write_is_interrupted_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let path = ObjectPath::from("features.parquet");
        let (stream, _) = input(3, None);
        let cancel = CancellationToken::new();
        let mut batches = 0;
        let failed = write(stream, schema(), &store, &path, &cancel, &mut |_| {
            batches += 1;
            if batches == 2 {
                cancel.cancel();
            }
        })
        .await;
        assert!(matches!(failed, Err(Error::Interrupted)), "{failed:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
