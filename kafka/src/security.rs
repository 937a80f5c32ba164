//! `[kafka.security]`: how a client proves itself to the broker and checks the broker.
//!
//! ```toml
//! [kafka.security]
//! protocol = "sasl_ssl"              # plaintext (default), ssl, sasl_plaintext, sasl_ssl
//! ca_file = "/etc/kafka/ca.pem"      # the broker's CA (default: the system's)
//! cert_file = "/etc/kafka/client.pem"  # mTLS: the client's certificate chain...
//! key_file = "/etc/kafka/client.key"   # ...and key (key_password_file/_env if encrypted)
//! [kafka.security.sasl]
//! mechanism = "scram-sha-512"        # plain, scram-sha-256, scram-sha-512
//! username = "hookfold-processor"
//! password_file = "/run/secrets/kafka-password"   # or password_env = "KAFKA_PASSWORD"
//! ```

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
    pub username: String,
    /// A file holding the password (a trailing newline is not part of it)...
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// ...or the name of an environment variable holding it.
    #[serde(default)]
    pub password_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

impl Mechanism {
    /// librdkafka's `sasl.mechanism` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
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
const SECRET_PROPERTIES: [&str; 2] = ["sasl.password", "ssl.key.password"];

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
            if sasl.username.trim().is_empty() {
                return Err(SecurityError::NoUsername);
            }
            let password = secret(
                "sasl.password",
                sasl.password_file.as_deref(),
                sasl.password_env.as_deref(),
                &env,
            )?;
            out.push(("sasl.mechanism", sasl.mechanism.as_str().to_owned()));
            out.push(("sasl.username", sasl.username.clone()));
            out.push(("sasl.password", password));
        }
        Ok(ResolvedSecurity { properties: out })
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
    fn a_password_from_the_environment_loses_its_newline() {
        let resolved = resolve(
            "protocol = \"sasl_plaintext\"\n[sasl]\nmechanism = \"plain\"\nusername = \"u\"\npassword_env = \"KAFKA_PASSWORD\"",
        )
        .unwrap();
        assert_eq!(resolved.secrets().collect::<Vec<_>>(), ["from-env-pw"]);
    }
}
