//! Human and JSON output of the subcommands. Human output shows every
//! connector-controlled string (names, versions, streams, errors, drift,
//! quarantine, kit details) through [`escaped`], one line each; JSON output
//! keeps the exact text. Tables are laid out by `comfy_table` ([`table`]).

use crate::conformance::Report as KitReport;
use anyhow::Result;
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use serde_json::{json, Value};
use sluice_core::connector::{ConnectorSpec, Stream, SyncMode};
use sluice_core::destination::{DriftEvent, QuarantineEntry};
use sluice_core::run::LogLine;
use sluice_core::text::{escaped, human_bytes};
use sluice_core::RunRecord;
use sluice_runner::pipeline::{ReplaySummary, RunReport};
use sluice_runner::registry::Registry;
use sluice_runner::sync::SyncOutcome;

/// Spaces between two columns of a table.
const COLUMN_GAP: u16 = 2;

/// A plain-text table: no borders, columns [`COLUMN_GAP`] spaces apart and
/// as wide as their widest cell, the columns in `right` (numbers) aligned
/// right, every line `indent` spaces in, no trailing spaces. Every cell
/// must be one line: connector text goes in through [`escaped`] (a raw
/// line break would split a row).
fn table(header: &[&str], right: &[usize], indent: u16, rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((if i == 0 { indent } else { 0 }, COLUMN_GAP));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    t.trim_fmt()
}

/// Escaped text as a table cell.
fn cell(text: &str) -> String {
    escaped(text).to_string()
}

fn schema_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn modes(s: &Stream) -> Vec<&'static str> {
    s.sync_modes
        .iter()
        .map(|m| match m {
            SyncMode::FullRefresh => "full_refresh",
            SyncMode::Incremental => "incremental",
        })
        .collect()
}

fn stream_json(s: &Stream) -> Value {
    json!({
        "name": s.name,
        "json_schema": schema_value(&s.json_schema),
        "primary_key": s.primary_key,
        "cursor_field": s.cursor_field,
        "sync_modes": modes(s),
    })
}

fn print_stream_lines(streams: &[Stream]) {
    for s in streams {
        let key = if s.primary_key.is_empty() {
            "(no primary key)".to_string()
        } else {
            format!("key ({})", escaped(&s.primary_key.join(", ")))
        };
        let cursor = s
            .cursor_field
            .as_deref()
            .map(|c| format!("  cursor {}", escaped(c)))
            .unwrap_or_default();
        println!(
            "  {}  {key}{cursor}  modes {}",
            escaped(&s.name),
            modes(s).join(", ")
        );
    }
}

pub fn print_spec(spec: &ConnectorSpec, as_json: bool) -> Result<()> {
    if as_json {
        let v = json!({
            "name": spec.name,
            "version": spec.version,
            "description": spec.description,
            "config_schema": schema_value(&spec.config_schema),
            "streams": spec.streams.iter().map(stream_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} {} — {}",
            escaped(&spec.name),
            escaped(&spec.version),
            escaped(&spec.description)
        );
        println!("streams:");
        print_stream_lines(&spec.streams);
    }
    Ok(())
}

pub fn print_streams(streams: &[Stream], as_json: bool) -> Result<()> {
    if as_json {
        let v: Vec<Value> = streams.iter().map(stream_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_stream_lines(streams);
    }
    Ok(())
}

pub fn print_report(report: &RunReport, as_json: bool) -> Result<()> {
    write_report(&mut std::io::stdout().lock(), report, as_json)
}

/// The run summary, to `out` (stderr when stdout carries a protocol).
pub fn write_report(out: &mut dyn std::io::Write, report: &RunReport, as_json: bool) -> Result<()> {
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
        return Ok(());
    }
    let r = &report.record;
    let secs = r.duration_ms.unwrap_or(0) as f64 / 1000.0;
    writeln!(
        out,
        "run {}  {} {}  {}",
        r.id,
        escaped(&r.connector),
        escaped(&r.connector_version),
        r.status
    )?;
    writeln!(
        out,
        "  streams:  {}",
        escaped(&report.selected_streams.join(", "))
    )?;
    let tables: Vec<String> = report
        .tables
        .iter()
        .map(|(stream, table)| format!("{stream} -> {table}"))
        .collect();
    if tables.is_empty() {
        writeln!(out, "  tables:   none")?;
    } else {
        writeln!(out, "  tables:   {}", escaped(&tables.join(", ")))?;
    }
    if let Some(change) = &r.component_change {
        writeln!(out, "  component changed: {}", escaped(change))?;
    }
    writeln!(
        out,
        "  records:  {} emitted, {} valid, {} quarantined, {} upserted in {} commits",
        r.records_emitted, r.records_valid, r.records_quarantined, r.records_upserted, r.commits
    )?;
    if let Some(line) = swept_line(r) {
        writeln!(out, "  removed:  {line}")?;
    }
    for d in &r.drift {
        writeln!(out, "  drift:    {}", escaped(d))?;
    }
    writeln!(
        out,
        "  http:     {} calls, {} denied, {} failed, {} received",
        r.http_requests,
        r.http_denied,
        report.http_failed,
        human_bytes(r.http_bytes)
    )?;
    writeln!(
        out,
        "  upstream: {} retries, {} ms throttled, {} breaker trips, {} failed fast (circuit open)",
        r.http_retries, r.http_throttled_ms, r.http_breaker_trips, report.http_circuit_open
    )?;
    writeln!(
        out,
        "  sandbox:  {} fuel, {} peak memory, component {} ({} ms)",
        r.fuel_used,
        human_bytes(r.peak_memory_bytes),
        report.component_cache,
        report.component_load_ms
    )?;
    let rate = if secs > 0.0 {
        format!(" ({:.0} records/s)", r.records_upserted as f64 / secs)
    } else {
        String::new()
    };
    writeln!(out, "  duration: {secs:.3} s{rate}")?;
    if report.log_lines_suppressed > 0 {
        writeln!(
            out,
            "  log:      {} lines over the cap suppressed",
            report.log_lines_suppressed
        )?;
    }
    if report.http_log_lines_suppressed > 0 {
        writeln!(
            out,
            "  log:      {} host HTTP lines over the cap suppressed",
            report.http_log_lines_suppressed
        )?;
    }
    if let Some(e) = &r.error {
        writeln!(out, "  error:    {}", escaped(e))?;
    }
    Ok(())
}

/// What the run's full refresh removed, if it swept any stream: `N rows
/// by the full refresh (stream: n, …)`.
fn swept_line(r: &RunRecord) -> Option<String> {
    let swept: Vec<(&String, u64)> = r
        .streams
        .iter()
        .filter_map(|(stream, c)| c.swept.map(|n| (stream, n)))
        .collect();
    if swept.is_empty() {
        return None;
    }
    let total: u64 = swept.iter().map(|(_, n)| n).sum();
    let each: Vec<String> = swept
        .iter()
        .map(|(stream, n)| format!("{}: {n}", escaped(stream)))
        .collect();
    Some(format!(
        "{total} {} by the full refresh ({}); keys the run wrote or quarantined are kept",
        if total == 1 { "row" } else { "rows" },
        each.join(", ")
    ))
}

pub fn print_runs(runs: &[RunRecord], as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(runs)?);
        return Ok(());
    }
    let rows = runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                cell(&r.connector),
                r.started_at.clone(),
                r.status.as_str().to_string(),
                r.records_emitted.to_string(),
                r.records_upserted.to_string(),
                r.http_requests.to_string(),
                r.duration_ms
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.error.as_deref().map(cell).unwrap_or_default(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "run",
                "connector",
                "started",
                "status",
                "emitted",
                "upserted",
                "http",
                "ms",
                "error",
            ],
            &[4, 5, 6, 7],
            0,
            rows,
        )
    );
    Ok(())
}

/// One run in full, with the guest log lines the run log kept.
pub fn print_run(r: &RunRecord, log: &[LogLine], as_json: bool) -> Result<()> {
    if as_json {
        let mut body = serde_json::to_value(r)?;
        body["log"] = serde_json::to_value(log)?;
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    println!("run        {}", r.id);
    println!(
        "connector  {} {} (component sha256 {})",
        escaped(&r.connector),
        escaped(&r.connector_version),
        r.component_hash
    );
    if let Some(change) = &r.component_change {
        println!("changed    {}", escaped(change));
    }
    println!("status     {}", r.status);
    println!(
        "time       {} → {} ({} ms)",
        r.started_at,
        r.ended_at.as_deref().unwrap_or("-"),
        r.duration_ms
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "records    {} emitted, {} valid, {} quarantined, {} upserted in {} commits",
        r.records_emitted, r.records_valid, r.records_quarantined, r.records_upserted, r.commits
    );
    for (stream, c) in &r.streams {
        println!(
            "  {}: {} emitted, {} valid, {} quarantined, {} upserted{}",
            escaped(stream),
            c.emitted,
            c.valid,
            c.quarantined,
            c.upserted,
            c.swept
                .map(|n| format!(", {n} removed by the full refresh"))
                .unwrap_or_default()
        );
    }
    for d in &r.drift {
        println!("drift      {}", escaped(d));
    }
    println!(
        "http       {} calls, {} denied, {}",
        r.http_requests,
        r.http_denied,
        human_bytes(r.http_bytes)
    );
    println!(
        "upstream   {} retries, {} ms throttled, {} breaker trips",
        r.http_retries, r.http_throttled_ms, r.http_breaker_trips
    );
    println!(
        "sandbox    {} fuel, {} peak memory",
        r.fuel_used,
        human_bytes(r.peak_memory_bytes)
    );
    if let Some(e) = &r.error {
        println!("error      {}", escaped(e));
    }
    if !log.is_empty() {
        println!("log        {} lines kept", log.len());
        for line in log {
            println!(
                "  {} {:<5} {}",
                line.at,
                escaped(&line.level),
                escaped(&line.message)
            );
        }
    }
    Ok(())
}

/// A record error as `PATH: MESSAGE`, escaped.
fn record_error(err: &sluice_core::schema::RecordError) -> String {
    let path = if err.path.is_empty() { "/" } else { &err.path };
    format!("{}: {}", escaped(path), escaped(&err.message))
}

fn first_error(e: &QuarantineEntry) -> String {
    e.errors.first().map(record_error).unwrap_or_default()
}

pub fn print_quarantine_list(entries: &[QuarantineEntry], as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(entries)?);
        return Ok(());
    }
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                cell(&e.connector),
                cell(&e.stream),
                e.status.to_string(),
                e.seen_count.to_string(),
                first_error(e),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["id", "connector", "stream", "status", "seen", "error"],
            &[0, 4],
            0,
            rows
        )
    );
    println!("{} record(s)", entries.len());
    Ok(())
}

pub fn print_quarantine_entry(e: &QuarantineEntry, as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(e)?);
        return Ok(());
    }
    println!("id          {}", e.id);
    println!(
        "connector   {} {}",
        escaped(&e.connector),
        escaped(&e.connector_version)
    );
    println!("stream      {}", escaped(&e.stream));
    println!("run         {}", e.run_id);
    println!("at          {}", e.quarantined_at);
    if e.seen_count > 1 {
        println!(
            "seen        {} times, last by run {} at {}",
            e.seen_count, e.last_seen_run, e.last_seen_at
        );
    }
    if let Some(key) = &e.key {
        println!("key         {}", escaped(key));
    }
    println!(
        "status      {}{}",
        e.status,
        e.replay_id
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    println!("record      {}", escaped(&e.record));
    if let Some(o) = &e.original_record {
        println!("original    {}", escaped(o));
    }
    println!("errors:");
    for err in &e.errors {
        println!("  {}", record_error(err));
    }
    Ok(())
}

pub fn print_replay(s: &ReplaySummary, as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(s)?);
    } else {
        println!(
            "{}: {} examined, {} replayed into their tables, {} still invalid, {} stale",
            s.replay_id, s.examined, s.replayed, s.still_invalid, s.stale
        );
        if s.stale > 0 {
            let ids: Vec<String> = s.stale_ids.iter().map(i64::to_string).collect();
            println!(
                "stale (not written: the row of the key was written after the record was quarantined; \
                 still in quarantine, `--force` writes them): {}",
                ids.join(", ")
            );
        }
    }
    Ok(())
}

pub fn print_drift(events: &[DriftEvent], as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(events)?);
        return Ok(());
    }
    let rows = events
        .iter()
        .map(|d| {
            vec![
                cell(&d.connector),
                cell(&d.stream),
                cell(&d.path),
                d.kind.to_string(),
                cell(&d.observed_type),
                d.count.to_string(),
                cell(&d.sample),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "connector",
                "stream",
                "path",
                "kind",
                "type",
                "count",
                "sample"
            ],
            &[5],
            0,
            rows,
        )
    );
    Ok(())
}

pub fn print_alerts(
    states: &[sluice_core::destination::AlertState],
    events: &[sluice_core::destination::AlertEvent],
    as_json: bool,
) -> Result<()> {
    let firing: Vec<_> = states.iter().filter(|s| s.firing).collect();
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "firing": firing,
                "alerts": states,
                "events": events,
            }))?
        );
        return Ok(());
    }
    if firing.is_empty() {
        println!("no alert is firing");
    } else {
        let rows = firing
            .iter()
            .map(|a| {
                vec![
                    cell(&a.rule),
                    cell(&a.instance),
                    a.since.clone(),
                    a.last_sent_at.clone().unwrap_or_else(|| "-".into()),
                    cell(&a.message),
                ]
            })
            .collect();
        println!(
            "firing:\n{}",
            table(
                &["rule", "instance", "since", "sent", "message"],
                &[],
                2,
                rows
            )
        );
    }
    if !events.is_empty() {
        let rows = events
            .iter()
            .map(|e| {
                vec![
                    e.at.clone(),
                    cell(&e.rule),
                    cell(&e.instance),
                    e.event.clone(),
                    match (&e.delivered, &e.error) {
                        (true, _) => "yes".to_string(),
                        (false, Some(why)) => format!("no: {}", cell(why)),
                        (false, None) => "no".to_string(),
                    },
                    cell(&e.message),
                ]
            })
            .collect();
        println!(
            "recent:\n{}",
            table(
                &["at", "rule", "instance", "event", "delivered", "message"],
                &[],
                2,
                rows
            )
        );
    }
    Ok(())
}

pub fn print_connectors(registry: &Registry, as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(registry)?);
        return Ok(());
    }
    let or_dash = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            cell(&v.join(", "))
        }
    };
    let rows = registry
        .entries
        .values()
        .map(|e| {
            vec![
                cell(&e.name),
                cell(&e.version),
                or_dash(&e.streams),
                or_dash(&e.hosts),
                cell(&e.path.display().to_string()),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["name", "version", "streams", "hosts", "path"],
            &[],
            0,
            rows
        )
    );
    for b in &registry.broken {
        println!("(unusable) {}: {}", b.path.display(), escaped(&b.error));
    }
    if registry.entries.is_empty() && registry.broken.is_empty() {
        println!("no components (*.wasm) in {}", registry.dir.display());
    }
    Ok(())
}

fn sync_status(o: &SyncOutcome) -> &'static str {
    match &o.result {
        Ok(r) => r.record.status.as_str(),
        Err(_) => "error",
    }
}

pub fn print_sync(outcomes: &[SyncOutcome], as_json: bool) -> Result<()> {
    if as_json {
        let v: Vec<Value> = outcomes
            .iter()
            .map(|o| {
                let (run, error) = match &o.result {
                    Ok(r) => (Some(r), r.record.error.clone()),
                    Err(e) => (None, Some(e.to_string())),
                };
                json!({
                    "instance": o.instance,
                    "status": sync_status(o),
                    "run_id": run.map(|r| r.record.id.clone()),
                    "records_upserted": run.map_or(0, |r| r.record.records_upserted),
                    "records_quarantined": run.map_or(0, |r| r.record.records_quarantined),
                    "duration_ms": o.duration.as_millis() as u64,
                    "error": error,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows = outcomes
        .iter()
        .map(|o| {
            let records = match &o.result {
                Ok(r) => r.record.records_upserted.to_string(),
                Err(_) => "-".into(),
            };
            vec![
                cell(&o.instance),
                sync_status(o).to_string(),
                records,
                format!("{:.2} s", o.duration.as_secs_f64()),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["instance", "status", "records", "duration"],
            &[2, 3],
            0,
            rows
        )
    );
    for o in outcomes {
        let error = match &o.result {
            Ok(r) => r.record.error.clone(),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = error {
            println!("{}: {}", escaped(&o.instance), escaped(&e));
        }
    }
    let ok = outcomes.iter().filter(|o| o.succeeded()).count();
    println!("{ok} of {} instances succeeded", outcomes.len());
    Ok(())
}

/// The conformance kit's table: check, result, detail; then a verdict.
pub fn print_kit_report(report: &KitReport, as_json: bool) -> Result<()> {
    if as_json {
        let mut v = serde_json::to_value(report)?;
        v["passed"] = json!(report.passed());
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "conformance of {} {}",
        escaped(&report.connector),
        escaped(&report.version)
    );
    let rows = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.check.to_string(),
                r.outcome.as_str().to_string(),
                cell(&r.detail),
            ]
        })
        .collect();
    println!("{}", table(&["check", "result", "detail"], &[], 2, rows));
    let failed = report
        .rows
        .iter()
        .filter(|r| r.outcome == crate::conformance::Outcome::Fail)
        .count();
    if failed == 0 {
        println!("PASS: {} checks", report.rows.len());
    } else {
        println!("FAIL: {failed} of {} checks failed", report.rows.len());
    }
    Ok(())
}

/// `sluice state show`.
pub fn print_state(
    instance: &str,
    states: &[sluice_core::destination::StateEntry],
    as_json: bool,
) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(states)?);
        return Ok(());
    }
    if states.is_empty() {
        println!(
            "instance {} has no checkpoint state: its next run reads from the start",
            cell(instance)
        );
        return Ok(());
    }
    let rows = states
        .iter()
        .map(|s| {
            vec![
                cell(&s.stream),
                cell(&s.value),
                cell(&s.run_id),
                s.updated_at.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["stream", "state", "committed by", "updated"],
            &[],
            0,
            rows
        )
    );
    Ok(())
}

/// `sluice state set|reset|history`: audit rows.
pub fn print_state_changes(
    changes: &[sluice_core::destination::StateChangeRecord],
    as_json: bool,
) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(changes)?);
        return Ok(());
    }
    let none = || "-".to_string();
    let rows = changes
        .iter()
        .map(|c| {
            vec![
                c.at.clone(),
                cell(&c.instance),
                cell(&c.stream),
                c.action.clone(),
                c.old_value.as_deref().map(cell).unwrap_or_else(none),
                c.new_value.as_deref().map(cell).unwrap_or_else(none),
                cell(&c.by),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["at", "instance", "stream", "action", "before", "after", "by"],
            &[],
            0,
            rows
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where `word` starts on `line`, in characters.
    fn column(line: &str, word: &str) -> usize {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("{word:?} not in {line:?}"));
        line[..at].chars().count()
    }

    #[test]
    fn tables_stay_aligned_whatever_the_widths() {
        let long = "a-connector-instance-name-far-longer-than-any-fixed-column";
        let hostile = "evil\nrun 0000 succeeded\x1b[2J";
        let shown = table(
            &["name", "status", "records"],
            &[2],
            0,
            vec![
                vec![cell(long), "succeeded".into(), "7".into()],
                vec![cell("b"), "failed".into(), "1234567".into()],
                vec![cell(hostile), "é-ok".into(), "0".into()],
            ],
        );
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 4, "{shown}");
        assert!(lines[0].starts_with("name  "), "{shown}");
        let status = column(lines[0], "status");
        assert_eq!(status, long.len() + COLUMN_GAP as usize, "{shown}");
        for (line, word) in lines[1..].iter().zip(["succeeded", "failed", "é-ok"]) {
            assert_eq!(column(line, word), status, "{shown}");
            assert_eq!(line, &line.trim_end(), "trailing spaces: {line:?}");
        }
        // Numbers end where the header ends.
        let end = |l: &str| l.chars().count();
        assert!(lines.iter().all(|l| end(l) == end(lines[0])), "{shown}");
        // Connector text stays escaped, one line.
        assert!(
            lines[3].starts_with("evil\\nrun 0000 succeeded\\x1b[2J"),
            "{shown}"
        );
        assert!(!shown.contains('\x1b'));
        // An indent moves every line, header included.
        let kit = table(
            &["check", "result"],
            &[],
            2,
            vec![vec!["x".into(), "PASS".into()]],
        );
        assert!(
            kit.lines()
                .all(|l| l.starts_with("  ") && !l.starts_with("   ")),
            "{kit}"
        );
    }
}
