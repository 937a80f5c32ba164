//! Several processors in one group against a real broker: partitions move between them
//! with their state (restored from the changelog), and the outcome is the one a single
//! processor gives: the same incident events (a repeat only as an identical record) and
//! the same final state, and an open-incident table that holds exactly what is open.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use hookfold_proto::v1::EntityKind;
use hookfold_tests::comparisons::{assert_exactly_once, assert_table_matches, open_by_fold};
use hookfold_tests::group::wait_owned;
use hookfold_tests::records::{GROUPED_ROUTES, WebhookRecord, mixed_story, produce, timed};
use hookfold_tests::{
    Broker, Processor, ProcessorSetup, Topics, assert_same_incidents, reference_run,
    stop_and_collect, wait_until,
};
use rdkafka::Message as _;

fn sum(owned: &BTreeMap<i32, i64>) -> i64 {
    owned.values().sum()
}

async fn start(t: &Topics, broker: &Broker, dir: &Path) -> Processor {
    t.processor(broker, dir)
        .without_grace()
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_state_dir_is_restored_from_the_changelog() {
    const FIRST: usize = 1_500;
    const TOTAL: usize = 3_000;
    let broker = Broker::start().unwrap();
    let story = mixed_story(TOTAL, 0xd1e);
    let t = Topics::create(&broker, 3).await.unwrap();
    produce(&broker.bootstrap, &t.webhooks, &story[..FIRST])
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut processor = start(&t, &broker, dir.path()).await;
    processor
        .wait_committed(FIRST as i64, Duration::from_secs(300))
        .await
        .unwrap();
    processor.stop().unwrap();
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();

    produce(&broker.bootstrap, &t.webhooks, &story[FIRST..])
        .await
        .unwrap();
    processor.restart().await.unwrap();
    processor
        .wait_committed(TOTAL as i64, Duration::from_secs(300))
        .await
        .unwrap();
    let restored = processor
        .metric_sum("hookfold_processor_restore_records_total")
        .await
        .unwrap();
    assert!(
        restored > 0,
        "the empty state_dir was restored from the changelog"
    );
    let run = stop_and_collect(&mut processor).unwrap();

    // A single processor over the whole input: what the restored one must equal.
    let single = Topics::on_input(&broker, &t.webhooks, 3).await.unwrap();
    let single_dir = tempfile::tempdir().unwrap();
    let reference = reference_run(
        single.processor(&broker, single_dir.path()).without_grace(),
        TOTAL as i64,
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let repeats = assert_same_incidents(&reference.incidents, &run.incidents).unwrap();
    // A clean stop commits everything, and the restore resumes exactly there: folding the
    // first half again (no restore) would repeat every one of its incident events.
    assert_eq!(repeats, 0, "events repeated after a restore");
    assert_eq!(
        run.state, reference.state,
        "restored state differs from a single run's"
    );
    assert!(
        reference.state.len() > 20,
        "the story has state ({})",
        reference.state.len()
    );
}

/// The 1 → 3 → 1 scale-out while events flow, with one of the three killed by SIGKILL in
/// the middle of the rebalance that brings them in, and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_three_to_one_processors_with_a_sigkill_equal_a_single_processor() {
    one_to_three_to_one(false).await;
}

/// The same under `exactly_once`: a `read_committed` reader sees no repeat at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_three_to_one_processors_with_a_sigkill_under_exactly_once_repeat_nothing() {
    one_to_three_to_one(true).await;
}

async fn one_to_three_to_one(exactly_once: bool) {
    const PARTITIONS: i32 = 6;
    let total: usize = std::env::var("SCALING_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let broker = Broker::start().unwrap();
    // Timed, with grouped routes: the groups' two stages go through the rebalances and the
    // SIGKILL too.
    let story: Vec<WebhookRecord> = timed(mixed_story(total, 0x5ca1e), 20);
    let t = Topics::create(&broker, PARTITIONS).await.unwrap();

    // The events arrive over the whole run, in chunks, while processors come and go.
    let feeder = {
        let bootstrap = broker.bootstrap.clone();
        let topic = t.webhooks.clone();
        let story = story.clone();
        tokio::spawn(async move {
            for chunk in story.chunks(1_000) {
                produce(&bootstrap, &topic, chunk).await.unwrap();
            }
        })
    };

    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (1..=3).map(|n| root.path().join(format!("p{n}"))).collect();
    let guaranteed = |setup: ProcessorSetup| {
        if exactly_once {
            setup.exactly_once()
        } else {
            setup
        }
    };
    let spawn = |n: usize| {
        let setup = guaranteed(
            t.processor(&broker, &dirs[n])
                .without_grace()
                .extra(GROUPED_ROUTES),
        );
        async move { setup.start().await.unwrap() }
    };
    let mut p1 = spawn(0).await;
    let quarter = (total / 5) as i64;
    wait_owned(
        "one processor to fold the first fifth",
        &mut [&mut p1],
        Duration::from_secs(600),
        |o| o.len() == PARTITIONS as usize && sum(o) >= quarter,
    )
    .await
    .unwrap();

    // 1 -> 3, and SIGKILL one newcomer as soon as it has been handed partitions.
    let mut p2 = spawn(1).await;
    let mut p3 = spawn(2).await;
    wait_until(
        "p2 to get a partition",
        Duration::from_secs(180),
        async || {
            let assigned = p2
                .partition_metric("hookfold_processor_partition_assigned")
                .await
                .unwrap_or_default();
            Ok(assigned.values().any(|&a| a == 1).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", p2.process.output()));
    p2.process.kill();
    p2.restart().await.unwrap();
    let spread = wait_owned(
        "three processors to share the partitions and fold three fifths",
        &mut [&mut p1, &mut p2, &mut p3],
        Duration::from_secs(600),
        |o| o.len() == PARTITIONS as usize && sum(o) >= 3 * quarter,
    )
    .await
    .unwrap();
    for (name, p) in [("p1", &p1), ("p2", &p2), ("p3", &p3)] {
        let owned = p.owned_offsets().await.unwrap();
        eprintln!("{name} owns {:?}", owned.keys().collect::<Vec<_>>());
        assert!(!owned.is_empty(), "{name} got no partition: {spread:?}");
    }

    // 3 -> 1: the two leave cleanly; p1 takes everything back, restoring what they did.
    for p in [&mut p2, &mut p3] {
        p.stop().unwrap();
    }
    feeder.await.unwrap();
    wait_owned(
        "p1 to own every partition and fold every event",
        &mut [&mut p1],
        Duration::from_secs(600),
        |o| o.len() == PARTITIONS as usize && sum(o) >= total as i64,
    )
    .await
    .unwrap();
    let restored = p1
        .metric_sum("hookfold_processor_restore_records_total")
        .await
        .unwrap();
    assert!(restored > 0, "p1 restored the partitions it got back");
    p1.wait_groups_folded(Duration::from_secs(300))
        .await
        .unwrap();
    let run = stop_and_collect(&mut p1).unwrap();
    let (state, outputs) = (run.state, run.incidents);

    // A single processor over the whole input: what the 1 -> 3 -> 1 run must equal.
    let single = Topics::on_input(&broker, &t.webhooks, PARTITIONS)
        .await
        .unwrap();
    let single_dir = root.path().join("single");
    let reference = reference_run(
        guaranteed(
            single
                .processor(&broker, &single_dir)
                .without_grace()
                .extra(GROUPED_ROUTES),
        ),
        total as i64,
        Duration::from_secs(900),
    )
    .await
    .unwrap();
    let (reference_state, reference_out) = (reference.state, reference.incidents);

    let groups = reference_out
        .iter()
        .filter(|m| m.key().is_some_and(|k| k.starts_with(b"route/")))
        .count();
    assert!(
        groups >= 5,
        "the story makes group incidents: {groups} events"
    );
    let repeats = assert_same_incidents(&reference_out, &outputs).unwrap();
    if exactly_once {
        assert_exactly_once(&reference_out, &outputs).unwrap();
    }
    assert_eq!(
        state, reference_state,
        "final state differs from a single processor's"
    );
    // The open-incident table, through the rebalances and the SIGKILL, holds exactly what
    // the incident topic says is open; and so does `incidents --json`, filters included.
    let table = broker.read_all(&t.open_incidents()).unwrap();
    let open = assert_table_matches(&outputs, &table).unwrap();
    assert!(open > 0, "the story leaves incidents open");
    assert_table_matches(
        &reference_out,
        &broker.read_all(&single.open_incidents()).unwrap(),
    )
    .unwrap();
    let expected = open_by_fold(&outputs).unwrap();
    for (args, kind) in [
        (&[][..], None),
        (&["--kind", "agent"][..], Some(EntityKind::Agent)),
    ] {
        let keys: BTreeSet<String> = p1.listed_incidents(args).unwrap().into_iter().collect();
        let wanted: BTreeSet<String> = expected
            .values()
            .filter(|e| kind.is_none_or(|k| e.entity.as_ref().is_some_and(|x| x.kind == k as i32)))
            .map(|e| e.dedup_key.clone())
            .collect();
        assert!(!wanted.is_empty(), "{args:?}: nothing to compare");
        assert_eq!(keys, wanted, "{args:?}");
    }
    eprintln!(
        "{total} events, exactly_once {exactly_once}; single processor: {} incident events ({groups} of groups); 1->3->1 with a SIGKILL: {} ({repeats} identical repeats); {restored} changelog records restored by p1; {open} open in the table",
        reference_out.len(),
        outputs.len()
    );
}
