//! Developer tooling behind `just`: run the local Apache Kafka, wait for a broker, create
//! topics, post the demo story. Everything but `kafka` works against any Kafka.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use hookfold_tests::webhooks::{agent_event, bitbucket_signed, build_finished, buildkite_signed};
use hookfold_tests::{wait_for, wait_until};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

#[derive(Parser)]
#[command(about = "hookfold developer tooling (used by the justfile)")]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    bootstrap: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local Apache Kafka (KRaft, broker and controller in one JVM) in the background.
    #[command(subcommand)]
    Kafka(KafkaCommand),
    /// Wait until the broker answers a metadata request.
    WaitBroker {
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Create topics that do not exist yet: NAME:PARTITIONS[:compact].
    Topics { topics: Vec<String> },
    /// Wait until a processor has committed every record now on the topic (its
    /// hookfold_processor_next_offset gauges add up to the topic's high watermarks).
    WaitProcessed {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value = "http://127.0.0.1:9464/metrics")]
        metrics: String,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// Also wait until its group stages have folded this groups topic to its end as it
        /// is once the input is folded (grouped routes).
        #[arg(long)]
        groups_topic: Option<String>,
    },
    /// Wait until a consumer group (e.g. a Kafka Streams application id) has committed
    /// every record now on the topic (its committed offsets reach the high watermarks).
    WaitGroup {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Fill a webhook topic with records in the gateway's format.
    Fill {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: usize,
        /// `mixed`: a seeded mix of builds, stale builds, repeats and agents over a few
        /// hundred keys; `mixed-timed`: the same, received 1 ms apart (event time moves, so
        /// grace periods and groups' timers fire); `distinct`: every record a new pipeline
        /// (failed build) or agent (lost), half each, so every record creates state and an
        /// incident.
        #[arg(long, default_value = "mixed")]
        shape: String,
    },
    /// Print how many records a topic holds (its offsets, which on a topic written in
    /// transactions count the commit markers too).
    Count {
        #[arg(long)]
        topic: String,
        /// Read the records (read_committed) and count those instead.
        #[arg(long)]
        read: bool,
    },
    /// Print an X-Buildkite-Signature header for a body file, signed now.
    Sign {
        #[arg(long)]
        secret: String,
        #[arg(long)]
        body: std::path::PathBuf,
    },
    /// Write a realistic build.finished body to a file.
    BuildBody {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Write the fuzz targets' seed corpus (fuzz/corpus/<target>/): the events crate's
    /// fixtures and the tests' webhook records, framed as each target reads its input, and
    /// the states that folding them leaves, encoded.
    FuzzSeeds {
        #[arg(long, default_value = "fuzz/corpus")]
        out: std::path::PathBuf,
    },
    /// Post the demo story of signed webhooks to a running gateway.
    Demo {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
        #[arg(long, default_value = "demo-buildkite")]
        buildkite_source: String,
        #[arg(
            long,
            env = "DEMO_BUILDKITE_SECRET",
            default_value = "demo-buildkite-secret"
        )]
        buildkite_secret: String,
        #[arg(long, default_value = "demo-bitbucket")]
        bitbucket_source: String,
        #[arg(
            long,
            env = "DEMO_BITBUCKET_SECRET",
            default_value = "demo-bitbucket-secret"
        )]
        bitbucket_secret: String,
    },
}

#[derive(Subcommand)]
enum KafkaCommand {
    /// Format the data directory (first time only), start the node and wait until it
    /// answers. Its log is <data-dir>/node-1/kafka.log.
    Start {
        #[arg(long, default_value = ".data/kafka")]
        data_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// Nodes in the cluster (3 for a failover cluster on ports PORT..PORT+2).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// JVM heap (-Xmx/-Xms).
        #[arg(long, env = "HOOKFOLD_KAFKA_HEAP", default_value = "512m")]
        heap: String,
    },
    /// Stop it: SIGTERM (a controlled shutdown), SIGKILL after the timeout. Data is kept.
    Stop {
        #[arg(long, default_value = ".data/kafka")]
        data_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Say whether it runs (exit 1 if not).
    Status {
        #[arg(long, default_value = ".data/kafka")]
        data_dir: std::path::PathBuf,
    },
}

fn kafka(command: KafkaCommand) -> Result<()> {
    use hookfold_tests::kafka::{self, ClusterSpec, KafkaCluster, Lifetime};
    match command {
        KafkaCommand::Start {
            data_dir,
            port,
            nodes,
            heap,
        } => {
            if let Some(pid) = kafka::detached_running(&data_dir) {
                eprintln!(
                    "Apache Kafka already runs from {} (pid {pid})",
                    data_dir.display()
                );
                return Ok(());
            }
            let data_dir = std::path::absolute(&data_dir)?;
            let mut spec = ClusterSpec::new(nodes, &data_dir);
            spec.ports = (0..nodes as u16).map(|i| port + i).collect();
            spec.heap = heap;
            spec.lifetime = Lifetime::Detached;
            let started = Instant::now();
            eprintln!(
                "starting Apache Kafka {} ({} node(s), heap {}) in {}",
                kafka::pinned_version(),
                nodes,
                spec.heap,
                data_dir.display()
            );
            let cluster = KafkaCluster::start(&spec)?;
            eprintln!(
                "Apache Kafka answers on {} after {:.1} s (log: {})",
                cluster.bootstrap(),
                started.elapsed().as_secs_f64(),
                cluster.nodes[0].log_path().display()
            );
            Ok(())
        }
        KafkaCommand::Stop {
            data_dir,
            timeout_secs,
        } => {
            if kafka::stop_detached(&data_dir, Duration::from_secs(timeout_secs))? {
                eprintln!("Apache Kafka stopped (data kept in {})", data_dir.display());
            }
            Ok(())
        }
        KafkaCommand::Status { data_dir } => match kafka::detached_running(&data_dir) {
            Some(pid) => {
                println!("running (pid {pid})");
                Ok(())
            }
            None => {
                println!("stopped");
                std::process::exit(1)
            }
        },
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Kafka(command) => kafka(command),
        Command::WaitBroker { timeout_secs } => {
            wait_broker(&args.bootstrap, Duration::from_secs(timeout_secs))
        }
        Command::WaitProcessed {
            topic,
            metrics,
            timeout_secs,
            groups_topic,
        } => {
            let timeout = Duration::from_secs(timeout_secs);
            wait_processed(
                &args.bootstrap,
                &topic,
                &metrics,
                "hookfold_processor_next_offset",
                timeout,
            )
            .await?;
            match groups_topic {
                Some(groups) => {
                    wait_processed(
                        &args.bootstrap,
                        &groups,
                        &metrics,
                        "hookfold_processor_group_next_offset",
                        timeout,
                    )
                    .await
                }
                None => Ok(()),
            }
        }
        Command::WaitGroup {
            group,
            topic,
            timeout_secs,
        } => wait_group(
            &args.bootstrap,
            &group,
            &topic,
            Duration::from_secs(timeout_secs),
        ),
        Command::Fill {
            topic,
            count,
            shape,
        } => {
            let records = match shape.as_str() {
                "mixed" => hookfold_tests::records::mixed_story(count, 0xbe7c),
                "mixed-timed" => hookfold_tests::records::timed(
                    hookfold_tests::records::mixed_story(count, 0xbe7c),
                    1,
                ),
                "distinct" => hookfold_tests::records::distinct_keys(count),
                other => bail!("unknown shape {other}: mixed, mixed-timed or distinct"),
            };
            let started = Instant::now();
            for chunk in records.chunks(50_000) {
                hookfold_tests::records::produce(&args.bootstrap, &topic, chunk).await?;
            }
            eprintln!(
                "filled {topic} with {count} {shape} records in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Count { topic, read } => {
            let total: i64 = if read {
                hookfold_tests::read_all(&args.bootstrap, &topic)?.len() as i64
            } else {
                hookfold_tests::watermarks(&args.bootstrap, &topic)?
                    .iter()
                    .map(|(low, high)| high - low)
                    .sum()
            };
            println!("{total}");
            Ok(())
        }
        Command::Sign { secret, body } => {
            let body =
                std::fs::read(&body).with_context(|| format!("reading {}", body.display()))?;
            let secret = hookfold_gateway::auth::Secret::new(secret);
            println!(
                "{}",
                hookfold_gateway::auth::buildkite_signature_header(
                    &secret,
                    hookfold_tests::unix_now(),
                    &body
                )
            );
            Ok(())
        }
        Command::BuildBody { out } => std::fs::write(
            &out,
            build_finished("bench-pipeline", "main", 4242, "failed"),
        )
        .with_context(|| format!("writing {}", out.display())),
        Command::FuzzSeeds { out } => hookfold_tests::fuzz_seeds::write(&out),
        Command::Topics { topics } => create_topics(&args.bootstrap, &topics).await,
        Command::Demo {
            gateway,
            buildkite_source,
            buildkite_secret,
            bitbucket_source,
            bitbucket_secret,
        } => {
            demo(
                &gateway,
                &buildkite_source,
                &buildkite_secret,
                &bitbucket_source,
                &bitbucket_secret,
            )
            .await
        }
    }
}

fn wait_broker(bootstrap: &str, timeout: Duration) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut last_error = None;
    let what = format!("broker {bootstrap} to answer");
    let brokers = wait_for(&what, timeout, || {
        match consumer.fetch_metadata(None, Duration::from_secs(1)) {
            Ok(metadata) => Some(metadata.brokers().len()),
            Err(e) => {
                last_error = Some(e);
                None
            }
        }
    })
    .map_err(|e| anyhow!("{e}: {last_error:?}"))?;
    eprintln!("broker {bootstrap} answers ({brokers} broker(s))");
    Ok(())
}

/// Waits until the processor's `gauge` (per partition) adds up to `topic`'s end.
async fn wait_processed(
    bootstrap: &str,
    topic: &str,
    metrics: &str,
    gauge: &str,
    timeout: Duration,
) -> Result<()> {
    let series = format!("{gauge}{{");
    // Offsets count from 0 on a topic nothing was deleted from: the high watermarks.
    let end: i64 = hookfold_tests::watermarks(bootstrap, topic)?
        .iter()
        .map(|(_, high)| high)
        .sum();
    let mut done = 0.0;
    let mut last_error = None;
    let what = format!("the processor to fold all {end} records of {topic}");
    let folded = wait_until(&what, timeout, async || {
        // Not answering yet (still starting) counts as nothing folded, until the deadline.
        let text = match reqwest::get(metrics).await {
            Ok(response) => {
                last_error = None;
                response.text().await.unwrap_or_default()
            }
            Err(e) => {
                last_error = Some(e);
                String::new()
            }
        };
        done = text
            .lines()
            .filter(|l| l.starts_with(&series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Ok((done as i64 >= end).then_some(()))
    })
    .await;
    match (folded, last_error) {
        (Ok(()), _) => {
            eprintln!("processor has folded all {end} records of {topic}");
            Ok(())
        }
        (Err(_), Some(e)) => {
            bail!("reading {metrics} (is the processor running?): {e}")
        }
        (Err(e), _) => bail!("{e}: folded {done} of {end}"),
    }
}

fn wait_group(bootstrap: &str, group: &str, topic: &str, timeout: Duration) -> Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let highs = hookfold_tests::watermarks(bootstrap, topic)?;
    let end: i64 = highs.iter().map(|(_, high)| high).sum();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for partition in 0..highs.len() as i32 {
        tpl.add_partition(topic, partition);
    }
    let mut done = 0;
    let what = format!("group {group} to commit all {end} records of {topic}");
    wait_for(&what, timeout, || {
        done = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(committed) => committed
                .elements()
                .iter()
                .filter_map(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
                .sum(),
            Err(_) => 0,
        };
        (done >= end).then_some(())
    })
    .map_err(|e| anyhow!("{e}: committed {done} of {end}"))?;
    eprintln!("group {group} has committed all {end} records of {topic}");
    Ok(())
}

async fn create_topics(bootstrap: &str, specs: &[String]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    for spec in specs {
        let mut parts = spec.split(':');
        let name = parts
            .next()
            .filter(|n| !n.is_empty())
            .context("topic spec NAME:PARTITIONS[:compact]")?;
        let partitions: i32 = parts
            .next()
            .context("topic spec NAME:PARTITIONS[:compact]")?
            .parse()
            .context("partitions")?;
        let compact = matches!(parts.next(), Some("compact"));
        // Room for the gateway's largest body (1 MiB by default) plus key and headers.
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1))
            .set("max.message.bytes", "2097152");
        if compact {
            topic = topic.set("cleanup.policy", "compact");
        }
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        for result in results {
            match result {
                Ok(name) => eprintln!(
                    "created topic {name} ({partitions} partitions{})",
                    if compact { ", compacted" } else { "" }
                ),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    eprintln!("topic {name} exists")
                }
                Err((name, code)) => bail!("creating topic {name}: {code}"),
            }
        }
    }
    Ok(())
}

async fn demo(
    gateway: &str,
    bk_source: &str,
    bk_secret: &str,
    bb_source: &str,
    bb_secret: &str,
) -> Result<()> {
    let client = reqwest::Client::new();
    let bk = format!("{gateway}/webhooks/{bk_source}");
    let bb = format!("{gateway}/webhooks/{bb_source}");
    let fixtures = hookfold_tests::fixtures_dir();
    let mut steps: Vec<(String, reqwest::RequestBuilder)> = Vec::new();
    let bk_step = |label: &str, event: &str, body: Vec<u8>| {
        (
            label.to_string(),
            buildkite_signed(client.post(&bk), bk_secret, event, &body),
        )
    };
    steps.push(bk_step(
        "build #41 of web-app on main passes",
        "build.finished",
        build_finished("web-app", "main", 41, "passed"),
    ));
    steps.push(bk_step(
        "build #42 of web-app on main fails",
        "build.finished",
        build_finished("web-app", "main", 42, "failed"),
    ));
    steps.push(bk_step(
        "build #43 of web-app on main fails again",
        "build.finished",
        build_finished("web-app", "main", 43, "failed"),
    ));
    steps.push(bk_step(
        "build #43 is delivered twice (a retried webhook)",
        "build.finished",
        build_finished("web-app", "main", 43, "failed"),
    ));
    steps.push(bk_step(
        "build #44 of web-app on main passes",
        "build.finished",
        build_finished("web-app", "main", 44, "passed"),
    ));
    steps.push(bk_step(
        "stale: build #40 (failed) arrives late",
        "build.finished",
        build_finished("web-app", "main", 40, "failed"),
    ));
    steps.push(bk_step(
        "agent ci-agent-7 is lost",
        "agent.lost",
        agent_event("agent.lost", "ci-agent-7", "0190-a1"),
    ));
    steps.push(bk_step(
        "ci-agent-7 reconnects within the grace (new id): no page",
        "agent.connected",
        agent_event("agent.connected", "ci-agent-7", "0190-a2"),
    ));
    steps.push(bk_step(
        "agent ci-agent-9 is lost and stays away",
        "agent.lost",
        agent_event("agent.lost", "ci-agent-9", "0190-b1"),
    ));
    steps.push(bk_step(
        "build #7 of api on main fails (still open at the end)",
        "build.finished",
        build_finished("api", "main", 7, "failed"),
    ));
    for (label, file, event, uuid) in [
        (
            "pull request #16 opens",
            "bitbucket/pullrequest-created.json",
            "pullrequest:created",
            "d3b07384-d113-4ec6-a1f0-000000000016",
        ),
        (
            "pull request #16 is merged",
            "bitbucket/pullrequest-fulfilled.json",
            "pullrequest:fulfilled",
            "d3b07384-d113-4ec6-a1f0-000000000017",
        ),
    ] {
        let body = std::fs::read(fixtures.join(file))
            .with_context(|| format!("reading fixture {file} (is ../shared beside the repo?)"))?;
        steps.push((
            label.to_string(),
            bitbucket_signed(client.post(&bb), bb_secret, event, uuid, &body),
        ));
    }
    for (label, request) in steps {
        let response = request
            .send()
            .await
            .with_context(|| format!("posting to {gateway} (is `just up` running?)"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        println!("{status:>3}  {label:<50} {body}");
        if !status.is_success() {
            bail!("the gateway refused the demo delivery `{label}`");
        }
    }
    Ok(())
}
