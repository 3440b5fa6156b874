//! Logs go to a file (the chart's DaemonSet can collect it), never to
//! stdout, which carries the CNI result. stderr is the fallback when the
//! file cannot be opened: runtimes keep a plugin's stderr in their logs.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Logs to `file`, or to stderr when there is none (the configuration could
/// not be read: its error goes back to the runtime anyway).
pub fn init(file: Option<&Path>, level: &str) {
    let filter = || EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = || tracing_subscriber::fmt().with_ansi(false).with_env_filter(filter());
    // A second init (the configuration was read after a first, default
    // one) keeps the first: try_init fails harmlessly.
    let Some(file) = file else {
        let _ = builder().with_writer(std::io::stderr).try_init();
        return;
    };
    match OpenOptions::new().create(true).append(true).open(file) {
        Ok(f) => {
            let _ = builder().with_writer(Mutex::new(f)).try_init();
        }
        Err(e) => {
            eprintln!("weft-cni: cannot open the log file {}: {e}; logging to stderr", file.display());
            let _ = builder().with_writer(std::io::stderr).try_init();
        }
    }
}
