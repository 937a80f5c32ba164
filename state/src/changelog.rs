//! The changelog topic's records (`<group>.state`), and how a partition's sequence of them
//! becomes store writes. Pure: the Kafka reader is `hookfold_processor::changelog`, the
//! writer the processor's engine.
//!
//! Changelog partition `p` belongs to input partition `p`. It holds three kinds of record:
//! - a **state**: key = entity key, value = encoded state (the store's value), header
//!   `hookfold_next_offset` = the input offset the state is at after its batch;
//! - a **batch marker** (key [`BATCH_MARKER_KEY`]): the last record of every committed
//!   batch; its header says where the batch left the input partition. States after the last
//!   marker belong to a batch whose commit failed, and are not restored;
//! - a **reset marker** (key [`RESET_MARKER_KEY`]), written by `hookfold-processor rebuild`:
//!   the state starts again from nothing here.
//!
//! Invariants of [`Replay`], whatever the records: the store's position never moves
//! backwards except through a reset, at most [`MAX_PENDING`] states are held back at a time,
//! and after [`Replay::finish`] every state pushed was counted once, as applied or skipped.

/// Header of every changelog record: the input offset the partition's state is at after
/// the batch that wrote it (the next offset to read).
pub const NEXT_OFFSET_HEADER: &str = "hookfold_next_offset";
/// Key of the batch markers. The NUL byte keeps it apart from every entity key (the
/// gateway's routing keys start with a configured source id).
pub const BATCH_MARKER_KEY: &[u8] = b"\0hookfold/batch";
/// Key of the reset markers written by a rebuild.
pub const RESET_MARKER_KEY: &[u8] = b"\0hookfold/reset";

/// States held back until their batch marker arrives before they are written anyway
/// (a compacted changelog keeps only the last marker, so everything before it arrives
/// as one long batch; memory stays bounded, the restore flag keeps it crash-safe).
pub const MAX_PENDING: usize = 100_000;

/// A changelog record that is not one the processor wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("changelog offset {offset}: no valid `{NEXT_OFFSET_HEADER}` header")]
    Header { offset: i64 },
}

/// A changelog record as read, borrowing its key and value from the consumer's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangelogRecord<'a> {
    State {
        key: &'a [u8],
        /// `None`: a tombstone (the key has no state).
        value: Option<&'a [u8]>,
        next_offset: i64,
    },
    Batch {
        next_offset: i64,
    },
    Reset,
}

impl<'a> ChangelogRecord<'a> {
    /// Reads a changelog record from its key, value and `hookfold_next_offset` header.
    pub fn read(
        offset: i64,
        key: &'a [u8],
        value: Option<&'a [u8]>,
        next_offset_header: Option<&[u8]>,
    ) -> Result<Self, RecordError> {
        if key == RESET_MARKER_KEY {
            return Ok(Self::Reset);
        }
        let next_offset = next_offset_header
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or(RecordError::Header { offset })?;
        if key == BATCH_MARKER_KEY {
            return Ok(Self::Batch { next_offset });
        }
        Ok(Self::State {
            key,
            value,
            next_offset,
        })
    }
}

/// Entity states (key, and value or `None` for a deletion) packed into one buffer: a
/// restore moves a million of them from the reader to the writer thread, and two
/// allocations per state, made on one thread and freed on the other, cost more than the
/// rest of the replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct States {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    start: usize,
    key_len: u32,
    /// `None`: a deletion.
    value_len: Option<u32>,
}

impl States {
    /// Room for states like `like`'s without growing.
    pub fn with_capacity_of(like: &States) -> Self {
        Self {
            bytes: Vec::with_capacity(like.bytes.capacity()),
            entries: Vec::with_capacity(like.entries.capacity()),
        }
    }

    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        if let Some(value) = value {
            self.bytes.extend_from_slice(value);
        }
        // A Kafka record is far below 4 GiB: its key and value lengths fit.
        self.entries.push(Entry {
            start,
            key_len: key.len() as u32,
            value_len: value.map(|v| v.len() as u32),
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// State `i` (in push order): its key, and its value or `None` for a deletion.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> (&[u8], Option<&[u8]>) {
        let entry = self.entries[i];
        let key_end = entry.start + entry.key_len as usize;
        let value = entry
            .value_len
            .map(|len| &self.bytes[key_end..key_end + len as usize]);
        (&self.bytes[entry.start..key_end], value)
    }

    /// The key of state `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn key(&self, i: usize) -> &[u8] {
        let entry = self.entries[i];
        &self.bytes[entry.start..entry.start + entry.key_len as usize]
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// What the store must do after a changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Write these states (a `None` value deletes) and, if given, move the store to
    /// (next input offset, changelog offset of the marker).
    States {
        states: States,
        position: Option<(i64, i64)>,
    },
    /// Forget every state (a reset marker).
    Clear,
}

/// Folds changelog records into store writes, starting from a store at `position` (its
/// next input offset, `None` for an empty store). Pure: no I/O.
#[derive(Debug, Default)]
pub struct Replay {
    position: Option<i64>,
    marker: Option<i64>,
    pending: States,
    /// The `hookfold_next_offset` of each pending state.
    pending_next_offsets: Vec<i64>,
    /// States written so far.
    pub applied: u64,
    /// States not written: from batches the store already has, or past the last marker.
    pub skipped: u64,
}

impl Replay {
    pub fn new(position: Option<i64>) -> Self {
        Self {
            position,
            ..Self::default()
        }
    }

    /// The store's position after the writes so far: (next input offset, changelog offset
    /// of the last applied marker).
    pub fn position(&self) -> Option<(i64, i64)> {
        Some((self.position?, self.marker?))
    }

    pub fn push(&mut self, offset: i64, record: ChangelogRecord<'_>) -> Option<Write> {
        match record {
            ChangelogRecord::State {
                key,
                value,
                next_offset,
            } => {
                self.pending.push(key, value);
                self.pending_next_offsets.push(next_offset);
                if self.pending.len() >= MAX_PENDING {
                    let states = self.take_pending(i64::MAX);
                    return Some(Write::States {
                        states,
                        position: None,
                    });
                }
                None
            }
            ChangelogRecord::Batch { next_offset } => {
                // A batch at or after the store's position: the store takes it. One before
                // it (the store already holds a later state) changes nothing.
                if self.position.is_none_or(|at| next_offset >= at) {
                    let states = self.take_pending(next_offset);
                    self.position = Some(next_offset);
                    self.marker = Some(offset);
                    Some(Write::States {
                        states,
                        position: Some((next_offset, offset)),
                    })
                } else {
                    self.drop_pending();
                    None
                }
            }
            ChangelogRecord::Reset => {
                self.drop_pending();
                self.position = None;
                self.marker = None;
                Some(Write::Clear)
            }
        }
    }

    /// The end of the changelog: states after the last marker belong to a batch that was
    /// never committed, and are dropped.
    pub fn finish(&mut self) {
        self.drop_pending();
    }

    fn drop_pending(&mut self) {
        self.skipped += self.pending.len() as u64;
        self.pending = States::default();
        self.pending_next_offsets.clear();
    }

    /// Pending states up to input offset `upto`; later ones come from a batch whose commit
    /// failed (a redone batch re-wrote what counts).
    fn take_pending(&mut self, upto: i64) -> States {
        let next_offsets = std::mem::take(&mut self.pending_next_offsets);
        let pending = std::mem::take(&mut self.pending);
        // The next pending states will be about as many as these.
        self.pending = States::with_capacity_of(&pending);
        self.pending_next_offsets = Vec::with_capacity(next_offsets.capacity());
        let states = if next_offsets.iter().all(|&next| next <= upto) {
            pending
        } else {
            let mut kept = States::default();
            for (i, &next) in next_offsets.iter().enumerate() {
                if next <= upto {
                    let (key, value) = pending.get(i);
                    kept.push(key, value);
                }
            }
            self.skipped += (pending.len() - kept.len()) as u64;
            kept
        };
        self.applied += states.len() as u64;
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state<'a>(key: &'a str, value: &'a str, next_offset: i64) -> ChangelogRecord<'a> {
        ChangelogRecord::State {
            key: key.as_bytes(),
            value: Some(value.as_bytes()),
            next_offset,
        }
    }

    /// The states (as text) and position of a `Write::States`.
    type Written = (Vec<(String, String)>, Option<(i64, i64)>);

    fn written(write: Option<Write>) -> Written {
        match write {
            Some(Write::States { states, position }) => (
                states
                    .iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8(k.to_vec()).unwrap(),
                            String::from_utf8(v.unwrap_or_default().to_vec()).unwrap(),
                        )
                    })
                    .collect(),
                position,
            ),
            other => panic!("expected states, got {other:?}"),
        }
    }

    #[test]
    fn records_are_read_by_key_and_header() {
        assert_eq!(
            ChangelogRecord::read(0, BATCH_MARKER_KEY, Some(b"x"), Some(b"42")).unwrap(),
            ChangelogRecord::Batch { next_offset: 42 }
        );
        assert_eq!(
            ChangelogRecord::read(0, RESET_MARKER_KEY, None, None).unwrap(),
            ChangelogRecord::Reset
        );
        assert_eq!(
            ChangelogRecord::read(3, b"k", None, Some(b"7")).unwrap(),
            ChangelogRecord::State {
                key: b"k",
                value: None,
                next_offset: 7
            }
        );
        assert!(matches!(
            ChangelogRecord::read(3, b"k", Some(b"v"), Some(b"seven")),
            Err(RecordError::Header { offset: 3 })
        ));
        assert!(ChangelogRecord::read(3, b"k", Some(b"v"), None).is_err());
    }

    #[test]
    fn packed_states_keep_keys_values_and_deletions_apart() {
        let mut states = States::default();
        states.push(b"a", Some(b"1"));
        states.push(b"", Some(b""));
        states.push(b"bb", None);
        states.push(b"c", Some(b"333"));
        assert_eq!(states.len(), 4);
        assert_eq!(states.size(), 1 + 1 + 2 + 4);
        assert_eq!(
            states.iter().collect::<Vec<_>>(),
            vec![
                (&b"a"[..], Some(&b"1"[..])),
                (&b""[..], Some(&b""[..])),
                (&b"bb"[..], None),
                (&b"c"[..], Some(&b"333"[..])),
            ]
        );
        assert_eq!(states.key(3), b"c");
    }

    #[test]
    fn a_batch_is_written_when_its_marker_arrives() {
        let mut replay = Replay::new(None);
        assert_eq!(replay.push(0, state("a", "a1", 10)), None);
        assert_eq!(replay.push(1, state("b", "b1", 10)), None);
        let (states, position) =
            written(replay.push(2, ChangelogRecord::Batch { next_offset: 10 }));
        assert_eq!(
            states,
            vec![("a".into(), "a1".into()), ("b".into(), "b1".into())]
        );
        assert_eq!(position, Some((10, 2)));
        assert_eq!(replay.position(), Some((10, 2)));
    }

    #[test]
    fn states_after_the_last_marker_are_dropped() {
        let mut replay = Replay::new(None);
        replay.push(0, state("a", "a1", 10));
        replay.push(1, ChangelogRecord::Batch { next_offset: 10 });
        // A batch whose commit failed: its marker never came.
        replay.push(2, state("a", "a2", 20));
        replay.finish();
        assert_eq!(replay.position(), Some((10, 1)));
        assert_eq!((replay.applied, replay.skipped), (1, 1));
    }

    #[test]
    fn a_failed_batchs_states_are_not_taken_by_an_earlier_redo() {
        // Batch [10, 20) failed after writing `a`; the redo committed [10, 15) only.
        let mut replay = Replay::new(Some(10));
        replay.push(5, state("a", "a@20", 20));
        replay.push(6, state("b", "b@15", 15));
        let (states, position) =
            written(replay.push(7, ChangelogRecord::Batch { next_offset: 15 }));
        assert_eq!(states, vec![("b".into(), "b@15".into())]);
        assert_eq!(position, Some((15, 7)));
        assert_eq!(replay.skipped, 1);
    }

    #[test]
    fn batches_the_store_already_has_are_skipped() {
        let mut replay = Replay::new(Some(30));
        replay.push(0, state("a", "old", 10));
        assert_eq!(
            replay.push(1, ChangelogRecord::Batch { next_offset: 10 }),
            None
        );
        replay.push(2, state("a", "same", 30));
        let (states, _) = written(replay.push(3, ChangelogRecord::Batch { next_offset: 30 }));
        assert_eq!(states, vec![("a".into(), "same".into())]);
        replay.push(4, state("a", "new", 40));
        let (states, position) =
            written(replay.push(5, ChangelogRecord::Batch { next_offset: 40 }));
        assert_eq!(states, vec![("a".into(), "new".into())]);
        assert_eq!(position, Some((40, 5)));
    }

    #[test]
    fn a_reset_starts_over_and_later_batches_apply_from_their_start() {
        let mut replay = Replay::new(None);
        replay.push(0, state("a", "old", 100));
        replay.push(1, ChangelogRecord::Batch { next_offset: 100 });
        replay.push(2, state("x", "dangling", 120));
        assert_eq!(replay.push(3, ChangelogRecord::Reset), Some(Write::Clear));
        assert_eq!(replay.position(), None);
        // The rebuild's batches start again from the beginning of the input.
        replay.push(4, state("a", "rebuilt", 5));
        let (states, position) = written(replay.push(5, ChangelogRecord::Batch { next_offset: 5 }));
        assert_eq!(states, vec![("a".into(), "rebuilt".into())]);
        assert_eq!(position, Some((5, 5)));
    }

    #[test]
    fn a_long_unmarked_run_is_written_in_bounded_pieces() {
        let mut replay = Replay::new(None);
        let mut pieces = 0;
        for i in 0..(MAX_PENDING * 2 + 5) {
            let key = format!("k{i}");
            if let Some(Write::States { states, position }) =
                replay.push(i as i64, state(&key, "v", 1))
            {
                assert_eq!(states.len(), MAX_PENDING);
                assert_eq!(position, None);
                pieces += 1;
            }
        }
        assert_eq!(pieces, 2);
        let (states, _) = written(replay.push(
            (MAX_PENDING * 2 + 5) as i64,
            ChangelogRecord::Batch { next_offset: 1 },
        ));
        assert_eq!(states.len(), 5);
    }
}
