//! Child processes of a test: the hookfold binaries and the Kafka JVMs.
//!
//! Invariant: no child outlives the test binary. Every child is spawned by one long-lived
//! thread with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when the test binary
//! exits, however it exits (a panic in a static, a timeout's SIGKILL); a [`Process`] that
//! is dropped kills its child at once. (The death signal follows the thread that forked,
//! which is why it is one thread that never ends, not whichever test thread asked.)

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::wait::wait_for;

/// A signal the harness sends to a child (through `kill(1)`: no unsafe code, and what an
/// operator would type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Stop,
    Cont,
}

impl Signal {
    fn flag(self) -> &'static str {
        match self {
            Signal::Term => "-TERM",
            Signal::Kill => "-KILL",
            Signal::Stop => "-STOP",
            Signal::Cont => "-CONT",
        }
    }
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: Signal) -> Result<()> {
    let status = Command::new("kill")
        .arg(signal.flag())
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill {} {pid} failed", signal.flag());
    }
    Ok(())
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` from the harness's spawner thread, tied to this test binary's life.
fn spawn_tied(command: Command) -> std::io::Result<Child> {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let requests = {
        let mut spawner = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
        spawner
            .get_or_insert_with(|| {
                let (send, receive) = mpsc::channel::<SpawnRequest>();
                std::thread::Builder::new()
                    .name("hookfold-test-spawner".into())
                    .spawn(move || {
                        // Ends only with the process: the children's death signal is tied to it.
                        for (mut command, reply) in receive {
                            let _ = reply.send(command.spawn());
                        }
                        loop {
                            std::thread::park();
                        }
                    })
                    .expect("starting the spawner thread");
                send
            })
            .clone()
    };
    let mut command = command;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    requests
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread did not answer"))?
}

/// A child process that is killed when dropped, with its output appended to a log file so
/// a failing test can show it.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let description = format!("{command:?}");
        let child =
            spawn_tied(command).with_context(|| format!("starting {name} ({description})"))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    /// A process handle with nothing behind it yet.
    pub fn none() -> Self {
        Self {
            name: "none".into(),
            child: None,
            log: PathBuf::new(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether it runs now.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Fails if it has exited: for a wait on something only a running process can do,
    /// which then ends at once (its log is added by [`Process::explain`]).
    pub fn fail_if_exited(&mut self) -> Result<()> {
        match self.exited() {
            Some(status) => bail!("{} exited ({status})", self.name),
            None => Ok(()),
        }
    }

    /// `error` with the last lines the process logged: what a failed wait on it shows.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        anyhow!("{error:#}; {} logged:\n{}", self.name, self.output_tail())
    }

    /// Sends a signal without waiting for anything (SIGSTOP, SIGCONT, or a SIGTERM whose
    /// outcome the test watches itself).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.pid().context("process not running")?;
        send_signal(pid, signal)
    }

    /// SIGTERM, then wait up to `timeout` for it to exit on its own (SIGKILL after that,
    /// and an error).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("process already stopped")?;
        send_signal(child.id(), Signal::Term)?;
        let status = wait_for(
            &format!("{} to exit after SIGTERM", self.name),
            timeout,
            || child.try_wait().ok().flatten(),
        );
        match status {
            Ok(status) => {
                self.child = None;
                Ok(status)
            }
            Err(e) => {
                self.kill();
                Err(e)
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything it wrote so far.
    pub fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The last 40 lines it wrote.
    pub fn output_tail(&self) -> String {
        tail_of(&self.output(), 40)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of `text`.
pub fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A binary of this workspace, built by `cargo build --bins` (which `just test` runs), or
/// the one in `TEST_BIN_DIR` when set: a private copy, for a target directory shared
/// with other worktrees (whose builds overwrite the same binary names). Not `HOOKFOLD_*`:
/// the children inherit the environment, and the binaries read `HOOKFOLD_*` as config.
pub fn workspace_binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_BIN_DIR") {
        let path = Path::new(&dir).join(name);
        assert!(path.exists(), "{} is missing", path.display());
        return path;
    }
    // Test executables live in target/<profile>/deps; the binaries one level up. A tool
    // binary (hookfold-dev) lives beside them.
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` (or `just test`, which does) first",
        path.display()
    );
    path
}
