//! Ticks: time passing in the log of a quiet partition.
//!
//! The rules' timers (agent grace periods, expiry) fire when a partition's event time, the
//! highest `ce_time` folded, passes their deadline; on a partition without webhooks that
//! never happens. So the processor that owns a partition whose state holds timers appends a
//! `hookfold.tick` record to it (explicit partition, no key, value `{}`, `ce_time` = this
//! machine's clock) whenever it has consumed nothing from it for `tick_interval`, its own
//! ticks included: a quiet partition with timers waiting gets one tick per interval, a busy
//! one or one without timers none (there time only matters from its next webhook on, which
//! brings its own time). Folding a tick only moves time,
//! so a tick lost, repeated, or written by two owners during a rebalance changes nothing
//! but when a timer fires (within the interval); replaying the log replays the same ticks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hookfold_proto::cloudevents;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::metrics::Metrics;

/// Counts and logs the broker's answers to ticks.
pub struct TickContext {
    metrics: Metrics,
}

impl ClientContext for TickContext {}

impl ProducerContext for TickContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => self
                .metrics
                .ticks_sent
                .with_label_values(&[&message.partition().to_string()])
                .inc(),
            Err((error, message)) => {
                let partition = message.partition();
                self.metrics
                    .tick_errors
                    .with_label_values(&[&partition.to_string()])
                    .inc();
                tracing::warn!(
                    partition,
                    error = %error,
                    "a tick was not written: timers of this partition wait for the next record \
                     (grant the processor Write on the webhook topic, or set tick_interval = \"0s\")"
                );
            }
        }
    }
}

pub struct Ticker {
    producer: ThreadedProducer<TickContext>,
    topic: String,
    interval: Duration,
    /// Per owned partition, when a record of it was last consumed or a tick last sent.
    last: HashMap<i32, Instant>,
}

impl Ticker {
    /// `None` when ticks are off (`tick_interval = "0s"`).
    pub fn new(
        mut client: ClientConfig,
        topic: &str,
        interval: Duration,
        metrics: Metrics,
    ) -> anyhow::Result<Option<Self>> {
        if interval.is_zero() {
            return Ok(None);
        }
        let timeout = interval.max(Duration::from_secs(5)).as_millis().to_string();
        let producer = client
            .set("client.id", "hookfold-processor-ticks")
            .set("acks", "all")
            .set("linger.ms", "0")
            // A tick not delivered within about one interval is superseded by the next.
            .set("message.timeout.ms", timeout)
            .create_with_context(TickContext { metrics })
            .map_err(|e| anyhow::anyhow!("creating the tick producer: {e}"))?;
        Ok(Some(Self {
            producer,
            topic: topic.to_owned(),
            interval,
            last: HashMap::new(),
        }))
    }

    /// A record of `partition` was consumed.
    pub fn seen(&mut self, partition: i32) {
        self.last.insert(partition, Instant::now());
    }

    /// Sends a tick to every partition of `waiting` (owned, with timers) quiet for the
    /// interval. A partition that starts waiting counts as seen now.
    pub fn tick(&mut self, waiting: &[i32]) {
        let now = Instant::now();
        self.last.retain(|partition, _| waiting.contains(partition));
        for partition in waiting {
            let last = self.last.entry(*partition).or_insert(now);
            if now.duration_since(*last) < self.interval {
                continue;
            }
            *last = now;
            let time = OffsetDateTime::now_utc();
            let id = format!("tick-{partition}-{}", time.unix_timestamp_nanos());
            let time = time.format(&Rfc3339).unwrap_or_default();
            let headers =
                hookfold_kafka::cloudevent_headers(&cloudevents::tick_headers(id, time), 0);
            let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
                .partition(*partition)
                .payload(b"{}".as_slice())
                .headers(headers);
            if let Err((error, _)) = self.producer.send(record) {
                tracing::warn!(partition, error = %error, "could not queue a tick");
            }
        }
    }
}
