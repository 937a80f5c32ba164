//! The changelog topic (`<group>.state`): every state change of a partition, so that a
//! partition moving to another processor is restored from it instead of being rebuilt from
//! all history.
//!
//! Changelog partition `p` belongs to input partition `p`. It holds three kinds of record:
//! - a **state**: key = entity key, value = encoded state (the store's value), header
//!   `hookfold_next_offset` = the input offset the state is at after its batch;
//! - a **batch marker** (key [`BATCH_MARKER_KEY`]): the last record of every committed
//!   batch; its header says where the batch left the input partition. States after the last
//!   marker belong to a batch whose commit failed, and are not restored;
//! - a **reset marker** (key [`RESET_MARKER_KEY`]), written by `hookfold-processor rebuild`:
//!   the state starts again from nothing here.
//!
//! The records and [`Replay`], which turns their sequence into store writes, are pure and
//! live in `hookfold-state`; this module is the Kafka side, writer and reader of one
//! format: [`record`] is every record the engine writes, [`read`] every record a reader
//! takes back (the restore, `restore`, brings a store up to its partition with it), and
//! [`last_position`] finds where a partition's state is at.

use std::time::Duration;

use hookfold_kafka::{AtEnd, NEVER, PartitionReader, ReadError, Start};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;

pub use hookfold_state::changelog::{
    BATCH_MARKER_KEY, ChangelogRecord, NEXT_OFFSET_HEADER, RESET_MARKER_KEY, RecordError, Replay,
    Write,
};

/// A changelog record: the entity key (or a marker's key), its value (`None`: a tombstone,
/// the key is deleted, as a timer that fired), and the input offset its partition's state is
/// at after the batch, as a header.
pub fn record<'a>(
    topic: &'a str,
    partition: i32,
    key: &'a [u8],
    value: Option<&'a [u8]>,
    next_offset: i64,
) -> BaseRecord<'a, [u8], [u8]> {
    let offset = next_offset.to_string();
    let headers = OwnedHeaders::new().insert(Header {
        key: NEXT_OFFSET_HEADER,
        value: Some(offset.as_str()),
    });
    let record = BaseRecord::to(topic)
        .partition(partition)
        .key(key)
        .headers(headers);
    match value {
        Some(value) => record.payload(value),
        None => record,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// A changelog record as read back: what [`record`] wrote.
pub fn read(message: &impl Message) -> Result<ChangelogRecord<'_>, RecordError> {
    let header = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == NEXT_OFFSET_HEADER)
            .and_then(|h| h.value)
    });
    ChangelogRecord::read(
        message.offset(),
        message.key().unwrap_or_default(),
        message.payload(),
        header,
    )
}

/// What to read a changelog partition with.
pub struct ChangelogSource<'a> {
    pub client: ClientConfig,
    pub topic: &'a str,
    pub partition: i32,
    /// How long to wait for the broker (watermarks, and the next record) before failing.
    pub timeout: Duration,
}

/// The input offset a changelog partition says its state is at: the next offset of its
/// last batch marker (`None`: no marker, or a reset after the last one). Reads backwards
/// from the end in growing steps, so it usually reads only a few records.
pub fn last_position(source: &ChangelogSource<'_>) -> Result<Option<i64>, ChangelogError> {
    let partition = source.partition;
    let mut reader = PartitionReader::new(source.client.clone(), source.topic, source.timeout)?;
    let (low, high) = reader.watermarks(partition)?;
    let mut back = 64;
    loop {
        let start = (high - back).max(low);
        reader.add(partition, Start::Offset(start), AtEnd::Stop)?;
        let mut found: Option<Option<i64>> = None;
        let mut failed = None;
        reader.read_to_end(&NEVER, |message| {
            let key = message.key().unwrap_or_default();
            if key != RESET_MARKER_KEY && key != BATCH_MARKER_KEY {
                return;
            }
            match read(message) {
                Ok(ChangelogRecord::Reset) => found = Some(None),
                Ok(ChangelogRecord::Batch { next_offset }) => found = Some(Some(next_offset)),
                Ok(_) => {}
                Err(e) => failed = Some(e),
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        if let Some(position) = found {
            return Ok(position);
        }
        if start == low {
            return Ok(None);
        }
        back *= 64;
    }
}
