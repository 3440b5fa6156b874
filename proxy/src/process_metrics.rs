//! The process's own health, as Prometheus's client libraries and
//! linkerd2-proxy name it (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, `process_open_fds`, ...), so the dashboards
//! built for Linkerd's proxies show weft's too.
//!
//! Read from `/proc/self` when `/metrics` is scraped rather than on a timer:
//! a proxy nobody scrapes spends nothing on it, and a scrape always sees
//! the current values. `process_cpu_seconds_total` is a gauge set to the
//! kernel's running total (the `metrics` crate's counters are integers);
//! `rate()` reads it the same.

use std::{sync::OnceLock, time::SystemTime};

/// Sets the process gauges to what `/proc/self` says now. Values the kernel
/// does not give (not Linux, a sandbox without `/proc`) are left out rather
/// than reported as 0.
pub fn refresh() {
    let start = *START.get_or_init(|| {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
    });
    metrics::gauge!("process_start_time_seconds").set(start);
    if let Some(stat) = read_stat() {
        metrics::gauge!("process_cpu_seconds_total").set(stat.cpu_seconds);
        metrics::gauge!("process_virtual_memory_bytes").set(stat.virtual_bytes);
        metrics::gauge!("process_resident_memory_bytes").set(stat.resident_bytes);
        metrics::gauge!("process_threads").set(stat.threads);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
    if let Some(max) = max_fds() {
        metrics::gauge!("process_max_fds").set(max);
    }
}

/// When the proxy started: set by the first refresh, which
/// `metrics::install` makes at start-up.
static START: OnceLock<f64> = OnceLock::new();

struct Stat {
    cpu_seconds: f64,
    virtual_bytes: f64,
    resident_bytes: f64,
    threads: f64,
}

fn read_stat() -> Option<Stat> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?, clock_ticks()?, page_size()?)
}

/// `/proc/self/stat` (proc(5)): the command name in parentheses may hold
/// spaces and parentheses itself, so fields are counted after its last `)`.
fn parse_stat(stat: &str, ticks_per_second: f64, page_size: f64) -> Option<Stat> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / ticks_per_second,
        threads: field(20)?,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
    })
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf reads a constant of the running system; no memory is
    // handed over.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

fn page_size() -> Option<f64> {
    // SAFETY: as above.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (size > 0).then_some(size as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may
        // name itself.
        let stat = "4242 (weft (x) proxy) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0 \
                    12345 31457280 2048 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(stat, 100.0, 4096.0).expect("parses");
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 3.0);
        assert_eq!(s.virtual_bytes, 31_457_280.0);
        assert_eq!(s.resident_bytes, 2048.0 * 4096.0);
        assert!(parse_stat("garbage", 100.0, 4096.0).is_none());
        assert!(parse_stat("1 (x) S 1", 100.0, 4096.0).is_none());
    }

    #[test]
    fn this_process_reports_its_memory_and_fds() {
        let s = read_stat().expect("/proc/self/stat on Linux");
        assert!(s.resident_bytes > 1_000_000.0, "{}", s.resident_bytes);
        assert!(s.threads >= 1.0);
        assert!(max_fds().is_some_and(|n| n >= 64.0));
    }
}
