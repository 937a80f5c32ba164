//! Delivery bookkeeping for the processor's producer: how many records of the current
//! batch were sent, how many the broker has settled (acked or refused), the first refusal,
//! and where each partition's batch marker landed.
//!
//! Invariants:
//! - a batch is complete only when every record sent in it is settled; `wait` returns
//!   then, or fails at its deadline;
//! - each record carries its batch's generation as its delivery opaque, and a report of
//!   another generation (a record of a batch given up after a timeout) never counts
//!   towards the current one.
//!
//! Why not `Producer::flush`: rust-rdkafka's flush polls the producer itself, in steps of
//! up to 100 ms, while a `ThreadedProducer`'s own thread takes the delivery reports, so
//! every flush lasted about 100 ms whatever the broker's latency (docs/BENCHMARKS.md).
//! Here the poll thread serves the reports and wakes the waiting batch as soon as the
//! last one is in.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{DeliveryResult, Message, ToBytes};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};

use crate::changelog::BATCH_MARKER_KEY;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(
        "the broker did not acknowledge {failed} record(s) of a batch; the first: {first_error}"
    )]
    Refused { failed: u64, first_error: String },
    #[error(
        "{outstanding} record(s) not acknowledged within {timeout:?}: the broker is unreachable or too slow"
    )]
    Timeout { outstanding: u64, timeout: Duration },
}

#[derive(Default)]
struct Batch {
    generation: usize,
    sent: u64,
    settled: u64,
    failed: u64,
    /// The first failure of the batch: later ones are often its consequences (e.g. the
    /// producer being torn down).
    first_error: Option<String>,
    markers: HashMap<i32, i64>,
}

#[derive(Default)]
pub struct DeliveryTracker {
    batch: Mutex<Batch>,
    settled: Condvar,
}

impl DeliveryTracker {
    fn batch(&self) -> MutexGuard<'_, Batch> {
        // A poisoned lock only means a panic elsewhere; the counters stay meaningful.
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new batch; returns its generation, to pass as each record's opaque.
    fn start_batch(&self) -> usize {
        let mut batch = self.batch();
        let generation = batch.generation.wrapping_add(1);
        *batch = Batch {
            generation,
            ..Batch::default()
        };
        generation
    }

    /// Counts a record the producer accepted for the current batch.
    fn sent(&self) {
        self.batch().sent += 1;
    }

    /// Waits until every record sent in the current batch is settled; fails if one was
    /// refused, or if some are still outstanding after `timeout`.
    fn wait(&self, timeout: Duration) -> Result<(), DeliveryError> {
        let deadline = Instant::now() + timeout;
        let mut batch = self.batch();
        while batch.settled < batch.sent {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DeliveryError::Timeout {
                    outstanding: batch.sent - batch.settled,
                    timeout,
                });
            }
            batch = self
                .settled
                .wait_timeout(batch, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if batch.failed > 0 {
            return Err(DeliveryError::Refused {
                failed: batch.failed,
                first_error: batch.first_error.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// The changelog offsets of the batch markers acked in the current batch, by partition.
    fn take_markers(&self) -> HashMap<i32, i64> {
        std::mem::take(&mut self.batch().markers)
    }
}

impl ClientContext for DeliveryTracker {}

/// A producer whose records are counted by batch: `start_batch`, `send` each record, then
/// `wait` for the broker to settle them all.
pub struct TrackedProducer {
    producer: ThreadedProducer<DeliveryTracker>,
    generation: usize,
}

impl TrackedProducer {
    /// A producer with `client`'s settings, its deliveries counted by batch.
    pub fn create(client: &ClientConfig) -> KafkaResult<Self> {
        Ok(Self {
            producer: client.create_with_context(DeliveryTracker::default())?,
            generation: 0,
        })
    }

    pub fn start_batch(&mut self) {
        self.generation = self.producer.context().start_batch();
    }

    /// Hands a record to the producer, waiting while its local queue is full.
    pub fn send<K, P>(&self, record: BaseRecord<'_, K, P>) -> Result<(), KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let mut record = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: self.generation,
        };
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.producer.context().sent();
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full of records awaiting acks: let them drain.
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// See [`DeliveryTracker::wait`].
    pub fn wait(&self, timeout: Duration) -> Result<(), DeliveryError> {
        self.producer.context().wait(timeout)
    }

    pub fn take_markers(&self) -> HashMap<i32, i64> {
        self.producer.context().take_markers()
    }

    /// The producer's fatal error, if it has one (e.g. fenced by a newer producer with its
    /// `transactional.id`): it can produce nothing more.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{reason} ({code:?})"))
    }
}

/// A [`TrackedProducer`] created with a `transactional.id`: every batch is one transaction,
/// committed together with the consumer's input offsets (KIP-447).
///
/// Invariant: between [`Transactional::begin`] and a successful
/// [`Transactional::commit`], nothing this producer sent is visible to a `read_committed`
/// reader; after [`Transactional::abort`], none of it ever is.
pub struct Transactional {
    pub producer: TrackedProducer,
    pub transactional_id: String,
    timeout: Duration,
}

impl Transactional {
    /// Creates the producer and registers its `transactional.id` with the coordinator,
    /// which aborts what an earlier producer with this id left open and fences it.
    pub fn create(client: &ClientConfig, timeout: Duration) -> KafkaResult<Self> {
        let producer = TrackedProducer::create(client)?;
        producer.producer.init_transactions(timeout)?;
        Ok(Self {
            transactional_id: client.get("transactional.id").unwrap_or_default().into(),
            producer,
            timeout,
        })
    }

    pub fn begin(&self) -> KafkaResult<()> {
        self.producer.producer.begin_transaction()
    }

    /// Adds the next input offsets to the transaction, as the group member `group` (a
    /// member of an older generation is refused: a zombie cannot commit).
    pub fn send_offsets(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> KafkaResult<()> {
        self.producer
            .producer
            .send_offsets_to_transaction(offsets, group, self.timeout)
    }

    /// Commits what was sent, which the caller has [`TrackedProducer::wait`]ed for: rust-
    /// rdkafka's `commit_transaction` first flushes by polling in steps of up to 100 ms
    /// while the producer's own thread takes the delivery reports (see the module header),
    /// which made every transaction last 100 ms more; with nothing in flight it returns at
    /// once.
    pub fn commit(&self) -> KafkaResult<()> {
        let producer = &self.producer.producer;
        let settled = Instant::now();
        // The last delivery reports were served; their messages are freed right after.
        while producer.in_flight_count() > 0 && settled.elapsed() < Duration::from_millis(20) {
            std::thread::yield_now();
        }
        producer.commit_transaction(self.timeout)
    }

    pub fn abort(&self) -> KafkaResult<()> {
        self.producer.producer.abort_transaction(self.timeout)
    }
}

/// Whether a failed transactional call leaves the producer usable once the transaction is
/// aborted (the batch is then redone); otherwise the producer is fenced or broken.
pub fn abortable(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => !e.is_fatal(),
        // A send refused before a transactional call: the producer's state tells.
        _ => true,
    }
}

/// What the broker said of one record.
enum Settled {
    Acked,
    /// A batch marker, acked at this changelog offset.
    Marker {
        partition: i32,
        offset: i64,
    },
    Refused(String),
}

impl DeliveryTracker {
    fn settle(&self, generation: usize, settled: Settled) {
        let mut batch = self.batch();
        if generation != batch.generation {
            return;
        }
        batch.settled += 1;
        match settled {
            Settled::Acked => {}
            Settled::Marker { partition, offset } => {
                batch.markers.insert(partition, offset);
            }
            Settled::Refused(error) => {
                batch.failed += 1;
                batch.first_error.get_or_insert(error);
            }
        }
        if batch.settled >= batch.sent {
            self.settled.notify_all();
        }
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, generation: usize) {
        let settled = match result {
            Err((error, message)) => Settled::Refused(format!(
                "to {}[{}]: {error}",
                message.topic(),
                message.partition()
            )),
            Ok(message) if message.key() == Some(BATCH_MARKER_KEY) => Settled::Marker {
                partition: message.partition(),
                offset: message.offset(),
            },
            Ok(_) => Settled::Acked,
        };
        self.settle(generation, settled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_on_nothing_sent_returns_at_once() {
        let tracker = DeliveryTracker::default();
        tracker.start_batch();
        assert!(tracker.wait(Duration::ZERO).is_ok());
    }

    #[test]
    fn an_unsettled_record_times_out_with_the_count() {
        let tracker = DeliveryTracker::default();
        tracker.start_batch();
        tracker.sent();
        tracker.sent();
        match tracker.wait(Duration::from_millis(10)) {
            Err(DeliveryError::Timeout { outstanding, .. }) => assert_eq!(outstanding, 2),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn the_last_ack_wakes_the_waiting_batch() {
        let tracker = std::sync::Arc::new(DeliveryTracker::default());
        let generation = tracker.start_batch();
        tracker.sent();
        tracker.sent();
        let acker = {
            let tracker = tracker.clone();
            std::thread::spawn(move || {
                tracker.settle(generation, Settled::Acked);
                tracker.settle(
                    generation,
                    Settled::Marker {
                        partition: 3,
                        offset: 41,
                    },
                );
            })
        };
        tracker.wait(Duration::from_secs(60)).expect("both acked");
        acker.join().expect("acker");
        assert_eq!(tracker.take_markers(), HashMap::from([(3, 41)]));
    }

    #[test]
    fn a_refusal_fails_the_batch_with_the_first_error() {
        let tracker = DeliveryTracker::default();
        let generation = tracker.start_batch();
        for _ in 0..3 {
            tracker.sent();
        }
        tracker.settle(generation, Settled::Refused("to out[0]: first".into()));
        tracker.settle(generation, Settled::Acked);
        tracker.settle(generation, Settled::Refused("to out[1]: second".into()));
        match tracker.wait(Duration::ZERO) {
            Err(DeliveryError::Refused {
                failed,
                first_error,
            }) => {
                assert_eq!(failed, 2);
                assert_eq!(first_error, "to out[0]: first");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_report_of_an_earlier_batch_does_not_count() {
        let tracker = DeliveryTracker::default();
        let earlier = tracker.start_batch();
        tracker.sent();
        tracker.start_batch();
        tracker.sent();
        tracker.settle(earlier, Settled::Acked);
        tracker.settle(earlier, Settled::Refused("late".into()));
        assert!(matches!(
            tracker.wait(Duration::from_millis(10)),
            Err(DeliveryError::Timeout { outstanding: 1, .. })
        ));
    }

    #[test]
    fn a_new_batch_forgets_the_old_counts() {
        let tracker = DeliveryTracker::default();
        let first = tracker.start_batch();
        tracker.sent();
        let second = tracker.start_batch();
        assert_ne!(first, second);
        assert!(tracker.wait(Duration::ZERO).is_ok());
    }
}
