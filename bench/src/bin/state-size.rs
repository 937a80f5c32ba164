//! State size on disk and RSS after folding N distinct keys (half new pipelines with a
//! failed build, half lost agents: each holds state and an open incident), through the
//! processor's own parsing, rules, codec and RocksDB store, in 1000-record batches, but
//! without a broker: tansu cannot hold 1,000,000 records on this machine (see
//! docs/BENCHMARKS.md). Baseline in the same run: the raw bytes of the input records.

use std::collections::HashMap;
use std::time::Instant;

use clap::Parser;
use hookfold_processor::codec;
use hookfold_processor::store::PartitionStore;
use hookfold_rules::{Cause, KeyState, Rules};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    #[arg(long)]
    dir: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Generated as they are folded, so RSS is the processor's, not the input's.
    let mut input_bytes = 0usize;
    let store = PartitionStore::open(&args.dir)?;
    let rules = Rules::default();
    let started = Instant::now();
    let mut incidents = 0usize;
    for batch_no in 0..args.keys.div_ceil(1000) {
        let mut states: HashMap<Vec<u8>, KeyState> = HashMap::new();
        let batch = (batch_no * 1000..((batch_no + 1) * 1000).min(args.keys))
            .map(hookfold_tests::records::distinct_key);
        for (i, record) in batch.enumerate() {
            input_bytes += record.body.len() + record.key.len();
            let event = hookfold_events::parse(&record.headers, &record.body)?;
            let key = record.key.as_bytes().to_vec();
            let state = match states.remove(&key) {
                Some(state) => state,
                None => match store.get(&key)? {
                    Some(bytes) => codec::decode(&bytes)?,
                    None => KeyState::default(),
                },
            };
            let offset = (batch_no * 1000 + i) as i64;
            let cause = Cause {
                topic: "in".into(),
                partition: 0,
                offset,
                ce_id: record.headers.id.clone(),
            };
            let (state, outputs) = hookfold_rules::apply(state, &event, &cause, &rules);
            incidents += outputs.len();
            states.insert(key, state);
        }
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = states
            .iter()
            .map(|(k, s)| (k.clone(), codec::encode(s)))
            .collect();
        store.commit(
            encoded.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
            ((batch_no + 1) * 1000) as i64,
            None,
        )?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(store);
    let disk: u64 = std::fs::read_dir(&args.dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    println!(
        "RESULT {} {} {} {} {:.3} {}",
        args.keys, disk, input_bytes, rss_kb, seconds, incidents
    );
    Ok(())
}
