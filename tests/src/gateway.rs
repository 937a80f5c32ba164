//! A running `hookfold-gateway` under test.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::free_port;
use crate::process::{Process, workspace_binary};

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
