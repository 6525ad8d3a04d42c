//! When an instance of `sluice.toml` runs on its own (`sluice serve`):
//! a cron `schedule` (five fields, or six with seconds first; UTC, or the
//! instance's `timezone`) or a fixed interval `every`, what to do about a
//! run missed while the server was down (`catch_up`), and a random delay
//! added to each due time (`jitter`).

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::Deserialize;

/// The shortest `every` accepted: the scheduler's resolution.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// The longest `every` accepted (a year).
pub const MAX_EVERY: Duration = Duration::from_secs(366 * 24 * 3600);

/// The longest `jitter` accepted.
pub const MAX_JITTER: Duration = Duration::from_secs(3600);

/// A schedule that cannot be used, with why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("set `schedule` or `every`, not both")]
    Both,
    #[error("`schedule`: {pattern:?} is not a cron expression: {reason}")]
    Cron { pattern: String, reason: String },
    #[error("`schedule`: {pattern:?} never matches a time")]
    NeverDue { pattern: String },
    #[error("`every`: {text:?} is not a duration (e.g. \"30s\", \"15m\", \"1h 30m\"): {reason}")]
    Every { text: String, reason: String },
    #[error(
        "`every`: {text:?} is out of bounds: between {} and {}",
        humantime::format_duration(MIN_EVERY),
        humantime::format_duration(MAX_EVERY)
    )]
    EveryBounds { text: String },
    #[error("`timezone`: {0:?} is not an IANA time zone name (e.g. \"Europe/Berlin\", \"UTC\")")]
    Timezone(String),
    #[error("`timezone` applies to a cron `schedule`; an `every` interval has none")]
    TimezoneWithoutCron,
    #[error(
        "`jitter`: {text:?} is not a duration of at most {}",
        humantime::format_duration(MAX_JITTER)
    )]
    Jitter { text: String },
}

/// Parse a `jitter` value (`None`: no jitter).
pub fn parse_jitter(text: Option<&str>) -> Result<Option<Duration>, ScheduleError> {
    let Some(text) = text else { return Ok(None) };
    let bad = || ScheduleError::Jitter {
        text: text.to_string(),
    };
    let d: Duration = humantime::Duration::from_str(text)
        .map_err(|_| bad())?
        .into();
    if d > MAX_JITTER {
        return Err(bad());
    }
    Ok((!d.is_zero()).then_some(d))
}

/// A run missed while the server was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Run once at start, however many were missed (the default).
    #[default]
    Once,
    /// Skip it: the next run is the next one due from now.
    Skip,
}

/// When an instance runs on its own.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression, in UTC or in `tz`.
    Cron {
        pattern: String,
        cron: Box<Cron>,
        tz: Option<chrono_tz::Tz>,
    },
    /// A fixed interval from the start of the last run.
    Every { text: String, every: Duration },
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The RFC 3339 text of `ms` since the epoch (UTC, milliseconds).
pub fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// `ms` since the epoch of an RFC 3339 time (what [`rfc3339_ms`] and
/// the run log write); `None` if it is not one.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(text).ok()?;
    i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

impl Schedule {
    /// The schedule of `schedule` / `every` as `sluice.toml` gives them;
    /// `None` when neither is set (the instance runs on demand only).
    pub fn parse(
        schedule: Option<&str>,
        every: Option<&str>,
    ) -> Result<Option<Schedule>, ScheduleError> {
        match (schedule, every) {
            (Some(_), Some(_)) => Err(ScheduleError::Both),
            (None, None) => Ok(None),
            (Some(pattern), None) => {
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .year(Year::Disallowed)
                    .build()
                    .parse(pattern)
                    .map_err(|e| ScheduleError::Cron {
                        pattern: pattern.to_string(),
                        reason: e.to_string(),
                    })?;
                let s = Schedule::Cron {
                    pattern: pattern.to_string(),
                    cron: Box::new(cron),
                    tz: None,
                };
                if s.next_after(unix_ms(SystemTime::now())).is_none() {
                    return Err(ScheduleError::NeverDue {
                        pattern: pattern.to_string(),
                    });
                }
                Ok(Some(s))
            }
            (None, Some(text)) => {
                let every =
                    humantime::Duration::from_str(text).map_err(|e| ScheduleError::Every {
                        text: text.to_string(),
                        reason: e.to_string(),
                    })?;
                let every: Duration = every.into();
                if !(MIN_EVERY..=MAX_EVERY).contains(&every) {
                    return Err(ScheduleError::EveryBounds {
                        text: text.to_string(),
                    });
                }
                Ok(Some(Schedule::Every {
                    text: text.to_string(),
                    every,
                }))
            }
        }
    }

    /// The same cron expression in time zone `name` (an IANA name).
    pub fn in_timezone(self, name: &str) -> Result<Schedule, ScheduleError> {
        let tz: chrono_tz::Tz = name
            .parse()
            .map_err(|_| ScheduleError::Timezone(name.to_string()))?;
        match self {
            Schedule::Cron { pattern, cron, .. } => Ok(Schedule::Cron {
                pattern,
                cron,
                tz: Some(tz),
            }),
            Schedule::Every { .. } => Err(ScheduleError::TimezoneWithoutCron),
        }
    }

    /// The time zone of a cron schedule, if not UTC.
    pub fn timezone(&self) -> Option<&'static str> {
        match self {
            Schedule::Cron { tz: Some(tz), .. } => Some(tz.name()),
            _ => None,
        }
    }

    /// What the persisted time was computed from: a change of schedule
    /// makes the server compute a new time.
    pub fn key(&self) -> String {
        match self {
            Schedule::Cron {
                pattern, tz: None, ..
            } => format!("cron:{pattern}"),
            Schedule::Cron {
                pattern,
                tz: Some(tz),
                ..
            } => format!("cron:{pattern}@{}", tz.name()),
            Schedule::Every { text, .. } => format!("every:{text}"),
        }
    }

    /// The schedule as the operator wrote it.
    pub fn text(&self) -> &str {
        match self {
            Schedule::Cron { pattern, .. } => pattern,
            Schedule::Every { text, .. } => text,
        }
    }

    /// The first time the instance is due strictly after `ms` (a cron
    /// expression that matches no later time: `None`).
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        match self {
            Schedule::Every { every, .. } => {
                Some(ms.saturating_add(i64::try_from(every.as_millis()).unwrap_or(i64::MAX)))
            }
            Schedule::Cron { cron, tz, .. } => {
                let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)?;
                match tz {
                    None => cron
                        .find_next_occurrence(&t, false)
                        .ok()
                        .map(|n| n.timestamp_millis()),
                    Some(tz) => cron
                        .find_next_occurrence(&t.with_timezone(tz), false)
                        .ok()
                        .map(|n| n.timestamp_millis()),
                }
            }
        }
    }

    /// When a new instance (nothing persisted yet) is first due at
    /// `now`: an interval runs at once, a cron expression at its next time.
    pub fn first_due(&self, now: i64) -> Option<i64> {
        match self {
            Schedule::Every { .. } => Some(now),
            Schedule::Cron { .. } => self.next_after(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_with_and_without_seconds() {
        let s = Schedule::parse(Some("*/15 * * * *"), None)
            .unwrap()
            .unwrap();
        // 1970-01-01T00:00:00Z + 1 ms -> 00:15:00.
        assert_eq!(s.next_after(1), Some(15 * 60 * 1000));
        let s = Schedule::parse(Some("*/2 * * * * *"), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.next_after(0), Some(2000));
        assert_eq!(s.key(), "cron:*/2 * * * * *");
    }

    #[test]
    fn every_is_from_the_time_given() {
        let s = Schedule::parse(None, Some("30m")).unwrap().unwrap();
        assert_eq!(s.next_after(1000), Some(1000 + 30 * 60 * 1000));
        assert_eq!(s.first_due(5), Some(5));
    }

    #[test]
    fn cron_in_a_timezone_follows_its_clock_across_dst() {
        let s = Schedule::parse(Some("0 9 * * *"), None)
            .unwrap()
            .unwrap()
            .in_timezone("Europe/Berlin")
            .unwrap();
        assert_eq!(s.key(), "cron:0 9 * * *@Europe/Berlin");
        assert_eq!(s.timezone(), Some("Europe/Berlin"));
        let ms = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis()
        };
        // Winter (CET, UTC+1): 09:00 in Berlin is 08:00 UTC.
        assert_eq!(
            s.next_after(ms("2026-01-15T00:00:00Z")),
            Some(ms("2026-01-15T08:00:00Z"))
        );
        // Summer (CEST, UTC+2): 07:00 UTC.
        assert_eq!(
            s.next_after(ms("2026-07-15T00:00:00Z")),
            Some(ms("2026-07-15T07:00:00Z"))
        );
        let utc = Schedule::parse(Some("0 9 * * *"), None).unwrap().unwrap();
        assert_eq!(utc.key(), "cron:0 9 * * *", "UTC keeps its key");
        assert_eq!(
            utc.next_after(ms("2026-07-15T00:00:00Z")),
            Some(ms("2026-07-15T09:00:00Z"))
        );
        let e = Schedule::parse(Some("0 9 * * *"), None)
            .unwrap()
            .unwrap()
            .in_timezone("Mars/Olympus")
            .unwrap_err();
        assert!(e.to_string().contains("not an IANA time zone"), "{e}");
        let e = Schedule::parse(None, Some("1h"))
            .unwrap()
            .unwrap()
            .in_timezone("UTC")
            .unwrap_err();
        assert_eq!(e, ScheduleError::TimezoneWithoutCron);
    }

    #[test]
    fn jitter_is_a_bounded_duration() {
        assert_eq!(parse_jitter(None).unwrap(), None);
        assert_eq!(parse_jitter(Some("0s")).unwrap(), None);
        assert_eq!(
            parse_jitter(Some("30s")).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert!(parse_jitter(Some("2h")).is_err());
        assert!(parse_jitter(Some("soon")).is_err());
    }

    #[test]
    fn bad_schedules_say_which_field() {
        assert_eq!(Schedule::parse(None, None).unwrap().map(|s| s.key()), None);
        assert_eq!(
            Schedule::parse(Some("* * * * *"), Some("1m")).unwrap_err(),
            ScheduleError::Both
        );
        let e = Schedule::parse(Some("61 * * * *"), None).unwrap_err();
        assert!(
            e.to_string().starts_with("`schedule`: \"61 * * * *\""),
            "{e}"
        );
        let e = Schedule::parse(None, Some("soon")).unwrap_err();
        assert!(e.to_string().starts_with("`every`: \"soon\""), "{e}");
        let e = Schedule::parse(None, Some("10ms")).unwrap_err();
        assert!(matches!(e, ScheduleError::EveryBounds { .. }), "{e}");
    }
}
