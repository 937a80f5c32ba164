//! `hookfold-processor rebuild`: recomputes partitions' state from the webhook topic, the
//! event log, when the rules changed or a store and its changelog are lost.
//!
//! Per partition: the local store is deleted, a reset marker goes to the changelog (every
//! processor that restores the partition afterwards starts over from nothing there), and
//! the partition is folded from its first record to the end it had when the rebuild began,
//! through the same engine as `run` (states to the store and the changelog). Incident events:
//! all of them with `--emit`; without it, only those of records after the position the
//! processors had reached (the local store's or the changelog's last batch marker), which
//! nobody has seen yet. The open-incident table follows the rebuilt state: the fold
//! rewrites every incident it leaves open, and the incidents of the partition that were open
//! before and are not any more get a tombstone.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hookfold_kafka::{AtEnd, PartitionReader, Polled, Start};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog::{ChangelogSource, last_position};
use crate::clients::{client_config, new_engine, reader_config};
use crate::config::{Guarantee, ProcessorConfig};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::open_incidents;
use crate::store::PartitionStore;
use crate::topics::check_copartitioned;

mod group;

use group::{GroupCheck, check_group};

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
    let mut reader_client = reader_config(config);
    reader_client
        .set("client.id", "hookfold-processor-rebuild")
        .set("group.id", format!("{}.rebuild", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let reader: BaseConsumer = reader_client
        .clone()
        .create()
        .context("creating a Kafka consumer")?;
    let grouped = config.rules.groups();
    let groups_topic = k.groups_topic();
    let count = check_copartitioned(
        &reader,
        &k.input_topic,
        &k.changelog_topic(),
        &k.open_incidents_topic(),
        grouped.then_some(groups_topic.as_str()),
        timeout,
    )?;

    // Two writers of one partition's changelog would interleave: refuse while processors
    // run, and when it cannot be told whether they do.
    let group = &k.group_id;
    match check_group(config, &reader, count, timeout) {
        Ok(GroupCheck::Unused(what)) => writeln!(out, "consumer group {group}: {what}")?,
        Ok(GroupCheck::InUse(why)) if options.force => writeln!(
            out,
            "warning: consumer group {group} {why}; rebuilding anyway (--force): a processor \
             still running writes the same changelog partitions"
        )?,
        Ok(GroupCheck::InUse(why)) => bail!(
            "consumer group {group} {why}: stop every processor of the group first (scale the \
             StatefulSet to 0). A killed processor, or one with kafka.instance_id set, stays a \
             member until its session times out (session.timeout.ms, 45 s by default). \
             --force skips this check"
        ),
        Err(e) if options.force => writeln!(
            out,
            "warning: could not check that consumer group {group} is empty ({e:#}); rebuilding \
             anyway (--force)"
        )?,
        Err(e) => bail!(
            "could not check that consumer group {group} is empty: {e:#}. A rebuild while a \
             processor runs would interleave two writers of the changelog; retry when the \
             brokers answer, or pass --force to skip the check once you know every processor \
             of the group is stopped"
        ),
    }

    let mut partitions = options.partitions.clone();
    if partitions.is_empty() {
        partitions = (0..count as i32).collect();
    }
    if grouped && partitions.len() != count {
        bail!(
            "with grouped routes (rules.routes group_by) a rebuild recomputes every partition: \
             every group partition takes members from all of them. Leave out --partition"
        );
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
    // Always effectively once: the group is empty (checked above), and its offsets are
    // committed once the partition is rebuilt (`commit_group_offset`).
    let mut engine = new_engine(config, Metrics::new(), Guarantee::EffectivelyOnce)?;
    if !options.emit {
        engine = engine.without_incident_events();
    }
    engine.set_input_partitions(count as i32);
    // The groups topic's ends now: the rebuilt group stages read only what comes after.
    let group_starts = if grouped {
        let groups = PartitionReader::new(reader_client.clone(), &groups_topic, timeout)?;
        let mut ends = Vec::new();
        for partition in 0..count as i32 {
            ends.push(groups.watermarks(partition)?.1);
        }
        ends
    } else {
        Vec::new()
    };
    // The open-incident table before the rebuild: what the new state no longer has open
    // is closed there afterwards (the fold itself rewrites what it has open).
    let table_topic = k.open_incidents_topic();
    let table = open_incidents::load(
        client_config(config),
        &table_topic,
        &format!("{}.rebuild", k.group_id),
        timeout,
    )
    .with_context(|| format!("reading the open-incident table {table_topic}"))?;
    let mut input = PartitionReader::new(reader_client, &k.input_topic, timeout)?;
    for partition in partitions {
        let target = Target {
            partition,
            group_start: group_starts.get(partition as usize).copied(),
        };
        rebuild_partition(
            config,
            &mut engine,
            &mut input,
            target,
            options.emit,
            timeout,
            out,
        )
        .with_context(|| format!("rebuilding partition {partition}"))?;
        close_vanished(config, &mut engine, &table, partition, out)
            .with_context(|| format!("updating {table_topic} for partition {partition}"))?;
        engine.revoke(&[partition], false, None)?;
    }
    Ok(())
}

/// Sets the group's committed offset of `partition` to where the rebuilt state is: under
/// `exactly_once` it is where processors resume (and their stores must agree with it), and
/// lag tools read it under either guarantee. The group is empty (checked before, unless
/// `--force`), so a commit outside it is allowed.
fn commit_group_offset(
    config: &ProcessorConfig,
    partition: i32,
    next_offset: i64,
) -> anyhow::Result<()> {
    let committer: BaseConsumer = client_config(config)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the group offset committer")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        &config.kafka.input_topic,
        partition,
        Offset::Offset(next_offset),
    )?;
    committer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .with_context(|| {
            format!("committing offset {next_offset} of partition {partition} for the group")
        })?;
    Ok(())
}

/// Tombstones in the open-incident table for the incidents of `partition` that were open
/// before the rebuild and are not in the rebuilt state.
fn close_vanished(
    config: &ProcessorConfig,
    engine: &mut Engine,
    before: &open_incidents::Table,
    partition: i32,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let open_now = engine.open_dedup_keys(partition)?;
    let vanished: Vec<String> = before
        .open
        .values()
        .filter(|event| {
            event.cause.as_ref().is_some_and(|cause| {
                cause.partition == partition && cause.topic == config.kafka.input_topic
            })
        })
        .map(|event| event.dedup_key.clone())
        .filter(|key| !open_now.contains(key))
        .collect();
    if !vanished.is_empty() {
        engine.close_in_table(&vanished)?;
    }
    writeln!(
        out,
        "partition {partition}: {} incident(s) open; {} closed in {} that the rebuilt state no longer has",
        open_now.len(),
        vanished.len(),
        config.kafka.open_incidents_topic()
    )?;
    Ok(())
}

/// A partition to rebuild, and where its group stage starts in the groups topic (grouped
/// routes).
struct Target {
    partition: i32,
    group_start: Option<i64>,
}

fn rebuild_partition(
    config: &ProcessorConfig,
    engine: &mut Engine,
    reader: &mut PartitionReader,
    target: Target,
    emit_all: bool,
    timeout: Duration,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let Target {
        partition,
        group_start,
    } = target;
    let topic = &config.kafka.input_topic;
    let started = Instant::now();
    let (low, high) = reader.watermarks(partition)?;
    let path = Engine::store_path(&config.state_dir, topic, partition);
    let mut emit_from = None;
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
                emit_from = Some(from);
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
    engine.activate(partition)?;
    if let Some(start) = group_start {
        engine.start_group_stage(partition, start)?;
        writeln!(
            out,
            "partition {partition}: its groups start over from offset {start} of {}",
            config.kafka.groups_topic()
        )?;
    }
    if let Some(from) = emit_from {
        engine.emit_from(partition, from);
    }
    writeln!(
        out,
        "partition {partition}: folding offsets {low}..{high} ({} records)",
        high - low
    )?;
    reader.add(partition, Start::Offset(low), AtEnd::Stop)?;
    let mut last_progress = Instant::now();
    while reader.reading().any(|p| p == partition) {
        if let Polled::Record(message) = reader.poll(Duration::from_millis(100))? {
            engine.push(message.detach());
        }
        if engine.due() {
            engine.fold_batch(None)?;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            let done = (high - low) - reader.remaining(partition);
            writeln!(
                out,
                "partition {partition}: {done} of {} records, {:.0} records/s",
                high - low,
                done as f64 / started.elapsed().as_secs_f64()
            )?;
            last_progress = Instant::now();
        }
    }
    engine.fold_batch(None)?;
    if let Err(e) = commit_group_offset(config, partition, high) {
        // A group with members (`--force`) refuses a commit from outside it: they commit
        // their own offsets.
        writeln!(
            out,
            "partition {partition}: warning: the group's committed offset was left as it is \
             ({e:#})"
        )?;
    }
    writeln!(
        out,
        "partition {partition}: rebuilt {} records in {:.1} s; state at offset {high}",
        high - low,
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}
