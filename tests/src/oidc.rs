//! A test identity provider for SASL/OAUTHBEARER: an OAuth 2 client-credentials token
//! endpoint over real HTTP on loopback (what librdkafka's `sasl.oauthbearer.method=oidc`
//! calls), issuing ES256-signed JWTs whose `sub` is the client id, and the JWKS file the
//! brokers verify them with (Kafka's `OAuthBearerValidatorCallbackHandler`). The broker maps
//! a token to the principal `User:<sub>`.
//!
//! Invariants: a token is issued only for a registered client id with its secret (HTTP
//! Basic, as librdkafka sends it); anything else gets 401 `invalid_client`, as a real
//! provider answers a wrong secret.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

/// The audience the brokers expect (`sasl.oauthbearer.expected.audience`).
pub const AUDIENCE: &str = "kafka";
const KEY_ID: &str = "hookfold-test-key";

pub struct TestIdp {
    /// `http://127.0.0.1:<port>/token`.
    pub token_endpoint: String,
    /// The `iss` of every token (`sasl.oauthbearer.expected.issuer`).
    pub issuer: String,
    /// The JWKS (the public key), for `sasl.oauthbearer.jwks.endpoint.url=file://...`.
    pub jwks_file: PathBuf,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestIdp {
    /// Starts the endpoint for `clients` (`(client id, secret)`) and writes the JWKS to
    /// `<dir>/jwks.json`.
    pub fn start(dir: &Path, clients: &[(&str, &str)]) -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("generating the P-256 signing key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow!("loading the P-256 signing key"))?;
        // An uncompressed point: 0x04, then x and y (32 bytes each).
        let point = key.public_key().as_ref();
        anyhow::ensure!(
            point.len() == 65 && point[0] == 4,
            "unexpected P-256 public key"
        );
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": KEY_ID,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }]});
        let jwks_file = dir.join("jwks.json");
        std::fs::write(&jwks_file, jwks.to_string())
            .with_context(|| format!("writing {}", jwks_file.display()))?;

        let listener = TcpListener::bind("127.0.0.1:0").context("binding the test IdP")?;
        let port = listener.local_addr()?.port();
        let issuer = format!("http://127.0.0.1:{port}");
        let server = Server {
            key,
            rng,
            issuer: issuer.clone(),
            clients: clients
                .iter()
                .map(|(id, secret)| (id.to_string(), secret.to_string()))
                .collect(),
        };
        let (issued, refused, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (issued, refused, stop) = (issued.clone(), refused.clone(), stop.clone());
            std::thread::Builder::new()
                .name("test-idp".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        match server.answer(stream) {
                            Ok(true) => issued.fetch_add(1, Ordering::SeqCst),
                            Ok(false) | Err(_) => refused.fetch_add(1, Ordering::SeqCst),
                        };
                    }
                })?
        };
        Ok(Self {
            token_endpoint: format!("{issuer}/token"),
            issuer,
            jwks_file,
            issued,
            refused,
            stop,
            port,
            thread: Some(thread),
        })
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Token requests refused so far (unknown client, wrong secret, malformed).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Server {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    issuer: String,
    clients: Vec<(String, String)>,
}

impl Server {
    /// Answers one request; `Ok(true)` when a token was issued.
    fn answer(&self, stream: TcpStream) -> Result<bool> {
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let (mut length, mut authorization) = (0usize, None);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length.min(64 * 1024)];
        reader.read_exact(&mut body)?;
        let form = String::from_utf8_lossy(&body);
        let client = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|pair| {
                let (id, secret) = pair.split_once(':')?;
                self.clients
                    .iter()
                    .any(|(i, s)| i == id && s == secret)
                    .then(|| id.to_owned())
            });
        let grant_ok = request_line.starts_with("POST /token ")
            && form
                .split('&')
                .any(|p| p == "grant_type=client_credentials");
        let (status, response, issued) = match client {
            Some(id) if grant_ok => {
                let token = self.token(&id)?;
                let body = serde_json::json!({
                    "access_token": token, "token_type": "Bearer", "expires_in": 3600,
                });
                ("200 OK", body.to_string(), true)
            }
            Some(_) => (
                "400 Bad Request",
                r#"{"error":"unsupported_grant_type"}"#.to_owned(),
                false,
            ),
            None => (
                "401 Unauthorized",
                r#"{"error":"invalid_client"}"#.to_owned(),
                false,
            ),
        };
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{response}",
            response.len()
        )?;
        stream.flush()?;
        Ok(issued)
    }

    fn token(&self, subject: &str) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": KEY_ID});
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": subject, "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 3600, "scope": "kafka",
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow!("signing a token"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}
