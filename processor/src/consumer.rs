//! The consumer loop: a consumer group member on the webhook topic. Each turn it stops on
//! a fatal error, activates the partitions whose restore finished (seeking each to its
//! store's offset and resuming it), polls one record into the engine's pending batch, folds
//! and commits the batch when it is due ([`Engine::fold_batch`]), seeks the partitions of an
//! aborted transaction back to their stores, ticks quiet partitions that have timers, and
//! now and then commits the group's offsets for lag tools. What the group decides arrives
//! in the rebalance callback (`rebalance`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::clients::{client_config, group_consumer, new_engine, restore_settings};
use crate::config::ProcessorConfig;
use crate::engine::{Committed, EngineError};
use crate::group_reader::GroupReader;
use crate::metrics::Metrics;
use crate::rebalance::{ProcessorContext, commit_offsets, not_authorized};
use crate::restore::Restores;

/// How long a starting processor waits for the brokers to answer before it exits.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Group offsets are for lag tools only under `effectively_once` (reading resumes from the
/// stored offsets), so they are committed every few seconds, not per batch: every commit is
/// a write at the group coordinator, which on a busy broker delays its heartbeat answers.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// Runs until `shutdown` is set, or an error the processor cannot recover from. `ready`
/// is true while the processor is in the group with every assigned partition restored.
pub fn run(
    config: &ProcessorConfig,
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let engine = new_engine(config, metrics.clone(), config.processing.guarantee)?;
    let restores = Restores::new(restore_settings(config, metrics.clone()))
        .context("starting the restore threads")?;
    let context =
        ProcessorContext::new(engine, restores, config.kafka.input_topic.clone(), metrics);
    let consumer: BaseConsumer<ProcessorContext> = group_consumer(config)
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    // Wrong credentials or certificates end the start here, with librdkafka's reason,
    // before anything is consumed; a broker that does not answer, after STARTUP_TIMEOUT.
    hookfold_kafka::wait_for_brokers(
        consumer.client(),
        &consumer.context().last_error,
        &config.kafka.bootstrap_servers,
        STARTUP_TIMEOUT,
        || {
            // Not subscribed yet: this serves the error and log events, no message.
            let _ = consumer.poll(Duration::ZERO);
        },
    )?;
    let grouped = config.rules.groups();
    let groups_topic = config.kafka.groups_topic();
    let partitions = crate::topics::check_copartitioned(
        &consumer,
        &config.kafka.input_topic,
        &config.kafka.changelog_topic(),
        &config.kafka.open_incidents_topic(),
        grouped.then_some(groups_topic.as_str()),
        config.kafka.ack_timeout,
    )?;
    consumer
        .context()
        .engine()
        .set_input_partitions(partitions as i32);
    // Only with grouped routes: the group stage's input (`group_reader`).
    let mut groups = grouped.then(|| GroupReader::new(config)).transpose()?;
    consumer
        .subscribe(&[&config.kafka.input_topic])
        .with_context(|| format!("subscribing to {}", config.kafka.input_topic))?;
    tracing::info!(
        input = %config.kafka.input_topic,
        output = %config.kafka.output_topic,
        changelog = %config.kafka.changelog_topic(),
        open_incidents = %config.kafka.open_incidents_topic(),
        groups = grouped.then_some(groups_topic.as_str()),
        group = %config.kafka.group_id,
        partitions,
        state_dir = %config.state_dir.display(),
        "processor started"
    );
    let context = consumer.context();
    let offsets_in_batches = context.engine().commits_group_offsets();
    let mut last_group_commit = Instant::now();
    let mut uncommitted: std::collections::BTreeMap<i32, i64> = Default::default();
    let mut ticker = crate::tick::Ticker::new(
        client_config(config),
        &config.kafka.input_topic,
        config.tick_interval,
        context.metrics.clone(),
    )?;
    while !shutdown.load(Ordering::SeqCst) {
        if let Some(fatal) = context.fatal() {
            bail!(fatal);
        }
        activate_restored(&consumer, groups.as_mut())?;
        ready.store(context.ready(), Ordering::SeqCst);
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(message)) => {
                if let Some(ticker) = &mut ticker {
                    ticker.seen(rdkafka::Message::partition(&message));
                }
                context.engine().push(message.detach())
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(
                e @ KafkaError::MessageConsumption(RDKafkaErrorCode::InconsistentGroupProtocol),
            )) => {
                // Repeats until the members with the other strategy leave: say why, and
                // what to do.
                tracing::warn!(
                    error = %e,
                    group = %config.kafka.group_id,
                    "consumer error: the group is held by members using another partition \
                     assignment strategy (this processor uses cooperative-sticky unless \
                     partition.assignment.strategy is set); stop them, or use another group.id \
                     (see OPERATIONS.md, Assignment strategy)"
                )
            }
            Some(Err(e)) if hookfold_kafka::is_authorization_error(&e) => bail!(not_authorized(&e)),
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
        }
        if let Some(groups) = &mut groups {
            let mut engine = context.engine();
            groups.retain(&engine.assigned());
            for message in groups.poll() {
                engine.push(message);
            }
        }
        let folded = {
            let mut engine = context.engine();
            engine
                .due()
                .then(|| engine.fold_batch(consumer.group_metadata().as_ref()))
        };
        match folded {
            Some(Ok(committed)) => uncommitted.extend(committed),
            // Nothing of it is visible; its partitions are rewound just below.
            Some(Err(EngineError::Aborted { .. })) => {}
            Some(Err(e)) => return Err(e).context("committing a batch"),
            None => {}
        }
        rewind(&consumer, groups.as_mut())?;
        if let Some(ticker) = &mut ticker {
            let waiting = context.engine().partitions_with_timers();
            ticker.tick(&waiting);
        }
        if offsets_in_batches {
            uncommitted.clear();
        } else if !uncommitted.is_empty() && last_group_commit.elapsed() >= GROUP_COMMIT_INTERVAL {
            let assigned = context.engine().assigned();
            let offsets: Committed = std::mem::take(&mut uncommitted)
                .into_iter()
                .filter(|(partition, _)| assigned.contains(partition))
                .collect();
            commit_offsets(&consumer, &config.kafka.input_topic, &offsets);
            last_group_commit = Instant::now();
        }
    }
    ready.store(false, Ordering::SeqCst);
    tracing::info!("shutting down: committing the last batch");
    let folded = context
        .engine()
        .fold_batch(consumer.group_metadata().as_ref());
    match folded {
        Ok(committed) if !offsets_in_batches => {
            commit_offsets(&consumer, &config.kafka.input_topic, &committed)
        }
        Ok(_) => {}
        // Nothing of it is visible; the next owner of its partitions redoes it.
        Err(EngineError::Aborted { .. }) => {}
        Err(e) => return Err(e).context("committing the last batch"),
    }
    // Leaving the group revokes the partitions (closing their stores) before exiting.
    context.restores.cancel_all();
    consumer.unsubscribe();
    let assigned = context.engine().assigned();
    if !assigned.is_empty() {
        context
            .engine()
            .revoke(&assigned, false, consumer.group_metadata().as_ref())
            .context("closing stores")?;
    }
    if let Some(fatal) = context.fatal() {
        bail!(fatal);
    }
    Ok(())
}

/// Hands every finished restore's store to its task (Restoring → Active) and resumes its
/// partition at the store's offset (and its groups-topic partition at its group stage's).
fn activate_restored(
    consumer: &BaseConsumer<ProcessorContext>,
    mut groups: Option<&mut GroupReader>,
) -> anyhow::Result<()> {
    let context = consumer.context();
    for finished in context.restores.take_finished()? {
        let partition = finished.partition;
        let next = context
            .engine()
            .restored(partition, finished.store)
            .with_context(|| format!("taking on partition {partition}"))?;
        let offset = next.map_or(Offset::Beginning, Offset::Offset);
        consumer
            .seek(
                &context.input_topic,
                partition,
                offset,
                Duration::from_secs(10),
            )
            .with_context(|| format!("seeking partition {partition} to {offset:?}"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&context.input_topic, partition);
        consumer
            .resume(&tpl)
            .with_context(|| format!("resuming partition {partition}"))?;
        if let Some(groups) = groups.as_deref_mut() {
            let from = context.engine().group_offset(partition)?;
            groups.follow(partition, from)?;
        }
    }
    Ok(())
}

/// Seeks the partitions of an aborted batch back to where their stores are, so the batch
/// is read and folded again (a partition given up meanwhile is the new owner's); their
/// groups-topic partitions too.
fn rewind(
    consumer: &BaseConsumer<ProcessorContext>,
    mut groups: Option<&mut GroupReader>,
) -> anyhow::Result<()> {
    let context = consumer.context();
    let rewinds = context.engine().take_rewinds()?;
    for (partition, next) in rewinds {
        let offset = next.map_or(Offset::Beginning, Offset::Offset);
        if let Err(e) = consumer.seek(
            &context.input_topic,
            partition,
            offset,
            Duration::from_secs(10),
        ) {
            if context.engine().assigned().contains(&partition) {
                // Still ours, and reading on from past the aborted batch would skip it.
                bail!("rewinding partition {partition} to {offset:?} after an aborted batch: {e}");
            }
            // Revoked meanwhile: the new owner reads it.
            tracing::info!(partition, error = %e, "not rewinding a partition given up");
        } else {
            tracing::info!(partition, ?offset, "rewound to redo an aborted batch");
            if let Some(groups) = groups.as_deref_mut() {
                let from = context.engine().group_offset(partition)?;
                groups.follow(partition, from)?;
            }
        }
    }
    Ok(())
}
