//! Logging: a `tracing` subscriber whose filter the admin server can change
//! at run time.

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

use crate::config::LogFormat;

#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    current: std::sync::Arc<std::sync::Mutex<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log filter {0:?}: {1}")]
    Filter(String, String),
    #[error("log filter cannot be changed: {0}")]
    Reload(#[from] reload::Error),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

pub fn init(filter: &str, format: LogFormat) -> Result<LogLevel, LogError> {
    let env_filter = parse(filter)?;
    let (filter_layer, handle) = reload::Layer::new(env_filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let plain =
        (format == LogFormat::Plain).then(|| fmt::layer().with_ansi(ansi).with_writer(std::io::stderr));
    let json = (format == LogFormat::Json).then(|| fmt::layer().json().with_writer(std::io::stderr));
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(plain)
        .with(json)
        .try_init()
        .map_err(|_| LogError::AlreadyInstalled)?;
    Ok(LogLevel { handle, current: std::sync::Arc::new(std::sync::Mutex::new(filter.to_string())) })
}

fn parse(filter: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder().parse(filter).map_err(|e| LogError::Filter(filter.to_string(), e.to_string()))
}

impl LogLevel {
    pub fn get(&self) -> String {
        self.current.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn set(&self, filter: &str) -> Result<(), LogError> {
        let filter = filter.trim();
        self.handle.reload(parse(filter)?)?;
        if let Ok(mut current) = self.current.lock() {
            *current = filter.to_string();
        }
        Ok(())
    }
}
