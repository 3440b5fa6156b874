//! weft-cni: run by the container runtime with `CNI_*` variables and the
//! network configuration on stdin; answers on stdout (a result, or a CNI
//! error object with a non-zero exit). Run by the chart's DaemonSet as
//! `weft-cni install` (or once as `weft-cni uninstall`), it installs itself
//! on the node instead; runtimes never pass arguments, so the two cannot mix.

use std::io::{Read, Write};
use std::process::ExitCode;

use weft_cni::config::DEFAULT_VERSION;
use weft_cni::error::code;
use weft_cni::{invoke, CniError, Reply};

/// Where the iptables tools are looked for when the runtime passes no PATH
/// (some run plugins with an almost empty environment).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if let Some(command) = args.nth(1) {
        return installer_main(&command, std::env::args_os().skip(1));
    }
    if std::env::var_os("PATH").is_none_or(|p| p.is_empty()) {
        // Single-threaded here: nothing else reads the environment yet.
        std::env::set_var("PATH", DEFAULT_PATH);
    }
    let mut stdin = Vec::new();
    let reply = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => {
            let var = |k: &str| std::env::var(k).ok();
            // A bug must still end in a CNI error, not a crash without one.
            std::panic::catch_unwind(|| invoke(&var, &stdin)).unwrap_or_else(|_| Reply {
                cni_version: DEFAULT_VERSION.into(),
                result: Err(CniError::new(code::INTERNAL, "weft-cni panicked", "see the log file")),
            })
        }
        Err(e) => Reply {
            cni_version: DEFAULT_VERSION.into(),
            result: Err(CniError::new(
                code::IO_FAILURE,
                "cannot read the network configuration",
                e.to_string(),
            )),
        },
    };
    let (text, status) = match &reply.result {
        Ok(Some(value)) => (Some(value.to_string()), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => (Some(e.to_json(&reply.cni_version).to_string()), ExitCode::FAILURE),
    };
    if let Some(text) = text {
        let mut out = std::io::stdout().lock();
        // Nothing better to do if stdout is gone: the runtime is too.
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    }
    status
}

/// `weft-cni install|uninstall [options]`, logging to stderr.
fn installer_main(command: &std::ffi::OsStr, args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    use clap::Parser;
    use weft_cni::installer;
    let run = match command.to_str() {
        Some("--version") => {
            println!("weft-cni {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("install") => installer::install,
        Some("uninstall") => |a: &installer::Args| installer::uninstall(&a.bin_dir, &a.conf_dir),
        _ => {
            eprintln!(
                "weft-cni: unknown command {command:?}: a runtime runs weft-cni without arguments; \
                 the DaemonSet runs `weft-cni install` (or `weft-cni uninstall`)"
            );
            return ExitCode::from(2);
        }
    };
    // --help exits 0, a bad argument 2, with clap's message.
    let args = installer::Args::try_parse_from(args).unwrap_or_else(|e| e.exit());
    weft_cni::log::init(None, &args.log_level);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("weft-cni {}: {e:#}", command.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}
