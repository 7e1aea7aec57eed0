//! Rows held in a spillable memory reservation that go to the DataFusion disk manager's spill
//! files when the pool cannot grow it: the merge plan's history and neighbour candidates under
//! a `--memory-limit`.

use std::cmp::Ordering;
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
use itertools::Itertools;
use rayon::prelude::*;

/// A row type that a [`Buffer`] can spill.
pub trait SpillRow: Copy + Send + Sync + 'static {
    /// The columns of its spill files.
    fn schema() -> SchemaRef;
    /// `rows` as one batch of [`Self::schema`].
    fn batch(rows: &[Self], schema: &SchemaRef) -> Result<RecordBatch>;
    /// The order a spill file keeps its rows in (none by default: as added).
    const SPILL_ORDER: Option<fn(&Self, &Self) -> Ordering> = None;
}

/// A spill manager for `T`'s spill files, counting into `metrics`.
pub fn manager<T: SpillRow>(env: Arc<RuntimeEnv>, metrics: SpillMetrics) -> SpillManager {
    SpillManager::new(env, metrics, T::schema())
}

/// Rows per batch of a spill file.
const SPILL_BATCH_ROWS: usize = 8192;

/// Rows in memory as long as `reservation` can grow, in spill files after that (when `spill`
/// is given): each spill writes the rows held, in [`SpillRow::SPILL_ORDER`], to a new
/// file, and returns their memory to the pool.
///
/// The rows are held as the pieces they were added in, not copied into one growing vector:
/// growing one by doubling copied every row about twice and touched twice its final size in
/// fresh memory, on the one thread that adds (on synth 1M, about 4 s of the history's read).
/// [`Pieces::into_vec`] makes them one vector, on every core, once.
pub struct Buffer<'a, T> {
    pieces: Pieces<T>,
    reservation: &'a mut MemoryReservation,
    spill: Option<&'a SpillManager>,
    files: Vec<SortedSpillFile>,
    spilled_rows: usize,
}

/// Rows in the pieces they arrived in.
pub struct Pieces<T> {
    pieces: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Pieces<T> {
    fn default() -> Self {
        Pieces {
            pieces: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Copy + Send + Sync> Pieces<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes the pieces hold.
    fn bytes(&self) -> usize {
        self.pieces.iter().map(|p| p.capacity()).sum::<usize>() * size_of::<T>()
    }

    /// Adds a piece (none if empty: every piece held has a row).
    fn push(&mut self, piece: Vec<T>) {
        if piece.is_empty() {
            return;
        }
        self.len += piece.len();
        self.pieces.push(piece);
    }

    /// Every row in order, through `f`, as one vector written by every core (so that its
    /// memory is first touched by all of them, not one).
    pub fn into_vec(self, f: impl Fn(&T) -> T + Sync) -> Vec<T> {
        let starts: Vec<usize> = self
            .pieces
            .iter()
            .scan(0, |start, p| {
                let at = *start;
                *start += p.len();
                Some(at)
            })
            .collect();
        let pieces = &self.pieces;
        let mut rows = Vec::new();
        // Each of rayon's jobs reads a contiguous range of rows in order: it keeps a cursor
        // (next row, piece, offset) and looks a row's piece up only where a range starts.
        (0..self.len)
            .into_par_iter()
            .with_min_len(1 << 14)
            .map_init(
                || (usize::MAX, 0usize, 0usize),
                |(next, piece, at), i| {
                    if i != *next {
                        *piece = starts.partition_point(|&s| s <= i) - 1;
                        *at = i - starts[*piece];
                    }
                    let row = f(&pieces[*piece][*at]);
                    *next = i + 1;
                    *at += 1;
                    if *at == pieces[*piece].len() {
                        (*piece, *at) = (*piece + 1, 0);
                    }
                    row
                },
            )
            .collect_into_vec(&mut rows);
        rows
    }
}

/// What a [`Buffer`] ends as.
pub enum Buffered<T> {
    /// Every row, in memory.
    Resident(Vec<T>),
    /// Every row in spill files, each in [`SpillRow::SPILL_ORDER`].
    Spilled {
        files: Vec<SortedSpillFile>,
        rows: usize,
    },
}

impl<'a, T: SpillRow> Buffer<'a, T> {
    pub fn new(reservation: &'a mut MemoryReservation, spill: Option<&'a SpillManager>) -> Self {
        Buffer {
            pieces: Pieces::default(),
            reservation,
            spill,
            files: Vec::new(),
            spilled_rows: 0,
        }
    }

    /// Adds a batch's rows, spilling the buffer when the pool cannot grow it; `out_of_memory`
    /// words the error when the rows fit nowhere.
    pub fn add(
        &mut self,
        piece: Vec<T>,
        out_of_memory: impl Fn(DataFusionError) -> DataFusionError,
    ) -> Result<()> {
        if piece.is_empty() {
            return Ok(());
        }
        let bytes = piece.capacity() * size_of::<T>();
        if let Err(e) = self.reservation.try_grow(bytes) {
            if !self.make_room()? {
                return Err(out_of_memory(e));
            }
            self.reservation.try_grow(bytes).map_err(&out_of_memory)?;
        }
        self.pieces.push(piece);
        Ok(())
    }

    /// Spills the rows in memory and returns their memory to the pool, so that what cannot
    /// spill gets it; false if there is nothing to spill or nowhere to spill it.
    pub fn make_room(&mut self) -> Result<bool> {
        if self.pieces.is_empty() || self.spill.is_none() {
            return Ok(false);
        }
        self.flush()?;
        self.reservation.free();
        Ok(true)
    }

    /// Writes the rows held to a new spill file and empties the buffer.
    fn flush(&mut self) -> Result<()> {
        let manager = self
            .spill
            .expect("flush is called only with a spill manager");
        let pieces = std::mem::take(&mut self.pieces);
        let rows = pieces.len;
        let mut file = manager.create_in_progress_file("PriorMergeExec")?;
        let mut largest = 0;
        let mut write = |rows: &[T]| -> Result<()> {
            for slice in rows.chunks(SPILL_BATCH_ROWS) {
                let batch = T::batch(slice, manager.schema())?;
                largest = largest.max(file.append_batch(&batch)?);
            }
            Ok(())
        };
        match T::SPILL_ORDER {
            None => {
                for piece in pieces.pieces {
                    write(&piece)?;
                }
            }
            Some(order) => {
                // each piece sorted in place, then merged into the file: the rows are held
                // once (one sorted vector would be a second copy, and freed pieces stay in RSS
                // for mimalloc's purge delay)
                let mut pieces = pieces.pieces;
                pieces
                    .par_iter_mut()
                    .for_each(|piece| piece.sort_unstable_by(order));
                let merged = pieces
                    .iter()
                    .map(|piece| piece.iter().copied())
                    .kmerge_by(|a, b| order(a, b).is_lt());
                let mut batch = Vec::with_capacity(SPILL_BATCH_ROWS);
                for row in merged {
                    batch.push(row);
                    if batch.len() == SPILL_BATCH_ROWS {
                        write(&batch)?;
                        batch.clear();
                    }
                }
                write(&batch)?;
            }
        }
        self.spilled_rows += rows;
        if let Some(file) = file.finish()? {
            self.files.push(SortedSpillFile {
                file,
                max_record_batch_memory: largest,
            });
        }
        Ok(())
    }

    /// The rows in memory through `f`, as one vector, if none was spilled and the pool holds
    /// that vector beside the pieces while it is written; otherwise every row spilled (as
    /// added: `f` is not applied) and the buffer's memory returned. `out_of_memory` words the
    /// error when the vector fits nowhere (no spilling).
    pub fn finish(
        mut self,
        f: impl Fn(&T) -> T + Sync,
        out_of_memory: impl Fn(DataFusionError) -> DataFusionError,
    ) -> Result<Buffered<T>> {
        if self.files.is_empty() {
            let held = self.pieces.bytes();
            let fits = self
                .reservation
                .try_grow(self.pieces.len() * size_of::<T>());
            match fits {
                Ok(()) => {
                    let rows = std::mem::take(&mut self.pieces).into_vec(f);
                    self.reservation.shrink(held);
                    return Ok(Buffered::Resident(rows));
                }
                Err(e) if self.spill.is_none() => return Err(out_of_memory(e)),
                Err(_) => {}
            }
        }
        self.make_room()?;
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
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, UInt32Type};
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
    use futures::StreamExt;

    /// Pieces of many lengths, some empty, some longer than one of rayon's jobs: one vector,
    /// in order, through `f`.
    #[test]
    fn pieces_become_one_vector_in_order() {
        let shapes: [&[usize]; 5] = [
            &[],
            &[0, 0],
            &[1],
            &[3, 0, 5],
            &[1 << 14, 1, (1 << 14) - 1, 40_000, 0, 7, 70_000],
        ];
        for lens in shapes {
            let mut pieces = Pieces::default();
            let mut next = 0u64;
            for &len in lens {
                pieces.push((next..next + len as u64).collect());
                next += len as u64;
            }
            assert_eq!(pieces.len(), next as usize);
            let rows = pieces.into_vec(|r| r * 2);
            let expected: Vec<u64> = (0..next).map(|r| r * 2).collect();
            assert_eq!(rows, expected, "pieces of {lens:?}");
        }
    }

    /// 30 pieces of 100 members in a scrambled order.
    fn members() -> Vec<Vec<Member>> {
        (0..30u32)
            .map(|p| {
                (0..100u32)
                    .map(|i| {
                        let n = (p * 100 + i) * 7919 % 3000;
                        Member {
                            weight: f64::from(n % 13),
                            query: n / 10,
                            neighbour: n % 10,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn key(m: &Member) -> (u32, u32, u64) {
        (m.query, m.neighbour, m.weight.to_bits())
    }

    /// What the spill files hold, file by file.
    async fn read(manager: &SpillManager, files: &[SortedSpillFile]) -> Vec<Vec<Member>> {
        let mut out = Vec::new();
        for run in files {
            let mut rows = Vec::new();
            let mut batches = manager
                .read_spill_as_stream(Arc::clone(&run.file), None)
                .unwrap();
            while let Some(batch) = batches.next().await {
                let batch = batch.unwrap();
                let q = batch.column(0).as_primitive::<UInt32Type>();
                let c = batch.column(1).as_primitive::<UInt32Type>();
                let w = batch.column(2).as_primitive::<Float64Type>();
                rows.extend((0..batch.num_rows()).map(|i| Member {
                    query: q.value(i),
                    neighbour: c.value(i),
                    weight: w.value(i),
                }));
            }
            out.push(rows);
        }
        out
    }

    /// Adds every piece to a buffer over a pool of `limit` bytes (spilling if `spill`) and
    /// finishes it.
    async fn buffer(limit: usize, spill: bool) -> (Result<Buffered<Member>>, SpillManager) {
        let env = Arc::new(RuntimeEnvBuilder::new().build().unwrap());
        let manager = manager::<Member>(
            Arc::clone(&env),
            SpillMetrics::new(&ExecutionPlanMetricsSet::new(), 0),
        );
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(limit));
        let mut reservation = MemoryConsumer::new("test")
            .with_can_spill(true)
            .register(&pool);
        let mut buffer = Buffer::new(&mut reservation, spill.then_some(&manager));
        let mut result = Ok(());
        for piece in members() {
            result = result.and_then(|()| buffer.add(piece, |e| e));
        }
        let finished = match result {
            Ok(()) => buffer.finish(|m| *m, |e| e),
            Err(e) => {
                drop(buffer);
                Err(e)
            }
        };
        match &finished {
            Ok(Buffered::Resident(rows)) => {
                assert_eq!(reservation.size(), rows.len() * size_of::<Member>())
            }
            Ok(Buffered::Spilled { .. }) => {
                assert_eq!(reservation.size(), 0, "a spilled buffer holds no memory")
            }
            Err(_) => {}
        }
        (finished, manager)
    }

    /// Unlimited: every row in memory, in the order added. Room for the pieces but not for
    /// the vector beside them: everything spills, to one file. Room for a third of them:
    /// several files. Each file in the spill order; every row in one of them, once.
    #[tokio::test]
    async fn buffer_holds_spills_and_finishes() {
        let all: Vec<Member> = members().concat();
        let bytes = all.len() * size_of::<Member>();
        let (finished, _) = buffer(usize::MAX, true).await;
        match finished.unwrap() {
            Buffered::Resident(rows) => assert_eq!(
                rows.iter().map(key).collect::<Vec<_>>(),
                all.iter().map(key).collect::<Vec<_>>()
            ),
            Buffered::Spilled { .. } => panic!("nothing to spill without a limit"),
        }
        for (limit, least_files) in [(bytes + bytes / 2, 1), (bytes / 3, 3)] {
            let (finished, manager) = buffer(limit, true).await;
            let Buffered::Spilled { files, rows } = finished.unwrap() else {
                panic!("a pool of {limit} bytes cannot hold {bytes} twice");
            };
            assert_eq!(rows, all.len());
            let runs = read(&manager, &files).await;
            assert!(runs.len() >= least_files, "{} files", runs.len());
            for run in &runs {
                assert!(
                    run.windows(2)
                        .all(|w| Member::SPILL_ORDER.unwrap()(&w[0], &w[1]).is_le()),
                    "a spill file in its order"
                );
            }
            let mut got: Vec<_> = runs.concat().iter().map(key).collect();
            let mut want: Vec<_> = all.iter().map(key).collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "limit {limit}");
        }
        // no spilling: the vector that does not fit is an error, not a silent overrun
        let (finished, _) = buffer(bytes + bytes / 2, false).await;
        assert!(finished.is_err());
    }
}
