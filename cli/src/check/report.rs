//! The results of `weft check`, printed as `linkerd check` prints them
//! (a heading per category, `√` / `‼` / `×` per check, the problem and a
//! hint indented below), or collected into one JSON document in Linkerd's
//! `-o json` shape.

use std::io::Write;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Warning,
    Error,
}

impl Outcome {
    fn symbol(self) -> &'static str {
        match self {
            Outcome::Success => "√",
            Outcome::Warning => "‼",
            Outcome::Error => "×",
        }
    }
}

/// What one check found: the outcome, and for a warning or an error what is
/// wrong and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub outcome: Outcome,
    pub message: Option<String>,
    pub hint: Option<String>,
}

impl Finding {
    pub fn ok() -> Self {
        Self { outcome: Outcome::Success, message: None, hint: None }
    }

    pub fn error(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { outcome: Outcome::Error, message: Some(message.into()), hint: Some(hint.into()) }
    }

    pub fn warning(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { outcome: Outcome::Warning, message: Some(message.into()), hint: Some(hint.into()) }
    }

    pub fn is_error(&self) -> bool {
        self.outcome == Outcome::Error
    }
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub result: Outcome,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Category {
    pub category_name: String,
    pub checks: Vec<CheckResult>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `linkerd check`'s text.
    Table,
    /// One JSON document: `{"success": .., "categories": [{"categoryName": .., "checks": [..]}]}`.
    Json,
}

/// Collects results; in text form each is printed as soon as it is known,
/// so a slow check shows where it is.
pub struct Report<W: Write> {
    format: Format,
    out: W,
    categories: Vec<Category>,
}

#[derive(Serialize)]
struct Document<'a> {
    success: bool,
    categories: &'a [Category],
}

impl<W: Write> Report<W> {
    pub fn new(format: Format, out: W) -> Self {
        Self { format, out, categories: Vec::new() }
    }

    pub fn category(&mut self, name: &str) {
        if self.format == Format::Table {
            if !self.categories.is_empty() {
                let _ = writeln!(self.out);
            }
            let _ = writeln!(self.out, "{name}\n{}", "-".repeat(name.chars().count()));
            let _ = self.out.flush();
        }
        self.categories.push(Category { category_name: name.to_string(), checks: Vec::new() });
    }

    /// Records a check; returns whether it passed without error.
    pub fn add(&mut self, description: impl Into<String>, finding: Finding) -> bool {
        let description = description.into();
        if self.format == Format::Table {
            let _ = writeln!(self.out, "{} {description}", finding.outcome.symbol());
            for line in finding.message.iter().flat_map(|m| m.lines()) {
                let _ = writeln!(self.out, "    {line}");
            }
            if let Some(hint) = &finding.hint {
                let _ = writeln!(self.out, "    see {hint}");
            }
            let _ = self.out.flush();
        }
        let ok = !finding.is_error();
        if self.categories.is_empty() {
            self.categories.push(Category { category_name: String::new(), checks: Vec::new() });
        }
        if let Some(category) = self.categories.last_mut() {
            category.checks.push(CheckResult {
                description,
                hint: finding.hint,
                error: finding.message,
                result: finding.outcome,
            });
        }
        ok
    }

    pub fn success(&self) -> bool {
        self.categories.iter().flat_map(|c| &c.checks).all(|c| c.result != Outcome::Error)
    }

    /// Prints the summary (text) or the whole document (JSON); returns
    /// whether every check passed without error.
    pub fn finish(mut self) -> std::io::Result<bool> {
        let success = self.success();
        match self.format {
            Format::Table => {
                let symbol = if success { "√" } else { "×" };
                writeln!(self.out, "\nStatus check results are {symbol}")?;
            }
            Format::Json => {
                let doc = Document { success, categories: &self.categories };
                serde_json::to_writer_pretty(&mut self.out, &doc)?;
                writeln!(self.out)?;
            }
        }
        self.out.flush()?;
        Ok(success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_linkerd_check() {
        let mut r = Report::new(Format::Table, Vec::new());
        r.category("kubernetes-api");
        assert!(r.add("can query the Kubernetes API", Finding::ok()));
        r.category("kubernetes-version");
        assert!(!r.add(
            "is running the minimum Kubernetes API version",
            Finding::error("Kubernetes 1.20.4 is older than 1.21\nsecond line", "the hint")
        ));
        assert!(r.add("a warning", Finding::warning("w", "h")));
        let mut out = Vec::new();
        std::mem::swap(&mut out, &mut r.out);
        assert!(!r.finish().unwrap());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "kubernetes-api\n--------------\n√ can query the Kubernetes API\n\n\
             kubernetes-version\n------------------\n× is running the minimum Kubernetes API version\n    \
             Kubernetes 1.20.4 is older than 1.21\n    second line\n    see the hint\n‼ a warning\n    w\n    see h\n"
        );
    }

    #[test]
    fn json_has_linkerds_shape() {
        let mut out = Vec::new();
        {
            let mut r = Report::new(Format::Json, &mut out);
            r.category("kubernetes-api");
            r.add("can query the Kubernetes API", Finding::ok());
            r.add("x", Finding::warning("w", "h"));
            assert!(r.finish().unwrap());
        }
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["success"], true);
        assert_eq!(v["categories"][0]["categoryName"], "kubernetes-api");
        assert_eq!(v["categories"][0]["checks"][0]["result"], "success");
        assert!(v["categories"][0]["checks"][0].get("error").is_none());
        assert_eq!(v["categories"][0]["checks"][1]["result"], "warning");
        assert_eq!(v["categories"][0]["checks"][1]["error"], "w");
        assert_eq!(v["categories"][0]["checks"][1]["hint"], "h");
    }
}
