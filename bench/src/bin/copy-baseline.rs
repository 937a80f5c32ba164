//! The stream-processing ceiling: a raw consume-and-produce copy of the webhook topic with
//! the processor's producer and batch settings (idempotent, acks=all, linger 5 ms, batches
//! of the configuration's `[batch]` (default 5000 records or 50 ms), each waiting for its acks as the processor does, group
//! offsets committed after each batch) and no state. The processor's rate is reported as a
//! fraction of this one's.

use std::time::{Duration, Instant};

use clap::Parser;
use hookfold_processor::clients::client_config;
use hookfold_processor::config::ProcessorConfig;
use hookfold_processor::delivery::TrackedProducer;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser)]
struct Args {
    /// A processor configuration: the Kafka connection (bootstrap servers, properties,
    /// `[kafka.security]`) every client of this copy uses, as the processor's would.
    #[arg(long)]
    config: std::path::PathBuf,
    /// The topic to copy (default: the configuration's input topic).
    #[arg(long)]
    input: Option<String>,
    #[arg(long)]
    output: String,
    /// Stop after copying this many records.
    #[arg(long)]
    count: u64,
    /// Default: the configuration's `batch.max_records`.
    #[arg(long)]
    max_records: Option<usize>,
    /// Default: the configuration's `batch.max_wait`.
    #[arg(long)]
    max_wait_ms: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = ProcessorConfig::load(Some(&args.config))?;
    let input = args
        .input
        .clone()
        .unwrap_or_else(|| config.kafka.input_topic.clone());
    let max_records = args.max_records.unwrap_or(config.batch.max_records);
    let max_wait = args
        .max_wait_ms
        .map_or(config.batch.max_wait, Duration::from_millis);
    let mut producer = TrackedProducer::create(
        client_config(&config)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5"),
    )?;
    let consumer: BaseConsumer = client_config(&config)
        .set("group.id", format!("copy-baseline-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&input])?;
    let started = Instant::now();
    let mut copied = 0u64;
    let mut batch: Vec<(i32, i64)> = Vec::new();
    let mut batch_started: Option<Instant> = None;
    producer.start_batch();
    let mut announced = false;
    while copied < args.count {
        let polled = consumer.poll(Duration::from_millis(20));
        if !announced && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            // What a latency run waits for before it sends.
            eprintln!("copy-baseline: assigned");
            announced = true;
        }
        if let Some(Ok(message)) = polled {
            let mut record =
                BaseRecord::to(&args.output).payload(message.payload().unwrap_or_default());
            // Carried over, as Kafka Streams does: `eos-latency` reads the input's append
            // time from it.
            if let Some(ms) = message.timestamp().to_millis() {
                record = record.timestamp(ms);
            }
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            producer.send(record)?;
            batch.push((message.partition(), message.offset() + 1));
            batch_started.get_or_insert_with(Instant::now);
        }
        let due =
            batch.len() >= max_records || batch_started.is_some_and(|s| s.elapsed() >= max_wait);
        if due {
            producer.wait(Duration::from_secs(60))?;
            let mut tpl = TopicPartitionList::new();
            for (partition, next) in &batch {
                tpl.add_partition_offset(&input, *partition, Offset::Offset(*next))?;
            }
            consumer.commit(&tpl, CommitMode::Async)?;
            copied += batch.len() as u64;
            batch.clear();
            batch_started = None;
            producer.start_batch();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("RESULT {copied} {seconds:.3}");
    Ok(())
}
