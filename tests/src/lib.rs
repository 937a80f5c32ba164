//! The end-to-end test harness: a real Kafka-compatible broker (tansu, started here, or
//! the Kafka named by `KAFKA_BOOTSTRAP_SERVERS`), the real hookfold binaries as child
//! processes, real HTTP, and an independent consumer to read what landed on a topic.
//!
//! Every wait here polls a condition with a deadline; nothing sleeps for a fixed time
//! and hopes.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

/// Polls `check` every 25 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback port")
}

/// A topic name no other test (or earlier run against the same Kafka) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `../shared/fixtures` beside the repository (override with `HOOKFOLD_FIXTURES`).
/// The path is fixed at build time; a binary run from another checkout (a shared
/// target directory) falls back to `../shared/fixtures` from the working directory.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOOKFOLD_FIXTURES") {
        return PathBuf::from(dir);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    let here = Path::new("../shared/fixtures");
    if !built.is_dir() && here.is_dir() {
        return here.to_path_buf();
    }
    built
}

pub fn fixture(path: &str) -> Vec<u8> {
    let full = fixtures_dir().join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading fixture {}: {e}", full.display()))
}

/// A binary of this workspace, built by `cargo build --bins` (which `just test` runs), or
/// the one in `TEST_BIN_DIR` when set: a private copy, for a target directory shared
/// with other worktrees (whose builds overwrite the same binary names). Not `HOOKFOLD_*`:
/// the children inherit the environment, and the binaries read `HOOKFOLD_*` as config.
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_BIN_DIR") {
        let path = Path::new(&dir).join(name);
        assert!(path.exists(), "{} is missing", path.display());
        return path;
    }
    // Test executables live in target/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` (or `just test`, which does) first",
        path.display()
    );
    path
}

/// Where `just broker` and `.ci/run` install tansu.
pub fn tansu_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("HOOKFOLD_TANSU") {
        return Ok(PathBuf::from(path));
    }
    let cached = std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".cache/hookfold/tools/bin/tansu"));
    if let Some(path) = cached.filter(|p| p.exists()) {
        return Ok(path);
    }
    which("tansu").ok_or_else(|| {
        anyhow!("tansu not found: run `just tools` (installs it into ~/.cache/hookfold/tools) or set KAFKA_BOOTSTRAP_SERVERS")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.exists())
    })
}

/// A child process that is killed when dropped, with its output captured to a file so a
/// failing test can show it.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then wait up to `timeout` for it to exit on its own.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("process already stopped")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", child.id());
        }
        let status = wait_for(
            &format!("{} to exit after SIGTERM", self.name),
            timeout,
            || child.try_wait().ok().flatten(),
        );
        match status {
            Ok(status) => {
                self.child = None;
                Ok(status)
            }
            Err(e) => {
                self.kill();
                Err(e)
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a broker, so a test can take "the broker" away and bring it
/// back: stopping it refuses new connections and cuts the open ones, exactly what a
/// client sees when the broker dies, while the broker itself (and its data) lives on.
pub struct Proxy {
    pub port: u16,
    target: SocketAddr,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(port: u16, target: SocketAddr) -> Result<Self> {
        let proxy = Self {
            port,
            target,
            tasks: Default::default(),
        };
        proxy.resume().await?;
        Ok(proxy)
    }

    /// Starts accepting (again) on the same port.
    pub async fn resume(&self) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let target = self.target;
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let connection = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(connection);
            }
        });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(accept);
        Ok(())
    }

    /// Closes the listener and every proxied connection.
    pub fn stop(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the broker keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// tansu's memory engine. Do not use it to check delivery: tansu 0.6.0 acks a
    /// multi-record batch there but keeps only its first record (seen here: 30 records
    /// produced in one batch, a high watermark of 1, nothing fetchable).
    Memory,
    /// SQLite in the harness's temporary directory: what the tests use.
    Sqlite,
}

/// A Kafka-compatible broker for one test.
pub struct Broker {
    pub bootstrap: String,
    tansu: Option<(Process, u16)>,
    pub dir: tempfile::TempDir,
    advertised_port: Option<u16>,
    /// Client properties every producer writing to this broker needs (see
    /// [`Broker::start_in_memory`]).
    pub producer_properties: Vec<(&'static str, &'static str)>,
}

impl Broker {
    /// The Kafka named by `KAFKA_BOOTSTRAP_SERVERS`, else a fresh tansu with SQLite storage
    /// in a temporary directory.
    pub fn start() -> Result<Self> {
        match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
            Ok(servers) if !servers.trim().is_empty() => Ok(Self {
                bootstrap: servers,
                tansu: None,
                dir: tempfile::tempdir()?,
                advertised_port: None,
                producer_properties: Vec::new(),
            }),
            _ => Self::start_tansu(Storage::Sqlite),
        }
    }

    /// The Kafka named by `KAFKA_BOOTSTRAP_SERVERS`, else a fresh tansu with memory storage
    /// whose producers send one record per batch (`batch.num.messages=1`): the memory
    /// engine keeps only the first record of a batch, but serves reads from far behind the
    /// end quickly, where tansu 0.6.0 on SQLite takes minutes (reading a 30,000-record
    /// partition from offset 0 did not finish in 100 s). For tests that move partitions
    /// and restore from the changelog.
    pub fn start_in_memory() -> Result<Self> {
        match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
            Ok(servers) if !servers.trim().is_empty() => Self::start(),
            _ => {
                let mut broker = Self::start_tansu(Storage::Memory)?;
                broker.producer_properties = vec![("batch.num.messages", "1")];
                Ok(broker)
            }
        }
    }

    /// A tansu of this test's own, for tests that must stop and restart the broker.
    pub fn start_tansu(storage: Storage) -> Result<Self> {
        Self::start_tansu_advertising(storage, None)
    }

    /// A tansu of this test's own that tells clients to connect to `advertised_port`
    /// (where a [`Proxy`] listens) instead of its own port.
    pub fn start_tansu_advertising(storage: Storage, advertised_port: Option<u16>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let storage = match storage {
            Storage::Memory => "memory://tansu/".to_string(),
            // tansu reads the URL's path as relative (it drops the leading '/'), so the
            // broker runs in its directory and names the file alone.
            Storage::Sqlite => "sqlite://tansu.db".to_string(),
        };
        let mut broker = Self {
            bootstrap: format!("127.0.0.1:{port}"),
            tansu: None,
            dir,
            advertised_port,
            producer_properties: Vec::new(),
        };
        broker.spawn_tansu(port, storage)?;
        if let Some(advertised) = advertised_port {
            broker.bootstrap = format!("127.0.0.1:{advertised}");
        }
        Ok(broker)
    }

    fn spawn_tansu(&mut self, port: u16, storage: String) -> Result<()> {
        let bin = tansu_binary()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port.unwrap_or(port));
        let process = Process::spawn(
            "tansu",
            Command::new(bin)
                .arg("broker")
                .arg("--storage-engine")
                .arg(&storage)
                .arg("--listener-url")
                .arg(&url)
                .arg("--advertised-listener-url")
                .arg(&advertised)
                .current_dir(self.dir.path())
                .env("RUST_LOG", "warn"),
            self.dir.path(),
        )?;
        self.tansu = Some((process, port));
        self.wait_until_answering(Duration::from_secs(30))
    }

    /// The port an owned tansu listens on itself (behind a proxy, not the bootstrap port).
    pub fn tansu_port(&self) -> Option<u16> {
        self.tansu.as_ref().map(|(_, port)| *port)
    }

    /// Whether this harness started (and may stop) the broker.
    pub fn is_owned(&self) -> bool {
        self.tansu.is_some()
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?)
    }

    fn wait_until_answering(&mut self, timeout: Duration) -> Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        let deadline = Instant::now() + timeout;
        loop {
            if consumer
                .fetch_metadata(None, Duration::from_secs(1))
                .is_ok()
            {
                return Ok(());
            }
            if let Some((process, ..)) = self.tansu.as_mut()
                && let Some(status) = process.exited()
            {
                bail!("tansu exited ({status}):\n{}", process.output());
            }
            if Instant::now() > deadline {
                bail!(
                    "broker at {} did not answer within {timeout:?}",
                    self.bootstrap
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates a topic and waits until its metadata shows every partition.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin = self.admin()?;
        // Room for the gateway's largest body (1 MiB by default) plus key and headers;
        // Apache Kafka's default limit is only 1 MiB + 12 bytes per batch.
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1))
            .set("max.message.bytes", "2097152");
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .context("CreateTopics request")?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("creating topic {topic}: {code}");
            }
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        wait_for(
            &format!("topic {name} in metadata"),
            Duration::from_secs(20),
            || {
                let metadata = consumer
                    .fetch_metadata(Some(name), Duration::from_secs(2))
                    .ok()?;
                let topic = metadata.topics().iter().find(|t| t.name() == name)?;
                (topic.error().is_none() && topic.partitions().len() == partitions as usize)
                    .then_some(())
            },
        )
    }

    /// How many records the topic holds now (sum of high minus low watermarks).
    pub fn record_count(&self, topic: &str) -> Result<i64> {
        Ok(watermarks(&self.bootstrap, topic)?
            .iter()
            .map(|(low, high)| high - low)
            .sum())
    }

    /// Every record on the topic, read from the beginning by an independent consumer (no
    /// group coordination: it assigns itself every partition) up to the high watermarks
    /// as they are when called.
    pub fn read_all(&self, topic: &str) -> Result<Vec<OwnedMessage>> {
        read_all(&self.bootstrap, topic)
    }
}

/// [`Broker::read_all`] for any Kafka (e.g. librdkafka's mock cluster): every record on
/// the topic from the beginning up to the high watermarks as they are when called.
pub fn read_all(bootstrap: &str, topic: &str) -> Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("hookfold-test-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic not in metadata")?
        .partitions()
        .len() as i32;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
            remaining.insert(partition, high);
        }
    }
    if remaining.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&assignment)?;
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("reading {topic}: partitions {remaining:?} did not reach their high watermark");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let partition = message.partition();
                if remaining
                    .get(&partition)
                    .is_some_and(|high| message.offset() + 1 >= *high)
                {
                    remaining.remove(&partition);
                }
                messages.push(message.detach());
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(messages)
}

/// Every partition's (low, high) watermarks of a topic, in partition order.
pub fn watermarks(bootstrap: &str, topic: &str) -> Result<Vec<(i64, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .with_context(|| format!("topic {topic} not found"))?
        .partitions()
        .len() as i32;
    (0..partitions)
        .map(|partition| {
            Ok(consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?)
        })
        .collect()
}

/// A record's headers as name → UTF-8 text.
pub fn headers_of(message: &OwnedMessage) -> HashMap<String, String> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A running `hookfold-gateway`.
pub struct Gateway {
    pub process: Process,
    pub addr: SocketAddr,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway with `config` (TOML; `listen` and the Kafka servers are filled in
    /// unless set) and waits until `/healthz` answers.
    pub async fn start(config: &str, bootstrap: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config)?;
        let mut command = Command::new(workspace_binary("hookfold-gateway"));
        command
            .arg("--config")
            .arg(&path)
            .env("HOOKFOLD_LISTEN", addr.to_string())
            .env("HOOKFOLD_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
            .env("RUST_LOG", "info,librdkafka=warn");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut process = Process::spawn("hookfold-gateway", &mut command, dir.path())?;
        let scheme = if config.contains("[tls]") {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{addr}");
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = process.exited() {
                bail!("gateway exited ({status}):\n{}", process.output());
            }
            if let Ok(response) = client.get(format!("{url}/healthz")).send().await
                && response.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway did not answer /healthz within 30 s:\n{}",
                    process.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(Self {
            process,
            addr,
            url,
            _dir: dir,
        })
    }

    pub fn webhook_url(&self, source_id: &str) -> String {
        format!("{}/webhooks/{source_id}", self.url)
    }
}

/// Seconds since the epoch, for signature timestamps.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Signing helpers and webhook builders shared by the end-to-end tests.
pub mod webhooks {
    use hookfold_gateway::auth::{Secret, bitbucket_signature_header, buildkite_signature_header};
    use reqwest::RequestBuilder;

    /// Adds a fresh Buildkite signature (now) for `body` to a request.
    pub fn buildkite_signed(
        request: RequestBuilder,
        secret: &str,
        event: &str,
        body: &[u8],
    ) -> RequestBuilder {
        let header = buildkite_signature_header(&Secret::new(secret), super::unix_now(), body);
        request
            .header("content-type", "application/json")
            .header("x-buildkite-event", event)
            .header("x-buildkite-signature", header)
            .body(body.to_vec())
    }

    /// Adds Bitbucket's headers and signature for `body` to a request.
    pub fn bitbucket_signed(
        request: RequestBuilder,
        secret: &str,
        event: &str,
        uuid: &str,
        body: &[u8],
    ) -> RequestBuilder {
        request
            .header("content-type", "application/json")
            .header("x-event-key", event)
            .header("x-request-uuid", uuid)
            .header(
                "x-hub-signature",
                bitbucket_signature_header(&Secret::new(secret), body),
            )
            .body(body.to_vec())
    }

    /// A realistic Buildkite `build.finished` body (Buildkite publishes no sample payloads;
    /// this follows the documented REST build object).
    pub fn build_finished(pipeline: &str, branch: &str, number: u64, state: &str) -> Vec<u8> {
        serde_json::json!({
            "event": "build.finished",
            "build": {
                "id": format!("0190b8e2-{number:04}-4f7a-9d55-{pipeline}"),
                "url": format!("https://api.buildkite.com/v2/organizations/acme/pipelines/{pipeline}/builds/{number}"),
                "web_url": format!("https://buildkite.com/acme/{pipeline}/builds/{number}"),
                "number": number,
                "state": state,
                "blocked": false,
                "message": "Fix the flaky test",
                "commit": "a3b1c9d0e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3",
                "branch": branch,
                "source": "webhook",
                "author": {"name": "Ada Lovelace", "email": "ada@example.com"},
                "creator": {"name": "Ada Lovelace"},
                "created_at": "2026-11-22T10:00:00.000Z",
                "scheduled_at": "2026-11-22T10:00:00.000Z",
                "started_at": "2026-11-22T10:00:05.000Z",
                "finished_at": "2026-11-22T10:04:05.000Z"
            },
            "pipeline": {"id": "p-1", "slug": pipeline, "name": pipeline, "repository": "git@example.com:acme/web.git"},
            "sender": {"id": "u-1", "name": "Ada Lovelace"}
        })
        .to_string()
        .into_bytes()
    }

    /// A Buildkite agent event body (documented REST agent object).
    pub fn agent_event(event: &str, name: &str, id: &str) -> Vec<u8> {
        serde_json::json!({
            "event": event,
            "agent": {
                "id": id,
                "name": name,
                "connection_state": event.trim_start_matches("agent."),
                "hostname": format!("{name}.ci.internal"),
                "ip_address": "192.0.2.10",
                "version": "3.80.0",
                "created_at": "2026-11-22T09:00:00.000Z"
            },
            "sender": {"id": "u-1", "name": "Ada Lovelace"}
        })
        .to_string()
        .into_bytes()
    }
}

/// The topics and consumer group of one processor deployment under test.
pub struct Topics {
    pub webhooks: String,
    pub incidents: String,
    pub group: String,
    /// Extra `[kafka.properties]` for the processors (the broker's producer properties).
    pub properties: Vec<(&'static str, &'static str)>,
}

impl Topics {
    /// Fresh webhook, incident and changelog topics, and a fresh group.
    pub async fn create(broker: &Broker, partitions: i32) -> Result<Self> {
        let webhooks = unique_name("hookfold.webhooks");
        broker.create_topic(&webhooks, partitions).await?;
        Self::on_input(broker, &webhooks, partitions).await
    }

    /// Another deployment (group, incident and changelog topics) on an existing webhook
    /// topic: runs to compare with each other read the same input.
    pub async fn on_input(broker: &Broker, webhooks: &str, partitions: i32) -> Result<Self> {
        let topics = Self {
            webhooks: webhooks.to_owned(),
            incidents: unique_name("hookfold.incidents"),
            group: unique_name("hookfold-processor"),
            properties: broker.producer_properties.clone(),
        };
        broker.create_topic(&topics.incidents, partitions).await?;
        broker.create_topic(&topics.changelog(), partitions).await?;
        Ok(topics)
    }

    pub fn changelog(&self) -> String {
        format!("{}.state", self.group)
    }

    /// A processor configuration for these topics; `extra` is appended (TOML).
    pub fn processor_config(&self, state_dir: &Path, extra: &str) -> String {
        format!(
            r#"
state_dir = "{}"
[kafka]
input_topic = "{}"
output_topic = "{}"
group_id = "{}"
[kafka.properties]
# tansu answers group requests slowly while it stores a burst of records; a session
# shorter than this makes the member time out and rejoin over and over.
"session.timeout.ms" = "30000"
"heartbeat.interval.ms" = "1000"
{}
[batch]
max_records = 100
max_wait = "20ms"
{extra}
"#,
            state_dir.display(),
            self.webhooks,
            self.incidents,
            self.group,
            self.properties
                .iter()
                .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
                .collect::<String>()
        )
    }
}

/// A running `hookfold-processor`.
pub struct Processor {
    pub process: Process,
    pub metrics_url: String,
    pub config_path: PathBuf,
    env: Vec<(String, String)>,
    dir: PathBuf,
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
            process: Process::spawn_placeholder(),
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
            process: Process::spawn_placeholder(),
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
        self.process = Process::spawn("hookfold-processor", &mut command, &self.dir)?;
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
    pub async fn partition_metric(
        &self,
        name: &str,
    ) -> Result<std::collections::BTreeMap<i32, i64>> {
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
    pub async fn owned_offsets(&self) -> Result<std::collections::BTreeMap<i32, i64>> {
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
                    tail_of(&self.process.output())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs another `hookfold-processor` command (`topics`, `rebuild`, `state`, ...) with
    /// this processor's configuration and environment, plus `env`.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
        let mut command = Command::new(workspace_binary("hookfold-processor"));
        command.arg("--config").arg(&self.config_path).args(args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        Ok(command.output()?)
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

/// Incident records by `ce_id`, with every distinct payload seen under that id.
pub fn outputs_by_id(
    records: &[OwnedMessage],
) -> HashMap<String, std::collections::HashSet<Vec<u8>>> {
    let mut map: HashMap<String, std::collections::HashSet<Vec<u8>>> = HashMap::new();
    for record in records {
        let id = headers_of(record).get("ce_id").cloned().unwrap_or_default();
        map.entry(id)
            .or_default()
            .insert(record.payload().unwrap_or_default().to_vec());
    }
    map
}

/// Checks `actual` against a `reference` run's incident records: the same set of event
/// ids, and an id repeated only with the reference's exact payload. Returns the number of
/// repeats in `actual`.
pub fn assert_same_incidents(reference: &[OwnedMessage], actual: &[OwnedMessage]) -> Result<usize> {
    let reference_ids = outputs_by_id(reference);
    let actual_ids = outputs_by_id(actual);
    if reference_ids.len() != reference.len() {
        bail!(
            "the reference run repeated events: {} records, {} ids",
            reference.len(),
            reference_ids.len()
        );
    }
    let lost: Vec<&String> = reference_ids
        .keys()
        .filter(|id| !actual_ids.contains_key(*id))
        .collect();
    let extra: Vec<&String> = actual_ids
        .keys()
        .filter(|id| !reference_ids.contains_key(*id))
        .collect();
    if !lost.is_empty() || !extra.is_empty() {
        bail!(
            "{} event(s) lost (e.g. {:?}), {} event(s) the reference does not have (e.g. {:?})",
            lost.len(),
            lost.first(),
            extra.len(),
            extra.first()
        );
    }
    for (id, payloads) in &actual_ids {
        if payloads != &reference_ids[id] {
            bail!("event {id} was emitted with content that differs from the reference");
        }
    }
    Ok(actual.len() - reference.len())
}

fn tail_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Process {
    /// A process handle with nothing behind it yet.
    pub fn spawn_placeholder() -> Self {
        Self {
            name: "none".into(),
            child: None,
            log: PathBuf::new(),
        }
    }
}

/// Webhook records written straight to the webhook topic in the gateway's format
/// (the topic format is the contract between gateway and processor), for tests that need
/// many events fast.
pub mod records {
    use anyhow::Result;
    use hookfold_proto::cloudevents::{self, CloudEventHeaders, SourceKind};
    use rdkafka::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    use super::webhooks::{agent_event, build_finished};

    /// One webhook as the gateway would have appended it.
    #[derive(Clone, Debug)]
    pub struct WebhookRecord {
        pub key: String,
        pub headers: CloudEventHeaders,
        pub body: Vec<u8>,
    }

    pub fn buildkite(source: &str, event: &str, body: Vec<u8>) -> WebhookRecord {
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        WebhookRecord {
            key: hookfold_gateway::routing::routing_key(
                source,
                SourceKind::Buildkite,
                event,
                &parsed,
            ),
            headers: CloudEventHeaders {
                id: hookfold_gateway::routing::event_id(source, event, &body, None),
                source: cloudevents::webhook_source(source),
                ty: cloudevents::webhook_type(SourceKind::Buildkite, event),
                time: "2026-11-22T10:05:00Z".into(),
                content_type: cloudevents::CONTENT_TYPE_JSON.into(),
            },
            body,
        }
    }

    /// A deterministic, seeded mix of builds (new, stale, repeated), and agent events.
    pub fn mixed_story(count: usize, seed: u64) -> Vec<WebhookRecord> {
        let mut rng = seed.max(1);
        let mut next = move |n: u64| {
            // xorshift64: deterministic, no dependency.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut numbers = std::collections::HashMap::new();
        let mut agent_ids = std::collections::HashMap::new();
        let mut out: Vec<WebhookRecord> = Vec::with_capacity(count);
        while out.len() < count {
            let roll = next(100);
            let record = if roll < 5 && !out.is_empty() {
                out[next(out.len() as u64) as usize].clone() // a repeated delivery
            } else if roll < 20 {
                let name = format!("agent-{}", next(20));
                let generation = agent_ids.entry(name.clone()).or_insert(0u64);
                let event = [
                    "agent.lost",
                    "agent.disconnected",
                    "agent.stopped",
                    "agent.connected",
                ][next(4) as usize];
                if event == "agent.connected" && next(2) == 0 {
                    *generation += 1; // a restarted agent: same name, new id
                }
                let id = format!("{name}-id-{generation}");
                buildkite("acme-bk", event, agent_event(event, &name, &id))
            } else {
                let pipeline = format!("pipeline-{}", next(40));
                let branch = ["main", "release/1.x", "feature/x"][next(3) as usize];
                let counter = numbers.entry((pipeline.clone(), branch)).or_insert(0u64);
                let number = if next(10) == 0 && *counter > 3 {
                    *counter - 1 - next(3) // stale
                } else {
                    *counter += 1;
                    *counter
                };
                let state = [
                    "failed", "failed", "failed", "passed", "passed", "passed", "passed",
                    "canceled",
                ][next(8) as usize];
                buildkite(
                    "acme-bk",
                    "build.finished",
                    build_finished(&pipeline, branch, number, state),
                )
            };
            out.push(record);
        }
        out
    }

    /// `count` records, each for a key never seen before: failed builds of new pipelines
    /// and lost agents, alternating. Each creates a state and an incident.
    pub fn distinct_keys(count: usize) -> Vec<WebhookRecord> {
        (0..count).map(distinct_key).collect()
    }

    /// Record `n` of [`distinct_keys`].
    pub fn distinct_key(n: usize) -> WebhookRecord {
        if n.is_multiple_of(2) {
            buildkite(
                "acme-bk",
                "build.finished",
                build_finished(&format!("p{n:07}"), "main", 1, "failed"),
            )
        } else {
            buildkite(
                "acme-bk",
                "agent.lost",
                agent_event("agent.lost", &format!("a{n:07}"), &format!("id{n}")),
            )
        }
    }

    /// Appends the records in order (idempotent producer, acks=all).
    pub async fn produce(bootstrap: &str, topic: &str, records: &[WebhookRecord]) -> Result<()> {
        produce_with(bootstrap, &[], topic, records).await
    }

    /// [`produce`] with extra producer properties (e.g. [`crate::Broker`]'s).
    pub async fn produce_with(
        bootstrap: &str,
        properties: &[(&str, &str)],
        topic: &str,
        records: &[WebhookRecord],
    ) -> Result<()> {
        let mut config = ClientConfig::new();
        for (key, value) in properties {
            config.set(*key, *value);
        }
        let producer: FutureProducer = config
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()?;
        let mut pending = Vec::new();
        for record in records {
            let mut headers = OwnedHeaders::new();
            for (key, value) in record.headers.pairs() {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let future = producer.send_result(
                FutureRecord::to(topic)
                    .key(&record.key)
                    .payload(&record.body)
                    .headers(headers),
            );
            match future {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => anyhow::bail!("producing: {e}"),
            }
            if pending.len() >= 1000 {
                for delivery in pending.drain(..) {
                    delivery.await?.map_err(|(e, _)| e)?;
                }
            }
        }
        for delivery in pending {
            delivery.await?.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}
