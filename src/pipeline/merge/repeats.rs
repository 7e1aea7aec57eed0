//! Repeated (query, product_id) keys of the history: the merge plan's duplicate-key check.
//!
//! The history stage has one row per key unless the engagement input repeats a key and
//! duplicates are not summed (`on_duplicate = "error"`). The index sorts the history by key
//! anyway, in memory ([`super::history::History::repeats`]) or in the spilled history's sort
//! windows ([`super::history::Runs::sort`]), so it finds repeated keys there ([`Repeats`]) and
//! fails with [`RepeatedKeys`] before the operator emits a row; the job reports that as the bad
//! input the aggregation before the job would have ([`crate::pipeline::checks::repeated_keys`]).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result};

use super::index::Products;

/// Keys seen on more than one history row: the history stage has one row per (query, product)
/// unless the engagement input repeats a key and duplicates are not summed. The index finds them
/// where it sorts the rows anyway, so the job needs no aggregation of its own to reject them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repeats {
    /// Keys with more than one row.
    pub keys: u64,
    /// The first such key in (query, product) order (final ids) and its rows.
    pub first: Option<(u32, u32, u64)>,
}

impl Repeats {
    /// Adds the repeated keys of `keys`, in (query, product) order, that follow every key
    /// already added.
    pub fn add_sorted(&mut self, keys: impl Iterator<Item = (u32, u32)>) {
        let mut previous: Option<(u32, u32)> = None;
        let mut run = 1u64;
        for key in keys {
            if previous == Some(key) {
                run += 1;
            } else {
                self.close(previous, run);
                previous = Some(key);
                run = 1;
            }
        }
        self.close(previous, run);
    }

    /// The end of `key`'s `run` rows.
    fn close(&mut self, key: Option<(u32, u32)>, run: u64) {
        if let Some((q, p)) = key.filter(|_| run > 1) {
            self.keys += 1;
            self.first.get_or_insert((q, p, run));
        }
    }
}

/// The history repeats (query, product_id) keys: the engagement input has several rows for a key
/// and they are not summed (`on_duplicate = "error"`). The operator fails with it (as a
/// [`DataFusionError::External`]) before it emits a row; the job reports it as bad input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatedKeys {
    /// Keys with more than one row (in the rows this operator read).
    pub keys: u64,
    /// The first of them in key order, rendered as a row `query=.., product_id=.., n=..`.
    pub example: String,
}

impl std::fmt::Display for RepeatedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (query, product_id) key(s) of the history have more than one row, e.g. {}",
            self.keys, self.example
        )
    }
}

impl std::error::Error for RepeatedKeys {}

impl RepeatedKeys {
    /// The repeated keys an operator's error carries, if that is what stopped it.
    pub fn of(e: &DataFusionError) -> Option<&RepeatedKeys> {
        match e.find_root() {
            DataFusionError::External(e) => e.downcast_ref::<RepeatedKeys>(),
            _ => None,
        }
    }
}

/// Fails with [`RepeatedKeys`] if `repeats` found any; `product_type`: the history's product_id
/// type, as the example row shows it.
pub(super) fn reject_repeats(
    repeats: Repeats,
    queries: &[Arc<str>],
    products: &Products,
    product_type: &DataType,
) -> Result<()> {
    let Some((query, product, n)) = repeats.first else {
        return Ok(());
    };
    let product: ArrayRef = match products {
        Products::Strings(keys) => {
            Arc::new(StringArray::from(vec![keys[product as usize].as_ref()]))
        }
        Products::Integers(keys) if product_type.is_unsigned_integer() => {
            Arc::new(UInt64Array::from(vec![keys[product as usize] as u64]))
        }
        Products::Integers(keys) => Arc::new(Int64Array::from(vec![keys[product as usize] as i64])),
    };
    let row = RecordBatch::try_from_iter([
        (
            "query",
            Arc::new(StringArray::from(vec![queries[query as usize].as_ref()])) as ArrayRef,
        ),
        ("product_id", product),
        ("n", Arc::new(Int64Array::from(vec![n as i64]))),
    ])?;
    let example =
        crate::io::checks::render_row(&row, 0).map_err(|e| DataFusionError::External(e.into()))?;
    Err(DataFusionError::External(Box::new(RepeatedKeys {
        keys: repeats.keys,
        example,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_count_keys_on_several_rows_and_keep_the_first() {
        let mut repeats = Repeats::default();
        repeats.add_sorted([(0, 1), (0, 2), (1, 0)].into_iter());
        assert_eq!(repeats, Repeats::default());
        // added in two parts, as windows are: a run at the end of the first is closed there
        repeats.add_sorted([(2, 5), (2, 5), (2, 5), (3, 0), (4, 1), (4, 1)].into_iter());
        repeats.add_sorted([(5, 0), (6, 2), (6, 2)].into_iter());
        assert_eq!(
            repeats,
            Repeats {
                keys: 3,
                first: Some((2, 5, 3)),
            }
        );
        repeats.add_sorted(std::iter::empty());
        assert_eq!(repeats.keys, 3);
    }
}
