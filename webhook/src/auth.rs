//! Webhook authentication: pure functions over header values and the raw body.
//!
//! Every comparison of a caller-supplied credential with a secret is constant-time.
//! Tokens are compared through their SHA-256 digests so that their length leaks nothing
//! either; HMACs are checked with `Mac::verify_slice`, which is constant-time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// A webhook secret (a Buildkite token or signing secret, a Bitbucket secret).
/// Its `Debug` never shows the value, so a secret cannot end up in a log line.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether it can be a Test Engine URL token: at least [`MIN_URL_TOKEN`] characters,
    /// all of them unreserved in a URL path (letters, digits, `-` `_` `.` `~`), so the URL
    /// Buildkite is given carries it unchanged.
    pub fn is_url_token(&self) -> bool {
        self.0.len() >= MIN_URL_TOKEN
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    }
}

/// The shortest Test Engine URL token accepted: the URL is its only credential.
pub const MIN_URL_TOKEN: usize = 32;

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a request is not authenticated. All of these are answered with 401; the variant
/// goes into logs and metrics so an operator can tell a rotation mistake from an attack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: expected {0}")]
    Missing(&'static str),
    #[error("token does not match any configured secret")]
    BadToken,
    #[error("signature does not match any configured secret")]
    BadSignature,
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    #[error(
        "signature timestamp {timestamp} is outside the {window_secs} s window around now ({now})"
    )]
    Stale {
        timestamp: i64,
        now: i64,
        window_secs: u64,
    },
}

impl AuthError {
    /// A short, fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing(_) => "missing",
            AuthError::BadToken => "bad_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::Malformed(_) => "malformed",
            AuthError::Stale { .. } => "stale",
        }
    }
}

/// A parsed `X-Buildkite-Signature: timestamp=<unix>,signature=<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildkiteSignature {
    pub timestamp: i64,
    pub signature: Vec<u8>,
}

/// Parses `X-Buildkite-Signature`. Fields may come in any order, with spaces around
/// them, in upper- or lower-case hex; unknown fields are ignored (room for Buildkite to
/// add some). A field that repeats is malformed: two signatures would be ambiguous.
pub fn parse_buildkite_signature(header: &str) -> Result<BuildkiteSignature, AuthError> {
    let mut timestamp = None;
    let mut signature = None;
    for field in header.split(',') {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let (name, value) = field
            .split_once('=')
            .ok_or(AuthError::Malformed("field without `=`"))?;
        match name.trim() {
            "timestamp" => {
                let ts = value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| AuthError::Malformed("timestamp is not an integer"))?;
                if timestamp.replace(ts).is_some() {
                    return Err(AuthError::Malformed("timestamp given twice"));
                }
            }
            "signature" => {
                let sig = decode_sha256_hex(value.trim())?;
                if signature.replace(sig).is_some() {
                    return Err(AuthError::Malformed("signature given twice"));
                }
            }
            _ => {}
        }
    }
    Ok(BuildkiteSignature {
        timestamp: timestamp.ok_or(AuthError::Malformed("no timestamp"))?,
        signature: signature.ok_or(AuthError::Malformed("no signature"))?,
    })
}

/// Parses Bitbucket's `X-Hub-Signature: sha256=<hex>` into the digest bytes.
pub fn parse_hub_signature(header: &str) -> Result<Vec<u8>, AuthError> {
    let (algorithm, hex) = header
        .trim()
        .split_once('=')
        .ok_or(AuthError::Malformed("expected sha256=<hex>"))?;
    if !algorithm.trim().eq_ignore_ascii_case("sha256") {
        return Err(AuthError::Malformed("only sha256 signatures are accepted"));
    }
    decode_sha256_hex(hex.trim())
}

fn decode_sha256_hex(hex: &str) -> Result<Vec<u8>, AuthError> {
    // hex::decode accepts either case.
    let bytes = hex::decode(hex).map_err(|_| AuthError::Malformed("signature is not hex"))?;
    if bytes.len() != 32 {
        return Err(AuthError::Malformed("signature is not a SHA-256 digest"));
    }
    Ok(bytes)
}

/// The credentials a Buildkite delivery may carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildkiteCredentials<'a> {
    /// `X-Buildkite-Token`.
    pub token: Option<&'a [u8]>,
    /// `X-Buildkite-Signature`.
    pub signature: Option<&'a str>,
}

/// Verifies a Buildkite delivery against any of the source's secrets (several during a
/// rotation). A signature, when present, is what counts: Buildkite sends one or the other.
pub fn verify_buildkite(
    secrets: &[Secret],
    credentials: BuildkiteCredentials<'_>,
    body: &[u8],
    now_unix: i64,
    window_secs: u64,
) -> Result<(), AuthError> {
    if let Some(header) = credentials.signature {
        let parsed = parse_buildkite_signature(header)?;
        let skew = now_unix.abs_diff(parsed.timestamp);
        if skew > window_secs {
            return Err(AuthError::Stale {
                timestamp: parsed.timestamp,
                now: now_unix,
                window_secs,
            });
        }
        let timestamp = parsed.timestamp.to_string();
        let matches = secrets.iter().any(|secret| {
            let mut mac = hmac_for(secret);
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            mac.verify_slice(&parsed.signature).is_ok()
        });
        return if matches {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        };
    }
    if let Some(token) = credentials.token {
        return verify_token(secrets, token);
    }
    Err(AuthError::Missing(
        "X-Buildkite-Token or X-Buildkite-Signature",
    ))
}

/// Verifies a Buildkite Test Engine delivery: it carries no header to authenticate, so the
/// secret is the last segment of the URL it is sent to (`/webhooks/<source id>/<token>`).
pub fn verify_test_engine(secrets: &[Secret], url_token: Option<&str>) -> Result<(), AuthError> {
    match url_token {
        Some(token) => verify_token(secrets, token.as_bytes()),
        None => Err(AuthError::Missing(
            "the token in the URL: /webhooks/<source id>/<token>",
        )),
    }
}

/// `token` equals one of `secrets`, compared in constant time (over digests, so the
/// lengths do not tell either).
fn verify_token(secrets: &[Secret], token: &[u8]) -> Result<(), AuthError> {
    let presented = Sha256::digest(token);
    // Check every secret (no early exit) so timing does not reveal which one matched.
    let matches = secrets.iter().fold(subtle::Choice::from(0), |acc, secret| {
        acc | presented.ct_eq(&Sha256::digest(secret.bytes()))
    });
    if bool::from(matches) {
        Ok(())
    } else {
        Err(AuthError::BadToken)
    }
}

/// Verifies a Bitbucket delivery's `X-Hub-Signature` (HMAC-SHA256 of the raw body).
pub fn verify_bitbucket(
    secrets: &[Secret],
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), AuthError> {
    let header = signature.ok_or(AuthError::Missing("X-Hub-Signature"))?;
    let digest = parse_hub_signature(header)?;
    let matches = secrets.iter().any(|secret| {
        let mut mac = hmac_for(secret);
        mac.update(body);
        mac.verify_slice(&digest).is_ok()
    });
    if matches {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

fn hmac_for(secret: &Secret) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(secret.bytes()).expect("HMAC accepts any key length")
}

/// Signs a body the way Buildkite does; used by tests, the demo and the benchmark.
pub fn buildkite_signature_header(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac_for(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "timestamp={timestamp},signature={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Signs a body the way Bitbucket does; used by tests, the demo and the benchmark.
pub fn bitbucket_signature_header(secret: &Secret, body: &[u8]) -> String {
    let mut mac = hmac_for(secret);
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        // Cargo sets CARGO_MANIFEST_DIR when it runs the test; the build-time value is
        // another checkout's when a shared target directory's binary is reused.
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
        std::fs::read(format!("{dir}/../../shared/fixtures/{path}"))
            .unwrap_or_else(|e| panic!("fixture {path}: {e} (expected ../shared beside the repo)"))
    }

    // Published vector: fixtures/buildkite/ping.json with its token and signature header.
    const BK_SECRET: &str = "29b1ff5779c76bd48ba6705eb99ff970";
    const BK_HEADER: &str = "timestamp=1642080837,signature=582d496ac2d869dd97a3101c4cda346288c49a742592daf582ec64c86449f79c";
    const BK_TS: i64 = 1642080837;
    // Published vector: fixtures/bitbucket/repo-push.json.
    const BB_SECRET: &str = "Gkvl$k$wyNpQAF42";
    const BB_HEADER: &str =
        "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035";

    #[test]
    fn a_test_engine_url_token_matches_any_secret_of_a_rotation_and_nothing_else() {
        let secrets = [Secret::new("old-url-token"), Secret::new("new-url-token")];
        assert!(verify_test_engine(&secrets, Some("old-url-token")).is_ok());
        assert!(verify_test_engine(&secrets, Some("new-url-token")).is_ok());
        for wrong in ["", "new-url-toke", "new-url-token ", "NEW-URL-TOKEN"] {
            assert!(matches!(
                verify_test_engine(&secrets, Some(wrong)),
                Err(AuthError::BadToken)
            ));
        }
        assert!(matches!(
            verify_test_engine(&secrets, None),
            Err(AuthError::Missing(_))
        ));
    }

    fn bk(signature: &str, body: &[u8], now: i64) -> Result<(), AuthError> {
        verify_buildkite(
            &[Secret::new(BK_SECRET)],
            BuildkiteCredentials {
                token: None,
                signature: Some(signature),
            },
            body,
            now,
            300,
        )
    }

    #[test]
    fn buildkite_ping_vector_verifies() {
        let body = fixture("buildkite/ping.json");
        assert_eq!(bk(BK_HEADER, &body, BK_TS), Ok(()));
        assert_eq!(
            buildkite_signature_header(&Secret::new(BK_SECRET), BK_TS, &body),
            BK_HEADER
        );
    }

    #[test]
    fn buildkite_signature_over_other_body_or_secret_fails() {
        let mut body = fixture("buildkite/ping.json");
        body.push(b' ');
        assert_eq!(bk(BK_HEADER, &body, BK_TS), Err(AuthError::BadSignature));
        let body = fixture("buildkite/ping.json");
        let wrong = verify_buildkite(
            &[Secret::new("not-the-secret")],
            BuildkiteCredentials {
                token: None,
                signature: Some(BK_HEADER),
            },
            &body,
            BK_TS,
            300,
        );
        assert_eq!(wrong, Err(AuthError::BadSignature));
    }

    #[test]
    fn buildkite_rotation_accepts_any_configured_secret() {
        let body = fixture("buildkite/ping.json");
        let secrets = [Secret::new("new-secret"), Secret::new(BK_SECRET)];
        let creds = BuildkiteCredentials {
            token: None,
            signature: Some(BK_HEADER),
        };
        assert_eq!(verify_buildkite(&secrets, creds, &body, BK_TS, 300), Ok(()));
        let token = BuildkiteCredentials {
            token: Some(b"new-secret"),
            signature: None,
        };
        assert_eq!(verify_buildkite(&secrets, token, &body, BK_TS, 300), Ok(()));
    }

    #[test]
    fn buildkite_window_edges() {
        let body = fixture("buildkite/ping.json");
        assert_eq!(bk(BK_HEADER, &body, BK_TS + 300), Ok(()));
        assert_eq!(bk(BK_HEADER, &body, BK_TS - 300), Ok(()));
        assert!(matches!(
            bk(BK_HEADER, &body, BK_TS + 301),
            Err(AuthError::Stale { .. })
        ));
        // A timestamp from the future is as suspect as an old one.
        assert!(matches!(
            bk(BK_HEADER, &body, BK_TS - 301),
            Err(AuthError::Stale { .. })
        ));
    }

    #[test]
    fn buildkite_header_parsing_edge_cases() {
        let sig = "582d496ac2d869dd97a3101c4cda346288c49a742592daf582ec64c86449f79c";
        let body = fixture("buildkite/ping.json");
        let ok = [
            format!("signature={sig},timestamp={BK_TS}"),
            format!("  timestamp = {BK_TS} ,  signature = {sig}  "),
            format!("timestamp={BK_TS},signature={}", sig.to_uppercase()),
            format!("timestamp={BK_TS},v=2,signature={sig},extra=field"),
            format!("timestamp={BK_TS},signature={sig},"),
        ];
        for header in &ok {
            assert_eq!(bk(header, &body, BK_TS), Ok(()), "header {header:?}");
        }
        let malformed = [
            ("", "no timestamp"),
            (&format!("signature={sig}") as &str, "no timestamp"),
            (&format!("timestamp={BK_TS}"), "no signature"),
            (
                &format!("timestamp=soon,signature={sig}"),
                "timestamp is not an integer",
            ),
            (
                &format!("timestamp={BK_TS},signature=zz{}", &sig[2..]),
                "signature is not hex",
            ),
            (
                &format!("timestamp={BK_TS},signature={}", &sig[..62]),
                "signature is not a SHA-256 digest",
            ),
            (
                &format!("timestamp={BK_TS};signature={sig}"),
                "timestamp is not an integer",
            ),
            (&format!("timestamp={BK_TS},signature"), "field without `=`"),
            (
                &format!("timestamp={BK_TS},timestamp={BK_TS},signature={sig}"),
                "timestamp given twice",
            ),
        ];
        for (header, why) in malformed {
            assert_eq!(
                bk(header, &body, BK_TS),
                Err(AuthError::Malformed(why)),
                "header {header:?}"
            );
        }
    }

    #[test]
    fn buildkite_token() {
        let secrets = [Secret::new(BK_SECRET)];
        let with = |token: &[u8]| {
            verify_buildkite(
                &secrets,
                BuildkiteCredentials {
                    token: Some(token),
                    signature: None,
                },
                b"{}",
                0,
                300,
            )
        };
        assert_eq!(with(BK_SECRET.as_bytes()), Ok(()));
        assert_eq!(
            with(b"29b1ff5779c76bd48ba6705eb99ff97"),
            Err(AuthError::BadToken)
        );
        assert_eq!(with(b""), Err(AuthError::BadToken));
        assert_eq!(
            verify_buildkite(&secrets, BuildkiteCredentials::default(), b"{}", 0, 300),
            Err(AuthError::Missing(
                "X-Buildkite-Token or X-Buildkite-Signature"
            ))
        );
    }

    #[test]
    fn bitbucket_push_vector_verifies() {
        let body = fixture("bitbucket/repo-push.json");
        let secrets = [Secret::new(BB_SECRET)];
        assert_eq!(verify_bitbucket(&secrets, Some(BB_HEADER), &body), Ok(()));
        assert_eq!(
            bitbucket_signature_header(&Secret::new(BB_SECRET), &body),
            BB_HEADER
        );
        let upper = format!("SHA256={}", BB_HEADER[7..].to_uppercase());
        assert_eq!(verify_bitbucket(&secrets, Some(&upper), &body), Ok(()));
        assert_eq!(
            verify_bitbucket(&secrets, Some(&format!(" {BB_HEADER} ")), &body),
            Ok(())
        );
    }

    #[test]
    fn bitbucket_rejections() {
        let body = fixture("bitbucket/repo-push.json");
        let secrets = [Secret::new(BB_SECRET)];
        assert_eq!(
            verify_bitbucket(&secrets, None, &body),
            Err(AuthError::Missing("X-Hub-Signature"))
        );
        assert_eq!(
            verify_bitbucket(&secrets, Some(BB_HEADER), &body[1..]),
            Err(AuthError::BadSignature)
        );
        let sha1 = format!("sha1={}", &BB_HEADER[7..47]);
        assert_eq!(
            verify_bitbucket(&secrets, Some(&sha1), &body),
            Err(AuthError::Malformed("only sha256 signatures are accepted"))
        );
        assert_eq!(
            verify_bitbucket(&secrets, Some(&BB_HEADER[7..]), &body),
            Err(AuthError::Malformed("expected sha256=<hex>"))
        );
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
