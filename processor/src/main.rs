use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookfold_processor::config::{self, LogFormat, ProcessorConfig};
use hookfold_processor::engine::Engine;
use hookfold_processor::metrics::Metrics;
use hookfold_processor::open_incidents::{self, Filter, IncidentsOptions};
use hookfold_processor::rebuild::{self, RebuildOptions};
use hookfold_processor::store::PartitionStore;
use hookfold_processor::tail::{TailOptions, tail};
use hookfold_processor::topics::{self, TopicOptions};
use hookfold_processor::{codec, consumer, http};
use tracing_subscriber::EnvFilter;

/// jemalloc, also in place of the C library's malloc, so that librdkafka and RocksDB use it
/// too: a restore frees a million librdkafka messages allocated on another thread, which
/// glibc's arenas serialise on a lock (BENCHMARKS.md, restore profile).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Folds hookfold's webhook topic into per-pipeline, per-agent and per-pull-request state
/// (RocksDB under state_dir) and emits incident events (protobuf) to the incident topic.
#[derive(Parser, Debug)]
#[command(version, after_long_help = config::REFERENCE)]
struct Args {
    /// Configuration file (TOML). Without it, defaults and HOOKFOLD_* variables only.
    #[arg(long, short, env = "HOOKFOLD_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume the webhook topic, fold and emit incidents (the default).
    Run,
    /// Print the incident topic as JSON lines (decoded protobuf and ce_* headers).
    Tail {
        /// Start at the beginning of the topic (default: only new incidents).
        #[arg(long)]
        from_beginning: bool,
        /// Keep waiting for new incidents (default: stop at the end of the topic; without
        /// --from-beginning, tail always follows).
        #[arg(long, short)]
        follow: bool,
        /// Topic to read (default: kafka.output_topic).
        #[arg(long)]
        topic: Option<String>,
        /// One line per incident event (transition, dedup key, summary) instead of JSON.
        #[arg(long)]
        summary: bool,
    },
    /// Print the open incidents, from the open-incident table (kafka.open_incidents_topic):
    /// most severe first, then oldest. Any number of processors may be running.
    Incidents {
        /// JSON lines (the incident's latest event) instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep printing changes: `open` (opened or updated) and `closed` lines.
        #[arg(long, short)]
        watch: bool,
        /// Only this source (source_id).
        #[arg(long)]
        source: Option<String>,
        /// Only this entity kind: pipeline, agent, pull_request, branch.
        #[arg(long, value_parser = open_incidents::parse_kind)]
        kind: Option<hookfold_proto::v1::EntityKind>,
        /// Only this severity and above: info, warning, error, critical.
        #[arg(long, value_parser = open_incidents::parse_severity)]
        severity: Option<hookfold_proto::v1::Severity>,
        /// Only dedup keys starting with this (e.g. buildkite/acme/pipeline/).
        #[arg(long)]
        prefix: Option<String>,
        /// Only incidents with this label, e.g. team=payments (a route's `labels`);
        /// repeat it for several, all of which must hold.
        #[arg(long = "label", value_parser = open_incidents::parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Serve the open incidents: a JSON API (/api/incidents, /api/incidents/{dedup_key}
    /// with its history), a live page (/), /metrics and /readyz. Stateless: it reads the
    /// whole open-incident table; run as many as you like.
    View {
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Print the state in state_dir as JSON lines: partition, key, stored state. Stop the
    /// processor first (RocksDB allows one process per store).
    State,
    /// Check the configuration and exit.
    Check,
    /// Print the kafka-acls.sh commands that grant PRINCIPAL (e.g.
    /// User:hookfold-processor) exactly what the processor needs with this configuration.
    Acls {
        /// The processor's Kafka principal.
        #[arg(long)]
        principal: String,
        /// Also what `topics --create` needs.
        #[arg(long)]
        create_topics: bool,
    },
    /// Check the webhook, incident, open-incident and changelog topics (partition counts,
    /// the changelog and the open-incident table compacted, the changelog co-partitioned
    /// with the webhook topic); with --create, create the missing ones. Exits non-zero on
    /// a problem.
    Topics {
        /// Create missing topics.
        #[arg(long)]
        create: bool,
        /// Partitions of a webhook topic to create (the changelog and incident topics get
        /// the webhook topic's count).
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Replicas of each topic to create; -1 (the default) takes the cluster's
        /// default.replication.factor.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        replication_factor: i32,
        /// max.message.bytes of a webhook topic to create: above the gateway's max body.
        #[arg(long, default_value_t = 2 * 1024 * 1024)]
        max_message_bytes: u64,
    },
    /// Which `[[rules.routes]]` entry an entity gets and the options it then has, e.g.
    /// `routes --pipeline payments-api --branch main` or `routes --agent-meta queue=spot`.
    /// Reads the configuration only.
    Routes {
        #[command(flatten)]
        query: hookfold_processor::route_check::RouteQuery,
        /// The answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute state from the webhook topic (the event log) for some or all partitions:
    /// after a rules change, or when a store and its changelog are lost. Stop every
    /// processor of the group first. See docs/OPERATIONS.md.
    Rebuild {
        /// Partition to rebuild (repeatable); default: all.
        #[arg(long = "partition", short)]
        partitions: Vec<i32>,
        /// Produce the incident events again (default: recompute state only, emit nothing).
        #[arg(long, conflicts_with = "no_emit")]
        emit: bool,
        /// Emit nothing (the default; for scripts that want to say so).
        #[arg(long)]
        no_emit: bool,
        /// Run even though the consumer group has members, or its membership cannot be
        /// checked (DescribeGroups failed); only once every processor of the group is stopped.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The ACLs follow from the topics and the group alone: printing them needs none of
    // the secrets.
    let mode = match args.command {
        Some(Command::Acls { .. } | Command::Routes { .. }) => {
            hookfold_config::Mode::WithoutSecrets
        }
        _ => hookfold_config::Mode::WithSecrets,
    };
    let config = match hookfold_config::load::<ProcessorConfig>(args.config.as_deref(), mode) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hookfold-processor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command.unwrap_or(Command::Run) {
        Command::Run => {
            init_tracing(config.log_format);
            run(&config)
        }
        Command::Tail {
            from_beginning,
            follow,
            topic,
            summary,
        } => {
            let options = TailOptions {
                client: hookfold_processor::clients::client_config(&config),
                bootstrap_servers: config.kafka.bootstrap_servers.clone(),
                topic: topic.unwrap_or_else(|| config.kafka.output_topic.clone()),
                from_beginning,
                follow: follow || !from_beginning,
                summary,
            };
            tail(&options, &mut std::io::stdout().lock()).map(|_| ())
        }
        Command::Incidents {
            json,
            watch,
            source,
            kind,
            severity,
            prefix,
            labels,
        } => open_incidents::print(
            hookfold_processor::clients::client_config(&config),
            &config.kafka.open_incidents_topic(),
            &IncidentsOptions {
                filter: Filter {
                    source,
                    kind,
                    min_severity: severity,
                    prefix,
                    labels,
                },
                json,
                watch,
            },
            &mut std::io::stdout().lock(),
        ),
        Command::View { listen } => {
            init_tracing(config.log_format);
            hookfold_processor::view::run(hookfold_processor::view::ViewOptions {
                listen,
                client: hookfold_processor::clients::client_config(&config),
                table_topic: config.kafka.open_incidents_topic(),
                incident_topic: config.kafka.output_topic.clone(),
            })
        }
        Command::State => dump_state(&config),
        Command::Topics {
            create,
            partitions,
            replication_factor,
            max_message_bytes,
        } => topics::run(
            &config,
            &TopicOptions {
                create,
                partitions,
                replication_factor,
                max_message_bytes,
            },
            &mut std::io::stdout().lock(),
        ),
        Command::Rebuild {
            partitions,
            emit,
            no_emit: _,
            force,
        } => {
            init_tracing(config.log_format);
            rebuild::run(
                &config,
                &RebuildOptions {
                    partitions,
                    emit,
                    force,
                },
                &mut std::io::stdout().lock(),
            )
        }
        Command::Acls {
            principal,
            create_topics,
        } => {
            print!(
                "{}",
                hookfold_kafka::acl::script(
                    "hookfold-processor",
                    &principal,
                    &config.acls(create_topics)
                )
            );
            Ok(())
        }
        Command::Routes { query, json } => {
            hookfold_processor::route_check::explain(&config.rules, &query)
                .map(|answer| {
                    if json {
                        println!("{answer}");
                    } else {
                        print!("{}", hookfold_processor::route_check::human(&answer));
                    }
                })
                .map_err(anyhow::Error::msg)
        }
        Command::Check => {
            println!(
                "configuration ok: {} -> {} (changelog {}), group {}, state in {}, Kafka {} over {}",
                config.kafka.input_topic,
                config.kafka.output_topic,
                config.kafka.changelog_topic(),
                config.kafka.group_id,
                config.state_dir.display(),
                config.kafka.bootstrap_servers,
                config.kafka.security.describe()
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "processor stopped");
            eprintln!("hookfold-processor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config: &ProcessorConfig) -> anyhow::Result<()> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone())
            .context("installing signal handlers")?;
    }
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    http::spawn(config.metrics_listen, metrics.clone(), ready.clone())?;
    tracing::info!(metrics = %config.metrics_listen, "serving /metrics, /healthz, /readyz");
    consumer::run(config, metrics, shutdown, ready)?;
    tracing::info!("processor stopped cleanly");
    Ok(())
}

fn dump_state(config: &ProcessorConfig) -> anyhow::Result<()> {
    use std::io::Write;
    let prefix = format!("{}-", config.kafka.input_topic);
    let mut partitions: Vec<i32> = std::fs::read_dir(&config.state_dir)
        .with_context(|| format!("reading state_dir {}", config.state_dir.display()))?
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .strip_prefix(&prefix)?
                .parse()
                .ok()
        })
        .collect();
    partitions.sort();
    let mut out = std::io::stdout().lock();
    for partition in partitions {
        let path = Engine::store_path(&config.state_dir, &config.kafka.input_topic, partition);
        let store = PartitionStore::open(&path)?;
        let next_offset = store.next_offset()?;
        for item in store.states() {
            let (key, value) = item?;
            if key == hookfold_rules::CLOCK_KEY {
                let clock =
                    codec::decode_clock(&value).context("decoding the partition's clock")?;
                let line = serde_json::json!({
                    "partition": partition,
                    "next_offset": next_offset,
                    "clock": clock,
                });
                writeln!(out, "{line}")?;
                continue;
            }
            if key.starts_with(hookfold_rules::TIMER_PREFIX) {
                let (deadline, of) = hookfold_rules::read_timer_key(&key)
                    .with_context(|| format!("a timer key that does not read back: {key:?}"))?;
                let line = serde_json::json!({
                    "partition": partition,
                    "next_offset": next_offset,
                    "timer": {
                        "deadline": deadline.format(&time::format_description::well_known::Rfc3339)?,
                        "key": String::from_utf8_lossy(&of),
                    },
                });
                writeln!(out, "{line}")?;
                continue;
            }
            if key == hookfold_rules::groups::GROUP_STAGE_KEY {
                // Its position in the groups topic and its sources' marks depend on how
                // batches fell; what waits in it does not.
                let stage: hookfold_rules::GroupStage =
                    codec::decode_value(&value).context("decoding the group stage")?;
                let line = serde_json::json!({
                    "partition": partition,
                    "next_offset": next_offset,
                    "group_stage": {"pending": stage.pending(), "lost": stage.lost(), "deadlines": stage.deadlines()},
                });
                writeln!(out, "{line}")?;
                continue;
            }
            if let Some(group) = key.strip_prefix(hookfold_rules::groups::GROUP_PREFIX) {
                let state: hookfold_rules::GroupState =
                    codec::decode_value(&value).with_context(|| {
                        format!("decoding group {}", String::from_utf8_lossy(group))
                    })?;
                let line = serde_json::json!({
                    "partition": partition,
                    "next_offset": next_offset,
                    "group": String::from_utf8_lossy(group),
                    "state": state,
                });
                writeln!(out, "{line}")?;
                continue;
            }
            let state = codec::decode(&value)
                .with_context(|| format!("decoding {}", String::from_utf8_lossy(&key)))?;
            let line = serde_json::json!({
                "partition": partition,
                "next_offset": next_offset,
                "key": String::from_utf8_lossy(&key),
                "open_incidents": state.open_incidents().iter().map(|i| i.dedup_key).collect::<Vec<_>>(),
                "state": state,
            });
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
