//! Restored states into a store: gathered, sorted by key (the last state of a key wins) and
//! ingested as table files, without moving the store's offsets until the restore finishes.

use std::ops::Deref;

use hookfold_state::changelog::States;

use super::key_order::{latest_in_key_order, unpack};
use super::{INGEST_CHUNK_BYTES, INGEST_MIN_STATES, PartitionStore, StoreError};

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::INGEST_DIR;

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

    pub(in crate::store) fn one(key: &[u8], value: Option<&[u8]>) -> States {
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
}
