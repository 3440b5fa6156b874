//! Network namespaces as "pods" for transparent-mode tests (root only).

use std::{future::Future, os::fd::AsRawFd, process::Command};

pub const SKIP_REASON: &str = "skipping: needs root for network namespaces and iptables";

/// Returns why transparent-mode tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !super::is_root() {
        return Some(SKIP_REASON.to_string());
    }
    for tool in ["ip", "iptables", "ip6tables", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "skipping: {tool} is not installed (apt-get install iptables iproute2 util-linux)"
            ));
        }
    }
    None
}

/// Prints why and returns true when transparent-mode tests cannot run here.
pub fn skip() -> bool {
    match unavailable() {
        Some(reason) => {
            println!("{reason}");
            true
        }
        None => false,
    }
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("weft-t-{tag}-{}-{nanos:x}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; panics unless it succeeds.
    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    /// `iptables` (or `ip6tables`) rule sending the namespace's TCP to
    /// `port` to the outbound proxy on 4140, except the proxy's own (`uid`).
    pub fn redirect_outbound(&self, iptables: &str, port: &str, uid: u32) {
        let uid = uid.to_string();
        self.exec(&[
            iptables,
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            port,
            "-m",
            "owner",
            "!",
            "--uid-owner",
            &uid,
            "-j",
            "REDIRECT",
            "--to-ports",
            "4140",
        ]);
    }

    /// The words that run a program inside the namespace as `uid`.
    pub fn exec_as(&self, uid: u32) -> Vec<String> {
        ["ip", "netns", "exec", &self.name, "setpriv"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".to_string()])
            .collect()
    }

    /// Runs `f` on a thread that has entered the namespace, on a runtime of
    /// its own, so every socket it creates lives in the namespace.
    pub fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        run_in(&self.name, f)
    }
}

/// Runs `f` on a thread that has entered the namespace `name`, on a runtime
/// of its own, so every socket (and child process) it creates lives there.
pub fn run_in<F, Fut, T>(name: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(f())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
