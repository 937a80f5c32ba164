//! `hookfold-processor topics`: checks (and with `--create`, creates) the webhook, incident,
//! open-incident, changelog and groups topics: the changelog compacted and co-partitioned
//! with the webhook topic, the open-incident table compacted, the groups topic (the
//! repartition of grouped routes) co-partitioned too.
//!
//! Invariant: what `--create` made is checked as the cluster describes it, once every
//! answer shows it: a topic just created is not described by every broker at once (on a
//! cluster, another broker may have taken the CreateTopics), so the checks of a created
//! topic wait for its partitions and for the `cleanup.policy` they set, each up to
//! [`CREATED_WAIT`], and then say what they saw.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;

use crate::clients::client_config;
use crate::config::ProcessorConfig;

/// How long the checks of a topic `--create` just made wait for the cluster to describe
/// it as created.
pub const CREATED_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct TopicOptions {
    /// Create what is missing (otherwise only check).
    pub create: bool,
    /// Partitions of a webhook topic that has to be created.
    pub partitions: i32,
    pub replication_factor: i32,
    /// `max.message.bytes` of a created webhook topic: room for the gateway's largest body.
    pub max_message_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Webhooks,
    Incidents,
    OpenIncidents,
    Changelog,
    Groups,
}

/// Checks or creates the five topics; writes one line per topic to `out`. Fails on a
/// missing topic (without `--create`), a changelog with another partition count than the
/// webhook topic, or a changelog that is not `cleanup.policy=compact` or whose policy
/// cannot be read (DescribeConfigs).
pub fn run(
    config: &ProcessorConfig,
    options: &TopicOptions,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(10);
    let client = client_config(config);
    let consumer: BaseConsumer = client.create().context("creating a Kafka client")?;
    let admin: AdminClient<DefaultClientContext> =
        client.create().context("creating a Kafka admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let partitions_of = |topic: &str| -> anyhow::Result<Option<usize>> {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| {
                format!(
                    "reading the metadata of {topic} from {}",
                    config.kafka.bootstrap_servers
                )
            })?;
        Ok(metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len()))
    };

    let k = &config.kafka;
    let changelog = k.changelog_topic();
    let mut input_partitions = None;
    let mut problems = Vec::new();
    let open_incidents = k.open_incidents_topic();
    let groups = k.groups_topic();
    for (role, topic) in [
        (Role::Webhooks, k.input_topic.as_str()),
        (Role::Incidents, k.output_topic.as_str()),
        (Role::OpenIncidents, open_incidents.as_str()),
        (Role::Changelog, changelog.as_str()),
        (Role::Groups, groups.as_str()),
    ] {
        let wanted = match role {
            Role::Webhooks => options.partitions,
            // The same count as the input: co-partitioning is what the changelog needs;
            // for the incident topic it is simply a sensible default.
            _ => input_partitions.map_or(options.partitions, |n: usize| n as i32),
        };
        let found = partitions_of(topic)?;
        let created = found.is_none() && options.create;
        let count = match found {
            Some(count) => {
                writeln!(out, "ok       {topic}: {count} partitions")?;
                count
            }
            None if options.create => {
                let mut new = NewTopic::new(
                    topic,
                    wanted,
                    TopicReplication::Fixed(options.replication_factor),
                );
                let max_bytes = options.max_message_bytes.to_string();
                new = match role {
                    Role::Webhooks => new.set("max.message.bytes", &max_bytes),
                    Role::Incidents | Role::Groups => new,
                    Role::OpenIncidents | Role::Changelog => new.set("cleanup.policy", "compact"),
                };
                let results = runtime
                    .block_on(admin.create_topics(
                        [&new],
                        &AdminOptions::new().operation_timeout(Some(timeout)),
                    ))
                    .with_context(|| format!("creating {topic}"))?;
                for result in results {
                    match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => bail!("creating {topic}: {code}"),
                    }
                }
                wait_for_partitions(&partitions_of, topic, wanted as usize)?;
                writeln!(out, "created  {topic}: {wanted} partitions")?;
                wanted as usize
            }
            None => {
                writeln!(out, "missing  {topic}")?;
                problems.push(format!("{topic} does not exist (run with --create)"));
                continue;
            }
        };
        match role {
            Role::Webhooks => input_partitions = Some(count),
            Role::Incidents => {}
            Role::OpenIncidents => {
                // Without compaction the table grows with every event and a reader
                // deleting by time would lose incidents that are still open.
                let policy = compacted_policy(&runtime, &admin, topic, created, timeout);
                check_compacted("open-incident table", topic, policy, k, out, &mut problems)?;
            }
            Role::Groups => {
                if let Some(inputs) = input_partitions
                    && inputs != count
                {
                    problems.push(format!(
                        "groups topic {topic} has {count} partitions but {} has {inputs}: they \
                         must be equal; processors with grouped routes refuse to run on it",
                        k.input_topic
                    ));
                }
            }
            Role::Changelog => {
                if let Some(inputs) = input_partitions
                    && inputs != count
                {
                    problems.push(format!(
                        "changelog {topic} has {count} partitions but {} has {inputs}: they must be \
                         equal; the processor refuses to run on it (recreate the changelog with \
                         {inputs} partitions and let the processors restore or rebuild)",
                        k.input_topic
                    ));
                }
                let policy = compacted_policy(&runtime, &admin, topic, created, timeout);
                check_compacted("changelog", topic, policy, k, out, &mut problems)?;
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// Reports whether `topic` (the changelog or the open-incident table, named by `what`) is
/// compacted, as read by [`cleanup_policy`]: one line to `out`, and a problem with the fix
/// when it is not, or when its policy cannot be read (a policy of unknown kind is not
/// trusted).
fn check_compacted(
    what: &str,
    topic: &str,
    policy: anyhow::Result<String>,
    k: &crate::config::KafkaConfig,
    out: &mut impl Write,
    problems: &mut Vec<String>,
) -> std::io::Result<()> {
    match policy.as_deref().map(compaction_problem) {
        Ok(None) => writeln!(out, "ok       {topic}: cleanup.policy=compact")?,
        Ok(Some(problem)) => {
            writeln!(out, "not ok   {topic}: {problem}")?;
            problems.push(format!(
                "{what} {topic}: {problem}; make it compacted: kafka-configs.sh \
                 --bootstrap-server {} --alter --entity-type topics --entity-name \
                 {topic} --add-config cleanup.policy=compact",
                k.bootstrap_servers
            ));
        }
        Err(e) => {
            writeln!(out, "unknown  {topic}: cleanup.policy not readable: {e:#}")?;
            problems.push(format!(
                "{what} {topic}: cleanup.policy could not be read ({e:#}); it \
                 must be compact: check it with kafka-configs.sh --bootstrap-server \
                 {} --describe --entity-type topics --entity-name {topic} (the \
                 client needs the DescribeConfigs permission on the topic)",
                k.bootstrap_servers
            ));
        }
    }
    Ok(())
}

fn wait_for_partitions(
    partitions_of: &impl Fn(&str) -> anyhow::Result<Option<usize>>,
    topic: &str,
    wanted: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CREATED_WAIT;
    loop {
        if partitions_of(topic)? == Some(wanted) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{topic} was created but its metadata does not show {wanted} partitions after {} s",
                CREATED_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Why a changelog with this `cleanup.policy` loses state, if it does. Only `compact`
/// keeps every key's last state forever: `delete` (Kafka's default) drops records older
/// than `retention.ms` (7 days by default), and `compact,delete` does too, so a key that
/// has not changed for that long would come back empty from a restore.
pub fn compaction_problem(policy: &str) -> Option<String> {
    let mut policies: Vec<&str> = policy.split(',').map(str::trim).collect();
    policies.sort_unstable();
    policies.dedup();
    match policies.as_slice() {
        ["compact"] => None,
        [..] if policies.contains(&"compact") => Some(format!(
            "cleanup.policy={policy}, not compact only: delete drops records older than \
             retention.ms, so the state of keys unchanged for that long would be lost"
        )),
        _ => Some(format!(
            "cleanup.policy={policy}, not compact: records older than retention.ms are \
             deleted, so the state of keys unchanged for that long would be lost"
        )),
    }
}

/// The changelog's `cleanup.policy` (DescribeConfigs), for `run` to check at start.
pub fn changelog_cleanup_policy(
    config: &ProcessorConfig,
    timeout: Duration,
) -> anyhow::Result<String> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .context("creating a Kafka admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    cleanup_policy(&runtime, &admin, &config.kafka.changelog_topic(), timeout)
}

/// The `cleanup.policy` of a topic that must be compacted, for [`check_compacted`]: as
/// the broker reports it, or for a topic `--create` just made with `cleanup.policy=compact`,
/// once DescribeConfigs shows that (up to [`CREATED_WAIT`]).
fn compacted_policy(
    runtime: &tokio::runtime::Runtime,
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    created: bool,
    timeout: Duration,
) -> anyhow::Result<String> {
    if !created {
        return cleanup_policy(runtime, admin, topic, timeout);
    }
    let deadline = Instant::now() + CREATED_WAIT;
    loop {
        // An unknown topic is asked for again until the deadline by `describe_cleanup_policy`;
        // an answer without the policy, or with another, here. Any other error is final.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let policy = describe_cleanup_policy(
            runtime,
            admin,
            topic,
            remaining.max(Duration::from_secs(1)),
        )
        .with_context(|| format!("describing {topic}, created with cleanup.policy=compact"))?;
        if policy.as_deref() == Some("compact") {
            return Ok("compact".to_owned());
        }
        if Instant::now() >= deadline {
            let answer = match policy {
                Some(policy) => format!("cleanup.policy={policy}"),
                None => "no cleanup.policy".to_owned(),
            };
            bail!(
                "created with cleanup.policy=compact, but DescribeConfigs still answers {answer} \
                 after {} s",
                CREATED_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cleanup.policy` as the broker reports it (its default when the topic sets none).
fn cleanup_policy(
    runtime: &tokio::runtime::Runtime,
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    describe_cleanup_policy(runtime, admin, topic, timeout)?
        .context("DescribeConfigs answered no cleanup.policy")
}

/// One DescribeConfigs of `topic`'s `cleanup.policy`: `None` when the answer has no such
/// entry. A broker that does not know the topic yet is asked again until `timeout`.
fn describe_cleanup_policy(
    runtime: &tokio::runtime::Runtime,
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let results = runtime
            .block_on(admin.describe_configs(
                [&ResourceSpecifier::Topic(topic)],
                &AdminOptions::new().request_timeout(Some(timeout)),
            ))
            .context("DescribeConfigs")?;
        let resource = results
            .into_iter()
            .next()
            .context("DescribeConfigs: no answer")?;
        match resource {
            Ok(resource) => {
                return Ok(resource
                    .get("cleanup.policy")
                    .and_then(|entry| entry.value.clone()));
            }
            // The broker that answers may not have the metadata of a topic created a moment
            // ago (another broker took the CreateTopics): ask again for a while.
            Err(RDKafkaErrorCode::UnknownTopicOrPartition) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(code) => bail!("DescribeConfigs: {code}"),
        }
    }
}

/// Refuses a changelog that is missing or not co-partitioned with the input (partition `p`
/// of the changelog holds the state of input partition `p`), and a missing open-incident
/// table.
pub fn check_copartitioned(
    consumer: &BaseConsumer<impl ConsumerContext>,
    input: &str,
    changelog: &str,
    open_incidents: &str,
    groups: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let count = |topic: &str| -> anyhow::Result<usize> {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("reading the metadata of topic {topic}"))?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len())
            }
            _ => bail!(
                "topic {topic} does not exist; create it with `hookfold-processor topics --create`"
            ),
        }
    };
    let inputs = count(input)?;
    let states = count(changelog)?;
    // Every batch writes the open-incident table too: a missing one would fail the
    // first batch with an incident after the produce timeout.
    count(open_incidents)?;
    if inputs != states {
        bail!(
            "the changelog {changelog} has {states} partitions but the input {input} has {inputs}: \
             they must be equal (partition p of the changelog holds the state of input partition p); \
             refusing to run. See `hookfold-processor topics` and docs/OPERATIONS.md"
        );
    }
    if let Some(groups) = groups {
        let count = count(groups)?;
        if count != inputs {
            bail!(
                "the groups topic {groups} has {count} partitions but the input {input} has \
                 {inputs}: they must be equal (partition p of the groups topic is folded into the \
                 store of input partition p); refusing to run. See docs/OPERATIONS.md"
            );
        }
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::compaction_problem;

    #[test]
    fn only_compact_alone_keeps_the_state() {
        assert_eq!(compaction_problem("compact"), None);
        let delete = compaction_problem("delete").unwrap();
        assert!(
            delete.starts_with("cleanup.policy=delete, not compact"),
            "{delete}"
        );
        let both = compaction_problem("compact,delete").unwrap();
        assert!(both.contains("not compact only"), "{both}");
        assert!(compaction_problem("delete, compact").is_some());
        assert!(compaction_problem("").is_some());
    }
}
