//! A strict parser of hound's Prometheus text exposition (`GET /metrics`).

/// A Prometheus text exposition, checked line by line: `# HELP name text`, `# TYPE name kind`
/// (before the family's samples, once each), and samples `name{label="value",…} value` with
/// no timestamp, no duplicate series and no sample outside a declared family.
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: std::collections::BTreeMap<String, f64>,
    text: String,
}

impl Metrics {
    /// Parses `text`; panics naming the first line that breaks the grammar.
    pub fn parse(text: &str) -> Metrics {
        Metrics::try_parse(text).unwrap_or_else(|why| panic!("{why}\n{text}"))
    }

    /// Parses `text`, or says which line breaks the grammar and how.
    pub fn try_parse(text: &str) -> Result<Metrics, String> {
        use std::collections::{BTreeMap, BTreeSet};
        let mut samples = BTreeMap::new();
        let mut helped = BTreeSet::new();
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        if !text.ends_with('\n') {
            return Err("the exposition does not end with a newline".to_owned());
        }
        for (n, line) in text.lines().enumerate() {
            let bad = |why: &str| format!("/metrics line {}: {why}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest
                    .split_once(' ')
                    .ok_or_else(|| bad("HELP without text"))?;
                if !is_metric_name(name) || help.trim().is_empty() {
                    return Err(bad("bad HELP line"));
                }
                if !helped.insert(name.to_owned()) {
                    return Err(bad("second HELP for one family"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| bad("TYPE without kind"))?;
                if !is_metric_name(name)
                    || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                {
                    return Err(bad("bad TYPE line"));
                }
                if typed.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(bad("second TYPE for one family"));
                }
                continue;
            }
            if line.starts_with('#') {
                return Err(bad("a comment that is neither HELP nor TYPE"));
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().map_err(|_| bad("value is not a number"))?,
            };
            let name = series.split('{').next().unwrap_or("");
            if !is_metric_name(name) {
                return Err(bad("bad metric name"));
            }
            if let Some(labels) = series[name.len()..].strip_prefix('{') {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or_else(|| bad("unclosed labels"))?;
                if !is_label_list(labels) {
                    return Err(bad("bad label list"));
                }
            } else if series.len() != name.len() {
                return Err(bad("junk after the metric name"));
            }
            // Histogram and summary samples carry a suffix their family name lacks.
            let family = ["_count", "_sum", "_bucket"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix).filter(|base| {
                        typed
                            .get(*base)
                            .is_some_and(|kind| kind == "histogram" || kind == "summary")
                    })
                })
                .unwrap_or(name);
            match typed.get(family).map(String::as_str) {
                None => return Err(bad("sample before its TYPE line")),
                Some("counter") if value.is_nan() || value < 0.0 => {
                    return Err(bad("a negative counter"));
                }
                Some(_) => {}
            }
            if samples.insert(series.to_owned(), value).is_some() {
                return Err(bad("the same series twice"));
            }
        }
        Ok(Metrics {
            samples,
            text: text.to_owned(),
        })
    }

    /// The value of `series` exactly as written, e.g. `hound_sockets{kind="monitor"}`.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The value of `series`, which must be present.
    pub fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", self.text))
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name="value",name="value"` with Prometheus escapes (`\\`, `\"`, `\n`) in values.
fn is_label_list(mut rest: &str) -> bool {
    let mut names = std::collections::BTreeSet::new();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once("=\"") else {
            return false;
        };
        let mut chars = name.chars();
        let name_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok || !names.insert(name) {
            return false;
        }
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, '\\' | '"' | 'n') => escaped = false,
                (true, _) => return false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, '\n') => return false,
                (false, _) => {}
            }
        }
        let Some(end) = end else { return false };
        rest = &after[end + 1..];
        if let Some(next) = rest.strip_prefix(',') {
            rest = next;
            if rest.is_empty() {
                return false;
            }
        } else if !rest.is_empty() {
            return false;
        }
    }
    true
}
