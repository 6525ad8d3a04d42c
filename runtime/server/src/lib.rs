//! # sluice-server
//!
//! `sluice serve`: one long-running process that runs the instances of a
//! `sluice.toml` on their schedules ([`scheduler`]) and on demand through
//! a JSON HTTP API under `/api/v1` ([`api`]), every run through the
//! runner's [`LocalExecutor`]. Depends on `sluice-runner`, `sluice-store`
//! and `sluice-core`; only the CLI depends on it.
//!
//! Prometheus metrics at `/metrics` ([`metrics`]). With an API token
//! (`SLUICE_API_TOKEN`, or `api_token` in `sluice.toml`) every endpoint
//! but `/healthz` and `/readyz` needs `Authorization: Bearer TOKEN`; a
//! non-loopback `--listen` needs a token, or the server refuses to start.
//!
//! Alert rules ([`alerts`]) are evaluated after each run and on a timer,
//! and sent to webhooks. `sluice.toml` is re-read on SIGHUP.
//!
//! The web dashboard ([`dashboard`]) is served at `/` by the same process:
//! server-rendered HTML over the same service, with a browser sign-in
//! (`/login`, a session cookie) when there is a token.

pub mod alerts;
pub mod api;
pub mod dashboard;
pub mod metrics;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_core::cancel::Cancel;
use sluice_runner::config::OperatorConfig;
use sluice_runner::LocalExecutor;

pub use scheduler::Service;

/// The address `sluice serve` listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// The environment variable of the API's bearer token (it wins over
/// `api_token` in `sluice.toml`).
pub const API_TOKEN_ENV: &str = "SLUICE_API_TOKEN";

/// The shortest API token accepted: a guessable token is no protection.
pub const MIN_API_TOKEN_LEN: usize = 16;

/// The API's bearer token (its value is never printed).
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

impl ApiToken {
    /// A token, if long enough and printable (it travels in a header).
    pub fn new(value: &str, from: &str) -> Result<ApiToken, ServerError> {
        let value = value.trim();
        if value.chars().count() < MIN_API_TOKEN_LEN {
            return Err(ServerError::BadToken(format!(
                "the API token from {from} is shorter than {MIN_API_TOKEN_LEN} characters"
            )));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ServerError::BadToken(format!(
                "the API token from {from} must be printable ASCII without spaces"
            )));
        }
        Ok(ApiToken(value.to_string()))
    }

    /// Does `presented` equal the token (in constant time)?
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// Why the server cannot start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "refusing to listen on {0}: it is not a loopback address, and no API token is set; \
         set {API_TOKEN_ENV} (or api_token = \"env:VAR\" | \"file:PATH\" in sluice.toml), \
         or listen on 127.0.0.1 or [::1]"
    )]
    NotLoopback(SocketAddr),
    #[error("{0}")]
    BadToken(String),
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Store(#[from] sluice_core::destination::StoreError),
    #[error(transparent)]
    Config(#[from] sluice_runner::config::ConfigError),
}

/// Refuse an address other than loopback without a token.
pub fn check_listen(addr: SocketAddr, token: Option<&ApiToken>) -> Result<(), ServerError> {
    if addr.ip().is_loopback() || token.is_some() {
        Ok(())
    } else {
        Err(ServerError::NotLoopback(addr))
    }
}

/// What [`serve`] needs.
pub struct ServeOptions {
    pub config: OperatorConfig,
    pub listen: SocketAddr,
    /// Required of every request but `/healthz` and `/readyz`, if set.
    pub token: Option<ApiToken>,
    pub executor: LocalExecutor,
    /// The stop request (SIGTERM, Ctrl-C): scheduling stops, running runs
    /// stop at their next commit, then [`serve`] returns.
    pub cancel: Cancel,
    /// Told the address actually bound (port 0 picks a free one).
    pub on_listening: Box<dyn FnOnce(SocketAddr) + Send>,
}

/// Run the service until `options.cancel` is stopped and every run has
/// ended.
pub async fn serve(options: ServeOptions) -> Result<(), ServerError> {
    check_listen(options.listen, options.token.as_ref())?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| ServerError::Bind {
            addr: options.listen,
            error,
        })?;
    let local = listener.local_addr().map_err(ServerError::Http)?;
    let config_path = options.config.path.clone();
    let service =
        Arc::new(Service::start(options.config, options.executor, options.cancel.clone()).await?);
    let scheduler = tokio::spawn(scheduler::run_scheduler(service.clone()));
    let alerting = tokio::spawn(scheduler::run_alerts(service.clone()));
    // Listening for SIGHUP before the server says it is up: a reload
    // asked for right after never kills the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ServerError::Http)?;
    let reloads = tokio::spawn(reload_on_sighup(
        service.clone(),
        config_path,
        hangups,
        options.cancel.clone(),
    ));
    let app = api::router(service.clone(), local, options.token);
    (options.on_listening)(local);
    let stop = options.cancel.clone();
    let http = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.stopped().await;
    });
    let http = tokio::spawn(async move { http.await });
    options.cancel.stopped().await;
    tracing::info!("stopping: no new runs; waiting for running runs to stop at their next commit");
    let _ = scheduler.await;
    let _ = alerting.await;
    let _ = reloads.await;
    service.wait_for_runs().await;
    match http.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServerError::Http(e)),
        Err(e) => Err(ServerError::Http(std::io::Error::other(e.to_string()))),
    }
}

/// Re-read the config file at each SIGHUP until the server stops. A bad
/// file keeps the old configuration and logs one error.
async fn reload_on_sighup(
    service: Arc<Service>,
    path: std::path::PathBuf,
    mut hangups: tokio::signal::unix::Signal,
    cancel: Cancel,
) {
    loop {
        tokio::select! {
            got = hangups.recv() => {
                if got.is_none() {
                    return;
                }
                match service.reload(&path).await {
                    Ok(r) => tracing::info!(
                        config = %path.display(),
                        added = ?r.added,
                        removed = ?r.removed,
                        rescheduled = ?r.rescheduled,
                        "configuration reloaded"
                    ),
                    Err(e) => tracing::error!(
                        "reloading {} failed, keeping the old configuration: {e}",
                        path.display()
                    ),
                }
            }
            () = cancel.stopped() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_addresses_than_loopback_need_a_token() {
        let token = ApiToken::new("0123456789abcdef", "test").unwrap();
        for ok in ["127.0.0.1:8787", "[::1]:0", "127.0.0.2:1"] {
            assert!(check_listen(ok.parse().unwrap(), None).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:8787", "[::]:8787", "192.168.1.2:80"] {
            let e = check_listen(bad.parse().unwrap(), None).unwrap_err();
            assert!(e.to_string().contains("not a loopback address"), "{e}");
            assert!(e.to_string().contains(API_TOKEN_ENV), "{e}");
            assert!(check_listen(bad.parse().unwrap(), Some(&token)).is_ok());
        }
    }

    #[test]
    fn a_token_is_long_printable_and_compared_whole() {
        let e = ApiToken::new("short", "SLUICE_API_TOKEN").unwrap_err();
        assert!(e.to_string().contains("shorter than 16"), "{e}");
        assert!(ApiToken::new("0123456789 abcdef", "x").is_err());
        let t = ApiToken::new("  0123456789abcdef\n", "x").unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcde"));
        assert!(!t.matches(b"0123456789abcdefg"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "ApiToken(***)");
    }
}
