//! The one wait loop of the harness: a condition polled until it holds, with a deadline.
//!
//! Invariant: every wait of the harness and of the tests is one of these functions, so
//! every wait polls a condition with a deadline; nothing sleeps for a fixed time and hopes.
//! A condition that can no longer come true (a child process died) ends the wait at once
//! by failing, rather than running out the clock.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often a condition is checked: a test reacts within a blink, and a check (an HTTP
/// request, a metadata request) costs the machine little at this rate.
const POLL: Duration = Duration::from_millis(25);

/// Polls `check` every 25 ms until it returns `Some`, or fails after `timeout`. Blocks the
/// thread: for synchronous checks (a file, a child's exit status, a Kafka client call).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    try_wait_for(what, timeout, || Ok(check()))
}

/// [`wait_for`] with a check that may fail, which ends the wait with its error (the
/// process being waited on exited, or something answered that never will be right).
pub fn try_wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_for`] for async code: `check` may await (an HTTP request), and an error from it
/// ends the wait with that error (the process being waited on exited).
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}
