//! Whether a consumer group is in use (as far as the brokers tell): a rebuild refuses while
//! processors may run, since two writers of one changelog partition would interleave.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::clients::client_config;
use crate::config::ProcessorConfig;

/// Whether processors may be in the group (as far as the brokers tell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum GroupCheck {
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
pub(super) fn check_group(
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
