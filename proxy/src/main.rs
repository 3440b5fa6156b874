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

fn validate(args: &[String]) -> ExitCode {
    use weft_proxy::validate::{
        Validation, DEFAULT_CONNECT_IPS, DEFAULT_CONNECT_PORT, DEFAULT_OUTBOUND_PORT,
    };
    let mut timeout = std::time::Duration::from_secs(10);
    let mut port = DEFAULT_CONNECT_PORT;
    let mut connect: Vec<std::net::SocketAddr> = Vec::new();
    let mut outbound_port = DEFAULT_OUTBOUND_PORT;
    for arg in args {
        let ok = if let Some(v) = arg.strip_prefix("--timeout=") {
            parse_duration(v).map(|t| timeout = t).is_some()
        } else if let Some(v) = arg.strip_prefix("--connect-port=") {
            v.parse().map(|p| port = p).is_ok()
        } else if let Some(v) = arg.strip_prefix("--connect-addr=") {
            v.parse().map(|a| connect.push(a)).is_ok()
        } else if let Some(v) = arg.strip_prefix("--outbound-port=") {
            v.parse().map(|p| outbound_port = p).is_ok()
        } else {
            false
        };
        if !ok {
            eprintln!(
                "weft-proxy validate: unexpected argument {arg:?}: expected --timeout=DURATION, --connect-port=PORT, --connect-addr=IP:PORT or --outbound-port=PORT"
            );
            return ExitCode::from(2);
        }
    }
    if connect.is_empty() {
        connect = DEFAULT_CONNECT_IPS.iter().map(|ip| std::net::SocketAddr::new(*ip, port)).collect();
    }
    match weft_proxy::validate::validate(&Validation::new(outbound_port, connect, timeout)) {
        Ok(checked) => {
            for (connect, at) in checked {
                println!("weft-proxy validate: outbound TCP is redirected to the proxy ({connect} arrived at {at})");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("weft-proxy validate: {error}");
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
    weft-proxy validate [--timeout=DUR] [--connect-port=PORT] [--connect-addr=IP:PORT]...
                        [--outbound-port=PORT]
                                     the CNI-mode init container: check that this pod's outbound TCP
                                     is redirected to the proxy's port (default 4140) by connecting
                                     to never-routed addresses (192.0.2.1 and 2001:db8::1, each
                                     family the pod has a route for, port 4149; or the
                                     --connect-addr given) and accepting the connections itself;
                                     exits 1, saying why, if the weft-cni plugin did not write the
                                     rules (default timeout 10s each); run it as a non-root UID
                                     other than the proxy's 2102

Every environment variable is documented in proxy/README.md.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("await") => return await_ready(&args[1..]),
        Some("validate") => return validate(&args[1..]),
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
