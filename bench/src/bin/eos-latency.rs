//! Webhook-topic → incident-topic latency at a steady rate, as a downstream consumer sees
//! it: appends the mixed story to `--input` at `--rate` records per second while a
//! `read_committed` consumer reads `--output`, then reports, for every output record, the
//! time from its input record's append (the input's CreateTime) to its arrival.
//!
//! Which input record an output comes from: for hookfold (`--kind hookfold`) the incident
//! event's `cause` (partition and offset, looked up in the input topic afterwards); for the
//! copy and the Kafka Streams baseline, the output record's timestamp, which both carry
//! over from their input record. The first `--warmup-secs` of inputs are not counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use hookfold_proto::Message as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    /// `hookfold` (outputs are incident events with a cause) or `timestamp` (outputs carry
    /// their input's timestamp).
    #[arg(long)]
    kind: String,
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// After the last input, wait this long without a new output before stopping.
    #[arg(long, default_value_t = 5)]
    quiet_secs: u64,
    /// Outputs of the inputs appended in the first seconds are not counted: the system
    /// under test may still be seeking or fetching its first records then.
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let total = (args.rate * args.seconds) as usize;
    let story = hookfold_tests::records::mixed_story(total, 0x1a7e);

    // The reader starts first, at the beginning of the (fresh) output topic.
    let received: Arc<Mutex<Vec<(i64, OwnedMessage)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let last_arrival = Arc::new(Mutex::new(Instant::now()));
    let assigned = Arc::new(AtomicBool::new(false));
    let reader = {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &args.bootstrap)
            .set("group.id", format!("eos-latency-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        consumer.subscribe(&[&args.output])?;
        let (received, stop, last_arrival, assigned) = (
            received.clone(),
            stop.clone(),
            last_arrival.clone(),
            assigned.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if !assigned.load(Ordering::SeqCst)
                    && consumer.assignment().is_ok_and(|a| a.count() > 0)
                {
                    assigned.store(true, Ordering::SeqCst);
                }
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(20)) {
                    let at = now_ms();
                    *last_arrival.lock().expect("lock") = Instant::now();
                    received.lock().expect("lock").push((at, message.detach()));
                }
            }
        })
    };
    // The reader joins its group first, or the first outputs would wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !assigned.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            bail!("the output reader got no assignment within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()?;
    let started = Instant::now();
    let counted_from = now_ms() + args.warmup_secs as i64 * 1000;
    let step = Duration::from_secs_f64(1.0 / args.rate as f64);
    for (n, record) in story.iter().enumerate() {
        // Paced against the start, so a slow send does not lower the rate.
        let due = started + step * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let headers = hookfold_kafka::cloudevent_headers(&record.headers, 0);
        let base = BaseRecord::to(&args.input)
            .key(record.key.as_bytes())
            .payload(record.body.as_slice())
            .headers(headers);
        producer
            .send(base)
            .map_err(|(e, _)| e)
            .context("producing an input record")?;
    }
    producer.flush(Duration::from_secs(30))?;
    let sent_seconds = started.elapsed().as_secs_f64();
    *last_arrival.lock().expect("lock") = Instant::now();
    while last_arrival.lock().expect("lock").elapsed() < Duration::from_secs(args.quiet_secs) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let received = std::mem::take(&mut *received.lock().expect("lock"));
    if received.is_empty() {
        bail!("no output record arrived");
    }
    let outputs = received.len();

    let input_times: HashMap<(i32, i64), i64> = if args.kind == "hookfold" {
        hookfold_tests::read_all(&args.bootstrap, &args.input)?
            .iter()
            .filter_map(|m| Some(((m.partition(), m.offset()), m.timestamp().to_millis()?)))
            .collect()
    } else {
        HashMap::new()
    };
    let mut latencies: Vec<i64> = Vec::with_capacity(received.len());
    for (at, message) in &received {
        let appended = if args.kind == "hookfold" {
            let event =
                hookfold_proto::v1::IncidentEvent::decode(message.payload().unwrap_or_default())?;
            let cause = event.cause.context("an incident event without a cause")?;
            match input_times.get(&(cause.partition, cause.offset)) {
                Some(&t) => t,
                None => continue, // caused by a tick
            }
        } else {
            message
                .timestamp()
                .to_millis()
                .context("an output record without a timestamp")?
        };
        if appended >= counted_from {
            latencies.push(at - appended);
        }
    }
    if latencies.is_empty() {
        bail!("no output record after the warm-up ({outputs} before it)");
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "RESULT {} {} {} {} {} {sent_seconds:.1}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1],
        total
    );
    Ok(())
}
