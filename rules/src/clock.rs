//! A partition's clock: the event time the rules see, and its timers indexed by deadline.
//!
//! Time for the rules is the partition's **watermark**: the highest `ce_time` folded so far
//! on that input partition (webhooks and `hookfold.tick` records alike). It only depends on
//! the records and their order, so a replay (restart, restore, `rebuild`) moves it exactly
//! as the first run did, and fires the same timers at the same log positions.
//!
//! Invariants, kept by [`crate::fold`]: the watermark never moves backwards; the index holds
//! `(deadline, key)` for exactly the deadlines that key's state holds (every key `fold`
//! touches is rescheduled), so advancing the watermark visits only the keys that are due,
//! never every key; no deadline in the index is at or before the watermark once a record
//! is folded (what is due has fired).
//!
//! Stored, the clock is the watermark under [`CLOCK_KEY`] and one key per timer under
//! [`TIMER_PREFIX`] (deadline, then routing key), beside the keys' states: a batch writes
//! only the timers it added or removed ([`PartitionClock::take_changes`]), however many wait.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::state::StoredTime;

/// The key the watermark is stored under, beside the keys' states, in the store and in the
/// changelog. It cannot be a routing key: those never start with a NUL byte.
pub const CLOCK_KEY: &[u8] = b"\0hookfold/clock";

/// Every key the processor keeps beside the keys' states (the watermark, the timers)
/// starts with this.
pub const RESERVED_PREFIX: &[u8] = b"\0hookfold/";

/// The prefix of the timers' keys: then the deadline (12 bytes that sort as the time does)
/// and the routing key of the state that holds it. The value is a single byte.
pub const TIMER_PREFIX: &[u8] = b"\0hookfold/timer/";

/// The value of a timer's key (a value at all: an empty one would be a tombstone).
pub const TIMER_VALUE: &[u8] = b"1";

/// What is stored under [`CLOCK_KEY`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredClock {
    watermark: Option<StoredTime>,
}

/// A store write the clock asks for: a timer key to put ([`TIMER_VALUE`]) or delete, or
/// the [`StoredClock`] to put under [`CLOCK_KEY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockWrite {
    Watermark(StoredClock),
    Timer { key: Vec<u8>, present: bool },
}

/// The watermark and the timers of one input partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionClock {
    watermark: Option<StoredTime>,
    /// `(deadline, routing key)`, ordered by deadline first.
    timers: BTreeSet<(StoredTime, Vec<u8>)>,
    /// Every timer added or removed since the last `take_changes`, with whether it is there
    /// now. A timer added and removed again is still written (as a deletion): a batch redone
    /// after a crash folds the same records first, so it writes every timer the failed batch
    /// wrote, and a restore that replays both ends with the redone batch's word on each.
    changes: BTreeMap<(StoredTime, Vec<u8>), bool>,
    watermark_moved: bool,
}

/// Two clocks are equal when their watermark and timers are; what is not yet written is
/// bookkeeping.
impl PartialEq for PartitionClock {
    fn eq(&self, other: &Self) -> bool {
        self.watermark == other.watermark && self.timers == other.timers
    }
}

impl Eq for PartitionClock {}

/// `deadline` as 12 bytes that sort as the times do: the seconds with the sign bit
/// flipped, big-endian, then the nanoseconds, big-endian.
fn timer_key(deadline: StoredTime, key: &[u8]) -> Vec<u8> {
    let (seconds, nanos) = deadline.parts();
    let mut out = Vec::with_capacity(TIMER_PREFIX.len() + 12 + key.len());
    out.extend_from_slice(TIMER_PREFIX);
    out.extend_from_slice(&((seconds as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(&nanos.to_be_bytes());
    out.extend_from_slice(key);
    out
}

fn parse_timer_key(stored: &[u8]) -> Option<(StoredTime, Vec<u8>)> {
    let rest = stored.strip_prefix(TIMER_PREFIX)?;
    let (seconds, rest) = rest.split_at_checked(8)?;
    let (nanos, key) = rest.split_at_checked(4)?;
    let seconds = (u64::from_be_bytes(seconds.try_into().ok()?) ^ (1 << 63)) as i64;
    let nanos = u32::from_be_bytes(nanos.try_into().ok()?);
    Some((StoredTime::from_parts(seconds, nanos)?, key.to_vec()))
}

/// A stored timer key read back: its deadline and the routing key of its state (for
/// `hookfold-processor state`); `None` for a key that is not a timer's.
pub fn read_timer_key(stored: &[u8]) -> Option<(OffsetDateTime, Vec<u8>)> {
    parse_timer_key(stored).map(|(deadline, key)| (deadline.to_offset_date_time(), key))
}

impl PartitionClock {
    /// The stored form of the watermark (what goes under [`CLOCK_KEY`]).
    pub fn stored(&self) -> StoredClock {
        StoredClock {
            watermark: self.watermark,
        }
    }

    /// The clock as stored: its watermark, and its timers' keys (see [`TIMER_PREFIX`]).
    /// Keys that are not timer keys are skipped; returns the clock and how many were.
    pub fn load<'k>(
        stored: Option<StoredClock>,
        timer_keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> (Self, usize) {
        let mut clock = Self {
            watermark: stored.and_then(|s| s.watermark),
            ..Self::default()
        };
        let mut skipped = 0;
        for key in timer_keys {
            match parse_timer_key(key) {
                Some(timer) => {
                    clock.timers.insert(timer);
                }
                None => skipped += 1,
            }
        }
        (clock, skipped)
    }

    /// The store writes that bring the stored clock to this one since the last call: the
    /// watermark if it moved, and the timers added or removed.
    pub fn take_changes(&mut self) -> Vec<ClockWrite> {
        let mut writes = Vec::new();
        if std::mem::take(&mut self.watermark_moved) {
            writes.push(ClockWrite::Watermark(StoredClock {
                watermark: self.watermark,
            }));
        }
        for ((deadline, key), present) in std::mem::take(&mut self.changes) {
            writes.push(ClockWrite::Timer {
                key: timer_key(deadline, &key),
                present,
            });
        }
        writes
    }

    /// The partition's event time: the highest `ce_time` folded, `None` before the first.
    pub fn watermark(&self) -> Option<OffsetDateTime> {
        self.watermark.map(StoredTime::to_offset_date_time)
    }

    /// How many timers are waiting.
    pub fn timers(&self) -> usize {
        self.timers.len()
    }

    /// The earliest deadline waiting, if any.
    pub fn next_deadline(&self) -> Option<OffsetDateTime> {
        self.timers
            .first()
            .map(|(deadline, _)| deadline.to_offset_date_time())
    }

    /// Moves the watermark to `time` if that is later; returns whether it moved.
    pub(crate) fn advance(&mut self, time: StoredTime) -> bool {
        if self.watermark.is_some_and(|watermark| watermark >= time) {
            return false;
        }
        self.watermark = Some(time);
        self.watermark_moved = true;
        true
    }

    fn remove(&mut self, timer: (StoredTime, Vec<u8>)) {
        if self.timers.remove(&timer) {
            self.changes.insert(timer, false);
        }
    }

    fn insert(&mut self, timer: (StoredTime, Vec<u8>)) {
        if self.timers.insert(timer.clone()) {
            self.changes.insert(timer, true);
        }
    }

    /// Replaces `key`'s deadlines `before` with `after` in the index.
    pub(crate) fn reschedule(&mut self, key: &[u8], before: &[StoredTime], after: &[StoredTime]) {
        if before == after {
            return;
        }
        for deadline in before {
            self.remove((*deadline, key.to_vec()));
        }
        for deadline in after {
            self.insert((*deadline, key.to_vec()));
        }
    }

    /// Takes the earliest timer that is due (deadline at or before the watermark) out of the
    /// index and returns its deadline and key.
    pub(crate) fn pop_due(&mut self) -> Option<(StoredTime, Vec<u8>)> {
        let now = self.watermark?;
        let (deadline, _) = self.timers.first()?;
        if *deadline > now {
            return None;
        }
        let timer = self.timers.first().cloned()?;
        self.remove(timer.clone());
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, nanos: u32) -> StoredTime {
        StoredTime::from_parts(seconds, nanos).unwrap()
    }

    #[test]
    fn timer_keys_sort_as_their_deadlines_and_read_back() {
        let times = [
            at(-5, 0),
            at(-1, 999_999_999),
            at(0, 0),
            at(0, 1),
            at(1_800_000_000, 5),
        ];
        let keys: Vec<Vec<u8>> = times.iter().map(|t| timer_key(*t, b"k")).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (time, key) in times.iter().zip(&keys) {
            assert_eq!(parse_timer_key(key), Some((*time, b"k".to_vec())));
        }
        assert_eq!(parse_timer_key(b"\0hookfold/timer/short"), None);
        assert_eq!(parse_timer_key(CLOCK_KEY), None);
    }

    #[test]
    fn only_what_changed_is_written_and_a_reload_is_the_same_clock() {
        let mut clock = PartitionClock::default();
        clock.advance(at(100, 0));
        clock.reschedule(b"a", &[], &[at(200, 0)]);
        clock.reschedule(b"b", &[], &[at(150, 0)]);
        // Added and removed in the same batch: written as a deletion (see `changes`).
        clock.reschedule(b"c", &[], &[at(300, 0)]);
        clock.reschedule(b"c", &[at(300, 0)], &[]);
        let writes = clock.take_changes();
        assert_eq!(writes.len(), 4, "{writes:?}");
        assert!(writes.contains(&ClockWrite::Timer {
            key: timer_key(at(300, 0), b"c"),
            present: false
        }));
        assert!(clock.take_changes().is_empty());
        let stored: Vec<Vec<u8>> = writes
            .iter()
            .filter_map(|w| match w {
                ClockWrite::Timer { key, present: true } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let watermark = writes.iter().find_map(|w| match w {
            ClockWrite::Watermark(s) => Some(s.clone()),
            _ => None,
        });
        let (loaded, skipped) = PartitionClock::load(watermark, stored.iter().map(Vec::as_slice));
        assert_eq!((loaded.clone(), skipped), (clock.clone(), 0));
        // A timer that fires is deleted.
        clock.advance(at(160, 0));
        assert_eq!(clock.pop_due(), Some((at(150, 0), b"b".to_vec())));
        let writes = clock.take_changes();
        assert!(writes.contains(&ClockWrite::Timer {
            key: timer_key(at(150, 0), b"b"),
            present: false
        }));
    }
}
