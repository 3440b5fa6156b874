use std::process::ExitCode;

use weft_proxy::config::{parse_duration, Config};

fn await_ready(args: &[String]) -> ExitCode {
    let mut timeout = std::time::Duration::from_secs(120);
    for arg in args {
        match arg.strip_prefix("--timeout=").map(parse_duration) {
            Some(Some(t)) => timeout = t,
            _ => {
                eprintln!(
                    "weft-proxy await: unexpected argument {arg:?}: expected --timeout=DURATION (e.g. 120s)"
                );
                return ExitCode::from(2);
            }
        }
    }
    // The admin address comes from the same variable the proxy reads.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("weft-proxy await: {error}");
            return ExitCode::from(2);
        }
    };
    match weft_proxy::await_ready::await_ready(&config.admin_addrs.addrs, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft-proxy await: {error}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "\
weft-proxy: the weft mesh's sidecar proxy.

USAGE:
    weft-proxy                       run the proxy, configured by WEFT_PROXY_* environment variables
    weft-proxy await [--timeout=DUR] wait until the local proxy's /ready answers 200 (default 120s);
                                     for a postStart hook when the proxy is not a native sidecar

Every environment variable is documented in proxy/README.md.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("await") => return await_ready(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("weft-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("weft-proxy: unknown argument {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("weft-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    let log = match weft_proxy::log::init(&config.log, config.log_format) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("weft-proxy: invalid WEFT_PROXY_LOG: {error}");
            return ExitCode::from(2);
        }
    };
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for unknown in weft_proxy::config::unknown_variables(names) {
        tracing::warn!(
            variable = %unknown.name,
            closest = unknown.closest,
            "ignoring unknown variable {} (did you mean {}?)",
            unknown.name,
            unknown.closest
        );
    }
    let runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.worker_threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(weft_proxy::run(config, Some(log))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "weft-proxy failed");
            eprintln!("weft-proxy: {error}");
            ExitCode::FAILURE
        }
    }
}
