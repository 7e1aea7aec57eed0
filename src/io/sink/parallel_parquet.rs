//! Parquet encoding on several cores: one encoder thread per column.
//!
//! The feature job produces rows faster than one core can encode them (at 1M queries the merge
//! operator waited for the writer 40 s of 87 s). Parquet encodes each column chunk independently,
//! so every column gets its own thread with its own `ArrowColumnWriter`; the caller's task only
//! slices batches at row-group boundaries, hands each column to its thread, and appends the
//! finished chunks to the file in column order. The bytes are those the single-threaded
//! `ArrowWriter` writes with the same properties (a test checks it): same pages, same row groups,
//! same footer.

use std::mem;
use std::sync::Arc;
use std::thread::JoinHandle;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use datafusion::parquet::errors::{ParquetError, Result};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::parquet::file::writer::SerializedFileWriter;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Batches queued per column thread before the caller waits.
const QUEUE: usize = 4;

enum Work {
    /// The column writer of a new row group.
    Start(Box<ArrowColumnWriter>),
    Write(ArrowLeafColumn),
    /// Close the row group's chunk and send it back.
    Finish,
}

struct ColumnThread {
    work: mpsc::Sender<Work>,
    chunks: mpsc::UnboundedReceiver<Result<ArrowColumnChunk>>,
    handle: JoinHandle<()>,
}

impl ColumnThread {
    fn spawn(index: usize) -> std::io::Result<Self> {
        let (work, mut inbox) = mpsc::channel::<Work>(QUEUE);
        // unbounded: a thread never waits for the caller to take a chunk (the caller may itself be
        // waiting for room in that thread's queue); the caller feeds all threads in step, so at
        // most a couple of row groups' chunks are ever in flight
        let (done, chunks) = mpsc::unbounded_channel();
        let handle = std::thread::Builder::new()
            .name(format!("q2q-parquet-{index}"))
            .spawn(move || {
                let mut writer: Option<ArrowColumnWriter> = None;
                let mut failed: Option<ParquetError> = None;
                while let Some(work) = inbox.blocking_recv() {
                    match work {
                        Work::Start(w) => writer = Some(*w),
                        Work::Write(leaf) => {
                            if failed.is_none()
                                && let Some(w) = writer.as_mut()
                                && let Err(e) = w.write(&leaf)
                            {
                                failed = Some(e);
                            }
                        }
                        Work::Finish => {
                            let chunk = match (failed.take(), writer.take()) {
                                (Some(e), _) => Err(e),
                                (None, Some(w)) => w.close(),
                                (None, None) => Err(ParquetError::General(
                                    "column chunk finished before it started".into(),
                                )),
                            };
                            if done.send(chunk).is_err() {
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            work,
            chunks,
            handle,
        })
    }
}

/// A Parquet file written to `out`, its columns encoded in parallel.
pub struct ParallelParquetWriter<W> {
    out: W,
    file: SerializedFileWriter<Vec<u8>>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    columns: Vec<ColumnThread>,
    max_rows: usize,
    /// Rows in the row group being fed to the threads (0: none started).
    group_rows: usize,
    /// Row groups started so far.
    groups: usize,
    /// Row groups whose columns are finishing; appended to the file in order, without making the
    /// caller wait for the slowest column before feeding the next group.
    pending: usize,
    /// Chunks of the oldest pending group received so far, by column.
    received: Vec<Option<ArrowColumnChunk>>,
}

impl<W: AsyncWrite + Unpin + Send> ParallelParquetWriter<W> {
    pub fn try_new(out: W, schema: SchemaRef, props: WriterProperties) -> Result<Self> {
        let max_rows = props.max_row_group_row_count().unwrap_or(usize::MAX).max(1);
        // ArrowWriter adds the Arrow schema to the footer's metadata, as readers expect.
        let (file, factory) = ArrowWriter::try_new(Vec::new(), Arc::clone(&schema), Some(props))?
            .into_serialized_writer()?;
        let leaves = file.schema_descr().num_columns();
        let columns = (0..leaves)
            .map(ColumnThread::spawn)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok(Self {
            out,
            file,
            factory,
            schema,
            received: (0..columns.len()).map(|_| None).collect(),
            columns,
            max_rows,
            group_rows: 0,
            groups: 0,
            pending: 0,
        })
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let n = (batch.num_rows() - offset).min(self.max_rows - self.group_rows);
            self.write_slice(&batch.slice(offset, n)).await?;
            offset += n;
            if self.group_rows == self.max_rows {
                self.finish_group().await?;
            }
        }
        self.append_finished(false).await
    }

    async fn write_slice(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.group_rows == 0 {
            let writers = self.factory.create_column_writers(self.groups)?;
            for (thread, writer) in self.columns.iter().zip(writers) {
                send(thread, Work::Start(Box::new(writer))).await?;
            }
            self.groups += 1;
        }
        let mut threads = self.columns.iter();
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            for leaf in compute_leaves(field, array)? {
                let thread = threads
                    .next()
                    .ok_or_else(|| ParquetError::General("more leaves than columns".into()))?;
                send(thread, Work::Write(leaf)).await?;
            }
        }
        self.group_rows += batch.num_rows();
        Ok(())
    }

    /// Asks every column thread to close its chunk of the row group being fed.
    async fn finish_group(&mut self) -> Result<()> {
        for thread in &self.columns {
            send(thread, Work::Finish).await?;
        }
        self.group_rows = 0;
        self.pending += 1;
        Ok(())
    }

    /// Appends the pending row groups whose chunks are all done to the file, oldest first, and
    /// writes their bytes to `out`. With `wait`, waits for all of them.
    async fn append_finished(&mut self, wait: bool) -> Result<()> {
        while self.pending > 0 {
            for (thread, slot) in self.columns.iter_mut().zip(&mut self.received) {
                if slot.is_some() {
                    continue;
                }
                let chunk = if wait {
                    thread.chunks.recv().await.ok_or_else(stopped)?
                } else {
                    match thread.chunks.try_recv() {
                        Ok(chunk) => chunk,
                        Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                        Err(mpsc::error::TryRecvError::Disconnected) => return Err(stopped()),
                    }
                };
                *slot = Some(chunk?);
            }
            let mut group = self.file.next_row_group()?;
            for slot in &mut self.received {
                if let Some(chunk) = slot.take() {
                    chunk.append_to_row_group(&mut group)?;
                }
            }
            group.close()?;
            self.pending -= 1;
            self.drain().await?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<()> {
        let bytes = mem::take(self.file.inner_mut());
        self.out
            .write_all(&bytes)
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))
    }

    /// Writes the last row group and the footer, shuts `out` down (completing an upload) and
    /// gives it back.
    pub async fn close(mut self) -> Result<W> {
        if self.group_rows > 0 {
            self.finish_group().await?;
        }
        self.append_finished(true).await?;
        self.file.finish()?;
        self.drain().await?;
        self.out
            .shutdown()
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        for thread in mem::take(&mut self.columns) {
            drop(thread.work);
            let _ = thread.handle.join();
        }
        Ok(self.out)
    }

    /// Gives `out` back without finishing the file (to abort an upload); the threads stop.
    pub fn into_inner(self) -> W {
        self.out
    }
}

async fn send(thread: &ColumnThread, work: Work) -> Result<()> {
    thread.work.send(work).await.map_err(|_| stopped())
}

fn stopped() -> ParquetError {
    ParquetError::General("a Parquet encoder thread stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(start: usize, n: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("query", DataType::Utf8, false),
            Field::new("f", DataType::Float64, true),
            Field::new("impressions", DataType::Int64, false),
        ]));
        let rows = start..start + n;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.clone().map(|i| format!("query {}", i / 7)),
            )),
            Arc::new(Float64Array::from_iter(
                rows.clone().map(|i| (i % 5 != 0).then_some(i as f64 / 3.0)),
            )),
            Arc::new(Int64Array::from_iter_values(rows.map(|i| i as i64 % 97))),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn props() -> WriterProperties {
        WriterProperties::builder()
            .set_max_row_group_row_count(Some(1000))
            .set_data_page_row_count_limit(128)
            .build()
    }

    #[tokio::test]
    async fn writes_the_bytes_of_the_single_threaded_writer() {
        // batches that cross row-group boundaries, an empty one, a short last group
        let sizes = [300, 0, 900, 1000, 2500, 17];
        let mut batches = Vec::new();
        let mut start = 0;
        for n in sizes {
            batches.push(batch(start, n));
            start += n;
        }
        let schema = batches[0].schema();

        let mut expected = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props())).unwrap();
        for b in &batches {
            expected.write(b).unwrap();
        }
        let expected = expected.into_inner().unwrap();

        let mut out = Vec::new();
        let mut writer = ParallelParquetWriter::try_new(&mut out, schema, props()).unwrap();
        for b in &batches {
            writer.write(b).await.unwrap();
        }
        writer.close().await.unwrap();
        assert!(out.len() > 1000);
        assert!(out == expected, "same bytes as ArrowWriter");
    }

    #[tokio::test]
    async fn an_empty_file_is_a_valid_parquet_file() {
        let schema = batch(0, 1).schema();
        let mut expected = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props())).unwrap();
        expected.flush().unwrap();
        let expected = expected.into_inner().unwrap();
        let mut out = Vec::new();
        ParallelParquetWriter::try_new(&mut out, schema, props())
            .unwrap()
            .close()
            .await
            .unwrap();
        assert!(out == expected);
    }
}
