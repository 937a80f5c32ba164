//! A test certificate authority, made fresh by each test that needs TLS: the CA, a broker
//! certificate for 127.0.0.1 and localhost, and client certificates by common name (for
//! mutual TLS; the broker maps `CN=<name>` to the principal `User:<name>`). All PEM, as
//! both librdkafka and Kafka's PEM key stores read them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// The key and then the certificate in one file: Kafka's PEM key store format.
    pub fn key_store(&self) -> Result<String> {
        Ok(format!(
            "{}{}",
            std::fs::read_to_string(&self.key)?,
            std::fs::read_to_string(&self.cert)?
        ))
    }
}

pub struct TestCa {
    pub ca_file: PathBuf,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA, its certificate written to `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("hookfold test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem())
            .with_context(|| format!("writing {}", ca_file.display()))?;
        Ok(Self {
            ca_file,
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for the loopback broker.
    pub fn broker(&self, name: &str) -> Result<CertFiles> {
        self.issue(
            name,
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with `CN=<common_name>`.
    pub fn client(&self, common_name: &str) -> Result<CertFiles> {
        self.issue(common_name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        common_name: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertFiles> {
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{common_name}.pem")),
            key: self.dir.join(format!("{common_name}.key")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}
