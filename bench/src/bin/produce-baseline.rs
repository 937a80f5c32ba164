//! The broker ceiling: the raw rate of an rdkafka producer sending exactly the records the
//! gateway writes for the benchmark's load, with nothing else to do.
//!
//! Like for like with the gateway, by construction:
//! - the producer's settings come from the gateway's own configuration file, through the
//!   gateway's `Publisher::client_config` (acks=all, idempotent, linger, limits and any
//!   `kafka.properties`);
//! - the records are the gateway's: the same bodies (those written by `webhook-bodies`,
//!   which the wrk load posts), cycled through in the same order, so the same routing keys
//!   and the same spread over partitions; the routing key and `ce_id` from the gateway's
//!   routing functions, the body redacted by the source's `redact` paths (done once per
//!   body here: it is the gateway's work, not the broker's), and the CloudEvents headers
//!   (and `hookfold-redacted`) built by the same code, with a fresh `ce_time` per record as
//!   the gateway does;
//! - as many records in flight as the HTTP load has connections, each awaiting its own
//!   ack, the way a gateway request does.
//!
//! What it leaves out is the gateway's own work: HTTP, authentication, the JSON parse.
//! `--without-headers` sends the same records without their headers; that is a reference
//! figure only (the gateway must write the headers), showing what they cost the broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hookfold_gateway::config::GatewayConfig;
use hookfold_gateway::publish::{Publisher, kafka_headers};
use hookfold_gateway::redact::{self, JsonPath};
use hookfold_gateway::routing;
use hookfold_proto::cloudevents::SourceKind;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

#[derive(Parser)]
struct Args {
    /// The gateway's configuration file: Kafka settings, topic and sources.
    #[arg(long)]
    config: std::path::PathBuf,
    /// The source the load posts to.
    #[arg(long)]
    source: String,
    /// The event name the load sends (`X-Buildkite-Event` / `X-Event-Key`).
    #[arg(long)]
    event: String,
    /// The directory written by `webhook-bodies`.
    #[arg(long)]
    bodies: std::path::PathBuf,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Sending, unmeasured, before the measured seconds: the gateway's run has a wrk
    /// warm-up of the same length.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Reference only: send the records without their CloudEvents headers.
    #[arg(long)]
    without_headers: bool,
}

const WARMING_UP: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;

/// One of the load's bodies, with what the gateway derives from it.
struct Body {
    /// As stored: redacted when the source redacts.
    bytes: Vec<u8>,
    key: String,
    id: String,
    redacted: Option<String>,
}

fn load_bodies(
    args: &Args,
    source_id: &str,
    kind: SourceKind,
    redact: &[JsonPath],
) -> anyhow::Result<Vec<Body>> {
    let index = std::fs::read_to_string(args.bodies.join("requests.tsv"))
        .context("reading requests.tsv")?;
    let mut bodies = Vec::new();
    for line in index.lines().filter(|l| !l.is_empty()) {
        let name = line.split('\t').next().unwrap_or_default();
        let bytes =
            std::fs::read(args.bodies.join(name)).with_context(|| format!("reading {name}"))?;
        let parsed: serde_json::Value =
            serde_json::from_slice(&bytes).with_context(|| format!("{name} is not JSON"))?;
        let key = routing::routing_key(source_id, kind, &args.event, &parsed);
        let id = routing::event_id(source_id, &args.event, &bytes, None);
        let (bytes, redacted) = match redact::redact(&bytes, redact) {
            Some(r) => {
                let header = r.header();
                (r.body, Some(header))
            }
            None => (bytes, None),
        };
        bodies.push(Body {
            bytes,
            key,
            id,
            redacted,
        });
    }
    if bodies.is_empty() {
        bail!("no bodies in {}", args.bodies.display());
    }
    Ok(bodies)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = GatewayConfig::load(Some(&args.config)).context("reading the gateway config")?;
    let source = config
        .sources
        .iter()
        .find(|s| s.id == args.source)
        .with_context(|| format!("no source {} in the config", args.source))?;
    let kind: SourceKind = source.kind.into();
    let redact = source.redact_paths()?;
    let bodies = Arc::new(load_bodies(&args, &source.id, kind, &redact)?);
    let producer: FutureProducer =
        Publisher::client_config(&config.kafka, config.max_body_bytes).create()?;
    let topic = Arc::new(config.kafka.topic.clone());
    let source_id = Arc::new(source.id.clone());
    let event = Arc::new(args.event.clone());
    // One sequence shared by all workers, as wrk's connections share their thread's.
    let next = Arc::new(AtomicUsize::new(0));
    // WARMING_UP, then MEASURING, then STOPPED.
    let phase = Arc::new(AtomicU8::new(WARMING_UP));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (producer, bodies, next, phase) = (
            producer.clone(),
            bodies.clone(),
            next.clone(),
            phase.clone(),
        );
        let (topic, source_id, event) = (topic.clone(), source_id.clone(), event.clone());
        let without_headers = args.without_headers;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let measured = match phase.load(Ordering::Relaxed) {
                    STOPPED => break,
                    current => current == MEASURING,
                };
                let body = &bodies[next.fetch_add(1, Ordering::Relaxed) % bodies.len()];
                let sent = Instant::now();
                let mut record = FutureRecord::to(&topic)
                    .key(&body.key)
                    .payload(body.bytes.as_slice());
                if !without_headers {
                    let headers = routing::webhook_headers(
                        &source_id,
                        kind,
                        &event,
                        body.id.clone(),
                        routing::now_rfc3339(),
                    );
                    record = record.headers(kafka_headers(&headers, body.redacted.as_deref()));
                }
                match producer.send(record, Timeout::Never).await {
                    Ok(_) if measured => latencies.push(sent.elapsed()),
                    Ok(_) => {}
                    Err(_) if measured => errors += 1,
                    // The first sends wait for the connection, the metadata and the
                    // idempotent producer id; a warm-up failure is a failure all the same.
                    Err((e, _)) => return Err(anyhow::anyhow!("warm-up record failed: {e}")),
                }
            }
            Ok((latencies, errors))
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let started = Instant::now();
    phase.store(MEASURING, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    phase.store(STOPPED, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    // Same shape as the wrk script's line: requests, seconds, p50 ms, p99 ms, errors.
    println!(
        "RESULT {} {:.3} {:.3} {:.3} {}",
        latencies.len(),
        elapsed,
        pct(0.50),
        pct(0.99),
        errors
    );
    Ok(())
}
