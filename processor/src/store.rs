//! One RocksDB store per assigned input partition. A partition's entity states and the
//! next input offset to read are written together in one `WriteBatch`, so after any
//! crash the store is a state that some prefix of the partition produced, and that
//! prefix's end is where reading resumes.

use std::path::{Path, PathBuf};

use rocksdb::{DB, Options, WriteBatch, WriteOptions};

const STATE_PREFIX: &[u8] = b"s/";
const NEXT_OFFSET: &[u8] = b"m/next_offset";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB at {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("RocksDB at {path}: stored next offset is corrupt")]
    CorruptOffset { path: PathBuf },
}

pub struct PartitionStore {
    db: DB,
    path: PathBuf,
}

impl PartitionStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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
        match self.db.get(NEXT_OFFSET).map_err(|e| self.err(e))? {
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

    /// Writes the states and the next offset atomically.
    pub fn commit<'a>(
        &self,
        states: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        next_offset: i64,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (key, value) in states {
            batch.put(state_key(key), value);
        }
        batch.put(NEXT_OFFSET, next_offset.to_be_bytes());
        // The WAL (not fsync) is enough: a process crash keeps it, and a machine crash
        // that loses its tail only rewinds state and offset together, which replays
        // inputs whose outputs then repeat with the same deterministic ids.
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db.write_opt(batch, &options).map_err(|e| self.err(e))
    }

    /// Every entity key and state, in key order.
    pub fn states(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        self.db
            .prefix_iterator(STATE_PREFIX)
            .take_while(|item| {
                item.as_ref()
                    .map_or(true, |(k, _)| k.starts_with(STATE_PREFIX))
            })
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
    use super::*;

    #[test]
    fn states_and_offset_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = PartitionStore::open(dir.path()).unwrap();
            assert_eq!(store.next_offset().unwrap(), None);
            store
                .commit([(&b"acme/pipeline/web"[..], &b"state-1"[..])], 7)
                .unwrap();
            store
                .commit(
                    [
                        (&b"acme/pipeline/web"[..], &b"state-2"[..]),
                        (&b"acme/agent/a"[..], &b"agent"[..]),
                    ],
                    9,
                )
                .unwrap();
        }
        let store = PartitionStore::open(dir.path()).unwrap();
        assert_eq!(store.next_offset().unwrap(), Some(9));
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
}
