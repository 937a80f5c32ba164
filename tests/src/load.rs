//! A load on a gateway: signed Buildkite requests over many keep-alive connections, as
//! fast as it answers, and every answer kept with its timing, for a test that injects a
//! failure while the load runs and then checks what each sender was told.
//!
//! Every body is distinct, so every request has an event id of its own, which the load
//! knows beforehand (the gateway's id is a digest of source, event name and body): a test
//! finds each accepted request on the topic by it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::wait::wait_until;
use crate::webhooks::{agent_event, build_finished, buildkite_signed};

/// Request `n` of a load: mostly builds of 40 pipelines on two branches (failing, passing,
/// canceled; out of order under concurrency, so some are stale), and agents lost and back.
pub fn request(n: usize) -> (&'static str, Vec<u8>) {
    if n % 10 < 7 {
        let pipeline = format!("pipeline-{}", n % 40);
        let branch = if (n / 40).is_multiple_of(3) {
            "feature/x"
        } else {
            "main"
        };
        let state = ["failed", "passed", "failed", "canceled", "passed"][(n / 7) % 5];
        (
            "build.finished",
            build_finished(&pipeline, branch, n as u64, state),
        )
    } else {
        let event = ["agent.lost", "agent.connected", "agent.disconnected"][(n / 10) % 3];
        let name = format!("agent-{}", n % 30);
        (event, agent_event(event, &name, &format!("id-{n}")))
    }
}

/// One answer of the gateway to one request of a load.
#[derive(Clone, Debug)]
pub struct Answer {
    pub sent: Instant,
    pub received: Instant,
    /// 0 when the request got no HTTP answer at all.
    pub status: u16,
    pub retry_after: bool,
    /// The `error` code of a refusal, or the transport error.
    pub error: String,
    /// The event id of a 202.
    pub id: String,
    /// The event id the request's record has, if it is on the topic.
    pub expected: String,
}

/// Where a load goes: a gateway's webhook URL for a Buildkite source and its secret.
pub struct Target<'a> {
    pub url: &'a str,
    pub source: &'a str,
    pub secret: &'a str,
}

/// Requests sent over `connections` keep-alive connections, as fast as the gateway
/// answers, up to a limit the test can raise (so that a failure is injected while requests
/// are still to come, whatever the machine's speed).
pub struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    limit: watch::Sender<usize>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    total: usize,
}

impl Load {
    /// Starts `total` requests to `target`, the first `limit` of them released now.
    pub fn start(target: &Target, total: usize, connections: usize, limit: usize) -> Self {
        let answers = Arc::new(Mutex::new(Vec::with_capacity(total)));
        let next = Arc::new(AtomicUsize::new(0));
        let (limit_sender, limit_receiver) = watch::channel(limit);
        let workers = (0..connections)
            .map(|_| {
                let url = target.url.to_owned();
                let source = target.source.to_owned();
                let secret = target.secret.to_owned();
                let answers = answers.clone();
                let next = next.clone();
                let mut limit = limit_receiver.clone();
                // One client with one pooled connection per worker. A request that hangs
                // fails the test instead of hanging it.
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .http1_only()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("HTTP client");
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= total || limit.wait_for(|limit| n < *limit).await.is_err() {
                            return;
                        }
                        let (event, body) = request(n);
                        let expected =
                            hookfold_gateway::routing::event_id(&source, event, &body, None);
                        let sent = Instant::now();
                        let request = buildkite_signed(client.post(&url), &secret, event, &body);
                        let answer = match request.send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let retry_after = response.headers().contains_key("retry-after");
                                let json: serde_json::Value =
                                    response.json().await.unwrap_or_default();
                                Answer {
                                    sent,
                                    received: Instant::now(),
                                    status,
                                    retry_after,
                                    error: json["error"].as_str().unwrap_or_default().into(),
                                    id: json["id"].as_str().unwrap_or_default().into(),
                                    expected,
                                }
                            }
                            Err(e) => Answer {
                                sent,
                                received: Instant::now(),
                                status: 0,
                                retry_after: false,
                                error: e.to_string(),
                                id: String::new(),
                                expected,
                            },
                        };
                        answers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(answer);
                    }
                })
            })
            .collect();
        Self {
            answers,
            limit: limit_sender,
            workers,
            total,
        }
    }

    /// Lets the load go on up to request `limit`.
    pub fn release(&self, limit: usize) {
        self.limit.send_replace(limit.min(self.total));
    }

    /// How many answers so far are `matching`.
    pub fn count(&self, matching: impl Fn(&Answer) -> bool) -> usize {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.iter().filter(|a| matching(a)).count()
    }

    pub fn answered(&self) -> usize {
        self.count(|_| true)
    }

    /// Waits until `done` holds for the answers so far.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Self) -> bool,
    ) -> Result<()> {
        wait_until(what, timeout, async || Ok(done(self).then_some(())))
            .await
            .with_context(|| format!("{} answers so far", self.answered()))
    }

    /// Sends the rest and returns every answer, in the order they were received.
    pub async fn finish(self) -> Vec<Answer> {
        self.release(self.total);
        for worker in self.workers {
            worker.await.expect("load worker");
        }
        let mut answers =
            std::mem::take(&mut *self.answers.lock().unwrap_or_else(|e| e.into_inner()));
        answers.sort_by_key(|a| a.received);
        answers
    }
}

/// Counts of an answer list by status.
pub fn statuses(answers: &[Answer]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.status).or_default() += 1;
    }
    counts
}

/// The median and largest time to answer of the answers with `status`, in seconds.
pub fn latency(answers: &[Answer], status: u16) -> (f64, f64) {
    let mut times: Vec<f64> = answers
        .iter()
        .filter(|a| a.status == status)
        .map(|a| (a.received - a.sent).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    match times.last() {
        Some(max) => (times[times.len() / 2], *max),
        None => (0.0, 0.0),
    }
}
