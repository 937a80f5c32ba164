//! `processing.guarantee = "exactly_once"` against a real broker: whatever happens to the
//! processors (SIGKILL, a pause past their session, stores lost or left behind), a consumer
//! reading the incident topic with `read_committed` (librdkafka's default) sees exactly
//! the clean run's incident events, each once, and the final state is the clean run's.

use std::path::Path;
use std::time::Duration;

use hookfold_tests::comparisons::{
    assert_exactly_once, assert_same_state, assert_table_matches, outputs_by_id,
};
use hookfold_tests::group::{committed_by, wait_owned};
use hookfold_tests::records::{GROUPED_ROUTES, mixed_story, produce, timed};
use hookfold_tests::{
    Broker, Processor, Run, Signal, Topics, read_all_uncommitted, reference_run, stop_and_collect,
    wait_until,
};

/// A clean run under `exactly_once` over `total` records of `t`'s input: the reference.
async fn clean_run(broker: &Broker, t: &Topics, total: i64) -> Run {
    clean_run_with(broker, t, total, "").await
}

/// [`clean_run`] with `extra` configuration (routes).
async fn clean_run_with(broker: &Broker, t: &Topics, total: i64, extra: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let setup = t.processor(broker, dir.path()).exactly_once().extra(extra);
    reference_run(setup, total, Duration::from_secs(300))
        .await
        .unwrap()
}

/// Waits until the processor has committed `total` records, then stops it cleanly.
async fn finish(processor: &mut Processor, total: i64) {
    processor
        .wait_committed(total, Duration::from_secs(300))
        .await
        .unwrap();
    processor.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_three_points_under_exactly_once_repeats_nothing() {
    // The points: from outside at 2,000 records, inside an open transaction, and between a
    // commit and the store write.
    const EVENTS: usize = 10_000;
    let broker = Broker::start().unwrap();
    // Timed, with grouped routes: a crash between the stages' writes is tried too.
    let story = timed(mixed_story(EVENTS, 0xe05), 50);
    let clean = Topics::create(&broker, 3).await.unwrap();
    produce(&broker.bootstrap, &clean.webhooks, &story)
        .await
        .unwrap();
    let Run {
        incidents: clean_out,
        state: clean_state,
    } = clean_run_with(&broker, &clean, EVENTS as i64, GROUPED_ROUTES).await;

    // No instance_id (each start a transactional id of its own), as processors run by
    // default: what a killed one left open is aborted by the broker after its timeout.
    let crashed = Topics::on_input(&broker, &clean.webhooks, 3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = crashed
        .processor(&broker, dir.path())
        .exactly_once()
        .extra(GROUPED_ROUTES)
        .start()
        .await
        .unwrap();
    // 1. From outside, once 2,000 records are committed: wherever the processor is then.
    processor
        .wait_committed(2_000, Duration::from_secs(180))
        .await
        .unwrap();
    processor.process.kill();
    // 2. With the restart's first batch's records and offsets in an open transaction; 3.
    // with the next restart's first batch committed and the stores not written
    // (HOOKFOLD_TEST_CRASH_AT). The first batch of each: with 5000-record batches, the
    // records left may fit in one.
    for point in ["before_commit:1", "after_commit:1"] {
        processor.set_env("HOOKFOLD_TEST_CRASH_AT", point);
        processor.restart().await.unwrap();
        let status = hookfold_tests::wait_for(point, Duration::from_secs(180), || {
            processor.process.exited()
        })
        .unwrap();
        assert!(
            !status.success(),
            "{point}: the processor killed itself: {status}"
        );
    }
    processor.set_env("HOOKFOLD_TEST_CRASH_AT", "");
    processor.restart().await.unwrap();
    processor
        .wait_committed(EVENTS as i64, Duration::from_secs(300))
        .await
        .unwrap();
    processor
        .wait_groups_folded(Duration::from_secs(120))
        .await
        .unwrap();
    let Run {
        incidents: crash_out,
        state: crash_state,
    } = stop_and_collect(&mut processor).unwrap();

    assert!(clean_out.len() > 500, "the story makes incidents");
    let groups = clean_out
        .iter()
        .filter(|m| rdkafka::Message::key(*m).is_some_and(|k| k.starts_with(b"route/")))
        .count();
    assert!(
        groups >= 5,
        "the story makes group incidents: {groups} events"
    );
    assert_exactly_once(&clean_out, &crash_out).unwrap();
    assert_same_state(&crash_state, &clean_state, "after three SIGKILLs").unwrap();
    assert_table_matches(
        &crash_out,
        &broker.read_all(&crashed.open_incidents()).unwrap(),
    )
    .unwrap();

    // What a read_uncommitted consumer sees: the aborted transactions' records too; at
    // least those of the transaction left open at `before_commit`.
    let uncommitted = read_all_uncommitted(&broker.bootstrap, &crashed.incidents).unwrap();
    let distinct = outputs_by_id(&uncommitted).len();
    assert!(
        uncommitted.len() > crash_out.len(),
        "the transaction open at the crash wrote records only a read_uncommitted reader sees"
    );
    eprintln!(
        "exactly_once, 3 SIGKILLs over {EVENTS} events: read_committed {} records ({} in the \
         clean run, no repeat); read_uncommitted {} records over {distinct} ids ({} of them \
         from aborted transactions)",
        crash_out.len(),
        clean_out.len(),
        uncommitted.len(),
        uncommitted.len() - crash_out.len()
    );
}

/// The store of a partition whose processor was paused past its session: `SIGSTOP` it
/// until the group hands its partitions to another, then `SIGCONT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_processor_resumed_after_its_partitions_moved_makes_nothing_visible() {
    const EVENTS: usize = 8_000;
    let broker = Broker::start().unwrap();
    let story = mixed_story(EVENTS, 0x2077);
    let t = Topics::create(&broker, 3).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let setup = |name: &str| {
        t.processor(&broker, &root.path().join(name))
            .exactly_once()
            // The group notices a paused member after this; librdkafka's default is 45 s,
            // and the broker's minimum 6 s.
            .property("session.timeout.ms", "10000")
    };
    let quarter = EVENTS / 4;
    produce(&broker.bootstrap, &t.webhooks, &story[..quarter])
        .await
        .unwrap();
    let mut zombie = setup("zombie").start().await.unwrap();
    zombie
        .wait_committed(quarter as i64, Duration::from_secs(120))
        .await
        .unwrap();
    let mut other = setup("other").start().await.unwrap();
    wait_owning(
        &mut other,
        |n| n >= 1,
        "the second processor to get a partition",
    )
    .await;
    wait_owning(&mut zombie, |n| n >= 1, "the first to keep one").await;

    // Paused while records are arriving and being folded: it may hold some fetched and not
    // yet committed, or be inside a transaction.
    let feeder = {
        let (bootstrap, topic) = (broker.bootstrap.clone(), t.webhooks.clone());
        let part = story[quarter..2 * quarter].to_vec();
        tokio::spawn(async move { produce(&bootstrap, &topic, &part).await })
    };
    wait_until(
        "the second part to be folded",
        Duration::from_secs(120),
        async || Ok((committed_sum(&[&zombie, &other]).await > quarter as i64 + 100).then_some(())),
    )
    .await
    .unwrap();
    zombie.process.signal(Signal::Stop).unwrap();
    feeder.await.unwrap().unwrap();
    // The group drops the paused member and gives the other every partition.
    wait_owning(&mut other, |n| n == 3, "the other to own all partitions").await;
    other
        .wait_committed(2 * quarter as i64, Duration::from_secs(120))
        .await
        .unwrap();

    // Records the zombie fetched before the pause, or fetches now from partitions it
    // still believes it owns, must not become visible.
    zombie.process.signal(Signal::Cont).unwrap();
    produce(&broker.bootstrap, &t.webhooks, &story[2 * quarter..])
        .await
        .unwrap();
    // The zombie may exit (fenced): only the other one must live.
    let mut both = 0;
    wait_until(
        "every event committed",
        Duration::from_secs(240),
        async || {
            both = committed_sum(&[&zombie, &other]).await;
            if both >= EVENTS as i64 {
                return Ok(Some(()));
            }
            other.process.fail_if_exited()?;
            Ok(None)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#} ({both} of {EVENTS}):\n{}\n----\n{}",
            zombie.process.output_tail(),
            other.process.output_tail()
        )
    });
    let zombie_exited = zombie.process.exited();
    if zombie_exited.is_none() {
        // It noticed, and is a member of the group again.
        wait_owning(
            &mut zombie,
            |n| n >= 1,
            "the resumed processor to own a partition again",
        )
        .await;
    }
    let zombie_log = strip_ansi(&zombie.process.output());
    for processor in [&mut zombie, &mut other] {
        if processor.process.is_running() {
            processor.stop().unwrap();
        }
    }
    // The reference: a clean run over the same input, once it is complete.
    let clean = Topics::on_input(&broker, &t.webhooks, 3).await.unwrap();
    let clean_out = clean_run(&broker, &clean, EVENTS as i64).await.incidents;
    let out = broker.read_all(&t.incidents).unwrap();
    assert_exactly_once(&clean_out, &out).unwrap();
    let noticed: Vec<&str> = zombie_log
        .lines()
        .filter(|l| {
            l.contains("partitions lost")
                || l.contains("transaction aborted")
                || l.contains("fenced")
        })
        .collect();
    assert!(
        !noticed.is_empty(),
        "the resumed processor never said it lost its partitions or its transaction:\n{zombie_log}"
    );
    if let Some(status) = zombie_exited {
        assert!(
            zombie_log.contains("fenced"),
            "the resumed processor exited ({status}) without saying it was fenced"
        );
    }
    eprintln!(
        "zombie: exited {zombie_exited:?}; {} log line(s) about losing its partitions or its \
         transactions, e.g. {:?}; read_committed output exactly once ({} records)",
        noticed.len(),
        noticed.first(),
        out.len()
    );
}

/// The sum of the offsets committed over the partitions each processor owns now (a
/// stopped or exited one counts nothing).
async fn committed_sum(processors: &[&Processor]) -> i64 {
    committed_by(processors).await.values().sum()
}

/// Waits until the processor owns (restored) a number of partitions `check` accepts.
async fn wait_owning(processor: &mut Processor, check: impl Fn(usize) -> bool, what: &str) {
    wait_owned(what, &mut [processor], Duration::from_secs(180), |owned| {
        check(owned.len())
    })
    .await
    .unwrap();
}

/// A store one batch behind the group's committed offset (what a crash between a
/// transaction's commit and the store write leaves; here a copy of the store taken one
/// batch earlier), then a store deleted: both end equal to the clean run, and nothing is
/// emitted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_one_batch_behind_and_a_deleted_store_end_equal_to_the_clean_run() {
    const EVENTS: usize = 6_000;
    let broker = Broker::start().unwrap();
    let story = mixed_story(EVENTS, 0xbe41d);
    let t = Topics::create(&broker, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let saved = dir.path().join("saved");
    let mut processor = t
        .processor(&broker, dir.path())
        .exactly_once()
        .configure()
        .unwrap();
    let first = 4_000;
    produce(&broker.bootstrap, &t.webhooks, &story[..first])
        .await
        .unwrap();
    processor.restart().await.unwrap();
    finish(&mut processor, first as i64).await;
    copy_dir(&state_dir, &saved);

    // One batch more (fewer records than a batch holds), then the store put back as it
    // was before it: the group's committed offset is one batch ahead of the store.
    let second = first + 500;
    produce(&broker.bootstrap, &t.webhooks, &story[first..second])
        .await
        .unwrap();
    processor.restart().await.unwrap();
    finish(&mut processor, second as i64).await;
    std::fs::remove_dir_all(&state_dir).unwrap();
    copy_dir(&saved, &state_dir);

    produce(&broker.bootstrap, &t.webhooks, &story[second..])
        .await
        .unwrap();
    processor.restart().await.unwrap();
    finish(&mut processor, EVENTS as i64).await;
    // The reference: a clean run over the same input, once it is complete.
    let clean = Topics::on_input(&broker, &t.webhooks, 1).await.unwrap();
    let Run {
        incidents: clean_out,
        state: clean_state,
    } = clean_run(&broker, &clean, EVENTS as i64).await;
    assert_same_state(
        &processor.state_dump().unwrap(),
        &clean_state,
        "a store one batch behind",
    )
    .unwrap();
    let out = broker.read_all(&t.incidents).unwrap();
    assert_exactly_once(&clean_out, &out).unwrap();

    // The store deleted: everything comes back from the changelog, nothing is emitted.
    std::fs::remove_dir_all(&state_dir).unwrap();
    processor.restart().await.unwrap();
    processor
        .wait_ready(Duration::from_secs(120))
        .await
        .unwrap();
    finish(&mut processor, EVENTS as i64).await;
    assert_same_state(
        &processor.state_dump().unwrap(),
        &clean_state,
        "a deleted store",
    )
    .unwrap();
    assert_exactly_once(&clean_out, &broker.read_all(&t.incidents).unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The log without its terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
