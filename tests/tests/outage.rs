//! The gateway when the broker goes away and comes back. In a test binary of its own, so
//! that it never shares the machine with the load tests (cargo runs test binaries one
//! after another).

use std::collections::HashSet;
use std::time::Duration;

use hookfold_tests::webhooks::{build_finished, buildkite_signed};
use hookfold_tests::{Broker, Gateway, Storage, headers_of, unique_name};
use reqwest::StatusCode;

const BK_SECRET: &str = "29b1ff5779c76bd48ba6705eb99ff970";

fn config(topic: &str) -> String {
    format!(
        r#"
[kafka]
topic = "{topic}"
[[sources]]
id = "acme-buildkite"
kind = "buildkite"
secrets = ["{BK_SECRET}"]
"#
    )
}

async fn accepted_id(response: reqwest::Response) -> String {
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("JSON answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["id"].as_str().expect("id in 202 answer").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_gives_503_never_2xx_and_recovers() {
    // The broker goes away and comes back. It runs behind a TCP proxy this test owns and
    // advertises the proxy's address, so every client connection passes through it:
    // stopping the proxy refuses and cuts them all, as a dead broker does. (Restarting
    // tansu 0.6.0 itself is not usable here: with SQLite storage, a restarted broker
    // fails its storage with `UnableToSend` while clients reconnect, and exits.) So this
    // test always runs its own tansu, even when KAFKA_BOOTSTRAP_SERVERS is set.
    // Memory storage: with SQLite storage, tansu answers the producer whose connections
    // were cut with an unknown error, and never acks a new producer's records afterwards
    // (seen here, 120 s of timeouts). Memory storage keeps only the first record of a
    // multi-record batch, but this test sends one request at a time, so every batch
    // holds one record, and the test checks that each acked one is on the topic.
    let proxy_port = hookfold_tests::free_port();
    let broker = Broker::start_tansu_advertising(Storage::Memory, Some(proxy_port)).expect("tansu");
    let tansu = format!("127.0.0.1:{}", broker.tansu_port().unwrap())
        .parse()
        .unwrap();
    let proxy = hookfold_tests::Proxy::start(proxy_port, tansu)
        .await
        .unwrap();
    let topic = unique_name("hookfold.webhooks");
    broker.create_topic(&topic, 1).await.unwrap();
    let gateway = Gateway::start(
        &config(&topic),
        &broker.bootstrap,
        &[("HOOKFOLD_KAFKA__ACK_TIMEOUT", "5s")],
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let url = gateway.webhook_url("acme-buildkite");
    let post = |n: u64| {
        let body = build_finished("outage", "main", n, "failed");
        buildkite_signed(client.post(&url), BK_SECRET, "build.finished", &body).send()
    };
    let mut acked = vec![accepted_id(post(1).await.unwrap()).await];

    proxy.stop();
    for n in 2..5 {
        let response = post(n).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "broker_unavailable");
    }
    let ready = client
        .get(format!("{}/readyz", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    proxy.resume().await.unwrap();
    // Keep delivering (as Buildkite's retries would) until one is accepted; every answer
    // meanwhile is 202 or 503, never anything else.
    let mut n = 100;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        n += 1;
        let response = post(n).await.unwrap();
        match response.status() {
            StatusCode::ACCEPTED => {
                acked.push(accepted_id(response).await);
                break;
            }
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("unexpected {other} while the broker recovers"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway did not recover:\n{}",
            gateway.process.output()
        );
    }
    acked.push(accepted_id(post(1000).await.unwrap()).await);
    let ids: HashSet<String> = broker
        .read_all(&topic)
        .unwrap()
        .iter()
        .map(|r| headers_of(r)["ce_id"].clone())
        .collect();
    for id in &acked {
        assert!(ids.contains(id), "acked {id} is not on the topic");
    }
}
