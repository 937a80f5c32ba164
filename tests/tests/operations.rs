//! The processor's operator commands against a real broker: `topics` (provisioning and
//! the co-partitioning check, also on a three-node cluster of the test's own) and `rebuild`
//! (state recomputed from the webhook topic).

use std::time::Duration;

use hookfold_proto::Message as _;
use hookfold_proto::v1::IncidentEvent;
use hookfold_tests::comparisons::{assert_table_matches, open_by_fold};
use hookfold_tests::records::{mixed_story, produce};
use hookfold_tests::{
    Broker, Run, Topics, assert_same_incidents, create_topic, reference_run, unique_name,
    watermarks,
};
use rdkafka::Message as _;
use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, Consumer};

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn partitions(broker: &Broker, topic: &str) -> usize {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0].partitions().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_creates_checks_and_refuses_a_changelog_that_is_not_copartitioned() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = Topics::named(&unique_name("hookfold.webhooks"), 4);
    let processor = t.processor(&broker, dir.path()).configure().unwrap();

    let check = processor.command(&["topics"], &[]).unwrap();
    assert!(!check.status.success(), "missing topics are an error");
    assert!(
        text(&check).contains(&format!("missing  {}", t.webhooks)),
        "{}",
        text(&check)
    );

    let create = processor
        .command(&["topics", "--create", "--partitions", "4"], &[])
        .unwrap();
    assert!(create.status.success(), "{}", text(&create));
    for topic in [
        &t.webhooks,
        &t.incidents,
        &t.open_incidents(),
        &t.changelog(),
        &t.groups(),
    ] {
        assert!(
            text(&create).contains(&format!("created  {topic}: 4 partitions")),
            "{}",
            text(&create)
        );
        assert_eq!(partitions(&broker, topic), 4, "{topic}");
    }
    let again = processor.command(&["topics"], &[]).unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains(&format!("ok       {}: 4 partitions", t.changelog())));
    // The changelog and the table `--create` made are compacted (read back with
    // DescribeConfigs).
    for topic in [t.changelog(), t.open_incidents()] {
        assert!(
            text(&again).contains(&format!("ok       {topic}: cleanup.policy=compact")),
            "{}",
            text(&again)
        );
    }

    // Another group whose changelog was made with the wrong partition count.
    let group = unique_name("hookfold-processor");
    broker
        .create_topic(&format!("{group}.state"), 2)
        .await
        .unwrap();
    let env = [("HOOKFOLD_KAFKA__GROUP_ID", group.as_str())];
    let mismatch = processor.command(&["topics", "--create"], &env).unwrap();
    assert!(!mismatch.status.success(), "{}", text(&mismatch));
    assert!(
        text(&mismatch).contains("has 2 partitions but"),
        "{}",
        text(&mismatch)
    );
    // And the processor itself refuses to run on it.
    let run = processor.command(&["run"], &env).unwrap();
    assert!(!run.status.success());
    assert!(text(&run).contains("refusing to run"), "{}", text(&run));
}

/// A changelog made by hand without compaction (Kafka's default policy is `delete`: a key
/// unchanged for 7 days would be lost) is an error that says how to fix it; `--create`
/// does not silently change an existing topic; after the fix `topics` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_refuses_a_changelog_that_is_not_compacted() {
    let broker = Broker::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = Topics::named(&unique_name("hookfold.webhooks"), 3);
    broker.create_topic(&t.webhooks, 3).await.unwrap();
    broker.create_topic(&t.incidents, 3).await.unwrap();
    let changelog = t.changelog();
    create_topic(&broker.bootstrap, &changelog, 3, &[])
        .await
        .unwrap();
    let processor = t.processor(&broker, dir.path()).configure().unwrap();

    for args in [&["topics"][..], &["topics", "--create"][..]] {
        let check = processor.command(args, &[]).unwrap();
        let output = text(&check);
        assert!(!check.status.success(), "{args:?}: {output}");
        assert!(
            output.contains(&format!(
                "not ok   {changelog}: cleanup.policy=delete, not compact"
            )),
            "{args:?}: {output}"
        );
        assert!(
            output.contains(&format!(
                "--alter --entity-type topics --entity-name {changelog} --add-config \
                 cleanup.policy=compact"
            )),
            "{args:?}: {output}"
        );
        // The partition counts are right: that is not what it complains about.
        assert!(!output.contains("partitions but"), "{args:?}: {output}");
        assert!(
            output.contains(&format!("ok       {changelog}: 3 partitions")),
            "{args:?}: {output}"
        );
    }

    // The fix the message names. (AlterConfigs replaces the topic's overrides, hence the
    // max.message.bytes it was created with; kafka-configs.sh --add-config changes one key.)
    let admin = broker.admin().unwrap();
    let results = admin
        .alter_configs(
            [&AlterConfig::new(ResourceSpecifier::Topic(&changelog))
                .set("cleanup.policy", "compact")
                .set("max.message.bytes", "2097152")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for result in results {
        result.unwrap();
    }
    let fixed = hookfold_tests::wait_for(
        "topics to pass after the changelog was compacted",
        Duration::from_secs(30),
        || {
            let output = processor.command(&["topics"], &[]).ok()?;
            output.status.success().then_some(output)
        },
    )
    .unwrap();
    assert!(
        text(&fixed).contains(&format!("ok       {changelog}: cleanup.policy=compact")),
        "{}",
        text(&fixed)
    );
}

/// `topics --create` on a three-node cluster with three replicas, where a topic just
/// created is not described by every broker at once (another broker may have taken the
/// CreateTopics): what it created passes its own checks right away, every time (issue 24:
/// 1 run in 4 failed with "cleanup.policy could not be read"). Against the Kafka named by
/// `KAFKA_BOOTSTRAP_SERVERS` instead when one is given, with as many replicas as it has
/// brokers, up to three.
#[test]
fn topics_create_on_three_brokers_passes_its_own_checks_at_once() {
    let broker = match hookfold_tests::broker::external_bootstrap() {
        Some(_) => Broker::start(),
        None => Broker::own_cluster(3),
    }
    .expect("a Kafka cluster");
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let brokers = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap()
        .brokers()
        .len();
    let replicas = brokers.min(3);
    if !broker.is_owned() {
        eprintln!("KAFKA_BOOTSTRAP_SERVERS: {brokers} broker(s), so {replicas} replica(s)");
    }
    for round in 1..=4 {
        let dir = tempfile::tempdir().unwrap();
        let t = Topics::named(&unique_name("hookfold.webhooks"), 3);
        let processor = t.processor(&broker, dir.path()).configure().unwrap();
        let create = processor
            .command(
                &[
                    "topics",
                    "--create",
                    "--partitions",
                    "3",
                    "--replication-factor",
                    &replicas.to_string(),
                ],
                &[],
            )
            .unwrap();
        let output = text(&create);
        assert!(create.status.success(), "round {round}: {output}");
        let compacted = [t.open_incidents(), t.changelog()];
        let groups = t.groups();
        let created = [&t.webhooks, &t.incidents, &groups]
            .into_iter()
            .chain(&compacted);
        for topic in created {
            let line = format!("created  {topic}: 3 partitions");
            assert!(output.contains(&line), "round {round}: {output}");
            let layout = broker.partitions(topic).unwrap();
            assert!(
                layout.iter().all(|p| p.replicas.len() == replicas),
                "round {round}: {topic} has not {replicas} replicas: {layout:?}"
            );
        }
        for topic in &compacted {
            let line = format!("ok       {topic}: cleanup.policy=compact");
            assert!(output.contains(&line), "round {round}: {output}");
        }
    }
}

/// `rebuild` refuses while a processor is in the group (two writers of the changelog would
/// interleave), naming the group and its member count, and writes nothing; `--force` skips
/// the check: an operator with its own state_dir rebuilds while the processor runs, and
/// gets the state the processor has. Nothing here reads the changelog after the forced
/// rebuild wrote to it beside the running processor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_refuses_while_a_processor_is_in_the_group_and_force_overrides() {
    const EVENTS: usize = 600;
    let broker = Broker::start().unwrap();
    let t = Topics::create(&broker, 2).await.unwrap();
    produce(&broker.bootstrap, &t.webhooks, &mixed_story(EVENTS, 0xf0c))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = t.processor(&broker, dir.path()).start().await.unwrap();
    processor
        .wait_committed(EVENTS as i64, Duration::from_secs(300))
        .await
        .unwrap();
    // The same deployment's configuration on the operator's machine: same group and topics,
    // another state_dir.
    let operator_dir = tempfile::tempdir().unwrap();
    let operator = t
        .processor(&broker, operator_dir.path())
        .configure()
        .unwrap();
    let changelog_before = broker.record_count(&t.changelog()).unwrap();
    let incidents_before = broker.record_count(&t.incidents).unwrap();

    let refused = operator.command(&["rebuild"], &[]).unwrap();
    let output = text(&refused);
    assert!(!refused.status.success(), "{output}");
    assert!(
        output.contains(&format!("consumer group {} has 1 member(s)", t.group)),
        "{output}"
    );
    assert!(output.contains("--force skips this check"), "{output}");
    assert!(
        !operator_dir.path().join("state").exists(),
        "a refused rebuild creates no store"
    );
    assert_eq!(
        broker.record_count(&t.changelog()).unwrap(),
        changelog_before,
        "a refused rebuild writes nothing to the changelog"
    );

    let forced = operator.command(&["rebuild", "--force"], &[]).unwrap();
    let output = text(&forced);
    assert!(forced.status.success(), "{output}");
    assert!(
        output.contains(&format!(
            "warning: consumer group {} has 1 member(s)",
            t.group
        )),
        "{output}"
    );
    assert!(output.contains("rebuilding anyway (--force)"), "{output}");
    for partition in 0..2 {
        assert!(
            output.contains(&format!("partition {partition}: rebuilt")),
            "{output}"
        );
    }
    assert!(
        processor.process.exited().is_none(),
        "the processor keeps running beside a forced rebuild:\n{}",
        processor.process.output_tail()
    );
    // Without --emit, records the processors had folded make no incident events again.
    assert_eq!(
        broker.record_count(&t.incidents).unwrap(),
        incidents_before,
        "{output}"
    );
    processor.stop().unwrap();
    let rebuilt = operator.state_dump().unwrap();
    assert!(!rebuilt.is_empty());
    assert_eq!(
        rebuilt,
        processor.state_dump().unwrap(),
        "the forced rebuild computes the running processor's state"
    );
}

/// `rebuild` after a rules change: the state becomes what a processor with the new rules
/// computes; the only incident events are those of records that arrived after the
/// processors stopped (all of them with `--emit`); the open-incident table says what the new
/// rules have open; and the changelog carries the rebuilt state to a processor that starts
/// with nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_recomputes_state_under_new_rules_and_the_changelog_carries_it() {
    const FOLDED: usize = 2_000;
    const EVENTS: usize = 2_300;
    let broker = Broker::start().unwrap();
    let story = mixed_story(EVENTS, 0x0b5);
    let t = Topics::create(&broker, 2).await.unwrap();
    produce(&broker.bootstrap, &t.webhooks, &story[..FOLDED])
        .await
        .unwrap();
    let new_rules = [("HOOKFOLD_RULES__BUILDS__SCOPE", "pipeline")];

    // The deployment under default rules.
    let dir = tempfile::tempdir().unwrap();
    let mut processor = t.processor(&broker, dir.path()).start().await.unwrap();
    processor
        .wait_committed(FOLDED as i64, Duration::from_secs(300))
        .await
        .unwrap();
    // Refused while the group has a member (DescribeGroups).
    let refused = processor.command(&["rebuild"], &new_rules).unwrap();
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("has 1 member(s)"),
        "{}",
        text(&refused)
    );
    processor.stop().unwrap();
    let old_state = processor.state_dump().unwrap();
    let outputs_before = broker.read_all(&t.incidents).unwrap();
    // Where the processors stopped, per partition; then more webhooks arrive.
    let stopped_at: Vec<i64> = watermarks(&broker.bootstrap, &t.webhooks)
        .unwrap()
        .iter()
        .map(|(_, high)| *high)
        .collect();
    produce(&broker.bootstrap, &t.webhooks, &story[FOLDED..])
        .await
        .unwrap();

    // What a processor with the new rules computes from the start.
    let reference = Topics::on_input(&broker, &t.webhooks, 2).await.unwrap();
    let reference_dir = tempfile::tempdir().unwrap();
    let mut reference_setup = reference.processor(&broker, reference_dir.path());
    for (key, value) in new_rules {
        reference_setup = reference_setup.env(key, value);
    }
    let Run {
        incidents: reference_out,
        state: new_state,
    } = reference_run(reference_setup, EVENTS as i64, Duration::from_secs(300))
        .await
        .unwrap();
    assert_ne!(old_state, new_state, "the rules change changes the state");

    // The group is empty once its member left; the rebuild may then run.
    let rebuild = processor.command(&["rebuild"], &new_rules).unwrap();
    assert!(rebuild.status.success(), "{}", text(&rebuild));
    assert!(
        text(&rebuild).contains("partition 1: rebuilt"),
        "{}",
        text(&rebuild)
    );
    assert_eq!(processor.state_dump().unwrap(), new_state, "rebuilt state");
    // Without --emit, exactly the new rules' events for the records that arrived after the
    // processors stopped: nobody had seen those.
    let unseen: Vec<_> = reference_out
        .iter()
        .filter(|record| {
            let event = IncidentEvent::decode(record.payload().unwrap_or_default()).unwrap();
            let cause = event.cause.unwrap();
            cause.offset >= stopped_at[cause.partition as usize]
        })
        .cloned()
        .collect();
    assert!(!unseen.is_empty(), "the late records make incidents");
    let outputs_after = broker.read_all(&t.incidents).unwrap();
    let before: std::collections::HashSet<(i32, i64)> = outputs_before
        .iter()
        .map(|r| (r.partition(), r.offset()))
        .collect();
    let emitted: Vec<_> = outputs_after
        .iter()
        .filter(|r| !before.contains(&(r.partition(), r.offset())))
        .cloned()
        .collect();
    assert_eq!(
        assert_same_incidents(&unseen, &emitted).unwrap(),
        0,
        "a rebuild without --emit emits only the unseen records' events"
    );
    // The open-incident table now says what the new rules have open: the per-branch
    // incidents of the old rules are gone (tombstones), the per-pipeline ones are there.
    let table = broker.read_all(&t.open_incidents()).unwrap();
    let open_before = open_by_fold(&outputs_before).unwrap();
    let open_after = assert_table_matches(&reference_out, &table).unwrap();
    let open_new = open_by_fold(&reference_out).unwrap();
    assert!(
        open_before.keys().any(|k| !open_new.contains_key(k)),
        "the rules change leaves some incidents of the old rules not open: the table must \
         have closed them"
    );

    // A processor on another machine (empty state_dir) restores the rebuilt state.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    for (key, value) in new_rules {
        processor.set_env(key, value);
    }
    processor.restart().await.unwrap();
    processor
        .wait_committed(EVENTS as i64, Duration::from_secs(300))
        .await
        .unwrap();
    processor.stop().unwrap();
    assert_eq!(
        processor.state_dump().unwrap(),
        new_state,
        "restored after the rebuild"
    );
    assert_eq!(
        broker.record_count(&t.incidents).unwrap(),
        outputs_after.len() as i64,
        "nothing folded again after the restore"
    );

    // --emit re-emits: into a fresh topic, exactly the reference's events.
    let fresh = unique_name("hookfold.incidents");
    broker.create_topic(&fresh, 2).await.unwrap();
    let rebuild = processor
        .command(
            &["rebuild", "--emit"],
            &[
                ("HOOKFOLD_KAFKA__OUTPUT_TOPIC", fresh.as_str()),
                (
                    "HOOKFOLD_KAFKA__OPEN_INCIDENTS_TOPIC",
                    t.open_incidents().as_str(),
                ),
            ],
        )
        .unwrap();
    assert!(rebuild.status.success(), "{}", text(&rebuild));
    let repeats = assert_same_incidents(&reference_out, &broker.read_all(&fresh).unwrap()).unwrap();
    assert_eq!(repeats, 0);
    // A second rebuild leaves the table as it was: the same open incidents, same events.
    let table = broker.read_all(&t.open_incidents()).unwrap();
    assert_eq!(
        assert_table_matches(&reference_out, &table).unwrap(),
        open_after
    );
}

/// The scripts' own `HOOKFOLD_` variables (a developer may have exported them, and
/// `scripts/measure-cold.sh` does) are not configuration keys, while a misspelt key still is
/// an error that names it: both binaries, with `--check`.
#[test]
fn the_scripts_variables_are_skipped_and_a_misspelt_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gateway_config = dir.path().join("gateway.toml");
    std::fs::write(
        &gateway_config,
        "[[sources]]\nid = \"acme\"\nkind = \"buildkite\"\nsecrets = [\"s3cret\"]\n",
    )
    .unwrap();
    let checks = [
        (
            "hookfold-gateway",
            vec![
                "--config".to_owned(),
                gateway_config.display().to_string(),
                "--check".into(),
            ],
        ),
        ("hookfold-processor", vec!["check".to_owned()]),
    ];
    for (binary, args) in checks {
        let run = |extra: &[(&str, &str)]| {
            let mut command = std::process::Command::new(hookfold_tests::workspace_binary(binary));
            command.args(&args).env_remove("HOOKFOLD_CONFIG");
            for (key, value) in [
                ("HOOKFOLD_CACHE", "/tmp/hookfold-cache"),
                ("HOOKFOLD_TOOLS", "/tmp/hookfold-tools"),
                ("HOOKFOLD_KAFKA_HEAP", "1g"),
                ("HOOKFOLD_EXTERNAL_KAFKA", "1"),
            ]
            .iter()
            .chain(extra)
            {
                command.env(key, value);
            }
            command.output().unwrap()
        };
        let skipped = run(&[]);
        assert!(skipped.status.success(), "{binary}: {}", text(&skipped));
        let misspelt = run(&[("HOOKFOLD_LOG_FORMATT", "json")]);
        assert!(!misspelt.status.success(), "{binary} took a misspelt key");
        assert!(
            text(&misspelt).contains("log_formatt"),
            "{binary}: {}",
            text(&misspelt)
        );
    }
}
