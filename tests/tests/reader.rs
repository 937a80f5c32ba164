//! The one reader of partitions to their end (`hookfold_kafka::PartitionReader`) on a real
//! broker: each partition added from an offset of its own is read to the end it had then
//! and reported ended once, after its last record; records written after that end are not
//! delivered with `AtEnd::Stop` and are with `AtEnd::Follow`; a partition removed delivers
//! nothing more, and can be added again; a transactional topic ends at its commit markers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hookfold_kafka::{AtEnd, NEVER, PartitionReader, Polled, Start};
use hookfold_tests::{Broker, unique_name};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const STALL: Duration = Duration::from_secs(30);

fn client(bootstrap: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", bootstrap);
    client
}

/// Writes `count` records to each of `partitions`, values "<partition>:<n>" from `first`.
fn produce(producer: &BaseProducer, topic: &str, partitions: &[i32], first: usize, count: usize) {
    for &partition in partitions {
        for n in first..first + count {
            let value = format!("{partition}:{n}");
            producer
                .send(
                    BaseRecord::<(), str>::to(topic)
                        .partition(partition)
                        .payload(&value),
                )
                .expect("queued");
        }
    }
    producer.flush(Duration::from_secs(30)).expect("acked");
}

fn producer(bootstrap: &str) -> BaseProducer {
    client(bootstrap).create().expect("producer")
}

/// Polls until nothing is left to read (or `deadline`), collecting records and ends.
fn drain(reader: &mut PartitionReader, until: impl Fn(&PartitionReader) -> bool) -> Drained {
    let mut drained = Drained::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !until(reader) {
        assert!(
            Instant::now() < deadline,
            "the reader did not finish in 60 s"
        );
        match reader.poll(Duration::from_millis(100)).expect("poll") {
            Polled::Record(message) => drained
                .records
                .entry(message.partition())
                .or_default()
                .push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into()),
            Polled::Ended(partition) => drained.ended.push(partition),
            Polled::Nothing => {}
        }
    }
    drained
}

#[derive(Default)]
struct Drained {
    records: BTreeMap<i32, Vec<String>>,
    ended: Vec<i32>,
}

fn values(partition: i32, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("{partition}:{n}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_are_read_from_their_offsets_to_the_end_they_had_and_each_ends_once() {
    let broker = Broker::shared().unwrap();
    let topic = unique_name("reader");
    broker.create_topic(&topic, 3).await.unwrap();
    let producer = producer(&broker.bootstrap);
    produce(&producer, &topic, &[0, 1], 0, 50);

    let mut reader = PartitionReader::new(client(&broker.bootstrap), &topic, STALL).unwrap();
    assert_eq!(reader.partitions().unwrap(), 3);
    assert_eq!(reader.add(0, Start::Beginning, AtEnd::Stop).unwrap(), 50);
    assert_eq!(reader.add(1, Start::Offset(30), AtEnd::Stop).unwrap(), 20);
    // Empty: nothing to read, not read at all.
    assert_eq!(reader.add(2, Start::Beginning, AtEnd::Stop).unwrap(), 0);
    // Written after the ends were taken: not delivered.
    produce(&producer, &topic, &[0, 1], 50, 10);

    let drained = drain(&mut reader, |r| r.reading().next().is_none());
    assert_eq!(drained.records[&0], values(0, 0..50));
    assert_eq!(drained.records[&1], values(1, 30..50));
    let mut ended = drained.ended.clone();
    ended.sort_unstable();
    assert_eq!(
        ended,
        vec![0, 1],
        "each partition ends once, after its last record"
    );
    assert!(reader.loaded());

    // Added again from where it stopped: the records written since.
    assert_eq!(reader.add(0, Start::Offset(50), AtEnd::Stop).unwrap(), 10);
    let drained = drain(&mut reader, |r| r.reading().next().is_none());
    assert_eq!(drained.records[&0], values(0, 50..60));
    assert_eq!(drained.ended, vec![0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_followed_partition_is_loaded_at_its_end_and_keeps_delivering_a_removed_one_stops() {
    let broker = Broker::shared().unwrap();
    let topic = unique_name("reader");
    broker.create_topic(&topic, 2).await.unwrap();
    let producer = producer(&broker.bootstrap);
    produce(&producer, &topic, &[0, 1], 0, 5);

    let mut reader = PartitionReader::whole_topic(
        client(&broker.bootstrap),
        &topic,
        Start::Beginning,
        AtEnd::Follow,
        STALL,
    )
    .unwrap();
    let drained = drain(&mut reader, PartitionReader::loaded);
    assert_eq!(drained.records[&0], values(0, 0..5));
    assert_eq!(drained.records[&1], values(1, 0..5));

    reader.remove(1).unwrap();
    produce(&producer, &topic, &[0, 1], 5, 3);
    let mut later = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while later.len() < 3 {
        assert!(Instant::now() < deadline, "followed records did not come");
        if let Polled::Record(message) = reader.poll(Duration::from_millis(100)).unwrap() {
            assert_eq!(
                message.partition(),
                0,
                "a removed partition delivers nothing"
            );
            later.push(String::from_utf8_lossy(message.payload().unwrap()).into_owned());
        }
    }
    assert_eq!(later, values(0, 5..8));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transactional_topic_ends_at_its_last_stable_offset() {
    let broker = Broker::shared().unwrap();
    let topic = unique_name("reader-tx");
    broker.create_topic(&topic, 1).await.unwrap();
    let producer: BaseProducer = client(&broker.bootstrap)
        .set("transactional.id", unique_name("reader-tx"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    produce(&producer, &topic, &[0], 0, 4);
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();
    // The high watermark counts the commit marker, which is never delivered.
    producer.begin_transaction().unwrap();
    produce(&producer, &topic, &[0], 4, 2);

    let mut committed = client(&broker.bootstrap);
    committed.set("isolation.level", "read_committed");
    let mut reader =
        PartitionReader::whole_topic(committed, &topic, Start::Beginning, AtEnd::Stop, STALL)
            .unwrap();
    let mut read = Vec::new();
    reader
        .read_to_end(&NEVER, |m| {
            read.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned())
        })
        .unwrap();
    assert_eq!(
        read,
        values(0, 0..4),
        "the open transaction's records are not read"
    );
    producer.abort_transaction(Duration::from_secs(30)).unwrap();
}
