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

use anyhow::{Context, anyhow, bail};
use hookfold_kafka::{AtEnd, PartitionReader, Polled, Start};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog::{ChangelogSource, last_position};
use crate::clients::{client_config, new_engine, reader_config};
use crate::config::{Guarantee, ProcessorConfig};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::open_incidents;
use crate::store::PartitionStore;
use crate::topics::check_copartitioned;

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
    let count = check_copartitioned(
        &reader,
        &k.input_topic,
        &k.changelog_topic(),
        &k.open_incidents_topic(),
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
        rebuild_partition(
            config,
            &mut engine,
            &mut input,
            partition,
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

/// Whether processors may be in the group (as far as the brokers tell).
#[derive(Debug, Clone, PartialEq, Eq)]
enum GroupCheck {
    /// Nobody in it: what the brokers said (for the output).
    Unused(String),
    /// Members (or members joining): why, starting with a verb ("has 2 member(s) ...").
    InUse(String),
}

/// One member as DescribeGroups lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    client_id: String,
    host: String,
    member_id: String,
}

/// What one DescribeGroups answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Settled(GroupCheck),
    /// A rebalance with no member listed yet: joining members are not listed until they
    /// are added, and the last member's LeaveGroup passes through this state too.
    Rebalancing(String),
}

/// Classic group states: the processor always joins with the classic protocol (it sets
/// partition.assignment.strategy, which librdkafka refuses with group.protocol=consumer).
fn verdict(state: &str, members: &[Member]) -> anyhow::Result<Verdict> {
    if !members.is_empty() {
        const SHOWN: usize = 3;
        let mut listed: Vec<String> = members
            .iter()
            .take(SHOWN)
            .map(|m| format!("{} on {} ({})", m.client_id, m.host, m.member_id))
            .collect();
        if members.len() > SHOWN {
            listed.push(format!("{} more", members.len() - SHOWN));
        }
        return Ok(Verdict::Settled(GroupCheck::InUse(format!(
            "has {} member(s) (state {state}: {})",
            members.len(),
            listed.join(", ")
        ))));
    }
    match state {
        "Empty" | "Dead" => Ok(Verdict::Settled(GroupCheck::Unused(format!(
            "no members (state {state})"
        )))),
        "PreparingRebalance" | "CompletingRebalance" => Ok(Verdict::Rebalancing(state.into())),
        // The coordinator answered with an error code (not loaded yet, moved): rust-rdkafka
        // does not expose the code, but the state is then empty.
        "" => {
            bail!("the group coordinator answered DescribeGroups without a group state (an error)")
        }
        other => bail!(
            "DescribeGroups answered state {other:?} with no members, which is not a classic group state"
        ),
    }
}

/// Coordinator errors that pass: `__consumer_offsets` being created on a new cluster, or a
/// coordinator moving or loading after a broker restart.
fn transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::CoordinatorLoadInProgress
        )
    )
}

/// DescribeGroups (through librdkafka's ListGroups on every broker, then DescribeGroups at
/// the coordinator that lists the group). Transient coordinator errors and a rebalance
/// without listed members are asked again until `timeout`.
fn check_group(
    config: &ProcessorConfig,
    reader: &BaseConsumer,
    partitions: usize,
    timeout: Duration,
) -> anyhow::Result<GroupCheck> {
    let group = &config.kafka.group_id;
    let deadline = Instant::now() + timeout;
    let mut probe = None;
    loop {
        let retry = Instant::now() < deadline;
        let list = match reader.fetch_group_list(Some(group), timeout) {
            Ok(list) => list,
            Err(e) if retry && transient(&e) => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Err(e) => bail!("listing and describing the groups: {e}"),
        };
        let Some(info) = list.groups().iter().find(|g| g.name() == group.as_str()) else {
            let probe = match probe.take() {
                Some(probe) => probe,
                None => offset_probe(config)?,
            };
            match unlisted_group(config, &probe, partitions, timeout) {
                Err(e) if retry && transient(&e) => {}
                Err(e) => bail!(
                    "no broker listed the group, and reading its committed offsets failed: {e}"
                ),
                Ok(check) => return check,
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let members: Vec<Member> = info
            .members()
            .iter()
            .map(|m| Member {
                client_id: m.client_id().to_owned(),
                host: m.client_host().to_owned(),
                member_id: m.id().to_owned(),
            })
            .collect();
        match verdict(info.state(), &members)? {
            Verdict::Settled(check) => return Ok(check),
            Verdict::Rebalancing(_) if retry => std::thread::sleep(Duration::from_millis(200)),
            Verdict::Rebalancing(state) => {
                return Ok(GroupCheck::InUse(format!(
                    "is in state {state} for {timeout:?} with no member listed yet (members \
                     are joining)"
                )));
            }
        }
    }
}

/// A consumer of the processors' group for OffsetFetch only: without subscribe() it never
/// joins the group.
fn offset_probe(config: &ProcessorConfig) -> anyhow::Result<BaseConsumer> {
    client_config(config)
        .set("client.id", "hookfold-processor-rebuild")
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a Kafka consumer")
}

/// No broker listed the group. librdkafka keeps the last broker's ListGroups answer, so a
/// coordinator's error can be hidden by another broker's success: a group that has
/// committed offsets exists, and then its membership is unknown.
fn unlisted_group(
    config: &ProcessorConfig,
    probe: &BaseConsumer,
    partitions: usize,
    timeout: Duration,
) -> Result<anyhow::Result<GroupCheck>, KafkaError> {
    let topic = &config.kafka.input_topic;
    let mut tpl = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        tpl.add_partition(topic, partition);
    }
    let committed = probe.committed_offsets(tpl, timeout)?;
    for element in committed.elements() {
        element.error()?;
        if let Offset::Offset(offset) = element.offset() {
            return Ok(Err(anyhow!(
                "no broker listed the group, but it has committed offset {offset} on \
                 {topic}[{}]: a broker's ListGroups must have failed",
                element.partition()
            )));
        }
    }
    Ok(Ok(GroupCheck::Unused(
        "unknown to the cluster and without committed offsets (no processor has joined it, \
         or its offsets expired)"
            .into(),
    )))
}

fn rebuild_partition(
    config: &ProcessorConfig,
    engine: &mut Engine,
    reader: &mut PartitionReader,
    partition: i32,
    emit_all: bool,
    timeout: Duration,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let topic = &config.kafka.input_topic;
    let started = Instant::now();
    let (low, high) = reader.watermarks(partition)?;
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
    engine.activate(partition)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: usize) -> Member {
        Member {
            client_id: "hookfold-processor".into(),
            host: "/10.0.0.1".into(),
            member_id: format!("hookfold-processor-{n}"),
        }
    }

    #[test]
    fn members_make_the_group_in_use_with_their_count_and_who_they_are() {
        let members: Vec<Member> = (0..5).map(member).collect();
        let Verdict::Settled(GroupCheck::InUse(why)) = verdict("Stable", &members).unwrap() else {
            panic!("five members are a group in use");
        };
        assert!(why.starts_with("has 5 member(s) (state Stable: "), "{why}");
        assert!(why.contains("hookfold-processor on /10.0.0.1 (hookfold-processor-0)"));
        assert!(why.ends_with("2 more)"), "{why}");
        // Members during a rebalance count too.
        assert!(matches!(
            verdict("PreparingRebalance", &members[..1]).unwrap(),
            Verdict::Settled(GroupCheck::InUse(_))
        ));
    }

    #[test]
    fn an_empty_or_dead_group_is_unused() {
        for state in ["Empty", "Dead"] {
            assert!(matches!(
                verdict(state, &[]).unwrap(),
                Verdict::Settled(GroupCheck::Unused(_))
            ));
        }
    }

    #[test]
    fn a_rebalance_without_members_is_waited_on_and_an_unknown_state_is_an_error() {
        assert_eq!(
            verdict("PreparingRebalance", &[]).unwrap(),
            Verdict::Rebalancing("PreparingRebalance".into())
        );
        let error = verdict("", &[]).unwrap_err().to_string();
        assert!(error.contains("without a group state"), "{error}");
        assert!(verdict("Assigning", &[]).is_err());
    }
}
