//! The demo's child processes: each in its own process group (so a
//! terminal's Ctrl-C reaches only `weft demo`, which then stops them in
//! order), its output in a log file, and killed and reaped on the way out.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

pub struct Procs {
    procs: Vec<Proc>,
    log_dir: PathBuf,
}

impl Procs {
    pub fn new(log_dir: &Path) -> Self {
        Self { procs: Vec::new(), log_dir: log_dir.to_path_buf() }
    }

    /// Starts `cmd` as `name`. Must be called from the thread that stays
    /// alive for the whole demo (the main thread): the children's parent-
    /// death signal fires when the spawning *thread* exits.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<u32> {
        let log = self.log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = file.try_clone().with_context(|| format!("cannot reopen {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err).process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // If `weft demo` itself is SIGKILLed, the kernel then still stops
        // the children instead of leaving a mesh running on the machine.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        self.procs.push(Proc { name: name.to_string(), log, child, exited: None });
        Ok(pid)
    }

    /// The first child found to have exited, if any.
    pub fn exited(&mut self) -> Option<(&Proc, ExitStatus)> {
        for p in &mut self.procs {
            if p.exited.is_none() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    p.exited = Some(status);
                    return Some((p, status));
                }
            }
        }
        None
    }

    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs.iter().map(|p| (p.name.clone(), p.child.id())).collect()
    }

    /// SIGTERM to every group (newest first: clients before the control
    /// plane), then SIGKILL to whatever is left after `grace`, and reap all.
    pub fn stop_all(&mut self, grace: Duration) {
        for p in self.procs.iter().rev() {
            if p.exited.is_none() {
                signal_group(&p.child, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            let mut running = false;
            for p in &mut self.procs {
                if p.exited.is_none() {
                    match p.child.try_wait() {
                        Ok(Some(status)) => p.exited = Some(status),
                        Ok(None) => running = true,
                        // Not our child any more (cannot happen): nothing to reap.
                        Err(_) => p.exited = Some(ExitStatus::default()),
                    }
                }
            }
            if !running || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in &mut self.procs {
            // Only groups whose leader is not reaped yet: a reaped pid may
            // already belong to someone else.
            if p.exited.is_none() {
                signal_group(&p.child, libc::SIGKILL);
                let _ = p.child.kill();
                p.exited = p.child.wait().ok();
            }
        }
    }
}

impl Drop for Procs {
    /// Whatever path leaves the demo (error, panic), nothing stays behind.
    fn drop(&mut self) {
        if self.procs.iter().any(|p| p.exited.is_none()) {
            self.stop_all(Duration::from_secs(2));
        }
    }
}

fn signal_group(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // The group id is the child's pid (process_group(0)). ESRCH once
        // the group is gone is expected and harmless.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

/// The last `n` lines of a log, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
