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

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::state::StoredTime;

/// The key the clock is stored under, beside the keys' states, in the store and in the
/// changelog. It cannot be a routing key: those never start with a NUL byte.
pub const CLOCK_KEY: &[u8] = b"\0hookfold/clock";

/// The watermark and the timers of one input partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    watermark: Option<StoredTime>,
    /// `(deadline, routing key)`, ordered by deadline first.
    timers: BTreeSet<(StoredTime, Vec<u8>)>,
}

impl PartitionClock {
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

    pub(crate) fn now(&self) -> StoredTime {
        self.watermark.unwrap_or_default()
    }

    /// Moves the watermark to `time` if that is later; returns whether it moved.
    pub(crate) fn advance(&mut self, time: StoredTime) -> bool {
        if self.watermark.is_some_and(|watermark| watermark >= time) {
            return false;
        }
        self.watermark = Some(time);
        true
    }

    /// Replaces `key`'s deadlines `before` with `after` in the index.
    pub(crate) fn reschedule(&mut self, key: &[u8], before: &[StoredTime], after: &[StoredTime]) {
        if before == after {
            return;
        }
        for deadline in before {
            self.timers.remove(&(*deadline, key.to_vec()));
        }
        for deadline in after {
            self.timers.insert((*deadline, key.to_vec()));
        }
    }

    /// Takes the earliest timer that is due (deadline at or before the watermark) out of the
    /// index and returns its key.
    pub(crate) fn pop_due(&mut self) -> Option<Vec<u8>> {
        let now = self.watermark?;
        let (deadline, _) = self.timers.first()?;
        if *deadline > now {
            return None;
        }
        self.timers.pop_first().map(|(_, key)| key)
    }
}
