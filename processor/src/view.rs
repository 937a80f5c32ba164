//! `hookfold-processor view --listen ADDR`: a stateless read-only service over the
//! open-incident table. It materialises the table in memory (every view reads all of it:
//! no routing between instances, any number may run) and serves:
//!
//! - `GET /api/incidents[?source=&kind=&severity=&prefix=&label=]`: the open incidents as
//!   JSON (`label=team=payments,service=api`: every one of these labels),
//!   most severe first, then oldest (the same filters and order as `incidents`);
//! - `GET /api/incidents/{dedup_key}`: the incident if open, and its whole event history
//!   from the incident topic, in order;
//! - `GET /`: a page listing the open incidents (no framework, no asset from elsewhere),
//!   rendered on the server and refreshed by a few lines of script (`view/page.rs`,
//!   `view/page.html` compiled in); `/?label=team=payments` shows one team's;
//! - `/metrics`, `/healthz`, `/readyz` (ready once the table is read to the end it had when
//!   the view connected, and while the brokers answer).
//!
//! Invariants: the view never writes to Kafka; a view that cannot reach the brokers keeps
//! serving what it has but says it is not ready, and reconnects by itself.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hookfold_kafka::{AtEnd, NEVER, PartitionReader, Polled, Start};
use hookfold_proto::Message as _;
use hookfold_proto::json::incident_to_json;
use hookfold_proto::v1::IncidentEvent;
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::open_incidents::{Filter, Table, listed, parse_kind, parse_label, parse_severity};

mod page;

/// What the view knows, shared between the reader thread and the HTTP handlers.
#[derive(Default)]
struct Shared {
    table: Table,
    /// The table was read to its end once (since the last reconnect).
    loaded: bool,
    /// Why the view is not ready, when it is not.
    problem: Option<String>,
}

#[derive(Clone)]
struct ViewState {
    shared: Arc<RwLock<Shared>>,
    client: ClientConfig,
    incident_topic: String,
    metrics: ViewMetrics,
}

#[derive(Clone)]
struct ViewMetrics {
    registry: Registry,
    open: IntGauge,
    ready: IntGauge,
}

impl ViewMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let open = IntGauge::new(
            "hookfold_view_open_incidents",
            "Open incidents in the view's copy of the open-incident table.",
        )
        .expect("static metric definition");
        let ready = IntGauge::new(
            "hookfold_view_ready",
            "1 when the table is read to its end and the brokers answer, else 0.",
        )
        .expect("static metric definition");
        for metric in [&open, &ready] {
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
        }
        Self {
            registry,
            open,
            ready,
        }
    }
}

pub struct ViewOptions {
    pub listen: SocketAddr,
    /// The processor's client settings (bootstrap, properties, security).
    pub client: ClientConfig,
    pub table_topic: String,
    pub incident_topic: String,
}

/// Serves until the process ends.
pub fn run(options: ViewOptions) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(options.listen)
        .with_context(|| format!("listening on {}", options.listen))?;
    listener.set_nonblocking(true)?;
    let state = ViewState {
        shared: Arc::new(RwLock::new(Shared {
            problem: Some("starting: the table is not read yet".into()),
            ..Shared::default()
        })),
        client: options.client.clone(),
        incident_topic: options.incident_topic.clone(),
        metrics: ViewMetrics::new(),
    };
    {
        let state = state.clone();
        let (client, topic) = (options.client, options.table_topic);
        std::thread::Builder::new()
            .name("view-table".into())
            .spawn(move || follow_table(&state, client, &topic))
            .context("starting the table reader")?;
    }
    tracing::info!(listen = %options.listen, "view serving /, /api/incidents, /metrics, /readyz");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let app = router(state);
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

fn set_problem(state: &ViewState, problem: Option<String>) {
    let mut shared = state.shared.write().unwrap_or_else(|e| e.into_inner());
    if shared.problem != problem {
        match &problem {
            Some(why) => tracing::warn!(reason = %why, "view not ready"),
            None => tracing::info!(open = shared.table.open.len(), "view ready"),
        }
    }
    let ready = problem.is_none() && shared.loaded;
    shared.problem = problem;
    state.metrics.ready.set(i64::from(ready));
}

/// Reads the table from the beginning, then follows it; on a failure (no broker, the topic
/// missing) starts over after a pause, keeping the last copy to serve meanwhile.
fn follow_table(state: &ViewState, client: ClientConfig, topic: &str) {
    let timeout = Duration::from_secs(5);
    loop {
        let reader = PartitionReader::whole_topic(
            client.clone(),
            topic,
            Start::Beginning,
            AtEnd::Follow,
            timeout,
        );
        let mut reader = match reader {
            Ok(reader) => reader,
            Err(e) => {
                set_problem(state, Some(format!("cannot read {topic}: {e}")));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) = follow(state, &mut reader) {
            set_problem(state, Some(e.to_string()));
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// One reader's life: a fresh copy of the table (re-read whole, so that keys tombstoned
/// meanwhile go too) replaces the served one once it is read to its end; after that each
/// record is applied to the served copy in place.
fn follow(
    state: &ViewState,
    reader: &mut PartitionReader,
) -> Result<(), hookfold_kafka::ReadError> {
    let mut fresh = Some(Table::default());
    let mut last_check = Instant::now();
    loop {
        while let Polled::Record(message) = reader.poll(Duration::from_millis(200))? {
            match fresh.as_mut() {
                Some(table) => {
                    table.apply(message.key(), message.payload());
                }
                None => {
                    let mut shared = state.shared.write().unwrap_or_else(|e| e.into_inner());
                    shared.table.apply(message.key(), message.payload());
                    state.metrics.open.set(shared.table.open.len() as i64);
                }
            }
        }
        let loaded = reader.loaded();
        if loaded && let Some(table) = fresh.take() {
            // Until then, the previous copy is served.
            let mut shared = state.shared.write().unwrap_or_else(|e| e.into_inner());
            shared.table = table;
            shared.loaded = true;
            state.metrics.open.set(shared.table.open.len() as i64);
        }
        if last_check.elapsed() >= Duration::from_secs(2) {
            last_check = Instant::now();
            let topic = reader.topic();
            match reader.reachable(Duration::from_secs(2)) {
                Ok(()) if loaded => set_problem(state, None),
                Ok(()) => set_problem(state, Some(format!("reading {topic} to its end"))),
                Err(e) => set_problem(state, Some(format!("the brokers do not answer: {e}"))),
            }
        }
    }
}

fn router(state: ViewState) -> Router {
    Router::new()
        .route("/", get(page::page))
        .route("/api/incidents", get(list))
        .route("/api/incidents/{*dedup_key}", get(one))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
struct FilterQuery {
    source: Option<String>,
    kind: Option<String>,
    severity: Option<String>,
    prefix: Option<String>,
    /// `team=payments,service=api`.
    label: Option<String>,
}

impl FilterQuery {
    fn filter(&self) -> Result<Filter, String> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        Ok(Filter {
            source: nonempty(&self.source),
            kind: nonempty(&self.kind).map(|k| parse_kind(&k)).transpose()?,
            min_severity: nonempty(&self.severity)
                .map(|s| parse_severity(&s))
                .transpose()?,
            prefix: nonempty(&self.prefix),
            labels: nonempty(&self.label)
                .map(|labels| labels.split(',').map(parse_label).collect())
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

fn bad_request(why: String) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": why}))).into_response()
}

fn open_list(state: &ViewState, filter: &Filter) -> (Vec<IncidentEvent>, bool) {
    let shared = state.shared.read().unwrap_or_else(|e| e.into_inner());
    let ready = shared.loaded && shared.problem.is_none();
    (
        listed(&shared.table, filter).into_iter().cloned().collect(),
        ready,
    )
}

async fn list(State(state): State<ViewState>, Query(query): Query<FilterQuery>) -> Response {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(why) => return bad_request(why),
    };
    let (open, ready) = open_list(&state, &filter);
    let body: Vec<Value> = open.iter().map(incident_to_json).collect();
    (
        [(header::CACHE_CONTROL, "no-store")],
        [("hookfold-view-ready", if ready { "true" } else { "false" })],
        axum::Json(Value::Array(body)),
    )
        .into_response()
}

async fn one(State(state): State<ViewState>, Path(dedup_key): Path<String>) -> Response {
    let current = {
        let shared = state.shared.read().unwrap_or_else(|e| e.into_inner());
        shared.table.open.get(&dedup_key).cloned()
    };
    let (client, topic, key) = (
        state.client.clone(),
        state.incident_topic.clone(),
        dedup_key.clone(),
    );
    let history = tokio::task::spawn_blocking(move || history(client, &topic, &key)).await;
    match history {
        Ok(Ok(events)) if events.is_empty() && current.is_none() => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": format!("no incident with dedup key {dedup_key}")})),
        )
            .into_response(),
        Ok(Ok(events)) => axum::Json(json!({
            "dedupKey": dedup_key,
            "open": current.as_ref().map(incident_to_json),
            "history": events.iter().map(incident_to_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": format!("reading the incident topic: {e}")})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

/// Every event of `dedup_key` on the incident topic, in order. The incident topic is keyed
/// by dedup key, so one partition holds them all; which one depends on the producer's
/// partitioner, so every partition is read (the cost of a lookup is a read of the topic;
/// see OPERATIONS.md).
fn history(
    client: ClientConfig,
    topic: &str,
    dedup_key: &str,
) -> Result<Vec<IncidentEvent>, hookfold_kafka::ReadError> {
    let timeout = Duration::from_secs(10);
    let mut reader =
        PartitionReader::whole_topic(client, topic, Start::Beginning, AtEnd::Stop, timeout)?;
    let mut events = Vec::new();
    reader.read_to_end(&NEVER, |message| {
        if message.key() == Some(dedup_key.as_bytes())
            && let Ok(event) = IncidentEvent::decode(message.payload().unwrap_or_default())
        {
            events.push(event);
        }
    })?;
    Ok(events)
}

async fn metrics(State(state): State<ViewState>) -> impl IntoResponse {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&state.metrics.registry.gather(), &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

async fn readyz(State(state): State<ViewState>) -> Response {
    let shared = state.shared.read().unwrap_or_else(|e| e.into_inner());
    match (&shared.problem, shared.loaded) {
        (None, true) => (StatusCode::OK, "ready".to_owned()).into_response(),
        (Some(why), _) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response()
        }
        (None, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: reading the table".to_owned(),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_refused_with_its_reason() {
        let query = FilterQuery {
            kind: Some("build".into()),
            ..Default::default()
        };
        assert!(query.filter().unwrap_err().contains("is not pipeline"));
        assert!(FilterQuery::default().filter().is_ok());
    }
}
