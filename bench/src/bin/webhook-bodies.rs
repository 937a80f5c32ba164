//! The gateway benchmark's load: `build.finished` bodies for many pipelines, each signed
//! now. Real traffic comes from many pipelines, and the pipeline slug is the routing key,
//! so the load spreads over the topic's partitions the way real traffic does; the broker
//! ceiling (`produce-baseline`) sends the very same bodies with the same keys.
//!
//! Writes `body-NNN.json` and `requests.tsv` (one line per body: file name, TAB, the
//! `X-Buildkite-Signature` header) into `--out`.

use std::fmt::Write as _;

use anyhow::Context;
use clap::Parser;
use hookfold_gateway::auth::{Secret, buildkite_signature_header};
use hookfold_tests::webhooks::build_finished;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    out: std::path::PathBuf,
    /// Distinct pipelines (routing keys).
    #[arg(long, default_value_t = 100)]
    pipelines: usize,
    /// The source's signing secret.
    #[arg(long)]
    secret: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.pipelines > 0, "--pipelines must be at least 1");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let secret = Secret::new(args.secret);
    let now = hookfold_tests::unix_now();
    let mut index = String::new();
    for n in 0..args.pipelines {
        let body = build_finished(&format!("pipeline-{n:03}"), "main", 4242, "failed");
        let name = format!("body-{n:03}.json");
        std::fs::write(args.out.join(&name), &body).with_context(|| format!("writing {name}"))?;
        writeln!(
            index,
            "{name}\t{}",
            buildkite_signature_header(&secret, now, &body)
        )?;
    }
    std::fs::write(args.out.join("requests.tsv"), index).context("writing requests.tsv")?;
    Ok(())
}
