//! The web dashboard at `/`: server-rendered HTML (maud templates compiled
//! into the binary, one embedded stylesheet, no script at all) over the
//! same [`Service`] the JSON API uses.
//!
//! Pages: the overview (`/`), an instance (`/instances/{name}`), a run
//! (`/runs/{id}`), an instance's quarantine (`/instances/{name}/quarantine`),
//! drift events (`/drift`) and alerts (`/alerts`). "Run now", "Cancel" and
//! "Replay" are plain HTML forms (POST, then a redirect), so they pass the
//! same cross-site check as the API's mutating requests; a running run's
//! page reloads itself (`<meta http-equiv=refresh>`) until it ends.
//!
//! Everything a connector controls (stream and field names, error
//! messages, log lines, record values) is untrusted: every value is
//! spliced through maud, which HTML-escapes it, and every page is served
//! with a Content-Security-Policy that allows no script, so even text that
//! escaped escaping would not run.
//!
//! With an API token, a browser signs in once at `/login`: the token is
//! kept in an `HttpOnly`, `SameSite=Strict` cookie ([`SESSION_COOKIE`]).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use sluice_core::destination::{
    AlertState, QuarantineEntry, QuarantineFilter, RunQuery, RunStatus, StoreError,
};
use sluice_core::run::RunRecord;
use sluice_core::text::human_bytes;

use crate::scheduler::{InstanceView, Service, StartError};
use crate::ApiToken;

/// Runs in one page of an instance's run history.
pub const RUNS_PER_PAGE: usize = 50;

/// Runs the overview's sparklines and an instance's chart draw.
pub const SPARKLINE_RUNS: usize = 20;

/// Runs an instance page's chart of records and duration draws.
pub const CHART_RUNS: usize = 50;

/// Quarantined records one quarantine page shows.
pub const QUARANTINE_PER_PAGE: usize = 100;

/// The status of a quarantined record not yet replayed.
const OPEN_STATUS: &str = "quarantined";

/// Drift events the drift page shows.
pub const DRIFT_SHOWN: usize = 500;

/// Alert events the alerts page shows.
pub const ALERT_EVENTS_SHOWN: usize = 100;

/// Characters of a run's error shown in a table cell (the run page shows
/// all of it).
pub const ERROR_PREVIEW_CHARS: usize = 160;

/// Seconds between reloads of a running run's page.
pub const RUNNING_REFRESH_SECS: u32 = 2;

/// The cookie holding a signed-in browser's token (hex).
pub const SESSION_COOKIE: &str = "sluice_token";

/// The policy every page is served with: nothing but this server's own
/// stylesheet and forms; no script, no frames, no plugins.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'self'; img-src 'self' data:; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("../assets/sluice.css");

#[derive(Clone)]
struct Dash {
    service: Arc<Service>,
    token: Option<ApiToken>,
}

/// The dashboard's routes (behind the API's guard: token and same-site
/// check) and its unguarded sign-in page and stylesheet.
pub(crate) fn router<S>(service: Arc<Service>, token: Option<ApiToken>) -> (Router<S>, Router<S>) {
    let dash = Dash { service, token };
    let guarded = Router::new()
        .route("/", get(overview))
        .route("/instances/{name}", get(instance_page))
        .route("/instances/{name}/run", post(run_now))
        .route("/instances/{name}/quarantine", get(quarantine_page))
        .route("/instances/{name}/quarantine/replay", post(replay))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/drift", get(drift_page))
        .route("/alerts", get(alerts_page))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(dash.clone());
    let open = Router::new()
        .route("/login", get(login_page).post(login))
        // The sign-in page is styled too.
        .route("/assets/sluice.css", get(stylesheet))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(dash);
    (guarded, open)
}

/// The token a browser presents in its session cookie, if any.
pub(crate) fn cookie_token(headers: &axum::http::HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .find_map(|h| hex::decode(h).ok())
}

/// Whether `path` is one of the dashboard's pages (a browser without a
/// session is sent to `/login`, not answered with JSON).
pub(crate) fn is_page(path: &str) -> bool {
    !(path.starts_with("/api/") || path == "/metrics")
}

async fn secure_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: under it Chromium sends `Origin: null` with the
    // pages' own form posts, which the cross-site check refuses.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// Which item of the top navigation a page is under.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Drift,
    Alerts,
    None,
}

/// A whole page around `body`.
fn page(title: &str, nav: Nav, refresh: bool, body: Markup) -> Markup {
    let here = |n: Nav| (nav == n).then_some("here");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh {
                    meta http-equiv="refresh" content=(RUNNING_REFRESH_SECS);
                }
                title { (title) " · Sluice" }
                link rel="stylesheet" href="/assets/sluice.css";
            }
            body {
                header.top {
                    a.brand href="/" { "Sluice" }
                    nav {
                        a href="/" class=[here(Nav::Overview)] { "Overview" }
                        a href="/drift" class=[here(Nav::Drift)] { "Drift" }
                        a href="/alerts" class=[here(Nav::Alerts)] { "Alerts" }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn html_page(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn problem(status: StatusCode, message: &str) -> Response {
    html_page(
        status,
        page(
            status.canonical_reason().unwrap_or("Error"),
            Nav::None,
            false,
            html! {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                section.card { p { (message) } p { a href="/" { "Back to the overview" } } }
            },
        ),
    )
}

fn store_problem(e: StoreError) -> Response {
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("the run log failed: {e}"),
    )
}

fn unknown_instance(name: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        &format!("no instance named {name:?}"),
    )
}

/// The CSS class of a run status's badge.
fn status_class(status: RunStatus) -> &'static str {
    if status.is_limit() {
        "limit"
    } else {
        status.as_str()
    }
}

fn status_badge(status: RunStatus) -> Markup {
    html! { span class={ "badge " (status_class(status)) } { (status.as_str()) } }
}

/// `ms` as a short human duration.
fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "—".to_string(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The first [`ERROR_PREVIEW_CHARS`] characters of `text`.
fn preview(text: &str) -> String {
    match text.char_indices().nth(ERROR_PREVIEW_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// An RFC 3339 time without its fraction, for tables.
fn when(at: &str) -> &str {
    at.split_once('.').map_or(at, |(head, _)| head)
}

/// A sparkline of `values` (oldest first).
fn sparkline(values: &[u64]) -> Markup {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    if values.is_empty() {
        return html! { span.muted { "no runs yet" } };
    }
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if values.len() > 1 {
        W / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                H - 2.0 - (*v as f64 / max) * (H - 4.0)
            )
        })
        .collect();
    let last = values.last().copied().unwrap_or(0);
    html! {
        svg.spark width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-label={ "records per run, last " (values.len()) } {
            polyline points=(points.join(" ")) fill="none" stroke="#2456c7" stroke-width="1.5" {}
            @if let Some(p) = points.last().and_then(|p| p.split_once(',')) {
                circle cx=(p.0) cy=(p.1) r="2" fill="#2456c7" {}
            }
        }
        " " span.muted { (last) }
    }
}

/// Bars of records upserted and a line of duration, per run (oldest first).
fn chart(runs: &[&RunRecord]) -> Markup {
    const W: f64 = 760.0;
    const H: f64 = 180.0;
    const PAD: f64 = 28.0;
    if runs.is_empty() {
        return html! { p.muted { "No runs to chart yet." } };
    }
    let max_records = runs
        .iter()
        .map(|r| r.records_upserted)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let max_ms = runs
        .iter()
        .filter_map(|r| r.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = (W - 2.0 * PAD) / runs.len() as f64;
    let bar = (slot * 0.7).max(1.0);
    let plot_h = H - 2.0 * PAD;
    let line: Vec<String> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let ms = r.duration_ms? as f64;
            Some(format!(
                "{:.1},{:.1}",
                PAD + i as f64 * slot + slot / 2.0,
                H - PAD - ms / max_ms * plot_h
            ))
        })
        .collect();
    html! {
        svg.chart width=(W) height=(H) viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-label="records upserted and duration of the last runs" {
            line x1=(PAD) y1=(H - PAD) x2=(W - PAD) y2=(H - PAD) stroke="#dde1e8" {}
            text x=(PAD) y="14" font-size="11" fill="#5d6678" { (max_records as u64) " records" }
            text x=(W - PAD) y="14" font-size="11" fill="#9a6700" text-anchor="end" {
                (duration(Some(max_ms as u64)))
            }
            @for (i, r) in runs.iter().enumerate() {
                @let h = r.records_upserted as f64 / max_records * plot_h;
                rect x=(format!("{:.1}", PAD + i as f64 * slot + (slot - bar) / 2.0))
                    y=(format!("{:.1}", H - PAD - h)) width=(format!("{bar:.1}"))
                    height=(format!("{h:.1}"))
                    fill=(if r.status == RunStatus::Succeeded { "#8fb0f0" } else { "#f0a39d" }) {
                    title { (r.id) ": " (r.records_upserted) " records, " (duration(r.duration_ms)) }
                }
            }
            polyline points=(line.join(" ")) fill="none" stroke="#9a6700" stroke-width="1.5" {}
        }
        p.legend.muted {
            span { span.swatch.bars {} "records upserted (red: run not succeeded)" }
            span { span.swatch.duration {} "duration" }
        }
    }
}

fn run_now_button(name: &str) -> Markup {
    html! {
        form.inline method="post" action={ "/instances/" (name) "/run" } {
            button type="submit" { "Run now" }
        }
    }
}

fn health_badge(health: &str) -> Markup {
    html! { span class={ "badge " (health) } { (health) } }
}

fn schedule_text(i: &InstanceView) -> String {
    match (&i.schedule, &i.every) {
        (Some(cron), _) => match i.timezone {
            Some(tz) => format!("{cron} ({tz})"),
            None => cron.clone(),
        },
        (None, Some(every)) => format!("every {every}"),
        (None, None) => "on demand".to_string(),
    }
}

fn alerts_table(states: &[&AlertState]) -> Markup {
    html! {
        table {
            thead { tr { th { "State" } th { "Rule" } th { "Instance" } th { "Since" } th { "Message" } } }
            tbody {
                @for a in states {
                    tr {
                        td { span class={ "badge " (if a.firing { "firing" } else { "resolved" }) } {
                            (if a.firing { "firing" } else { "resolved" })
                        } }
                        td { (a.rule) }
                        td { a href={ "/instances/" (a.instance) } { (a.instance) } }
                        td { (when(&a.since)) }
                        td { (a.message) }
                    }
                }
            }
        }
    }
}

async fn overview(State(d): State<Dash>) -> Response {
    let (instances, sparks): (Vec<InstanceView>, Vec<Vec<u64>>) =
        match d.service.instances_with_runs(SPARKLINE_RUNS).await {
            Ok(list) => list
                .into_iter()
                .map(|(view, runs)| {
                    let spark = runs.iter().rev().map(|r| r.records_upserted).collect();
                    (view, spark)
                })
                .unzip(),
            Err(e) => return store_problem(e),
        };
    let states = match d.service.alerts(0).await {
        Ok((states, _)) => states,
        Err(e) => return store_problem(e),
    };
    let firing: Vec<&AlertState> = states.iter().filter(|s| s.firing).collect();
    let body = html! {
        h1 { "Overview" }
        @if !firing.is_empty() {
            section.card.alerts-firing {
                h2 { (firing.len()) " firing alert" @if firing.len() != 1 { "s" } }
                (alerts_table(&firing))
            }
        }
        table #instances {
            thead { tr {
                th { "Instance" } th { "Health" } th { "Schedule" } th { "Last run" }
                th { "Next run" } th { "Records per run" } th {}
            } }
            tbody {
                @for (i, spark) in instances.iter().zip(&sparks) {
                    tr data-instance=(i.name) {
                        td { a href={ "/instances/" (i.name) } { (i.name) } }
                        td { (health_badge(i.health)) }
                        td { (schedule_text(i)) }
                        td {
                            @if let Some(r) = &i.last_recorded_run {
                                (status_badge(r.status)) " "
                                a href={ "/runs/" (r.id) } { (when(&r.started_at)) }
                                @if let Some(e) = &r.error { div.err.muted { (preview(e)) } }
                            } @else { span.muted { "never" } }
                        }
                        td { (i.next_run_at.as_deref().map_or("—", when)) }
                        td { (sparkline(spark)) }
                        td { (run_now_button(&i.name)) }
                    }
                }
            }
        }
        @if instances.is_empty() {
            p.muted { "sluice.toml names no instances." }
        }
    };
    html_page(StatusCode::OK, page("Overview", Nav::Overview, false, body))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    page: Option<usize>,
    status: Option<String>,
}

/// A run status from a query string (`None`: any; an unknown one is an
/// error).
fn parse_status(s: Option<&str>) -> Result<Option<RunStatus>, Box<Response>> {
    match s.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => RunStatus::parse(s).map(Some).ok_or_else(|| {
            Box::new(problem(
                StatusCode::BAD_REQUEST,
                &format!("no run status {s:?}"),
            ))
        }),
    }
}

async fn instance_page(
    State(d): State<Dash>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some((view, recent)) = (match d.service.instance(&name, CHART_RUNS).await {
        Ok(view) => view,
        Err(e) => return store_problem(e),
    }) else {
        return unknown_instance(&name);
    };
    let status = match parse_status(q.status.as_deref()) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let page_no = q.page.unwrap_or(1).max(1);
    let query = RunQuery {
        instance: Some(name.clone()),
        status,
        exclude: None,
        limit: RUNS_PER_PAGE,
        offset: (page_no - 1).saturating_mul(RUNS_PER_PAGE),
        counted: true,
    };
    let history = match d.service.runs(query.clone()).await {
        Ok(h) => h,
        Err(e) => return store_problem(e),
    };
    let charted: Vec<&RunRecord> = recent.iter().rev().collect();
    let pages = history.total.div_ceil(RUNS_PER_PAGE as u64).max(1);
    let link = |p: u64| match status {
        Some(s) => format!("/instances/{name}?page={p}&status={}", s.as_str()),
        None => format!("/instances/{name}?page={p}"),
    };
    let first = query.offset as u64 + 1;
    let last = query.offset as u64 + history.runs.len() as u64;
    let body = html! {
        h1 { (name) " " (health_badge(view.health)) }
        div.row {
            section.card {
                dl.facts {
                    dt { "Schedule" } dd { (schedule_text(&view)) }
                    dt { "Catch-up" } dd { (view.catch_up) }
                    dt { "Next run" } dd { (view.next_run_at.as_deref().map_or("—", when)) }
                    dt { "Running" } dd {
                        @if let Some(id) = &view.running { a href={ "/runs/" (id) } { (id) } } @else { "no" }
                    }
                    dt { "Skipped runs" } dd { (view.skipped_runs) }
                }
                p {
                    (run_now_button(&name)) " "
                    a href={ "/instances/" (name) "/quarantine" } { "Quarantine" } " · "
                    a href={ "/drift?instance=" (name) } { "Drift events" }
                }
            }
        }
        h2 { "The last " (charted.len()) " runs" }
        (chart(&charted))
        h2 { "Run history" }
        p.filters {
            a href={ "/instances/" (name) } class=[status.is_none().then_some("here")] { "all" }
            @for s in [RunStatus::Succeeded, RunStatus::Failed, RunStatus::Cancelled, RunStatus::Skipped] {
                a href={ "/instances/" (name) "?status=" (s.as_str()) }
                    class=[(status == Some(s)).then_some("here")] { (s.as_str()) }
            }
        }
        (pager(page_no as u64, pages, first, last, history.total, &link))
        table #runs {
            thead { tr {
                th { "Run" } th { "Status" } th { "Started" } th.num { "Duration" }
                th.num { "Emitted" } th.num { "Upserted" } th.num { "Quarantined" } th { "Error" }
            } }
            tbody {
                @for r in &history.runs {
                    tr data-run=(r.id) {
                        td { a href={ "/runs/" (r.id) } { (r.id) } }
                        td { (status_badge(r.status)) }
                        td { (when(&r.started_at)) }
                        td.num { (duration(r.duration_ms)) }
                        td.num { (r.records_emitted) }
                        td.num { (r.records_upserted) }
                        td.num { (r.records_quarantined) }
                        td.err { (r.error.as_deref().map(preview).unwrap_or_default()) }
                    }
                }
            }
        }
        @if history.runs.is_empty() { p.muted { "No runs." } }
        (pager(page_no as u64, pages, first, last, history.total, &link))
    };
    html_page(StatusCode::OK, page(&name, Nav::None, false, body))
}

fn pager(
    page: u64,
    pages: u64,
    first: u64,
    last: u64,
    total: u64,
    link: &dyn Fn(u64) -> String,
) -> Markup {
    html! {
        div.pager {
            @if page > 1 { a rel="prev" href=(link(page - 1)) { "← newer" } }
            span.muted {
                @if total == 0 { "no runs" } @else { "runs " (first) "–" (last) " of " (total) }
                " · page " (page) " of " (pages)
            }
            @if page < pages { a rel="next" href=(link(page + 1)) { "older →" } }
        }
    }
}

async fn run_page(State(d): State<Dash>, Path(id): Path<String>) -> Response {
    let (run, log) = match d.service.run_with_log(&id).await {
        Ok(Some(found)) => found,
        // Started, not yet in the run log (waiting for its slot).
        Ok(None) if d.service.is_running(&id) => {
            let body = html! {
                h1 { "Run " (id) " " span.badge.running { "starting" } }
                p.muted { "The run is waiting for its slot; this page reloads until it starts." }
            };
            return html_page(
                StatusCode::OK,
                page(&format!("Run {id}"), Nav::None, true, body),
            );
        }
        Ok(None) => return problem(StatusCode::NOT_FOUND, &format!("run {id} not found")),
        Err(e) => return store_problem(e),
    };
    let running = run.status == RunStatus::Running;
    let body = html! {
        h1 { "Run " (run.id) " " (status_badge(run.status)) }
        div.row {
            section.card {
                dl.facts {
                    dt { "Instance" } dd { a href={ "/instances/" (run.connector) } { (run.connector) } }
                    dt { "Connector version" } dd { (run.connector_version) }
                    dt { "Component" } dd { code { (run.component_hash.get(..12).unwrap_or(&run.component_hash)) } }
                    dt { "Started" } dd { (run.started_at) }
                    dt { "Ended" } dd { (run.ended_at.as_deref().unwrap_or("—")) }
                    dt { "Duration" } dd { (duration(run.duration_ms)) }
                    dt { "Commits" } dd { (run.commits) }
                    @if let Some(change) = &run.component_change {
                        dt { "Component change" } dd { (change) }
                    }
                }
                @if running {
                    form.inline method="post" action={ "/runs/" (run.id) "/cancel" } {
                        button.quiet type="submit" { "Cancel at the next commit" }
                    }
                }
            }
            section.card {
                h2 { "HTTP" }
                dl.facts {
                    dt { "Requests" } dd #http-requests { (run.http_requests) }
                    dt { "Denied" } dd { (run.http_denied) }
                    dt { "Received" } dd { (human_bytes(run.http_bytes)) }
                    dt { "Retries" } dd #http-retries { (run.http_retries) }
                    dt { "Throttled" } dd { (duration(Some(run.http_throttled_ms))) }
                    dt { "Breaker trips" } dd { (run.http_breaker_trips) }
                }
            }
            section.card {
                h2 { "Sandbox" }
                dl.facts {
                    dt { "Fuel used" } dd #fuel { (run.fuel_used) }
                    dt { "Peak memory" } dd #memory { (human_bytes(run.peak_memory_bytes)) }
                }
            }
        }
        @if let Some(e) = &run.error {
            section.card {
                h2 { "Error" }
                pre.block.err #run-error { (e) }
            }
        }
        h2 { "Streams" }
        table #streams {
            thead { tr {
                th { "Stream" } th.num { "Emitted" } th.num { "Valid" }
                th.num { "Quarantined" } th.num { "Upserted" }
            } }
            tbody {
                @for (stream, c) in &run.streams {
                    tr data-stream=(stream) {
                        td { (stream) }
                        td.num { (c.emitted) } td.num { (c.valid) }
                        td.num { (c.quarantined) } td.num { (c.upserted) }
                    }
                }
                tr {
                    th { "All" }
                    th.num { (run.records_emitted) } th.num { (run.records_valid) }
                    th.num { (run.records_quarantined) } th.num { (run.records_upserted) }
                }
            }
        }
        @if !run.drift.is_empty() {
            h2 { "Schema drift in this run" }
            ul #run-drift { @for path in &run.drift { li { code { (path) } } } }
        }
        h2 { "Log (" (log.len()) " lines)" }
        @if log.is_empty() { p.muted { "The connector logged nothing." } } @else {
            table #log {
                thead { tr { th { "#" } th { "At" } th { "Level" } th { "Message" } } }
                tbody {
                    @for line in &log {
                        tr {
                            td.num { (line.seq) } td { (when(&line.at)) } td { (line.level) }
                            td { pre { (line.message) } }
                        }
                    }
                }
            }
        }
    };
    html_page(
        StatusCode::OK,
        page(&format!("Run {}", run.id), Nav::None, running, body),
    )
}

async fn run_now(State(d): State<Dash>, Path(name): Path<String>) -> Response {
    match d.service.start_run(&name) {
        Ok(run_id) => Redirect::to(&format!("/runs/{run_id}")).into_response(),
        Err(StartError::UnknownInstance(_)) => unknown_instance(&name),
        Err(StartError::Busy { run_id, .. }) => {
            Redirect::to(&format!("/runs/{run_id}")).into_response()
        }
        Err(e @ StartError::Stopping) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        Err(e @ StartError::Config(_)) => problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    }
}

async fn cancel(State(d): State<Dash>, Path(id): Path<String>) -> Response {
    match d.service.cancel_run(&id, false).await {
        Ok(()) => Redirect::to(&format!("/runs/{id}")).into_response(),
        Err(e @ crate::scheduler::CancelError::NotFound(_)) => {
            problem(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(crate::scheduler::CancelError::NotRunning { .. }) => {
            Redirect::to(&format!("/runs/{id}")).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct QuarantineQuery {
    stream: Option<String>,
    #[serde(default)]
    all: Option<String>,
}

fn quarantine_entry(name: &str, q: &QuarantineEntry) -> Markup {
    html! {
        div.card data-quarantine=(q.id) {
            p {
                strong { "#" (q.id) } " · stream " code { (q.stream) } " · "
                span class={ "badge " (q.status) } { (q.status) } " · quarantined " (when(&q.quarantined_at))
                " · seen " (q.seen_count) "×"
                " · run " a href={ "/runs/" (q.run_id) } { (q.run_id) }
            }
            ul.err { @for e in &q.errors { li { code { (if e.path.is_empty() { "(record)" } else { e.path.as_str() }) } ": " (e.message) } } }
            pre.block { (q.record) }
            @if q.status == OPEN_STATUS {
                form.inline method="post" action={ "/instances/" (name) "/quarantine/replay" } {
                    input type="hidden" name="id" value=(q.id);
                    button.quiet type="submit" { "Replay this record" }
                }
            }
        }
    }
}

async fn quarantine_page(
    State(d): State<Dash>,
    Path(name): Path<String>,
    Query(q): Query<QuarantineQuery>,
) -> Response {
    if !d.service.has_instance(&name) {
        return unknown_instance(&name);
    }
    let all = q.all.as_deref().is_some_and(|v| !v.is_empty() && v != "0");
    let stream = q.stream.filter(|s| !s.is_empty());
    let filter = QuarantineFilter {
        stream: stream.clone(),
        all,
        limit: Some(QUARANTINE_PER_PAGE),
        ..QuarantineFilter::default()
    };
    let (entries, every) = match (
        d.service.quarantine(&name, filter).await,
        d.service
            .quarantine(
                &name,
                QuarantineFilter {
                    all: true,
                    ..QuarantineFilter::default()
                },
            )
            .await,
    ) {
        (Ok(e), Ok(every)) => (e, every),
        (Err(e), _) | (_, Err(e)) => return store_problem(e),
    };
    let mut streams: Vec<&str> = every.iter().map(|e| e.stream.as_str()).collect();
    streams.sort_unstable();
    streams.dedup();
    let open = every.iter().filter(|e| e.status == OPEN_STATUS).count();
    let link = |s: Option<&str>| {
        let mut l = format!("/instances/{name}/quarantine");
        let mut sep = '?';
        if let Some(s) = s {
            l.push_str(&format!("{sep}stream={s}"));
            sep = '&';
        }
        if all {
            l.push_str(&format!("{sep}all=1"));
        }
        l
    };
    let body = html! {
        h1 { "Quarantine of " a href={ "/instances/" (name) } { (name) } }
        p.muted { (open) " open record" @if open != 1 { "s" } " (" (every.len()) " in all, replayed ones included)" }
        p.filters {
            "Stream: "
            a href=(link(None)) class=[stream.is_none().then_some("here")] { "all" }
            @for s in &streams {
                a href=(link(Some(s))) class=[(stream.as_deref() == Some(*s)).then_some("here")] { (s) }
            }
            " · "
            @if all { a href={ "/instances/" (name) "/quarantine" } { "open records only" } }
            @else { a href={ "/instances/" (name) "/quarantine?all=1" } { "include replayed records" } }
        }
        @if open > 0 {
            form method="post" action={ "/instances/" (name) "/quarantine/replay" } {
                @if let Some(s) = &stream { input type="hidden" name="stream" value=(s); }
                button type="submit" {
                    "Replay every open record" @if let Some(s) = &stream { " of " (s) }
                }
            }
        }
        div #quarantine {
            @for e in &entries { (quarantine_entry(&name, e)) }
        }
        @if entries.is_empty() { p.muted { "Nothing quarantined here." } }
    };
    html_page(
        StatusCode::OK,
        page(&format!("Quarantine of {name}"), Nav::None, false, body),
    )
}

#[derive(Debug, Deserialize)]
struct ReplayForm {
    id: Option<i64>,
    stream: Option<String>,
}

async fn replay(
    State(d): State<Dash>,
    Path(name): Path<String>,
    Form(f): Form<ReplayForm>,
) -> Response {
    if !d.service.has_instance(&name) {
        return unknown_instance(&name);
    }
    let filter = QuarantineFilter {
        ids: f.id.into_iter().collect(),
        stream: f.stream.filter(|s| !s.is_empty()),
        ..QuarantineFilter::default()
    };
    let summary = match d.service.replay(&name, filter, false).await {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    };
    let body = html! {
        h1 { "Replay of " (name) "'s quarantine" }
        div.flash #replay-summary {
            "Examined " (summary.examined) ", replayed " (summary.replayed) ", still invalid "
            (summary.still_invalid) ", stale (not written) " (summary.stale) "."
        }
        p { a href={ "/instances/" (name) "/quarantine" } { "Back to the quarantine" } }
    };
    html_page(StatusCode::OK, page("Replay", Nav::None, false, body))
}

#[derive(Debug, Deserialize)]
struct DriftQuery {
    instance: Option<String>,
}

async fn drift_page(State(d): State<Dash>, Query(q): Query<DriftQuery>) -> Response {
    let instance = q.instance.filter(|s| !s.is_empty());
    if let Some(name) = &instance {
        if !d.service.has_instance(name) {
            return unknown_instance(name);
        }
    }
    let events = match d.service.drift(instance.clone(), None).await {
        Ok(e) => e,
        Err(e) => return store_problem(e),
    };
    let shown = &events[..events.len().min(DRIFT_SHOWN)];
    let body = html! {
        h1 { "Schema drift" @if let Some(n) = &instance { " of " a href={ "/instances/" (n) } { (n) } } }
        p.muted {
            (events.len()) " event" @if events.len() != 1 { "s" }
            @if events.len() > shown.len() { ", the newest " (shown.len()) " shown" }
            @if instance.is_some() { " · " a href="/drift" { "every instance" } }
        }
        table #drift {
            thead { tr {
                th { "Instance" } th { "Stream" } th { "Field" } th { "Kind" } th { "Type seen" }
                th.num { "Seen" } th { "First seen" } th { "Sample" }
            } }
            tbody {
                @for e in shown {
                    tr {
                        td { a href={ "/instances/" (e.connector) } { (e.connector) } }
                        td { (e.stream) }
                        td { code { (e.path) } }
                        td { (e.kind) }
                        td { (e.observed_type) }
                        td.num { (e.count) }
                        td { a href={ "/runs/" (e.first_seen_run) } { (when(&e.first_seen_at)) } }
                        td { pre { (e.sample) } }
                    }
                }
            }
        }
    };
    html_page(StatusCode::OK, page("Drift", Nav::Drift, false, body))
}

async fn alerts_page(State(d): State<Dash>) -> Response {
    let (states, events) = match d.service.alerts(ALERT_EVENTS_SHOWN).await {
        Ok(found) => found,
        Err(e) => return store_problem(e),
    };
    let firing: Vec<&AlertState> = states.iter().filter(|s| s.firing).collect();
    let all: Vec<&AlertState> = states.iter().collect();
    let body = html! {
        h1 { "Alerts" }
        section.card.alerts-firing[!firing.is_empty()] {
            h2 { "Firing (" (firing.len()) ")" }
            @if firing.is_empty() { p.muted { "Nothing is firing." } } @else { (alerts_table(&firing)) }
        }
        h2 { "Every rule and instance" }
        @if all.is_empty() { p.muted { "No alert has been evaluated yet (sluice.toml may have no [alerts] rules)." } }
        @else { (alerts_table(&all)) }
        h2 { "Recent events" }
        table #alert-events {
            thead { tr { th { "At" } th { "Event" } th { "Rule" } th { "Instance" } th { "Message" } th { "Delivered" } } }
            tbody {
                @for e in &events {
                    tr {
                        td { (when(&e.at)) }
                        td { span class={ "badge " (e.event) } { (e.event) } }
                        td { (e.rule) }
                        td { a href={ "/instances/" (e.instance) } { (e.instance) } }
                        td { (e.message) }
                        td {
                            @if e.delivered { "yes" } @else { "no" }
                            @if let Some(err) = &e.error { div.err { (err) } }
                        }
                    }
                }
            }
        }
    };
    html_page(StatusCode::OK, page("Alerts", Nav::Alerts, false, body))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

fn login_form(message: Option<&str>) -> Markup {
    page(
        "Sign in",
        Nav::None,
        false,
        html! {
            h1 { "Sign in" }
            section.card {
                @if let Some(m) = message { p.err { (m) } }
                form method="post" action="/login" {
                    p { label { "API token " input type="password" name="token" autocomplete="current-password"; } }
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

async fn login_page(State(d): State<Dash>) -> Response {
    if d.token.is_none() {
        return Redirect::to("/").into_response();
    }
    html_page(StatusCode::OK, login_form(None))
}

async fn login(State(d): State<Dash>, Form(f): Form<LoginForm>) -> Response {
    let Some(token) = &d.token else {
        return Redirect::to("/").into_response();
    };
    if !token.matches(f.token.as_bytes()) {
        return html_page(
            StatusCode::UNAUTHORIZED,
            login_form(Some("That is not this server's API token.")),
        );
    }
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        hex::encode(f.token.as_bytes())
    );
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, records: u64, ms: u64) -> RunRecord {
        let mut r = RunRecord::started(id, "shop", "1", "h");
        r.status = RunStatus::Succeeded;
        r.records_upserted = records;
        r.duration_ms = Some(ms);
        r
    }

    /// SVG elements are never void (`<line>` without its end tag would
    /// swallow what follows it in an HTML page), and the chart draws a bar
    /// per run and a point per duration.
    #[test]
    fn charts_close_every_svg_element() {
        let a = run("a", 24, 9);
        let b = run("b", 0, 7);
        let html = chart(&[&a, &b]).into_string();
        for tag in ["line", "polyline", "rect", "text"] {
            assert_eq!(
                html.matches(&format!("<{tag} ")).count(),
                html.matches(&format!("</{tag}>")).count(),
                "{tag}: {html}"
            );
        }
        assert_eq!(html.matches("<rect ").count(), 2, "{html}");
        assert!(
            html.contains(r#"height="124.0""#),
            "the bigger run fills the plot: {html}"
        );
        assert!(html.contains(r#"points="204.0,28.0 556.0,55.6""#), "{html}");
        let spark = sparkline(&[24]).into_string();
        assert!(
            spark.contains("</polyline>") && spark.contains("<circle "),
            "{spark}"
        );
        assert!(
            !html.contains("style="),
            "inline styles are refused by the CSP"
        );
    }

    #[test]
    fn previews_durations_and_sizes_read_well() {
        assert_eq!(duration(Some(950)), "950 ms");
        assert_eq!(duration(Some(1_500)), "1.5 s");
        assert_eq!(duration(Some(125_000)), "2m 05s");
        assert_eq!(duration(None), "—");
        assert_eq!(sluice_core::text::human_bytes(48 << 20), "48.0 MiB");
        let long = "é".repeat(ERROR_PREVIEW_CHARS + 5);
        assert_eq!(preview(&long).chars().count(), ERROR_PREVIEW_CHARS + 1);
        assert_eq!(when("2026-01-01T00:00:00.123Z"), "2026-01-01T00:00:00");
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sluice_token=616263; b=2"),
        );
        assert_eq!(cookie_token(&h), Some(b"abc".to_vec()));
        let mut h = axum::http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("sluice_tokenx=616263; sluice_token=zz"),
        );
        assert_eq!(cookie_token(&h), None, "not hex, and another cookie's name");
    }
}
