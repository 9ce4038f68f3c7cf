//! Start, run and stop: bind the three ports, load the repository's models
//! per the control mode (and keep polling it in poll mode), report ready once
//! the configured models are loaded, and on SIGTERM/SIGINT go not-ready, stop
//! accepting, and drain in-flight requests within the grace period. With
//! `[tls]` configured, the HTTP and gRPC ports accept TLS only.

use crate::Platform;
use crate::config::{ControlMode, ServerConfig};
use crate::grpc::GrpcService;
use crate::http;
use crate::repository::{self, RepoModel};
use crate::service::Shared;
use crate::tls::{Acceptors, TlsListener};
use anyhow::Context;
use pomme_runtime::Runtime;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A started server; ports are bound and serving.
pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Whether the HTTP and gRPC ports speak TLS.
    pub tls: bool,
    shared: Arc<Shared>,
    grace: Duration,
    stop_tx: watch::Sender<bool>,
    servers: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    background: JoinHandle<()>,
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn serve(
    config: ServerConfig,
    runtime: Runtime,
    platform: Platform,
) -> anyhow::Result<()> {
    let server = start(config, runtime, platform).await?;
    tracing::info!(http = %server.http_addr, grpc = %server.grpc_addr, metrics = %server.metrics_addr, tls = server.tls, "pomme serving");
    shutdown_signal().await;
    tracing::info!("shutdown signal received; draining");
    let drained = server.stop().await?;
    if !drained {
        tracing::warn!("grace period ended with requests still in flight");
    }
    Ok(())
}

/// Binds every port (0 picks a free one), starts serving and starts loading
/// the configured models in the background. Readiness turns true once they
/// have all been tried. `platform` names the backends and device that Triton
/// configurations in the repository mean.
pub async fn start(
    config: ServerConfig,
    runtime: Runtime,
    platform: Platform,
) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let tls = config.tls.as_ref().map(Acceptors::load).transpose()?;
    let shared = Arc::new(Shared::new(&config, runtime, platform));
    let bind = |port: u16, what: &'static str| {
        let addr = config.addr(port);
        async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {what} port {addr}"))
        }
    };
    let http_l = bind(config.http_port, "HTTP").await?;
    let grpc_l = bind(config.grpc_port, "gRPC").await?;
    let metrics_l = bind(config.metrics_port, "metrics").await?;
    let (http_addr, grpc_addr, metrics_addr) = (
        http_l.local_addr()?,
        grpc_l.local_addr()?,
        metrics_l.local_addr()?,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let app = http::app(shared.clone());
    let http_task = tokio::spawn({
        let stopped = stopped();
        let tls = tls.clone();
        async move {
            match tls {
                None => {
                    axum::serve(http_l, app)
                        .with_graceful_shutdown(stopped)
                        .await
                }
                Some(t) => {
                    axum::serve(TlsListener::new(http_l, t.http)?, app)
                        .with_graceful_shutdown(stopped)
                        .await
                }
            }
            .context("HTTP server")
        }
    });
    let metrics = http::metrics_app(shared.clone());
    let metrics_task = tokio::spawn({
        let stopped = stopped();
        async move {
            axum::serve(metrics_l, metrics)
                .with_graceful_shutdown(stopped)
                .await
                .context("metrics server")
        }
    });
    let grpc = GrpcService::new(shared.clone()).into_server();
    let grpc_task = tokio::spawn({
        let stopped = stopped();
        let tls = tls.clone();
        async move {
            let router = tonic::transport::Server::builder()
                .layer(tower::util::MapResponseLayer::new(
                    crate::grpc::oversize_is_resource_exhausted,
                ))
                .add_service(grpc);
            match tls {
                None => {
                    router
                        .serve_with_incoming_shutdown(
                            // Answers are written whole: no Nagle delay behind
                            // an unacknowledged WINDOW_UPDATE or PING frame.
                            tonic::transport::server::TcpIncoming::from(grpc_l)
                                .with_nodelay(Some(true)),
                            stopped,
                        )
                        .await
                }
                Some(t) => {
                    let incoming = TlsListener::new(grpc_l, t.grpc)?.into_stream();
                    router.serve_with_incoming_shutdown(incoming, stopped).await
                }
            }
            .context("gRPC server")
        }
    });

    let background = tokio::spawn(background(shared.clone(), config.clone(), stopped()));
    Ok(RunningServer {
        http_addr,
        grpc_addr,
        metrics_addr,
        tls: tls.is_some(),
        shared,
        grace: config.shutdown_grace,
        stop_tx,
        servers: vec![
            ("HTTP", http_task),
            ("gRPC", grpc_task),
            ("metrics", metrics_task),
        ],
        background,
    })
}

impl RunningServer {
    /// The state both protocols serve from.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits until readiness is true (the configured models were tried), or `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.shared.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Not ready → stop accepting → drain in-flight work within the grace
    /// period. Returns whether every in-flight request finished.
    pub async fn stop(self) -> anyhow::Result<bool> {
        self.shared.begin_shutdown();
        self.background.abort();
        let _ = self.stop_tx.send(true);
        let drained = self.shared.runtime.drain(self.grace).await;
        // Connections still open after the grace period are cut.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        for (what, mut task) in self.servers {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(result)) => result?,
                Ok(Err(e)) if e.is_cancelled() => {}
                Ok(Err(e)) => return Err(anyhow::anyhow!("{what} server task: {e}")),
                Err(_) => {
                    tracing::warn!(
                        server = what,
                        "connections still open after the grace period; closing them"
                    );
                    task.abort();
                }
            }
        }
        Ok(drained)
    }
}

/// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Loads the configured models, turns readiness on, then polls the repository in poll mode.
async fn background(shared: Arc<Shared>, config: ServerConfig, stopped: impl Future<Output = ()>) {
    let repo = config.repository.model_repository.clone();
    let mode = config.repository.control_mode;
    tokio::select! {
        _ = initial_load(&shared, repo.clone(), mode, &config.repository.load_model) => {}
        _ = stopped => return,
    }
    shared.set_started();
    tracing::info!("startup models loaded; ready");
    match (mode, repo) {
        (ControlMode::Poll, Some(repo)) => {
            tokio::join!(
                poll(&shared, repo, config.repository.poll_interval),
                idle_unloads(&shared)
            );
        }
        _ => idle_unloads(&shared).await,
    }
}

/// Unloads models idle past their `unload_after_idle`, checking at a
/// quarter of the shortest such setting (between 50 ms and 5 s).
async fn idle_unloads(shared: &Arc<Shared>) {
    loop {
        let pace = shared
            .shortest_idle()
            .map(|d| (d / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)))
            .unwrap_or(Duration::from_secs(5));
        tokio::time::sleep(pace).await;
        shared.unload_idle().await;
    }
}

async fn scan(repo: PathBuf, platform: Platform) -> Vec<repository::Scanned> {
    match tokio::task::spawn_blocking(move || repository::scan(&repo, &platform)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot scan the model repository");
            Vec::new()
        }
        Err(e) => {
            tracing::error!(error = %e, "repository scan task failed");
            Vec::new()
        }
    }
}

async fn initial_load(
    shared: &Arc<Shared>,
    repo: Option<PathBuf>,
    mode: ControlMode,
    explicit: &[String],
) {
    let Some(repo) = repo else { return };
    // `--load-model '*'` (Triton's spelling): every model, as the other modes.
    let everything = explicit.iter().any(|m| m == "*");
    let loads: Vec<_> = match mode {
        ControlMode::Explicit if !everything => explicit
            .iter()
            .map(|name| {
                let (shared, name) = (shared.clone(), name.clone());
                tokio::spawn(async move {
                    if let Err(e) = shared.load_from_repo(&name).await {
                        tracing::error!(model = %name, error = %e, "model failed to load");
                    }
                })
            })
            .collect(),
        ControlMode::Explicit | ControlMode::None | ControlMode::Poll => {
            scan(repo, shared.platform().clone())
                .await
                .into_iter()
                .filter_map(|(name, found)| match found {
                    Ok(model) => {
                        let shared = shared.clone();
                        Some(tokio::spawn(async move {
                            if let Err(e) = shared.load_declared(model, false).await {
                                tracing::error!(model = %name, error = %e, "model failed to load");
                            }
                        }))
                    }
                    Err(e) => {
                        tracing::error!(model = %name, error = %e, "model skipped");
                        None
                    }
                })
                .collect()
        }
    };
    for l in loads {
        let _ = l.await;
    }
}

/// Rescans the repository: new models load, changed ones reload (the old
/// instance keeps serving if the reload fails), removed ones unload.
async fn poll(shared: &Arc<Shared>, repo: PathBuf, interval: Duration) {
    // Models that failed, with the fingerprint that failed, so an unchanged
    // broken model is not retried (and logged) on every pass.
    let mut failed: BTreeMap<String, RepoModel> = BTreeMap::new();
    loop {
        tokio::time::sleep(interval).await;
        let found = scan(repo.clone(), shared.platform().clone()).await;
        let loaded = shared.declared_fingerprints();
        for (name, result) in &found {
            let model = match result {
                Ok(m) => m.clone(),
                Err(e) => {
                    if loaded.contains_key(name) {
                        tracing::warn!(model = %name, error = %e, "model directory is broken; the loaded version keeps serving");
                    }
                    continue;
                }
            };
            let same = |old: &RepoModel| {
                old.fingerprint == model.fingerprint && old.spec.version == model.spec.version
            };
            if failed.get(name).is_some_and(same) || shared.is_idle_unloaded(name, &model) {
                continue;
            }
            let reload = match loaded.get(name) {
                Some(old) if same(old) => continue,
                Some(_) => true,
                None => false,
            };
            tracing::info!(model = %name, version = model.spec.version, reload, "repository change");
            match shared.load_declared(model.clone(), reload).await {
                Ok(()) => {
                    failed.remove(name);
                }
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "model failed to load; any previous version keeps serving");
                    failed.insert(name.clone(), model);
                }
            }
        }
        for name in loaded.keys() {
            if !found.iter().any(|(n, _)| n == name) {
                tracing::info!(model = %name, "model removed from the repository; unloading");
                if let Err(e) = shared.unload(name).await {
                    tracing::warn!(model = %name, error = %e, "unload failed");
                }
            }
        }
        failed.retain(|n, _| found.iter().any(|(f, _)| f == n));
        shared.forget_idle_unloaded_except(|n| found.iter().any(|(f, _)| f == n));
    }
}
