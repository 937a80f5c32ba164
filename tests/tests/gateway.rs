//! The gateway binary against a real broker: what lands on the topic, what is refused,
//! load, outage, TLS, slow clients and shutdown.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hookfold_tests::webhooks::{agent_event, bitbucket_signed, build_finished, buildkite_signed};
use hookfold_tests::{
    Broker, Gateway, Signal, fixture, headers_of, unique_name, unix_now, wait_for, wait_until,
};
use rdkafka::Message;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

const BK_SECRET: &str = "29b1ff5779c76bd48ba6705eb99ff970";
const BK_NEW_SECRET: &str = "rotated-in-2026";
const BB_SECRET: &str = "Gkvl$k$wyNpQAF42";

fn config(topic: &str, extra: &str) -> String {
    format!(
        r#"
[kafka]
topic = "{topic}"
ack_timeout = "3s"
[[sources]]
id = "acme-buildkite"
kind = "buildkite"
secrets = ["{BK_NEW_SECRET}", "{BK_SECRET}"]
[[sources]]
id = "acme-bitbucket"
kind = "bitbucket"
secrets = ["{BB_SECRET}"]
{extra}
"#
    )
}

async fn setup(partitions: i32, extra: &str) -> (Broker, Gateway, String) {
    let broker = Broker::start().expect("broker");
    let topic = unique_name("hookfold.webhooks");
    broker
        .create_topic(&topic, partitions)
        .await
        .expect("topic");
    let gateway = Gateway::start(&config(&topic, extra), &broker.bootstrap, &[])
        .await
        .expect("gateway");
    (broker, gateway, topic)
}

fn sha256_id(source: &str, event: &str, body: &[u8]) -> String {
    let mut d = Sha256::new();
    d.update(source.as_bytes());
    d.update([0]);
    d.update(event.as_bytes());
    d.update([0]);
    d.update(body);
    hex::encode(d.finalize())
}

async fn accepted_id(response: reqwest::Response) -> String {
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("JSON answer");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["id"].as_str().expect("id in 202 answer").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_land_verbatim_with_cloudevents_headers_and_routing_keys() {
    let (broker, gateway, topic) = setup(3, "").await;
    let client = reqwest::Client::new();
    let bk = gateway.webhook_url("acme-buildkite");
    let bb = gateway.webhook_url("acme-bitbucket");

    // (expected key, ce_type, body, id from the 202)
    let mut sent = Vec::new();
    let ping = fixture("buildkite/ping.json");
    let id = accepted_id(
        buildkite_signed(client.post(&bk), BK_SECRET, "ping", &ping)
            .send()
            .await
            .unwrap(),
    )
    .await;
    sent.push(("acme-buildkite/org".to_string(), "buildkite.ping", ping, id));

    let build = build_finished("web-app", "main", 42, "failed");
    // Token authentication, with the secret rotated in.
    let id = accepted_id(
        client
            .post(&bk)
            .header("content-type", "application/json; charset=utf-8")
            .header("x-buildkite-event", "build.finished")
            .header("x-buildkite-token", BK_NEW_SECRET)
            .body(build.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    sent.push((
        "acme-buildkite/pipeline/web-app".into(),
        "buildkite.build.finished",
        build,
        id,
    ));

    let agent = agent_event("agent.lost", "ci-agent-7", "a-77");
    let id = accepted_id(
        buildkite_signed(client.post(&bk), BK_SECRET, "agent.lost", &agent)
            .send()
            .await
            .unwrap(),
    )
    .await;
    sent.push((
        "acme-buildkite/agent/ci-agent-7".into(),
        "buildkite.agent.lost",
        agent,
        id,
    ));

    for (file, event, uuid) in [
        (
            "bitbucket/repo-push.json",
            "repo:push",
            "6a3e7d0c-1f1e-4a56-b5b2-000000000001",
        ),
        (
            "bitbucket/pullrequest-created.json",
            "pullrequest:created",
            "6a3e7d0c-1f1e-4a56-b5b2-000000000002",
        ),
        (
            "bitbucket/pullrequest-fulfilled.json",
            "pullrequest:fulfilled",
            "6a3e7d0c-1f1e-4a56-b5b2-000000000003",
        ),
        (
            "bitbucket/pullrequest-rejected.json",
            "pullrequest:rejected",
            "6a3e7d0c-1f1e-4a56-b5b2-000000000004",
        ),
    ] {
        let body = fixture(file);
        let full_name: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let full_name = full_name["repository"]["full_name"]
            .as_str()
            .unwrap()
            .to_string();
        let id = accepted_id(
            bitbucket_signed(client.post(&bb), BB_SECRET, event, uuid, &body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(id, uuid, "Bitbucket's delivery id is the event id");
        let ce_type: &'static str = Box::leak(format!("bitbucket.{event}").into_boxed_str());
        sent.push((
            format!("acme-bitbucket/repo/{full_name}"),
            ce_type,
            body,
            id,
        ));
    }

    let records = broker.read_all(&topic).expect("read topic");
    assert_eq!(records.len(), sent.len());
    let by_id: HashMap<String, _> = records
        .iter()
        .map(|r| (headers_of(r)["ce_id"].clone(), r))
        .collect();
    for (key, ce_type, body, id) in &sent {
        let record = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no record with ce_id {id}"));
        assert_eq!(
            record.payload(),
            Some(&body[..]),
            "value is the body byte for byte"
        );
        assert_eq!(record.key(), Some(key.as_bytes()));
        let headers = headers_of(record);
        assert_eq!(headers["ce_specversion"], "1.0");
        assert_eq!(headers["ce_type"], *ce_type);
        assert_eq!(headers["content-type"], "application/json");
        let source = key.split('/').next().unwrap();
        assert_eq!(headers["ce_source"], format!("/sources/{source}"));
        let time = time::OffsetDateTime::parse(
            &headers["ce_time"],
            &time::format_description::well_known::Rfc3339,
        )
        .expect("ce_time is RFC 3339");
        assert!(
            (time.unix_timestamp() - unix_now()).abs() < 120,
            "ce_time is the receipt time"
        );
    }
    // Buildkite sends no delivery id: the id is a digest a repeat keeps.
    let (_, _, body, id) = &sent[1];
    assert_eq!(*id, sha256_id("acme-buildkite", "build.finished", body));
    let again = accepted_id(
        client
            .post(&bk)
            .header("content-type", "application/json")
            .header("x-buildkite-event", "build.finished")
            .header("x-buildkite-token", BK_SECRET)
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again, *id, "a repeated delivery keeps its id");

    // Metrics count what happened, by source, event and status.
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"hookfold_gateway_requests_total{event="build.finished",source="acme-buildkite",status="202"} 2"#),
        "{metrics}"
    );
    let ready = client
        .get(format!("{}/readyz", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

/// One hostile or malformed request: what it is, and the status it must get.
struct Case {
    name: &'static str,
    source: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
}

fn bk_signature(secret: &str, ts: i64, body: &[u8]) -> String {
    hookfold_gateway::auth::buildkite_signature_header(
        &hookfold_gateway::auth::Secret::new(secret),
        ts,
        body,
    )
}

fn hostile_cases() -> Vec<Case> {
    let ping = fixture("buildkite/ping.json");
    let now = unix_now();
    let json = |event: &'static str| {
        vec![
            ("content-type", "application/json".to_string()),
            ("x-buildkite-event", event.to_string()),
        ]
    };
    let signed = |body: &[u8], ts: i64| {
        let mut h = json("ping");
        h.push(("x-buildkite-signature", bk_signature(BK_SECRET, ts, body)));
        h
    };
    let limit = 1024 * 1024;
    let over = {
        let pad = limit + 1 - br#"{"pad":""}"#.len();
        format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad)).into_bytes()
    };
    assert_eq!(over.len(), limit + 1);
    let push = fixture("bitbucket/repo-push.json");
    let bb_headers = |signature: String| {
        vec![
            ("content-type", "application/json".to_string()),
            ("x-event-key", "repo:push".to_string()),
            (
                "x-request-uuid",
                "c0ffee00-0000-4000-8000-000000000001".to_string(),
            ),
            ("x-hub-signature", signature),
        ]
    };
    // Well outside the 300 s window: `now` is taken once, and the cases run
    // over seconds, so a timestamp just past the edge would drift back inside
    // it. The exact edges are unit-tested in gateway/src/auth.rs.
    let mut cases = vec![
        Case { name: "no auth header", source: "acme-buildkite", headers: json("ping"), body: ping.clone(), status: 401 },
        Case { name: "wrong token", source: "acme-buildkite",
            headers: [json("ping"), vec![("x-buildkite-token", "29b1ff5779c76bd48ba6705eb99ff971".into())]].concat(), body: ping.clone(), status: 401 },
        Case { name: "signature over a different body", source: "acme-buildkite",
            headers: [json("ping"), vec![("x-buildkite-signature", bk_signature(BK_SECRET, now, b"{}"))]].concat(), body: ping.clone(), status: 401 },
        Case { name: "signature with a wrong secret", source: "acme-buildkite",
            headers: [json("ping"), vec![("x-buildkite-signature", bk_signature("guess", now, &ping))]].concat(), body: ping.clone(), status: 401 },
        Case { name: "stale timestamp", source: "acme-buildkite", headers: signed(&ping, now - 3600), body: ping.clone(), status: 401 },
        Case { name: "future timestamp", source: "acme-buildkite", headers: signed(&ping, now + 3600), body: ping.clone(), status: 401 },
        Case { name: "the published ping vector, replayed years later", source: "acme-buildkite",
            headers: [json("ping"), vec![("x-buildkite-signature", "timestamp=1642080837,signature=582d496ac2d869dd97a3101c4cda346288c49a742592daf582ec64c86449f79c".into())]].concat(),
            body: ping.clone(), status: 401 },
        Case { name: "malformed signature header", source: "acme-buildkite",
            headers: [json("ping"), vec![("x-buildkite-signature", format!("timestamp={now};sig=abc"))]].concat(), body: ping.clone(), status: 401 },
        Case { name: "bitbucket without signature", source: "acme-bitbucket",
            headers: bb_headers(String::new()).into_iter().filter(|(k, _)| *k != "x-hub-signature").collect(), body: push.clone(), status: 401 },
        Case { name: "bitbucket signature with a wrong secret", source: "acme-bitbucket",
            headers: bb_headers(hookfold_gateway::auth::bitbucket_signature_header(&hookfold_gateway::auth::Secret::new("nope"), &push)), body: push.clone(), status: 401 },
        Case { name: "buildkite signature on a bitbucket source", source: "acme-bitbucket",
            headers: signed(&push, now), body: push.clone(), status: 401 },
        Case { name: "unknown source", source: "nobody", headers: signed(&ping, now), body: ping.clone(), status: 404 },
        Case { name: "wrong content type", source: "acme-buildkite",
            headers: signed(&ping, now).into_iter().map(|(k, v)| if k == "content-type" { (k, "text/plain".into()) } else { (k, v) }).collect(), body: ping.clone(), status: 415 },
        Case { name: "no content type", source: "acme-buildkite",
            headers: signed(&ping, now).into_iter().filter(|(k, _)| *k != "content-type").collect(), body: ping.clone(), status: 415 },
        Case { name: "invalid JSON", source: "acme-buildkite", headers: signed(b"{\"event\": ping}", now), body: b"{\"event\": ping}".to_vec(), status: 400 },
        Case { name: "JSON but not an object", source: "acme-buildkite", headers: signed(b"[1,2]", now), body: b"[1,2]".to_vec(), status: 400 },
        Case { name: "empty body", source: "acme-buildkite", headers: signed(b"", now), body: Vec::new(), status: 400 },
        Case { name: "body one byte over the limit", source: "acme-buildkite", headers: signed(&over, now), body: over.clone(), status: 413 },
        Case { name: "missing event header", source: "acme-buildkite",
            headers: signed(&ping, now).into_iter().filter(|(k, _)| *k != "x-buildkite-event").collect(), body: ping.clone(), status: 400 },
        Case { name: "event header that is not an event name", source: "acme-buildkite",
            headers: signed(&ping, now).into_iter().map(|(k, v)| if k == "x-buildkite-event" { (k, "ping; drop table".into()) } else { (k, v) }).collect(), body: ping.clone(), status: 400 },
        Case { name: "bitbucket without event key", source: "acme-bitbucket",
            headers: bb_headers(hookfold_gateway::auth::bitbucket_signature_header(&hookfold_gateway::auth::Secret::new(BB_SECRET), &push)).into_iter().filter(|(k, _)| *k != "x-event-key").collect(),
            body: push.clone(), status: 400 },
        Case { name: "address not on the allow-list", source: "acme-office-only", headers: [json("ping"), vec![("x-buildkite-token", "office-s3cret-7f".into())]].concat(), body: ping.clone(), status: 403 },
    ];
    // The same limit is a boundary, not an off-by-one: exactly max_body_bytes is fine.
    let exact = {
        let pad = limit - br#"{"pad":""}"#.len();
        format!(r#"{{"pad":"{}"}}"#, "y".repeat(pad)).into_bytes()
    };
    cases.push(Case {
        name: "body exactly at the limit",
        source: "acme-buildkite",
        headers: signed(&exact, now),
        body: exact,
        status: 202,
    });
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_malformed_requests_get_their_status_and_write_nothing() {
    let extra = r#"
[[sources]]
id = "acme-office-only"
kind = "buildkite"
secrets = ["office-s3cret-7f"]
allowed_cidrs = ["10.0.0.0/8", "fd00::/8"]
[[sources]]
id = "acme-limited"
kind = "buildkite"
secrets = ["limited-s3cret-9c"]
rate_limit = { per_second = 0.01, burst = 2 }
"#;
    let (broker, gateway, topic) = setup(2, extra).await;
    let client = reqwest::Client::new();
    let mut accepted = HashSet::new();
    for case in hostile_cases() {
        let mut request = client
            .post(gateway.webhook_url(case.source))
            .body(case.body);
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, case.status, "{}: {answer}", case.name);
        if status == 202 {
            accepted.insert(answer["id"].as_str().unwrap().to_string());
        } else {
            assert!(
                answer["error"].is_string() && answer["message"].is_string(),
                "{}: error body {answer}",
                case.name
            );
        }
    }
    // Rate limit: a burst of 2, then 429 with Retry-After.
    let limited = gateway.webhook_url("acme-limited");
    for n in 0..3 {
        let body = format!(r#"{{"event":"ping","n":{n}}}"#);
        let response = client
            .post(&limited)
            .header("content-type", "application/json")
            .header("x-buildkite-event", "ping")
            .header("x-buildkite-token", "limited-s3cret-9c")
            .body(body)
            .send()
            .await
            .unwrap();
        if n < 2 {
            accepted.insert(accepted_id(response).await);
        } else {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1, "Retry-After {retry}");
        }
    }
    // Everything above has been answered, so anything written is already in the
    // watermarks: exactly the accepted requests are on the topic.
    let records = broker.read_all(&topic).unwrap();
    let ids: HashSet<String> = records
        .iter()
        .map(|r| headers_of(r)["ce_id"].clone())
        .collect();
    assert_eq!(records.len(), accepted.len());
    assert_eq!(ids, accepted);
    let log = gateway.process.output();
    for secret in [
        BK_SECRET,
        BK_NEW_SECRET,
        BB_SECRET,
        "office-s3cret-7f",
        "limited-s3cret-9c",
    ] {
        assert!(!log.contains(secret), "secret {secret} in the log");
    }
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(
            r#"hookfold_gateway_requests_total{event="-",source="unknown",status="404"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"hookfold_gateway_auth_failures_total{reason="stale",source="acme-buildkite"} 3"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_signed_requests_make_ten_thousand_records() {
    const TOTAL: usize = 10_000;
    const CONNECTIONS: usize = 64;
    let (broker, gateway, topic) = setup(4, "").await;
    let url = gateway.webhook_url("acme-buildkite");
    let mut workers = Vec::new();
    for worker in 0..CONNECTIONS {
        let url = url.clone();
        // One client with one pooled connection per worker: 64 connections in all.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .http1_only()
            .build()
            .unwrap();
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for n in (worker..TOTAL).step_by(CONNECTIONS) {
                let body =
                    build_finished(&format!("pipeline-{}", n % 50), "main", n as u64, "failed");
                let response =
                    buildkite_signed(client.post(&url), BK_SECRET, "build.finished", &body)
                        .send()
                        .await
                        .unwrap();
                let status = response.status().as_u16();
                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                answers.push((
                    status,
                    answer["id"].as_str().unwrap_or_default().to_string(),
                ));
            }
            answers
        }));
    }
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut accepted = HashSet::new();
    for worker in workers {
        for (status, id) in worker.await.unwrap() {
            *statuses.entry(status).or_default() += 1;
            if status == 202 {
                accepted.insert(id);
            }
        }
    }
    assert_eq!(statuses, HashMap::from([(202, TOTAL)]));
    assert_eq!(accepted.len(), TOTAL, "every request got its own id");
    let records = broker.read_all(&topic).unwrap();
    let ids: HashSet<String> = records
        .iter()
        .map(|r| headers_of(r)["ce_id"].clone())
        .collect();
    let missing: Vec<_> = accepted.difference(&ids).collect();
    assert!(
        missing.is_empty(),
        "{} acked requests are not on the topic: {missing:?}",
        missing.len()
    );
    assert_eq!(records.len(), TOTAL, "no record twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_topic_does_not_exist() {
    let broker = Broker::start().unwrap();
    let topic = unique_name("hookfold.missing");
    let gateway = Gateway::start(&config(&topic, ""), &broker.bootstrap, &[])
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains(&topic), "{body}");
    broker.create_topic(&topic, 1).await.unwrap();
    wait_until("readyz to turn 200", Duration::from_secs(20), async || {
        Ok((gateway.readyz().await == StatusCode::OK.as_u16()).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_https() {
    let broker = Broker::start().unwrap();
    let topic = unique_name("hookfold.webhooks");
    broker.create_topic(&topic, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let extra = format!(
        "[tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    // [tls] must come before [[sources]] tables end; put it ahead of them.
    let toml = format!("{extra}{}", config(&topic, ""));
    let gateway = Gateway::start(&toml, &broker.bootstrap, &[]).await.unwrap();
    assert!(gateway.url.starts_with("https://"));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let body = build_finished("tls", "main", 1, "passed");
    let id = accepted_id(
        buildkite_signed(
            client.post(gateway.webhook_url("acme-buildkite")),
            BK_SECRET,
            "build.finished",
            &body,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    let records = broker.read_all(&topic).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(headers_of(&records[0])["ce_id"], id);
    // Plain HTTP on the TLS port gets no answer.
    assert!(
        reqwest::get(format!("http://{}/healthz", gateway.addr))
            .await
            .is_err()
    );
}

/// A raw HTTP/1.1 request written by hand, for clients no HTTP library would imitate.
fn raw_request(source: &str, body_len: usize, extra: &str) -> String {
    format!(
        "POST /webhooks/{source} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Buildkite-Event: ping\r\nX-Buildkite-Token: {BK_SECRET}\r\nContent-Length: {body_len}\r\n{extra}\r\n"
    )
}

fn read_response(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                text.extend_from_slice(&buf[..n]);
                let s = String::from_utf8_lossy(&text);
                if let Some(head_end) = s.find("\r\n\r\n") {
                    let len = s[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if text.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            Err(e) => panic!("reading response: {e}"),
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let (_broker, gateway, _topic) = setup(1, "").await;
    let gateway = {
        // Restart with short timeouts (the config under test).
        drop(gateway);
        let broker_bootstrap = _broker.bootstrap.clone();
        Gateway::start(
            &config(&_topic, ""),
            &broker_bootstrap,
            &[
                ("HOOKFOLD_HEADER_TIMEOUT", "1s"),
                ("HOOKFOLD_BODY_TIMEOUT", "1s"),
            ],
        )
        .await
        .unwrap()
    };
    let addr = gateway.addr;
    tokio::task::spawn_blocking(move || {
        // Headers that never finish: the server closes the connection.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"POST /webhooks/acme-buildkite HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = std::time::Instant::now();
        let answer = read_response(&mut stream);
        assert!(started.elapsed() < Duration::from_secs(10), "connection held {:?}", started.elapsed());
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");

        // A body that stops half way: 408.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(raw_request("acme-buildkite", 100, "").as_bytes()).unwrap();
        stream.write_all(b"{\"event\":").unwrap();
        let answer = read_response(&mut stream);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

        // A chunked body with no Content-Length that grows past the limit: 413.
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = "POST /webhooks/acme-buildkite HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Buildkite-Event: ping\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..17 {
            let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
            let _ = stream.write_all(&chunk);
            let _ = stream.write_all(b"\r\n");
        }
        let answer = read_response(&mut stream);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_cleanly() {
    let (broker, mut gateway, topic) = setup(1, "").await;
    let addr = gateway.addr;
    let body = br#"{"event":"ping","note":"sent across a shutdown"}"#;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(raw_request("acme-buildkite", body.len(), "").as_bytes())
        .unwrap();
    stream.write_all(&body[..10]).unwrap();
    // The request is in flight once the server has read its headers; the gateway counts it.
    let client = reqwest::Client::new();
    let metrics_url = format!("{}/metrics", gateway.url);
    wait_until(
        "the half-sent request to show as in flight",
        Duration::from_secs(10),
        async || {
            let text = client.get(&metrics_url).send().await?.text().await?;
            let in_flight = text
                .lines()
                .any(|l| l == "hookfold_gateway_in_flight_requests 1");
            Ok(in_flight.then_some(()))
        },
    )
    .await
    .unwrap();
    gateway.process.signal(Signal::Term).unwrap();
    // New connections are refused once the listener is closed...
    wait_for("the listener to close", Duration::from_secs(10), || {
        TcpStream::connect(addr).is_err().then_some(())
    })
    .unwrap();
    // ...while the request in flight completes.
    stream.write_all(&body[10..]).unwrap();
    let answer = tokio::task::spawn_blocking(move || read_response(&mut stream))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let status = wait_for("the gateway to exit", Duration::from_secs(20), || {
        gateway.process.exited()
    })
    .unwrap();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        gateway.process.output()
    );
    assert_eq!(broker.record_count(&topic).unwrap(), 1);
}

/// A Buildkite build body whose pipeline and build carry environment secrets.
fn build_with_secrets(number: u64) -> Vec<u8> {
    let mut body: serde_json::Value =
        serde_json::from_slice(&build_finished("web-app", "main", number, "failed")).unwrap();
    body["pipeline"]["env"] = serde_json::json!({"DEPLOY_TOKEN": "pipeline-s3cret-7f3a"});
    body["build"]["env"] = serde_json::json!({"NPM_TOKEN": "build-s3cret-91c2"});
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildkite_environments_are_redacted_and_repeats_keep_their_id() {
    let raw_source = format!(
        r#"[[sources]]
id = "raw-buildkite"
kind = "buildkite"
secrets = ["{BK_SECRET}"]
redact = []"#
    );
    let (broker, gateway, topic) = setup(1, &raw_source).await;
    let client = reqwest::Client::new();
    let body = build_with_secrets(7);

    // The same delivery twice (Buildkite retries), then once to a source that keeps bodies.
    let mut ids = Vec::new();
    for url in [
        gateway.webhook_url("acme-buildkite"),
        gateway.webhook_url("acme-buildkite"),
        gateway.webhook_url("raw-buildkite"),
    ] {
        ids.push(
            accepted_id(
                buildkite_signed(client.post(&url), BK_SECRET, "build.finished", &body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await,
        );
    }
    // A Bitbucket body with the same members: Bitbucket sources redact nothing by default.
    let mut bitbucket: serde_json::Value =
        serde_json::from_slice(&fixture("bitbucket/pullrequest-created.json")).unwrap();
    bitbucket["pipeline"] = serde_json::json!({"env": {"KEPT": "bitbucket-value"}});
    let bitbucket = serde_json::to_vec_pretty(&bitbucket).unwrap();
    let uuid = "6a3e7d0c-1f1e-4a56-b5b2-00000000000a";
    accepted_id(
        bitbucket_signed(
            client.post(gateway.webhook_url("acme-bitbucket")),
            BB_SECRET,
            "pullrequest:created",
            uuid,
            &bitbucket,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;

    let records = broker.read_all(&topic).expect("read topic");
    assert_eq!(records.len(), 4);
    let expected_id = sha256_id("acme-buildkite", "build.finished", &body);
    assert_eq!(
        ids[..2],
        [expected_id.clone(), expected_id.clone()],
        "the id is over the body as sent, so the repeat keeps it"
    );
    let mut without: serde_json::Value = serde_json::from_slice(&body).unwrap();
    without["pipeline"].as_object_mut().unwrap().remove("env");
    without["build"].as_object_mut().unwrap().remove("env");
    for record in &records[..2] {
        let headers = headers_of(record);
        assert_eq!(headers["ce_id"], expected_id);
        assert_eq!(headers["hookfold-redacted"], "pipeline.env,build.env");
        let stored = record.payload().unwrap();
        let text = String::from_utf8_lossy(stored);
        assert!(
            !text.contains("s3cret"),
            "a redacted secret reached the topic: {text}"
        );
        let stored: serde_json::Value = serde_json::from_slice(stored).unwrap();
        assert_eq!(stored, without, "only the environments are gone");
    }
    let raw = &records[2];
    assert_eq!(
        raw.payload(),
        Some(&body[..]),
        "redact = [] stores the body"
    );
    assert!(!headers_of(raw).contains_key("hookfold-redacted"));
    let bb = &records[3];
    assert_eq!(
        bb.payload(),
        Some(&bitbucket[..]),
        "Bitbucket byte for byte"
    );
    assert!(!headers_of(bb).contains_key("hookfold-redacted"));
}

/// The rules read nothing that a Buildkite source redacts by default: every Buildkite
/// fixture parses to the same event with and without its environments.
#[test]
fn redaction_leaves_what_the_rules_read() {
    use hookfold_gateway::config::BUILDKITE_REDACT;
    use hookfold_gateway::redact::{JsonPath, redact};
    use hookfold_proto::cloudevents::{
        CloudEventHeaders, SourceKind, webhook_source, webhook_type,
    };

    let paths: Vec<JsonPath> = BUILDKITE_REDACT
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let dir = hookfold_tests::manifest_dir().join("../events/tests/fixtures/buildkite");
    let mut redacted_some = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mut body: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let event = body["event"].as_str().unwrap().to_owned();
        // Give every environment the fixture has a secret, so there is something to take.
        for pointer in [
            "/pipeline/env",
            "/build/env",
            "/build/pipeline/env",
            "/job/env",
        ] {
            if let Some(env) = body.pointer_mut(pointer) {
                *env = serde_json::json!({"TOKEN": "s3cret"});
            }
        }
        let original = serde_json::to_vec(&body).unwrap();
        let headers = CloudEventHeaders {
            id: "id".into(),
            source: webhook_source("bk"),
            ty: webhook_type(SourceKind::Buildkite, &event),
            time: "2026-12-03T10:00:00Z".into(),
            content_type: "application/json".into(),
        };
        let Some(redacted) = redact(&original, &paths) else {
            continue;
        };
        redacted_some += 1;
        assert!(!String::from_utf8_lossy(&redacted.body).contains("s3cret"));
        assert_eq!(
            hookfold_events::parse(&headers, &redacted.body).unwrap(),
            hookfold_events::parse(&headers, &original).unwrap(),
            "{}: the rules would see another event",
            path.display()
        );
    }
    assert!(
        redacted_some >= 4,
        "only {redacted_some} fixtures had an environment"
    );
}

const TE_TOKEN: &str = "6f1d2c3b4a5968778695a4b3c2d1e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091";
const TE_OLD_TOKEN: &str = "rotating-out-0123456789abcdef0123456789";

fn test_engine_fixture(name: &str) -> Vec<u8> {
    let path = hookfold_tests::manifest_dir()
        .join("../events/tests/fixtures/buildkite_test_engine")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Test Engine sends no credentials but the URL, and no event header: the source's token is
/// the URL's last segment, the event the body's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_engine_deliveries_authenticate_by_their_url_and_name_their_event_in_the_body() {
    let extra = format!(
        r#"
[[sources]]
id = "acme-tests"
kind = "buildkite_test_engine"
secrets = ["{TE_TOKEN}", "{TE_OLD_TOKEN}"]
"#
    );
    let (broker, gateway, topic) = setup(2, &extra).await;
    let client = reqwest::Client::new();
    let url = |token: &str| format!("{}/{token}", gateway.webhook_url("acme-tests"));
    let post = |url: String, body: Vec<u8>| {
        client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
    };

    let muted = test_engine_fixture("state-changed-muted.json");
    let label = test_engine_fixture("label-added.json");
    let muted_id = accepted_id(post(url(TE_TOKEN), muted.clone()).send().await.unwrap()).await;
    // The token being rotated out still works.
    let label_id = accepted_id(post(url(TE_OLD_TOKEN), label.clone()).send().await.unwrap()).await;
    assert_eq!(
        muted_id,
        sha256_id("acme-tests", "test.state_changed", &muted)
    );
    assert_eq!(
        label_id,
        sha256_id("acme-tests", "test.label_added", &label)
    );

    // Refused, each with what any other source answers, and nothing written.
    let bad_token = post(url("not-the-token-0123456789abcdef0123"), muted.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), StatusCode::UNAUTHORIZED);
    let bad_token: serde_json::Value = bad_token.json().await.unwrap();
    let bad_buildkite_token = client
        .post(gateway.webhook_url("acme-buildkite"))
        .header("content-type", "application/json")
        .header("x-buildkite-event", "ping")
        .header("x-buildkite-token", "not-the-token")
        .body(fixture("buildkite/ping.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_buildkite_token.status(), StatusCode::UNAUTHORIZED);
    let bad_buildkite_token: serde_json::Value = bad_buildkite_token.json().await.unwrap();
    assert_eq!(
        bad_token, bad_buildkite_token,
        "the same 401 as a bad token elsewhere"
    );
    for (name, url, body, status) in [
        (
            "no token",
            gateway.webhook_url("acme-tests"),
            muted.clone(),
            401,
        ),
        (
            "a token on a source that takes none",
            format!("{}/{BK_SECRET}", gateway.webhook_url("acme-buildkite")),
            muted.clone(),
            404,
        ),
        (
            "no event in the body",
            url(TE_TOKEN),
            br#"{"test_id":"t"}"#.to_vec(),
            400,
        ),
        (
            "an event that is no name",
            url(TE_TOKEN),
            br#"{"event":"a b"}"#.to_vec(),
            400,
        ),
        (
            "not JSON",
            url(TE_TOKEN),
            b"test.state_changed".to_vec(),
            400,
        ),
    ] {
        let response = post(url, body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
    }

    let records = broker.read_all(&topic).unwrap();
    assert_eq!(records.len(), 2, "only the two accepted");
    for (id, body, ce_type, key) in [
        (
            &muted_id,
            &muted,
            "buildkite_test_engine.test.state_changed",
            "acme-tests/suite/web-app-rspec/test/0b9f3c2e-7d4a-4f51-9e0c-2a6b8d1f4c37",
        ),
        (
            &label_id,
            &label,
            "buildkite_test_engine.test.label_added",
            "acme-tests/suite/my-suite/test/abcdef01-2345-6789-abcd-ef0123456789",
        ),
    ] {
        let record = records
            .iter()
            .find(|r| headers_of(r)["ce_id"] == *id)
            .unwrap_or_else(|| panic!("no record {id}"));
        assert_eq!(record.payload(), Some(&body[..]), "verbatim");
        assert_eq!(record.key(), Some(key.as_bytes()));
        let headers = headers_of(record);
        assert_eq!(headers["ce_type"], ce_type);
        assert_eq!(headers["ce_source"], "/sources/acme-tests");
    }
    let log = gateway.process.output();
    for token in [TE_TOKEN, TE_OLD_TOKEN] {
        assert!(!log.contains(token), "a URL token in the log");
    }
    let metrics = gateway.metrics().await;
    for line in [
        r#"hookfold_gateway_auth_failures_total{reason="bad_token",source="acme-tests"} 1"#,
        r#"hookfold_gateway_requests_total{event="test.state_changed",source="acme-tests",status="202"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(!metrics.contains(TE_TOKEN));
}
