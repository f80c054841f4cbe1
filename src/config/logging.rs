//! `[logging]`: how log lines are written (text for people, JSON for log pipelines). The level
//! stays an environment matter (`PATLESS_LOG`, `RUST_LOG`), as in every `tracing` program.

use super::check::Errors;
use super::raw::RawLogging;

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One line of text per event (colour only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields.
    Json,
}

/// `[logging]`, validated.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingConfig {
    /// Text or JSON.
    pub format: LogFormat,
}

/// Validates `[logging]`.
pub(super) fn validate(errs: &mut Errors, raw: &RawLogging) -> LoggingConfig {
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errs.add(
                "logging.format",
                format!("`{other}`: expected \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    LoggingConfig { format }
}

impl LoggingConfig {
    /// `[logging]` as `patless config` prints it.
    pub(super) fn to_raw(self) -> RawLogging {
        RawLogging {
            format: Some(
                match self.format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .to_string(),
            ),
        }
    }
}
