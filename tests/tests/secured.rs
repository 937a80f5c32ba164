//! The gateway and the processor against a secured Apache Kafka (issue 10): `SASL_SSL`
//! with SCRAM-SHA-512, `SASL_SSL` with OAUTHBEARER (OIDC client credentials from a test
//! identity provider) and mutual TLS give the same incidents as plaintext, and wrong
//! credentials, an unknown user, a wrong client secret, a CA that does not match and a
//! plaintext client on the TLS port each fail clearly without a secret in any log line.
//!
//! Each test starts its own broker with secured listeners (never `KAFKA_BOOTSTRAP_SERVERS`:
//! the users and certificates are the test's own); the harness itself reads and creates
//! topics over the broker's plaintext listener.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use hookfold_proto::Message as _;
use hookfold_proto::v1::IncidentEvent;
use hookfold_tests::broker::SecuredBroker;
use hookfold_tests::webhooks::{agent_event, build_finished, buildkite_signed};
use hookfold_tests::{Broker, Gateway, Processor, Topics, wait_until};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

const BK_SECRET: &str = "29b1ff5779c76bd48ba6705eb99ff970";
const GATEWAY_USER: (&str, &str) = ("hookfold-gateway", "gw-pass-3f9a1c7e");
const PROCESSOR_USER: (&str, &str) = ("hookfold-processor", "proc-pass-81bd2e44");

/// How one binary connects: its bootstrap servers, its `[kafka.security]` tables, and the
/// environment that carries its secret.
struct Connection {
    bootstrap: String,
    security: String,
    env: Vec<(String, String)>,
    /// The Kafka principal it authenticates as (none on plaintext).
    principal: Option<String>,
}

impl Connection {
    fn plaintext(broker: &Broker) -> Self {
        Self {
            bootstrap: broker.bootstrap.clone(),
            security: String::new(),
            env: Vec::new(),
            principal: None,
        }
    }

    /// SCRAM-SHA-512 over TLS, the password from an environment variable.
    fn scram(secured: &SecuredBroker, (user, password): (&str, &str)) -> Self {
        let var = format!("KAFKA_PASSWORD_{}", user.replace('-', "_").to_uppercase());
        Self {
            bootstrap: secured.sasl_ssl.clone(),
            security: format!(
                "[kafka.security]\nprotocol = \"sasl_ssl\"\nca_file = \"{}\"\n[kafka.security.sasl]\nmechanism = \"scram-sha-512\"\nusername = \"{user}\"\npassword_env = \"{var}\"\n",
                secured.ca.ca_file.display()
            ),
            env: vec![(var, password.to_owned())],
            principal: Some(format!("User:{user}")),
        }
    }

    /// OAUTHBEARER over TLS: OIDC client credentials from the test identity provider, the
    /// client secret from a file.
    fn oauth(secured: &SecuredBroker, (client_id, secret): (&str, &str)) -> Self {
        let secret_file = secured.certs.join(format!("{client_id}-{secret}.secret"));
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        Self {
            bootstrap: secured.sasl_ssl.clone(),
            security: format!(
                "[kafka.security]\nprotocol = \"sasl_ssl\"\nca_file = \"{}\"\n[kafka.security.sasl]\nmechanism = \"oauthbearer\"\ntoken_endpoint_url = \"{}\"\nclient_id = \"{client_id}\"\nclient_secret_file = \"{}\"\nscope = \"kafka\"\n",
                secured.ca.ca_file.display(),
                secured.idp.token_endpoint,
                secret_file.display()
            ),
            env: Vec::new(),
            // The broker maps the token's `sub` (the client id) to User:<sub>.
            principal: Some(format!("User:{client_id}")),
        }
    }

    /// Mutual TLS only: a client certificate from the cluster's CA, no SASL.
    fn mtls(secured: &SecuredBroker, common_name: &str) -> Self {
        let client = secured.ca.client(common_name).expect("client certificate");
        Self {
            bootstrap: secured.ssl.clone(),
            security: format!(
                "[kafka.security]\nprotocol = \"ssl\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                secured.ca.ca_file.display(),
                client.cert.display(),
                client.key.display()
            ),
            env: Vec::new(),
            // The broker maps CN=<name> to User:<name>.
            principal: Some(format!("User:{common_name}")),
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([("HOOKFOLD_KAFKA__BOOTSTRAP_SERVERS", self.bootstrap.as_str())])
            .collect()
    }
}

/// A processor for topics `t`, connected as `connection`, configured but not started.
fn processor_for(t: &Topics, broker: &Broker, dir: &Path, connection: &Connection) -> Processor {
    // Ticks on: the processor then writes to the webhook topic too, with the printed ACLs.
    let mut setup = t
        .processor(broker, dir)
        .with_ticks()
        .extra(&connection.security);
    for (key, value) in connection.env() {
        setup = setup.env(key, value);
    }
    setup.configure().unwrap()
}

/// Starts `processor` and waits for it to exit, at most `timeout`; its exit status.
async fn exit_of(processor: &mut Processor, timeout: Duration, what: &str) -> ExitStatus {
    // A start that fails fast may exit before serving /metrics: that is what is waited for.
    let _ = processor.restart().await;
    hookfold_tests::wait_for(what, timeout, || processor.process.exited()).unwrap_or_else(|e| {
        panic!(
            "{e}: the processor still runs:\n{}",
            processor.process.output()
        )
    })
}

fn gateway_config(topic: &str, connection: &Connection) -> String {
    format!(
        "[kafka]\ntopic = \"{topic}\"\n{}\n[[sources]]\nid = \"acme-bk\"\nkind = \"buildkite\"\nsecrets = [\"{BK_SECRET}\"]\n",
        connection.security
    )
}

/// The demo's story: builds failing and passing, a stale one, an agent lost and back.
fn story() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "build.finished",
            build_finished("web", "main", 41, "passed"),
        ),
        (
            "build.finished",
            build_finished("web", "main", 42, "failed"),
        ),
        (
            "build.finished",
            build_finished("web", "main", 43, "failed"),
        ),
        (
            "build.finished",
            build_finished("web", "main", 44, "passed"),
        ),
        (
            "build.finished",
            build_finished("web", "main", 40, "failed"),
        ),
        ("agent.lost", agent_event("agent.lost", "ci-7", "id-1")),
        (
            "agent.connected",
            agent_event("agent.connected", "ci-7", "id-2"),
        ),
        ("build.finished", build_finished("api", "main", 9, "failed")),
    ]
}

/// The story through a gateway and a processor connected as given, on fresh topics;
/// returns the incident records (read back over plaintext) and both logs.
/// The ACLs `hookfold-gateway --print-acls` prints for this configuration.
fn gateway_acls(config: &str, connection: &Connection, principal: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(hookfold_tests::workspace_binary("hookfold-gateway"))
        .arg("--config")
        .arg(&path)
        .args(["--print-acls", principal])
        .envs(connection.env())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

async fn run_story(
    secured: &mut SecuredBroker,
    gateway_connection: &Connection,
    processor_connection: &Connection,
) -> (Vec<OwnedMessage>, String) {
    let t = Topics::create(&secured.broker, 3).await.unwrap();
    let broker = &secured.broker;
    let dir = tempfile::tempdir().unwrap();
    let mut processor = processor_for(&t, broker, dir.path(), processor_connection);
    // Exactly what the binaries say they need: with less, the run below fails.
    let mut grants = Vec::new();
    if let Some(principal) = &gateway_connection.principal {
        grants.push(gateway_acls(
            &gateway_config(&t.webhooks, gateway_connection),
            gateway_connection,
            principal,
        ));
    }
    if let Some(principal) = &processor_connection.principal {
        let output = processor
            .command(&["acls", "--principal", principal], &[])
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        grants.push(String::from_utf8(output.stdout).unwrap());
    }
    for script in &grants {
        secured.grant(script).unwrap();
    }
    let broker = &secured.broker;
    let gateway = Gateway::start(
        &gateway_config(&t.webhooks, gateway_connection),
        &gateway_connection.bootstrap,
        &gateway_connection.env(),
    )
    .await
    .unwrap();
    processor.restart().await.unwrap();
    let client = reqwest::Client::new();
    let url = gateway.webhook_url("acme-bk");
    let events = story();
    for (event, body) in &events {
        let response = buildkite_signed(client.post(&url), BK_SECRET, event, body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            202,
            "{}\n{}",
            response.text().await.unwrap_or_default(),
            gateway.process.output()
        );
    }
    processor
        .wait_committed(events.len() as i64, Duration::from_secs(60))
        .await
        .unwrap();
    let records = broker.read_all(&t.incidents).unwrap();
    processor
        .process
        .terminate(Duration::from_secs(30))
        .unwrap();
    let logs = format!(
        "{}\n{}",
        gateway.process.output(),
        processor.process.output()
    );
    (records, logs)
}

/// The incident events of a run by event id, without what differs between two runs of
/// the same story on other topics at another time: the receipt times (`occurred_at`,
/// `created_at` come from `ce_time`) and the input position (`cause`).
fn comparable(records: &[OwnedMessage]) -> Vec<IncidentEvent> {
    let mut events: Vec<IncidentEvent> = records
        .iter()
        .map(|r| {
            let mut event = IncidentEvent::decode(r.payload().unwrap_or_default()).unwrap();
            event.occurred_at = None;
            event.created_at = None;
            event.cause = None;
            event
        })
        .collect();
    events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    events
}

fn assert_same_story(reference: &[OwnedMessage], actual: &[OwnedMessage]) {
    let (reference, actual) = (comparable(reference), comparable(actual));
    assert_eq!(actual, reference, "the secured run's incidents differ");
}

fn assert_no_secret(logs: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !logs.contains(secret),
            "a log line holds the secret {secret:?}:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_over_tls_gives_the_same_incidents_as_plaintext() {
    let mut secured = Broker::own_secured(&[GATEWAY_USER, PROCESSOR_USER]).unwrap();
    let plaintext = Connection::plaintext(&secured.broker);
    let (reference, _) = run_story(&mut secured, &plaintext, &plaintext).await;
    let (gateway, mut processor) = (
        Connection::scram(&secured, GATEWAY_USER),
        Connection::scram(&secured, PROCESSOR_USER),
    );
    // Under exactly_once: its transactional ids are among the ACLs it prints, and enough.
    processor.env.push((
        "HOOKFOLD_PROCESSING__GUARANTEE".into(),
        "exactly_once".into(),
    ));
    let (records, logs) = run_story(&mut secured, &gateway, &processor).await;
    assert_same_story(&reference, &records);
    assert!(
        logs.contains("transactional producer ready"),
        "the secured processor ran exactly_once:\n{logs}"
    );
    assert_no_secret(&logs, &[GATEWAY_USER.1, PROCESSOR_USER.1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_with_oidc_gives_the_same_incidents_as_plaintext() {
    let mut secured = Broker::own_secured(&[GATEWAY_USER, PROCESSOR_USER]).unwrap();
    let plaintext = Connection::plaintext(&secured.broker);
    let (reference, _) = run_story(&mut secured, &plaintext, &plaintext).await;
    assert_eq!(secured.idp.issued(), 0);
    let (gateway, processor) = (
        Connection::oauth(&secured, GATEWAY_USER),
        Connection::oauth(&secured, PROCESSOR_USER),
    );
    let (records, logs) = run_story(&mut secured, &gateway, &processor).await;
    assert_same_story(&reference, &records);
    // Both binaries fetched their tokens from the identity provider (not, say, librdkafka's
    // unsecured test tokens, which the broker would refuse anyway).
    assert!(secured.idp.issued() >= 2, "{} tokens", secured.idp.issued());
    assert_no_secret(&logs, &[GATEWAY_USER.1, PROCESSOR_USER.1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_without_sasl_gives_the_same_incidents_as_plaintext() {
    let mut secured = Broker::own_secured(&[]).unwrap();
    let plaintext = Connection::plaintext(&secured.broker);
    let (reference, _) = run_story(&mut secured, &plaintext, &plaintext).await;
    let (gateway, processor) = (
        Connection::mtls(&secured, "hookfold-gateway"),
        Connection::mtls(&secured, "hookfold-processor"),
    );
    let (records, _) = run_story(&mut secured, &gateway, &processor).await;
    assert_same_story(&reference, &records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_clearly_and_leak_nothing() {
    let secured = Broker::own_secured(&[GATEWAY_USER, PROCESSOR_USER]).unwrap();
    let broker = &secured.broker;
    let t = Topics::create(broker, 3).await.unwrap();
    let other_ca = hookfold_tests::certs::TestCa::new(&secured.certs, "other").unwrap();
    let mut wrong_ca = Connection::scram(&secured, GATEWAY_USER);
    wrong_ca.security = wrong_ca.security.replace(
        &secured.ca.ca_file.display().to_string(),
        &other_ca.ca_file.display().to_string(),
    );
    let mut plaintext_on_tls = Connection::plaintext(broker);
    plaintext_on_tls.bootstrap = secured.ssl.clone();
    let cases = [
        (
            "a wrong password",
            Connection::scram(&secured, (GATEWAY_USER.0, "not-the-password-0")),
            "Authentication failed",
        ),
        (
            "an unknown user",
            Connection::scram(&secured, ("nobody-here", "nobody-pass-77")),
            "Authentication failed",
        ),
        (
            "a wrong OIDC client secret",
            Connection::oauth(&secured, (GATEWAY_USER.0, "not-the-client-secret-5")),
            "invalid_client",
        ),
        (
            "a CA that does not match",
            wrong_ca,
            "certificate verify failed",
        ),
        (
            "a plaintext client on the TLS port",
            plaintext_on_tls,
            "check kafka.security.protocol",
        ),
    ];
    let client = reqwest::Client::new();
    for (what, connection, cause) in &cases {
        // The gateway: not ready, and 503 for a webhook, within 30 s.
        let gateway = Gateway::start(
            &gateway_config(&t.webhooks, connection),
            &connection.bootstrap,
            &connection.env(),
        )
        .await
        .unwrap();
        let readyz = format!("{}/readyz", gateway.url);
        wait_until(
            &format!("{what}: /readyz 503"),
            Duration::from_secs(30),
            async || {
                let refused = client
                    .get(&readyz)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 503);
                Ok(refused.then_some(()))
            },
        )
        .await
        .unwrap();
        let body = build_finished("web", "main", 1, "failed");
        let response = buildkite_signed(
            client.post(gateway.webhook_url("acme-bk")),
            BK_SECRET,
            "build.finished",
            &body,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 503, "{what}");
        hookfold_tests::wait_for(
            &format!("{what}: the gateway to say {cause:?}"),
            Duration::from_secs(30),
            || gateway.process.output().contains(cause).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}:\n{}", gateway.process.output()));

        // The processor: exits non-zero within 30 s, having consumed nothing.
        let dir = tempfile::tempdir().unwrap();
        let mut processor = processor_for(&t, broker, dir.path(), connection);
        let started = Instant::now();
        let status = exit_of(
            &mut processor,
            Duration::from_secs(30),
            &format!("{what}: the processor to exit"),
        )
        .await;
        let output = processor.process.output();
        assert!(!status.success(), "{what}: exited {status}\n{output}");
        eprintln!(
            "{what}: the processor exited ({status}) after {:.1?}: {}",
            started.elapsed(),
            output.lines().last().unwrap_or_default()
        );
        assert!(
            output.contains(cause),
            "{what}: the processor does not say {cause:?}:\n{output}"
        );
        let logs = format!("{}\n{output}", gateway.process.output());
        assert_no_secret(
            &logs,
            &[
                GATEWAY_USER.1,
                PROCESSOR_USER.1,
                "not-the-password-0",
                "nobody-pass-77",
                "not-the-client-secret-5",
            ],
        );
    }
    // Nothing reached the topic.
    assert!(broker.read_all(&t.webhooks).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_acls_are_named_and_nothing_is_half_written() {
    let mut secured = Broker::own_secured(&[GATEWAY_USER, PROCESSOR_USER]).unwrap();
    let t = Topics::create(&secured.broker, 3).await.unwrap();
    // Work waiting for the processor, written by the harness (plaintext, a super user).
    let waiting = hookfold_tests::records::mixed_story(50, 7);
    hookfold_tests::records::produce(&secured.broker.bootstrap, &t.webhooks, &waiting)
        .await
        .unwrap();

    // The processor may do everything but read its group.
    let processor_connection = Connection::scram(&secured, PROCESSOR_USER);
    let dir = tempfile::tempdir().unwrap();
    let mut processor = processor_for(&t, &secured.broker, dir.path(), &processor_connection);
    let output = processor
        .command(&["acls", "--principal", "User:hookfold-processor"], &[])
        .unwrap();
    let script: String = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| !line.contains("--group"))
        .map(|line| format!("{line}\n"))
        .collect();
    secured.grant(&script).unwrap();
    let started = Instant::now();
    let status = exit_of(
        &mut processor,
        Duration::from_secs(60),
        "the processor without its group ACL to exit",
    )
    .await;
    let output = processor.process.output();
    assert!(!status.success(), "{output}");
    let last = output.lines().last().unwrap_or_default();
    assert!(
        last.contains("Group authorization failed") && last.contains("hookfold-processor acls"),
        "the last line names the missing grant: {last}"
    );
    eprintln!(
        "processor without its group ACL: exited after {:.1?}: {last}",
        started.elapsed()
    );

    // The gateway may describe its topic but not write to it.
    let gateway_connection = Connection::scram(&secured, GATEWAY_USER);
    let config = gateway_config(&t.webhooks, &gateway_connection);
    let script = gateway_acls(&config, &gateway_connection, "User:hookfold-gateway").replace(
        "--operation Write --operation Describe",
        "--operation Describe",
    );
    secured.grant(&script).unwrap();
    let gateway = Gateway::start(
        &config,
        &gateway_connection.bootstrap,
        &gateway_connection.env(),
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let body = build_finished("web", "main", 1, "failed");
    let response = buildkite_signed(
        client.post(gateway.webhook_url("acme-bk")),
        BK_SECRET,
        "build.finished",
        &body,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 503);
    let answer = response.text().await.unwrap();
    assert!(answer.contains("TopicAuthorization"), "{answer}");
    eprintln!("gateway without Write: {answer}");

    // Nothing half-written: the webhook topic holds only the harness's records, and the
    // processor wrote no incident and no state.
    let secured_broker = &secured.broker;
    assert_eq!(
        secured_broker.read_all(&t.webhooks).unwrap().len(),
        waiting.len()
    );
    assert!(secured_broker.read_all(&t.incidents).unwrap().is_empty());
    assert!(secured_broker.read_all(&t.changelog()).unwrap().is_empty());
}

/// The ACLs are printed where none of the credentials are (a laptop, a CI job granting
/// them), while every command that connects still refuses to start without its secret.
#[test]
fn acls_are_printed_without_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let security = "[kafka.security]\nprotocol = \"sasl_ssl\"\n[kafka.security.sasl]\nmechanism = \"scram-sha-512\"\nusername = \"u\"\npassword_env = \"HOOKFOLD_TEST_UNSET_PASSWORD\"\n";
    let gateway = dir.path().join("gateway.toml");
    std::fs::write(
        &gateway,
        format!(
            "[kafka]\ntopic = \"webhooks-x\"\n{security}\n[[sources]]\nid = \"bk\"\nkind = \"buildkite\"\nsecrets_env = [\"HOOKFOLD_TEST_UNSET_SECRET\"]\n"
        ),
    )
    .unwrap();
    let processor = dir.path().join("processor.toml");
    std::fs::write(
        &processor,
        format!("[kafka]\ninput_topic = \"webhooks-x\"\n{security}"),
    )
    .unwrap();
    let run = |binary: &str, config: &Path, args: &[&str]| {
        std::process::Command::new(hookfold_tests::workspace_binary(binary))
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("HOOKFOLD_TEST_UNSET_PASSWORD")
            .env_remove("HOOKFOLD_TEST_UNSET_SECRET")
            .output()
            .unwrap()
    };
    for (binary, config, acls, check) in [
        (
            "hookfold-gateway",
            &gateway,
            &["--print-acls", "User:u"][..],
            &["--check"][..],
        ),
        (
            "hookfold-processor",
            &processor,
            &["acls", "--principal", "User:u"][..],
            &["check"][..],
        ),
    ] {
        let output = run(binary, config, acls);
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{binary}: {output:?}");
        assert!(
            script.contains("--topic webhooks-x") && script.contains("User:u"),
            "{binary}: {script}"
        );
        let output = run(binary, config, check);
        assert_eq!(output.status.code(), Some(2), "{binary}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("HOOKFOLD_TEST_UNSET_"),
            "{binary}: {stderr}"
        );
    }
}
