//! A running `hookfold-processor` under test, and the builder for its configuration
//! ([`crate::topics::Topics::processor`] makes one for a deployment's topics).
//!
//! Invariant: no processor the harness starts or runs a command of binds a fixed port;
//! each gets a free one, so a test does not depend on what else runs on the machine (the
//! demo stack holds the default 127.0.0.1:9464).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::free_port;
use crate::process::{Process, workspace_binary};
use crate::topics::Topics;
use crate::wait::wait_until;

/// A processor deployment to start: its topics, directory, and what differs from the
/// defaults a user runs with (batching, client properties, rules). Everything not set
/// here is the processor's own default: `batch.max_records = 5000`, `max_wait = 50ms`,
/// librdkafka's session timeout, cooperative-sticky assignment, agents' 5-minute grace;
/// except ticks, off unless a test turns them on ([`ProcessorSetup::with_ticks`]): they are
/// records a processor appends to the webhook topic, and most tests compare two runs over
/// one topic record for record (state, offsets), which each run's own ticks would break.
pub struct ProcessorSetup {
    bootstrap: String,
    dir: PathBuf,
    state_dir: PathBuf,
    topics: (String, String, String),
    batch: Option<(usize, String)>,
    properties: Vec<(String, String)>,
    extra: String,
    env: Vec<(String, String)>,
    tick_interval: Option<String>,
}

impl ProcessorSetup {
    /// A processor for the topics `t` on the Kafka at `bootstrap`, keeping config, log and
    /// (by default) its state under `dir`.
    pub(crate) fn new(t: &Topics, bootstrap: &str, dir: &Path) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            dir: dir.to_owned(),
            state_dir: dir.join("state"),
            topics: (t.webhooks.clone(), t.incidents.clone(), t.group.clone()),
            batch: None,
            properties: Vec::new(),
            extra: String::new(),
            env: Vec::new(),
            tick_interval: Some("0s".to_owned()),
        }
    }

    /// `[batch]` limits other than the defaults.
    pub fn batch(mut self, max_records: usize, max_wait: &str) -> Self {
        self.batch = Some((max_records, max_wait.to_owned()));
        self
    }

    /// A `[kafka.properties]` entry (a librdkafka property).
    pub fn property(mut self, key: &str, value: &str) -> Self {
        self.properties.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Where the RocksDB stores go (default `<dir>/state`).
    pub fn state_dir(mut self, state_dir: &Path) -> Self {
        self.state_dir = state_dir.to_owned();
        self
    }

    /// Ticks as a user gets them: the processor's default `tick_interval` (5 s).
    pub fn with_ticks(mut self) -> Self {
        self.tick_interval = None;
        self
    }

    /// Ticks every `interval`.
    pub fn tick_interval(mut self, interval: &str) -> Self {
        self.tick_interval = Some(interval.to_owned());
        self
    }

    /// Agent incidents open at once (`[rules.agents] grace = "0s"`), for a test of what
    /// opens and resolves them rather than when.
    pub fn without_grace(self) -> Self {
        self.extra("[rules.agents]\ngrace = \"0s\"")
    }

    /// `[processing] guarantee = "exactly_once"`: each batch one Kafka transaction.
    pub fn exactly_once(self) -> Self {
        self.extra("[processing]\nguarantee = \"exactly_once\"")
    }

    /// TOML appended to the configuration (e.g. `[rules.builds]` tables).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// An environment variable for the process (and its restarts).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The configuration file's text.
    pub fn config(&self) -> String {
        let (webhooks, incidents, group) = &self.topics;
        let mut toml = format!("state_dir = \"{}\"\n", self.state_dir.display());
        if let Some(interval) = &self.tick_interval {
            toml.push_str(&format!("tick_interval = \"{interval}\"\n"));
        }
        toml.push_str(&format!(
            "[kafka]\ninput_topic = \"{webhooks}\"\noutput_topic = \"{incidents}\"\ngroup_id = \"{group}\"\n"
        ));
        if !self.properties.is_empty() {
            toml.push_str("[kafka.properties]\n");
            for (key, value) in &self.properties {
                toml.push_str(&format!("\"{key}\" = \"{value}\"\n"));
            }
        }
        if let Some((max_records, max_wait)) = &self.batch {
            toml.push_str(&format!(
                "[batch]\nmax_records = {max_records}\nmax_wait = \"{max_wait}\"\n"
            ));
        }
        toml.push_str(&self.extra);
        toml
    }

    /// Writes the configuration and starts the processor (waits for `/metrics`).
    pub async fn start(self) -> Result<Processor> {
        let mut processor = self.configure()?;
        processor.restart().await?;
        Ok(processor)
    }

    /// Writes the configuration without starting anything (for commands like `topics`;
    /// [`Processor::restart`] starts it).
    pub fn configure(self) -> Result<Processor> {
        std::fs::create_dir_all(&self.dir)?;
        let config_path = self.dir.join("processor.toml");
        std::fs::write(&config_path, self.config())?;
        let mut processor = Processor {
            process: Process::none(),
            metrics_url: String::new(),
            config_path,
            env: vec![(
                "HOOKFOLD_KAFKA__BOOTSTRAP_SERVERS".to_owned(),
                self.bootstrap.clone(),
            )],
            exactly_once: self.extra.contains("guarantee = \"exactly_once\""),
            groups_topic: format!("{}.groups", self.topics.2),
            bootstrap: self.bootstrap,
            incidents_topic: self.topics.1,
            dir: self.dir,
        };
        for (key, value) in &self.env {
            processor.set_env(key, value);
        }
        Ok(processor)
    }
}

/// A running `hookfold-processor`.
pub struct Processor {
    pub process: Process,
    pub metrics_url: String,
    pub config_path: PathBuf,
    /// Where the harness reads what it wrote (a secured broker's plaintext listener, which
    /// the processor itself may not use), and the topic its incident events go to: a
    /// run's outcome ([`crate::runs::stop_and_collect`]).
    pub bootstrap: String,
    pub incidents_topic: String,
    /// The repartition topic of grouped routes (the processor's default name).
    pub groups_topic: String,
    /// Whether it runs `exactly_once` (every write of it then ends in a commit marker).
    pub exactly_once: bool,
    env: Vec<(String, String)>,
    /// Where its config file and log are.
    pub dir: PathBuf,
}

impl Processor {
    /// Sets an environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts it (again) with the same configuration, on a new metrics port, and waits
    /// until `/metrics` answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        let listen = format!("127.0.0.1:{}", free_port());
        self.metrics_url = format!("http://{listen}/metrics");
        let command = self.command_with(
            &[],
            &[
                ("HOOKFOLD_METRICS_LISTEN", &listen),
                ("RUST_LOG", "info,librdkafka=warn"),
            ],
        );
        self.process = Process::spawn("hookfold-processor", command, &self.dir)?;
        let served = wait_until(
            "the processor to serve /metrics",
            Duration::from_secs(30),
            async || {
                self.process.fail_if_exited()?;
                Ok(reqwest::get(&self.metrics_url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
                    .then_some(()))
            },
        )
        .await;
        served.map_err(|e| self.process.explain(e))
    }

    /// SIGTERM, and a clean exit (status 0) within a minute.
    pub fn stop(&mut self) -> Result<()> {
        let status = self.process.terminate(Duration::from_secs(60))?;
        if !status.success() {
            bail!(
                "the processor did not stop cleanly ({status}):\n{}",
                self.process.output_tail()
            );
        }
        Ok(())
    }

    /// The sum over all series of a metric (0 when absent).
    pub async fn metric_sum(&self, name: &str) -> Result<i64> {
        let text = reqwest::get(&self.metrics_url).await?.text().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as i64)
    }

    /// A per-partition metric (label `partition`) as partition -> value.
    pub async fn partition_metric(&self, name: &str) -> Result<BTreeMap<i32, i64>> {
        let text = reqwest::get(&self.metrics_url).await?.text().await?;
        let prefix = format!("{name}{{partition=\"");
        Ok(text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (partition, rest) = rest.split_once('"')?;
                let value = rest.rsplit(' ').next()?.parse::<f64>().ok()?;
                Some((partition.parse().ok()?, value as i64))
            })
            .collect())
    }

    /// The partitions this processor owns now and the input offset each is committed at.
    pub async fn owned_offsets(&self) -> Result<BTreeMap<i32, i64>> {
        let assigned = self
            .partition_metric("hookfold_processor_partition_assigned")
            .await?;
        let restoring = self
            .partition_metric("hookfold_processor_restoring")
            .await?;
        let offsets = self
            .partition_metric("hookfold_processor_next_offset")
            .await?;
        Ok(assigned
            .into_iter()
            .filter(|(p, a)| *a == 1 && restoring.get(p).copied().unwrap_or(0) == 0)
            .map(|(p, _)| (p, offsets.get(&p).copied().unwrap_or(0)))
            .collect())
    }

    /// Waits until `/readyz` says the processor is in its group with its partitions
    /// assigned and restored (so what is posted now is consumed at once).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = self.metrics_url.replace("/metrics", "/readyz");
        let ready = wait_until("the processor to be ready", timeout, async || {
            self.process.fail_if_exited()?;
            Ok(reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
                .then_some(()))
        })
        .await;
        ready.map_err(|e| self.process.explain(e))
    }

    /// Waits until the offsets committed with the state add up to `at_least` (on a fresh
    /// topic, the number of records folded), failing early if the process dies.
    pub async fn wait_committed(&mut self, at_least: i64, timeout: Duration) -> Result<i64> {
        let what = format!("the processor to commit {at_least} records");
        let committed = wait_until(&what, timeout, async || {
            self.process.fail_if_exited()?;
            Ok(self
                .metric_sum("hookfold_processor_next_offset")
                .await
                .ok()
                .filter(|sum| *sum >= at_least))
        })
        .await;
        committed.map_err(|e| self.process.explain(e))
    }

    /// Waits until the group stage of every partition this processor owns has folded the
    /// groups topic to its end (grouped routes): only then are a run's group incidents all
    /// out. Under `exactly_once` a partition's last offset is a transaction's commit marker.
    pub async fn wait_groups_folded(&mut self, timeout: Duration) -> Result<()> {
        let slack = i64::from(self.exactly_once);
        let folded = wait_until(
            "the group stages to fold the groups topic",
            timeout,
            async || {
                self.process.fail_if_exited()?;
                // A deployment without the topic (made before groups existed) has no groups.
                let Ok(ends) = crate::topics::watermarks(&self.bootstrap, &self.groups_topic)
                else {
                    return Ok(Some(()));
                };
                let next = self
                    .partition_metric("hookfold_processor_group_next_offset")
                    .await?;
                Ok(ends
                    .iter()
                    .enumerate()
                    .all(|(p, (_, high))| {
                        *high == 0 || next.get(&(p as i32)).is_some_and(|n| *n + slack >= *high)
                    })
                    .then_some(()))
            },
        )
        .await;
        folded.map_err(|e| self.process.explain(e))
    }

    /// Runs another `hookfold-processor` command (`topics`, `rebuild`, `state`, ...) with
    /// this processor's configuration and environment, plus `env`.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
        let mut command = self.subcommand(args);
        for (key, value) in env {
            command.env(key, value);
        }
        Ok(command.output()?)
    }

    /// `hookfold-processor --config <its config> <args>` with its environment, not started
    /// (for a subcommand that keeps running, such as `incidents --watch`). On a free
    /// metrics port: `run` serves one, and the default may be taken.
    pub fn subcommand(&self, args: &[&str]) -> Command {
        let listen = format!("127.0.0.1:{}", free_port());
        self.command_with(args, &[("HOOKFOLD_METRICS_LISTEN", &listen)])
    }

    /// The command with `defaults` in its environment, then the processor's own
    /// environment (which a test may use to override a default).
    fn command_with(&self, args: &[&str], defaults: &[(&str, &str)]) -> Command {
        let mut command = Command::new(workspace_binary("hookfold-processor"));
        command.arg("--config").arg(&self.config_path).args(args);
        command.envs(defaults.iter().copied());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// The dedup keys `hookfold-processor incidents --json <filters>` lists, in its order.
    pub fn listed_incidents(&self, filters: &[&str]) -> Result<Vec<String>> {
        let args: Vec<&str> = ["incidents", "--json"]
            .into_iter()
            .chain(filters.iter().copied())
            .collect();
        let output = self.command(&args, &[])?;
        if !output.status.success() {
            bail!("{args:?} failed: {output:?}");
        }
        String::from_utf8(output.stdout)?
            .lines()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("a line of {args:?}: {line}"))?;
                event["dedupKey"]
                    .as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("no dedupKey in {line}"))
            })
            .collect()
    }

    /// `hookfold-processor state`: the stored state as sorted JSON lines (stop it first).
    pub fn state_dump(&self) -> Result<Vec<String>> {
        let output = self.command(&["state"], &[])?;
        if !output.status.success() {
            bail!(
                "state dump failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut lines: Vec<String> = String::from_utf8(output.stdout)?
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        Ok(lines)
    }
}
