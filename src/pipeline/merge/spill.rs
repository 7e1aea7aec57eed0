//! Rows held in a spillable memory reservation that go to the DataFusion disk manager's spill
//! files when the pool cannot grow it: the merge plan's history and neighbour candidates under
//! a `--memory-limit`.

use std::mem::size_of;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_plan::metrics::SpillMetrics;
use datafusion::physical_plan::sorts::streaming_merge::SortedSpillFile;
use datafusion::physical_plan::spill::SpillManager;

/// A row type that a [`Buffer`] can spill.
pub trait SpillRow: Copy + Send + Sync + 'static {
    /// The columns of its spill files.
    fn schema() -> SchemaRef;
    /// `rows` as one batch of [`Self::schema`].
    fn batch(rows: &[Self], schema: &SchemaRef) -> Result<RecordBatch>;
    /// Puts the rows about to be spilled in the order a spill file keeps (none by default).
    fn prepare(_rows: &mut [Self]) {}
}

/// A spill manager for `T`'s spill files, counting into `metrics`.
pub fn manager<T: SpillRow>(env: Arc<RuntimeEnv>, metrics: SpillMetrics) -> SpillManager {
    SpillManager::new(env, metrics, T::schema())
}

/// Rows per batch of a spill file.
const SPILL_BATCH_ROWS: usize = 8192;

/// Rows in memory as long as `reservation` can grow, in spill files after that (when `spill`
/// is given): each spill writes the rows held, in [`SpillRow::prepare`]'s order, to a new
/// file, and returns their memory to the pool.
pub struct Buffer<'a, T> {
    rows: Vec<T>,
    reservation: &'a mut MemoryReservation,
    spill: Option<&'a SpillManager>,
    files: Vec<SortedSpillFile>,
    spilled_rows: usize,
}

/// What a [`Buffer`] ends as.
pub enum Buffered<T> {
    /// Every row, in memory.
    Resident(Vec<T>),
    /// Every row in spill files, each in [`SpillRow::prepare`]'s order.
    Spilled {
        files: Vec<SortedSpillFile>,
        rows: usize,
    },
}

impl<'a, T: SpillRow> Buffer<'a, T> {
    pub fn new(reservation: &'a mut MemoryReservation, spill: Option<&'a SpillManager>) -> Self {
        Buffer {
            rows: Vec::new(),
            reservation,
            spill,
            files: Vec::new(),
            spilled_rows: 0,
        }
    }

    /// Sizes the buffer for `rows` rows at once, if the pool has room for them: one allocation
    /// instead of growth by doubling, which copied the rows again at every step and touched up
    /// to twice their size in fresh memory, all on the one thread that adds. A wrong guess only
    /// means growth as usual beyond it.
    pub fn expect(&mut self, rows: usize) {
        let more = rows.saturating_sub(self.rows.capacity());
        if more > 0 && self.reservation.try_grow(more * size_of::<T>()).is_ok() {
            self.rows.reserve_exact(rows - self.rows.len());
        }
    }

    /// Adds a batch's rows, spilling the buffer when the pool cannot grow it; `out_of_memory`
    /// words the error when the rows fit nowhere.
    pub fn add(
        &mut self,
        piece: Vec<T>,
        out_of_memory: impl Fn(DataFusionError) -> DataFusionError,
    ) -> Result<()> {
        let needed = self.rows.len() + piece.len();
        if needed > self.rows.capacity() {
            let capacity = (self.rows.capacity() * 2).max(needed).max(1024);
            let more = (capacity - self.rows.capacity()) * size_of::<T>();
            match self.reservation.try_grow(more) {
                Ok(()) => self.rows.reserve_exact(capacity - self.rows.len()),
                Err(e) => {
                    if !self.make_room()? {
                        return Err(out_of_memory(e));
                    }
                    let capacity = piece.len().max(1024);
                    self.reservation
                        .try_grow(capacity * size_of::<T>())
                        .map_err(&out_of_memory)?;
                    self.rows.reserve_exact(capacity);
                }
            }
        }
        self.rows.extend(piece);
        Ok(())
    }

    /// Spills the rows in memory and returns their memory to the pool, so that what cannot
    /// spill gets it; false if there is nothing to spill or nowhere to spill it.
    pub fn make_room(&mut self) -> Result<bool> {
        if self.rows.is_empty() || self.spill.is_none() {
            return Ok(false);
        }
        self.flush()?;
        self.rows = Vec::new();
        self.reservation.free();
        Ok(true)
    }

    /// Writes the rows held to a new spill file and empties the buffer.
    fn flush(&mut self) -> Result<()> {
        let manager = self
            .spill
            .expect("flush is called only with a spill manager");
        T::prepare(&mut self.rows);
        let mut file = manager.create_in_progress_file("PriorMergeExec")?;
        let mut largest = 0;
        for slice in self.rows.chunks(SPILL_BATCH_ROWS) {
            let batch = T::batch(slice, manager.schema())?;
            largest = largest.max(file.append_batch(&batch)?);
        }
        self.spilled_rows += self.rows.len();
        if let Some(file) = file.finish()? {
            self.files.push(SortedSpillFile {
                file,
                max_record_batch_memory: largest,
            });
        }
        self.rows.clear();
        Ok(())
    }

    /// The rows in memory if none was spilled; otherwise the rest spilled too and the
    /// buffer's memory returned.
    pub fn finish(mut self) -> Result<Buffered<T>> {
        if self.files.is_empty() {
            // the allocation past the rows was never written (a buffer sized for more rows than
            // it got, such as a share's history, sized at the whole input's; the tail of the last
            // doubling): its pages hold no memory, so the reservation keeps only the rows'
            let used = self.rows.len() * size_of::<T>();
            self.reservation
                .shrink(self.reservation.size().saturating_sub(used));
            return Ok(Buffered::Resident(std::mem::take(&mut self.rows)));
        }
        self.make_room()?;
        self.rows = Vec::new();
        self.reservation.free();
        Ok(Buffered::Spilled {
            files: std::mem::take(&mut self.files),
            rows: self.spilled_rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::merge::sets::Member;
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};

    fn members(n: usize) -> Vec<Member> {
        (0..n as u32)
            .map(|i| Member {
                weight: f64::from(i),
                query: i,
                neighbour: i + 1,
            })
            .collect()
    }

    /// A buffer sized for the rows it will get holds them in that one allocation, reserved
    /// from the start; more rows than expected grow it as usual; a pool without room for the
    /// expected rows leaves it to grow.
    #[test]
    fn a_buffer_sized_for_its_rows_allocates_once() {
        let row = size_of::<Member>();
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(100_000 * row));
        let mut reservation = MemoryConsumer::new("test").register(&pool);
        let mut buffer: Buffer<'_, Member> = Buffer::new(&mut reservation, None);
        buffer.expect(5_000);
        assert_eq!(buffer.rows.capacity(), 5_000);
        for _ in 0..5 {
            buffer.add(members(1_000), |e| e).unwrap();
        }
        assert_eq!(
            buffer.rows.capacity(),
            5_000,
            "no growth while the guess holds"
        );
        buffer.add(members(10), |e| e).unwrap();
        assert!(buffer.rows.capacity() >= 5_010);
        let Ok(Buffered::Resident(rows)) = buffer.finish() else {
            panic!("nothing spills without a spill manager");
        };
        assert_eq!(rows.len(), 5_010);
        assert_eq!(
            reservation.size(),
            rows.len() * row,
            "the rows, not the capacity"
        );
        drop(rows);
        reservation.free();

        // sized for more than it gets (a share's history): holds only what it got
        let mut buffer: Buffer<'_, Member> = Buffer::new(&mut reservation, None);
        buffer.expect(5_000);
        buffer.add(members(3_000), |e| e).unwrap();
        assert_eq!(buffer.reservation.size(), 5_000 * row);
        let Ok(Buffered::Resident(rows)) = buffer.finish() else {
            panic!("nothing spills without a spill manager");
        };
        assert_eq!((rows.capacity(), rows.len()), (5_000, 3_000));
        assert_eq!(reservation.size(), 3_000 * row);
        drop(rows);
        reservation.free();

        let mut buffer: Buffer<'_, Member> = Buffer::new(&mut reservation, None);
        buffer.expect(200_000);
        assert_eq!(
            buffer.rows.capacity(),
            0,
            "the pool has no room for the guess"
        );
        buffer.add(members(100), |e| e).unwrap();
        drop(buffer);
        assert_eq!(reservation.size(), 1_024 * row, "growth as without a guess");
    }
}
