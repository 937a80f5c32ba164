//! Reading what a child process or a Kafka node logged: from a mark on (what it said
//! since a fault was injected), line by line; and the logs a failing test shows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::process::{Process, tail_of};
use crate::wait::wait_until;

/// A point in a log file; what was written after it is what a test looks at.
pub struct LogMark {
    path: PathBuf,
    from: u64,
}

impl LogMark {
    /// At the end of what `path` holds now (nothing yet when it does not exist).
    pub fn now(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            from: std::fs::metadata(path).map_or(0, |m| m.len()),
        }
    }

    /// At the end of what `process` has logged so far.
    pub fn of(process: &Process) -> Self {
        Self::now(&process.log)
    }

    /// Everything written after the mark (a line cut by the mark, or a character, is kept
    /// as far as it goes).
    pub fn since(&self) -> String {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        let from = (self.from as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// Waits until `check` holds for what `process` logged since the mark, failing early
    /// if it exits; the error shows the last `60` lines it logged since.
    pub async fn wait(
        &self,
        process: &mut Process,
        what: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let seen = wait_until(what, timeout, async || {
            process.fail_if_exited()?;
            Ok(check(&self.since()).then_some(()))
        })
        .await;
        seen.map_err(|e| {
            anyhow!(
                "{e:#}; since the mark {} logged:\n{}",
                process.name,
                tail_of(&self.since(), 60)
            )
        })
    }
}

/// Whether a line of `log` contains every one of `needles`.
pub fn has_line(log: &str, needles: &[&str]) -> bool {
    log.lines().any(|l| needles.iter().all(|n| l.contains(n)))
}

/// The lines of `log` that mention `needle`.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// Prints the last lines of named logs if the test panics. Declared after the test's
/// processes and directories, it is dropped (and prints) before the logs are removed.
pub struct LogsOnPanic(pub Vec<(String, PathBuf)>);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (name, path) in &self.0 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {name} ({}) ---", path.display());
            for line in &lines[lines.len().saturating_sub(40)..] {
                // Kafka's fetch-request lines run to kilobytes.
                eprintln!("{}", line.chars().take(400).collect::<String>());
            }
        }
    }
}
