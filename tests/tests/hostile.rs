//! Hostile HTTP traffic mixed with valid webhooks, against the gateway binary with its
//! default settings and a real broker. What a webhook sender and an operator check: every
//! valid signed request gets its 202 and its record lands, nothing a hostile request sent is
//! on the topic, the gateway's memory stays bounded, and it is still serving afterwards.
//!
//! The hostile clients, each in a loop on raw TCP for the length of the run: headers
//! dribbled a byte at a time (slowloris), bodies dribbled likewise, bodies far over the
//! limit (declared and actually sent), JSON nested 100,000 deep (signed, so it reaches the
//! parser), 10,000 headers, invalid UTF-8 in a header and in a signed body, and request
//! smuggling attempts (`Content-Length` with `Transfer-Encoding: chunked`, two differing
//! `Content-Length`s, an obsolete line folding), each hiding a second request whose record
//! must never appear. Two valid requests pipelined on one connection must both land.
//! Figures are printed (`--nocapture`) for docs/ROBUSTNESS.md.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookfold_gateway::auth::{Secret, buildkite_signature_header};
use hookfold_gateway::routing::event_id;
use hookfold_tests::webhooks::{build_finished, buildkite_signed};
use hookfold_tests::{Broker, Gateway, headers_of, unique_name, unix_now};
use rdkafka::Message;

const SOURCE: &str = "acme-buildkite";
const SECRET: &str = "29b1ff5779c76bd48ba6705eb99ff970";
/// How long the mixed traffic runs.
const RUN: Duration = Duration::from_secs(25);
/// The gateway's peak RSS may not pass this: its limits (1 MiB bodies, a body read and
/// dropped up to 4 MiB) times the concurrent hostile connections, with room to spare.
const RSS_LIMIT_KIB: u64 = 256 * 1024;

fn signed_head(body: &[u8], extra: &str, content_length: bool) -> String {
    let signature = buildkite_signature_header(&Secret::new(SECRET), unix_now(), body);
    let length = if content_length {
        format!("Content-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    format!(
        "POST /webhooks/{SOURCE} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nX-Buildkite-Event: build.finished\r\nX-Buildkite-Signature: {signature}\r\n{length}{extra}\r\n"
    )
}

/// A complete, valid, signed request for a hostile client's hidden payload: if the
/// gateway ever parsed it as a request of its own, its record would be on the topic.
fn hidden_request(n: usize) -> (String, String) {
    let body = build_finished(&format!("smuggled-{n}"), "main", n as u64, "failed");
    let id = event_id(SOURCE, "build.finished", &body, None);
    let mut request = signed_head(&body, "", true);
    request.push_str(&String::from_utf8_lossy(&body));
    (request, id)
}

/// Writes `bytes` and reads until the server closes or answers a status line (or 5 s pass);
/// returns the status line, or "" when the connection was closed without an answer.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return "connect failed".into();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    // The server may answer (413, 431) and close before it has read everything.
    let _ = stream.write_all(bytes);
    read_all(&mut stream)
}

fn read_all(stream: &mut TcpStream) -> String {
    let mut text = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
        if text.len() > 64 * 1024 {
            break;
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The status of every response in `answer` ("HTTP/1.1 202"): a pipelined response
/// follows the previous body without a line break.
fn status_lines(answer: &str) -> Vec<String> {
    answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| answer[at..].chars().take(12).collect())
        .collect()
}

/// What the hostile clients saw, by kind.
#[derive(Default)]
struct Seen {
    answers: Mutex<Vec<(&'static str, String)>>,
    hidden_ids: Mutex<Vec<String>>,
    pipelined_ids: Mutex<Vec<String>>,
}

impl Seen {
    /// What the server answered on a connection: its status lines, or "closed".
    fn record(&self, kind: &'static str, answer: &str) {
        let status = status_lines(answer).join(" ");
        self.record_outcome(
            kind,
            if status.is_empty() {
                "closed".into()
            } else {
                status
            },
        );
    }

    fn record_outcome(&self, kind: &'static str, outcome: String) {
        self.answers.lock().unwrap().push((kind, outcome));
    }
}

/// One hostile client: repeats `attack` until the run ends.
fn spawn_attacker(
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicUsize>,
    attack: impl Fn(usize) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            attack(counter.fetch_add(1, Ordering::Relaxed));
        }
    })
}

fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_webhooks_land_through_hostile_traffic() {
    let broker = Broker::start().expect("broker");
    let topic = unique_name("hookfold.webhooks");
    broker.create_topic(&topic, 2).await.expect("topic");
    // The gateway's defaults, but for the topic and the source.
    let config = format!(
        "[kafka]\ntopic = \"{topic}\"\n[[sources]]\nid = \"{SOURCE}\"\nkind = \"buildkite\"\nsecrets = [\"{SECRET}\"]\n"
    );
    let gateway = Gateway::start(&config, &broker.bootstrap, &[])
        .await
        .expect("gateway");
    let pid = gateway.process.pid().expect("gateway pid");
    let addr = gateway.addr;
    let rss_at_start = vm_kib(pid, "VmRSS:").unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Seen::default());
    let mut attackers = Vec::new();
    let mut attack = |attack: Box<dyn Fn(usize) + Send>| {
        attackers.push(spawn_attacker(stop.clone(), counter.clone(), attack));
    };

    // Slowloris: 24 connections, a header byte every 200 ms until the server closes them.
    for _ in 0..24 {
        let (stop, seen) = (stop.clone(), seen.clone());
        attack(Box::new(move |_| {
            let Ok(mut stream) = TcpStream::connect(addr) else {
                return;
            };
            let head = b"POST /webhooks/acme-buildkite HTTP/1.1\r\nHost: x\r\nX-Padding: ";
            let _ = stream.write_all(head);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
            let mut answer = None;
            while !stop.load(Ordering::Relaxed) && answer.is_none() {
                if stream.write_all(b"a").is_err() {
                    answer = Some(String::new());
                    break;
                }
                let mut buf = [0u8; 512];
                match stream.read(&mut buf) {
                    Ok(got) => answer = Some(String::from_utf8_lossy(&buf[..got]).into_owned()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => answer = Some(String::new()),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            match answer {
                Some(answer) => seen.record("slow headers", &answer),
                None => seen.record_outcome("slow headers", "still open at the end".into()),
            }
        }));
    }
    // Slow bodies: 12 connections, valid signed heads, then a body byte every 200 ms.
    for _ in 0..12 {
        let (stop, seen) = (stop.clone(), seen.clone());
        attack(Box::new(move |n| {
            let Ok(mut stream) = TcpStream::connect(addr) else {
                return;
            };
            let body = build_finished(&format!("slow-{n}"), "main", n as u64, "failed");
            let _ = stream.write_all(signed_head(&body, "", true).as_bytes());
            let mut sent = 0;
            let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
            let mut answer = Vec::new();
            while !stop.load(Ordering::Relaxed) && sent < body.len() - 1 {
                if stream.write_all(&body[sent..sent + 1]).is_err() {
                    break;
                }
                sent += 1;
                let mut buf = [0u8; 512];
                if let Ok(got) = stream.read(&mut buf)
                    && got > 0
                {
                    answer.extend_from_slice(&buf[..got]);
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen.record("slow body", &String::from_utf8_lossy(&answer));
        }));
    }
    // Oversized: 10 MiB declared, and 2 MiB actually sent.
    {
        let seen = seen.clone();
        attack(Box::new(move |n| {
            let head = signed_head(
                b"{}",
                "Content-Length: 10485760\r\nConnection: close\r\n",
                false,
            );
            seen.record("10 MiB declared", &exchange(addr, head.as_bytes()));
            let body = vec![b' '; 2 * 1024 * 1024 + n % 7];
            let mut request = signed_head(&body, "Connection: close\r\n", true).into_bytes();
            request.extend_from_slice(&body);
            seen.record("2 MiB sent", &exchange(addr, &request));
        }));
    }
    // Deeply nested JSON, signed: arrays and objects 100,000 deep.
    {
        let seen = seen.clone();
        attack(Box::new(move |n| {
            let depth = 100_000 + n % 3;
            let body = if n % 2 == 0 {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth))
            } else {
                format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
            };
            let mut request =
                signed_head(body.as_bytes(), "Connection: close\r\n", true).into_bytes();
            request.extend_from_slice(body.as_bytes());
            seen.record("nested JSON", &exchange(addr, &request));
        }));
    }
    // 10,000 headers.
    {
        let seen = seen.clone();
        attack(Box::new(move |_| {
            let body = b"{}";
            let extra: String = (0..10_000).map(|i| format!("X-H{i}: {i}\r\n")).collect();
            let mut request = signed_head(body, &extra, true).into_bytes();
            request.extend_from_slice(body);
            seen.record("10,000 headers", &exchange(addr, &request));
        }));
    }
    // Invalid UTF-8: in a header value, and as a signed body.
    {
        let seen = seen.clone();
        attack(Box::new(move |_| {
            let body = b"{\"event\":\"build.finished\",\"x\":\"\xff\xfe\xc3\x28\"}";
            let mut request = signed_head(body, "Connection: close\r\n", true).into_bytes();
            request.extend_from_slice(body);
            seen.record("invalid UTF-8 body", &exchange(addr, &request));
            let request = b"POST /webhooks/acme-buildkite HTTP/1.1\r\nHost: x\r\nX-Buildkite-Event: build.\xff\xfe\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec();
            seen.record("invalid UTF-8 header", &exchange(addr, &request));
        }));
    }
    // Smuggling: each hides a valid signed request that must never be taken as one.
    {
        let seen = seen.clone();
        attack(Box::new(move |n| {
            let (hidden, id) = hidden_request(n);
            seen.hidden_ids.lock().unwrap().push(id);
            let body = b"0\r\n\r\n";
            // CL.TE: a front end honouring Content-Length would pass the hidden request on.
            let mut request = signed_head(
                body,
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    body.len() + hidden.len()
                ),
                false,
            )
            .into_bytes();
            request.extend_from_slice(body);
            request.extend_from_slice(hidden.as_bytes());
            seen.record("CL + TE", &exchange(addr, &request));
            // Two Content-Lengths that disagree.
            let mut request = signed_head(
                b"{}",
                &format!(
                    "Content-Length: 2\r\nContent-Length: {}\r\n",
                    2 + hidden.len()
                ),
                false,
            )
            .into_bytes();
            request.extend_from_slice(b"{}");
            request.extend_from_slice(hidden.as_bytes());
            seen.record("two Content-Lengths", &exchange(addr, &request));
            // Transfer-Encoding hidden behind an obsolete line folding.
            let mut request = signed_head(
                b"{}",
                "X-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
                false,
            )
            .into_bytes();
            request.extend_from_slice(b"{}");
            seen.record("folded header", &exchange(addr, &request));
            // Chunked with a chunk-size that overflows.
            let mut request =
                signed_head(b"", "Transfer-Encoding: chunked\r\n", false).into_bytes();
            request.extend_from_slice(b"ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n");
            seen.record("overflowing chunk size", &exchange(addr, &request));
        }));
    }
    // Pipelining: two valid requests in one write; both must land.
    {
        let seen = seen.clone();
        attack(Box::new(move |n| {
            let mut bytes = Vec::new();
            let mut ids = Vec::new();
            for k in 0..2 {
                let body =
                    build_finished(&format!("pipelined-{n}-{k}"), "main", n as u64, "failed");
                ids.push(event_id(SOURCE, "build.finished", &body, None));
                bytes.extend_from_slice(
                    signed_head(
                        &body,
                        if k == 1 { "Connection: close\r\n" } else { "" },
                        true,
                    )
                    .as_bytes(),
                );
                bytes.extend_from_slice(&body);
            }
            let answer = exchange(addr, &bytes);
            if status_lines(&answer)
                .iter()
                .filter(|s| s.contains("202"))
                .count()
                == 2
            {
                seen.pipelined_ids.lock().unwrap().extend(ids);
            }
            seen.record("pipelined pair", &answer);
        }));
    }

    // Valid traffic: signed requests over 8 keep-alive connections for the whole run.
    let valid_started = Instant::now();
    let valid: Vec<_> = (0..8)
        .map(|worker| {
            let url = gateway.webhook_url(SOURCE);
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut answers = Vec::new();
                let mut n = 0u64;
                while valid_started.elapsed() < RUN {
                    let body = build_finished(&format!("valid-{worker}"), "main", n, "failed");
                    n += 1;
                    let expected = event_id(SOURCE, "build.finished", &body, None);
                    let sent = Instant::now();
                    let status =
                        match buildkite_signed(client.post(&url), SECRET, "build.finished", &body)
                            .send()
                            .await
                        {
                            Ok(response) => response.status().as_u16(),
                            Err(_) => 0,
                        };
                    answers.push((status, expected, sent.elapsed()));
                }
                answers
            })
        })
        .collect();

    // Memory, sampled while it runs.
    let mut peak_rss = rss_at_start;
    while valid_started.elapsed() < RUN {
        peak_rss = peak_rss.max(vm_kib(pid, "VmRSS:").unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = Vec::new();
    for worker in valid {
        answers.extend(worker.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || {
        for attacker in attackers {
            attacker.join().unwrap();
        }
    })
    .await
    .unwrap();
    let hwm = vm_kib(pid, "VmHWM:").unwrap_or(0);

    // The valid requests: every one a 202, and on the topic.
    let refused: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status != 202)
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {} valid requests were not answered 202, e.g. {:?}",
        refused.len(),
        answers.len(),
        refused.first()
    );
    assert!(
        answers.len() > 200,
        "only {} valid requests in {RUN:?}",
        answers.len()
    );
    let records = broker.read_all(&topic).expect("reading the topic");
    let on_topic: HashSet<String> = records
        .iter()
        .map(|r| headers_of(r).get("ce_id").cloned().unwrap_or_default())
        .collect();
    let missing = answers
        .iter()
        .filter(|(_, id, _)| !on_topic.contains(id))
        .count();
    assert_eq!(
        missing, 0,
        "valid requests answered 202 but not on the topic"
    );
    let pipelined = seen.pipelined_ids.lock().unwrap().clone();
    assert!(
        !pipelined.is_empty(),
        "no pipelined pair was answered twice 202"
    );
    assert!(
        pipelined.iter().all(|id| on_topic.contains(id)),
        "a pipelined 202 is not on the topic"
    );
    // Nothing hostile landed: no hidden request, no body of a hostile client.
    let hidden = seen.hidden_ids.lock().unwrap().clone();
    let smuggled: Vec<_> = hidden.iter().filter(|id| on_topic.contains(*id)).collect();
    assert!(
        smuggled.is_empty(),
        "{} smuggled request(s) landed",
        smuggled.len()
    );
    for record in &records {
        let body = String::from_utf8_lossy(record.payload().unwrap_or_default());
        assert!(
            body.contains("\"valid-") || body.contains("\"pipelined-"),
            "a record no valid request sent: {}",
            body.chars().take(200).collect::<String>()
        );
    }

    // Every hostile request got an answer of its kind (or the connection was closed), and
    // none a 2xx.
    let hostile = seen.answers.lock().unwrap().clone();
    for (kind, status) in &hostile {
        if *kind == "pipelined pair" {
            continue;
        }
        assert!(!status.contains(" 2"), "{kind} got {status}");
    }
    // Memory stayed bounded, and the gateway still serves.
    assert!(hwm < RSS_LIMIT_KIB, "peak RSS {hwm} KiB");
    let client = reqwest::Client::new();
    let body = build_finished("valid-after", "main", 1, "failed");
    let response = buildkite_signed(
        client.post(gateway.webhook_url(SOURCE)),
        SECRET,
        "build.finished",
        &body,
    )
    .send()
    .await
    .expect("the gateway answers after the attack");
    assert_eq!(response.status(), 202);

    let mut by_kind: std::collections::BTreeMap<(&str, String), usize> = Default::default();
    for (kind, status) in hostile {
        *by_kind.entry((kind, status)).or_default() += 1;
    }
    let mut latencies: Vec<f64> = answers
        .iter()
        .map(|(_, _, l)| l.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    eprintln!(
        "hostile traffic for {RUN:?}: {} valid requests, all 202 and on the topic \
         (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms), {} pipelined requests landed, {} smuggled \
         requests hidden and none landed; gateway RSS {} KiB at the start, {} KiB peak \
         sampled, VmHWM {} KiB; hostile answers: {:?}",
        answers.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(0.0),
        pipelined.len(),
        hidden.len(),
        rss_at_start,
        peak_rss,
        hwm,
        by_kind
    );
}
