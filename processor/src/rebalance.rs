//! The consumer's context: what librdkafka calls back into. The rebalance callback turns
//! the group's decisions into task transitions: an assigned partition gets a Restoring task
//! and a restore, and stays paused; a revoked one has its restore cancelled (a command, never
//! a wait), its pending batch committed (unless lost under `exactly_once`) and its task
//! closed. Client errors and statistics (consumer lag) are served here too.
//!
//! An error inside a callback cannot be returned: it is kept ([`ProcessorContext::fail`])
//! and the consumer loop stops on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::engine::{Committed, Engine};
use crate::metrics::Metrics;
use crate::restore::Restores;

pub struct ProcessorContext {
    engine: Mutex<Engine>,
    pub restores: Restores,
    pub input_topic: String,
    pub metrics: Metrics,
    /// An error inside a callback, which cannot return one: the loop stops on it.
    fatal: Mutex<Option<String>>,
    /// Whether the group has given this member its (possibly empty) first assignment.
    assigned_once: AtomicBool,
    /// What librdkafka last reported, for a start that cannot connect to say why.
    pub last_error: hookfold_kafka::LastError,
}

impl ProcessorContext {
    pub fn new(engine: Engine, restores: Restores, input_topic: String, metrics: Metrics) -> Self {
        Self {
            engine: Mutex::new(engine),
            restores,
            input_topic,
            metrics,
            fatal: Mutex::new(None),
            assigned_once: AtomicBool::new(false),
            last_error: Default::default(),
        }
    }

    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock ends the process anyway; the data is still there.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, message: String) {
        tracing::error!(error = %message, "processor cannot continue");
        self.fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(message);
    }

    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// In the group, with every assigned partition restored.
    pub fn ready(&self) -> bool {
        self.assigned_once.load(Ordering::SeqCst) && !self.engine().restoring()
    }

    /// Every new partition gets a Restoring task and a restore, and starts paused; it is
    /// resumed at its store's offset once restored (`consumer::activate_restored`).
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, partitions: &[i32]) {
        self.assigned_once.store(true, Ordering::SeqCst);
        self.restores.cancel(partitions);
        for &partition in partitions {
            let (store, path) = {
                let mut engine = self.engine();
                (engine.assign(partition), engine.store_path_of(partition))
            };
            if let Err(e) = self.restores.start(partition, store, path) {
                self.fail(format!(
                    "starting the restore of partition {partition}: {e:#}"
                ));
            }
        }
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        // Where fetching starts matters not: the partition is paused now, and sought to its
        // store's offset before it is resumed.
        let result = if cooperative {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        if let Err(e) = result {
            self.fail(format!("assigning partitions {partitions:?}: {e}"));
        } else if let Err(e) = consumer.pause(tpl) {
            self.fail(format!(
                "pausing partitions {partitions:?} to restore them: {e}"
            ));
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, partitions: &[i32]) {
        self.restores.cancel(partitions);
        let lost = consumer.assignment_lost();
        let group = consumer.group_metadata();
        let (revoked, offsets_in_batches) = {
            let mut engine = self.engine();
            (
                engine.revoke(partitions, lost, group.as_ref()),
                engine.commits_group_offsets(),
            )
        };
        match revoked {
            Ok(committed) if !offsets_in_batches => {
                commit_offsets(consumer, &self.input_topic, &committed)
            }
            Ok(_) => {}
            Err(e) => self.fail(format!(
                "committing partitions {partitions:?} before giving them up: {e}"
            )),
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "unassigning partitions");
        }
    }
}

impl ClientContext for ProcessorContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.record(&error, reason);
        tracing::error!(target: "librdkafka", error = %error, "Kafka client error: {reason}");
        if hookfold_kafka::is_authorization_error(&error) {
            self.fail(not_authorized(&error));
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.last_error.record_log(facility, message);
        hookfold_kafka::log_librdkafka(level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.input_topic) {
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[&partition.to_string()])
                        .set(stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ProcessorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.input_topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, tpl, &partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, tpl, &partitions)
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                self.restores.cancel_all();
                let _ = consumer.unassign();
            }
        }
    }
}

/// Tells the group where this processor is, so `kafka-consumer-groups` and lag monitors
/// see it (`effectively_once`: reading resumes from the offsets stored with the state, not
/// from these).
pub fn commit_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    committed: &Committed,
) {
    if committed.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, next) in committed {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "committing group offsets");
    }
}

/// The processor's words for an ACL refusal.
pub fn not_authorized(error: &KafkaError) -> String {
    format!(
        "Kafka refuses this processor an operation: {error}; grant what \
         `hookfold-processor acls --principal <its principal>` prints (docs/OPERATIONS.md, ACLs)"
    )
}
