//! `just bench-ticks`: what a tick costs the processor, next to a webhook, in the same run.
//!
//! Folds the same webhook sequence through the processor's own step (`hookfold_rules::fold`
//! over parsed records, states in a map) twice: alone (the baseline), and with a tick after
//! every webhook, ticks that move time forward but fire nothing. Half the webhooks are
//! `agent.lost` of distinct agents, so the partition's timer index holds thousands of
//! waiting grace periods while the ticks are folded (the case where ticks are sent at all).
//! Then what ticks add per batch: the partition's watermark, which a batch that moved time
//! writes to RocksDB and the changelog (its timers are keys of their own, written only
//! when they change: a tick that fires nothing changes none).
//! Prints one JSON object; scripts/bench-ticks.sh puts it in docs/BENCHMARKS.md.

use std::time::Instant;

use clap::Parser;
use hookfold_events::parse;
use hookfold_processor::codec;
use hookfold_proto::cloudevents::CloudEventHeaders;
use hookfold_rules::{Cause, KeyState, PartitionClock, Record, Rules, fold};
use hookfold_tests::webhooks::{agent_event, build_finished};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Parser)]
struct Args {
    /// Webhooks per run (half builds of 200 pipelines, half lost agents, all distinct).
    #[arg(long, default_value_t = 200_000)]
    webhooks: usize,
}

struct Folded {
    seconds: f64,
    outputs: usize,
    clock: PartitionClock,
}

fn run(events: &[(Vec<u8>, hookfold_events::WebhookEvent)], ticks: bool, rules: &Rules) -> Folded {
    let mut clock = PartitionClock::default();
    let mut states: std::collections::BTreeMap<Vec<u8>, KeyState> = Default::default();
    let cause = Cause {
        topic: "bench".into(),
        partition: 0,
        offset: 0,
        ce_id: String::new(),
    };
    let mut outputs = 0;
    let started = Instant::now();
    for (key, event) in events {
        let record = Record::Webhook { key, event };
        let Ok(out) = fold(&mut clock, &mut states, record, &cause, rules);
        outputs += out.len();
        if ticks {
            // Half a millisecond later: time moves, no grace (5 minutes) runs out.
            let time = event.time + time::Duration::microseconds(500);
            let Ok(out) = fold(
                &mut clock,
                &mut states,
                Record::Tick { time },
                &cause,
                rules,
            );
            outputs += out.len();
        }
    }
    Folded {
        seconds: started.elapsed().as_secs_f64(),
        outputs,
        clock,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let start = OffsetDateTime::now_utc();
    let events: Vec<(Vec<u8>, hookfold_events::WebhookEvent)> = (0..args.webhooks)
        .map(|n| {
            let (ty, body, key) = if n % 2 == 0 {
                let pipeline = format!("pipeline-{}", n % 200);
                let state = if n % 3 == 0 { "passed" } else { "failed" };
                (
                    "buildkite.build.finished",
                    build_finished(&pipeline, "main", n as u64, state),
                    format!("bench/pipeline/{pipeline}"),
                )
            } else {
                let name = format!("agent-{n}");
                (
                    "buildkite.agent.lost",
                    agent_event("agent.lost", &name, &format!("id-{n}")),
                    format!("bench/agent/{name}"),
                )
            };
            let time = start + time::Duration::milliseconds(n as i64);
            let headers = CloudEventHeaders {
                id: format!("ce-{n}"),
                source: "/sources/bench".into(),
                ty: ty.into(),
                time: time.format(&Rfc3339).expect("a formattable time"),
                content_type: "application/json".into(),
            };
            let event = parse(&headers, &body).expect("the bench's own webhooks parse");
            (key.into_bytes(), event)
        })
        .collect();
    let rules = Rules::default();
    // A warm-up of each, then the measured runs alternating, best of three.
    let mut plain = Vec::new();
    let mut ticked = Vec::new();
    run(&events, false, &rules);
    run(&events, true, &rules);
    for _ in 0..3 {
        plain.push(run(&events, false, &rules));
        ticked.push(run(&events, true, &rules));
    }
    let best = |runs: &[Folded]| runs.iter().map(|r| r.seconds).fold(f64::MAX, f64::min);
    let (plain_s, ticked_s) = (best(&plain), best(&ticked));
    anyhow::ensure!(
        plain[0].outputs == ticked[0].outputs,
        "ticks changed what was emitted ({} vs {})",
        plain[0].outputs,
        ticked[0].outputs
    );
    let clock = &ticked[0].clock;
    let watermark = codec::encode_clock(&clock.stored());
    // What the ticked run's last batch would write: a tick fires nothing, so only the
    // watermark (the timers were written once, when the webhooks armed them).
    let mut last_batch = ticked[0].clock.clone();
    let _ = last_batch.take_changes();
    let Ok(_) = fold(
        &mut last_batch,
        &mut std::collections::BTreeMap::<Vec<u8>, KeyState>::new(),
        Record::Tick {
            time: events.last().map_or(start, |(_, e)| e.time) + time::Duration::seconds(1),
        },
        &Cause::default(),
        &rules,
    );
    let tick_writes = last_batch.take_changes().len();
    let n = args.webhooks as f64;
    let per_webhook_ns = plain_s / n * 1e9;
    let per_tick_ns = (ticked_s - plain_s).max(0.0) / n * 1e9;
    println!(
        "{}",
        serde_json::json!({
            "webhooks": args.webhooks,
            "outputs": plain[0].outputs,
            "plain_seconds": plain_s,
            "ticked_seconds": ticked_s,
            "per_webhook_ns": per_webhook_ns,
            "per_tick_ns": per_tick_ns,
            "tick_to_webhook": per_tick_ns / per_webhook_ns,
            "timers": clock.timers(),
            "watermark_bytes": watermark.len(),
            "tick_batch_writes": tick_writes,
        })
    );
    Ok(())
}
