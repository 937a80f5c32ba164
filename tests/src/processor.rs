//! A running `hookfold-processor` under test, and the builder for its configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::broker::Broker;
use crate::free_port;
use crate::process::{Process, workspace_binary};
use crate::topics::Topics;

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

impl Topics {
    /// A processor for these topics on `broker`, keeping config, log and (by default) its
    /// state under `dir`.
    pub fn processor(&self, broker: &Broker, dir: &Path) -> ProcessorSetup {
        ProcessorSetup {
            bootstrap: broker.bootstrap.clone(),
            dir: dir.to_owned(),
            state_dir: dir.join("state"),
            topics: (
                self.webhooks.clone(),
                self.incidents.clone(),
                self.group.clone(),
            ),
            batch: None,
            properties: Vec::new(),
            extra: String::new(),
            env: Vec::new(),
            tick_interval: Some("0s".to_owned()),
        }
    }
}

impl ProcessorSetup {
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
        let config = self.config();
        let mut processor = Processor::configure(&config, &self.bootstrap, &self.dir)?;
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
    env: Vec<(String, String)>,
    /// Where its config file and log are.
    pub dir: PathBuf,
}

impl Processor {
    /// Starts the processor with `config` (TOML) and waits until `/healthz` answers.
    /// `dir` keeps the config file and the log (and usually the state_dir).
    pub async fn start(
        config: &str,
        bootstrap: &str,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let config_path = dir.join("processor.toml");
        std::fs::write(&config_path, config)?;
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("HOOKFOLD_KAFKA__BOOTSTRAP_SERVERS".into(), bootstrap.into()));
        let mut processor = Self {
            process: Process::none(),
            metrics_url: String::new(),
            config_path,
            env,
            dir: dir.to_owned(),
        };
        processor.restart().await?;
        Ok(processor)
    }

    /// Writes the configuration without starting anything (for commands like `topics`;
    /// `restart` starts it).
    pub fn configure(config: &str, bootstrap: &str, dir: &Path) -> Result<Self> {
        let config_path = dir.join("processor.toml");
        std::fs::write(&config_path, config)?;
        Ok(Self {
            process: Process::none(),
            metrics_url: String::new(),
            config_path,
            env: vec![("HOOKFOLD_KAFKA__BOOTSTRAP_SERVERS".into(), bootstrap.into())],
            dir: dir.to_owned(),
        })
    }

    /// Sets an environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts it (again) with the same configuration, on a new metrics port.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        let port = free_port();
        self.metrics_url = format!("http://127.0.0.1:{port}/metrics");
        let mut command = Command::new(workspace_binary("hookfold-processor"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .env("HOOKFOLD_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,librdkafka=warn");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.process = Process::spawn("hookfold-processor", command, &self.dir)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.process.exited() {
                bail!("processor exited ({status}):\n{}", self.process.output());
            }
            if reqwest::get(&self.metrics_url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "processor did not serve /metrics within 30 s:\n{}",
                    self.process.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
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
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited() {
                bail!("processor exited ({status}):\n{}", self.process.output());
            }
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "processor not ready within {timeout:?}:\n{}",
                    self.process.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the offsets committed with the state add up to `at_least` (on a fresh
    /// topic, the number of records folded), failing early if the process dies.
    pub async fn wait_committed(&mut self, at_least: i64, timeout: Duration) -> Result<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited() {
                bail!("processor exited ({status}):\n{}", self.process.output());
            }
            if let Ok(sum) = self.metric_sum("hookfold_processor_next_offset").await
                && sum >= at_least
            {
                return Ok(sum);
            }
            if Instant::now() > deadline {
                bail!(
                    "processor did not commit {at_least} records within {timeout:?}:\n{}",
                    self.process.output_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
    /// (for a subcommand that keeps running, such as `incidents --watch`).
    pub fn subcommand(&self, args: &[&str]) -> Command {
        let mut command = Command::new(workspace_binary("hookfold-processor"));
        command.arg("--config").arg(&self.config_path).args(args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
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
