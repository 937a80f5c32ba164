//! The broker ceiling: the raw rate of an rdkafka producer with the gateway's settings
//! (acks=all, idempotent, linger 2 ms) sending the same payload, with the same number of
//! records in flight as the HTTP load has connections, each awaiting its own ack, the way
//! a gateway request does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    payload: std::path::PathBuf,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 15)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let payload = Arc::new(std::fs::read(&args.payload).context("reading the payload")?);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "5000")
        .create()?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let (producer, payload, stop, topic) = (
            producer.clone(),
            payload.clone(),
            stop.clone(),
            args.topic.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let key = format!("bench/pipeline/p{}", worker % 50);
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let record = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(payload.as_slice());
                match producer.send(record, Timeout::Never).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
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
