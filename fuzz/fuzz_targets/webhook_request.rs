//! What the gateway reads off a request before it answers: the Buildkite signature or
//! token header, the Bitbucket signature header, the event name, the delivery id and the
//! body, cut from the input at its first five newlines (the token field doubles as a Test
//! Engine URL token). Authentication must never panic and never accept a signature that is
//! not the HMAC of the body under a configured secret, nor a token that is no secret;
//! the routing key always names the source, and the event id is a usable delivery id or a
//! SHA-256. Redaction (the Buildkite default paths, and paths named by the event field)
//! never panics, and on a JSON object gives valid JSON equal to the object without every
//! member at those paths.
#![no_main]

use hmac::{Hmac, Mac};
use hookfold_fuzz::{fields, text};
use hookfold_proto::cloudevents::SourceKind;
use hookfold_webhook::auth::{
    self, BuildkiteCredentials, Secret, parse_buildkite_signature, parse_hub_signature,
};
use hookfold_webhook::redact::{JsonPath, redact};
use hookfold_webhook::routing::{event_id, routing_key};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRETS: [&str; 2] = ["29b1ff5779c76bd48ba6705eb99ff970", "rotated-secret"];
const NOW: i64 = 1_764_000_000;
const WINDOW: u64 = 300;

fn hmac(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fuzz_target!(|data: &[u8]| {
    let parts = fields(data, 6);
    let (signature, token, hub, event, uuid, body) = (
        text(parts[0]),
        parts[1],
        text(parts[2]),
        text(parts[3]),
        text(parts[4]),
        parts[5],
    );
    let secrets: Vec<Secret> = SECRETS.iter().map(|s| Secret::new(*s)).collect();

    let credentials = BuildkiteCredentials {
        token: (!token.is_empty()).then_some(token),
        signature: (!signature.is_empty()).then_some(signature.as_str()),
    };
    if auth::verify_buildkite(&secrets, credentials, body, NOW, WINDOW).is_ok() {
        match credentials.signature {
            Some(header) => {
                let parsed = parse_buildkite_signature(header).expect("accepted, so well-formed");
                assert!(NOW.abs_diff(parsed.timestamp) <= WINDOW);
                let signed = parsed.timestamp.to_string();
                assert!(
                    SECRETS
                        .iter()
                        .any(|s| hmac(s, &[signed.as_bytes(), b".", body]) == parsed.signature),
                    "accepted a signature that no secret made"
                );
            }
            None => assert!(
                SECRETS.iter().any(|s| s.as_bytes() == token),
                "accepted a token that is no secret"
            ),
        }
    }
    // A header the gateway's own signer makes for this body is accepted.
    let made = auth::buildkite_signature_header(&secrets[1], NOW, body);
    let own = BuildkiteCredentials {
        token: None,
        signature: Some(&made),
    };
    assert!(auth::verify_buildkite(&secrets, own, body, NOW, WINDOW).is_ok());

    let url_token = std::str::from_utf8(token).ok();
    if auth::verify_test_engine(&secrets, url_token).is_ok() {
        assert!(
            SECRETS.iter().any(|s| Some(*s) == url_token),
            "accepted a URL token that is no secret"
        );
    }
    // Each secret as the URL's token is accepted.
    assert!(auth::verify_test_engine(&secrets, Some(SECRETS[1])).is_ok());

    let hub = (!hub.is_empty()).then_some(hub.as_str());
    if auth::verify_bitbucket(&secrets, hub, body).is_ok() {
        let digest = parse_hub_signature(hub.expect("accepted, so present")).unwrap();
        assert!(SECRETS.iter().any(|s| hmac(s, &[body]) == digest));
    }

    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        for kind in [
            SourceKind::Buildkite,
            SourceKind::BuildkiteTestEngine,
            SourceKind::Bitbucket,
        ] {
            let key = routing_key("acme", kind, &event, &json);
            assert!(key.starts_with("acme/"), "{key}");
        }
    }
    let mut paths: Vec<JsonPath> = ["pipeline.env", "build.env", "build.pipeline.env"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    paths.extend(event.split(',').filter_map(|p| p.parse().ok()));
    let redacted = redact(body, &paths);
    // The gateway redacts only bodies it parsed as a JSON object.
    if let Ok(mut expected) = serde_json::from_slice::<serde_json::Value>(body)
        && expected.is_object()
    {
        let mut removed = Vec::new();
        for path in &paths {
            if remove_all(
                &mut expected,
                &path.to_string().split('.').collect::<Vec<_>>(),
            ) {
                removed.push(path.to_string());
            }
        }
        match redacted {
            Some(r) => {
                let got: serde_json::Value =
                    serde_json::from_slice(&r.body).expect("redaction keeps JSON valid");
                assert_eq!(got, expected);
                // With a repeated key, redaction also takes the members a parse discards. A
                // path inside another removed one (`build.env` beside `build`) is gone with
                // it, and reported as the outer one.
                assert!(
                    removed.iter().all(|p| r.removed.contains(p)
                        || r.removed.iter().any(|q| p.starts_with(&format!("{q}.")))),
                    "{removed:?} vs {:?}",
                    r.removed
                );
            }
            None => assert!(removed.is_empty(), "{removed:?} present but not redacted"),
        }
    }

    let uuid = (!uuid.is_empty()).then_some(uuid.as_str());
    let id = event_id("acme", &event, body, uuid);
    assert!(!id.is_empty() && id.len() <= 128, "{id}");
    if uuid.is_none_or(|u| u.trim() != id) {
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
});

/// Removes the member at `path` from `value` (every object on the way), as a parse sees it:
/// a repeated key is one member, the last one. Whether anything was removed.
fn remove_all(value: &mut serde_json::Value, path: &[&str]) -> bool {
    let Some(object) = value.as_object_mut() else {
        return false;
    };
    match path {
        [] => false,
        [last] => object.remove(*last).is_some(),
        [first, rest @ ..] => object.get_mut(*first).is_some_and(|v| remove_all(v, rest)),
    }
}
