//! `hookfold-processor rebuild`: recomputes partitions' state from the webhook topic, the
//! event log, when the rules changed or a store and its changelog are lost.
//!
//! Per partition: the local store is deleted, a reset marker goes to the changelog (every
//! processor that restores the partition afterwards starts over from nothing there), and
//! the partition is folded from its first record to the end it had when the rebuild began,
//! through the same engine as `run` (states to the store and the changelog). Incident events:
//! all of them with `--emit`; without it, only those of records after the position the
//! processors had reached (the local store's or the changelog's last batch marker), which
//! nobody has seen yet.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog::{ChangelogSource, last_position};
use crate::config::ProcessorConfig;
use crate::consumer::{check_copartitioned, client_config, new_engine};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::PartitionStore;

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Partitions to rebuild; empty: all of them.
    pub partitions: Vec<i32>,
    /// Produce the incident events again (same inputs and rules give the same event ids).
    pub emit: bool,
    /// Rebuild even though the consumer group has members.
    pub force: bool,
}

pub fn run(
    config: &ProcessorConfig,
    options: &RebuildOptions,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(10);
    let k = &config.kafka;
    let mut reader_config = client_config(config);
    reader_config
        .set("client.id", "hookfold-processor-rebuild")
        .set("group.id", format!("{}.rebuild", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let reader: BaseConsumer = reader_config
        .create()
        .context("creating a Kafka consumer")?;
    let count = check_copartitioned(&reader, &k.input_topic, &k.changelog_topic(), timeout)?;

    // Two writers of one partition's changelog would interleave: refuse while processors run.
    match reader.fetch_group_list(Some(&k.group_id), timeout) {
        Ok(list) => {
            let members: usize = list.groups().iter().map(|g| g.members().len()).sum();
            if members > 0 && !options.force {
                bail!(
                    "consumer group {} has {members} member(s): stop every processor of the group \
                     first (scale the StatefulSet to 0), or pass --force if they are gone",
                    k.group_id
                );
            }
        }
        Err(e) => writeln!(
            out,
            "warning: could not list the members of group {} ({e}); make sure no processor runs",
            k.group_id
        )?,
    }

    let mut partitions = options.partitions.clone();
    if partitions.is_empty() {
        partitions = (0..count as i32).collect();
    }
    if let Some(bad) = partitions.iter().find(|&&p| p < 0 || p as usize >= count) {
        bail!(
            "{} has partitions 0 to {}; there is no partition {bad}",
            k.input_topic,
            count - 1
        );
    }
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let mut engine = new_engine(config, Metrics::new())?;
    if !options.emit {
        engine = engine.without_incident_events();
    }
    for partition in partitions {
        rebuild_partition(
            config,
            &mut engine,
            &reader,
            partition,
            options.emit,
            timeout,
            out,
        )
        .with_context(|| format!("rebuilding partition {partition}"))?;
    }
    Ok(())
}

fn rebuild_partition(
    config: &ProcessorConfig,
    engine: &mut Engine,
    reader: &BaseConsumer,
    partition: i32,
    emit_all: bool,
    timeout: Duration,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let topic = &config.kafka.input_topic;
    let started = Instant::now();
    let (low, high) = reader
        .fetch_watermarks(topic, partition, timeout)
        .context("reading the watermarks")?;
    let path = Engine::store_path(&config.state_dir, topic, partition);
    if !emit_all {
        // How far the processors had got: the incident events of records after that were
        // never emitted, so the rebuild emits them (it would lose them otherwise).
        let local = if path.exists() {
            PartitionStore::open(&path)?.next_offset()?
        } else {
            None
        };
        let mut client = client_config(config);
        client.set("group.id", format!("{}.rebuild", config.kafka.group_id));
        let changelog = last_position(&ChangelogSource {
            client,
            topic: &config.kafka.changelog_topic(),
            partition,
            timeout,
        })?;
        match local.max(changelog) {
            Some(from) => {
                engine.emit_from(partition, from);
                writeln!(
                    out,
                    "partition {partition}: processors had folded up to offset {from}; \
                     incident events of later records are emitted"
                )?;
            }
            None => writeln!(
                out,
                "partition {partition}: no stored position (no local store, no batch marker in \
                 the changelog): emitting no incident events (use --emit to emit them all)"
            )?,
        }
    }
    PartitionStore::destroy(&path)?;
    engine.reset_changelog(partition)?;
    engine.assign(partition)?;
    writeln!(
        out,
        "partition {partition}: folding offsets {low}..{high} ({} records)",
        high - low
    )?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))?;
    reader.assign(&tpl)?;
    let mut next = low;
    let mut last_record = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_error = None;
    while next < high {
        if last_record.elapsed() > timeout {
            bail!(
                "no record from {topic}[{partition}] for {timeout:?} at offset {next} of {high} (last error: {})",
                last_error.as_deref().unwrap_or("none")
            );
        }
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_record = Instant::now();
                next = rdkafka::Message::offset(&message) + 1;
                if next <= high {
                    engine.push(message.detach());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            // Consumer errors are reports (librdkafka reconnects and retries); only a
            // partition that stays silent fails the rebuild.
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the webhook topic");
                last_error = Some(e.to_string());
            }
            None => {}
        }
        if engine.due() {
            engine.commit()?;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            let done = next - low;
            writeln!(
                out,
                "partition {partition}: {done} of {} records, {:.0} records/s",
                high - low,
                done as f64 / started.elapsed().as_secs_f64()
            )?;
            last_progress = Instant::now();
        }
    }
    engine.commit()?;
    engine.revoke(&[partition])?;
    writeln!(
        out,
        "partition {partition}: rebuilt {} records in {:.1} s; state at offset {high}",
        high - low,
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}
