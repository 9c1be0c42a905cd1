//! The one results table, the machine it ran on, and where the markdown goes.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether a row meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// Reported, no target.
    Info,
}

impl Verdict {
    pub fn from(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "**met**",
            Verdict::Missed => "**missed**",
            Verdict::Info => "",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub hound: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
}

/// Rows and notes gathered while the bench runs.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    /// Adds a row and echoes it to stderr so progress is visible.
    pub fn row(&mut self, row: Row) {
        eprintln!(
            "  [{}] {}: {} | {} | {} | {} {}",
            row.section,
            row.what,
            row.hound,
            row.baseline,
            row.ratio,
            row.target,
            row.verdict.text()
        );
        self.rows.push(row);
    }

    /// A row without baseline or target.
    pub fn info(&mut self, section: &'static str, what: impl Into<String>, hound: String) {
        self.row(Row {
            section,
            what: what.into(),
            hound,
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
            verdict: Verdict::Info,
        });
    }

    /// A row for a measurement that could not be made.
    pub fn failed(&mut self, section: &'static str, what: impl Into<String>, why: &str) {
        self.row(Row {
            section,
            what: what.into(),
            hound: format!("failed: {}", why.lines().next().unwrap_or(why)),
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
            verdict: Verdict::Missed,
        });
        self.note(format!("{section}: {why}"));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("  note: {note}");
        self.notes.push(note);
    }

    /// The table, in markdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| # | measurement | hound | baseline (same run) | hound ÷ baseline | target | verdict |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|\n");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.section,
                cell(&row.what),
                cell(&row.hound),
                cell(&row.baseline),
                cell(&row.ratio),
                cell(&row.target),
                row.verdict.text()
            );
        }
        out
    }

    pub fn met_and_missed(&self) -> (usize, usize) {
        let met = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Met)
            .count();
        let missed = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Missed)
            .count();
        (met, missed)
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// What the bench ran on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub lines: Vec<(String, String)>,
}

impl Machine {
    pub fn describe(extra: &[(&str, String)]) -> Machine {
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".to_owned(), |s| s.trim().to_owned());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<f64>().ok())
            })
            .map_or("unknown".to_owned(), |kib| {
                format!("{:.1} GiB", kib / 1024.0 / 1024.0)
            });
        let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let mut lines = vec![
            ("date (UTC)".to_owned(), utc_now()),
            ("nproc".to_owned(), nproc.to_string()),
            ("CPU".to_owned(), cpu),
            ("memory".to_owned(), memory),
            ("kernel".to_owned(), kernel),
            ("rustc".to_owned(), rustc),
        ];
        lines.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        Machine { lines }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        for (key, value) in &self.lines {
            let _ = writeln!(out, "- {key}: {value}");
        }
        out
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, without a date library.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Markers around the generated part of `docs/performance.md`.
pub const BEGIN: &str = "<!-- hound-bench results: begin -->";
pub const END: &str = "<!-- hound-bench results: end -->";

/// Replaces the generated part of the performance doc with `section`.
pub fn update_doc(doc: &Path, section: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(doc)
        .map_err(|err| format!("cannot read {}: {err}", doc.display()))?;
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        return Err(format!(
            "{} has no `{BEGIN}` … `{END}` section",
            doc.display()
        ));
    };
    if end < begin {
        return Err(format!("{}: markers out of order", doc.display()));
    }
    let updated = format!("{}{BEGIN}\n{section}{}", &text[..begin], &text[end..]);
    std::fs::write(doc, updated).map_err(|err| format!("cannot write {}: {err}", doc.display()))
}
