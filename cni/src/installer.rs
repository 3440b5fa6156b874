//! `weft-cni install` and `weft-cni uninstall`: run by the chart's
//! DaemonSet with the host's CNI directories mounted. Install copies the
//! binary into the bin dir, writes the plugin's kubeconfig and chains
//! weft-cni after the primary plugin in its conflist, then keeps both in
//! place (the primary plugin may rewrite its file, the token rotates) until
//! SIGTERM, when it removes all three. Logs go to stderr.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::Value;

use crate::conflist::{self, EntryOptions, KUBECONFIG_NAME, PLUGIN_TYPE};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "weft-cni install",
    about = "Install weft-cni on this node and keep it installed until SIGTERM"
)]
pub struct Args {
    /// The host's CNI bin dir, as mounted in this container.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The host's CNI config dir (net.d), as mounted in this container.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The same dir's path on the host (the conflist names the kubeconfig
    /// by its host path).
    #[arg(long, env = "WEFT_CNI_HOST_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub host_conf_dir: String,
    /// The plugin's log file, a path on the host.
    #[arg(long, env = "WEFT_CNI_LOG_FILE", default_value = crate::config::DEFAULT_LOG_FILE)]
    pub log_file: String,
    #[arg(long, env = "WEFT_CNI_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long, env = "WEFT_CNI_CONTROL_PLANE_NAMESPACE", default_value = "weft")]
    pub control_plane_namespace: String,
    /// Namespaces the plugin leaves alone without asking the API (comma-separated).
    #[arg(long, env = "WEFT_CNI_EXCLUDE_NAMESPACES", default_value = "kube-system", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// Where this pod's service-account token and CA are.
    #[arg(
        long,
        env = "WEFT_CNI_SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub service_account_dir: PathBuf,
    /// How often the conflist and the token are checked.
    #[arg(long, env = "WEFT_CNI_POLL_MILLIS", default_value_t = 1000)]
    pub poll_millis: u64,
}

impl Args {
    fn entry(&self) -> Value {
        conflist::entry(&EntryOptions {
            kubeconfig: format!("{}/{KUBECONFIG_NAME}", self.host_conf_dir.trim_end_matches('/')),
            log_file: self.log_file.clone(),
            log_level: self.log_level.clone(),
            control_plane_namespace: self.control_plane_namespace.clone(),
            exclude_namespaces: self.exclude_namespaces.iter().filter(|n| !n.is_empty()).cloned().collect(),
        })
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Writes `data` to `dir/name` through a temporary file and a rename, so
/// nothing ever reads a half-written file. The temporary name starts with a
/// dot and has no config extension: no runtime picks it up.
fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<()> {
    let tmp = dir.join(format!(".{name}.weft-tmp-{}", std::process::id()));
    let path = dir.join(name);
    let result = (|| -> Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(data).and_then(|()| f.sync_all()).with_context(|| format!("write {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn copy_binary(bin_dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("find weft-cni's own binary")?;
    let data = fs::read(&exe).with_context(|| format!("read {}", exe.display()))?;
    write_atomic(bin_dir, PLUGIN_TYPE, &data, 0o755)?;
    tracing::info!(path = %bin_dir.join(PLUGIN_TYPE).display(), "installed the plugin binary");
    Ok(())
}

/// The service-account material the kubeconfig is made of; compared on
/// every poll to notice a rotated token.
#[derive(PartialEq, Eq)]
struct Credentials {
    server: String,
    ca: Vec<u8>,
    token: String,
}

fn credentials(sa_dir: &Path) -> Result<Credentials> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").context("KUBERNETES_SERVICE_HOST is not set")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let token_path = sa_dir.join("token");
    let ca_path = sa_dir.join("ca.crt");
    Ok(Credentials {
        server: conflist::server_url(&host, &port),
        token: fs::read_to_string(&token_path).with_context(|| format!("read {}", token_path.display()))?,
        ca: fs::read(&ca_path).with_context(|| format!("read {}", ca_path.display()))?,
    })
}

fn write_kubeconfig(conf_dir: &Path, c: &Credentials) -> Result<()> {
    write_atomic(
        conf_dir,
        KUBECONFIG_NAME,
        conflist::kubeconfig(&c.server, &c.ca, &c.token).as_bytes(),
        0o600,
    )
}

fn config_names(conf_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(conf_dir).with_context(|| format!("list {}", conf_dir.display()))? {
        let e = e.with_context(|| format!("list {}", conf_dir.display()))?;
        // Files and symlinks, as libcni lists them (a symlink is replaced
        // by a file when edited).
        if e.file_type().is_ok_and(|t| !t.is_dir()) {
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_string());
            }
        }
    }
    Ok(names)
}

/// What one look at net.d found, so a state is logged once, not each poll.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    NoConfig,
    Unparsable(String),
    Installed(String),
    /// Rewritten by its owner while being edited: looked at again.
    Changing(String),
    Error(String),
}

/// Puts weft-cni's entry into the primary configuration if it is not there
/// (or is stale). Never overwrites a file it cannot parse.
fn ensure_chained(conf_dir: &Path, entry: &Value) -> Result<State> {
    let names = config_names(conf_dir)?;
    let Some(name) = conflist::primary(names.iter().map(String::as_str)) else {
        return Ok(State::NoConfig);
    };
    let path = conf_dir.join(name);
    let text = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let config: Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => return Ok(State::Unparsable(format!("{}: {e}", path.display()))),
    };
    let updated = match conflist::insert(&config, entry) {
        Ok(v) => v,
        Err(e) => return Ok(State::Unparsable(format!("{}: {e}", path.display()))),
    };
    if updated == config {
        return Ok(State::Installed(name.to_string()));
    }
    let new_name = conflist::list_name(name, &config);
    let mut data = serde_json::to_vec_pretty(&updated).context("serialise the conflist")?;
    data.push(b'\n');
    // The primary plugin may have rewritten it meanwhile: then the next
    // look edits its new content rather than this one overwriting it.
    if fs::read(&path).ok().as_deref() != Some(text.as_slice()) {
        return Ok(State::Changing(name.to_string()));
    }
    write_atomic(conf_dir, &new_name, &data, 0o644)?;
    if new_name != name {
        fs::remove_file(&path).with_context(|| format!("remove {} (now {new_name})", path.display()))?;
    }
    tracing::info!(file = %conf_dir.join(&new_name).display(), "chained weft-cni after the primary plugin");
    Ok(State::Installed(new_name))
}

/// Removes weft-cni's entry from every configuration in net.d, its
/// kubeconfig and its binary. Each step is tried even if another failed.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<()> {
    let mut failed = Vec::new();
    match config_names(conf_dir) {
        Ok(names) => {
            for name in names.iter().filter(|n| conflist::primary([n.as_str()]).is_some()) {
                let path = conf_dir.join(name);
                let Ok(text) = fs::read(&path) else { continue };
                let Ok(config) = serde_json::from_slice::<Value>(&text) else { continue };
                if let Some(updated) = conflist::remove(&config) {
                    let mut data = serde_json::to_vec_pretty(&updated).context("serialise the conflist")?;
                    data.push(b'\n');
                    match write_atomic(conf_dir, name, &data, 0o644) {
                        Ok(()) => {
                            tracing::info!(file = %path.display(), "removed weft-cni from the conflist")
                        }
                        Err(e) => failed.push(format!("{e:#}")),
                    }
                }
            }
        }
        Err(e) => failed.push(format!("{e:#}")),
    }
    for path in [conf_dir.join(KUBECONFIG_NAME), bin_dir.join(PLUGIN_TYPE)] {
        match fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failed.push(format!("remove {}: {e}", path.display())),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("uninstall incomplete: {}", failed.join("; "))
    }
}

/// `weft-cni install`: installs, then keeps weft-cni installed until SIGTERM
/// or SIGINT, then uninstalls.
pub fn install(args: &Args) -> Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
    for dir in [&args.bin_dir, &args.conf_dir] {
        anyhow::ensure!(dir.is_dir(), "{} is not a directory: is the host path mounted?", dir.display());
    }
    copy_binary(&args.bin_dir)?;
    let entry = args.entry();
    let mut creds: Option<Credentials> = None;
    let mut state: Option<State> = None;
    let poll = Duration::from_millis(args.poll_millis.max(10));
    while !STOP.load(Ordering::SeqCst) {
        match credentials(&args.service_account_dir) {
            Ok(c) if creds.as_ref() != Some(&c) => match write_kubeconfig(&args.conf_dir, &c) {
                Ok(()) => {
                    tracing::info!(path = %args.conf_dir.join(KUBECONFIG_NAME).display(), "wrote the plugin's kubeconfig");
                    creds = Some(c);
                }
                Err(e) => tracing::error!("cannot write the plugin's kubeconfig: {e:#}"),
            },
            Ok(_) => {}
            Err(e) if creds.is_none() => tracing::error!("cannot read the service account: {e:#}"),
            // A token being swapped: the old kubeconfig still holds one.
            Err(e) => tracing::debug!("cannot read the service account: {e:#}"),
        }
        let now = ensure_chained(&args.conf_dir, &entry).unwrap_or_else(|e| State::Error(format!("{e:#}")));
        if state.as_ref() != Some(&now) {
            match &now {
                State::NoConfig => tracing::warn!(
                    dir = %args.conf_dir.display(),
                    "no network configuration yet (.conflist, .conf, .json): waiting for the primary CNI plugin"
                ),
                State::Unparsable(why) => {
                    tracing::error!(
                        "the primary network configuration cannot be read; leaving it alone: {why}"
                    )
                }
                State::Installed(name) => tracing::info!(file = %name, "weft-cni is chained"),
                State::Changing(name) => tracing::debug!(file = %name, "being rewritten; looking again"),
                State::Error(e) => tracing::error!("cannot chain weft-cni: {e}"),
            }
            state = Some(now);
        }
        let mut slept = Duration::ZERO;
        while slept < poll && !STOP.load(Ordering::SeqCst) {
            let step = Duration::from_millis(50).min(poll - slept);
            std::thread::sleep(step);
            slept += step;
        }
    }
    tracing::info!("stopping: removing weft-cni from this node");
    uninstall(&args.bin_dir, &args.conf_dir)
}
