//! [`WriteMode`]: how a stream's records land in its table, chosen per
//! stream by the operator (`--mode STREAM=MODE`, `modes = { STREAM =
//! "MODE" }` in `sluice.toml`); [`ProtocolFormat`]: the protocol a run
//! speaks on stdout instead (`--output singer|airbyte`).

use std::fmt;
use std::str::FromStr;

/// How a stream's records land in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum WriteMode {
    /// Every record becomes a new row: no key, no dedupe (the table keeps
    /// every revision; a re-read record, such as an inclusive cursor's
    /// boundary record, is a second row).
    Append,
    /// Upsert by the stream's primary key: the last record of a key wins.
    #[default]
    Merge,
    /// Read in full and replace the table: rows the run did not write are
    /// removed when it succeeds (keys the run saw, quarantined ones too,
    /// are kept).
    FullRefresh,
}

/// Every mode's name, as written.
pub const WRITE_MODES: [&str; 3] = ["append", "merge", "full_refresh"];

impl WriteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Append => "append",
            WriteMode::Merge => "merge",
            WriteMode::FullRefresh => "full_refresh",
        }
    }
}

impl FromStr for WriteMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "append" => Ok(WriteMode::Append),
            "merge" => Ok(WriteMode::Merge),
            "full_refresh" | "full-refresh" => Ok(WriteMode::FullRefresh),
            other => Err(format!(
                "unknown write mode {other:?}: one of {}",
                WRITE_MODES.join(", ")
            )),
        }
    }
}

impl fmt::Display for WriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::text::serde_as_text!(WriteMode);

/// `STREAM=MODE` of `--mode`.
pub fn parse_stream_mode(text: &str) -> Result<(String, WriteMode), String> {
    let (stream, mode) = text
        .split_once('=')
        .ok_or_else(|| format!("expected STREAM=MODE, got {text:?}"))?;
    if stream.is_empty() {
        return Err(format!("expected STREAM=MODE, got {text:?}"));
    }
    Ok((stream.to_string(), mode.parse()?))
}

/// Which protocol a run's output speaks on stdout (`--output`), instead of
/// writing tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolFormat {
    /// Singer: SCHEMA, RECORD and STATE messages.
    Singer,
    /// Airbyte: RECORD, per-stream STATE and TRACE (error) messages.
    Airbyte,
}

impl ProtocolFormat {
    /// `singer` or `airbyte`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolFormat::Singer => "singer",
            ProtocolFormat::Airbyte => "airbyte",
        }
    }

    /// The format named `name` (`singer`, `airbyte`).
    pub fn parse(name: &str) -> Option<Self> {
        [ProtocolFormat::Singer, ProtocolFormat::Airbyte]
            .into_iter()
            .find(|f| f.as_str() == name)
    }
}

impl fmt::Display for ProtocolFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProtocolFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProtocolFormat::parse(s).ok_or_else(|| format!("unknown output {s:?}: singer or airbyte"))
    }
}

crate::text::serde_as_text!(ProtocolFormat);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_as_written() {
        for name in WRITE_MODES {
            assert_eq!(name.parse::<WriteMode>().unwrap().to_string(), name);
        }
        assert_eq!("full-refresh".parse(), Ok(WriteMode::FullRefresh));
        assert!("upsert".parse::<WriteMode>().unwrap_err().contains("merge"));
        assert_eq!(
            parse_stream_mode("items=append"),
            Ok(("items".into(), WriteMode::Append))
        );
        assert!(parse_stream_mode("=append").is_err());
        assert!(parse_stream_mode("items").is_err());
        assert_eq!(WriteMode::default(), WriteMode::Merge);
    }
}
