use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hookfold_config::Mode;
use hookfold_gateway::app::{self, AppState};
use hookfold_gateway::config::{self, GatewayConfig, LogFormat};
use hookfold_gateway::metrics::Metrics;
use hookfold_gateway::publish::Publisher;
use hookfold_gateway::server;
use tracing_subscriber::EnvFilter;

/// Authenticates Buildkite and Bitbucket webhooks and appends them, verbatim, to Kafka.
///
/// POST /webhooks/<source id> is the URL to paste into Buildkite or Bitbucket. Answers:
/// 202 {"id"} once the broker acked the record; 404 unknown source; 401 bad or missing
/// token/signature or stale timestamp; 403 address not allowed; 415 not application/json;
/// 400 not a JSON object or no event header; 408 body too slow; 413 body too large;
/// 429 rate limited; 503 broker unavailable. GET /healthz, /readyz, /metrics.
#[derive(Parser, Debug)]
#[command(version, after_long_help = config::REFERENCE)]
struct Args {
    /// Configuration file (TOML). Without it, defaults and HOOKFOLD_* variables only.
    #[arg(long, short, env = "HOOKFOLD_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    check: bool,
    /// Print the kafka-acls.sh commands that grant this principal (e.g.
    /// User:hookfold-gateway) exactly what the gateway needs with this configuration, and
    /// exit.
    #[arg(long, value_name = "PRINCIPAL")]
    print_acls: Option<String>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // The ACLs follow from the topic alone: printing them needs none of the secrets.
    let mode = match args.print_acls {
        Some(_) => Mode::WithoutSecrets,
        None => Mode::WithSecrets,
    };
    let config = match hookfold_config::load::<GatewayConfig>(args.config.as_deref(), mode) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hookfold-gateway: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(principal) = &args.print_acls {
        print!(
            "{}",
            hookfold_kafka::acl::script("hookfold-gateway", principal, &config.acls())
        );
        return std::process::ExitCode::SUCCESS;
    }
    if args.check {
        println!(
            "configuration ok: listen {}, topic {} on {} over {}, {} source(s): {}",
            config.listen,
            config.kafka.topic,
            config.kafka.bootstrap_servers,
            config.kafka.security.describe(),
            config.sources.len(),
            config
                .sources
                .iter()
                .map(|s| format!("{} ({:?})", s.id, s.kind))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return std::process::ExitCode::SUCCESS;
    }
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hookfold-gateway: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway stopped");
            eprintln!("hookfold-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    let publisher = Publisher::new(&config.kafka, config.max_body_bytes)
        .context("creating the Kafka producer")?;
    let tls = config.tls.as_ref().map(server::tls_acceptor).transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let state = Arc::new(AppState::new(&config, publisher.clone(), Metrics::new()));
    tracing::info!(
        listen = %local,
        tls = tls.is_some(),
        topic = %config.kafka.topic,
        bootstrap_servers = %config.kafka.bootstrap_servers,
        sources = config.sources.len(),
        "gateway listening"
    );
    server::serve(
        listener,
        app::router(state),
        tls,
        config.header_timeout,
        config.shutdown_timeout,
        shutdown_signal(),
    )
    .await;
    // Every request awaited its own ack, so this is normally instant; it matters only
    // for records whose requests were cut off by the drain timeout.
    publisher
        .flush(config.kafka.ack_timeout)
        .context("flushing the producer on shutdown")?;
    tracing::info!("gateway stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
