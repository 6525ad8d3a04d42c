//! The HTTP API, JSON under `/api/v1`, plus `/healthz`, `/readyz` and
//! Prometheus `/metrics`. With a token, every request but the two health
//! checks needs `Authorization: Bearer TOKEN` (401 otherwise; the
//! dashboard's pages, [`crate::dashboard`], also take the session cookie
//! of a browser signed in at `/login`, and send one without it there). Mutating
//! requests (any method but GET and HEAD) refuse cross-site requests: an
//! `Origin` that is not the server's own, or `Sec-Fetch-Site:
//! cross-site`, is answered 403. No CORS.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use sluice_core::destination::{QuarantineFilter, RunQuery, RunStatus, StoreError};
use sluice_runner::pipeline::PipelineError;

use crate::scheduler::{CancelError, Service, StartError};
use crate::ApiToken;

/// Runs `GET /api/v1/runs` answers when no `limit` is given.
pub const DEFAULT_RUNS_LIMIT: usize = 50;

/// The largest `limit` of `GET /api/v1/runs`.
pub const MAX_RUNS_LIMIT: usize = 1000;

/// Alert events `GET /api/v1/alerts` answers when no `events` is given.
pub const DEFAULT_ALERT_EVENTS: usize = 50;

/// Quarantined records `GET …/quarantine` answers when no `limit` is
/// given (at most [`MAX_RUNS_LIMIT`]).
pub const DEFAULT_QUARANTINE_LIMIT: usize = 100;

#[derive(Clone)]
struct Api {
    service: Arc<Service>,
    /// The origins the server itself has (`http://127.0.0.1:PORT`, …).
    own_origins: Arc<Vec<String>>,
    token: Option<ApiToken>,
}

/// The routes, for a server listening on `local`.
pub fn router(service: Arc<Service>, local: SocketAddr, token: Option<ApiToken>) -> Router {
    let port = local.port();
    let mut own = vec![
        format!("http://{local}"),
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://[::1]:{port}"),
    ];
    own.dedup();
    let (pages, open_pages) = crate::dashboard::router(service.clone(), token.clone());
    let api = Api {
        service,
        own_origins: Arc::new(own),
        token,
    };
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/instances", get(list_instances))
        .route("/api/v1/instances/{name}/runs", post(start_run))
        .route("/api/v1/instances/{name}/quarantine", get(list_quarantine))
        .route(
            "/api/v1/instances/{name}/quarantine/replay",
            post(replay_quarantine),
        )
        .route(
            "/api/v1/instances/{name}/quarantine/{id}",
            get(show_quarantined).put(edit_quarantined),
        )
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{id}", get(get_run))
        .route("/api/v1/runs/{id}/cancel", post(cancel_run))
        .route("/api/v1/drift", get(list_drift))
        .route("/api/v1/connectors", get(list_connectors))
        .route("/api/v1/alerts", get(list_alerts))
        .merge(pages)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(api.clone(), guard));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(open_pages)
        .merge(guarded)
        .with_state(api)
}

/// The bearer token (when one is set) and, for a mutating request, the
/// same-site check.
async fn guard(State(api): State<Api>, req: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|p| token.matches(p));
        // A browser on a dashboard page signs in with its session cookie
        // (the JSON API and /metrics take the header only).
        let page = crate::dashboard::is_page(req.uri().path());
        let signed_in = page
            && crate::dashboard::cookie_token(req.headers()).is_some_and(|p| token.matches(&p));
        if !bearer && !signed_in {
            if page {
                return axum::response::Redirect::to("/login").into_response();
            }
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "this server needs Authorization: Bearer TOKEN (its API token)",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    if mutating && cross_site(&api, req.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            "cross-site request refused: the Origin is not this server's",
        );
    }
    next.run(req).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn store_error(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the run log failed: {e}"),
    )
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(api): State<Api>) -> Response {
    let store = api.service.stores_reachable().await;
    let scheduler = api.service.scheduler_alive();
    let body = json!({
        "store": store.as_ref().map_or_else(|e| e.to_string(), |()| "ok".to_string()),
        "scheduler": if scheduler { "ok" } else { "stalled" },
    });
    let status = if store.is_ok() && scheduler {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn list_instances(State(api): State<Api>) -> Response {
    match api.service.instances().await {
        Ok(list) => Json(json!({ "instances": list })).into_response(),
        Err(e) => store_error(e),
    }
}

/// Is this request from a page of another site?
fn cross_site(api: &Api, headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return true;
    }
    match headers.get(axum::http::header::ORIGIN) {
        None => false,
        Some(origin) => !origin.to_str().is_ok_and(|o| {
            api.own_origins
                .iter()
                .any(|own| own.eq_ignore_ascii_case(o))
        }),
    }
}

async fn start_run(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.service.start_run(&name) {
        Ok(run_id) => (
            StatusCode::ACCEPTED,
            Json(json!({ "instance": name, "run_id": run_id })),
        )
            .into_response(),
        Err(e @ StartError::UnknownInstance(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(StartError::Busy { instance, run_id }) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!("instance {instance} is already running (run {run_id})"),
                "running": run_id,
            })),
        )
            .into_response(),
        Err(e @ StartError::Stopping) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e @ StartError::Config(_)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    instance: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn list_runs(State(api): State<Api>, Query(q): Query<RunsQuery>) -> Response {
    let limit = q.limit.unwrap_or(DEFAULT_RUNS_LIMIT);
    if limit == 0 || limit > MAX_RUNS_LIMIT {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_RUNS_LIMIT}"),
        );
    }
    let offset = q.offset.unwrap_or(0);
    if let Some(name) = &q.instance {
        if !api.service.has_instance(name) {
            return error(StatusCode::NOT_FOUND, format!("no instance named {name:?}"));
        }
    }
    let status = match q.status.as_deref().map(|s| (s, RunStatus::parse(s))) {
        None => None,
        Some((_, Some(status))) => Some(status),
        Some((s, None)) => {
            return error(StatusCode::BAD_REQUEST, format!("no run status {s:?}"));
        }
    };
    let query = RunQuery {
        instance: q.instance,
        status,
        exclude: None,
        limit,
        offset,
        counted: true,
    };
    match api.service.runs(query).await {
        Ok(page) => Json(json!({
            "runs": page.runs,
            "total": page.total,
            "limit": limit,
            "offset": offset,
        }))
        .into_response(),
        Err(e) => store_error(e),
    }
}

/// One run record, with its kept guest log lines as `log`.
async fn get_run(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.service.run_with_log(&id).await {
        Ok(Some((run, log))) => {
            let mut body = json!(run);
            body["log"] = json!(log);
            Json(body).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        Err(e) => store_error(e),
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        api.service.scrape(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelQuery {
    /// Stop at once, not at the next commit.
    #[serde(default)]
    now: bool,
}

async fn cancel_run(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<CancelQuery>,
) -> Response {
    match api.service.cancel_run(&id, q.now).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "run_id": id,
                "cancel": if q.now { "now" } else { "at_next_commit" },
            })),
        )
            .into_response(),
        Err(e @ CancelError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ CancelError::NotRunning { .. }) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

/// 404 for an instance the config does not have.
fn unknown_instance(api: &Api, name: &str) -> Option<Response> {
    (!api.service.has_instance(name))
        .then(|| error(StatusCode::NOT_FOUND, format!("no instance named {name:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineQuery {
    stream: Option<String>,
    /// Include records already replayed.
    #[serde(default)]
    all: bool,
    limit: Option<usize>,
}

async fn list_quarantine(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<QuarantineQuery>,
) -> Response {
    if let Some(r) = unknown_instance(&api, &name) {
        return r;
    }
    let limit = q.limit.unwrap_or(DEFAULT_QUARANTINE_LIMIT);
    if limit == 0 || limit > MAX_RUNS_LIMIT {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_RUNS_LIMIT}"),
        );
    }
    let filter = QuarantineFilter {
        stream: q.stream,
        all: q.all,
        limit: Some(limit),
        ..QuarantineFilter::default()
    };
    match api.service.quarantine(&name, filter).await {
        Ok(entries) => Json(json!({ "quarantine": entries })).into_response(),
        Err(e) => store_error(e),
    }
}

async fn show_quarantined(
    State(api): State<Api>,
    Path((name, id)): Path<(String, i64)>,
) -> Response {
    if let Some(r) = unknown_instance(&api, &name) {
        return r;
    }
    let filter = QuarantineFilter {
        ids: vec![id],
        all: true,
        ..QuarantineFilter::default()
    };
    match api.service.quarantine(&name, filter).await {
        Ok(entries) => match entries.into_iter().next() {
            Some(entry) => Json(json!(entry)).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no quarantined record {id} of instance {name}"),
            ),
        },
        Err(e) => store_error(e),
    }
}

/// `PUT …/quarantine/{id}` with the corrected record (a JSON object) as
/// its body.
async fn edit_quarantined(
    State(api): State<Api>,
    Path((name, id)): Path<(String, i64)>,
    body: String,
) -> Response {
    if let Some(r) = unknown_instance(&api, &name) {
        return r;
    }
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => return error(StatusCode::BAD_REQUEST, "the record must be a JSON object"),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the record is not JSON: {e}"),
            )
        }
    }
    match api
        .service
        .edit_quarantined(&name, id, body.trim().to_string())
        .await
    {
        Ok(entry) => Json(json!(entry)).into_response(),
        Err(StoreError::QuarantineNotFound(_)) => error(
            StatusCode::NOT_FOUND,
            format!("no quarantined record {id} of instance {name}"),
        ),
        Err(e @ StoreError::Invalid(_)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    ids: Vec<i64>,
    stream: Option<String>,
    /// Write stale records too.
    #[serde(default)]
    force: bool,
}

/// `POST …/quarantine/replay`, with an optional JSON body `{"ids": [..],
/// "stream": "..", "force": false}` (no body: every open record).
async fn replay_quarantine(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: String,
) -> Response {
    if let Some(r) = unknown_instance(&api, &name) {
        return r;
    }
    let body: ReplayBody = if body.trim().is_empty() {
        ReplayBody::default()
    } else {
        match serde_json::from_str(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad replay request: {e}")),
        }
    };
    let filter = QuarantineFilter {
        ids: body.ids,
        stream: body.stream,
        ..QuarantineFilter::default()
    };
    match api.service.replay(&name, filter, body.force).await {
        Ok(summary) => Json(json!(summary)).into_response(),
        Err(PipelineError::Store(e)) => store_error(e),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DriftQuery {
    instance: Option<String>,
    stream: Option<String>,
}

async fn list_drift(State(api): State<Api>, Query(q): Query<DriftQuery>) -> Response {
    if let Some(r) = q
        .instance
        .as_deref()
        .and_then(|n| unknown_instance(&api, n))
    {
        return r;
    }
    match api.service.drift(q.instance, q.stream).await {
        Ok(events) => Json(json!({ "drift": events })).into_response(),
        Err(e) => store_error(e),
    }
}

async fn list_connectors(State(api): State<Api>) -> Response {
    match api.service.connectors().await {
        Ok(registry) => Json(json!(registry)).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsQuery {
    events: Option<usize>,
}

/// Firing alerts, every alert's state, and the newest alert events.
async fn list_alerts(State(api): State<Api>, Query(q): Query<AlertsQuery>) -> Response {
    let events = q.events.unwrap_or(DEFAULT_ALERT_EVENTS).min(MAX_RUNS_LIMIT);
    match api.service.alerts(events).await {
        Ok((states, events)) => {
            let firing: Vec<_> = states.iter().filter(|s| s.firing).collect();
            Json(json!({
                "firing": firing,
                "alerts": states,
                "events": events,
                "evaluations": api.service.evaluations(),
            }))
            .into_response()
        }
        Err(e) => store_error(e),
    }
}
