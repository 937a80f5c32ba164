//! Topics of a test: creating them, reading them back with an independent consumer, and
//! the set of topics and group one processor deployment uses (with the processors to run
//! on it).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};

use crate::broker::Broker;
use crate::processor::ProcessorSetup;
use crate::unique_name;
use crate::wait::wait_for;

/// Creates a topic with the broker's default replication factor and `configs`, and waits
/// until its metadata shows every partition. Room for the gateway's largest body (1 MiB by
/// default) plus key and headers: Apache Kafka's default limit is only 1 MiB + 12 bytes.
pub async fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1))
        .set("max.message.bytes", "2097152");
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .context("CreateTopics request")?;
    for result in results {
        if let Err((topic, code)) = result {
            bail!("creating topic {topic}: {code}");
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    wait_for(
        &format!("topic {name} in metadata"),
        Duration::from_secs(30),
        || {
            let metadata = consumer
                .fetch_metadata(Some(name), Duration::from_secs(2))
                .ok()?;
            let topic = metadata.topics().iter().find(|t| t.name() == name)?;
            (topic.error().is_none()
                && topic.partitions().len() == partitions as usize
                && topic.partitions().iter().all(|p| p.leader() >= 0))
            .then_some(())
        },
    )
}

/// [`Broker::read_all`] for any Kafka (e.g. librdkafka's mock cluster): every record on
/// the topic from the beginning up to the high watermarks as they are when called, read as
/// a downstream consumer reads by default (`isolation.level=read_committed`: records of
/// open or aborted transactions are not delivered).
pub fn read_all(bootstrap: &str, topic: &str) -> Result<Vec<OwnedMessage>> {
    read_all_as(bootstrap, topic, "read_committed")
}

/// [`read_all`] with `isolation.level=read_uncommitted`: aborted transactions' records too.
pub fn read_all_uncommitted(bootstrap: &str, topic: &str) -> Result<Vec<OwnedMessage>> {
    read_all_as(bootstrap, topic, "read_uncommitted")
}

fn read_all_as(bootstrap: &str, topic: &str, isolation: &str) -> Result<Vec<OwnedMessage>> {
    // The processor's own reader of a whole topic (it ends each partition where librdkafka
    // says it ends: for read_committed, the last stable offset).
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", isolation);
    client.set("group.id", unique_name("hookfold-test-reader"));
    let mut reader = hookfold_kafka::PartitionReader::whole_topic(
        client,
        topic,
        hookfold_kafka::Start::Beginning,
        hookfold_kafka::AtEnd::Stop,
        Duration::from_secs(60),
    )?;
    let mut messages = Vec::new();
    reader.read_to_end(&hookfold_kafka::NEVER, |message| {
        messages.push(message.detach())
    })?;
    Ok(messages)
}

/// Every partition's (low, high) watermarks of a topic, in partition order.
pub fn watermarks(bootstrap: &str, topic: &str) -> Result<Vec<(i64, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .with_context(|| format!("topic {topic} not found"))?
        .partitions()
        .len() as i32;
    (0..partitions)
        .map(|partition| {
            Ok(consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?)
        })
        .collect()
}

/// A record's headers as name → UTF-8 text.
pub fn headers_of(message: &OwnedMessage) -> HashMap<String, String> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The topics and consumer group of one processor deployment under test.
pub struct Topics {
    pub webhooks: String,
    pub incidents: String,
    pub group: String,
    pub partitions: i32,
}

impl Topics {
    /// Fresh webhook, incident, open-incident, changelog and groups topics, and a fresh group.
    pub async fn create(broker: &Broker, partitions: i32) -> Result<Self> {
        let webhooks = unique_name("hookfold.webhooks");
        broker.create_topic(&webhooks, partitions).await?;
        Self::on_input(broker, &webhooks, partitions).await
    }

    /// Another deployment (group, incident and changelog topics) on an existing webhook
    /// topic: runs to compare with each other read the same input.
    pub async fn on_input(broker: &Broker, webhooks: &str, partitions: i32) -> Result<Self> {
        let topics = Self::named(webhooks, partitions);
        broker.create_topic(&topics.incidents, partitions).await?;
        create_topic(
            &broker.bootstrap,
            &topics.open_incidents(),
            partitions,
            &[("cleanup.policy", "compact")],
        )
        .await?;
        create_topic(
            &broker.bootstrap,
            &topics.changelog(),
            partitions,
            &[("cleanup.policy", "compact")],
        )
        .await?;
        broker.create_topic(&topics.groups(), partitions).await?;
        Ok(topics)
    }

    /// Fresh names on `webhooks`, creating nothing (for `hookfold-processor topics --create`).
    pub fn named(webhooks: &str, partitions: i32) -> Self {
        Self {
            webhooks: webhooks.to_owned(),
            incidents: unique_name("hookfold.incidents"),
            group: unique_name("hookfold-processor"),
            partitions,
        }
    }

    pub fn changelog(&self) -> String {
        format!("{}.state", self.group)
    }

    /// The groups' repartition topic (the processor's default name for it).
    pub fn groups(&self) -> String {
        format!("{}.groups", self.group)
    }

    /// The open-incident table (the processor's default name for it).
    pub fn open_incidents(&self) -> String {
        format!("{}.open", self.incidents)
    }

    /// A processor for these topics on `broker`, keeping config, log and (by default) its
    /// state under `dir`.
    pub fn processor(&self, broker: &Broker, dir: &Path) -> ProcessorSetup {
        self.processor_on(&broker.bootstrap, dir)
    }

    /// [`Topics::processor`] on any Kafka (e.g. librdkafka's mock cluster).
    pub fn processor_on(&self, bootstrap: &str, dir: &Path) -> ProcessorSetup {
        ProcessorSetup::new(self, bootstrap, dir)
    }
}
