//! For the restore benchmark (`just bench-restore`):
//! - `fill`: writes changelog partitions as the processor would have left them after folding
//!   N distinct keys each (half new pipelines with a failed build, half lost agents; the states
//!   are computed by the processor's own parsing, rules and codec), ending with a batch
//!   marker at input offset 0 (the input topic is empty);
//! - `read`: the baseline, a plain consumer reading the partition from start to end.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hookfold_processor::changelog::{BATCH_MARKER_KEY, NEXT_OFFSET_HEADER};
use hookfold_processor::clients::{client_config, reader_config};
use hookfold_processor::codec;
use hookfold_processor::config::ProcessorConfig;
use hookfold_rules::{Cause, KeyState, Rules};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};

#[derive(Parser)]
struct Args {
    /// A processor configuration: the Kafka connection (bootstrap servers, properties,
    /// `[kafka.security]`) the fill and the read use, as the processor's clients would.
    #[arg(long)]
    config: std::path::PathBuf,
    /// The changelog topic (default: the configuration's).
    #[arg(long)]
    topic: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Fill {
        /// States per partition.
        #[arg(long, default_value_t = 1_000_000)]
        keys: usize,
        /// Partitions 0..N are filled, each with its own keys.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
    },
    Read,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = ProcessorConfig::load(Some(&args.config))?;
    let topic = args.topic.unwrap_or_else(|| config.kafka.changelog_topic());
    match args.command {
        Command::Fill { keys, partitions } => fill(&config, &topic, keys, partitions),
        Command::Read => read(&config, &topic),
    }
}

fn headers(next_offset: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: NEXT_OFFSET_HEADER,
        value: Some(next_offset),
    })
}

fn fill(config: &ProcessorConfig, topic: &str, keys: usize, partitions: i32) -> anyhow::Result<()> {
    let producer: ThreadedProducer<_> = client_config(config)
        .set("acks", "all")
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "600000")
        .create()?;
    let rules = Rules::default();
    let started = Instant::now();
    let mut bytes = 0usize;
    for (partition, n) in (0..partitions).flat_map(|p| (0..keys).map(move |n| (p, n))) {
        let record = hookfold_tests::records::distinct_key(partition as usize * keys + n);
        let event = hookfold_events::parse(&record.headers, &record.body)?;
        let cause = Cause {
            topic: "bench".into(),
            partition,
            offset: n as i64,
            ce_id: record.headers.id.clone(),
        };
        let (state, _) = hookfold_rules::apply(KeyState::default(), &event, &cause, &rules);
        let value = codec::encode(&state);
        bytes += value.len() + record.key.len();
        let mut base = BaseRecord::to(topic)
            .partition(partition)
            .key(record.key.as_bytes())
            .payload(value.as_slice())
            .headers(headers("0"));
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).context("producing"),
            }
        }
        if n > 0 && n % 100_000 == 0 {
            eprintln!("changelog-fill: {n} of {keys} states of partition {partition} queued");
        }
        if n + 1 == keys {
            producer
                .send(
                    BaseRecord::to(topic)
                        .partition(partition)
                        .key(BATCH_MARKER_KEY)
                        .payload("0")
                        .headers(headers("0")),
                )
                .map_err(|(e, _)| e)?;
        }
    }
    producer
        .flush(Duration::from_secs(600))
        .context("flushing")?;
    println!(
        "RESULT {} {} {:.3}",
        (keys + 1) * partitions as usize,
        bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn read(config: &ProcessorConfig, topic: &str) -> anyhow::Result<()> {
    // The processor's restore consumer's settings (`reader_config`): without its short
    // `fetch.queue.backoff.ms` a read that falls behind its fetcher for a moment idles for a
    // second (librdkafka's default backoff once 100,000 records are queued), which made this
    // baseline swing between 0.6 and 1.6 s.
    let consumer: BaseConsumer = reader_config(config)
        .set("group.id", "changelog-read-baseline")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let started = Instant::now();
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    let mut records = 0u64;
    let mut next = low;
    let mut last = Instant::now();
    while next < high {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records += 1;
                next = message.offset() + 1;
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => eprintln!("changelog-read: {e}"),
            None if last.elapsed() > Duration::from_secs(60) => {
                bail!("no record for 60 s at offset {next} of {high}")
            }
            None => {}
        }
    }
    println!("RESULT {records} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
