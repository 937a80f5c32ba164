//! `exactly_once`: a restored store against the group's committed offset (see
//! [`Restorer::reconcile`]), and the reads again of stores waiting behind it.

use std::time::Instant;

use super::{BEHIND_RETRY, Phase, Restorer};

impl Restorer {
    /// After the store is brought up to the changelog: `exactly_once` compares it with the
    /// group's committed offset. Equal is the rule.
    ///
    /// Behind: the committed batch is in the changelog, past the last stable offset, behind a
    /// transaction a crashed producer left open (its `transactional.id` used by nobody now):
    /// the changelog is read again until the broker has aborted that transaction and the
    /// store is up to the committed offset, for at most `settle`. If it is still behind then,
    /// the changelog lacks committed batches (its records deleted): the store is kept and the
    /// records after it are folded again, their incident events produced again with their ids.
    ///
    /// Ahead: cannot come from a transaction: the store is cleared and restored from the
    /// whole changelog, which holds committed batches only; if it is still ahead then, the
    /// changelog itself is (batches of `effectively_once`, whose group offsets lag, or offsets
    /// reset by hand), and the store is kept. Both conflicts are logged and counted.
    pub(super) fn reconcile(&mut self, partition: i32) {
        let Some(r) = self.restoring.get_mut(&partition) else {
            return;
        };
        let Some(Some(committed)) = r.committed else {
            return self.finish(partition);
        };
        let local = match r.store.next_offset() {
            Ok(local) => local.unwrap_or(0),
            Err(e) => return self.fail(partition, e.into()),
        };
        if local == committed {
            if r.settle_deadline.is_some() {
                tracing::info!(
                    partition,
                    committed,
                    "the store reached the committed offset once the open transaction ended"
                );
            }
            return self.finish(partition);
        }
        if local > committed {
            if r.cleared {
                self.metrics
                    .resume_conflicts
                    .with_label_values(&["ahead"])
                    .inc();
                tracing::warn!(
                    partition,
                    next_offset = local,
                    committed,
                    "the changelog is ahead of the group's committed offset too (batches \
                     committed under effectively_once, or group offsets reset by hand): \
                     resuming from the state"
                );
                return self.finish(partition);
            }
            tracing::warn!(
                partition,
                store_next_offset = local,
                committed,
                "the store is ahead of the group's committed offset; restoring it from the \
                 whole changelog"
            );
            r.cleared = true;
            if let Err(e) = r.store.clear() {
                return self.fail(partition, e.into());
            }
            return self.read(partition);
        }
        if r.cleared {
            return self.finish(partition);
        }
        let now = Instant::now();
        let deadline = match r.settle_deadline {
            Some(deadline) => deadline,
            None => {
                tracing::info!(
                    partition,
                    store_next_offset = local,
                    committed,
                    "the store is behind the committed offset and the changelog's readable end: \
                     waiting for the broker to end an open transaction (a crashed processor's)"
                );
                *r.settle_deadline.insert(now + self.settle)
            }
        };
        if now >= deadline {
            self.metrics
                .resume_conflicts
                .with_label_values(&["behind"])
                .inc();
            tracing::error!(
                partition,
                store_next_offset = local,
                committed,
                waited_ms = self.settle.as_millis() as u64,
                "the changelog does not reach the group's committed offset (its records were \
                 deleted?): resuming from the state, so the records in between are folded again \
                 and their incident events produced again, with the same ids"
            );
            return self.finish(partition);
        }
        r.phase = Phase::Waiting {
            until: now + BEHIND_RETRY,
        };
    }

    /// Reads again the partitions whose wait behind the committed offset is over.
    pub(super) fn retry_due(&mut self) {
        let now = Instant::now();
        let due: Vec<i32> = self
            .restoring
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Waiting { until } if until <= now))
            .map(|(p, _)| *p)
            .collect();
        for partition in due {
            self.read(partition);
        }
    }
}
