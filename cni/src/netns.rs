//! Running code inside the pod's network namespace.
//!
//! `setns(CLONE_NEWNET)` moves only the calling thread, so the work runs on
//! a thread of its own that enters the namespace and then ends; the
//! iptables tools it starts inherit that thread's namespace. The rest of
//! the process (the Kubernetes client's runtime) never leaves the node's.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open the network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter the network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a thread for the network namespace: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the work inside the network namespace {0} panicked")]
    Panicked(PathBuf),
}

/// Runs `f` on a thread inside the network namespace at `path` (a bind
/// mount such as `/var/run/netns/cni-…`, or `/proc/PID/ns/net`).
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = File::open(path).map_err(|source| NetnsError::Open { path: path.to_path_buf(), source })?;
    let span = tracing::Span::current();
    let owned = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("weft-cni-netns".into())
        .spawn(move || {
            let _entered = span.enter();
            // SAFETY: setns on an open fd changes only this thread's network
            // namespace; a file that is not a network namespace is EINVAL.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Enter { path: owned, source: std::io::Error::last_os_error() });
            }
            Ok(f())
        })
        .map_err(NetnsError::Thread)?;
    handle.join().map_err(|_| NetnsError::Panicked(path.to_path_buf()))?
}
