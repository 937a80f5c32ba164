//! The groups topic's reader: the input of the group stage (`hookfold_rules::groups`).
//!
//! Partition `p` of the groups topic is folded by the owner of input partition `p`, into
//! that partition's store: the group's state and the offset its stage reads from move in
//! the same batches, the same changelog and (under `exactly_once`) the same transactions as
//! the input's. So this reader is no member of the consumer group and commits nothing: it
//! follows exactly the partitions whose tasks are active here, each from the offset its
//! store holds (`Engine::group_offset`: the first change the stage still holds, or the
//! next record), and is sought back there whenever the task is (restored, rewound after an
//! aborted batch), so the held changes, kept in memory only, are read again.
//!
//! Invariant: a followed partition was assigned at its store's offset after the task last
//! became active (and its held changes were forgotten), so nothing the store has not taken
//! is skipped (what it took already is skipped by the stage itself, or held again).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};

use crate::clients::reader_config;
use crate::config::ProcessorConfig;

/// Most records taken per turn of the consumer loop (the loop polls the input between).
const MAX_PER_TURN: usize = 2000;

pub struct GroupReader {
    consumer: BaseConsumer,
    topic: String,
    followed: BTreeSet<i32>,
}

impl GroupReader {
    pub fn new(config: &ProcessorConfig) -> anyhow::Result<Self> {
        let mut client = reader_config(config);
        client
            .set("client.id", "hookfold-processor-groups")
            .set("group.id", format!("{}.groups", config.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Under exactly_once the member records are in the batches' transactions.
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer = client
            .create()
            .context("creating the groups topic's reader")?;
        Ok(Self {
            consumer,
            topic: config.kafka.groups_topic(),
            followed: BTreeSet::new(),
        })
    }

    /// Reads `partition` from `from` (`None`: its beginning), whether it was followed or
    /// not.
    pub fn follow(&mut self, partition: i32, from: Option<i64>) -> anyhow::Result<()> {
        if self.followed.contains(&partition) {
            self.unfollow(&[partition]);
        }
        let offset = from.map_or(Offset::Beginning, Offset::Offset);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, offset)
            .with_context(|| format!("{} partition {partition}", self.topic))?;
        self.consumer
            .incremental_assign(&tpl)
            .with_context(|| format!("reading {} partition {partition}", self.topic))?;
        self.followed.insert(partition);
        tracing::debug!(partition, ?offset, topic = %self.topic, "following the groups topic");
        Ok(())
    }

    /// Stops reading `partitions`.
    pub fn unfollow(&mut self, partitions: &[i32]) {
        let mut tpl = TopicPartitionList::new();
        for partition in partitions {
            if self.followed.remove(partition) {
                tpl.add_partition(&self.topic, *partition);
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.incremental_unassign(&tpl)
        {
            tracing::warn!(error = %e, ?partitions, "no longer reading the groups topic");
        }
    }

    /// Stops reading the partitions whose tasks are gone.
    pub fn retain(&mut self, assigned: &[i32]) {
        let gone: Vec<i32> = self
            .followed
            .iter()
            .filter(|partition| !assigned.contains(partition))
            .copied()
            .collect();
        if !gone.is_empty() {
            self.unfollow(&gone);
        }
    }

    /// The records ready now, at most [`MAX_PER_TURN`].
    pub fn poll(&self) -> Vec<OwnedMessage> {
        let mut records = Vec::new();
        if self.followed.is_empty() {
            return records;
        }
        while records.len() < MAX_PER_TURN {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(message)) => records.push(message.detach()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, topic = %self.topic, "reading the groups topic");
                    break;
                }
                None => break,
            }
        }
        records
    }
}
