//! The launcher for Apache Kafka in KRaft mode: one JVM per node, each node both broker and
//! controller, from the jars `scripts/install-tools.sh` copies from Maven Central.
//!
//! Used by the tests (nodes tied to the test binary, see [`crate::process`]) and by
//! `hookfold-dev kafka start|stop` behind `just broker` and the benchmarks (a detached node
//! with a pid file). One node is a complete cluster; three nodes make the failover cluster.
//!
//! Invariants: a data directory is formatted once (`kafka.tools.StorageTool format`) and
//! then only restarted, so a restarted node keeps its log; [`KafkaCluster::start`] returns
//! only once every node is in the metadata a client sees; a node's output goes to
//! `<dir>/kafka.log`, which every error here quotes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::free_port;
use crate::process::{Process, Signal, send_signal, tail_of};
use crate::wait::{try_wait_for, wait_for};

/// The Apache Kafka version pinned in `scripts/kafka/pom.xml`.
pub fn pinned_version() -> &'static str {
    const POM: &str = include_str!("../../scripts/kafka/pom.xml");
    POM.split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(version, _)| version.trim())
        .expect("scripts/kafka/pom.xml pins <kafka.version>")
}

/// The directory holding the broker's jars: `HOOKFOLD_KAFKA_LIBS`, else where
/// `scripts/install-tools.sh` puts the pinned version.
pub fn libs_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HOOKFOLD_KAFKA_LIBS") {
        return Ok(PathBuf::from(dir));
    }
    let cache = match std::env::var_os("HOOKFOLD_CACHE") {
        Some(cache) => PathBuf::from(cache),
        None => {
            Path::new(&std::env::var_os("HOME").context("HOME is not set")?).join(".cache/hookfold")
        }
    };
    let dir = cache.join("kafka").join(pinned_version()).join("libs");
    if !dir.join(".complete").exists() {
        bail!(
            "Apache Kafka {} is not installed in {}: run `scripts/install-tools.sh kafka` \
             (or `just tools`), or point KAFKA_BOOTSTRAP_SERVERS at a running Kafka",
            pinned_version(),
            dir.display()
        );
    }
    Ok(dir)
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| Path::new(&home).join("bin/java"))
        .filter(|java| java.exists())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// How a node's JVM lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Tied to this process (tests): killed when its [`KafkaNode`] drops or the test ends.
    Tied,
    /// Detached (the local stack, benchmarks): survives this process; its pid goes to
    /// `<dir>/kafka.pid`, which [`stop_detached`] reads.
    Detached,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// 1 for a single node, 3 for the failover cluster.
    pub nodes: usize,
    /// Where the nodes keep config, data and logs: `<dir>/node-<id>/`.
    pub dir: PathBuf,
    /// Client ports, one per node; free ports when empty.
    pub ports: Vec<u16>,
    /// JVM heap (`-Xmx` and `-Xms`), e.g. `512m`; `HOOKFOLD_KAFKA_HEAP` overrides.
    pub heap: String,
    pub lifetime: Lifetime,
    /// Extra `server.properties` lines.
    pub properties: Vec<(String, String)>,
    /// Secured client listeners beside the plaintext one.
    pub secure: Option<SecureListeners>,
}

/// A `SASL_SSL` listener (SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN) and an `SSL` listener
/// that requires a client certificate, beside the `PLAINTEXT` listener the harness itself
/// (readiness, topics, reading back) and the brokers among themselves use. A client
/// certificate `CN=<name>` is the principal `User:<name>`.
#[derive(Clone, Debug)]
pub struct SecureListeners {
    /// PEM: the broker's private key, then its certificate chain (a Kafka PEM key store).
    pub key_store: PathBuf,
    /// PEM: the CA the brokers' and clients' certificates come from.
    pub trust_store: PathBuf,
    /// `(name, password)`: SCRAM credentials created when the storage is formatted, and
    /// PLAIN users of the SASL listener.
    pub users: Vec<(String, String)>,
    /// OAUTHBEARER on the `SASL_SSL` listener too: tokens from this issuer, checked against
    /// its JWKS file ([`crate::oidc::TestIdp`]).
    pub oauth: Option<OauthValidation>,
}

/// How the brokers check OAUTHBEARER tokens.
#[derive(Clone, Debug)]
pub struct OauthValidation {
    pub jwks_file: PathBuf,
    pub issuer: String,
    pub audience: String,
}

impl ClusterSpec {
    pub fn new(nodes: usize, dir: impl Into<PathBuf>) -> Self {
        Self {
            nodes,
            dir: dir.into(),
            ports: Vec::new(),
            heap: std::env::var("HOOKFOLD_KAFKA_HEAP").unwrap_or_else(|_| "512m".into()),
            lifetime: Lifetime::Tied,
            properties: Vec::new(),
            secure: None,
        }
    }
}

/// One KRaft node (broker and controller in one JVM).
pub struct KafkaNode {
    pub id: u32,
    pub port: u16,
    pub controller_port: u16,
    /// The `SASL_SSL` and `SSL` listeners' ports, when the cluster has them.
    pub secure_ports: Option<(u16, u16)>,
    pub dir: PathBuf,
    users: Vec<(String, String)>,
    /// `-D` system properties of the JVM.
    jvm_properties: Vec<String>,
    heap: String,
    lifetime: Lifetime,
    process: Process,
}

impl KafkaNode {
    fn config_path(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.join("kafka.pid")
    }

    fn is_formatted(&self) -> bool {
        self.dir.join("data/meta.properties").exists()
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `SASL_SSL` listener, when the node has one.
    pub fn sasl_ssl_bootstrap(&self) -> Option<String> {
        self.secure_ports
            .map(|(port, _)| format!("127.0.0.1:{port}"))
    }

    /// The `SSL` (client certificate) listener, when the node has one.
    pub fn ssl_bootstrap(&self) -> Option<String> {
        self.secure_ports
            .map(|(_, port)| format!("127.0.0.1:{port}"))
    }

    /// The last lines of the node's log.
    pub fn log_tail(&self) -> String {
        std::fs::read_to_string(self.log_path())
            .map(|text| tail_of(&text, 60))
            .unwrap_or_else(|e| format!("(no log at {}: {e})", self.log_path().display()))
    }

    fn java_command(&self, main_class: &str) -> Result<Command> {
        let libs = libs_dir()?;
        let mut command = Command::new(java());
        command
            .arg(format!("-Xmx{}", self.heap))
            .arg(format!("-Xms{}", self.heap))
            .args([
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-Djava.awt.headless=true",
            ])
            .args(&self.jvm_properties)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .arg(main_class)
            .current_dir(&self.dir);
        Ok(command)
    }

    /// Formats the data directory (once; a formatted one is kept).
    fn format(&self, cluster_id: &str) -> Result<Option<std::process::Child>> {
        if self.is_formatted() {
            return Ok(None);
        }
        let mut command = self.java_command("kafka.tools.StorageTool")?;
        command
            .args(["format", "--ignore-formatted"])
            .arg(format!("--cluster-id={cluster_id}"));
        for (name, password) in &self.users {
            for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256"] {
                command
                    .arg("--add-scram")
                    .arg(format!("{mechanism}=[name={name},password={password}]"));
            }
        }
        command
            .arg("-c")
            .arg(self.config_path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = command
            .spawn()
            .with_context(|| format!("running {} (is a JDK 17 installed?)", java().display()))?;
        Ok(Some(child))
    }

    /// Starts the JVM on the formatted directory (again, after a stop or a kill).
    pub fn start(&mut self) -> Result<()> {
        if self.process.is_running() {
            return Ok(());
        }
        // A port someone else holds would leave this JVM failing while the readiness check
        // reached the other process (a broker left running by an earlier stack, say).
        for port in [self.port, self.controller_port] {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port {port} of Kafka node {} is in use by another process (a broker left \
                     running? `just down`, or `hookfold-dev kafka stop --data-dir <its dir>`); \
                     stop it or use another port",
                    self.id
                );
            }
        }
        let mut command = self.java_command("kafka.Kafka")?;
        command.arg(self.config_path());
        match self.lifetime {
            Lifetime::Tied => {
                self.process = Process::spawn("kafka", command, &self.dir)?;
            }
            Lifetime::Detached => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.log_path())?;
                use std::os::unix::process::CommandExt;
                let child = command
                    .stdin(std::process::Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .with_context(|| format!("starting {}", java().display()))?;
                std::fs::write(self.pid_path(), child.id().to_string())?;
                // Not waited for: it outlives this process; `stop_detached` ends it.
                std::mem::forget(child);
            }
        }
        Ok(())
    }

    fn has_exited(&mut self) -> Option<String> {
        match self.lifetime {
            Lifetime::Tied => self.process.exited().map(|status| status.to_string()),
            Lifetime::Detached => {
                let pid = std::fs::read_to_string(self.pid_path()).ok()?;
                let alive = Path::new("/proc").join(pid.trim()).exists();
                (!alive).then(|| format!("pid {} is gone", pid.trim()))
            }
        }
    }

    /// SIGKILL, as a crash would: no controlled shutdown, no flush.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM (a controlled shutdown: leadership moves first) and wait for the exit,
    /// SIGKILL after `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> Result<()> {
        if !self.process.is_running() {
            return Ok(());
        }
        self.process.terminate(timeout).map(|_| ())
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.process.signal(signal)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// One or more KRaft nodes forming one cluster.
pub struct KafkaCluster {
    pub nodes: Vec<KafkaNode>,
    /// The id the nodes were formatted with: a broker answering with another one is not ours.
    cluster_id: String,
}

impl KafkaCluster {
    /// Formats (where needed) and starts every node, and waits until a client sees all of
    /// them as brokers.
    pub fn start(spec: &ClusterSpec) -> Result<Self> {
        if spec.nodes == 0 {
            bail!("a cluster needs at least one node");
        }
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let cluster_id = cluster_id(&spec.dir)?;
        let mut nodes = Vec::new();
        for index in 0..spec.nodes {
            let id = index as u32 + 1;
            let dir = spec.dir.join(format!("node-{id}"));
            std::fs::create_dir_all(dir.join("data"))?;
            // A restarted stack keeps its ports: they are in the config it wrote.
            let (port, controller_port) = match previous_ports(&dir) {
                Some(ports) => ports,
                None => (
                    spec.ports.get(index).copied().unwrap_or_else(free_port),
                    free_port(),
                ),
            };
            let secure_ports = spec.secure.as_ref().map(|_| (free_port(), free_port()));
            nodes.push(KafkaNode {
                id,
                port,
                controller_port,
                secure_ports,
                users: spec
                    .secure
                    .as_ref()
                    .map(|s| s.users.clone())
                    .unwrap_or_default(),
                // Kafka 4 reads a JWKS only from files (or URLs) an operator allowed.
                jvm_properties: spec
                    .secure
                    .iter()
                    .flat_map(|s| &s.oauth)
                    .map(|o| {
                        format!(
                            "-Dorg.apache.kafka.sasl.oauthbearer.allowed.files={}",
                            o.jwks_file.display()
                        )
                    })
                    .collect(),
                dir,
                heap: spec.heap.clone(),
                lifetime: spec.lifetime.clone(),
                process: Process::none(),
            });
        }
        let voters = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        for node in &nodes {
            write_config(node, &voters, spec)?;
        }
        // Format all at once: each is a JVM start.
        let formats: Vec<_> = nodes
            .iter()
            .map(|n| n.format(&cluster_id).map(|child| (n, child)))
            .collect::<Result<_>>()?;
        for (node, child) in formats {
            if let Some(child) = child {
                let output = child.wait_with_output()?;
                if !output.status.success() {
                    bail!(
                        "formatting Kafka node {} in {} failed ({}):\n{}{}",
                        node.id,
                        node.dir.display(),
                        output.status,
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
            }
        }
        let mut cluster = Self { nodes, cluster_id };
        for node in &mut cluster.nodes {
            node.start()?;
        }
        cluster.wait_ready(Duration::from_secs(120))?;
        Ok(cluster)
    }

    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(KafkaNode::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `kafka-acls.sh` (`org.apache.kafka.tools.AclCommand`) once per argument list,
    /// all at once, as the plaintext listener's super user.
    pub fn acl_commands(&self, commands: &[Vec<String>]) -> Result<()> {
        let node = self.nodes.first().context("a cluster has a node")?;
        let mut running = Vec::new();
        for args in commands {
            let mut command = node.java_command("org.apache.kafka.tools.AclCommand")?;
            command
                .arg("--bootstrap-server")
                .arg(self.bootstrap())
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            running.push((args, command.spawn().context("running AclCommand")?));
        }
        for (args, child) in running {
            let output = child.wait_with_output()?;
            if !output.status.success() {
                bail!(
                    "kafka-acls.sh {} failed ({}):\n{}{}",
                    args.join(" "),
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        Ok(())
    }

    /// Every node's `SASL_SSL` listener, when the cluster has them.
    pub fn sasl_ssl_bootstrap(&self) -> Option<String> {
        let all: Option<Vec<String>> = self
            .nodes
            .iter()
            .map(KafkaNode::sasl_ssl_bootstrap)
            .collect();
        all.map(|all| all.join(","))
    }

    /// Every node's `SSL` listener, when the cluster has them.
    pub fn ssl_bootstrap(&self) -> Option<String> {
        let all: Option<Vec<String>> = self.nodes.iter().map(KafkaNode::ssl_bootstrap).collect();
        all.map(|all| all.join(","))
    }

    pub fn node(&mut self, id: u32) -> Result<&mut KafkaNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no Kafka node {id}"))
    }

    /// Waits until a metadata request lists every running node as a broker.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let wanted: Vec<i32> = self.nodes.iter().map(|n| n.id as i32).collect();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "3")
            .create()?;
        let what = format!("Kafka at {} to list brokers {wanted:?}", self.bootstrap());
        let listed = try_wait_for(&what, timeout, || {
            if let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_secs(2)) {
                let brokers: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
                if wanted.iter().all(|id| brokers.contains(id)) {
                    match consumer.client().fetch_cluster_id(Duration::from_secs(2)) {
                        Some(id) if id == self.cluster_id => return Ok(Some(())),
                        Some(other) => bail!(
                            "another Kafka answers on {} (cluster id {other}, ours is {}): stop \
                             it or use another port",
                            self.bootstrap(),
                            self.cluster_id
                        ),
                        None => {}
                    }
                }
            }
            for node in &mut self.nodes {
                if let Some(how) = node.has_exited() {
                    bail!(
                        "Kafka node {} exited while starting ({how}); {}",
                        node.id,
                        node.log_path().display()
                    );
                }
            }
            Ok(None)
        });
        // Whatever went wrong, the nodes' logs say more.
        listed.map_err(|e| {
            let mut logs = String::new();
            for node in &self.nodes {
                let _ = write!(logs, "\n--- node {} ---\n{}", node.id, node.log_tail());
            }
            anyhow!("{e:#}:{logs}")
        })
    }

    /// Every node's log tail, for a failing test.
    pub fn logs(&self) -> String {
        let mut logs = String::new();
        for node in &self.nodes {
            let _ = write!(
                logs,
                "\n--- kafka node {} ({}) ---\n{}",
                node.id,
                node.log_path().display(),
                node.log_tail()
            );
        }
        logs
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if node.lifetime == Lifetime::Tied {
                node.kill();
            }
        }
    }
}

/// Stops a detached node started by `hookfold-dev kafka start`: SIGTERM (a controlled
/// shutdown), SIGKILL after `timeout`. Returns whether one was running.
pub fn stop_detached(dir: &Path, timeout: Duration) -> Result<bool> {
    let mut stopped = false;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let pid_path = entry.path().join("kafka.pid");
        let Ok(pid) = std::fs::read_to_string(&pid_path) else {
            continue;
        };
        let pid: u32 = pid.trim().parse().context("reading kafka.pid")?;
        let proc_dir = Path::new("/proc").join(pid.to_string());
        if proc_dir.exists() && is_kafka(&proc_dir) {
            send_signal(pid, Signal::Term)?;
            let gone = wait_for("Kafka to exit after SIGTERM", timeout, || {
                (!proc_dir.exists() || is_zombie(&proc_dir)).then_some(())
            });
            if gone.is_err() {
                send_signal(pid, Signal::Kill)?;
            }
            stopped = true;
        }
        std::fs::remove_file(&pid_path)?;
    }
    Ok(stopped)
}

/// Whether a detached node of `dir` runs now.
pub fn detached_running(dir: &Path) -> Option<u32> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("kafka.pid")).ok())
        .filter_map(|pid| pid.trim().parse::<u32>().ok())
        .find(|pid| {
            let proc_dir = Path::new("/proc").join(pid.to_string());
            proc_dir.exists() && is_kafka(&proc_dir) && !is_zombie(&proc_dir)
        })
}

fn is_kafka(proc_dir: &Path) -> bool {
    // A recycled pid must not be killed: check it is still the broker.
    std::fs::read(proc_dir.join("cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("kafka.Kafka"))
        .unwrap_or(false)
}

fn is_zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The cluster id, made once per cluster directory and kept there: a base64url-encoded
/// 16-byte value, the form `StorageTool format -t` takes.
fn cluster_id(dir: &Path) -> Result<String> {
    let path = dir.join("cluster.id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_string());
    }
    use sha2::{Digest, Sha256};
    let seed = format!(
        "{}-{}-{:?}",
        dir.display(),
        std::process::id(),
        std::time::SystemTime::now()
    );
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&Sha256::digest(seed.as_bytes())[..16]);
    // An id starting with '-' reads as an option to the storage tool (Kafka's own random ids
    // avoid it too): the first character comes from the top bits of the first byte.
    bytes[0] &= 0x7f;
    let id = base64url(&bytes);
    std::fs::write(&path, &id)?;
    Ok(id)
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn previous_ports(dir: &Path) -> Option<(u16, u16)> {
    let config = std::fs::read_to_string(dir.join("server.properties")).ok()?;
    let value = |key: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_owned)
    };
    let port = value("hookfold.client.port=")?.parse().ok()?;
    let controller = value("hookfold.controller.port=")?.parse().ok()?;
    Some((port, controller))
}

fn write_config(node: &KafkaNode, voters: &str, spec: &ClusterSpec) -> Result<()> {
    let replication = spec.nodes.min(3);
    let min_isr = if spec.nodes >= 3 { 2 } else { 1 };
    let data = node.dir.join("data");
    let (mut listeners, mut advertised, mut protocols) = (
        format!(
            "PLAINTEXT://127.0.0.1:{0},CONTROLLER://127.0.0.1:{1}",
            node.port, node.controller_port
        ),
        format!("PLAINTEXT://127.0.0.1:{}", node.port),
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_string(),
    );
    let mut secured = String::new();
    if let (Some(secure), Some((sasl_port, ssl_port))) = (&spec.secure, node.secure_ports) {
        let extra = format!(",SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port}");
        listeners.push_str(&extra);
        advertised.push_str(&extra);
        protocols.push_str(",SASL_SSL:SASL_SSL,SSL:SSL");
        let plain_users: String = secure
            .users
            .iter()
            .map(|(name, password)| format!(" user_{name}=\"{password}\""))
            .collect();
        let mechanisms = match &secure.oauth {
            Some(_) => "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN,OAUTHBEARER",
            None => "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN",
        };
        let _ = write!(
            secured,
            "# Secured listeners (tests/src/kafka.rs SecureListeners).\n\
             sasl.enabled.mechanisms={mechanisms}\n\
             listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
             listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};\n\
             ssl.keystore.type=PEM\n\
             ssl.keystore.location={key_store}\n\
             ssl.truststore.type=PEM\n\
             ssl.truststore.location={trust_store}\n\
             listener.name.ssl.ssl.client.auth=required\n\
             ssl.principal.mapping.rules=RULE:^CN=([^,]+).*$/$1/,DEFAULT\n\
             # ACLs decide for the secured listeners' users; the plaintext listener (the\n\
             # harness, the brokers and the controller) is ANONYMOUS, a super user.\n\
             authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
             super.users=User:ANONYMOUS\n\
             allow.everyone.if.no.acl.found=false\n",
            key_store = secure.key_store.display(),
            trust_store = secure.trust_store.display(),
        );
        if let Some(oauth) = &secure.oauth {
            let _ = write!(
                secured,
                "# OAUTHBEARER: JWTs signed by the test identity provider (tests/src/oidc.rs).\n\
                 listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;\n\
                 listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler\n\
                 sasl.oauthbearer.jwks.endpoint.url=file://{jwks}\n\
                 sasl.oauthbearer.expected.issuer={issuer}\n\
                 sasl.oauthbearer.expected.audience={audience}\n",
                jwks = oauth.jwks_file.display(),
                issuer = oauth.issuer,
                audience = oauth.audience,
            );
        }
    }
    let mut config = format!(
        "# Written by hookfold's Kafka launcher (tests/src/kafka.rs); rewritten at each start.\n\
         hookfold.client.port={port}\n\
         hookfold.controller.port={cport}\n\
         process.roles=broker,controller\n\
         node.id={id}\n\
         controller.quorum.voters={voters}\n\
         listeners={listeners}\n\
         advertised.listeners={advertised}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map={protocols}\n\
         inter.broker.listener.name=PLAINTEXT\n\
         log.dirs={data}\n\
         # Small-machine settings: internal topics replicated as far as the cluster allows,\n\
         # a handful of partitions each, and no delay before the first rebalance.\n\
         offsets.topic.replication.factor={replication}\n\
         offsets.topic.num.partitions=10\n\
         transaction.state.log.replication.factor={replication}\n\
         transaction.state.log.min.isr={min_isr}\n\
         transaction.state.log.num.partitions=10\n\
         share.coordinator.state.topic.replication.factor={replication}\n\
         share.coordinator.state.topic.min.isr={min_isr}\n\
         default.replication.factor={replication}\n\
         min.insync.replicas={min_isr}\n\
         group.initial.rebalance.delay.ms=0\n\
         num.partitions=1\n\
         auto.create.topics.enable=false\n\
         num.network.threads=2\n\
         num.io.threads=4\n\
         background.threads=4\n\
         log.cleaner.dedupe.buffer.size=16777216\n",
        port = node.port,
        cport = node.controller_port,
        id = node.id,
        data = data.display(),
    );
    config.push_str(&secured);
    for (key, value) in &spec.properties {
        let _ = writeln!(config, "{key}={value}");
    }
    std::fs::write(node.config_path(), config)?;
    std::fs::write(
        node.dir.join("log4j2.properties"),
        "status = warn\n\
         appender.out.type = Console\n\
         appender.out.name = STDOUT\n\
         appender.out.layout.type = PatternLayout\n\
         appender.out.layout.pattern = [%d] %p %m (%c)%n\n\
         rootLogger.level = INFO\n\
         rootLogger.appenderRef.out.ref = STDOUT\n\
         # Per-request and state-change chatter is not what a failing test needs.\n\
         logger.request.name = kafka.request.logger\n\
         logger.request.level = WARN\n\
         logger.state.name = state.change.logger\n\
         logger.state.level = WARN\n\
         logger.clients.name = org.apache.kafka.clients\n\
         logger.clients.level = WARN\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_the_rfc_4648_vectors() {
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[0u8; 16]).len(), 22);
    }

    #[test]
    fn cluster_ids_never_start_with_a_dash() {
        // A leading '-' made one in 32 formats fail ("--cluster-id expected one argument").
        for _ in 0..200 {
            let dir = tempfile::tempdir().unwrap();
            let id = cluster_id(dir.path()).unwrap();
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-') && !id.starts_with('_'), "{id}");
            assert_eq!(cluster_id(dir.path()).unwrap(), id, "kept once made");
        }
    }

    #[test]
    fn the_pinned_version_is_a_4x_release() {
        assert!(pinned_version().starts_with("4."), "{}", pinned_version());
    }
}
