//! `hookfold-processor topics`: checks (and with `--create`, creates) the webhook, incident
//! and changelog topics: the changelog compacted and co-partitioned with the webhook topic.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::ProcessorConfig;
use crate::consumer::client_config;

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
    Changelog,
}

/// Checks or creates the three topics; writes one line per topic to `out`. Fails on a
/// missing topic (without `--create`), a changelog with another partition count than the
/// webhook topic, or a changelog that is not compacted.
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
    for (role, topic) in [
        (Role::Webhooks, k.input_topic.as_str()),
        (Role::Incidents, k.output_topic.as_str()),
        (Role::Changelog, changelog.as_str()),
    ] {
        let wanted = match role {
            Role::Webhooks => options.partitions,
            // The same count as the input: co-partitioning is what the changelog needs;
            // for the incident topic it is simply a sensible default.
            _ => input_partitions.map_or(options.partitions, |n: usize| n as i32),
        };
        let found = partitions_of(topic)?;
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
                    Role::Incidents => new,
                    Role::Changelog => new.set("cleanup.policy", "compact"),
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
                match cleanup_policy(&runtime, &admin, topic, timeout) {
                    Ok(Some(policy)) if policy.split(',').any(|p| p.trim() == "compact") => {
                        writeln!(out, "ok       {topic}: cleanup.policy={policy}")?;
                    }
                    Ok(policy) => problems.push(format!(
                        "changelog {topic} has cleanup.policy={}; it must be compacted \
                         (kafka-configs --alter --add-config cleanup.policy=compact)",
                        policy.unwrap_or_else(|| "unset".into())
                    )),
                    // Some Kafka-compatible brokers (tansu 0.6) do not answer DescribeConfigs.
                    Err(e) => {
                        writeln!(out, "unknown  {topic}: cleanup.policy not readable: {e:#}")?
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

fn wait_for_partitions(
    partitions_of: &impl Fn(&str) -> anyhow::Result<Option<usize>>,
    topic: &str,
    wanted: usize,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if partitions_of(topic)? == Some(wanted) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{topic} was created but its metadata does not show {wanted} partitions after 30 s"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cleanup_policy(
    runtime: &tokio::runtime::Runtime,
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<String>> {
    let results = runtime
        .block_on(admin.describe_configs(
            [&ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(timeout)),
        ))
        .context("DescribeConfigs")?;
    let resource = results
        .into_iter()
        .next()
        .context("no answer")?
        .map_err(|code| anyhow::anyhow!("{code}"))?;
    Ok(resource
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone()))
}
