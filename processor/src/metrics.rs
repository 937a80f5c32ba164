//! Prometheus metrics of the processor.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Input records by `ce_type` and outcome (`incident`, `no_change`, `malformed`).
    pub events: IntCounterVec,
    pub incidents: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub next_offset: IntGaugeVec,
    pub batch_commit_seconds: HistogramVec,
    pub state_keys: IntGaugeVec,
    pub state_bytes: IntGaugeVec,
    pub assigned: IntGaugeVec,
    pub restoring: IntGaugeVec,
    pub restore_records: IntCounterVec,
    pub restore_remaining: IntGaugeVec,
    pub restore_seconds: prometheus::GaugeVec,
    pub first_event_seconds: prometheus::GaugeVec,
    pub watermark_seconds: IntGaugeVec,
    pub timers: IntGaugeVec,
    pub group_next_offset: IntGaugeVec,
    pub group_pending: IntGaugeVec,
    pub group_low_watermark_seconds: IntGaugeVec,
    pub group_lost: IntGaugeVec,
    pub ticks_sent: IntCounterVec,
    pub tick_errors: IntCounterVec,
    pub transactions: IntCounterVec,
    pub resume_conflicts: IntCounterVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let events = counter(
            "hookfold_processor_events_total",
            "Webhook records folded, by type and outcome (incident, no_change, malformed).",
            &["type", "outcome"],
        );
        let incidents = counter(
            "hookfold_processor_incidents_total",
            "Incident events emitted, by transition (created, updated, resolved).",
            &["transition"],
        );
        let consumer_lag = gauge(
            "hookfold_processor_consumer_lag",
            "Records on the input partition not yet committed by this processor.",
            &["partition"],
        );
        let next_offset = gauge(
            "hookfold_processor_next_offset",
            "Next input offset to read, as committed with the partition's state.",
            &["partition"],
        );
        let batch_commit_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hookfold_processor_batch_commit_seconds",
                "Time to flush a batch's outputs and commit its state, by phase (flush, store; transaction: from its begin to its acknowledged commit, under exactly_once).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["phase"],
        )
        .expect("static metric definition");
        let state_keys = gauge(
            "hookfold_processor_state_keys",
            "Entity keys in the partition's store (RocksDB estimate).",
            &["partition"],
        );
        let state_bytes = gauge(
            "hookfold_processor_state_bytes",
            "Live data size of the partition's store (RocksDB estimate).",
            &["partition"],
        );
        let assigned = gauge(
            "hookfold_processor_partition_assigned",
            "1 while this processor owns the input partition.",
            &["partition"],
        );
        let restoring = gauge(
            "hookfold_processor_restoring",
            "1 while the partition's store is being restored from the changelog (the partition is paused).",
            &["partition"],
        );
        let restore_records = counter(
            "hookfold_processor_restore_records_total",
            "Changelog records read while restoring the partition's store.",
            &["partition"],
        );
        let restore_remaining = gauge(
            "hookfold_processor_restore_remaining_records",
            "Changelog records left to read by the running restore of the partition.",
            &["partition"],
        );
        let restore_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "hookfold_processor_restore_seconds",
                "Duration of the partition's last restore from the changelog.",
            ),
            &["partition"],
        )
        .expect("static metric definition");
        let first_event_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "hookfold_processor_assignment_to_first_event_seconds",
                "Time from the partition's last assignment to its first committed batch (restore included).",
            ),
            &["partition"],
        )
        .expect("static metric definition");
        let watermark_seconds = gauge(
            "hookfold_processor_watermark_seconds",
            "The partition's event time (highest ce_time folded, Unix seconds): what the rules' timers are measured in.",
            &["partition"],
        );
        let timers = gauge(
            "hookfold_processor_timers",
            "Timers waiting in the partition's state (agent grace periods, expiries).",
            &["partition"],
        );
        let group_next_offset = gauge(
            "hookfold_processor_group_next_offset",
            "The groups topic's next offset the partition's group stage folds (grouped routes); its lag is the topic's end minus this.",
            &["partition"],
        );
        let group_pending = gauge(
            "hookfold_processor_group_pending",
            "Members' changes the partition's group stage holds until every input partition's clock has passed them (grouped routes).",
            &["partition"],
        );
        let group_low_watermark_seconds = gauge(
            "hookfold_processor_group_low_watermark_seconds",
            "The lowest clock of every input partition, as the partition's group stage has it (Unix seconds): how far its groups have got.",
            &["partition"],
        );
        let group_lost = gauge(
            "hookfold_processor_group_lost_changes",
            "Members' changes the partition's group stage held but could not read again from the groups topic after a restart (its retention too short): never applied. Should be 0.",
            &["partition"],
        );
        let ticks_sent = counter(
            "hookfold_processor_ticks_sent_total",
            "hookfold.tick records appended to quiet owned partitions of the webhook topic (acked).",
            &["partition"],
        );
        let tick_errors = counter(
            "hookfold_processor_tick_errors_total",
            "hookfold.tick records the broker refused or did not ack (timers then wait for the next webhook).",
            &["partition"],
        );
        let transactions = counter(
            "hookfold_processor_transactions_total",
            "exactly_once batches by outcome: committed, aborted (the batch is redone), fenced (the producer can write no more; the processor exits).",
            &["outcome"],
        );
        let resume_conflicts = counter(
            "hookfold_processor_resume_conflicts_total",
            "exactly_once: assigned partitions whose store, after the changelog restore, disagreed with the group's committed offset (ahead or behind; see the log).",
            &["kind"],
        );
        for collector in [
            Box::new(events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(incidents.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(next_offset.clone()),
            Box::new(batch_commit_seconds.clone()),
            Box::new(state_keys.clone()),
            Box::new(state_bytes.clone()),
            Box::new(assigned.clone()),
            Box::new(restoring.clone()),
            Box::new(restore_records.clone()),
            Box::new(restore_remaining.clone()),
            Box::new(restore_seconds.clone()),
            Box::new(first_event_seconds.clone()),
            Box::new(watermark_seconds.clone()),
            Box::new(timers.clone()),
            Box::new(group_next_offset.clone()),
            Box::new(group_pending.clone()),
            Box::new(group_low_watermark_seconds.clone()),
            Box::new(group_lost.clone()),
            Box::new(ticks_sent.clone()),
            Box::new(tick_errors.clone()),
            Box::new(transactions.clone()),
            Box::new(resume_conflicts.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            events,
            incidents,
            consumer_lag,
            next_offset,
            batch_commit_seconds,
            state_keys,
            state_bytes,
            assigned,
            restoring,
            restore_records,
            restore_remaining,
            restore_seconds,
            first_event_seconds,
            watermark_seconds,
            timers,
            group_next_offset,
            group_pending,
            group_low_watermark_seconds,
            group_lost,
            ticks_sent,
            tick_errors,
            transactions,
            resume_conflicts,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
