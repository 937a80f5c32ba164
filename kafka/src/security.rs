//! `[kafka.security]`: how a client proves itself to the broker and checks the broker.
//!
//! ```toml
//! [kafka.security]
//! protocol = "sasl_ssl"              # plaintext (default), ssl, sasl_plaintext, sasl_ssl
//! ca_file = "/etc/kafka/ca.pem"      # the broker's CA (default: the system's)
//! cert_file = "/etc/kafka/client.pem"  # mTLS: the client's certificate chain...
//! key_file = "/etc/kafka/client.key"   # ...and key (key_password_file/_env if encrypted)
//! [kafka.security.sasl]
//! mechanism = "scram-sha-512"        # plain, scram-sha-256, scram-sha-512, oauthbearer
//! username = "hookfold-processor"
//! password_file = "/run/secrets/kafka-password"   # or password_env = "KAFKA_PASSWORD"
//! ```
//!
//! `oauthbearer` is OIDC client credentials, fetched and refreshed by librdkafka itself
//! (`sasl.oauthbearer.method=oidc`): `token_endpoint_url`, `client_id`,
//! `client_secret_file` or `client_secret_env`, and optionally `scope` and `extensions`
//! (Confluent Cloud's `logicalCluster` and `identityPoolId`) instead of a username and
//! password.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    pub protocol: Protocol,
    /// PEM file of the CA(s) that signed the brokers' certificates...
    pub ca_file: Option<PathBuf>,
    /// ...or the name of an environment variable holding that PEM (a Kubernetes Secret's
    /// `ca.crt` as `secretKeyRef`, e.g. Strimzi's `<cluster>-cluster-ca-cert`).
    pub ca_pem_env: Option<String>,
    /// PEM certificate chain for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The key's password, if the key is encrypted: a file holding it...
    pub key_password_file: Option<PathBuf>,
    /// ...or the name of an environment variable holding it.
    pub key_password_env: Option<String>,
    pub sasl: Option<Sasl>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    /// librdkafka's `security.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    pub mechanism: Mechanism,
    /// plain, scram-*: the user...
    #[serde(default)]
    pub username: Option<String>,
    /// ...a file holding the password (a trailing newline is not part of it)...
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// ...or the name of an environment variable holding it.
    #[serde(default)]
    pub password_env: Option<String>,
    /// oauthbearer: the identity provider's token endpoint (OIDC client credentials)...
    #[serde(default)]
    pub token_endpoint_url: Option<String>,
    /// ...the client registered there...
    #[serde(default)]
    pub client_id: Option<String>,
    /// ...its secret, from a file...
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// ...or an environment variable...
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// ...the scope to ask for, if the provider wants one...
    #[serde(default)]
    pub scope: Option<String>,
    /// ...and SASL extensions sent with the token (Confluent Cloud: `logicalCluster`,
    /// `identityPoolId`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
}

impl Sasl {
    /// The fields set that `mechanism` does not take.
    fn foreign_fields(&self) -> Vec<&'static str> {
        let password = [
            ("username", self.username.is_some()),
            ("password_file", self.password_file.is_some()),
            ("password_env", self.password_env.is_some()),
        ];
        let oidc = [
            ("token_endpoint_url", self.token_endpoint_url.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("client_secret_env", self.client_secret_env.is_some()),
            ("scope", self.scope.is_some()),
            ("extensions", !self.extensions.is_empty()),
        ];
        let foreign = match self.mechanism {
            Mechanism::OauthBearer => &password[..],
            _ => &oidc[..],
        };
        foreign
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
    /// OIDC client credentials (KIP-768), the token fetched and refreshed by librdkafka.
    #[serde(rename = "oauthbearer")]
    OauthBearer,
}

impl Mechanism {
    /// librdkafka's `sasl.mechanism` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OauthBearer => "OAUTHBEARER",
        }
    }

    /// Its name in `[kafka.security.sasl]`.
    pub fn config_name(self) -> &'static str {
        match self {
            Mechanism::Plain => "plain",
            Mechanism::ScramSha256 => "scram-sha-256",
            Mechanism::ScramSha512 => "scram-sha-512",
            Mechanism::OauthBearer => "oauthbearer",
        }
    }
}

/// A mistake in `[kafka.security]`, named so that the operator knows what to change. No
/// variant carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    #[error(
        "kafka.security.protocol = \"{0}\" authenticates with SASL: add a [kafka.security.sasl] section"
    )]
    SaslMissing(&'static str),
    #[error(
        "[kafka.security.sasl] is set but kafka.security.protocol = \"{0}\" does not use SASL: use sasl_ssl (or sasl_plaintext)"
    )]
    SaslUnused(&'static str),
    #[error(
        "kafka.security.{0} is set but kafka.security.protocol = \"{1}\" does not use TLS: use ssl or sasl_ssl"
    )]
    TlsUnused(&'static str, &'static str),
    #[error("kafka.security.{0} is set without kafka.security.{1}: mutual TLS needs both")]
    HalfPair(&'static str, &'static str),
    #[error("kafka.security.{0} = {1}: {2}")]
    Unreadable(&'static str, PathBuf, String),
    #[error("kafka.security.sasl.username is empty")]
    NoUsername,
    #[error("kafka.security.sasl.{0} does not apply to mechanism = \"{1}\" ({2})")]
    ForeignField(&'static str, &'static str, &'static str),
    #[error(
        "kafka.security.sasl.{0} is not set: mechanism = \"oauthbearer\" gets a token from the identity provider with client credentials (token_endpoint_url, client_id, client_secret_file or client_secret_env)"
    )]
    OidcMissing(&'static str),
    #[error("kafka.security.sasl.token_endpoint_url = {0:?} is not an http:// or https:// URL")]
    NotAnEndpoint(String),
    #[error(
        "kafka.security.sasl.extensions.{0}: a key is letters only and a value has no comma or control character (RFC 7628)"
    )]
    BadExtension(String),
    #[error("kafka.security.{0}: set {0}_file or {0}_env (a secret is never written inline)")]
    NoSecret(&'static str),
    #[error("kafka.security.{0}: set {0}_file or {0}_env, not both")]
    TwoSecrets(&'static str),
    #[error("kafka.security.{0}_env names `{1}`, which is not set")]
    EnvUnset(&'static str, String),
    #[error("kafka.security.{0} is empty")]
    EmptySecret(&'static str),
    #[error("kafka.security: set ca_file or ca_pem_env, not both")]
    TwoCas,
    #[error(
        "kafka.security.ca_pem_env: `{0}` does not hold a PEM certificate (-----BEGIN CERTIFICATE-----)"
    )]
    NotPem(String),
    #[error(
        "kafka.properties sets `{0}`, which [kafka.security] owns: configure it there (secrets from a file or the environment)"
    )]
    Owned(String),
}

/// The librdkafka properties `[kafka.security]` resolves to, secrets read. `Debug` shows
/// the keys and hides every secret's value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ResolvedSecurity {
    properties: Vec<(&'static str, String)>,
}

/// Properties that hold secrets: never shown.
const SECRET_PROPERTIES: [&str; 3] = [
    "sasl.password",
    "ssl.key.password",
    "sasl.oauthbearer.client.secret",
];

impl fmt::Debug for ResolvedSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.properties {
            if SECRET_PROPERTIES.contains(key) {
                map.entry(key, &"<redacted>");
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

impl ResolvedSecurity {
    pub fn apply(&self, client: &mut ClientConfig) {
        for (key, value) in &self.properties {
            client.set(*key, value);
        }
    }

    /// The secret values, for tests that check no log line holds one.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.properties
            .iter()
            .filter(|(key, _)| SECRET_PROPERTIES.contains(key))
            .map(|(_, value)| value.as_str())
    }

    /// The librdkafka properties, secrets included (for building other clients' settings,
    /// never for printing).
    pub fn properties(&self) -> &[(&'static str, String)] {
        &self.properties
    }
}

/// Whether `[kafka.properties]` may set `key` beside a typed `[kafka.security]`.
fn owned_by_security(key: &str) -> bool {
    key == "security.protocol" || key.starts_with("sasl.") || key.starts_with("ssl.")
}

impl Security {
    /// How a client connects, in a few words and without a secret, for `--check`:
    /// `plaintext`, `ssl (client certificate)`, `sasl_ssl (scram-sha-512 as gw)`, ...
    pub fn describe(&self) -> String {
        let mut out = self.protocol.as_str().to_owned();
        let mut parts = Vec::new();
        if let Some(sasl) = &self.sasl {
            parts.push(match sasl.mechanism {
                Mechanism::OauthBearer => format!(
                    "oauthbearer as client {} from {}",
                    sasl.client_id.as_deref().unwrap_or("?"),
                    sasl.token_endpoint_url.as_deref().unwrap_or("?")
                ),
                mechanism => format!(
                    "{} as {}",
                    mechanism.config_name(),
                    sasl.username.as_deref().unwrap_or("?")
                ),
            });
        }
        if self.cert_file.is_some() {
            parts.push("client certificate".to_owned());
        }
        if !parts.is_empty() {
            out.push_str(&format!(" ({})", parts.join(", ")));
        }
        out
    }

    /// Checks the section and reads its secrets. `properties` is `[kafka.properties]`:
    /// it may not hold a secret inline, nor, once `[kafka.security]` is used, anything the
    /// section owns.
    pub fn resolve(
        &self,
        properties: &BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ResolvedSecurity, SecurityError> {
        for key in properties.keys() {
            let secret = SECRET_PROPERTIES.contains(&key.as_str());
            if secret || (*self != Security::default() && owned_by_security(key)) {
                return Err(SecurityError::Owned(key.clone()));
            }
        }
        if *self == Security::default() {
            return Ok(ResolvedSecurity::default());
        }
        let protocol = self.protocol;
        let mut out = vec![("security.protocol", protocol.as_str().to_owned())];
        match (&self.sasl, protocol.sasl()) {
            (None, true) => return Err(SecurityError::SaslMissing(protocol.as_str())),
            (Some(_), false) => return Err(SecurityError::SaslUnused(protocol.as_str())),
            _ => {}
        }
        for (name, file) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("key_password_file", &self.key_password_file),
        ] {
            if file.is_some() && !protocol.tls() {
                return Err(SecurityError::TlsUnused(name, protocol.as_str()));
            }
        }
        for (name, set) in [
            ("key_password_env", self.key_password_env.is_some()),
            ("ca_pem_env", self.ca_pem_env.is_some()),
        ] {
            if set && !protocol.tls() {
                return Err(SecurityError::TlsUnused(name, protocol.as_str()));
            }
        }
        if let Some(var) = &self.ca_pem_env {
            if self.ca_file.is_some() {
                return Err(SecurityError::TwoCas);
            }
            let pem = env(var).ok_or_else(|| SecurityError::EnvUnset("ca_pem", var.clone()))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(SecurityError::NotPem(var.clone()));
            }
            out.push(("ssl.ca.pem", pem));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err(SecurityError::HalfPair("cert_file", "key_file")),
            (None, Some(_)) => return Err(SecurityError::HalfPair("key_file", "cert_file")),
            _ => {}
        }
        for (name, file, property) in [
            ("ca_file", &self.ca_file, "ssl.ca.location"),
            ("cert_file", &self.cert_file, "ssl.certificate.location"),
            ("key_file", &self.key_file, "ssl.key.location"),
        ] {
            if let Some(path) = file {
                readable(name, path)?;
                out.push((property, path.display().to_string()));
            }
        }
        let key_password = secret(
            "key_password",
            self.key_password_file.as_deref(),
            self.key_password_env.as_deref(),
            &env,
        );
        match key_password {
            Err(SecurityError::NoSecret(_)) => {}
            Err(e) => return Err(e),
            Ok(_) if self.key_file.is_none() => {
                return Err(SecurityError::HalfPair("key_password", "key_file"));
            }
            Ok(password) => out.push(("ssl.key.password", password)),
        }
        if let Some(sasl) = &self.sasl {
            out.extend(sasl.resolve(&env)?);
        }
        Ok(ResolvedSecurity { properties: out })
    }
}

impl Sasl {
    fn resolve(
        &self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(&'static str, String)>, SecurityError> {
        let mechanism = self.mechanism;
        if let Some(field) = self.foreign_fields().first() {
            let takes = match mechanism {
                Mechanism::OauthBearer => {
                    "it takes token_endpoint_url, client_id and client_secret_file or client_secret_env"
                }
                _ => "it takes username and password_file or password_env",
            };
            return Err(SecurityError::ForeignField(
                field,
                mechanism.config_name(),
                takes,
            ));
        }
        let mut out = vec![("sasl.mechanism", mechanism.as_str().to_owned())];
        if mechanism != Mechanism::OauthBearer {
            let username = self.username.as_deref().unwrap_or_default();
            if username.trim().is_empty() {
                return Err(SecurityError::NoUsername);
            }
            let password = secret(
                "sasl.password",
                self.password_file.as_deref(),
                self.password_env.as_deref(),
                env,
            )?;
            out.push(("sasl.username", username.to_owned()));
            out.push(("sasl.password", password));
            return Ok(out);
        }
        let endpoint = self
            .token_endpoint_url
            .as_deref()
            .ok_or(SecurityError::OidcMissing("token_endpoint_url"))?;
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(SecurityError::NotAnEndpoint(endpoint.to_owned()));
        }
        let client_id = self
            .client_id
            .as_deref()
            .filter(|id| !id.trim().is_empty())
            .ok_or(SecurityError::OidcMissing("client_id"))?;
        let client_secret = secret(
            "sasl.client_secret",
            self.client_secret_file.as_deref(),
            self.client_secret_env.as_deref(),
            env,
        )?;
        out.push(("sasl.oauthbearer.method", "oidc".to_owned()));
        out.push(("sasl.oauthbearer.token.endpoint.url", endpoint.to_owned()));
        out.push(("sasl.oauthbearer.client.id", client_id.to_owned()));
        out.push(("sasl.oauthbearer.client.secret", client_secret));
        if let Some(scope) = &self.scope {
            out.push(("sasl.oauthbearer.scope", scope.clone()));
        }
        if !self.extensions.is_empty() {
            for (key, value) in &self.extensions {
                let key_ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphabetic());
                let value_ok = !value.contains(',') && !value.chars().any(char::is_control);
                if !key_ok || !value_ok {
                    return Err(SecurityError::BadExtension(key.clone()));
                }
            }
            let extensions = self
                .extensions
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(",");
            out.push(("sasl.oauthbearer.extensions", extensions));
        }
        Ok(out)
    }
}

fn readable(name: &'static str, path: &Path) -> Result<(), SecurityError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| SecurityError::Unreadable(name, path.to_path_buf(), e.to_string()))
}

/// A secret from exactly one of a file and an environment variable.
fn secret(
    name: &'static str,
    file: Option<&Path>,
    env_name: Option<&str>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, SecurityError> {
    let value = match (file, env_name) {
        (None, None) => return Err(SecurityError::NoSecret(name)),
        (Some(_), Some(_)) => return Err(SecurityError::TwoSecrets(name)),
        (Some(path), None) => {
            let field: &'static str = match name {
                "key_password" => "key_password_file",
                "sasl.client_secret" => "sasl.client_secret_file",
                _ => "sasl.password_file",
            };
            std::fs::read_to_string(path)
                .map_err(|e| SecurityError::Unreadable(field, path.to_path_buf(), e.to_string()))?
        }
        (None, Some(var)) => env(var).ok_or_else(|| SecurityError::EnvUnset(name, var.into()))?,
    };
    // `echo secret > file` and most secret stores end the value with a newline.
    let value = value.trim_end_matches(['\r', '\n']).to_owned();
    if value.is_empty() {
        return Err(SecurityError::EmptySecret(name));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn parse(text: &str) -> Security {
        toml::from_str(text).unwrap()
    }

    fn resolve(text: &str) -> Result<ResolvedSecurity, SecurityError> {
        parse(text).resolve(&BTreeMap::new(), |name| {
            (name == "KAFKA_PASSWORD").then(|| "from-env-pw\n".to_string())
        })
    }

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn sasl_ssl_with_scram_from_a_file() {
        let ca = file("ca");
        let password = file("p4ss-from-file\n");
        let resolved = resolve(&format!(
            "protocol = \"sasl_ssl\"\nca_file = {:?}\n[sasl]\nmechanism = \"scram-sha-512\"\nusername = \"gw\"\npassword_file = {:?}",
            ca.path(),
            password.path()
        ))
        .unwrap();
        let props: BTreeMap<_, _> = resolved.properties().iter().cloned().collect();
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(props["sasl.username"], "gw");
        assert_eq!(props["sasl.password"], "p4ss-from-file");
        assert_eq!(props["ssl.ca.location"], ca.path().display().to_string());
        let shown = format!("{resolved:?}");
        assert!(!shown.contains("p4ss"), "{shown}");
        assert_eq!(resolved.secrets().collect::<Vec<_>>(), ["p4ss-from-file"]);
    }

    #[test]
    fn describe_names_the_protocol_and_who_without_secrets() {
        assert_eq!(parse("").describe(), "plaintext");
        assert_eq!(
            parse("protocol = \"ssl\"\ncert_file = \"c\"\nkey_file = \"k\"").describe(),
            "ssl (client certificate)"
        );
        assert_eq!(
            parse("protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"scram-sha-512\"\nusername = \"gw\"\npassword_env = \"P\"").describe(),
            "sasl_ssl (scram-sha-512 as gw)"
        );
        assert_eq!(
            parse("protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"oauthbearer\"\nclient_id = \"c\"\ntoken_endpoint_url = \"https://idp/t\"\nclient_secret_env = \"S\"").describe(),
            "sasl_ssl (oauthbearer as client c from https://idp/t)"
        );
    }

    #[test]
    fn the_default_is_plaintext_and_sets_nothing() {
        assert_eq!(resolve("").unwrap(), ResolvedSecurity::default());
        // Without a typed section, properties may still carry non-secret TLS settings.
        let props = BTreeMap::from([("security.protocol".to_string(), "ssl".to_string())]);
        assert!(Security::default().resolve(&props, |_| None).is_ok());
    }

    #[test]
    fn every_mistake_has_its_message() {
        let ca = file("ca");
        let ca = ca.path().display();
        for (text, needle) in [
            (
                "protocol = \"sasl_ssl\"",
                "add a [kafka.security.sasl] section",
            ),
            (
                "protocol = \"ssl\"\n[sasl]\nmechanism = \"plain\"\nusername = \"u\"\npassword_env = \"KAFKA_PASSWORD\"",
                "does not use SASL",
            ),
            (
                &format!(
                    "protocol = \"sasl_plaintext\"\nca_file = \"{ca}\"\n[sasl]\nmechanism = \"plain\"\nusername = \"u\"\npassword_env = \"KAFKA_PASSWORD\""
                ),
                "ca_file is set but",
            ),
            (
                &format!("protocol = \"ssl\"\ncert_file = \"{ca}\""),
                "cert_file is set without kafka.security.key_file",
            ),
            (
                "protocol = \"ssl\"\nca_file = \"/nonexistent/ca.pem\"",
                "kafka.security.ca_file = /nonexistent/ca.pem: No such file",
            ),
            (
                "protocol = \"ssl\"\nca_pem_env = \"KAFKA_PASSWORD\"",
                "`KAFKA_PASSWORD` does not hold a PEM certificate",
            ),
            (
                "protocol = \"ssl\"\nca_pem_env = \"UNSET_CA\"",
                "ca_pem_env names `UNSET_CA`, which is not set",
            ),
            (
                "protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"scram-sha-256\"\nusername = \"u\"",
                "set sasl.password_file or sasl.password_env",
            ),
            (
                "protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"scram-sha-256\"\nusername = \"u\"\npassword_env = \"UNSET_FOR_SURE\"",
                "names `UNSET_FOR_SURE`, which is not set",
            ),
            (
                "protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"scram-sha-256\"\nusername = \" \"\npassword_env = \"KAFKA_PASSWORD\"",
                "username is empty",
            ),
        ] {
            let err = resolve(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        assert!(
            toml::from_str::<Security>("[sasl]\nmechanism = \"gssapi\"\nusername = \"u\"").is_err()
        );
    }

    #[test]
    fn properties_cannot_hold_secrets_or_what_the_section_owns() {
        let secret = BTreeMap::from([("sasl.password".to_string(), "inline".to_string())]);
        let err = Security::default().resolve(&secret, |_| None).unwrap_err();
        assert_eq!(err, SecurityError::Owned("sasl.password".into()));
        assert!(!err.to_string().contains("inline"));
        let overlap = BTreeMap::from([("sasl.mechanism".to_string(), "PLAIN".to_string())]);
        let section = parse(
            "protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"plain\"\nusername = \"u\"\npassword_env = \"KAFKA_PASSWORD\"",
        );
        assert!(matches!(
            section.resolve(&overlap, |_| Some("x".into())),
            Err(SecurityError::Owned(_))
        ));
    }

    #[test]
    fn a_ca_from_the_environment() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let resolved = parse("protocol = \"ssl\"\nca_pem_env = \"CA\"")
            .resolve(&BTreeMap::new(), |name| {
                (name == "CA").then(|| pem.to_string())
            })
            .unwrap();
        assert!(
            resolved
                .properties()
                .contains(&("ssl.ca.pem", pem.to_string()))
        );
    }

    #[test]
    fn oauthbearer_is_oidc_client_credentials() {
        let resolved = resolve(
            "protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"oauthbearer\"\ntoken_endpoint_url = \"https://idp.example/oauth2/token\"\nclient_id = \"hookfold\"\nclient_secret_env = \"KAFKA_PASSWORD\"\nscope = \"kafka\"\n[sasl.extensions]\nlogicalCluster = \"lkc-1\"\nidentityPoolId = \"pool-2\"",
        )
        .unwrap();
        let props: BTreeMap<_, _> = resolved.properties().iter().cloned().collect();
        assert_eq!(props["sasl.mechanism"], "OAUTHBEARER");
        assert_eq!(props["sasl.oauthbearer.method"], "oidc");
        assert_eq!(
            props["sasl.oauthbearer.token.endpoint.url"],
            "https://idp.example/oauth2/token"
        );
        assert_eq!(props["sasl.oauthbearer.client.id"], "hookfold");
        assert_eq!(props["sasl.oauthbearer.scope"], "kafka");
        assert_eq!(
            props["sasl.oauthbearer.extensions"],
            "identityPoolId=pool-2,logicalCluster=lkc-1"
        );
        assert!(!props.contains_key("sasl.username"));
        assert_eq!(resolved.secrets().collect::<Vec<_>>(), ["from-env-pw"]);
        assert!(!format!("{resolved:?}").contains("from-env-pw"));
    }

    #[test]
    fn oauthbearer_mistakes_have_their_messages() {
        let head = "protocol = \"sasl_ssl\"\n[sasl]\n";
        for (body, needle) in [
            (
                "mechanism = \"oauthbearer\"\nusername = \"u\"",
                "sasl.username does not apply to mechanism = \"oauthbearer\"",
            ),
            (
                "mechanism = \"scram-sha-512\"\nusername = \"u\"\npassword_env = \"KAFKA_PASSWORD\"\nclient_id = \"c\"",
                "sasl.client_id does not apply to mechanism = \"scram-sha-512\"",
            ),
            (
                "mechanism = \"oauthbearer\"\nclient_id = \"c\"\nclient_secret_env = \"KAFKA_PASSWORD\"",
                "sasl.token_endpoint_url is not set",
            ),
            (
                "mechanism = \"oauthbearer\"\ntoken_endpoint_url = \"idp.example/token\"\nclient_id = \"c\"\nclient_secret_env = \"KAFKA_PASSWORD\"",
                "is not an http:// or https:// URL",
            ),
            (
                "mechanism = \"oauthbearer\"\ntoken_endpoint_url = \"https://idp/t\"\nclient_secret_env = \"KAFKA_PASSWORD\"",
                "sasl.client_id is not set",
            ),
            (
                "mechanism = \"oauthbearer\"\ntoken_endpoint_url = \"https://idp/t\"\nclient_id = \"c\"",
                "set sasl.client_secret_file or sasl.client_secret_env",
            ),
            (
                "mechanism = \"oauthbearer\"\ntoken_endpoint_url = \"https://idp/t\"\nclient_id = \"c\"\nclient_secret_env = \"KAFKA_PASSWORD\"\n[sasl.extensions]\npool = \"a,b\"",
                "extensions.pool: a key is letters only",
            ),
        ] {
            let err = resolve(&format!("{head}{body}")).unwrap_err().to_string();
            assert!(err.contains(needle), "{body:?}: {err}");
        }
        let inline = BTreeMap::from([(
            "sasl.oauthbearer.client.secret".to_string(),
            "inline".to_string(),
        )]);
        assert!(matches!(
            Security::default().resolve(&inline, |_| None),
            Err(SecurityError::Owned(_))
        ));
    }

    #[test]
    fn a_password_from_the_environment_loses_its_newline() {
        let resolved = resolve(
            "protocol = \"sasl_plaintext\"\n[sasl]\nmechanism = \"plain\"\nusername = \"u\"\npassword_env = \"KAFKA_PASSWORD\"",
        )
        .unwrap();
        assert_eq!(resolved.secrets().collect::<Vec<_>>(), ["from-env-pw"]);
    }
}
