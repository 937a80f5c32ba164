//! A running `hookfold-gateway` under test, always on a free port of its own (never the
//! default 127.0.0.1:8080, which a running demo stack holds).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::free_port;
use crate::process::{Process, workspace_binary};
use crate::wait::wait_until;

/// A running `hookfold-gateway`.
pub struct Gateway {
    pub process: Process,
    pub addr: SocketAddr,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway with `config` (TOML; `listen`, a free port, and the Kafka servers,
    /// `bootstrap`, come from the environment, over the file) and waits until `/healthz`
    /// answers.
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
        let mut process = Process::spawn("hookfold-gateway", command, dir.path())?;
        let scheme = if config.contains("[tls]") {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{addr}");
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()?;
        let healthz = format!("{url}/healthz");
        let healthy = wait_until(
            "the gateway to answer /healthz",
            Duration::from_secs(30),
            async || {
                process.fail_if_exited()?;
                Ok(client
                    .get(&healthz)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                    .then_some(()))
            },
        )
        .await;
        healthy.map_err(|e| process.explain(e))?;
        Ok(Self {
            process,
            addr,
            url,
            _dir: dir,
        })
    }

    /// A gateway with one Buildkite source, `source_id` signed with `secret`, writing to
    /// `topic`.
    pub async fn buildkite(
        bootstrap: &str,
        topic: &str,
        source_id: &str,
        secret: &str,
    ) -> Result<Self> {
        let config = format!(
            "[kafka]\ntopic = \"{topic}\"\n[[sources]]\nid = \"{source_id}\"\nkind = \"buildkite\"\nsecrets = [\"{secret}\"]\n"
        );
        Self::start(&config, bootstrap, &[]).await
    }

    /// `/readyz`'s status code (0 when the gateway does not answer).
    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("{}/readyz", self.url))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// `/metrics`' text; panics when the gateway does not answer (a test's failure).
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("the gateway answers /metrics")
            .text()
            .await
            .expect("a /metrics body")
    }

    pub fn webhook_url(&self, source_id: &str) -> String {
        format!("{}/webhooks/{source_id}", self.url)
    }

    /// Posts a Buildkite `event` signed with `secret` to `source_id`; fails unless it is
    /// accepted (202).
    pub async fn post_buildkite(
        &self,
        source_id: &str,
        secret: &str,
        event: &str,
        body: &[u8],
    ) -> Result<()> {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()?;
        let request = client.post(self.webhook_url(source_id));
        let response = crate::webhooks::buildkite_signed(request, secret, event, body)
            .send()
            .await?;
        let status = response.status();
        if status != 202 {
            bail!(
                "{event}: {status} {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}
