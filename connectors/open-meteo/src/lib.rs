//! `open-meteo`: hourly weather from the Open-Meteo forecast API
//! (`/v1/forecast?latitude=…&longitude=…&hourly=…`).
//!
//! One stream, `hourly_weather`, keyed by (`location`, `time`), incremental
//! on `time`: the state holds, per location, the latest hour already synced,
//! and the next run asks the API for hours from there on (`start_hour` /
//! `end_hour`), re-reading that one hour so an updated value replaces it.

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

/// The per-location cursor: latest `time` synced.
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

/// `hour` (`YYYY-MM-DDTHH:MM`) plus `days` days, same format.
fn add_days(hour: &str, days: u32) -> Result<String, Error> {
    let bad = || Error::Internal(format!("state cursor {hour:?} is not an ISO hour"));
    let (date, rest) = hour.split_once('T').ok_or_else(bad)?;
    let mut parts = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d))) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let z = days_from_civil(y, m, d) + i64::from(days);
    let (y, m, d) = civil_from_days(z);
    Ok(format!("{y:04}-{m:02}-{d:02}T{rest}"))
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
            let mut url = format!(
                "{base}/v1/forecast?latitude={}&longitude={}&hourly={hourly}&timezone=GMT",
                loc.latitude, loc.longitude
            );
            match state.cursors.get(&loc.name) {
                Some(cursor) => {
                    let end = add_days(cursor, config.forecast_days.max(1))?;
                    url.push_str(&format!("&start_hour={cursor}&end_hour={end}"));
                }
                None => url.push_str(&format!(
                    "&past_days={}&forecast_days={}",
                    config.past_days, config.forecast_days
                )),
            }
            log::info(&format!("fetching {} ({url})", loc.name));
            let forecast: Forecast = sluice_sdk::http::get_json(&url)?;
            let times = forecast
                .hourly
                .get("time")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::Upstream("response has no hourly.time array".into()))?;
            let mut latest: Option<&str> = None;
            for (i, t) in times.iter().enumerate() {
                let t = t
                    .as_str()
                    .ok_or_else(|| Error::Upstream(format!("hourly.time[{i}] is not a string")))?;
                let mut rec = serde_json::Map::new();
                rec.insert("location".into(), Value::String(loc.name.clone()));
                rec.insert("latitude".into(), json!(forecast.latitude));
                rec.insert("longitude".into(), json!(forecast.longitude));
                rec.insert("time".into(), Value::String(t.to_string()));
                for v in &config.hourly {
                    let value = forecast
                        .hourly
                        .get(v)
                        .and_then(|a| a.get(i))
                        .cloned()
                        .unwrap_or(Value::Null);
                    rec.insert(v.clone(), value);
                }
                reader.emit(STREAM, &rec)?;
                if latest.is_none_or(|l| t > l) {
                    latest = Some(t);
                }
            }
            if let Some(latest) = latest {
                state.cursors.insert(loc.name.clone(), latest.to_string());
            }
            // One location's page and its cursor become durable together.
            reader.commit(STREAM, &state)?;
        }
        Ok(())
    }
}

sluice_sdk::export_connector!(OpenMeteo);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_days_crosses_months_and_years() {
        assert_eq!(add_days("2026-12-30T05:00", 3).unwrap(), "2027-01-02T05:00");
        assert_eq!(add_days("2024-02-28T00:00", 1).unwrap(), "2024-02-29T00:00");
        assert!(add_days("garbage", 1).is_err());
    }
}
