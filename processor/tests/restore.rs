//! The restores in process (`hookfold_processor::restore::Restores`) on a real broker and
//! real RocksDB stores: several partitions restored at once by the same two threads, a
//! restore cancelled and started again for the same partition (its old store closed before
//! the new one opens), and a cancelled restore never handed back.

use std::collections::BTreeMap;
use std::time::Duration;

use hookfold_processor::changelog::{self, BATCH_MARKER_KEY};
use hookfold_processor::codec;
use hookfold_processor::metrics::Metrics;
use hookfold_processor::restore::{RestoreSettings, Restores};
use hookfold_processor::store::PartitionStore;
use hookfold_rules::KeyState;
use hookfold_tests::{Broker, try_wait_for, unique_name};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

const PARTITIONS: i32 = 3;
const KEYS: usize = 2_000;

/// A changelog as processors leave it: per partition, `KEYS` states and a batch marker
/// saying the input partition is at offset `100 + partition`.
async fn filled_changelog(broker: &Broker) -> String {
    let topic = unique_name("restore.state");
    broker.create_topic(&topic, PARTITIONS).await.unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let state = codec::encode(&KeyState::default());
    for partition in 0..PARTITIONS {
        let next = 100 + i64::from(partition);
        for n in 0..KEYS {
            let key = format!("key-{partition}-{n}");
            producer
                .send(changelog::record(
                    &topic,
                    partition,
                    key.as_bytes(),
                    Some(&state),
                    next,
                ))
                .map_err(|(e, _)| e)
                .unwrap();
            producer.poll(Duration::ZERO);
        }
        let marker = next.to_string();
        producer
            .send(changelog::record(
                &topic,
                partition,
                BATCH_MARKER_KEY,
                Some(marker.as_bytes()),
                next,
            ))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    topic
}

/// Names of this process's threads, but the main one (named after the test binary,
/// `restore-<hash>`), that start with `restore`, sorted.
fn restore_threads() -> Vec<String> {
    let main = std::process::id().to_string();
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let task = task.ok()?;
            if task.file_name() == main.as_str() {
                return None;
            }
            std::fs::read_to_string(task.path().join("comm")).ok()
        })
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("restore"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_restore_at_once_on_two_threads_and_a_cancelled_one_is_never_handed_back() {
    let broker = Broker::shared().unwrap();
    let topic = filled_changelog(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    // RocksDB runs one timer thread for the process while any store is open, named after
    // the thread that opened the first: keep a store open here so it is not counted as ours.
    let _timer = PartitionStore::open(&dir.path().join("first")).unwrap();
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", unique_name("restore-test"));
    let restores = Restores::new(RestoreSettings {
        client,
        changelog_topic: topic,
        timeout: Duration::from_secs(30),
        group_offsets: None,
        metrics: Metrics::new(),
    })
    .unwrap();
    let path = |p: i32| dir.path().join(format!("in-{p}"));
    for partition in 0..PARTITIONS {
        restores.start(partition, None, path(partition)).unwrap();
    }
    // Partition 1 revoked at once and assigned again: the first restore's store must be
    // closed before the second opens it (RocksDB locks it), and only the second comes back.
    restores.cancel(&[1]);
    restores.start(1, None, path(1)).unwrap();
    // A thread names itself once it runs (librdkafka's threads start with the name of the
    // thread that made them, `restore`, and rename themselves), and the reader starts the
    // writer: wait for the names to settle on one reader and one writer for all partitions.
    let mut seen = Vec::new();
    let settled = try_wait_for("the restore threads named", Duration::from_secs(30), || {
        seen = restore_threads();
        Ok((seen == ["restore", "restore-write"]).then_some(()))
    });
    assert!(
        settled.is_ok(),
        "one reader and one writer for every partition: {seen:?}"
    );

    let mut finished = BTreeMap::new();
    try_wait_for("every partition restored", Duration::from_secs(60), || {
        for f in restores.take_finished()? {
            assert!(
                finished.insert(f.partition, f.store).is_none(),
                "partition {} handed back twice",
                f.partition
            );
        }
        Ok((finished.len() == PARTITIONS as usize).then_some(()))
    })
    .unwrap();
    for (partition, store) in &finished {
        assert_eq!(
            store.next_offset().unwrap(),
            Some(100 + i64::from(*partition)),
            "partition {partition} is at its marker's input offset"
        );
        assert_eq!(
            store.states().count(),
            KEYS,
            "partition {partition}'s states"
        );
    }

    // A restore cancelled: its store is not handed back (while another, started after it,
    // is), and it can be opened at once after the restores stop.
    drop(finished);
    let cancelled = dir.path().join("cancelled");
    restores.start(0, None, cancelled.clone()).unwrap();
    restores.cancel(&[0]);
    restores.start(2, None, path(2)).unwrap();
    try_wait_for(
        "partition 2 restored again",
        Duration::from_secs(60),
        || {
            let finished = restores.take_finished()?;
            assert!(
                finished.iter().all(|f| f.partition != 0),
                "a cancelled restore was handed back"
            );
            Ok(finished.iter().any(|f| f.partition == 2).then_some(()))
        },
    )
    .unwrap();
    drop(restores);
    hookfold_processor::store::PartitionStore::open(&cancelled)
        .expect("the cancelled store closed");
}
