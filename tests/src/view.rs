//! `hookfold-processor view` under test: started from a processor's configuration on a
//! port of its own, and asked over real HTTP.

use std::time::Duration;

use anyhow::Result;

use crate::processor::Processor;
use crate::wait::wait_until;
use crate::{Process, free_port};

pub struct View {
    pub url: String,
    pub process: Process,
}

impl View {
    /// Starts a view with `processor`'s configuration (same topics, same Kafka), without
    /// waiting for it to be ready.
    pub fn start(processor: &Processor, name: &str) -> Result<Self> {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let command = processor.subcommand(&["view", "--listen", &listen]);
        let process = Process::spawn(name, command, &processor.dir)?;
        Ok(Self {
            url: format!("http://{listen}"),
            process,
        })
    }

    /// `/readyz`'s status code (0 when the view does not answer).
    pub async fn readyz(&self) -> u16 {
        reqwest::get(format!("{}/readyz", self.url))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_readyz(&self, status: u16, timeout: Duration) -> Result<()> {
        let what = format!("the view's /readyz to answer {status}");
        wait_until(&what, timeout, async || {
            Ok((self.readyz().await == status).then_some(()))
        })
        .await
        .map_err(|e| self.process.explain(e))
    }

    pub async fn get_json(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        let response = reqwest::get(format!("{}{path}", self.url)).await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }
}
