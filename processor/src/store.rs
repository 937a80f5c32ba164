//! One RocksDB store per assigned input partition. A partition's entity states and the
//! next input offset to read are written together in one `WriteBatch`, so after any
//! crash the store is a state that some prefix of the partition produced, and that
//! prefix's end is where reading resumes.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use hookfold_state::changelog::States;
use rocksdb::{DB, IngestExternalFileOptions, Options, SstFileWriter, WriteBatch, WriteOptions};

const STATE_PREFIX: &[u8] = b"s/";
const STATE_END: &[u8] = b"s0"; // the first key after every `s/…` key
const NEXT_OFFSET: &[u8] = b"m/next_offset";
/// Offset, in the changelog partition, of the batch marker this store's state matches:
/// a restore reads the changelog from just after it.
const CHANGELOG_OFFSET: &[u8] = b"m/changelog_offset";
/// Present while a restore writes into the store: a store found with it was interrupted
/// half-way and is wiped (see [`PartitionStore::open`]).
const RESTORING: &[u8] = b"m/restoring";
/// Where a restore builds the table files it ingests, inside the store's directory (RocksDB
/// leaves subdirectories alone; a half-restored store is deleted whole).
const INGEST_DIR: &str = "ingest";
/// A restore holds this many bytes of states before it sorts them into a table file of
/// their own (a full restore: the memtable's skiplist inserts were most of its writing).
const INGEST_CHUNK_BYTES: usize = 32 * 1024 * 1024;
/// Fewer restored states than this at the end go through the memtable (a catch-up
/// restore of a few batches: a table file of its own each would only make compaction work).
const INGEST_MIN_STATES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB at {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("RocksDB at {path}: stored offset is corrupt")]
    CorruptOffset { path: PathBuf },
    #[error("restore: table file at {path}: {source}")]
    Ingest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing the store at {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct PartitionStore {
    db: DB,
    path: PathBuf,
    /// The options the store was opened with: the restore's table files are built with them.
    options: Options,
}

impl PartitionStore {
    /// Opens (or creates) the store. A store left half-restored by a crash is wiped first:
    /// its states may be ahead of its offset, so only a full restore can be trusted.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self::open_raw(path)?;
        if store.db.get(RESTORING).map_err(|e| store.err(e))?.is_some() {
            tracing::warn!(path = %path.display(), "store was left half-restored; wiping it");
            drop(store);
            Self::destroy(path)?;
            return Self::open_raw(path);
        }
        Ok(store)
    }

    /// Deletes the store at `path` (nothing to do if there is none).
    pub fn destroy(path: &Path) -> Result<(), StoreError> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Remove {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn open_raw(path: &Path) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Small per-partition stores: keep the memtable budget modest so that a processor
        // with many partitions does not reserve hundreds of MiB up front.
        options.set_write_buffer_size(16 * 1024 * 1024);
        options.set_max_write_buffer_number(2);
        options.increase_parallelism(2);
        let db = DB::open(&options, path).map_err(|source| StoreError::Rocks {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            db,
            path: path.to_owned(),
            options,
        })
    }

    fn err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next input offset to read, or `None` for a store that has processed nothing.
    pub fn next_offset(&self) -> Result<Option<i64>, StoreError> {
        self.offset(NEXT_OFFSET)
    }

    /// Where in the changelog partition this store's state was last written (the offset
    /// of its batch marker), or `None` if unknown.
    pub fn changelog_offset(&self) -> Result<Option<i64>, StoreError> {
        self.offset(CHANGELOG_OFFSET)
    }

    fn offset(&self, name: &[u8]) -> Result<Option<i64>, StoreError> {
        match self.db.get(name).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => {
                let array: [u8; 8] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::CorruptOffset {
                            path: self.path.clone(),
                        })?;
                Ok(Some(i64::from_be_bytes(array)))
            }
        }
    }

    /// The stored state of one entity key (a record key of the input topic).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(state_key(key)).map_err(|e| self.err(e))
    }

    /// Writes the states, the next offset and (if known) the changelog offset atomically.
    pub fn commit<'a>(
        &self,
        states: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        next_offset: i64,
        changelog_offset: Option<i64>,
    ) -> Result<(), StoreError> {
        let states = states.into_iter().map(|(key, value)| (key, Some(value)));
        self.commit_changes(states, next_offset, changelog_offset)
    }

    /// [`PartitionStore::commit`] where a `None` value deletes the key (a timer that fired).
    pub fn commit_changes<'a>(
        &self,
        states: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        next_offset: i64,
        changelog_offset: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (key, value) in states {
            match value {
                Some(value) => batch.put(state_key(key), value),
                None => batch.delete(state_key(key)),
            }
        }
        batch.put(NEXT_OFFSET, next_offset.to_be_bytes());
        match changelog_offset {
            Some(offset) => batch.put(CHANGELOG_OFFSET, offset.to_be_bytes()),
            None => batch.delete(CHANGELOG_OFFSET),
        }
        self.write(batch)
    }

    /// Marks the store as being restored (see [`PartitionStore::open`]).
    pub fn begin_restore(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put(RESTORING, b"1");
        self.write(batch)
    }

    /// Starts writing restored states into the store (see [`RestoreWriter`]).
    pub fn restore_writer(&self) -> RestoreWriter<&Self> {
        RestoreWriter::new(self)
    }

    /// Writes restored states (a `None` value deletes the key) through the memtable,
    /// without the WAL: until the restore finishes, the restore flag (written with the WAL)
    /// makes a crash wipe the store anyway, so logging these writes would only cost time;
    /// `finish_restore` flushes them to table files before it clears the flag.
    fn write_restored(&self, states: &States) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (key, value) in states.iter() {
            match value {
                Some(value) => batch.put(state_key(key), value),
                None => batch.delete(state_key(key)),
            }
        }
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(batch, &options).map_err(|e| self.err(e))
    }

    /// Writes restored states, sorted by key with at most one state per key, as one table
    /// file and ingests it: newer than everything in the store, like any later write.
    fn ingest_restored<'a>(
        &self,
        states: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        file: u32,
    ) -> Result<(), StoreError> {
        let dir = self.path.join(INGEST_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Ingest {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("restore-{file}.sst"));
        let mut writer = SstFileWriter::create(&self.options);
        writer.open(&path).map_err(|e| self.err(e))?;
        let mut key_buffer = Vec::new();
        for (key, value) in states {
            key_buffer.clear();
            key_buffer.extend_from_slice(STATE_PREFIX);
            key_buffer.extend_from_slice(key);
            match value {
                Some(value) => writer.put(&key_buffer, value),
                None => writer.delete(&key_buffer),
            }
            .map_err(|e| self.err(e))?;
        }
        writer.finish().map_err(|e| self.err(e))?;
        let mut options = IngestExternalFileOptions::default();
        // The file is ours and used once: RocksDB takes it over instead of copying it.
        options.set_move_files(true);
        self.db
            .ingest_external_file_opts(&options, vec![&path])
            .map_err(|e| self.err(e))
    }

    /// Forgets every state and offset (a rebuild's reset marker in the changelog).
    pub fn clear(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_range(STATE_PREFIX, STATE_END);
        batch.delete(NEXT_OFFSET);
        batch.delete(CHANGELOG_OFFSET);
        self.write(batch)
    }

    /// Ends a restore at the given offsets, in one write with the last states. The
    /// restored states, written without the WAL, are flushed to table files first: only
    /// then may the restore flag go.
    pub fn finish_restore<'a>(
        &self,
        states: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        position: Option<(i64, i64)>,
    ) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.err(e))?;
        let mut batch = WriteBatch::default();
        for (key, value) in states {
            match value {
                Some(value) => batch.put(state_key(key), value),
                None => batch.delete(state_key(key)),
            }
        }
        if let Some((next_offset, changelog_offset)) = position {
            batch.put(NEXT_OFFSET, next_offset.to_be_bytes());
            batch.put(CHANGELOG_OFFSET, changelog_offset.to_be_bytes());
        }
        batch.delete(RESTORING);
        self.write(batch)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        // The WAL (not fsync) is enough: a process crash keeps it, and a machine crash
        // that loses its tail only rewinds state and offset together, which replays
        // inputs whose outputs then repeat with the same deterministic ids.
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db.write_opt(batch, &options).map_err(|e| self.err(e))
    }

    /// Every entity key and state, in key order.
    pub fn states(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        self.states_with_prefix(&[])
    }

    /// The stored (key, value) pairs whose key starts with `prefix`, in key order.
    pub fn states_with_prefix<'s>(
        &'s self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 's {
        let start = state_key(prefix);
        self.db
            .prefix_iterator(start.clone())
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&start)))
            .map(|item| {
                item.map(|(k, v)| (k[STATE_PREFIX.len()..].to_vec(), v.to_vec()))
                    .map_err(|e| self.err(e))
            })
    }

    /// RocksDB's estimate of the number of keys, and of the live data size in bytes.
    pub fn estimates(&self) -> (u64, u64) {
        let prop = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        (
            prop("rocksdb.estimate-num-keys"),
            prop("rocksdb.estimate-live-data-size") + prop("rocksdb.cur-size-all-mem-tables"),
        )
    }
}

/// Writes a restore's states into a [`PartitionStore`], in the order they come, without
/// moving the store's offsets (only [`PartitionStore::finish_restore`] makes them the
/// store's state). Consecutive writes are gathered, up to [`INGEST_CHUNK_BYTES`], sorted by
/// key (the last state of a key wins) and ingested as a table file; a small remainder at
/// the end goes through the memtable.
pub struct RestoreWriter<S: Deref<Target = PartitionStore>> {
    store: S,
    pending: Vec<States>,
    pending_bytes: usize,
    chunk_bytes: usize,
    files: u32,
}

impl<S: Deref<Target = PartitionStore>> RestoreWriter<S> {
    /// A writer into `store` (borrowed, or shared with the restore that reads for it).
    pub fn new(store: S) -> Self {
        Self {
            store,
            pending: Vec::new(),
            pending_bytes: 0,
            chunk_bytes: INGEST_CHUNK_BYTES,
            files: 0,
        }
    }

    /// Writes these states (a `None` value deletes the key), after every earlier one.
    pub fn write(&mut self, states: States) -> Result<(), StoreError> {
        self.pending_bytes += states.size();
        self.pending.push(states);
        if self.pending_bytes >= self.chunk_bytes {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Forgets every state and offset: the writes before it as well.
    pub fn clear(&mut self) -> Result<(), StoreError> {
        self.pending.clear();
        self.pending_bytes = 0;
        self.store.clear()
    }

    /// Writes what is still gathered. The states are in the store afterwards (not yet
    /// flushed: `finish_restore` does that).
    /// Returns the store.
    pub fn finish(mut self) -> Result<S, StoreError> {
        if self.pending.iter().map(States::len).sum::<usize>() < INGEST_MIN_STATES {
            for states in std::mem::take(&mut self.pending) {
                self.store.write_restored(&states)?;
            }
        } else {
            self.write_pending()?;
        }
        Ok(self.store)
    }

    fn write_pending(&mut self) -> Result<(), StoreError> {
        let chunks = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let order = latest_in_key_order(&chunks);
        self.files += 1;
        self.store.ingest_restored(
            order.iter().map(|&at| {
                let (chunk, i) = unpack(at);
                chunks[chunk].get(i)
            }),
            self.files,
        )
    }
}

/// A state's place in a restore's gathered writes: (chunk, index) in one number, in write
/// order.
fn pack(chunk: usize, i: usize) -> u64 {
    ((chunk as u64) << 32) | i as u64
}

fn unpack(at: u64) -> (usize, usize) {
    ((at >> 32) as usize, (at & u64::from(u32::MAX)) as usize)
}

/// The places in `chunks` of each key's last state, in key order.
///
/// Comparing keys in place costs a cache miss per comparison, and sorting that way cost
/// more than building the table file. This sorts small entries that compare in cache
/// instead: 8 bytes of the key from a depth on (starting after the prefix all keys share),
/// how many bytes the key has there, and the place; runs of keys that agree on those 8
/// bytes and go on are sorted again on the next 8 (a most-significant-digit radix sort
/// with 8-byte digits). Equal keys end up by place, the last written last.
fn latest_in_key_order(chunks: &[States]) -> Vec<u64> {
    let key = |at: u64| {
        let (chunk, i) = unpack(at);
        chunks[chunk].key(i)
    };
    let mut order: Vec<Digit> = chunks
        .iter()
        .enumerate()
        .flat_map(|(chunk, states)| {
            (0..states.len()).map(move |i| Digit {
                bytes: 0,
                taken: 0,
                at: pack(chunk, i),
            })
        })
        .collect();
    let Some(first) = order.first().map(|d| key(d.at)) else {
        return Vec::new();
    };
    let shared = order.iter().fold(first.len(), |shared, digit| {
        first[..shared]
            .iter()
            .zip(key(digit.at))
            .take_while(|(a, b)| a == b)
            .count()
    });
    let mut latest = Vec::with_capacity(order.len());
    sort_from(&key, &mut order, shared, &mut latest);
    latest
}

/// One key's digit at a depth, for [`latest_in_key_order`]. Field order is sort order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Digit {
    /// The key's 8 bytes from the depth on, zero-padded, big-endian.
    bytes: u64,
    /// How many key bytes the digit holds, 9 if the key goes on after them: of two keys
    /// whose padded bytes agree, the shorter sorts first.
    taken: u8,
    at: u64,
}

/// Sorts `order` (keys that agree on their first `depth` bytes) by key, then place, and
/// appends the place of each key's last state to `latest`, in key order.
fn sort_from<'k>(
    key: &impl Fn(u64) -> &'k [u8],
    order: &mut [Digit],
    depth: usize,
    latest: &mut Vec<u64>,
) {
    for digit in order.iter_mut() {
        let rest = key(digit.at).get(depth..).unwrap_or_default();
        let n = rest.len().min(8);
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(&rest[..n]);
        digit.bytes = u64::from_be_bytes(bytes);
        digit.taken = if rest.len() > 8 { 9 } else { n as u8 };
    }
    order.sort_unstable();
    let mut start = 0;
    while start < order.len() {
        let (bytes, taken) = (order[start].bytes, order[start].taken);
        let end = start
            + order[start..]
                .iter()
                .take_while(|d| d.bytes == bytes && d.taken == taken)
                .count();
        if taken == 9 && end - start > 1 {
            sort_from(key, &mut order[start..end], depth + 8, latest);
        } else {
            // One key, or keys that ended within the digit: equal, and by place.
            latest.push(order[end - 1].at);
        }
        start = end;
    }
}

fn state_key(key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(STATE_PREFIX.len() + key.len());
    full.extend_from_slice(STATE_PREFIX);
    full.extend_from_slice(key);
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_offset_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = PartitionStore::open(dir.path()).unwrap();
            assert_eq!(store.next_offset().unwrap(), None);
            store
                .commit([(&b"acme/pipeline/web"[..], &b"state-1"[..])], 7, Some(3))
                .unwrap();
            store
                .commit(
                    [
                        (&b"acme/pipeline/web"[..], &b"state-2"[..]),
                        (&b"acme/agent/a"[..], &b"agent"[..]),
                    ],
                    9,
                    None,
                )
                .unwrap();
        }
        let store = PartitionStore::open(dir.path()).unwrap();
        assert_eq!(store.next_offset().unwrap(), Some(9));
        assert_eq!(store.changelog_offset().unwrap(), None);
        assert_eq!(
            store.get(b"acme/pipeline/web").unwrap().as_deref(),
            Some(&b"state-2"[..])
        );
        assert_eq!(store.get(b"nope").unwrap(), None);
        let all: Vec<_> = store.states().map(Result::unwrap).collect();
        assert_eq!(
            all,
            vec![
                (b"acme/agent/a".to_vec(), b"agent".to_vec()),
                (b"acme/pipeline/web".to_vec(), b"state-2".to_vec()),
            ]
        );
    }

    #[test]
    fn an_interrupted_restore_is_wiped_and_a_finished_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = PartitionStore::open(dir.path()).unwrap();
            store
                .commit([(&b"a"[..], &b"old"[..])], 5, Some(10))
                .unwrap();
            store.begin_restore().unwrap();
            let mut writer = store.restore_writer();
            writer.write(one(b"b", Some(b"new"))).unwrap();
            writer.finish().unwrap();
        } // crash before finish_restore
        {
            let store = PartitionStore::open(dir.path()).unwrap();
            assert_eq!(store.next_offset().unwrap(), None);
            assert_eq!(store.states().count(), 0);
            store
                .commit([(&b"a"[..], &b"old"[..])], 5, Some(10))
                .unwrap();
            store.begin_restore().unwrap();
            let mut writer = store.restore_writer();
            writer.clear().unwrap();
            writer.write(one(b"b", Some(b"new"))).unwrap();
            writer.finish().unwrap();
            store
                .finish_restore(
                    [(&b"c"[..], Some(&b"c"[..])), (&b"b"[..], None)],
                    Some((8, 20)),
                )
                .unwrap();
        }
        let store = PartitionStore::open(dir.path()).unwrap();
        assert_eq!(store.next_offset().unwrap(), Some(8));
        assert_eq!(store.changelog_offset().unwrap(), Some(20));
        let all: Vec<_> = store.states().map(Result::unwrap).collect();
        assert_eq!(all, vec![(b"c".to_vec(), b"c".to_vec())]);
    }

    /// `n` distinct keys, `k00000`…, with values `v<i>-<round>`.
    fn states(range: std::ops::Range<usize>, round: &str) -> States {
        let mut states = States::default();
        for i in range {
            states.push(
                format!("k{i:05}").as_bytes(),
                Some(format!("v{i}-{round}").as_bytes()),
            );
        }
        states
    }

    fn one(key: &[u8], value: Option<&[u8]>) -> States {
        let mut states = States::default();
        states.push(key, value);
        states
    }

    #[test]
    fn a_large_restore_is_ingested_in_order_over_what_the_store_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = PartitionStore::open(dir.path()).unwrap();
        // Before the restore: keys the changelog later deletes, overwrites and leaves alone.
        store
            .commit(
                [
                    (&b"k00001"[..], &b"old"[..]),
                    (&b"k25000"[..], &b"old"[..]),
                    (&b"zzz"[..], &b"kept"[..]),
                ],
                3,
                Some(1),
            )
            .unwrap();
        store.begin_restore().unwrap();
        let mut writer = store.restore_writer();
        writer.chunk_bytes = 64 * 1024; // several table files
        for piece in 0..3 {
            let start = piece * 10_000;
            writer.write(states(start..start + 10_000, "a")).unwrap();
        }
        // Later writes win, also when a key comes twice in one chunk and across chunks.
        writer.write(states(10_000..20_000, "b")).unwrap();
        writer.write(states(15_000..16_000, "c")).unwrap();
        writer.write(one(b"k25000", None)).unwrap();
        // A small remainder: through the memtable, still after the ingested files.
        writer.write(states(0..100, "d")).unwrap();
        assert_eq!(writer.files, 4, "table files");
        writer.finish().unwrap();
        store.finish_restore([], Some((40, 50))).unwrap();
        drop(store);

        let store = PartitionStore::open(dir.path()).unwrap();
        assert_eq!(store.next_offset().unwrap(), Some(40));
        let all: std::collections::BTreeMap<_, _> = store
            .states()
            .map(Result::unwrap)
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(all.len(), 30_000, "29,999 restored keys and zzz");
        assert_eq!(all.get("k25000"), None);
        assert_eq!(all["k00001"], "v1-d");
        assert_eq!(all["k00000"], "v0-d");
        assert_eq!(all["k00002"], "v2-d");
        assert_eq!(all["k00100"], "v100-a");
        assert_eq!(all["k10000"], "v10000-b");
        assert_eq!(all["k15500"], "v15500-c");
        assert_eq!(all["k29999"], "v29999-a");
        assert_eq!(all["zzz"], "kept");
        // The table files were taken over, not left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join(INGEST_DIR))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_clear_drops_the_gathered_states_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = PartitionStore::open(dir.path()).unwrap();
        store
            .commit([(&b"old"[..], &b"x"[..])], 3, Some(1))
            .unwrap();
        store.begin_restore().unwrap();
        let mut writer = store.restore_writer();
        writer.write(states(0..20_000, "before")).unwrap();
        writer.clear().unwrap();
        writer.write(states(5..15_005, "after")).unwrap();
        writer.finish().unwrap();
        store.finish_restore([], Some((9, 9))).unwrap();
        let all: Vec<_> = store.states().map(Result::unwrap).collect();
        assert_eq!(all.len(), 15_000);
        assert_eq!(all[0], (b"k00005".to_vec(), b"v5-after".to_vec()));
    }

    #[test]
    fn the_latest_state_of_each_key_in_key_order() {
        // Keys that share prefixes of every length, are prefixes of each other, contain
        // NUL bytes and repeat; the reference is a map that keeps the last write.
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut chunks = vec![States::default(); 3];
        let mut reference = std::collections::BTreeMap::new();
        for i in 0..6_000 {
            let mut key = b"acme/pipeline/".to_vec();
            for _ in 0..next() % 12 {
                key.push(b"ab\0z"[(next() % 4) as usize]);
            }
            let chunk = i / 2_000;
            reference.insert(key.clone(), pack(chunk, chunks[chunk].len()));
            chunks[chunk].push(&key, Some(i.to_string().as_bytes()));
        }
        let order = latest_in_key_order(&chunks);
        assert!(order.len() < 6_000, "some keys repeat");
        assert_eq!(order, reference.into_values().collect::<Vec<_>>());
        assert!(latest_in_key_order(&[]).is_empty());
    }
}
