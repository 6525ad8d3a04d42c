//! Alert rules (`[alerts]` in `sluice.toml`): evaluated after each run of
//! an instance and on a timer, over the instance's run log; a rule that
//! starts firing, keeps firing past the repeat interval, or resolves is
//! sent to every webhook (with retries) and recorded in the run log
//! (`_sluice_alerts`, `_sluice_alert_events`), so a restart neither
//! forgets a firing alert nor sends it again early.

use std::time::Duration;

use serde_json::json;

use sluice_core::destination::{AlertEvent, AlertState};
use sluice_core::run::{now_rfc3339, RunRecord, RunStatus};
use sluice_runner::alert_config::{
    AlertsConfig, Rule, RuleConfig, WebhookFormat, WebhookUrl, MIN_HISTORY_RUNS,
};
use sluice_runner::schedule::parse_rfc3339_ms;

/// The newest runs of a run log an evaluation reads.
pub const ALERT_RUNS_SCANNED: usize = 1000;

/// Attempts to deliver one notification to one webhook.
pub const WEBHOOK_ATTEMPTS: u32 = 3;

/// The wait before the second attempt; it doubles after each.
pub const WEBHOOK_BACKOFF: Duration = Duration::from_millis(500);

/// How long one webhook request may take.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a rule says of an instance now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub firing: bool,
    pub value: Option<f64>,
    pub message: String,
}

fn quiet(message: impl Into<String>) -> Condition {
    Condition {
        firing: false,
        value: None,
        message: message.into(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn pretty(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Evaluate `rule` over `runs` (one instance's, newest first) at `now_ms`;
/// `since_ms` is when the server started (staleness counts from there
/// when the instance never succeeded).
pub fn evaluate(rule: &Rule, runs: &[RunRecord], now_ms: i64, since_ms: i64) -> Condition {
    let ended: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| !matches!(r.status, RunStatus::Running | RunStatus::Skipped))
        .collect();
    let succeeded: Vec<&RunRecord> = ended
        .iter()
        .copied()
        .filter(|r| r.status == RunStatus::Succeeded)
        .collect();
    match rule {
        Rule::FailureRate {
            window,
            threshold,
            min_runs,
        } => {
            let from = now_ms - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
            let recent: Vec<&&RunRecord> = ended
                .iter()
                .filter(|r| {
                    r.ended_at
                        .as_deref()
                        .and_then(parse_rfc3339_ms)
                        .is_some_and(|t| t >= from)
                })
                .collect();
            let failed = recent
                .iter()
                .filter(|r| !matches!(r.status, RunStatus::Succeeded | RunStatus::Cancelled))
                .count();
            if recent.len() < *min_runs {
                return quiet(format!(
                    "{} runs ended in the last {} (the rule needs {min_runs})",
                    recent.len(),
                    pretty(*window)
                ));
            }
            let rate = failed as f64 / recent.len() as f64;
            Condition {
                firing: rate > *threshold,
                value: Some(rate),
                message: format!(
                    "{failed} of {} runs failed in the last {} ({:.0}%; the limit is {:.0}%)",
                    recent.len(),
                    pretty(*window),
                    rate * 100.0,
                    threshold * 100.0
                ),
            }
        }
        Rule::VolumeDrop { fraction, last }
        | Rule::Duration {
            factor: fraction,
            last,
        } => {
            let Some((newest, before)) = succeeded.split_first() else {
                return quiet("no successful run yet");
            };
            let history: Vec<&&RunRecord> = before.iter().take(*last).collect();
            if history.len() < MIN_HISTORY_RUNS {
                return quiet(format!(
                    "{} earlier successful runs (the rule needs {MIN_HISTORY_RUNS})",
                    history.len()
                ));
            }
            if let Rule::VolumeDrop { .. } = rule {
                let m = median(history.iter().map(|r| r.records_upserted as f64).collect());
                let n = newest.records_upserted as f64;
                Condition {
                    firing: n < fraction * m,
                    value: Some(n),
                    message: format!(
                        "run {} upserted {n} records; the median of the {} successful runs before it is {m} (the floor is {:.0}% of it)",
                        newest.id,
                        history.len(),
                        fraction * 100.0
                    ),
                }
            } else {
                let secs = |r: &RunRecord| r.duration_ms.unwrap_or(0) as f64 / 1000.0;
                let m = median(history.iter().map(|r| secs(r)).collect());
                let d = secs(newest);
                Condition {
                    firing: d > fraction * m,
                    value: Some(d),
                    message: format!(
                        "run {} took {d:.1}s; the median of the {} successful runs before it is {m:.1}s (the limit is {fraction}×)",
                        newest.id,
                        history.len()
                    ),
                }
            }
        }
        Rule::Staleness { after } => {
            let last = succeeded
                .first()
                .and_then(|r| r.ended_at.as_deref().and_then(parse_rfc3339_ms));
            let age = Duration::from_millis(
                u64::try_from(now_ms - last.unwrap_or(since_ms)).unwrap_or(0),
            );
            let what = match last {
                Some(_) => "since the last successful run",
                None => "without a successful run since the server started",
            };
            Condition {
                firing: age > *after,
                value: Some(age.as_secs_f64()),
                message: format!("{} {what} (the limit is {})", pretty(age), pretty(*after)),
            }
        }
        Rule::Drift => match ended.first() {
            None => quiet("no run yet"),
            Some(r) => Condition {
                firing: !r.drift.is_empty(),
                value: Some(r.drift.len() as f64),
                message: if r.drift.is_empty() {
                    format!("run {} saw no schema drift", r.id)
                } else {
                    format!("run {} saw schema drift: {}", r.id, r.drift.join("; "))
                },
            },
        },
        Rule::QuarantineRatio { threshold } => match ended.iter().find(|r| r.records_emitted > 0) {
            None => quiet("no run emitted records yet"),
            Some(r) => {
                let ratio = r.records_quarantined as f64 / r.records_emitted as f64;
                Condition {
                    firing: ratio > *threshold,
                    value: Some(ratio),
                    message: format!(
                        "run {} quarantined {} of {} records ({:.1}%; the limit is {:.1}%)",
                        r.id,
                        r.records_quarantined,
                        r.records_emitted,
                        ratio * 100.0,
                        threshold * 100.0
                    ),
                }
            }
        },
    }
}

/// What to do about one (rule, instance), from its stored state and
/// what the rule says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to send or store.
    Nothing,
    /// Send this event (`firing`, `repeat` or `resolved`) and store the
    /// state it leads to.
    Notify(&'static str),
}

/// The step for `state` (none stored yet: `None`) given `cond` at `now`.
pub fn step(state: Option<&AlertState>, cond: &Condition, now_ms: i64, repeat: Duration) -> Step {
    let firing_now = state.is_some_and(|s| s.firing);
    match (firing_now, cond.firing) {
        (false, true) => Step::Notify("firing"),
        (true, false) => Step::Notify("resolved"),
        (false, false) => Step::Nothing,
        (true, true) => {
            let sent = state
                .and_then(|s| s.last_sent_at.as_deref())
                .and_then(parse_rfc3339_ms);
            match sent {
                // Never delivered: try again.
                None => Step::Notify("firing"),
                Some(t) if now_ms - t >= i64::try_from(repeat.as_millis()).unwrap_or(i64::MAX) => {
                    Step::Notify("repeat")
                }
                Some(_) => Step::Nothing,
            }
        }
    }
}

/// The payload a webhook of `format` gets.
pub fn payload(
    format: WebhookFormat,
    rule: &RuleConfig,
    state: &AlertState,
    event: &str,
) -> serde_json::Value {
    match format {
        WebhookFormat::Json => json!({
            "source": "sluice",
            "rule": rule.name(),
            "kind": rule.kind(),
            "instance": state.instance,
            "state": if state.firing { "firing" } else { "resolved" },
            "event": event,
            "message": state.message,
            "value": state.value,
            "since": state.since,
            "at": state.updated_at,
        }),
        WebhookFormat::Slack => {
            let tag = if state.firing { "FIRING" } else { "RESOLVED" };
            json!({
                "text": format!(
                    "[{tag}] {} ({}) on instance {}: {}",
                    rule.name(),
                    rule.kind(),
                    state.instance,
                    state.message
                ),
            })
        }
    }
}

/// POST `body` to `url`, retrying failures ([`WEBHOOK_ATTEMPTS`]).
async fn post(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Result<(), String> {
    let mut wait = WEBHOOK_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        match client
            .post(url)
            .json(body)
            .timeout(WEBHOOK_TIMEOUT)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => last = e.without_url().to_string(),
        }
        if attempt < WEBHOOK_ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    Err(format!("{last} ({WEBHOOK_ATTEMPTS} attempts)"))
}

/// Send `event` of `state` to every webhook; `Ok` when all took it.
pub async fn deliver(
    client: &reqwest::Client,
    alerts: &AlertsConfig,
    rule: &RuleConfig,
    state: &AlertState,
    event: &str,
) -> Result<(), String> {
    let mut errors = Vec::new();
    for (i, hook) in alerts.webhooks.iter().enumerate() {
        let url = match hook.url() {
            Ok(WebhookUrl::Literal(u)) => u.to_string(),
            Ok(WebhookUrl::Secret(src)) => match src.read("webhook url") {
                Ok(u) => u.trim().to_string(),
                Err(e) => {
                    errors.push(format!("webhook {i}: {e}"));
                    continue;
                }
            },
            Err(e) => {
                errors.push(format!("webhook {i}: {e}"));
                continue;
            }
        };
        let body = payload(hook.format, rule, state, event);
        if let Err(e) = post(client, &url, &body).await {
            // The URL is not quoted: it may be a secret (a Slack URL).
            errors.push(format!("webhook {i}: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The state and event after `event` was sent (or not: `delivery`).
pub fn next_state(
    rule: &str,
    instance: &str,
    before: Option<&AlertState>,
    cond: &Condition,
    event: &str,
    delivery: &Result<(), String>,
    no_webhooks: bool,
) -> (AlertState, AlertEvent) {
    let now = now_rfc3339();
    let since = match (before, event) {
        (Some(b), "repeat") => b.since.clone(),
        (Some(b), "firing") if b.firing => b.since.clone(),
        _ => now.clone(),
    };
    // With no webhook the run log is the notification: not retried.
    let sent = delivery.is_ok() || no_webhooks;
    let state = AlertState {
        rule: rule.to_string(),
        instance: instance.to_string(),
        firing: cond.firing,
        since,
        // Not sent: a repeat keeps the last time (it is tried again at the
        // next evaluation); a new state has none (a firing one is tried
        // again; a resolved one is not).
        last_sent_at: if sent {
            Some(now.clone())
        } else if event == "repeat" {
            before.and_then(|b| b.last_sent_at.clone())
        } else {
            None
        },
        message: cond.message.clone(),
        value: cond.value,
        updated_at: now.clone(),
    };
    let event = AlertEvent {
        at: now,
        rule: rule.to_string(),
        instance: instance.to_string(),
        event: event.to_string(),
        message: cond.message.clone(),
        delivered: delivery.is_ok() && !no_webhooks,
        error: match delivery {
            _ if no_webhooks => Some("no webhooks configured".to_string()),
            Ok(()) => None,
            Err(e) => Some(e.clone()),
        },
    };
    (state, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const T0: i64 = 1_800_000_000_000;

    fn run(id: &str, status: RunStatus, ended_ms: i64, upserted: u64, secs: u64) -> RunRecord {
        let mut r = RunRecord::started(id, "crm", "1", "h");
        r.status = status;
        r.ended_at = Some(sluice_runner::schedule::rfc3339_ms(ended_ms));
        r.records_upserted = upserted;
        r.records_emitted = upserted;
        r.duration_ms = Some(secs * 1000);
        r
    }

    #[test]
    fn failure_rate_over_the_window() {
        let rule = Rule::FailureRate {
            window: Duration::from_secs(3600),
            threshold: 0.5,
            min_runs: 2,
        };
        let runs = vec![
            run("c", RunStatus::Failed, T0 - 10, 0, 1),
            run("b", RunStatus::Failed, T0 - 20, 0, 1),
            run("a", RunStatus::Succeeded, T0 - 30, 5, 1),
            // Outside the window.
            run("old", RunStatus::Succeeded, T0 - 2 * HOUR, 5, 1),
        ];
        let c = evaluate(&rule, &runs, T0, T0);
        assert!(c.firing, "{c:?}");
        assert!(c.message.starts_with("2 of 3 runs failed"), "{c:?}");
        let c = evaluate(&rule, &runs[1..], T0, T0);
        assert!(!c.firing, "1 of 2 is not more than half: {c:?}");
        let c = evaluate(&rule, &runs[..1], T0, T0);
        assert!(!c.firing && c.message.contains("needs 2"), "{c:?}");
        let mut skipped = runs.clone();
        skipped.insert(0, run("s", RunStatus::Skipped, T0, 0, 0));
        skipped.insert(0, run("x", RunStatus::Cancelled, T0, 0, 0));
        let c = evaluate(&rule, &skipped, T0, T0);
        assert_eq!(
            c.value,
            Some(0.5),
            "skipped runs do not count, cancelled ones are not failures: {c:?}"
        );
    }

    #[test]
    fn volume_and_duration_against_the_median() {
        let history: Vec<RunRecord> = (0..5)
            .map(|i| {
                run(
                    &format!("h{i}"),
                    RunStatus::Succeeded,
                    T0 - (i + 2) * HOUR,
                    100,
                    10,
                )
            })
            .collect();
        let with = |newest: RunRecord| {
            let mut v = vec![newest];
            v.extend(history.clone());
            v
        };
        let drop = Rule::VolumeDrop {
            fraction: 0.5,
            last: 10,
        };
        assert!(
            evaluate(
                &drop,
                &with(run("n", RunStatus::Succeeded, T0, 40, 10)),
                T0,
                T0
            )
            .firing
        );
        assert!(
            !evaluate(
                &drop,
                &with(run("n", RunStatus::Succeeded, T0, 60, 10)),
                T0,
                T0
            )
            .firing
        );
        // A failed run is not judged: the newest successful one is.
        assert!(!evaluate(&drop, &with(run("n", RunStatus::Failed, T0, 0, 10)), T0, T0).firing);
        let slow = Rule::Duration {
            factor: 3.0,
            last: 10,
        };
        assert!(
            evaluate(
                &slow,
                &with(run("n", RunStatus::Succeeded, T0, 100, 31)),
                T0,
                T0
            )
            .firing
        );
        assert!(
            !evaluate(
                &slow,
                &with(run("n", RunStatus::Succeeded, T0, 100, 29)),
                T0,
                T0
            )
            .firing
        );
        let c = evaluate(&drop, &history[..2], T0, T0);
        assert!(
            !c.firing && c.message.contains("needs 3"),
            "too little history: {c:?}"
        );
    }

    #[test]
    fn staleness_drift_and_quarantine_ratio() {
        let stale = Rule::Staleness {
            after: Duration::from_secs(3600),
        };
        let runs = vec![run("a", RunStatus::Succeeded, T0 - 2 * HOUR, 1, 1)];
        assert!(evaluate(&stale, &runs, T0, T0 - 5 * HOUR).firing);
        assert!(!evaluate(&stale, &runs, T0 - HOUR - 1, T0).firing);
        // Never succeeded: from the server's start.
        assert!(!evaluate(&stale, &[], T0, T0 - 10).firing);
        assert!(evaluate(&stale, &[], T0, T0 - 2 * HOUR).firing);

        let mut drifted = run("d", RunStatus::Succeeded, T0, 10, 1);
        drifted.drift = vec!["1 new field in stream items".into()];
        assert!(evaluate(&Rule::Drift, &[drifted.clone()], T0, T0).firing);
        assert!(
            !evaluate(
                &Rule::Drift,
                &[run("e", RunStatus::Succeeded, T0, 1, 1), drifted],
                T0,
                T0
            )
            .firing
        );

        let q = Rule::QuarantineRatio { threshold: 0.1 };
        let mut r = run("q", RunStatus::Succeeded, T0, 80, 1);
        r.records_emitted = 100;
        r.records_quarantined = 20;
        let c = evaluate(&q, &[r.clone()], T0, T0);
        assert!(c.firing && c.value == Some(0.2), "{c:?}");
        r.records_quarantined = 5;
        assert!(!evaluate(&q, &[r], T0, T0).firing);
    }

    #[test]
    fn steps_fire_once_repeat_after_the_interval_and_resolve() {
        let repeat = Duration::from_secs(3600);
        let on = Condition {
            firing: true,
            value: None,
            message: "m".into(),
        };
        let off = Condition {
            firing: false,
            value: None,
            message: "m".into(),
        };
        assert_eq!(step(None, &on, T0, repeat), Step::Notify("firing"));
        assert_eq!(step(None, &off, T0, repeat), Step::Nothing);
        let sent = |firing: bool, sent_ms: Option<i64>| AlertState {
            rule: "r".into(),
            instance: "i".into(),
            firing,
            since: "s".into(),
            last_sent_at: sent_ms.map(sluice_runner::schedule::rfc3339_ms),
            message: "m".into(),
            value: None,
            updated_at: "u".into(),
        };
        let firing = sent(true, Some(T0 - 10));
        assert_eq!(
            step(Some(&firing), &on, T0, repeat),
            Step::Nothing,
            "not re-sent early"
        );
        assert_eq!(
            step(Some(&firing), &on, T0 + HOUR, repeat),
            Step::Notify("repeat")
        );
        assert_eq!(
            step(Some(&firing), &off, T0, repeat),
            Step::Notify("resolved")
        );
        assert_eq!(
            step(Some(&sent(true, None)), &on, T0, repeat),
            Step::Notify("firing"),
            "an undelivered alert is tried again"
        );
        assert_eq!(
            step(Some(&sent(false, Some(T0))), &off, T0, repeat),
            Step::Nothing
        );
    }
}
