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
//! format: [`record`] is every record the engine writes, [`restore`] reads a partition into
//! a [`PartitionStore`], [`last_position`] finds where a partition's state is at.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::store::{PartitionStore, StoreError};

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
    #[error("changelog {topic}[{partition}]: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error(
        "changelog {topic}[{partition}]: no record for {waited:?} while {remaining} remain before offset {high} (last error: {last_error})"
    )]
    Stalled {
        topic: String,
        partition: i32,
        waited: Duration,
        remaining: i64,
        high: i64,
        last_error: String,
    },
    #[error("restore of {topic}[{partition}] cancelled (partition revoked)")]
    Cancelled { topic: String, partition: i32 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("restore: {0}")]
    Writer(String),
}

/// Replay writes (of up to [`hookfold_state::changelog::MAX_PENDING`] states each) the
/// reader may be ahead of the restore's writer.
const WRITES_AHEAD: usize = 4;

/// How far a restore got, for logs and metrics.
#[derive(Debug, Clone, Default)]
pub struct RestoreProgress {
    pub partition: i32,
    /// Changelog records read so far.
    pub records: u64,
    /// Changelog records left before the high watermark seen at the start.
    pub remaining: i64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub records: u64,
    pub applied: u64,
    pub skipped: u64,
    pub elapsed: Duration,
    /// The input offset the store is at afterwards.
    pub next_offset: Option<i64>,
    /// Where the time went: the reader waiting for the broker's records, the reader
    /// waiting for the writer (RocksDB slower than the broker), the writer writing, and the
    /// final flush of the restored states to table files.
    pub waiting_for_broker: Duration,
    pub waiting_for_writer: Duration,
    pub writing: Duration,
    pub flushing: Duration,
}

/// The input offset a changelog partition says its state is at: the next offset of its
/// last batch marker (`None`: no marker, or a reset after the last one). Reads backwards
/// from the end in growing steps, so it usually reads only a few records.
pub fn last_position(source: &ChangelogSource<'_>) -> Result<Option<i64>, ChangelogError> {
    let (topic, partition) = (source.topic, source.partition);
    let kafka = |source: KafkaError| ChangelogError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let consumer: BaseConsumer = source
        .client
        .clone()
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(kafka)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, source.timeout)
        .map_err(kafka)?;
    let mut back = 64;
    loop {
        let start = (high - back).max(low);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(kafka)?;
        consumer.assign(&tpl).map_err(kafka)?;
        let mut found: Option<Option<i64>> = None;
        let mut next = start;
        let mut last_record = Instant::now();
        while next < high {
            if last_record.elapsed() > source.timeout {
                return Err(ChangelogError::Stalled {
                    topic: topic.to_owned(),
                    partition,
                    waited: source.timeout,
                    remaining: high - next,
                    high,
                    last_error: "none".into(),
                });
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    last_record = Instant::now();
                    next = message.offset() + 1;
                    let key = message.key().unwrap_or_default();
                    if key == RESET_MARKER_KEY {
                        found = Some(None);
                    } else if key == BATCH_MARKER_KEY {
                        let header = message.headers().and_then(|headers| {
                            headers
                                .iter()
                                .find(|h| h.key == NEXT_OFFSET_HEADER)
                                .and_then(|h| h.value)
                        });
                        if let ChangelogRecord::Batch { next_offset } =
                            ChangelogRecord::read(message.offset(), key, None, header)?
                        {
                            found = Some(Some(next_offset));
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(_)) | None => {}
            }
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

/// What to read a changelog partition with.
pub struct ChangelogSource<'a> {
    pub client: ClientConfig,
    pub topic: &'a str,
    pub partition: i32,
    /// How long to wait for the broker (watermarks, and the next record) before failing.
    pub timeout: Duration,
}

/// Brings `store` up to the changelog: reads partition `source.partition` from just after
/// the store's last marker (the beginning for an empty store) to the high watermark seen
/// at the start, and writes what it finds. `progress` is called every few seconds.
pub fn restore(
    store: &PartitionStore,
    source: ChangelogSource<'_>,
    cancel: &AtomicBool,
    mut progress: impl FnMut(&RestoreProgress),
) -> Result<RestoreReport, ChangelogError> {
    let started = Instant::now();
    let (topic, partition) = (source.topic, source.partition);
    let kafka = |source: KafkaError| ChangelogError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    // `source.client` is a reader's (`consumer::reader_config`): it fetches again as soon as
    // it has drained what it holds.
    let consumer: BaseConsumer = source
        .client
        .clone()
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(kafka)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, source.timeout)
        .map_err(kafka)?;
    let local = store.next_offset()?;
    let start = match store.changelog_offset()? {
        Some(marker) if local.is_some() => (marker + 1).max(low),
        _ => low,
    };
    let mut report = RestoreReport {
        next_offset: local,
        ..RestoreReport::default()
    };
    if start >= high {
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    tracing::info!(
        topic,
        partition,
        from = start,
        to = high,
        local_next_offset = local,
        "restoring partition state from the changelog"
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    store.begin_restore()?;

    // Two threads: this one reads and replays the changelog, a writer applies the replay's
    // writes to RocksDB, in order. Reading and writing each take most of a core at full
    // speed, so overlapping them is most of the restore's speed. The writer works in bursts
    // (it sorts 32 MiB of states into a table file at a time): a few writes of room keep
    // the reader going meanwhile, and bound the memory at WRITES_AHEAD × MAX_PENDING states.
    let mut replay = Replay::new(local);
    std::thread::scope(|scope| -> Result<(), ChangelogError> {
        let (writes, pending) = std::sync::mpsc::sync_channel::<Write>(WRITES_AHEAD);
        let writer = std::thread::Builder::new()
            .name(format!("restore-write-{partition}"))
            .spawn_scoped(scope, move || -> Result<Duration, StoreError> {
                let mut writing = Duration::ZERO;
                let mut writer = store.restore_writer();
                for write in pending {
                    let started = Instant::now();
                    match write {
                        Write::Clear => writer.clear()?,
                        // The position is written once, at the end: until then the restore
                        // flag marks the store as unfinished.
                        Write::States { states, .. } => writer.write(states)?,
                    }
                    writing += started.elapsed();
                }
                let started = Instant::now();
                writer.finish()?;
                writing += started.elapsed();
                Ok(writing)
            })
            .map_err(|e| ChangelogError::Writer(format!("starting the writer thread: {e}")))?;
        let span = ReadSpan {
            consumer: &consumer,
            source: &source,
            start,
            high,
            started,
            cancel,
        };
        let read = read_changelog(&span, &mut progress, &mut replay, &mut report, &writes);
        drop(writes);
        let written = writer
            .join()
            .map_err(|_| ChangelogError::Writer("the writer thread panicked".into()))?;
        // A failed write stops the reader (its channel closes): the write's error is the
        // cause, so it comes first.
        report.writing = written?;
        read
    })?;
    replay.finish();
    let flush_started = Instant::now();
    store.finish_restore([], replay.position())?;
    report.flushing = flush_started.elapsed();
    report.applied = replay.applied;
    report.skipped = replay.skipped;
    report.elapsed = started.elapsed();
    report.next_offset = store.next_offset()?;
    Ok(report)
}

/// What [`read_changelog`] reads: `source`'s partition from `start` up to `high`, through
/// `consumer` (already assigned there), until done or `cancel`.
struct ReadSpan<'a> {
    consumer: &'a BaseConsumer,
    source: &'a ChangelogSource<'a>,
    start: i64,
    high: i64,
    started: Instant,
    cancel: &'a AtomicBool,
}

/// The reading half of [`restore`]: polls the changelog and hands the replay's writes to
/// the writer thread.
fn read_changelog(
    span: &ReadSpan<'_>,
    progress: &mut impl FnMut(&RestoreProgress),
    replay: &mut Replay,
    report: &mut RestoreReport,
    writes: &std::sync::mpsc::SyncSender<Write>,
) -> Result<(), ChangelogError> {
    let ReadSpan {
        consumer,
        source,
        start,
        high,
        started,
        cancel,
    } = *span;
    let (topic, partition) = (source.topic, source.partition);
    // A restore polls a million times, and reading the clock for each cost more than the
    // replay: the clock is read only when the queue is empty (how long the broker kept the
    // reader waiting), and every few thousand records for the stall and progress checks.
    let mut now = Instant::now();
    let mut last_record = now;
    let mut last_progress = now;
    let mut last_error = None;
    let mut next = start;
    let mut since_clock = 0u32;
    while next < high {
        if cancel.load(Ordering::Relaxed) {
            return Err(ChangelogError::Cancelled {
                topic: topic.to_owned(),
                partition,
            });
        }
        if now.duration_since(last_progress) >= Duration::from_secs(5) {
            progress(&RestoreProgress {
                partition,
                records: report.records,
                remaining: high - next,
                elapsed: started.elapsed(),
            });
            last_progress = now;
        }
        if now.duration_since(last_record) > source.timeout {
            return Err(ChangelogError::Stalled {
                topic: topic.to_owned(),
                partition,
                waited: source.timeout,
                remaining: high - next,
                high,
                last_error: last_error.unwrap_or_else(|| "none".into()),
            });
        }
        since_clock += 1;
        if since_clock == 4096 {
            since_clock = 0;
            now = Instant::now();
        }
        let message = match consumer.poll(Duration::ZERO) {
            Some(message) => Some(message),
            None => {
                let polled = Instant::now();
                let message = consumer.poll(Duration::from_millis(100));
                now = Instant::now();
                report.waiting_for_broker += now.duration_since(polled);
                message
            }
        };
        let message = match message {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            // Consumer errors are reports (librdkafka reconnects and retries); only a
            // partition that stays silent fails the restore.
            Some(Err(e)) => {
                tracing::warn!(topic, partition, error = %e, "reading the changelog");
                last_error = Some(e.to_string());
                continue;
            }
            Some(Ok(message)) => message,
        };
        last_record = now;
        let offset = message.offset();
        next = offset + 1;
        if offset >= high {
            break;
        }
        report.records += 1;
        let header = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == NEXT_OFFSET_HEADER)
                .and_then(|h| h.value)
        });
        let record = ChangelogRecord::read(
            offset,
            message.key().unwrap_or_default(),
            message.payload(),
            header,
        )?;
        if let Some(write) = replay.push(offset, record) {
            let handed = Instant::now();
            let sent = writes.send(write);
            now = Instant::now();
            report.waiting_for_writer += now.duration_since(handed);
            if sent.is_err() {
                // The writer failed; its error is reported by the caller.
                return Ok(());
            }
        }
    }
    Ok(())
}
