//! Prometheus text as the binaries' `/metrics` endpoints render it.

use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of every sample of `name` whose labels include all of
    /// `labels`; 0 when there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every sample of `name`: its labels and value.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (HashMap<String, String>, f64)> + 'a {
        self.0.lines().filter(|l| !l.starts_with('#')).filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            (n == name).then(|| Some((parse_labels(labels), value.parse().ok()?)))?
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples(name).next().is_some()
    }
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `a="x",b="y \"q\""` → {a: x, b: y "q"}.
fn parse_labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_sums() {
        let m = Metrics(
            "# HELP x\nrequest_total{direction=\"inbound\",tls=\"true\",client_id=\"a.b\"} 3\n\
             request_total{direction=\"inbound\",tls=\"no_identity\"} 2\nup 1\nq{v=\"a\\\"b,c\"} 4\n"
                .into(),
        );
        assert_eq!(m.get("request_total", &[]), 5.0);
        assert_eq!(m.get("request_total", &[("tls", "true"), ("client_id", "a.b")]), 3.0);
        assert_eq!(m.get("up", &[]), 1.0);
        assert_eq!(m.get("q", &[("v", "a\"b,c")]), 4.0);
        assert!(!m.has("nope"));
    }
}
