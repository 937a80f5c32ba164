//! Reading a whole topic from its beginning: every partition assigned at its first offset,
//! and the end each had when the reader opened, so that a caller knows when it has read
//! everything there was ("loaded") and may go on following what comes after. No group is
//! joined and nothing is committed: every reader reads everything.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("creating a Kafka consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("reading the metadata of {topic}: {source}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {0} does not exist; create it with `hookfold-processor topics --create`")]
    Missing(String),
    #[error("reading the watermarks of {topic}[{partition}]: {source}")]
    Watermarks {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error("assigning {topic}: {source}")]
    Assign {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("reading {topic}: {source}")]
    Consume {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("no record from {topic} for {timeout:?} before the end of partitions {partitions:?}")]
    Stalled {
        topic: String,
        timeout: Duration,
        partitions: Vec<i32>,
    },
}

pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    /// Partitions not read to their end yet, with that end.
    ends: HashMap<i32, i64>,
}

impl TopicReader {
    /// `client` carries the connection ([`crate::client_config`]); `group` is only the
    /// consumer's `group.id` (librdkafka wants one), never joined.
    pub fn open(
        mut client: ClientConfig,
        topic: &str,
        group: &str,
        timeout: Duration,
    ) -> Result<Self, ReadError> {
        let consumer: BaseConsumer = client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            // A topic written in transactions ends in commit markers, which are never
            // delivered: the end of a partition is where librdkafka says it is (for a
            // read_committed reader, the last stable offset).
            .set("enable.partition.eof", "true")
            .create()
            .map_err(ReadError::Create)?;
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|source| ReadError::Metadata {
                topic: topic.to_owned(),
                source,
            })?;
        let partitions = match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().len(),
            _ => return Err(ReadError::Missing(topic.to_owned())),
        };
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        let assign = |source| ReadError::Assign {
            topic: topic.to_owned(),
            source,
        };
        for partition in 0..partitions as i32 {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|source| ReadError::Watermarks {
                    topic: topic.to_owned(),
                    partition,
                    source,
                })?;
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(assign)?;
            if high > low {
                ends.insert(partition, high);
            }
        }
        consumer.assign(&tpl).map_err(assign)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            ends,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether every partition has been read up to where it ended when the reader opened.
    pub fn loaded(&self) -> bool {
        self.ends.is_empty()
    }

    /// Whether the brokers answer a metadata request for the topic now (a consumer's poll
    /// does not fail while they are away: librdkafka reconnects quietly).
    pub fn reachable(&self, timeout: Duration) -> Result<(), ReadError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|source| ReadError::Metadata {
                topic: self.topic.clone(),
                source,
            })?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() => Ok(()),
            _ => Err(ReadError::Missing(self.topic.clone())),
        }
    }

    /// The next record, waiting at most `wait`.
    pub fn poll(&mut self, wait: Duration) -> Result<Option<BorrowedMessage<'_>>, ReadError> {
        match self.consumer.poll(wait) {
            Some(Ok(message)) => {
                let partition = message.partition();
                if self
                    .ends
                    .get(&partition)
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    self.ends.remove(&partition);
                }
                Ok(Some(message))
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                self.ends.remove(&partition);
                Ok(None)
            }
            Some(Err(source)) => Err(ReadError::Consume {
                topic: self.topic.clone(),
                source,
            }),
            None => Ok(None),
        }
    }

    /// Hands every record up to the ends to `each`; fails when none arrives for `timeout`
    /// before that.
    pub fn read_to_end(
        &mut self,
        timeout: Duration,
        mut each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), ReadError> {
        let mut last = Instant::now();
        while !self.loaded() {
            match self.poll(Duration::from_millis(100))? {
                Some(message) => {
                    each(&message);
                    last = Instant::now();
                }
                None if last.elapsed() > timeout => {
                    return Err(ReadError::Stalled {
                        topic: self.topic.clone(),
                        timeout,
                        partitions: self.ends.keys().copied().collect(),
                    });
                }
                None => {}
            }
        }
        Ok(())
    }
}
