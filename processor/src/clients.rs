//! Every Kafka client the processor and its subcommands make, built in one place from the
//! configuration: the base settings ([`client_config`]), a reader of partitions to their end
//! ([`reader_config`]), the engine's producers under each guarantee ([`new_engine`]), the
//! transactional id ([`transactional_id`]), the group member ([`group_consumer`]) and the
//! restores' readers ([`restore_settings`]).

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;

use crate::config::{Guarantee, ProcessorConfig};
use crate::delivery::{TrackedProducer, Transactional};
use crate::engine::{BatchProducer, Engine, Topics};
use crate::metrics::Metrics;
use crate::restore::{GroupOffsets, RestoreSettings};

/// The settings every client of the processor and its subcommands starts from.
pub fn client_config(config: &ProcessorConfig) -> ClientConfig {
    let k = &config.kafka;
    hookfold_kafka::client_config(&k.bootstrap_servers, &k.properties, &k.resolved_security)
}

/// [`client_config`] for a consumer that reads partitions through to their end (restores,
/// rebuilds): librdkafka stops fetching once 100,000 records are queued locally and then
/// waits `fetch.queue.backoff.ms` (default 1 s) before it fetches again. Such a reader drains
/// its queue in a fraction of that, then sat idle: 80% of a 1,000,000-record restore was
/// spent waiting for records the broker had long been ready to send (BENCHMARKS.md). An
/// operator's own value in `[kafka.properties]` wins.
pub fn reader_config(config: &ProcessorConfig) -> ClientConfig {
    let mut client = client_config(config);
    if !config
        .kafka
        .properties
        .contains_key("fetch.queue.backoff.ms")
    {
        client.set("fetch.queue.backoff.ms", "10");
    }
    client
}

/// The engine with its producers (acks=all, idempotent; under `exactly_once` one
/// transactional producer), as `run` and `rebuild` use it.
pub fn new_engine(
    config: &ProcessorConfig,
    metrics: Metrics,
    guarantee: Guarantee,
) -> anyhow::Result<Engine> {
    let producer_config = |client_id: &str, linger_ms: &str| -> ClientConfig {
        let mut client = client_config(config);
        client
            .set("client.id", client_id)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", linger_ms)
            .set(
                "message.timeout.ms",
                config.kafka.ack_timeout.as_millis().to_string(),
            );
        client
    };
    let topics = Topics {
        input: config.kafka.input_topic.clone(),
        output: config.kafka.output_topic.clone(),
        changelog: config.kafka.changelog_topic(),
        open_incidents: config.kafka.open_incidents_topic(),
        groups: config.kafka.groups_topic(),
    };
    let ack_timeout = config.kafka.ack_timeout;
    let producer = match guarantee {
        Guarantee::EffectivelyOnce => {
            let producer = |client_id: &str, linger_ms: &str| {
                TrackedProducer::create(&producer_config(client_id, linger_ms))
                    .with_context(|| format!("creating the Kafka producer {client_id}"))
            };
            // Incident events and states come in bursts that linger batches; a batch's
            // markers are a handful of records the batch is waiting on, so they go at once.
            BatchProducer::effectively_once(
                producer("hookfold-processor", "5")?,
                producer("hookfold-processor-markers", "0")?,
                &topics,
                ack_timeout,
                metrics.clone(),
            )
        }
        Guarantee::ExactlyOnce => {
            let timeout = config.processing.transaction_timeout;
            let transactional_id = transactional_id(config);
            let mut client = producer_config("hookfold-processor", "5");
            // A record not acked within the transaction's timeout cannot be committed.
            let message_timeout = config.kafka.ack_timeout.min(timeout);
            client
                .set("transactional.id", &transactional_id)
                .set("transaction.timeout.ms", timeout.as_millis().to_string())
                .set(
                    "message.timeout.ms",
                    message_timeout.as_millis().to_string(),
                );
            let transactional = Transactional::create(&client, config.kafka.ack_timeout)
                .with_context(|| {
                    format!(
                        "starting the transactional producer {transactional_id} \
                         (processing.guarantee = \"exactly_once\"; the principal needs Write and \
                         Describe on transactional ids prefixed {}.)",
                        config.kafka.group_id
                    )
                })?;
            tracing::info!(
                %transactional_id,
                transaction_timeout_ms = timeout.as_millis() as u64,
                "transactional producer ready (exactly_once)"
            );
            BatchProducer::exactly_once(transactional, &topics, ack_timeout, metrics.clone())
        }
    };
    Ok(Engine::new(
        config.rules.clone(),
        topics,
        &config.state_dir,
        producer,
        config.batch.clone(),
        metrics,
    ))
}

/// The transactional id under `exactly_once`: `<group_id>.<instance_id>`, stable across
/// restarts, so a restarted instance fences its predecessor and aborts what it left open at
/// once; without an instance_id, one of its own per process (`<group_id>.<host>-<pid>-<start
/// time>`), so a crashed process's open transaction holds read_committed readers back until
/// `processing.transaction_timeout`.
pub fn transactional_id(config: &ProcessorConfig) -> String {
    let group = &config.kafka.group_id;
    match config
        .kafka
        .instance_id
        .as_deref()
        .filter(|i| !i.is_empty())
    {
        Some(instance) => format!("{group}.{instance}"),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".into());
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            format!("{group}.{host}-{}-{started}", std::process::id())
        }
    }
}

/// The group member's settings: static membership when `instance_id` is set, incremental
/// (cooperative-sticky) assignment unless the operator chose a strategy, offsets never
/// committed automatically, lag statistics every 5 s.
pub fn group_consumer(config: &ProcessorConfig) -> ClientConfig {
    let mut consumer = client_config(config);
    if let Some(instance) = config
        .kafka
        .instance_id
        .as_deref()
        .filter(|i| !i.is_empty())
    {
        consumer.set("group.instance.id", instance);
    }
    if !config
        .kafka
        .properties
        .contains_key("partition.assignment.strategy")
    {
        // Incremental: a rebalance moves only the partitions that change owner; the others
        // keep being processed (and keep their open stores).
        consumer.set("partition.assignment.strategy", "cooperative-sticky");
    }
    consumer
        .set("client.id", "hookfold-processor")
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000");
    consumer
}

/// The restores' settings: one changelog reader, and under `exactly_once` the reader of
/// the group's committed offsets.
pub fn restore_settings(config: &ProcessorConfig, metrics: Metrics) -> RestoreSettings {
    let mut changelog_client = reader_config(config);
    changelog_client
        .set("client.id", "hookfold-processor-restore")
        .set("group.id", format!("{}.restore", config.kafka.group_id));
    RestoreSettings {
        client: changelog_client,
        changelog_topic: config.kafka.changelog_topic(),
        timeout: config.kafka.ack_timeout,
        group_offsets: config.processing.exactly_once().then(|| GroupOffsets {
            client: {
                let mut client = client_config(config);
                client
                    .set("client.id", "hookfold-processor-offsets")
                    .set("group.id", &config.kafka.group_id);
                client
            },
            input_topic: config.kafka.input_topic.clone(),
            // The coordinator looks for timed-out transactions every 10 s by default
            // (transaction.abort.timed.out.transaction.cleanup.interval.ms).
            settle: config.processing.transaction_timeout + Duration::from_secs(30),
        }),
        metrics,
    }
}
