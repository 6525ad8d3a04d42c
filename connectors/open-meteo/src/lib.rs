//! `open-meteo`: hourly weather from the Open-Meteo forecast API
//! (`/v1/forecast?latitude=…&longitude=…&hourly=…`).
//!
//! One stream, `hourly_weather`, keyed by (`location`, `time`), incremental
//! on `time`. Each run asks for the upstream's window (`past_days` before
//! its today, `forecast_days` from it). Hours before the upstream's today
//! are final; from today on they are forecasts that change. So the cursor
//! kept per location is the start of the upstream's today: the next run
//! emits only hours at or after it (refreshing forecasts by upsert), and if
//! the window has moved past the cursor (the connector was not run for a
//! while) it backfills the gap with `start_hour`/`end_hour` first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_sdk::{json, log, Connector, Error, Reader, Spec, Stream, SyncMode, Value};

/// The real service; the demo and tests point `base_url` at a loopback fixture.
pub const DEFAULT_BASE_URL: &str = "https://api.open-meteo.com";
/// Hourly variables read when the config names none.
pub const DEFAULT_HOURLY: &[&str] = &[
    "temperature_2m",
    "relative_humidity_2m",
    "precipitation",
    "wind_speed_10m",
];
/// Days of forecast asked for on a first run.
pub const DEFAULT_FORECAST_DAYS: u32 = 7;
/// Days of past hours asked for on a first run.
pub const DEFAULT_PAST_DAYS: u32 = 1;
pub const STREAM: &str = "hourly_weather";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    locations: Vec<Location>,
    #[serde(default = "default_hourly")]
    hourly: Vec<String>,
    #[serde(default = "default_forecast_days")]
    forecast_days: u32,
    #[serde(default = "default_past_days")]
    past_days: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Location {
    name: String,
    latitude: f64,
    longitude: f64,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_string()
}
fn default_hourly() -> Vec<String> {
    DEFAULT_HOURLY.iter().map(|s| s.to_string()).collect()
}
fn default_forecast_days() -> u32 {
    DEFAULT_FORECAST_DAYS
}
fn default_past_days() -> u32 {
    DEFAULT_PAST_DAYS
}

/// Per location, the first hour not yet final upstream (the cursor).
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    cursors: BTreeMap<String, String>,
}

/// The forecast response (only what we read).
#[derive(Debug, Deserialize)]
struct Forecast {
    latitude: f64,
    longitude: f64,
    hourly: BTreeMap<String, Value>,
}

fn stream_schema(hourly: &[String]) -> Value {
    let mut props = serde_json::Map::new();
    props.insert("location".into(), json!({"type": "string"}));
    props.insert("latitude".into(), json!({"type": "number"}));
    props.insert("longitude".into(), json!({"type": "number"}));
    props.insert(
        "time".into(),
        json!({"type": "string", "description": "ISO 8601 hour, GMT"}),
    );
    for v in hourly {
        props.insert(v.clone(), json!({"type": ["number", "null"]}));
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": props,
        "required": ["location", "latitude", "longitude", "time"],
    })
}

fn stream(hourly: &[String]) -> Stream {
    Stream::new(STREAM, stream_schema(hourly))
        .primary_key(["location", "time"])
        .incremental("time")
}

fn validate(config: &Config) -> Result<(), Error> {
    if config.locations.is_empty() {
        return Err(Error::Config(
            "`locations` must name at least one location".into(),
        ));
    }
    for l in &config.locations {
        if !(-90.0..=90.0).contains(&l.latitude) || !(-180.0..=180.0).contains(&l.longitude) {
            return Err(Error::Config(format!(
                "location {:?}: latitude/longitude out of range",
                l.name
            )));
        }
    }
    if config.hourly.is_empty() {
        return Err(Error::Config(
            "`hourly` must name at least one variable".into(),
        ));
    }
    if let Some(bad) = config
        .hourly
        .iter()
        .find(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(Error::Config(format!(
            "hourly variable {bad:?} is not a valid name"
        )));
    }
    if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
        return Err(Error::Config("`base_url` must be an http(s) URL".into()));
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM` as hours since the Unix epoch.
fn parse_hour(text: &str) -> Result<i64, Error> {
    let bad = || Error::Upstream(format!("{text:?} is not an ISO 8601 hour"));
    let (date, time) = text.split_once('T').ok_or_else(bad)?;
    let mut parts = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let hour: i64 = time.get(..2).and_then(|h| h.parse().ok()).ok_or_else(bad)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(0..24).contains(&hour) {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * 24 + hour)
}

/// Hours since the Unix epoch as `YYYY-MM-DDTHH:MM`.
fn format_hour(h: i64) -> String {
    let (y, m, d) = civil_from_days(h.div_euclid(24));
    format!("{y:04}-{m:02}-{d:02}T{:02}:00", h.rem_euclid(24))
}

// Howard Hinnant's civil-date algorithms (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

struct OpenMeteo;

impl Connector for OpenMeteo {
    type Config = Config;

    fn spec() -> Spec {
        Spec::new("open-meteo", env!("CARGO_PKG_VERSION"))
            .description("Hourly weather forecasts from the Open-Meteo API")
            .config_schema(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "additionalProperties": false,
                "required": ["locations"],
                "properties": {
                    "base_url": {"type": "string", "default": DEFAULT_BASE_URL},
                    "locations": {
                        "type": "array", "minItems": 1,
                        "items": {
                            "type": "object", "additionalProperties": false,
                            "required": ["name", "latitude", "longitude"],
                            "properties": {
                                "name": {"type": "string"},
                                "latitude": {"type": "number", "minimum": -90, "maximum": 90},
                                "longitude": {"type": "number", "minimum": -180, "maximum": 180}
                            }
                        }
                    },
                    "hourly": {"type": "array", "items": {"type": "string"}, "default": DEFAULT_HOURLY},
                    "forecast_days": {"type": "integer", "minimum": 0, "default": DEFAULT_FORECAST_DAYS},
                    "past_days": {"type": "integer", "minimum": 0, "default": DEFAULT_PAST_DAYS}
                }
            }))
            .stream(stream(&default_hourly()))
    }

    fn check(config: &Config) -> Result<(), Error> {
        validate(config)
    }

    fn discover(config: &Config) -> Result<Vec<Stream>, Error> {
        validate(config)?;
        Ok(vec![stream(&config.hourly)])
    }

    fn read(config: &Config, reader: &mut Reader) -> Result<(), Error> {
        validate(config)?;
        let Some(mode) = reader.selected(STREAM) else {
            return Ok(());
        };
        let mut state: State = match mode {
            SyncMode::Incremental => reader.state(STREAM)?.unwrap_or_default(),
            SyncMode::FullRefresh => State::default(),
        };
        let base = config.base_url.trim_end_matches('/');
        let hourly = config.hourly.join(",");
        for loc in &config.locations {
            let url = format!(
                "{base}/v1/forecast?latitude={}&longitude={}&hourly={hourly}&timezone=GMT",
                loc.latitude, loc.longitude
            );
            let window_url = format!(
                "{url}&past_days={}&forecast_days={}",
                config.past_days, config.forecast_days
            );
            log::info(&format!("fetching {} ({window_url})", loc.name));
            let window: Forecast = sluice_sdk::http::get_json(&window_url)?;
            let times = hour_list(&window)?;
            let Some(&window_start) = times.first() else {
                continue;
            };
            let today = window_start + 24 * i64::from(config.past_days);
            let cursor = state
                .cursors
                .get(&loc.name)
                .map(|c| parse_hour(c))
                .transpose()?;
            if let Some(cursor) = cursor.filter(|c| *c < window_start) {
                // The window moved past the cursor: fill the gap first.
                let gap_url = format!(
                    "{url}&start_hour={}&end_hour={}",
                    format_hour(cursor),
                    format_hour(window_start - 1)
                );
                log::info(&format!("backfilling {} ({gap_url})", loc.name));
                let gap: Forecast = sluice_sdk::http::get_json(&gap_url)?;
                emit_hours(reader, config, &loc.name, &gap, cursor)?;
            }
            emit_hours(
                reader,
                config,
                &loc.name,
                &window,
                cursor.unwrap_or(i64::MIN),
            )?;
            let next = cursor.map_or(today, |c| c.max(today));
            state.cursors.insert(loc.name.clone(), format_hour(next));
            // One location's records and its cursor become durable together.
            reader.commit(STREAM, &state)?;
        }
        Ok(())
    }
}

/// The response's `hourly.time` as hours since epoch.
fn hour_list(f: &Forecast) -> Result<Vec<i64>, Error> {
    let times = f
        .hourly
        .get("time")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Upstream("response has no hourly.time array".into()))?;
    times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_str()
                .ok_or_else(|| Error::Upstream(format!("hourly.time[{i}] is not a string")))
                .and_then(parse_hour)
        })
        .collect()
}

/// Emit the hours of `f` at or after `from`.
fn emit_hours(
    reader: &mut Reader,
    config: &Config,
    location: &str,
    f: &Forecast,
    from: i64,
) -> Result<(), Error> {
    for (i, h) in hour_list(f)?.into_iter().enumerate() {
        if h < from {
            continue;
        }
        let mut rec = serde_json::Map::new();
        rec.insert("location".into(), Value::String(location.to_string()));
        rec.insert("latitude".into(), json!(f.latitude));
        rec.insert("longitude".into(), json!(f.longitude));
        rec.insert("time".into(), Value::String(format_hour(h)));
        for v in &config.hourly {
            let value = f
                .hourly
                .get(v)
                .and_then(|a| a.get(i))
                .cloned()
                .unwrap_or(Value::Null);
            rec.insert(v.clone(), value);
        }
        reader.emit(STREAM, &rec)?;
    }
    Ok(())
}

sluice_sdk::export_connector!(OpenMeteo);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_round_trip_across_months_and_leap_days() {
        for text in ["2026-12-31T23:00", "2024-02-29T05:00", "1970-01-01T00:00"] {
            assert_eq!(format_hour(parse_hour(text).unwrap()), text);
        }
        assert_eq!(
            format_hour(parse_hour("2026-12-31T23:00").unwrap() + 1),
            "2027-01-01T00:00"
        );
        assert!(parse_hour("garbage").is_err());
        assert!(parse_hour("2026-13-01T00:00").is_err());
    }
}
