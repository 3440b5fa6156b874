//! The demo's live summary, computed the way Linkerd's dashboards do: from
//! the proxies' own Prometheus metrics (inbound `response_total` and the
//! `response_latency_ms` histogram), over a sliding window.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

/// One scrape of one proxy's inbound side.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub total: f64,
    pub success: f64,
    /// Cumulative latency buckets: upper bound (ms) → count.
    pub buckets: Vec<(f64, f64)>,
}

/// The samples of a Prometheus text exposition: (name, labels, value).
pub fn samples(text: &str) -> impl Iterator<Item = (&str, BTreeMap<String, String>, f64)> {
    text.lines().filter(|line| !line.starts_with('#')).filter_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse::<f64>().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        Some((name, parse_labels(labels), value))
    })
}

/// Parses the Prometheus text exposition of a weft-proxy, keeping the
/// inbound series (what the workload behind the proxy served).
pub fn parse(text: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (name, labels, value) in samples(text) {
        if labels.get("direction").map(String::as_str) != Some("inbound") {
            continue;
        }
        match name {
            "response_total" => {
                snap.total += value;
                if labels.get("classification").map(String::as_str) == Some("success") {
                    snap.success += value;
                }
            }
            "response_latency_ms_bucket" => {
                let le = match labels.get("le").map(String::as_str) {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse::<f64>() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
            }
            _ => {}
        }
    }
    let mut b: Vec<(f64, f64)> = buckets.into_values().collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    snap.buckets = b;
    snap
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// What one workload did over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub requests: f64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub fn between(old: &Snapshot, new: &Snapshot, secs: f64) -> Stats {
    let requests = (new.total - old.total).max(0.0);
    let success = (new.success - old.success).max(0.0);
    let deltas: Vec<(f64, f64)> = new
        .buckets
        .iter()
        .map(|(le, n)| {
            let before = old.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
            (*le, (n - before).max(0.0))
        })
        .collect();
    Stats {
        requests,
        rps: if secs > 0.0 { requests / secs } else { 0.0 },
        success_rate: (requests > 0.0).then(|| success / requests),
        p50_ms: quantile(&deltas, 0.5),
        p99_ms: quantile(&deltas, 0.99),
    }
}

/// `histogram_quantile` as Prometheus computes it: linear within the bucket
/// the rank falls in; the last finite bound if it falls in `+Inf`.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut prev_le, mut prev_count) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let width = count - prev_count;
            let frac = if width > 0.0 { (rank - prev_count) / width } else { 1.0 };
            return Some(prev_le + (le - prev_le) * frac);
        }
        prev_le = le;
        prev_count = count;
    }
    Some(prev_le)
}

/// Recent scrapes of one workload, oldest first, for a sliding window.
#[derive(Default)]
pub struct History {
    samples: VecDeque<(Instant, Snapshot)>,
}

impl History {
    pub fn push(&mut self, at: Instant, snap: Snapshot, window: std::time::Duration) {
        self.samples.push_back((at, snap));
        while self.samples.len() > 2
            && self.samples.front().is_some_and(|(t, _)| at.duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
    }

    pub fn window(&self) -> Stats {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, a)), Some((t1, b))) => between(a, b, t1.duration_since(*t0).as_secs_f64()),
            _ => Stats::default(),
        }
    }
}

pub fn fmt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

pub fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE response_total counter
response_total{direction="inbound",authority="web:80",tls="true",client_id="a",status_code="200",classification="success"} 90
response_total{direction="inbound",authority="web:80",tls="true",client_id="a",status_code="500",classification="failure"} 10
response_total{direction="outbound",authority="x:80",tls="true",status_code="200",classification="success"} 1000
response_latency_ms_bucket{direction="inbound",authority="web:80",tls="true",status_code="200",le="1"} 10
response_latency_ms_bucket{direction="inbound",authority="web:80",tls="true",status_code="200",le="10"} 90
response_latency_ms_bucket{direction="inbound",authority="web:80",tls="true",status_code="200",le="+Inf"} 90
response_latency_ms_bucket{direction="inbound",authority="web:80",tls="true",status_code="500",le="1"} 0
response_latency_ms_bucket{direction="inbound",authority="web:80",tls="true",status_code="500",le="10"} 0
response_latency_ms_bucket{direction="inbound",authority="web:80",tls="true",status_code="500",le="+Inf"} 10
"#;

    #[test]
    fn summary_from_proxy_metrics() {
        let s = parse(TEXT);
        assert_eq!(s.total, 100.0);
        assert_eq!(s.success, 90.0);
        assert_eq!(s.buckets, vec![(1.0, 10.0), (10.0, 90.0), (f64::INFINITY, 100.0)]);
        let st = between(&Snapshot::default(), &s, 10.0);
        assert_eq!(st.rps, 10.0);
        assert_eq!(st.success_rate, Some(0.9));
        // Rank 50 of 100 lies 40/80 of the way through the 1..10 bucket.
        assert_eq!(st.p50_ms, Some(5.5));
        assert_eq!(st.p99_ms, Some(10.0));
        assert_eq!(between(&s, &s, 1.0).success_rate, None);
    }
}
