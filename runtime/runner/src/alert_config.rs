//! The `[alerts]` table of `sluice.toml`: the rules `sluice serve`
//! evaluates after each run and on a timer, and the webhooks it notifies.
//!
//! ```toml
//! [alerts]
//! evaluate_every = "1m"          # the timer (DEFAULT_EVALUATE_EVERY)
//! repeat_interval = "4h"         # a firing alert is sent again after (DEFAULT_REPEAT_INTERVAL)
//!
//! [[alerts.webhooks]]
//! url = "https://hooks.example.com/sluice"   # or "env:VAR" / "file:PATH" (a Slack URL is a secret)
//! format = "json"                # "json" (default) | "slack"
//!
//! [[alerts.rules]]
//! name = "crm failing"
//! kind = "failure_rate"          # failed runs / runs in `window` > `threshold`
//! window = "1h"
//! threshold = 0.5
//! instances = ["crm"]            # default: every instance
//! ```

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use sluice_core::secrets::SecretSource;

/// How often rules are evaluated on the timer when `evaluate_every` is
/// not set (they are also evaluated after each run).
pub const DEFAULT_EVALUATE_EVERY: Duration = Duration::from_secs(60);

/// The shortest `evaluate_every` accepted.
pub const MIN_EVALUATE_EVERY: Duration = Duration::from_secs(1);

/// A firing alert is sent again after this long when `repeat_interval`
/// is not set.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);

/// The successful runs `volume_drop` and `duration` take the median of
/// when `last` is not set.
pub const DEFAULT_HISTORY_RUNS: usize = 10;

/// The fewest earlier successful runs `volume_drop` and `duration` need
/// before they judge a run (fewer: the rule stays quiet).
pub const MIN_HISTORY_RUNS: usize = 3;

/// The largest `last` accepted.
pub const MAX_HISTORY_RUNS: usize = 1000;

/// `[alerts]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default)]
    pub evaluate_every: Option<String>,
    #[serde(default)]
    pub repeat_interval: Option<String>,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// What a webhook is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// A generic JSON payload (rule, instance, state, message, value, …).
    #[default]
    Json,
    /// `{"text": …}`, what a Slack incoming webhook takes.
    Slack,
}

/// One `[[alerts.webhooks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL, or a reference to it (`env:VAR`, `file:PATH`).
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
}

/// Where a webhook's URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookUrl {
    Literal(url::Url),
    Secret(SecretSource),
}

impl WebhookConfig {
    /// The URL as configured: a literal `http(s)` URL or a reference.
    pub fn url(&self) -> Result<WebhookUrl, String> {
        if self.url.starts_with("env:") || self.url.starts_with("file:") {
            return SecretSource::from_str(&self.url).map(WebhookUrl::Secret);
        }
        let url = url::Url::parse(&self.url).map_err(|e| format!("`url` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("`url` must be http or https (or env:VAR / file:PATH)".into());
        }
        Ok(WebhookUrl::Literal(url))
    }
}

/// One `[[alerts.rules]]`, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleConfig {
    /// Failed runs / runs that ended within `window` > `threshold` (a
    /// ratio, 0 to 1), once at least `min_runs` ended in it.
    FailureRate {
        name: String,
        #[serde(default)]
        instances: Vec<String>,
        window: String,
        threshold: f64,
        #[serde(default)]
        min_runs: Option<usize>,
    },
    /// The newest successful run upserted fewer than `percent` % of the
    /// median of the `last` successful runs before it.
    VolumeDrop {
        name: String,
        #[serde(default)]
        instances: Vec<String>,
        percent: f64,
        #[serde(default)]
        last: Option<usize>,
    },
    /// The newest successful run took more than `factor` × the median
    /// duration of the `last` successful runs before it.
    Duration {
        name: String,
        #[serde(default)]
        instances: Vec<String>,
        factor: f64,
        #[serde(default)]
        last: Option<usize>,
    },
    /// No successful run for `after`.
    Staleness {
        name: String,
        #[serde(default)]
        instances: Vec<String>,
        after: String,
    },
    /// The newest run saw schema drift (new fields or types).
    Drift {
        name: String,
        #[serde(default)]
        instances: Vec<String>,
    },
    /// The newest run quarantined more than `threshold` (a ratio) of the
    /// records it emitted.
    QuarantineRatio {
        name: String,
        #[serde(default)]
        instances: Vec<String>,
        threshold: f64,
    },
}

impl RuleConfig {
    pub fn name(&self) -> &str {
        match self {
            RuleConfig::FailureRate { name, .. }
            | RuleConfig::VolumeDrop { name, .. }
            | RuleConfig::Duration { name, .. }
            | RuleConfig::Staleness { name, .. }
            | RuleConfig::Drift { name, .. }
            | RuleConfig::QuarantineRatio { name, .. } => name,
        }
    }

    /// The instances it watches (empty: all).
    pub fn instances(&self) -> &[String] {
        match self {
            RuleConfig::FailureRate { instances, .. }
            | RuleConfig::VolumeDrop { instances, .. }
            | RuleConfig::Duration { instances, .. }
            | RuleConfig::Staleness { instances, .. }
            | RuleConfig::Drift { instances, .. }
            | RuleConfig::QuarantineRatio { instances, .. } => instances,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RuleConfig::FailureRate { .. } => "failure_rate",
            RuleConfig::VolumeDrop { .. } => "volume_drop",
            RuleConfig::Duration { .. } => "duration",
            RuleConfig::Staleness { .. } => "staleness",
            RuleConfig::Drift { .. } => "drift",
            RuleConfig::QuarantineRatio { .. } => "quarantine_ratio",
        }
    }

    /// The rule as its evaluator takes it, or why it cannot be used.
    pub fn rule(&self) -> Result<Rule, String> {
        let ratio = |t: f64, what: &str| {
            if (0.0..=1.0).contains(&t) {
                Ok(t)
            } else {
                Err(format!("`{what}` must be a ratio between 0 and 1, got {t}"))
            }
        };
        let last = |n: Option<usize>| match n.unwrap_or(DEFAULT_HISTORY_RUNS) {
            n if (MIN_HISTORY_RUNS..=MAX_HISTORY_RUNS).contains(&n) => Ok(n),
            n => Err(format!(
                "`last` must be between {MIN_HISTORY_RUNS} and {MAX_HISTORY_RUNS}, got {n}"
            )),
        };
        if self.name().trim().is_empty() {
            return Err("`name` is empty".into());
        }
        Ok(match self {
            RuleConfig::FailureRate {
                window,
                threshold,
                min_runs,
                ..
            } => Rule::FailureRate {
                window: duration(window, "window")?,
                threshold: ratio(*threshold, "threshold")?,
                min_runs: min_runs.unwrap_or(1).max(1),
            },
            RuleConfig::VolumeDrop {
                percent, last: n, ..
            } => {
                if !(0.0..=100.0).contains(percent) {
                    return Err(format!(
                        "`percent` must be between 0 and 100, got {percent}"
                    ));
                }
                Rule::VolumeDrop {
                    fraction: percent / 100.0,
                    last: last(*n)?,
                }
            }
            RuleConfig::Duration {
                factor, last: n, ..
            } => {
                if !(*factor > 1.0 && factor.is_finite()) {
                    return Err(format!("`factor` must be more than 1, got {factor}"));
                }
                Rule::Duration {
                    factor: *factor,
                    last: last(*n)?,
                }
            }
            RuleConfig::Staleness { after, .. } => Rule::Staleness {
                after: duration(after, "after")?,
            },
            RuleConfig::Drift { .. } => Rule::Drift,
            RuleConfig::QuarantineRatio { threshold, .. } => Rule::QuarantineRatio {
                threshold: ratio(*threshold, "threshold")?,
            },
        })
    }
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    FailureRate {
        window: Duration,
        threshold: f64,
        min_runs: usize,
    },
    VolumeDrop {
        fraction: f64,
        last: usize,
    },
    Duration {
        factor: f64,
        last: usize,
    },
    Staleness {
        after: Duration,
    },
    Drift,
    QuarantineRatio {
        threshold: f64,
    },
}

/// A humantime duration of at least a second.
pub fn duration(text: &str, what: &str) -> Result<Duration, String> {
    let d: Duration = humantime::Duration::from_str(text)
        .map_err(|e| format!("`{what}`: {text:?} is not a duration: {e}"))?
        .into();
    if d < Duration::from_secs(1) {
        return Err(format!("`{what}` must be at least 1s, got {text:?}"));
    }
    Ok(d)
}

impl AlertsConfig {
    /// Check every rule and webhook, naming the first that is wrong.
    /// `known` is the instance names.
    pub fn check(&self, known: &[String]) -> Result<(), String> {
        if let Some(t) = &self.evaluate_every {
            let d = duration(t, "alerts.evaluate_every")?;
            if d < MIN_EVALUATE_EVERY {
                return Err(format!(
                    "`alerts.evaluate_every` must be at least {MIN_EVALUATE_EVERY:?}"
                ));
            }
        }
        if let Some(t) = &self.repeat_interval {
            duration(t, "alerts.repeat_interval")?;
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            w.url().map_err(|e| format!("alerts.webhooks[{i}]: {e}"))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("alerts.rules[{i}] ({:?})", r.name());
            r.rule().map_err(|e| format!("{at}: {e}"))?;
            if !names.insert(r.name()) {
                return Err(format!("{at}: two rules are named {:?}", r.name()));
            }
            for n in r.instances() {
                if !known.contains(n) {
                    return Err(format!("{at}: no instance named {n:?}"));
                }
            }
        }
        if !self.rules.is_empty() && self.webhooks.is_empty() {
            tracing::warn!("alert rules but no [[alerts.webhooks]]: alerts are kept in the run log and listed by `sluice alerts`, not sent");
        }
        Ok(())
    }

    pub fn evaluate_every(&self) -> Duration {
        self.evaluate_every
            .as_deref()
            .and_then(|t| duration(t, "").ok())
            .unwrap_or(DEFAULT_EVALUATE_EVERY)
    }

    pub fn repeat_interval(&self) -> Duration {
        self.repeat_interval
            .as_deref()
            .and_then(|t| duration(t, "").ok())
            .unwrap_or(DEFAULT_REPEAT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AlertsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn rules_are_checked_naming_the_rule_and_field() {
        let known = vec!["crm".to_string()];
        let ok = parse(
            "[[rules]]\nname = \"f\"\nkind = \"failure_rate\"\nwindow = \"1h\"\nthreshold = 0.5\n\
             [[rules]]\nname = \"s\"\nkind = \"staleness\"\nafter = \"6h\"\ninstances = [\"crm\"]\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nformat = \"slack\"\n",
        );
        ok.check(&known).unwrap();
        assert_eq!(
            ok.rules[0].rule().unwrap(),
            Rule::FailureRate {
                window: Duration::from_secs(3600),
                threshold: 0.5,
                min_runs: 1
            }
        );
        for (text, expected) in [
            (
                "[[rules]]\nname = \"f\"\nkind = \"failure_rate\"\nwindow = \"1h\"\nthreshold = 2.0\n",
                "alerts.rules[0] (\"f\"): `threshold` must be a ratio",
            ),
            (
                "[[rules]]\nname = \"s\"\nkind = \"staleness\"\nafter = \"soon\"\n",
                "`after`: \"soon\" is not a duration",
            ),
            (
                "[[rules]]\nname = \"s\"\nkind = \"staleness\"\nafter = \"1h\"\ninstances = [\"nope\"]\n",
                "no instance named \"nope\"",
            ),
            (
                "[[rules]]\nname = \"d\"\nkind = \"duration\"\nfactor = 0.5\n",
                "`factor` must be more than 1",
            ),
            (
                "[[rules]]\nname = \"v\"\nkind = \"volume_drop\"\npercent = 50\nlast = 1\n",
                "`last` must be between 3",
            ),
            (
                "[[rules]]\nname = \"x\"\nkind = \"drift\"\n[[rules]]\nname = \"x\"\nkind = \"drift\"\n",
                "two rules are named \"x\"",
            ),
            ("[[webhooks]]\nurl = \"ftp://x\"\n", "alerts.webhooks[0]: `url` must be http"),
        ] {
            let e = parse(text).check(&known).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let e = toml::from_str::<AlertsConfig>("[[rules]]\nname = \"x\"\nkind = \"sometimes\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        let e = toml::from_str::<AlertsConfig>(
            "[[rules]]\nname = \"x\"\nkind = \"drift\"\nthreshold = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("threshold"), "an unknown field: {e}");
    }

    #[test]
    fn a_webhook_url_may_be_a_reference() {
        let w = WebhookConfig {
            url: "env:SLACK_URL".into(),
            format: WebhookFormat::Slack,
        };
        assert_eq!(
            w.url().unwrap(),
            WebhookUrl::Secret(SecretSource::Env("SLACK_URL".into()))
        );
    }
}
