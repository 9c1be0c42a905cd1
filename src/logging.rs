//! Log lines on stderr: simplelog's text for people, or one JSON object per line for log
//! shippers (`--log-format json`).

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::LogFormat;
use crate::message::json_string;

/// Only hound's own records (the `hound_dog` library and the `hound` binary): its
/// dependencies (tonic, h2, tiny_http) log plenty at debug.
const OURS: &str = "hound";

/// Installs the logger for the process; a second call changes nothing.
pub fn init(level: LevelFilter, format: LogFormat) {
    match format {
        LogFormat::Text => {
            let config = simplelog::ConfigBuilder::new()
                .set_target_level(LevelFilter::Off)
                .set_thread_level(LevelFilter::Off)
                .add_filter_allow_str(OURS)
                .build();
            let _ = simplelog::WriteLogger::init(level, config, std::io::stderr());
        }
        LogFormat::Json => {
            if log::set_boxed_logger(Box::new(JsonLogger { level })).is_ok() {
                log::set_max_level(level);
            }
        }
    }
}

struct JsonLogger {
    level: LevelFilter,
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with(OURS)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = json_line(OffsetDateTime::now_utc(), record);
        // One write per line, so lines from different threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// `{"time":"2026-11-28T16:02:11.123456Z","level":"INFO","message":"…"}` and a newline.
fn json_line(now: OffsetDateTime, record: &Record<'_>) -> String {
    let time = now.format(&Rfc3339).unwrap_or_default();
    format!(
        "{{\"time\":{},\"level\":\"{}\",\"message\":{}}}\n",
        json_string(&time),
        record.level().as_str(),
        json_string(&record.args().to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_is_one_object_with_time_level_and_message() {
        let now = OffsetDateTime::from_unix_timestamp(1_764_345_600).unwrap();
        let line = json_line(
            now,
            &Record::builder()
                .args(format_args!(
                    "registered {} \"quoted\"\nnext",
                    "svc/api/10.0.0.1:80"
                ))
                .level(log::Level::Warn)
                .target("hound_dog::etcd")
                .build(),
        );
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        assert!(line.starts_with("{\"time\":"), "{line}");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "time": "2025-11-28T16:00:00Z",
                "level": "WARN",
                "message": "registered svc/api/10.0.0.1:80 \"quoted\"\nnext",
            })
        );
    }
}
