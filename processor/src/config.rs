//! Processor configuration: a TOML file, overridden key by key from the environment
//! (`HOOKFOLD_<SECTION>__<KEY>`), validated before anything starts; loaded by
//! `hookfold_config::load` (this module says what the keys are, what is valid and which
//! secrets there are: `[kafka.security]`'s).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hookfold_config::{LayeredConfig, LoadError, Mode};
use hookfold_kafka::{ResolvedSecurity, Security, SecurityError};
use hookfold_rules::Rules;

mod acls;
use serde::{Deserialize, Serialize};

/// The configuration reference shown by `--help` and in the README.
pub const REFERENCE: &str = r#"CONFIGURATION (TOML; every key can be overridden by HOOKFOLD_<SECTION>__<KEY>,
e.g. HOOKFOLD_KAFKA__BOOTSTRAP_SERVERS=10.0.0.5:9092, HOOKFOLD_STATE_DIR=/var/lib/hookfold)

  state_dir = "./.data/processor"     one RocksDB store per assigned input partition below it
  log_format = "text"                 "text" or "json"; the level comes from RUST_LOG (default info)
  metrics_listen = "127.0.0.1:9464"   GET /metrics, /healthz, /readyz
  tick_interval = "5s"                append a hookfold.tick to an owned webhook-topic partition
                                      quiet this long, so the rules' timers (grace, expiry)
                                      fire without webhooks; "0s": never (timers then wait
                                      for the next webhook of their partition)

  [kafka]
  bootstrap_servers = "127.0.0.1:9092"
  input_topic = "hookfold.webhooks"
  output_topic = "hookfold.incidents"
  group_id = "hookfold-processor"
  changelog_topic = "<group_id>.state" compacted, one partition per input partition
  open_incidents_topic = "<output_topic>.open"  compacted: the latest event of every open
                                      incident by dedup key, a tombstone once resolved
  groups_topic = "<group_id>.groups"  the members of grouped routes, keyed by group, one
                                      partition per input partition (rules.routes group_by)
  instance_id = "processor-0"         optional static membership (group.instance.id): a
                                      restarted instance keeps its partitions, no rebalance
  ack_timeout = "120s"                outputs not acked within this: exit with an error
                                      (a restart resumes from the last committed batch)
  [kafka.properties]                  any other librdkafka property for every client,
  "fetch.max.bytes" = "52428800"      e.g. fetch sizing
  [kafka.security]                    optional; TLS and SASL to the broker, for every
  protocol = "sasl_ssl"               client and subcommand: plaintext (default), ssl,
                                      sasl_plaintext, sasl_ssl
  ca_file = "ca.pem"                  the brokers' CA (default: the system's)
  ca_pem_env = "KAFKA_CA_PEM"         ...or that PEM in this variable
  cert_file = "client.pem"            mutual TLS: certificate chain and key (PEM);
  key_file = "client.key"             key_password_file / key_password_env if encrypted
  [kafka.security.sasl]
  mechanism = "scram-sha-512"         plain, scram-sha-256, scram-sha-512, oauthbearer
  username = "hookfold-processor"
  password_file = "/run/secrets/kafka-password"   or password_env = "KAFKA_PASSWORD"
                                      oauthbearer (OIDC client credentials) instead:
                                      token_endpoint_url, client_id, client_secret_file
                                      or client_secret_env; optional scope, extensions

  [processing]
  guarantee = "effectively_once"      a crash repeats the last batch's incident events, with
                                      the same event ids (consumers deduplicate by ce_id);
                                      "exactly_once": each batch's incident events, states
                                      and input offsets in one Kafka transaction, so a
                                      read_committed consumer never sees a repeat
  transaction_timeout = "10s"         exactly_once: the broker aborts a transaction open
                                      this long (a crashed processor's open transaction holds
                                      back read_committed readers until then); a batch must
                                      commit within it

  [batch]
  max_records = 5000                  commit after this many records...
  max_wait = "50ms"                   ...or this long after the batch's first record

  [rules]                             the incident rules; see docs/RULES.md
  dedup_window = 1024
  [rules.builds]
  scope = "pipeline_branch"           or "pipeline"
  exclude_branches = ["dependabot/*"]
  severity = [{ branch = "main", severity = "critical" }]
  open_on_failing = false             true: build.failing opens at once, build.finished updates
  open_after_failures = 1             open at the N-th consecutive failed build (1 to 64)
  [rules.agents]
  open_on = ["agent.lost", "agent.disconnected", "agent.stopped"]
  grace = "5m"                        open only if the agent has not connected again by then
                                      ("0s": at once); time is the partition's event time
  resolve_after = "24h"               default never: resolve (reason EXPIRED) what is still open
  [rules.bitbucket]
  exclude_branches = ["main", "master"]
"#;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    pub metrics_listen: SocketAddr,
    pub kafka: KafkaConfig,
    pub batch: BatchConfig,
    pub processing: ProcessingConfig,
    pub rules: Rules,
    /// A quiet owned partition of the webhook topic gets a `hookfold.tick` this often, so
    /// that time passes in the log without webhooks; zero: no ticks.
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("./.data/processor"),
            log_format: LogFormat::Text,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            tick_interval: Duration::from_secs(5),
            kafka: KafkaConfig::default(),
            batch: BatchConfig::default(),
            processing: ProcessingConfig::default(),
            rules: Rules::default(),
        }
    }
}

pub use hookfold_config::LogFormat;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub input_topic: String,
    pub output_topic: String,
    pub group_id: String,
    pub changelog_topic: Option<String>,
    /// The compacted table of open incidents (default `<output_topic>.open`).
    pub open_incidents_topic: Option<String>,
    /// The repartition topic of grouped routes (default `<group_id>.groups`).
    pub groups_topic: Option<String>,
    /// `group.instance.id`: static group membership. A restarted instance with the same id
    /// gets its partitions back without a rebalance (e.g. the StatefulSet pod name).
    pub instance_id: Option<String>,
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub security: Security,
    /// `security` checked and its secrets read, when the secrets are ([`Mode::WithSecrets`]).
    #[serde(skip)]
    pub resolved_security: ResolvedSecurity,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            input_topic: "hookfold.webhooks".into(),
            output_topic: "hookfold.incidents".into(),
            group_id: "hookfold-processor".into(),
            changelog_topic: None,
            groups_topic: None,
            open_incidents_topic: None,
            instance_id: None,
            ack_timeout: Duration::from_secs(120),
            properties: BTreeMap::new(),
            security: Security::default(),
            resolved_security: ResolvedSecurity::default(),
        }
    }
}

impl KafkaConfig {
    pub fn changelog_topic(&self) -> String {
        self.changelog_topic
            .clone()
            .unwrap_or_else(|| format!("{}.state", self.group_id))
    }

    /// The groups' repartition topic: `groups_topic`, else `<group_id>.groups`.
    pub fn groups_topic(&self) -> String {
        self.groups_topic
            .clone()
            .unwrap_or_else(|| format!("{}.groups", self.group_id))
    }

    /// The open-incident table: `open_incidents_topic`, else `<output_topic>.open`.
    pub fn open_incidents_topic(&self) -> String {
        self.open_incidents_topic
            .clone()
            .unwrap_or_else(|| format!("{}.open", self.output_topic))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_records: usize,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 5000,
            max_wait: Duration::from_millis(50),
        }
    }
}

/// What a consumer of the incident topic can rely on after a crash (docs/OPERATIONS.md,
/// Processing guarantees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// The store is written after the broker acked a batch's outputs: a crash before that
    /// produces the batch again, with the same event ids.
    EffectivelyOnce,
    /// A batch's outputs, changelog records and input offsets are one Kafka transaction.
    ExactlyOnce,
}

impl Guarantee {
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::EffectivelyOnce => "effectively_once",
            Guarantee::ExactlyOnce => "exactly_once",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    pub guarantee: Guarantee,
    /// `transaction.timeout.ms` of the transactional producer (exactly_once only).
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            guarantee: Guarantee::EffectivelyOnce,
            transaction_timeout: Duration::from_secs(10),
        }
    }
}

impl ProcessingConfig {
    pub fn exactly_once(&self) -> bool {
        self.guarantee == Guarantee::ExactlyOnce
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Security(#[from] SecurityError),
}

impl ProcessorConfig {
    /// Everything, `[kafka.security]`'s secrets included: what every command that
    /// connects loads ([`hookfold_config::load`] in [`Mode::WithSecrets`]).
    pub fn load(file: Option<&Path>) -> Result<Self, LoadError<ConfigError>> {
        hookfold_config::load(file, Mode::WithSecrets)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        for (name, value) in [
            ("kafka.input_topic", &k.input_topic),
            ("kafka.output_topic", &k.output_topic),
            ("kafka.group_id", &k.group_id),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("{name} is empty")));
            }
        }
        let topics = [
            k.input_topic.clone(),
            k.output_topic.clone(),
            k.changelog_topic(),
            k.open_incidents_topic(),
            k.groups_topic(),
        ];
        if topics
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            != topics.len()
        {
            return Err(ConfigError::Invalid(
                "the input, output, changelog and open-incident topics must differ".into(),
            ));
        }
        if self.batch.max_records == 0 {
            return Err(ConfigError::Invalid(
                "batch.max_records must be above 0".into(),
            ));
        }
        if self.processing.exactly_once() {
            let timeout = self.processing.transaction_timeout;
            if timeout < Duration::from_secs(1) {
                return Err(ConfigError::Invalid(
                    "processing.transaction_timeout must be at least 1s".into(),
                ));
            }
            if timeout <= self.batch.max_wait {
                return Err(ConfigError::Invalid(format!(
                    "processing.transaction_timeout ({timeout:?}) must exceed batch.max_wait ({:?}): \
                     a batch is one transaction",
                    self.batch.max_wait
                )));
            }
            if self
                .kafka
                .properties
                .get("isolation.level")
                .is_some_and(|level| level != "read_committed")
            {
                return Err(ConfigError::Invalid(
                    "kafka.properties sets isolation.level to other than read_committed: under \
                     exactly_once the restore must not read aborted transactions' records"
                        .into(),
                ));
            }
            if self.kafka.properties.contains_key("transactional.id") {
                return Err(ConfigError::Invalid(
                    "kafka.properties must not set transactional.id: the processor derives it \
                     from group_id and instance_id"
                        .into(),
                ));
            }
        }
        self.rules
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("rules: {e}")))
    }
}

impl LayeredConfig for ProcessorConfig {
    type Error = ConfigError;

    fn validate(&self) -> Result<(), ConfigError> {
        ProcessorConfig::validate(self)
    }

    /// `[kafka.security]` checked and its secrets read.
    fn resolve_secrets(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        self.kafka.resolved_security = self.kafka.security.resolve(&self.kafka.properties, env)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_designs_minimal_file_loads() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(
            br#"
state_dir = "./.data/processor"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
input_topic = "hookfold.webhooks"
output_topic = "hookfold.incidents"
group_id = "hookfold-processor"
"#,
        )
        .unwrap();
        let config = ProcessorConfig::load(Some(file.path())).unwrap();
        assert_eq!(config.kafka.changelog_topic(), "hookfold-processor.state");
        assert_eq!(config.rules, Rules::default());
    }

    #[test]
    fn rules_section_and_mistakes() {
        let parse = |text: &str| -> Result<ProcessorConfig, String> {
            let config: ProcessorConfig =
                hookfold_config::parse_toml(text).map_err(|e| e.to_string())?;
            config.validate().map_err(|e| e.to_string())?;
            Ok(config)
        };
        let config = parse("[rules.builds]\nscope = \"pipeline\"").unwrap();
        assert_eq!(
            config.rules.builds.scope,
            hookfold_rules::BuildScope::Pipeline
        );
        assert!(
            parse("[rules]\ndedup_windw = 3")
                .unwrap_err()
                .contains("dedup_windw")
        );
        assert_eq!(config.processing.guarantee, Guarantee::EffectivelyOnce);
        let config = parse("[processing]\nguarantee = \"exactly_once\"").unwrap();
        assert!(config.processing.exactly_once());
        assert!(
            parse("[processing]\nguarantee = \"exactly-once\"")
                .unwrap_err()
                .contains("exactly_once")
        );
        assert!(
            parse("[processing]\nguarantee = \"exactly_once\"\ntransaction_timeout = \"10ms\"")
                .unwrap_err()
                .contains("transaction_timeout")
        );
        assert!(
            parse("[kafka]\noutput_topic = \"hookfold.webhooks\"")
                .unwrap_err()
                .contains("must differ")
        );
    }
}
