//! `hookfold-processor view` against a real broker, over real HTTP: its API agrees with a
//! fold of the incident topic (filters included) and returns an incident's whole history
//! in order; it says it is not ready while cut off from the brokers, or started while they
//! are down, and recovers by itself.

use std::collections::BTreeMap;
use std::time::Duration;

use hookfold_proto::Message as _;
use hookfold_proto::v1::IncidentEvent;
use hookfold_tests::comparisons::open_by_fold;
use hookfold_tests::records::{mixed_story, produce};
use hookfold_tests::view::View;
use hookfold_tests::{Broker, Processor, Topics};
use rdkafka::Message as _;
use serde_json::Value;

/// The processor the views read from: ticks on as a user runs it, agent incidents opening
/// at once (these tests are about what the views show, not about grace periods).
async fn start_processor(t: &Topics, broker: &Broker, dir: &std::path::Path) -> Processor {
    t.processor(broker, dir)
        .with_ticks()
        .without_grace()
        .extra(ROUTES)
        .start()
        .await
        .unwrap()
}

/// Two teams: the pipelines `pipeline-1*` are platform's, the agents ci-infra's.
const ROUTES: &str = r#"
[[rules.routes]]
name = "platform"
pipelines = ["pipeline-1*"]
labels = { team = "platform", service = "ci" }

[[rules.routes]]
name = "fleet"
kinds = ["agent"]
labels = { team = "ci-infra" }
"#;

fn keys(listed: &Value) -> Vec<String> {
    listed
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|e| e["dedupKey"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_agrees_with_the_incident_topic_and_gives_the_history_in_order() {
    const EVENTS: usize = 600;
    let broker = Broker::start().unwrap();
    let t = Topics::create(&broker, 3).await.unwrap();
    produce(&broker.bootstrap, &t.webhooks, &mixed_story(EVENTS, 0x71e))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = start_processor(&t, &broker, dir.path()).await;
    processor
        .wait_committed(EVENTS as i64, Duration::from_secs(120))
        .await
        .unwrap();
    let incidents = broker.read_all(&t.incidents).unwrap();
    let open = open_by_fold(&incidents).unwrap();
    assert!(
        open.len() > 3,
        "the story leaves incidents open: {}",
        open.len()
    );

    let view = View::start(&processor, "view").unwrap();
    view.wait_readyz(200, Duration::from_secs(30))
        .await
        .unwrap();

    // Everything open, most severe first, then oldest.
    let (status, listed) = view.get_json("/api/incidents").await.unwrap();
    assert_eq!(status, 200);
    let mut expected: Vec<&IncidentEvent> = open.values().collect();
    expected.sort_by(|a, b| {
        let since = |e: &IncidentEvent| e.created_at.map(|t| (t.seconds, t.nanos));
        b.severity
            .cmp(&a.severity)
            .then_with(|| since(a).cmp(&since(b)))
            .then_with(|| a.dedup_key.cmp(&b.dedup_key))
    });
    let expected_keys: Vec<String> = expected.iter().map(|e| e.dedup_key.clone()).collect();
    assert_eq!(keys(&listed), expected_keys);
    // The same events the incident topic's fold has, field for field.
    for (item, event) in listed.as_array().unwrap().iter().zip(&expected) {
        assert_eq!(item, &hookfold_proto::json::incident_to_json(event));
    }

    // Filters: by kind, by minimum severity, by prefix, by source.
    let agent_kind = hookfold_proto::v1::EntityKind::Agent as i32;
    let agents: Vec<String> = expected
        .iter()
        .filter(|e| e.entity.as_ref().is_some_and(|x| x.kind == agent_kind))
        .map(|e| e.dedup_key.clone())
        .collect();
    assert!(!agents.is_empty());
    let (_, by_kind) = view.get_json("/api/incidents?kind=agent").await.unwrap();
    assert_eq!(keys(&by_kind), agents);
    let error = hookfold_proto::v1::Severity::Error as i32;
    let severe: Vec<String> = expected
        .iter()
        .filter(|e| e.severity >= error)
        .map(|e| e.dedup_key.clone())
        .collect();
    let (_, by_severity) = view
        .get_json("/api/incidents?severity=error")
        .await
        .unwrap();
    assert_eq!(keys(&by_severity), severe);
    let prefix = agents[0].rsplit_once('/').unwrap().0.to_owned() + "/";
    let (_, by_prefix) = view
        .get_json(&format!("/api/incidents?prefix={prefix}"))
        .await
        .unwrap();
    assert_eq!(
        keys(&by_prefix),
        expected_keys
            .iter()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect::<Vec<_>>()
    );
    let (_, none) = view
        .get_json("/api/incidents?source=no-such-source")
        .await
        .unwrap();
    assert_eq!(keys(&none), Vec::<String>::new());
    // By label: each team's incidents, as their routes say (and `incidents --label`).
    for (team, route) in [("platform", "platform"), ("ci-infra", "fleet")] {
        let owned: Vec<String> = expected
            .iter()
            .filter(|e| e.labels.get("team").map(String::as_str) == Some(team))
            .map(|e| e.dedup_key.clone())
            .collect();
        assert!(!owned.is_empty(), "{team} owns nothing open");
        assert!(
            expected
                .iter()
                .filter(|e| owned.contains(&e.dedup_key))
                .all(|e| e.route == route)
        );
        let (_, by_label) = view
            .get_json(&format!("/api/incidents?label=team={team}"))
            .await
            .unwrap();
        assert_eq!(keys(&by_label), owned, "{team}");
        assert_eq!(
            processor
                .listed_incidents(&["--label", &format!("team={team}")])
                .unwrap(),
            owned
        );
        // The page with the same query: its rows are the team's, with their labels shown.
        let page = reqwest::get(format!("{}/?label=team={team}", view.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let rows: Vec<&str> = page
            .split("data-dedup-key=\"")
            .skip(1)
            .filter_map(|row| row.split('"').next())
            .collect();
        assert_eq!(rows, owned, "{team}");
        assert!(page.contains(&format!("team={team}")), "{team}");
    }
    // Agents are ci-infra's, platform's pipelines are those the route names, the rest no one's.
    for event in &expected {
        let kind = event.entity.as_ref().map(|e| e.kind);
        let team = event.labels.get("team").map(String::as_str);
        let platform = event.dedup_key.contains("/pipeline/pipeline-1");
        match (kind == Some(agent_kind), platform) {
            (true, _) => assert_eq!(team, Some("ci-infra"), "{}", event.dedup_key),
            (false, true) => assert_eq!(team, Some("platform"), "{}", event.dedup_key),
            (false, false) => assert!(event.labels.is_empty(), "{}", event.dedup_key),
        }
    }
    let (_, both) = view
        .get_json("/api/incidents?label=team=platform,service=ci")
        .await
        .unwrap();
    let (_, platform) = view
        .get_json("/api/incidents?label=team=platform")
        .await
        .unwrap();
    assert_eq!(keys(&both), keys(&platform));
    let (_, nobody) = view
        .get_json("/api/incidents?label=team=platform,service=other")
        .await
        .unwrap();
    assert!(keys(&nobody).is_empty());
    let (status, refused) = view.get_json("/api/incidents?label=team").await.unwrap();
    assert_eq!(status, 400);
    assert!(refused["error"].as_str().unwrap().contains("label=value"));

    let (status, refused) = view.get_json("/api/incidents?kind=build").await.unwrap();
    assert_eq!(status, 400);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("is not pipeline")
    );

    // One incident's history: every event of its dedup key on the incident topic, in order
    // (one with several events, to make the order matter).
    let mut history: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in &incidents {
        let event = IncidentEvent::decode(record.payload().unwrap()).unwrap();
        history
            .entry(event.dedup_key.clone())
            .or_default()
            .push(hookfold_proto::json::incident_to_json(&event));
    }
    let (key, events) = history
        .iter()
        .filter(|(key, _)| open.contains_key(*key))
        .max_by_key(|(_, events)| events.len())
        .unwrap();
    assert!(events.len() >= 2, "{key}: {} events", events.len());
    let (status, one) = view
        .get_json(&format!("/api/incidents/{key}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["dedupKey"], Value::String(key.clone()));
    assert_eq!(&one["history"], &Value::Array(events.clone()));
    assert_eq!(
        one["open"],
        hookfold_proto::json::incident_to_json(&open[key])
    );
    let (status, _) = view
        .get_json("/api/incidents/buildkite/nobody/agent/none")
        .await
        .unwrap();
    assert_eq!(status, 404);
    let metrics = reqwest::get(format!("{}/metrics", view.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("hookfold_view_open_incidents {}", open.len())),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_cut_off_from_the_brokers_is_not_ready_and_recovers() {
    let mut broker = Broker::own().unwrap();
    let t = Topics::create(&broker, 2).await.unwrap();
    produce(&broker.bootstrap, &t.webhooks, &mixed_story(100, 0x5ee))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = start_processor(&t, &broker, dir.path()).await;
    processor
        .wait_committed(100, Duration::from_secs(120))
        .await
        .unwrap();
    let view = View::start(&processor, "view").unwrap();
    view.wait_readyz(200, Duration::from_secs(30))
        .await
        .unwrap();
    let (_, before) = view.get_json("/api/incidents").await.unwrap();
    assert!(!keys(&before).is_empty());

    // Cut off: not ready, with the reason, but still serving the last copy.
    broker.cluster().unwrap().node(1).unwrap().kill();
    view.wait_readyz(503, Duration::from_secs(30))
        .await
        .unwrap();
    let reason = reqwest::get(format!("{}/readyz", view.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        reason.starts_with("not ready") && reason.to_lowercase().contains("broker"),
        "{reason}"
    );
    let (_, during) = view.get_json("/api/incidents").await.unwrap();
    assert_eq!(keys(&during), keys(&before));
    // A view started while the brokers are down says so too.
    let late = View::start(&processor, "late-view").unwrap();
    late.wait_readyz(503, Duration::from_secs(30))
        .await
        .unwrap();

    broker.restart_node(1).unwrap();
    view.wait_readyz(200, Duration::from_secs(60))
        .await
        .unwrap();
    late.wait_readyz(200, Duration::from_secs(60))
        .await
        .unwrap();
    let (_, after) = late.get_json("/api/incidents").await.unwrap();
    assert_eq!(keys(&after), keys(&before));
}

/// The page in headless Chromium (Debian's, driven by playwright-core): it lists what the
/// API lists, in the same order, with the incidents' own links; a new incident appears and
/// a resolved one disappears within 5 s without a reload; nothing is fetched from
/// anywhere but the view. The screenshot is kept under the target directory
/// (docs/view.png is one of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_chromium_lists_the_open_incidents_and_follows_them_live() {
    use hookfold_tests::webhooks::{agent_event, build_finished};
    use std::io::{BufRead, Write};

    const SECRET: &str = "bk-view-secret";
    let broker = Broker::start().unwrap();
    let t = Topics::create(&broker, 3).await.unwrap();
    let gateway =
        hookfold_tests::Gateway::buildkite(&broker.bootstrap, &t.webhooks, "acme-bk", SECRET)
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut processor = start_processor(&t, &broker, dir.path()).await;
    let mut posted = 0;
    let mut post = async |event: &str, body: Vec<u8>| {
        gateway
            .post_buildkite("acme-bk", SECRET, event, &body)
            .await
            .unwrap();
        posted += 1;
        posted
    };
    post("build.finished", build_finished("api", "main", 3, "failed")).await;
    post("build.finished", build_finished("web", "main", 8, "failed")).await;
    let n = post("agent.lost", agent_event("agent.lost", "ci-7", "id-1")).await;
    processor
        .wait_committed(n, Duration::from_secs(60))
        .await
        .unwrap();
    let view = View::start(&processor, "view").unwrap();
    view.wait_readyz(200, Duration::from_secs(30))
        .await
        .unwrap();
    let (_, listed) = view.get_json("/api/incidents").await.unwrap();
    assert_eq!(keys(&listed).len(), 3, "{listed}");

    let node_modules = std::env::var("HOOKFOLD_NODE_MODULES").unwrap_or_else(|_| {
        format!(
            "{}/.cache/hookfold/node/node_modules",
            std::env::var("HOME").unwrap()
        )
    });
    assert!(
        std::path::Path::new(&node_modules)
            .join("playwright-core")
            .exists(),
        "playwright-core is not in {node_modules}: run scripts/install-tools.sh"
    );
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("view.png");
    let mut browser = std::process::Command::new("node")
        .arg(hookfold_tests::manifest_dir().join("browser/page.cjs"))
        .arg(format!("{}/", view.url))
        .arg(&screenshot)
        .env("NODE_PATH", &node_modules)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (install-tools installs Node.js)");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut next_line = |what: &str| -> String {
        lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let mut err = String::new();
                if let Some(mut stderr) = browser.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
                }
                panic!("no {what} from the browser: {err}")
            })
    };
    let first: Value = serde_json::from_str(&next_line("rows")).unwrap();
    assert_eq!(next_line("READY"), "READY");
    let page_keys: Vec<String> = first["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dedupKey"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        page_keys,
        keys(&listed),
        "the page lists what the API lists"
    );
    for (row, incident) in first["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(listed.as_array().unwrap())
    {
        let wanted: Vec<&Value> = incident["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["url"])
            .collect();
        let shown: Vec<&Value> = row["links"].as_array().unwrap().iter().collect();
        assert_eq!(shown, wanted, "the links of {}", incident["dedupKey"]);
    }
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|i| !i["links"].as_array().unwrap().is_empty()),
        "the builds' incidents have links to compare: {listed}"
    );
    assert_eq!(
        first["external"],
        Value::Array(vec![]),
        "nothing fetched from elsewhere"
    );

    // Live: web's build passes (its incident resolves), another agent is lost (a new one).
    post("build.finished", build_finished("web", "main", 9, "passed")).await;
    post("agent.lost", agent_event("agent.lost", "ci-8", "id-8")).await;
    let stdin = browser.stdin.as_mut().unwrap();
    writeln!(
        stdin,
        "{}",
        serde_json::json!({
            "appear": "buildkite/acme-bk/agent/ci-8",
            "disappear": "buildkite/acme-bk/pipeline/web/branch/main",
        })
    )
    .unwrap();
    let changed: Value = serde_json::from_str(&next_line("the change")).unwrap();
    assert_eq!(changed["reloaded"], Value::Bool(false), "{changed}");
    assert_eq!(changed["external"], Value::Array(vec![]), "{changed}");
    eprintln!(
        "the page showed the change {} ms after the webhooks were accepted; screenshot: {}",
        changed["changed_ms"],
        screenshot.display()
    );
    assert!(browser.wait().unwrap().success());
}
