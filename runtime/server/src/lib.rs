//! # sluice-server
//!
//! `sluice serve`: one long-running process that runs the instances of a
//! `sluice.toml` on their schedules ([`scheduler`]) and on demand through
//! a JSON HTTP API under `/api/v1` ([`api`]), every run through the
//! runner's [`LocalExecutor`]. Depends on `sluice-runner`, `sluice-store`
//! and `sluice-core`; only the CLI depends on it.
//!
//! Not built yet (see the README): Prometheus `/metrics`, alert rules,
//! the dashboard, bearer-token auth (so only loopback addresses are
//! served), SIGHUP reload, jitter and schedule timezones.

pub mod api;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_core::cancel::Cancel;
use sluice_runner::config::OperatorConfig;
use sluice_runner::LocalExecutor;

pub use scheduler::Service;

/// The address `sluice serve` listens on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// Why the server cannot start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "refusing to listen on {0}: it is not a loopback address, and the API has no \
         authentication yet (bearer tokens are not built); listen on 127.0.0.1 or [::1]"
    )]
    NotLoopback(SocketAddr),
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

/// Refuse an address other than loopback (no auth is built yet).
pub fn check_listen(addr: SocketAddr) -> Result<(), ServerError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ServerError::NotLoopback(addr))
    }
}

/// What [`serve`] needs.
pub struct ServeOptions {
    pub config: OperatorConfig,
    pub listen: SocketAddr,
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
    check_listen(options.listen)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| ServerError::Bind {
            addr: options.listen,
            error,
        })?;
    let local = listener.local_addr().map_err(ServerError::Http)?;
    let service =
        Arc::new(Service::start(options.config, options.executor, options.cancel.clone()).await?);
    let scheduler = tokio::spawn(scheduler::run_scheduler(service.clone()));
    let app = api::router(service.clone(), local);
    (options.on_listening)(local);
    let stop = options.cancel.clone();
    let http = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.stopped().await;
    });
    let http = tokio::spawn(async move { http.await });
    options.cancel.stopped().await;
    tracing::info!("stopping: no new runs; waiting for running runs to stop at their next commit");
    let _ = scheduler.await;
    service.wait_for_runs().await;
    match http.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServerError::Http(e)),
        Err(e) => Err(ServerError::Http(std::io::Error::other(e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_served() {
        for ok in ["127.0.0.1:8787", "[::1]:0", "127.0.0.2:1"] {
            assert!(check_listen(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:8787", "[::]:8787", "192.168.1.2:80"] {
            let e = check_listen(bad.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains("not a loopback address"), "{e}");
            assert!(e.to_string().contains("no authentication yet"), "{e}");
        }
    }
}
