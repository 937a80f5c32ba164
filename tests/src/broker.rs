//! The broker a test talks to: the Kafka named by `KAFKA_BOOTSTRAP_SERVERS`, else an
//! Apache Kafka started by [`crate::kafka`].
//!
//! Most tests share one single-node broker per test binary ([`Broker::shared`]) and keep
//! apart by unique topic and group names. A test that stops, kills or pauses the broker
//! gets one of its own ([`Broker::own`], [`Broker::own_cluster`]); those never use
//! `KAFKA_BOOTSTRAP_SERVERS`, since a test cannot kill a broker it does not own.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;

use crate::certs::TestCa;
use crate::kafka::{ClusterSpec, KafkaCluster, KafkaNode, OauthValidation, SecureListeners};
use crate::oidc::TestIdp;
use crate::topics;

/// A Kafka for one test.
pub struct Broker {
    pub bootstrap: String,
    cluster: Option<KafkaCluster>,
    /// Where an owned cluster keeps its nodes (dropped after the cluster).
    _dir: Option<tempfile::TempDir>,
}

impl SecuredBroker {
    /// Grants what a [`hookfold_kafka::acl::script`] (as printed by `hookfold-gateway
    /// --print-acls` or `hookfold-processor acls`) lists.
    pub fn grant(&mut self, script: &str) -> Result<()> {
        let commands = hookfold_kafka::acl::parse_script(script);
        if commands.is_empty() {
            anyhow::bail!("no kafka-acls.sh commands in:\n{script}");
        }
        self.broker.cluster()?.acl_commands(&commands)
    }
}

/// A broker with secured listeners ([`Broker::own_secured`]).
pub struct SecuredBroker {
    /// The broker; its `bootstrap` is the plaintext listener the harness uses.
    pub broker: Broker,
    /// The CA of the brokers' certificates, which also issues client certificates.
    pub ca: TestCa,
    /// A directory for the test's client certificates and password files.
    pub certs: std::path::PathBuf,
    /// The `SASL_SSL` listener.
    pub sasl_ssl: String,
    /// The `SSL` listener (client certificate required).
    pub ssl: String,
    /// The identity provider whose tokens the `SASL_SSL` listener takes (OAUTHBEARER): its
    /// clients are `users`, a user's password its client secret.
    pub idp: TestIdp,
}

/// Where one partition lives, as the cluster's metadata shows it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLayout {
    pub partition: i32,
    /// The node id of the leader (-1 while there is none).
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// The external Kafka, if `KAFKA_BOOTSTRAP_SERVERS` names one.
pub fn external_bootstrap() -> Option<String> {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .ok()
        .filter(|servers| !servers.trim().is_empty())
}

/// A failing test shows the shared broker's last log lines after its panic message (the
/// hook runs on the panicking thread, whose output the test harness shows).
fn print_log_on_panic(log: std::path::PathBuf) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!(
            "--- the test binary's Kafka, last lines of {} ---\n{}",
            log.display(),
            crate::process::tail_of(&text, 30)
        );
    }));
}

impl Drop for Broker {
    fn drop(&mut self) {
        // An owned cluster dies with the test: a failing test shows its logs first.
        if std::thread::panicking() && self.cluster.is_some() {
            eprintln!("{}", self.logs());
        }
    }
}

impl Broker {
    /// The Kafka named by `KAFKA_BOOTSTRAP_SERVERS`, else this test binary's own
    /// single-node Apache Kafka, started on first use and killed when the binary exits.
    pub fn shared() -> Result<Self> {
        if let Some(bootstrap) = external_bootstrap() {
            return Ok(Self {
                bootstrap,
                cluster: None,
                _dir: None,
            });
        }
        static SHARED: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        let bootstrap = SHARED.get_or_init(|| {
            let started = (|| -> Result<String> {
                let dir = tempfile::Builder::new()
                    .prefix("hookfold-kafka-")
                    .tempdir()?;
                let cluster = KafkaCluster::start(&ClusterSpec::new(1, dir.path()))?;
                let bootstrap = cluster.bootstrap();
                print_log_on_panic(cluster.nodes[0].log_path());
                // Lives as long as the test binary; the JVM is tied to it (crate::process)
                // and the directory is left for the OS's temp cleanup.
                std::mem::forget(cluster);
                std::mem::forget(dir);
                Ok(bootstrap)
            })();
            started.map_err(|e| format!("{e:#}"))
        });
        let bootstrap = bootstrap.clone().map_err(|e| anyhow!(e))?;
        Ok(Self {
            bootstrap,
            cluster: None,
            _dir: None,
        })
    }

    /// The same as [`Broker::shared`]; the name most tests use.
    pub fn start() -> Result<Self> {
        Self::shared()
    }

    /// A single-node Apache Kafka of this test's own, to stop, kill and restart.
    pub fn own() -> Result<Self> {
        Self::own_cluster(1)
    }

    /// A cluster of `nodes` Apache Kafka nodes of this test's own (3 for failover: topics
    /// then default to replication factor 3 and `min.insync.replicas=2`).
    pub fn own_cluster(nodes: usize) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hookfold-kafka-")
            .tempdir()?;
        let cluster = KafkaCluster::start(&ClusterSpec::new(nodes, dir.path()))?;
        Ok(Self {
            bootstrap: cluster.bootstrap(),
            cluster: Some(cluster),
            _dir: Some(dir),
        })
    }

    /// A single-node Apache Kafka of this test's own with secured listeners (see
    /// [`SecureListeners`]): `SASL_SSL` for `users` and `SSL` with client certificates, both
    /// with certificates from a CA made for this test. `bootstrap` stays the plaintext
    /// listener, for the harness's own clients. Never `KAFKA_BOOTSTRAP_SERVERS`: the test
    /// needs listeners and users it set up itself.
    pub fn own_secured(users: &[(&str, &str)]) -> Result<SecuredBroker> {
        let dir = tempfile::Builder::new()
            .prefix("hookfold-kafka-secured-")
            .tempdir()?;
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs)?;
        let ca = TestCa::new(&certs, "cluster")?;
        let key_store = certs.join("broker-keystore.pem");
        std::fs::write(&key_store, ca.broker("broker")?.key_store()?)?;
        let idp = TestIdp::start(&certs, users)?;
        let mut spec = ClusterSpec::new(1, dir.path().join("cluster"));
        spec.secure = Some(SecureListeners {
            key_store,
            trust_store: ca.ca_file.clone(),
            users: users
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_string()))
                .collect(),
            oauth: Some(OauthValidation {
                jwks_file: idp.jwks_file.clone(),
                issuer: idp.issuer.clone(),
                audience: crate::oidc::AUDIENCE.to_owned(),
            }),
        });
        let cluster = KafkaCluster::start(&spec)?;
        let sasl_ssl = cluster
            .sasl_ssl_bootstrap()
            .context("the secured cluster has a SASL_SSL listener")?;
        let ssl = cluster
            .ssl_bootstrap()
            .context("the secured cluster has an SSL listener")?;
        Ok(SecuredBroker {
            broker: Self {
                bootstrap: cluster.bootstrap(),
                cluster: Some(cluster),
                _dir: Some(dir),
            },
            ca,
            certs,
            sasl_ssl,
            ssl,
            idp,
        })
    }

    /// Whether this test owns (and may stop) the broker.
    pub fn is_owned(&self) -> bool {
        self.cluster.is_some()
    }

    /// The nodes of an owned cluster.
    pub fn cluster(&mut self) -> Result<&mut KafkaCluster> {
        self.cluster
            .as_mut()
            .context("this broker is not owned by the test")
    }

    /// Node `id` (1-based) of an owned cluster.
    pub fn node(&mut self, id: u32) -> Result<&mut KafkaNode> {
        self.cluster()?.node(id)
    }

    /// The log tails of an owned cluster's nodes (empty for a shared or external one).
    pub fn logs(&self) -> String {
        self.cluster
            .as_ref()
            .map(KafkaCluster::logs)
            .unwrap_or_default()
    }

    /// Restarts a node of an owned cluster on its data directory and waits until the
    /// cluster lists it again.
    pub fn restart_node(&mut self, id: u32) -> Result<()> {
        let cluster = self.cluster()?;
        cluster.node(id)?.start()?;
        cluster.wait_ready(Duration::from_secs(120))
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?)
    }

    /// Creates a topic (replication factor: the broker's default) and waits until its
    /// metadata shows every partition.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        topics::create_topic(&self.bootstrap, name, partitions, &[]).await
    }

    /// How many records the topic holds now (sum of high minus low watermarks).
    pub fn record_count(&self, topic: &str) -> Result<i64> {
        Ok(topics::watermarks(&self.bootstrap, topic)?
            .iter()
            .map(|(low, high)| high - low)
            .sum())
    }

    /// Every record on the topic, read from the beginning by an independent consumer.
    pub fn read_all(&self, topic: &str) -> Result<Vec<OwnedMessage>> {
        topics::read_all(&self.bootstrap, topic)
    }

    /// Every partition's leader, replicas and in-sync replicas, in partition order, from a
    /// metadata request to whichever node answers (for failover tests: which node to kill,
    /// and when a restarted node is back in sync).
    pub fn partitions(&self, topic: &str) -> Result<Vec<PartitionLayout>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            // A killed node in the bootstrap list is expected; its connection errors are not.
            .set("log_level", "3")
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none())
            .with_context(|| format!("topic {topic} not in metadata"))?;
        let mut layout: Vec<PartitionLayout> = found
            .partitions()
            .iter()
            .map(|p| PartitionLayout {
                partition: p.id(),
                leader: p.leader(),
                replicas: p.replicas().to_vec(),
                isr: p.isr().to_vec(),
            })
            .collect();
        layout.sort_by_key(|p| p.partition);
        Ok(layout)
    }
}
