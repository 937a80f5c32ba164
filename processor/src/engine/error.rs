//! What folding and committing a batch can fail with: a store, a state that does not
//! decode, the producer, the transaction (aborted and redone, or fenced for good).

use rdkafka::error::KafkaError;

use crate::codec::CodecError;
use crate::delivery::DeliveryError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("partition {partition}, key `{key}`: {source}")]
    State {
        partition: i32,
        key: String,
        #[source]
        source: CodecError,
    },
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("producing: {0}")]
    Produce(#[source] KafkaError),
    #[error("incident event {0} has no valid headers (a bug in the rules)")]
    Headers(String),
    #[error("transaction: {0}")]
    Transaction(#[source] KafkaError),
    /// The batch's transaction failed and was aborted: nothing of it is visible, and its
    /// partitions are rewound to redo it.
    #[error("transaction aborted (the batch is redone): {source}")]
    Aborted {
        partitions: Vec<i32>,
        #[source]
        source: Box<EngineError>,
    },
    /// The transactional producer cannot go on: another producer took its
    /// `transactional.id`, or the coordinator fenced it.
    #[error(
        "the transactional producer {transactional_id} is fenced and can write nothing more \
         ({reason}): another processor with the same instance_id started, or this one was \
         paused past its session or transaction timeout; nothing it wrote since is visible \
         to read_committed readers"
    )]
    Fenced {
        transactional_id: String,
        reason: String,
    },
    #[error("exactly_once needs the consumer's group metadata, and there is none (not in a group)")]
    NoGroup,
}
