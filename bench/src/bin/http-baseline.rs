//! The HTTP ceiling: an axum server whose webhook route answers 202 without doing any
//! work. The gateway's throughput is reported as a fraction of this one's, measured by
//! the same load tool in the same run.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new().route(
        "/webhooks/{source}",
        post(|_body: axum::body::Bytes| async {
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"id": "baseline"})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
