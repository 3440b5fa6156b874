use std::process::ExitCode;

use weft_proxy::config::Config;

fn main() -> ExitCode {
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
