//! Interning for the merge plan's index: keys (query strings, product ids) to dense `u32` ids,
//! by several workers at once ([`Sharded`]), then ranked so that id order is the keys' order
//! (byte order for strings, numeric order for integer ids).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use datafusion::common::{HashMap, Result, internal_datafusion_err, internal_err};
use rayon::prelude::*;

/// A key the index interns: a string (queries, product ids) or an integer product id (any
/// integer type fits an `i128`, and orders as SQL orders it).
pub trait Key: Clone + Eq + Hash + Ord + Send + Sync + Borrow<Self::Borrowed> {
    type Borrowed: ?Sized + Hash + Eq;
    fn own(key: &Self::Borrowed) -> Self;
    /// Bytes the key costs besides its map entry and slot.
    fn heap_bytes(key: &Self::Borrowed) -> usize;
}

impl Key for Arc<str> {
    type Borrowed = str;
    fn own(key: &str) -> Self {
        Arc::from(key)
    }
    fn heap_bytes(key: &str) -> usize {
        key.len() + 16
    }
}

impl Key for i128 {
    type Borrowed = i128;
    fn own(key: &i128) -> Self {
        *key
    }
    fn heap_bytes(_: &i128) -> usize {
        0
    }
}

/// Distinct keys and their ids, in first-seen order until [`Interner::into_sorted`].
pub struct Interner<K> {
    ids: HashMap<K, u32>,
    keys: Vec<K>,
    /// The last key looked up and its id: inputs often arrive grouped by query.
    last: Option<u32>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Interner {
            ids: HashMap::default(),
            keys: Vec::new(),
            last: None,
        }
    }
}

impl<K: Key> Interner<K> {
    /// Bytes one interned key costs besides [`Key::heap_bytes`]: map entry, vector slot.
    const OVERHEAD: usize = 2 * size_of::<K>() + size_of::<u32>() + 8;

    /// The id of `key`, adding it if new, with the bytes of new memory (0 when it was known).
    fn intern(&mut self, key: &K::Borrowed) -> Result<(u32, usize)> {
        if let Some(last) = self.last
            && self.keys[last as usize].borrow() == key
        {
            return Ok((last, 0));
        }
        if let Some(&id) = self.ids.get(key) {
            self.last = Some(id);
            return Ok((id, 0));
        }
        let id = u32::try_from(self.keys.len())
            .map_err(|_| internal_datafusion_err!("more than 2^32 distinct keys"))?;
        let owned = K::own(key);
        self.ids.insert(owned.clone(), id);
        self.keys.push(owned);
        self.last = Some(id);
        Ok((id, K::heap_bytes(key) + Self::OVERHEAD))
    }

    fn get(&self, key: &K::Borrowed) -> Option<u32> {
        self.ids.get(key).copied()
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}
/// Shards of a [`Sharded`] interner: enough that workers rarely wait for each other's lock.
pub const SHARD_BITS: u32 = 6;
pub const SHARDS: usize = 1 << SHARD_BITS;

/// Keys interned by several workers at once: [`SHARDS`] interners, a key's shard chosen by its
/// hash, each behind a lock taken once per batch and shard. A key's provisional id is its id
/// in its shard shifted left by [`SHARD_BITS`], plus the shard; [`Sharded::into_sorted`] ranks
/// the keys of all shards together.
pub struct Sharded<K> {
    shards: Vec<Mutex<Interner<K>>>,
    hasher: foldhash::fast::FixedState,
    /// Where the next batch starts its round of the shards (see [`Sharded::each_shard`]).
    start: AtomicUsize,
}

impl<K: Key> Default for Sharded<K> {
    fn default() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x0051_2051),
            start: AtomicUsize::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a worker that panicked fails the whole build; the data is not read again
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The lock of `m` if no one holds it.
fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Steps between the shards two consecutive batches start at: odd, so every shard is a start.
const START_STRIDE: usize = SHARDS / 2 + 5;

impl<K: Key> Sharded<K> {
    /// Row `i`'s key for `n` rows, grouped by shard: (shard, rows) for every shard with a row.
    /// A row equal to the row before it is left out and marked in `same_as_previous`.
    fn by_shard<'k>(
        &self,
        n: usize,
        key: &impl Fn(usize) -> Option<&'k K::Borrowed>,
        same_as_previous: &mut Vec<bool>,
    ) -> Vec<(usize, Vec<u32>)>
    where
        K::Borrowed: 'k,
    {
        let mut groups: Vec<Vec<u32>> = vec![Vec::new(); SHARDS];
        same_as_previous.clear();
        let mut previous: Option<&K::Borrowed> = None;
        for i in 0..n {
            let k = key(i);
            let same = k.is_some() && k == previous;
            same_as_previous.push(same);
            if let Some(k) = k
                && !same
            {
                let shard = (self.hasher.hash_one(k) >> (64 - SHARD_BITS)) as usize;
                groups[shard].push(i as u32);
            }
            previous = k;
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, rows)| !rows.is_empty())
            .collect()
    }

    /// Calls `work` on each group of [`Sharded::by_shard`] with its shard's interner locked.
    ///
    /// Workers that visited the shards in one order would queue behind each other's lock at
    /// every shard (measured: two workers interning neighbours kept 1.45 of 2 cores busy). So
    /// each batch starts its round at another shard, takes the shards whose lock is free, and
    /// waits only for the ones still busy at the end of the round.
    fn each_shard(
        &self,
        groups: Vec<(usize, Vec<u32>)>,
        mut work: impl FnMut(usize, &mut Interner<K>, &[u32]) -> Result<()>,
    ) -> Result<()> {
        let start = self.start.fetch_add(START_STRIDE, Ordering::Relaxed) % SHARDS;
        let first = groups.partition_point(|(shard, _)| *shard < start);
        let mut busy = Vec::new();
        for (shard, rows) in groups[first..].iter().chain(&groups[..first]) {
            match try_lock(&self.shards[*shard]) {
                Some(mut interner) => work(*shard, &mut interner, rows)?,
                None => busy.push((*shard, rows)),
            }
        }
        for (shard, rows) in busy {
            work(shard, &mut lock(&self.shards[shard]), rows)?;
        }
        Ok(())
    }

    /// The provisional id of every row's key (`key` gives `None` for rows to skip, whose id is
    /// left as is), adding new keys; returns the bytes of new memory.
    pub(super) fn intern_all<'k>(
        &self,
        n: usize,
        key: impl Fn(usize) -> Option<&'k K::Borrowed>,
        ids: &mut [u32],
    ) -> Result<usize>
    where
        K::Borrowed: 'k,
    {
        let mut same = Vec::with_capacity(n);
        let mut bytes = 0;
        let groups = self.by_shard(n, &key, &mut same);
        self.each_shard(groups, |shard, interner, rows| {
            for &i in rows {
                let i = i as usize;
                let (local, new) = interner.intern(key(i).expect("grouped rows have a key"))?;
                if local >= 1 << (32 - SHARD_BITS) {
                    return internal_err!(
                        "more than 2^{} distinct keys in a shard",
                        32 - SHARD_BITS
                    );
                }
                ids[i] = (local << SHARD_BITS) | shard as u32;
                bytes += new;
            }
            Ok(())
        })?;
        fill_repeats(ids, &same);
        Ok(bytes)
    }

    /// The provisional id of every row's key among the first `known[shard]` keys of its shard,
    /// or `None` (also for rows `key` skips).
    pub(super) fn find_all<'k>(
        &self,
        n: usize,
        key: impl Fn(usize) -> Option<&'k K::Borrowed>,
        known: &[u32],
    ) -> Vec<Option<u32>>
    where
        K::Borrowed: 'k,
    {
        let mut same = Vec::with_capacity(n);
        let mut found = vec![None; n];
        let groups = self.by_shard(n, &key, &mut same);
        self.each_shard(groups, |shard, interner, rows| {
            for &i in rows {
                let i = i as usize;
                found[i] = interner
                    .get(key(i).expect("grouped rows have a key"))
                    .filter(|&local| local < known[shard])
                    .map(|local| (local << SHARD_BITS) | shard as u32);
            }
            Ok(())
        })
        .expect("lookups do not fail");
        for i in 1..n {
            if same[i] {
                found[i] = found[i - 1];
            }
        }
        found
    }

    /// Keys per shard so far.
    pub(super) fn lens(&self) -> Vec<u32> {
        self.shards.iter().map(|s| lock(s).len() as u32).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Every key in order, and a [`Ranks`] from provisional ids to positions in that order.
    pub(super) fn into_sorted(self) -> (Vec<K>, Ranks) {
        let shards: Vec<Interner<K>> = self
            .shards
            .into_iter()
            .map(|s| s.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let mut base = Vec::with_capacity(SHARDS);
        let mut keys: Vec<K> = Vec::with_capacity(shards.iter().map(Interner::len).sum());
        for shard in shards {
            base.push(keys.len() as u32);
            drop(shard.ids);
            keys.extend(shard.keys);
        }
        let mut order: Vec<u32> = (0..keys.len() as u32).collect();
        order.par_sort_unstable_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]));
        let mut rank = vec![0u32; order.len()];
        for (position, &id) in order.iter().enumerate() {
            rank[id as usize] = position as u32;
        }
        let sorted = order.iter().map(|&id| keys[id as usize].clone()).collect();
        (sorted, Ranks { base, rank })
    }
}

/// Copies each repeated row's id from the row before it.
fn fill_repeats(ids: &mut [u32], same_as_previous: &[bool]) {
    for i in 1..ids.len() {
        if same_as_previous[i] {
            ids[i] = ids[i - 1];
        }
    }
}

/// Provisional ids of a [`Sharded`] interner to final ones (positions in key order).
pub struct Ranks {
    base: Vec<u32>,
    rank: Vec<u32>,
}

impl Ranks {
    pub(super) fn of(&self, provisional: u32) -> u32 {
        let shard = (provisional & (SHARDS as u32 - 1)) as usize;
        self.rank[(self.base[shard] + (provisional >> SHARD_BITS)) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_ids_sort_like_the_strings_in_byte_order() {
        let interner: Sharded<Arc<str>> = Sharded::default();
        let words = ["b", "a b", "B", "ab", "a", "a", "b", "é", "e"];
        let mut ids = vec![0u32; words.len()];
        let bytes = interner
            .intern_all(words.len(), |i| Some(words[i]), &mut ids)
            .unwrap();
        assert!(bytes > 0);
        assert_eq!(ids[0], ids[6], "a repeated string keeps its id");
        assert_eq!(ids[4], ids[5], "a string repeated in a row too");
        // a second batch finds the same ids, and a lookup among the first keys finds them too
        let mut again = vec![0u32; 2];
        let added = interner
            .intern_all(2, |i| Some(["é", "new"][i]), &mut again)
            .unwrap();
        assert_eq!(again[0], ids[7]);
        assert!(added > 0, "\"new\" is new");
        let known: Vec<u32> = vec![u32::MAX; SHARDS];
        let found = interner.find_all(3, |i| [Some("ab"), None, Some("zz")][i], &known);
        assert_eq!(found, [Some(ids[3]), None, None]);
        let (sorted, ranks) = interner.into_sorted();
        let sorted: Vec<&str> = sorted.iter().map(|s| &**s).collect();
        assert_eq!(sorted, ["B", "a", "a b", "ab", "b", "e", "new", "é"]);
        for (word, id) in words.iter().zip(&ids) {
            assert_eq!(sorted[ranks.of(*id) as usize], *word);
        }
    }

    #[test]
    fn lookups_see_only_the_keys_known_before() {
        let interner: Sharded<Arc<str>> = Sharded::default();
        let mut ids = vec![0u32; 1];
        interner
            .intern_all(1, |_| Some("with history"), &mut ids)
            .unwrap();
        let known = interner.lens();
        interner
            .intern_all(1, |_| Some("neighbour only"), &mut ids)
            .unwrap();
        let found = interner.find_all(2, |i| Some(["with history", "neighbour only"][i]), &known);
        assert!(found[0].is_some());
        assert_eq!(
            found[1], None,
            "a key added after the history is not a neighbour with history"
        );
    }
}
