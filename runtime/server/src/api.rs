//! The HTTP API, JSON under `/api/v1`, plus `/healthz` and `/readyz`.
//! Loopback only (no authentication is built yet); mutating endpoints
//! refuse cross-site requests: an `Origin` that is not the server's own,
//! or `Sec-Fetch-Site: cross-site`, is answered 403. No CORS.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::scheduler::{Service, StartError};

/// Runs `GET /api/v1/runs` answers when no `limit` is given.
pub const DEFAULT_RUNS_LIMIT: usize = 50;

/// The largest `limit` of `GET /api/v1/runs`.
pub const MAX_RUNS_LIMIT: usize = 1000;

/// The newest runs read from each run log to filter and page (older ones
/// are not listed by this slice of the API).
pub const MAX_RUNS_SCANNED: usize = 10_000;

#[derive(Clone)]
struct Api {
    service: Arc<Service>,
    /// The origins the server itself has (`http://127.0.0.1:PORT`, …).
    own_origins: Arc<Vec<String>>,
}

/// The routes, for a server listening on `local`.
pub fn router(service: Arc<Service>, local: SocketAddr) -> Router {
    let port = local.port();
    let mut own = vec![
        format!("http://{local}"),
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://[::1]:{port}"),
    ];
    own.dedup();
    let api = Api {
        service,
        own_origins: Arc::new(own),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/instances", get(list_instances))
        .route("/api/v1/instances/{name}/runs", post(start_run))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{id}", get(get_run))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(api)
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

async fn start_run(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if cross_site(&api, &headers) {
        return error(
            StatusCode::FORBIDDEN,
            "cross-site request refused: the Origin is not this server's",
        );
    }
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
    match api.service.runs(q.instance, q.status).await {
        Ok(all) => {
            let total = all.len();
            let runs: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
            Json(json!({ "runs": runs, "total": total, "limit": limit, "offset": offset }))
                .into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn get_run(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.service.run(&id).await {
        Ok(Some(run)) => Json(json!(run)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("run {id} not found")),
        Err(e) => store_error(e),
    }
}
