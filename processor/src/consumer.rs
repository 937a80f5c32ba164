//! The Kafka side: a consumer group member on the webhook topic that hands records to the
//! [`Engine`], seeks every assigned partition to the offset stored with its state, and
//! commits a partition's pending batch before giving the partition up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::producer::ThreadedProducer;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::ProcessorConfig;
use crate::engine::{Committed, DeliveryTracker, Engine, Topics};
use crate::metrics::Metrics;

pub struct ProcessorContext {
    engine: Mutex<Engine>,
    input_topic: String,
    metrics: Metrics,
    /// An error inside a callback, which cannot return one: the loop stops on it.
    fatal: Mutex<Option<String>>,
}

impl ProcessorContext {
    fn engine(&self) -> MutexGuard<'_, Engine> {
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

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ClientContext for ProcessorContext {
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
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.input_topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                {
                    let mut engine = self.engine();
                    for &partition in &partitions {
                        let offset = match engine.assign(partition) {
                            Ok(Some(next)) => Offset::Offset(next),
                            Ok(None) => Offset::Beginning,
                            Err(e) => {
                                self.fail(format!(
                                    "opening the store of partition {partition}: {e}"
                                ));
                                Offset::Stored
                            }
                        };
                        if let Err(e) =
                            tpl.set_partition_offset(&self.input_topic, partition, offset)
                        {
                            self.fail(format!("seeking partition {partition}: {e}"));
                        }
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    self.fail(format!("assigning partitions {partitions:?}: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = self.engine().revoke(&partitions);
                match revoked {
                    Ok(committed) => commit_offsets(consumer, &self.input_topic, &committed),
                    Err(e) => self.fail(format!(
                        "committing partitions {partitions:?} before giving them up: {e}"
                    )),
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "unassigning partitions");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Tells the group where this processor is, so `kafka-consumer-groups` and lag monitors
/// see it. Reading resumes from the offsets stored with the state, not from these.
fn commit_offsets<C: ConsumerContext>(
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

const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

pub fn client_config(config: &ProcessorConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in &config.kafka.properties {
        client.set(key, value);
    }
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    client
}

/// Runs until `shutdown` is set, or an error the processor cannot recover from.
pub fn run(
    config: &ProcessorConfig,
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let producer: ThreadedProducer<DeliveryTracker> = client_config(config)
        .set("client.id", "hookfold-processor")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            config.kafka.ack_timeout.as_millis().to_string(),
        )
        .create_with_context(DeliveryTracker::default())
        .context("creating the Kafka producer")?;
    let topics = Topics {
        input: config.kafka.input_topic.clone(),
        output: config.kafka.output_topic.clone(),
        changelog: config.kafka.changelog_topic(),
    };
    let engine = Engine::new(
        config.rules.clone(),
        topics,
        &config.state_dir,
        producer,
        config.kafka.ack_timeout,
        config.batch.clone(),
        metrics.clone(),
    );
    let context = ProcessorContext {
        engine: Mutex::new(engine),
        input_topic: config.kafka.input_topic.clone(),
        metrics,
        fatal: Mutex::new(None),
    };
    let mut consumer_config = client_config(config);
    if let Some(instance) = config
        .kafka
        .instance_id
        .as_deref()
        .filter(|i| !i.is_empty())
    {
        consumer_config.set("group.instance.id", instance);
    }
    let consumer: BaseConsumer<ProcessorContext> = consumer_config
        .set("client.id", "hookfold-processor")
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&config.kafka.input_topic])
        .with_context(|| format!("subscribing to {}", config.kafka.input_topic))?;
    tracing::info!(
        input = %config.kafka.input_topic,
        output = %config.kafka.output_topic,
        changelog = %config.kafka.changelog_topic(),
        group = %config.kafka.group_id,
        state_dir = %config.state_dir.display(),
        "processor started"
    );

    // Group offsets are for lag tools only (reading resumes from the stored offsets), so
    // they are committed every few seconds, not per batch: every commit is a write at
    // the group coordinator, which on a busy broker delays its heartbeat answers.
    let mut last_group_commit = std::time::Instant::now();
    let mut uncommitted: std::collections::BTreeMap<i32, i64> = Default::default();
    while !shutdown.load(Ordering::SeqCst) {
        if let Some(fatal) = consumer.context().fatal() {
            bail!(fatal);
        }
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(message)) => consumer.context().engine().push(message.detach()),
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
        }
        let committed = {
            let mut engine = consumer.context().engine();
            if engine.due() {
                Some(engine.commit())
            } else {
                None
            }
        };
        match committed {
            Some(Ok(committed)) => uncommitted.extend(committed),
            Some(Err(e)) => return Err(e).context("committing a batch"),
            None => {}
        }
        if !uncommitted.is_empty() && last_group_commit.elapsed() >= GROUP_COMMIT_INTERVAL {
            let assigned = consumer.context().engine().assigned();
            let offsets: Committed = std::mem::take(&mut uncommitted)
                .into_iter()
                .filter(|(partition, _)| assigned.contains(partition))
                .collect();
            commit_offsets(&consumer, &config.kafka.input_topic, &offsets);
            last_group_commit = std::time::Instant::now();
        }
    }
    tracing::info!("shutting down: committing the last batch");
    let committed = consumer
        .context()
        .engine()
        .commit()
        .context("committing the last batch")?;
    commit_offsets(&consumer, &config.kafka.input_topic, &committed);
    // Leaving the group revokes the partitions (closing their stores) before exiting.
    consumer.unsubscribe();
    let assigned = consumer.context().engine().assigned();
    if !assigned.is_empty() {
        consumer
            .context()
            .engine()
            .revoke(&assigned)
            .context("closing stores")?;
    }
    if let Some(fatal) = consumer.context().fatal() {
        bail!(fatal);
    }
    Ok(())
}
