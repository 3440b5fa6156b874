//! A child process owned by a test: output captured to a log file, killed
//! and reaped when dropped, its log's tail printed when the test fails.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use crate::{bins::bin, net::http_get};

/// Lines of a process's log printed when a test fails.
const TAIL_LINES: usize = 60;

pub struct Process {
    label: String,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    log: PathBuf,
}

impl Process {
    /// A command for workspace binary `name` (built fresh, see
    /// [`crate::bins`]) with no `WEFT_*` variables inherited from the
    /// environment running the tests.
    pub fn command(name: &str) -> Command {
        let mut cmd = Command::new(bin(name));
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("WEFT_")) {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// Starts `cmd` with stdout and stderr going to a log file. `label`
    /// names the process in failure output.
    pub fn spawn(label: &str, mut cmd: Command) -> Process {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("weft-e2e-{}-{label}-{n}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        cmd.stdin(Stdio::null()).stdout(file.try_clone().expect("clone log file")).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label} ({:?}): {e}", cmd.get_program()));
        Process { label: label.to_string(), child: Some(child), exit: None, log }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process has written so far (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of [`Process::output`].
    pub fn tail(&self, n: usize) -> String {
        let out = self.output();
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit = Some(status);
                    self.child = None;
                }
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none() && self.child.is_some()
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.exit = Some(status);
            }
        }
    }

    /// Polls `GET http://{admin}/ready` until it answers 200, for at most
    /// `limit`. Fails early, with the log's tail, if the process exits.
    pub async fn wait_ready(&mut self, admin: SocketAddr, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Err(format!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.label,
                    self.tail(30)
                ));
            }
            let last = match http_get(admin, "/ready").await {
                Ok(rsp) if rsp.status == 200 => return Ok(()),
                Ok(rsp) => format!("{} {}", rsp.status, rsp.body.trim()),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} not ready after {limit:?} (last /ready: {last}):\n{}",
                    self.label,
                    self.tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the log until a line contains `needle`, for at most `limit`.
    pub async fn wait_log(&self, needle: &str, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.output().contains(needle) {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{}: no log line with {needle:?} after {limit:?}", self.label));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// True when the log says a listener could not bind (another process
    /// took a port between [`crate::free_port`] and our bind).
    pub fn lost_port_race(&self) -> bool {
        let out = self.output();
        out.contains("Address already in use") || out.contains("address in use")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (exit: {}) last {TAIL_LINES} lines of {} ----\n{}\n---- end {} ----",
                self.label,
                self.exit.map(|s| s.to_string()).unwrap_or_else(|| "running".into()),
                self.log.display(),
                self.tail(TAIL_LINES),
                self.label
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl Process {
    /// Runs `cmd` to completion (at most `limit`, then it is killed) and
    /// returns its exit status and output.
    pub fn run(label: &str, cmd: Command, limit: Duration) -> (ExitStatus, String) {
        let mut p = Process::spawn(label, cmd);
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = p.try_exit() {
                return (status, p.output());
            }
            if std::time::Instant::now() > deadline {
                panic!("{label} still running after {limit:?}:\n{}", p.tail(30));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
