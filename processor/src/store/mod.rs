//! One RocksDB store per assigned input partition. A partition's entity states and the
//! next input offset to read are written together in one `WriteBatch`, so after any
//! crash the store is a state that some prefix of the partition produced, and that
//! prefix's end is where reading resumes.

use std::path::{Path, PathBuf};

use hookfold_state::changelog::States;

mod key_order;
mod restore_writer;

pub use restore_writer::RestoreWriter;
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

fn state_key(key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(STATE_PREFIX.len() + key.len());
    full.extend_from_slice(STATE_PREFIX);
    full.extend_from_slice(key);
    full
}

#[cfg(test)]
mod tests {
    use super::restore_writer::tests::one;
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
}
