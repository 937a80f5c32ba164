//! Gateway configuration: a TOML file, overridden key by key from the environment
//! (`HOOKFOLD_<SECTION>__<KEY>`), then validated as a whole before anything starts; loaded
//! by `hookfold_config::load` (this module says what the keys are, what is valid and which
//! secrets there are: the sources' and `[kafka.security]`'s).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hookfold_config::{LayeredConfig, LoadError, Mode};
use hookfold_proto::cloudevents::SourceKind;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::auth::Secret;
use crate::redact::{JsonPath, PathError};
use hookfold_kafka::acl::{Acl, Resource as AclResource};
use hookfold_kafka::{ResolvedSecurity, Security, SecurityError};

/// The configuration reference shown by `--help` and in the README.
pub const REFERENCE: &str = r#"CONFIGURATION (TOML; every key can be overridden by HOOKFOLD_<SECTION>__<KEY>,
e.g. HOOKFOLD_KAFKA__BOOTSTRAP_SERVERS=10.0.0.5:9092, HOOKFOLD_LISTEN=0.0.0.0:8080)

  listen = "127.0.0.1:8080"          address to serve HTTP (or HTTPS with [tls]) on
  log_format = "text"                "text" or "json"; the level comes from RUST_LOG (default info)
  max_body_bytes = 1048576           larger bodies get 413
  header_timeout = "10s"             a client must send its request headers within this
  body_timeout = "30s"               ... and its body within this (else 408)
  shutdown_timeout = "30s"           on SIGTERM/SIGINT, how long in-flight requests may drain
  signature_window = "300s"          accepted age (either way) of a Buildkite signature timestamp

  [kafka]
  bootstrap_servers = "127.0.0.1:9092"
  topic = "hookfold.webhooks"
  ack_timeout = "5s"                 no broker ack within this: 503 (the record may not exist)
  [kafka.properties]                 any other librdkafka producer property
  "client.id" = "hookfold-gateway"   (acks=all and enable.idempotence=true are always set)
  [kafka.security]                   optional; TLS and SASL to the broker
  protocol = "sasl_ssl"              plaintext (default), ssl, sasl_plaintext, sasl_ssl
  ca_file = "ca.pem"                 the brokers' CA (default: the system's)
  ca_pem_env = "KAFKA_CA_PEM"        ...or that PEM in this variable
  cert_file = "client.pem"           mutual TLS: certificate chain and key (PEM);
  key_file = "client.key"            key_password_file / key_password_env if encrypted
  [kafka.security.sasl]
  mechanism = "scram-sha-512"        plain, scram-sha-256, scram-sha-512, oauthbearer
  username = "hookfold-gateway"
  password_file = "/run/secrets/kafka-password"   or password_env = "KAFKA_PASSWORD"
                                     oauthbearer (OIDC client credentials) instead:
                                     token_endpoint_url, client_id, client_secret_file
                                     or client_secret_env; optional scope, extensions

  [tls]                              optional; serve HTTPS (rustls)
  cert_path = "cert.pem"             PEM certificate chain
  key_path = "key.pem"               PEM private key

  [[sources]]                        one per webhook URL: POST /webhooks/<id>
  id = "acme-buildkite"              letters, digits, '-', '_', '.'
  kind = "buildkite"                 "buildkite", "buildkite_test_engine" or "bitbucket"
  secrets = ["<token>"]              token or signing secret (Test Engine: the URL's token,
                                     POST /webhooks/<id>/<token>); several during a rotation
  secrets_env = ["ACME_BK_SECRET"]   ...or names of environment variables holding them
  allowed_cidrs = ["203.0.113.0/24"] optional; other peer addresses get 403
  rate_limit = { per_second = 50.0, burst = 100 }   optional; over it: 429 + Retry-After
  redact = ["pipeline.env", "build.env"]   dotted JSON paths removed from the body before
                                     it is stored (header hookfold-redacted lists those
                                     removed); default for buildkite: pipeline.env,
                                     build.env, build.pipeline.env, job.env; for
                                     bitbucket: none. `redact = []` stores bodies as sent
"#;

/// What a Buildkite source removes when its `redact` is not set: the environment
/// variables of the pipeline (at the top level of job and some build payloads, under
/// `build` in others), of the build and of the job. They often hold tokens, and no rule
/// reads them.
pub const BUILDKITE_REDACT: &[&str] =
    &["pipeline.env", "build.env", "build.pipeline.env", "job.env"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub signature_window: Duration,
    pub kafka: KafkaConfig,
    pub tls: Option<TlsConfig>,
    pub sources: Vec<SourceConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: LogFormat::Text,
            max_body_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            signature_window: Duration::from_secs(300),
            kafka: KafkaConfig::default(),
            tls: None,
            sources: Vec::new(),
        }
    }
}

pub use hookfold_config::LogFormat;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topic: String,
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
            topic: "hookfold.webhooks".into(),
            ack_timeout: Duration::from_secs(5),
            properties: BTreeMap::new(),
            security: Security::default(),
            resolved_security: ResolvedSecurity::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub id: String,
    pub kind: Kind,
    #[serde(default, skip_serializing)]
    pub secrets: Vec<Secret>,
    #[serde(default)]
    pub secrets_env: Vec<String>,
    #[serde(default)]
    pub allowed_cidrs: Vec<IpNet>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Unset: the kind's default ([`BUILDKITE_REDACT`], nothing for Bitbucket).
    #[serde(default)]
    pub redact: Option<Vec<String>>,
}

impl SourceConfig {
    /// The paths this source's bodies lose before they are stored.
    pub fn redact_paths(&self) -> Result<Vec<JsonPath>, PathError> {
        match (&self.redact, self.kind) {
            (Some(paths), _) => paths.iter().map(|p| p.parse()).collect(),
            (None, Kind::Buildkite) => BUILDKITE_REDACT.iter().map(|p| p.parse()).collect(),
            (None, Kind::Bitbucket | Kind::BuildkiteTestEngine) => Ok(Vec::new()),
        }
    }
}

/// `kind` as written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Buildkite,
    /// Buildkite Test Engine: authenticated by a token in the URL.
    BuildkiteTestEngine,
    Bitbucket,
}

impl From<Kind> for SourceKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Buildkite => SourceKind::Buildkite,
            Kind::BuildkiteTestEngine => SourceKind::BuildkiteTestEngine,
            Kind::Bitbucket => SourceKind::Bitbucket,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("source `{id}`: {problem}")]
    Source { id: String, problem: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Security(#[from] SecurityError),
}

impl GatewayConfig {
    /// The ACLs the gateway's Kafka principal needs, and no more.
    pub fn acls(&self) -> Vec<Acl> {
        vec![
            Acl::new(
                AclResource::Topic(self.kafka.topic.clone()),
                &["Write", "Describe"],
                "append webhooks to the webhook topic (Describe: its metadata, for /readyz)",
            ),
            Acl::new(
                AclResource::Cluster,
                &["IdempotentWrite"],
                "the idempotent producer (acks=all, enable.idempotence=true)",
            ),
        ]
    }

    /// Everything, secrets included: what the gateway runs with
    /// ([`hookfold_config::load`] in [`Mode::WithSecrets`]).
    pub fn load(file: Option<&Path>) -> Result<Self, LoadError<ConfigError>> {
        hookfold_config::load(file, Mode::WithSecrets)
    }

    /// The sources' `secrets_env` read into their `secrets` (each set and not empty).
    fn resolve_secret_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for source in &mut self.sources {
            for name in &source.secrets_env {
                let value = lookup(name).ok_or_else(|| ConfigError::Source {
                    id: source.id.clone(),
                    problem: format!("secrets_env names `{name}`, which is not set"),
                })?;
                let secret = Secret::new(value);
                if let Some(problem) = secret_problem(source.kind, &secret) {
                    return Err(ConfigError::Source {
                        id: source.id.clone(),
                        problem: format!("{problem} (secrets_env `{name}`)"),
                    });
                }
                source.secrets.push(secret);
            }
        }
        Ok(())
    }

    /// Checks everything but the secrets `secrets_env` names (not read yet): a source
    /// needs `secrets` or `secrets_env`, and those in `secrets` must not be empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sources.is_empty() {
            return Err(ConfigError::Invalid(
                "no [[sources]] configured: every webhook would get 404".into(),
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_body_bytes must be above 0".into(),
            ));
        }
        let mut seen = HashSet::new();
        for source in &self.sources {
            let bad = |problem: &str| ConfigError::Source {
                id: source.id.clone(),
                problem: problem.into(),
            };
            let id_ok = !source.id.is_empty()
                && source
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !id_ok {
                return Err(bad("id must be non-empty letters, digits, '-', '_' or '.'"));
            }
            if !seen.insert(source.id.as_str()) {
                return Err(bad("id is configured twice"));
            }
            if source.secrets.is_empty() && source.secrets_env.is_empty() {
                return Err(bad("no secrets: set `secrets` or `secrets_env`"));
            }
            if let Some(problem) = source
                .secrets
                .iter()
                .find_map(|secret| secret_problem(source.kind, secret))
            {
                return Err(bad(&problem));
            }
            if let Some(limit) = source.rate_limit
                && (!(limit.per_second.is_finite() && limit.per_second > 0.0) || limit.burst == 0)
            {
                return Err(bad("rate_limit needs per_second > 0 and burst >= 1"));
            }
            if let Err(e) = source.redact_paths() {
                return Err(bad(&e.to_string()));
            }
        }
        Ok(())
    }
}

/// What is wrong with a source's secret, if anything (never its value).
fn secret_problem(kind: Kind, secret: &Secret) -> Option<String> {
    if secret.is_empty() {
        return Some("a secret is empty".into());
    }
    if kind == Kind::BuildkiteTestEngine && !secret.is_url_token() {
        return Some(format!(
            "a buildkite_test_engine secret is the token in the webhook's URL: at least {} \
             letters, digits, '-', '_', '.' or '~' (e.g. `openssl rand -hex 32`)",
            crate::auth::MIN_URL_TOKEN
        ));
    }
    None
}

impl LayeredConfig for GatewayConfig {
    type Error = ConfigError;

    fn validate(&self) -> Result<(), ConfigError> {
        GatewayConfig::validate(self)
    }

    /// The sources' `secrets_env`, then `[kafka.security]`.
    fn resolve_secrets(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        self.resolve_secret_env(env)?;
        self.kafka.resolved_security = self.kafka.security.resolve(&self.kafka.properties, env)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    const MINIMAL: &str = r#"
listen = "127.0.0.1:8080"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
topic = "hookfold.webhooks"
[[sources]]
id = "acme-buildkite"
kind = "buildkite"
secrets = ["t0ken"]
[[sources]]
id = "acme-bitbucket"
kind = "bitbucket"
secrets = ["s3cret"]
"#;

    #[test]
    fn the_designs_minimal_file_loads_with_defaults() {
        let file = write(MINIMAL);
        let config = GatewayConfig::load(Some(file.path())).unwrap();
        assert_eq!(config.sources.len(), 2);
        assert_eq!(config.sources[1].kind, Kind::Bitbucket);
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.signature_window, Duration::from_secs(300));
        assert_eq!(config.kafka.topic, "hookfold.webhooks");
        assert!(config.tls.is_none());
        // Buildkite bodies lose their environments unless told otherwise; Bitbucket's stay.
        let redact = |i: usize| -> Vec<String> {
            config.sources[i]
                .redact_paths()
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(redact(0), BUILDKITE_REDACT);
        assert!(redact(1).is_empty());
    }

    #[test]
    fn validation_names_the_problem() {
        for (text, needle) in [
            (
                "[[sources]]\nid = \"a b\"\nkind = \"buildkite\"\nsecrets = [\"x\"]",
                "id must be",
            ),
            (
                "[[sources]]\nid = \"a\"\nkind = \"buildkite\"",
                "no secrets",
            ),
            (
                "[[sources]]\nid = \"a\"\nkind = \"buildkite\"\nsecrets=[\"x\"]\n[[sources]]\nid = \"a\"\nkind = \"bitbucket\"\nsecrets=[\"y\"]",
                "configured twice",
            ),
            ("listen = \"127.0.0.1:1\"", "no [[sources]]"),
            (
                "[[sources]]\nid = \"a\"\nkind = \"gitlab\"\nsecrets=[\"x\"]",
                "gitlab",
            ),
            ("lisen = \"x\"", "lisen"),
            (
                "[[sources]]\nid = \"a\"\nkind = \"buildkite\"\nsecrets=[\"x\"]\nredact = [\"pipeline..env\"]",
                "source `a`: redact path `pipeline..env` has an empty segment",
            ),
            (
                "[[sources]]\nid = \"a\"\nkind = \"buildkite\"\nsecrets_env = [\"HOOKFOLD_TEST_SURELY_UNSET\"]",
                "HOOKFOLD_TEST_SURELY_UNSET",
            ),
            (
                "[[sources]]\nid = \"a\"\nkind = \"buildkite_test_engine\"\nsecrets = [\"short\"]",
                "at least 32 letters",
            ),
            (
                "[[sources]]\nid = \"a\"\nkind = \"buildkite_test_engine\"\nsecrets = [\"0123456789abcdef0123456789abcdef/x\"]",
                "the token in the webhook's URL",
            ),
        ] {
            let file = write(text);
            let err = GatewayConfig::load(Some(file.path()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    /// `--print-acls` loads without the secrets: the whole file is checked, but no variable
    /// that `secrets_env` or `[kafka.security]` names is read.
    #[test]
    fn without_secrets_the_config_is_validated_but_no_secret_is_read() {
        let unset = "[kafka.security]\nprotocol = \"sasl_ssl\"\n[kafka.security.sasl]\nmechanism = \"scram-sha-512\"\nusername = \"u\"\npassword_env = \"HOOKFOLD_TEST_SURELY_UNSET\"\n[[sources]]\nid = \"a\"\nkind = \"buildkite\"\nsecrets_env = [\"HOOKFOLD_TEST_SURELY_UNSET\"]\n";
        let file = write(unset);
        let config: GatewayConfig =
            hookfold_config::load(Some(file.path()), Mode::WithoutSecrets).unwrap();
        assert!(config.sources[0].secrets.is_empty());
        assert_eq!(config.kafka.resolved_security, ResolvedSecurity::default());
        let err = GatewayConfig::load(Some(file.path())).unwrap_err();
        assert!(
            err.to_string().contains("HOOKFOLD_TEST_SURELY_UNSET"),
            "{err}"
        );

        for (text, needle) in [
            ("listen = \"127.0.0.1:1\"", "no [[sources]]"),
            (
                "[[sources]]\nid = \"a\"\nkind = \"buildkite\"",
                "no secrets",
            ),
            (
                "[[sources]]\nid = \"a\"\nkind = \"buildkite\"\nsecrets = [\"\"]",
                "a secret is empty",
            ),
        ] {
            let file = write(text);
            let err =
                hookfold_config::load::<GatewayConfig>(Some(file.path()), Mode::WithoutSecrets)
                    .unwrap_err()
                    .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn secrets_env_are_resolved_and_secrets_are_not_printed() {
        let mut config: GatewayConfig = hookfold_config::parse_toml(
            "[[sources]]\nid = \"a\"\nkind = \"bitbucket\"\nsecrets = [\"inline\"]\nsecrets_env = [\"ROTATED\"]",
        )
        .unwrap();
        config
            .resolve_secret_env(|name| (name == "ROTATED").then(|| "from-env".to_string()))
            .unwrap();
        assert_eq!(config.sources[0].secrets.len(), 2);
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("inline") && !shown.contains("from-env"),
            "{shown}"
        );
    }
}
