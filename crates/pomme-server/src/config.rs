//! The server's configuration: a `pomme.toml` file, overridden by `POMME_*`
//! environment variables, overridden by command-line flags.
//!
//! [`ServerArgs`] is the clap struct the CLI flattens into `pomme serve`; clap
//! itself resolves flag-over-environment. [`ServerConfig::load`] then lays the
//! arguments over the file and validates the result before any port is bound:
//! every problem is a [`ConfigError`] of one line naming the setting.

pub use crate::duration::parse_duration;
use crate::kserve::Limits;
use crate::routing::RoutingMode;
pub use crate::tls::TlsConfig;
use crate::tls::TlsError;
use pomme_runtime::{MemoryPolicy, ThermalPolicy};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem; the CLI prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

impl From<TlsError> for ConfigError {
    fn from(e: TlsError) -> Self {
        invalid(e.setting, e.message)
    }
}

pub(crate) fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// Which models are loaded, and whether clients may load and unload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ControlMode {
    /// Load every model in the repository at start; no load/unload API.
    #[default]
    None,
    /// Load only `load_model` at start; clients load and unload through the API.
    Explicit,
    /// Like `None`, and rescan the repository every `poll_interval`.
    Poll,
}

impl std::str::FromStr for ControlMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ControlMode::None),
            "explicit" => Ok(ControlMode::Explicit),
            "poll" => Ok(ControlMode::Poll),
            other => Err(format!("'{other}' is not one of none, explicit, poll")),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("'{other}' is not one of text, json")),
        }
    }
}

/// The validated server configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// Host telemetry and the thermal governor.
    pub node: NodeConfig,
    /// Root of pomme's caches (quantized and float16 models, compiled Core ML
    /// models); `None`: the CLI's default (`$XDG_CACHE_HOME/pomme`, else
    /// `~/.cache/pomme`).
    pub cache_dir: Option<PathBuf>,
    /// The Python interpreter of an environment holding Apple's
    /// `coreai-core`, for Core AI models (`coreai_python`,
    /// `POMME_COREAI_PYTHON`); `None`: the CLI's search (`./.venv`, `python3`).
    pub coreai_python: Option<PathBuf>,
    pub host: IpAddr,
    /// Ports; 0 asks the OS for a free one (tests).
    pub http_port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
    pub repository: RepositoryConfig,
    pub runtime: RuntimeConfig,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub limits: Limits,
    /// Bearer token required on the repository (load/unload/index) endpoints.
    pub auth_token: Option<String>,
    /// When set, the HTTP and gRPC ports speak TLS only (metrics stays plain).
    pub tls: Option<TlsConfig>,
    /// OpenTelemetry tracing (`[tracing]`); `None`, the default: off.
    pub tracing: Option<TracingConfig>,
}

/// OpenTelemetry export of request spans over OTLP (HTTP/protobuf).
#[derive(Clone, Debug, PartialEq)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: String,
    /// Fraction of new traces sampled, in [0, 1]. Parent-based: a request
    /// carrying a W3C `traceparent` follows its sampled flag instead.
    pub sampling_ratio: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

/// Where models come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepositoryConfig {
    pub model_repository: Option<PathBuf>,
    pub control_mode: ControlMode,
    /// Models to load at start in explicit mode.
    pub load_model: Vec<String>,
    pub poll_interval: Duration,
    /// Routing of models whose configuration says nothing about it.
    pub default_routing: RoutingMode,
}

/// Host telemetry refresh and the thermal governor fed by it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// How often telemetry is read (it may run `nvidia-smi`).
    pub telemetry_interval: Duration,
    /// Fractions of the concurrency limit kept at serious and critical
    /// thermal levels; `None`: the governor is off.
    pub thermal_policy: Option<ThermalPolicy>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            telemetry_interval: Duration::from_secs(10),
            thermal_policy: Some(ThermalPolicy::default()),
        }
    }
}

/// Settings handed to `Runtime::builder()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub max_concurrency: usize,
    /// 0: no budget.
    pub memory_budget_mb: u64,
    pub default_timeout: Duration,
    /// What a load does when the memory budget is full.
    pub memory_policy: MemoryPolicy,
    /// How long an idle compute worker polls for work before it sleeps;
    /// `None`: the runtime's default.
    pub worker_spin: Option<Duration>,
    /// How long a request polls for its reply before it sleeps; `None`: the
    /// runtime's default.
    pub reply_spin: Option<Duration>,
    /// The response cache's budget, shared by the models that turn
    /// `response_cache` on (0: no cache).
    pub response_cache_mb: u64,
    /// Refuse a load when the system's available memory cannot hold the
    /// model's files plus `memory_reserve_mb`.
    pub memory_guard: bool,
    pub memory_reserve_mb: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node: NodeConfig::default(),
            cache_dir: None,
            coreai_python: None,
            host: IpAddr::from([0, 0, 0, 0]),
            http_port: 8000,
            grpc_port: 8001,
            metrics_port: 8002,
            repository: RepositoryConfig {
                poll_interval: Duration::from_secs(15),
                ..RepositoryConfig::default()
            },
            runtime: RuntimeConfig {
                max_concurrency: 64,
                memory_budget_mb: 0,
                default_timeout: Duration::from_secs(30),
                memory_policy: MemoryPolicy::Refuse,
                worker_spin: None,
                reply_spin: None,
                response_cache_mb: 64,
                memory_guard: true,
                memory_reserve_mb: 256,
            },
            shutdown_grace: Duration::from_secs(30),
            log_format: LogFormat::Text,
            limits: Limits::default(),
            auth_token: None,
            tls: None,
            tracing: None,
        }
    }
}

/// `pomme serve` options. Every field is optional: unset ones fall back to
/// the config file, then to defaults.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerArgs {
    /// Config file (TOML); defaults to ./pomme.toml when it exists.
    #[arg(long, env = "POMME_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "POMME_HOST")]
    pub host: Option<String>,
    /// HTTP/REST port (KServe v2).
    #[arg(long, env = "POMME_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// gRPC port (KServe v2).
    #[arg(long, env = "POMME_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Prometheus metrics port.
    #[arg(long, env = "POMME_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Model repository directory (`<repo>/<model>/<version>/model.onnx`).
    #[arg(long, env = "POMME_MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,
    /// none (load all at start), explicit (load via API), poll (watch the repository).
    #[arg(long, env = "POMME_MODEL_CONTROL_MODE")]
    pub model_control_mode: Option<String>,
    /// Model to load at start in explicit mode (repeatable, or comma-separated).
    #[arg(long = "load-model", env = "POMME_LOAD_MODEL", value_delimiter = ',')]
    pub load_model: Vec<String>,
    /// Repository rescan interval in poll mode (`15s`, `500ms`).
    #[arg(long, env = "POMME_POLL_INTERVAL")]
    pub poll_interval: Option<String>,
    /// Most requests admitted at once, across models.
    #[arg(long, env = "POMME_MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,
    /// Memory budget for loaded models in MiB (0: none).
    #[arg(long, env = "POMME_MEMORY_BUDGET_MB")]
    pub memory_budget_mb: Option<u64>,
    /// Response cache budget in MiB for models with response_cache on (default 64; 0: none).
    #[arg(long, env = "POMME_RESPONSE_CACHE_MB")]
    pub response_cache_mb: Option<u64>,
    /// Refuse a load the system's available memory cannot hold (true, false; default true).
    #[arg(long, env = "POMME_MEMORY_GUARD")]
    pub memory_guard: Option<bool>,
    /// Memory in MiB the guard keeps free beyond the model's files (default 256).
    #[arg(long, env = "POMME_MEMORY_RESERVE_MB")]
    pub memory_reserve_mb: Option<u64>,
    /// When a load does not fit the memory budget: refuse it, or evict least
    /// recently used idle models first (refuse, evict).
    #[arg(long, env = "POMME_MEMORY_POLICY")]
    pub memory_policy: Option<String>,
    /// Measured routing for models whose configuration does not say (off, auto).
    #[arg(long, env = "POMME_ROUTING")]
    pub routing: Option<String>,
    /// Deadline for requests that carry none (`30s`).
    #[arg(long, env = "POMME_DEFAULT_TIMEOUT")]
    pub default_timeout: Option<String>,
    /// How long shutdown waits for in-flight requests (`30s`).
    #[arg(long, env = "POMME_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "POMME_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Host telemetry refresh interval (`10s`).
    #[arg(long, env = "POMME_TELEMETRY_INTERVAL")]
    pub telemetry_interval: Option<String>,
    /// Thermal governor: `off`, or the fractions of the concurrency limit kept
    /// at serious and critical thermal levels (`0.5,0.25`).
    #[arg(long, env = "POMME_THERMAL_POLICY")]
    pub thermal_policy: Option<String>,
    /// Microseconds an idle compute worker polls for work before sleeping (0: off).
    #[arg(long, env = "POMME_WORKER_SPIN_US")]
    pub worker_spin_us: Option<u64>,
    /// Microseconds a request polls for its reply before sleeping (0: off).
    #[arg(long, env = "POMME_REPLY_SPIN_US")]
    pub reply_spin_us: Option<u64>,
    /// Cache root (quantized and float16 models, compiled Core ML models).
    #[arg(long, env = "POMME_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Python interpreter of an environment with Apple's coreai-core (Core AI models).
    #[arg(long, env = "POMME_COREAI_PYTHON")]
    pub coreai_python: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, env = "POMME_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Bearer token required on repository control endpoints.
    #[arg(long, env = "POMME_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// TLS certificate chain (PEM) for the HTTP and gRPC ports; needs --tls-key.
    #[arg(long, env = "POMME_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1) matching --tls-cert.
    #[arg(long, env = "POMME_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that clients must present a certificate from (mutual TLS).
    #[arg(long, env = "POMME_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// OTLP/HTTP traces endpoint (e.g. http://127.0.0.1:4318/v1/traces); tracing is off without one.
    #[arg(long, env = "POMME_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled, 0..1 (default 1); a traceparent's sampled flag wins.
    #[arg(long, env = "POMME_TRACE_SAMPLING")]
    pub trace_sampling: Option<f64>,
    /// service.name of exported spans (default pomme).
    #[arg(long, env = "POMME_TRACE_SERVICE_NAME")]
    pub trace_service_name: Option<String>,
}

impl ServerArgs {
    /// Serves `repository` on 127.0.0.1 with ephemeral HTTP, gRPC and metrics
    /// ports (the OS picks; [`crate::RunningServer`] has the addresses) and a
    /// 2 s shutdown grace: for tests and for embedding the server. Other
    /// fields stay unset; override them with struct update syntax.
    pub fn loopback(repository: impl Into<std::path::PathBuf>) -> ServerArgs {
        ServerArgs {
            model_repository: Some(repository.into()),
            http_port: Some(0),
            grpc_port: Some(0),
            metrics_port: Some(0),
            host: Some("127.0.0.1".into()),
            shutdown_grace: Some("2s".into()),
            ..ServerArgs::default()
        }
    }
}

/// The config file's contents; every key optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host: Option<String>,
    pub http_port: Option<u16>,
    pub grpc_port: Option<u16>,
    pub metrics_port: Option<u16>,
    pub model_repository: Option<PathBuf>,
    pub model_control_mode: Option<String>,
    pub load_model: Option<Vec<String>>,
    pub poll_interval: Option<String>,
    pub max_concurrency: Option<usize>,
    pub memory_budget_mb: Option<u64>,
    pub response_cache_mb: Option<u64>,
    pub memory_guard: Option<bool>,
    pub memory_reserve_mb: Option<u64>,
    /// `refuse` or `evict`.
    pub memory_policy: Option<String>,
    /// Default routing mode: `off` or `auto`.
    pub routing: Option<String>,
    pub default_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub log_format: Option<String>,
    pub telemetry_interval: Option<String>,
    /// `off` or `SERIOUS,CRITICAL` fractions.
    pub thermal_policy: Option<String>,
    pub worker_spin_us: Option<u64>,
    pub reply_spin_us: Option<u64>,
    pub cache_dir: Option<PathBuf>,
    pub coreai_python: Option<PathBuf>,
    pub auth_token: Option<String>,
    pub limits: Option<Limits>,
    pub tls: Option<FileTls>,
    pub tracing: Option<FileTracing>,
}

/// The config file's `[tracing]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTracing {
    pub otlp_endpoint: Option<String>,
    pub sampling_ratio: Option<f64>,
    pub service_name: Option<String>,
}

/// The config file's `[tls]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

impl FileConfig {
    /// Parses a `pomme.toml`.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
    }
}

/// Parses a thermal policy: `off`, or `SERIOUS,CRITICAL`, the fractions of
/// the concurrency limit kept at each level, in (0, 1].
pub fn parse_thermal_policy(v: &str) -> Result<Option<ThermalPolicy>, String> {
    if v.trim() == "off" {
        return Ok(None);
    }
    let bad = || format!("must be 'off' or 'SERIOUS,CRITICAL' fractions in (0,1], got '{v}'");
    let (a, b) = v.split_once(',').ok_or_else(bad)?;
    let frac = |s: &str| {
        s.trim()
            .parse::<f64>()
            .ok()
            .filter(|f| *f > 0.0 && *f <= 1.0)
            .ok_or_else(bad)
    };
    Ok(Some(ThermalPolicy {
        serious: frac(a)?,
        critical: frac(b)?,
    }))
}

impl ServerConfig {
    /// Reads the config file named by `args.config` (or `./pomme.toml` if it
    /// exists), lays the arguments over it and validates the result.
    pub fn load(args: &ServerArgs) -> Result<ServerConfig, ConfigError> {
        let path = match &args.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from("pomme.toml")).filter(|p| p.is_file()),
        };
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p).map_err(|e| ConfigError::File {
                    path: p.clone(),
                    message: e.to_string(),
                })?;
                FileConfig::parse(&text, &p)?
            }
            None => FileConfig::default(),
        };
        ServerConfig::merge(file, args)
    }

    /// Lays `args` over `file` over the defaults, then validates.
    pub fn merge(file: FileConfig, args: &ServerArgs) -> Result<ServerConfig, ConfigError> {
        let mut c = ServerConfig::default();
        if let Some(h) = args.host.clone().or(file.host) {
            c.host = h
                .parse()
                .map_err(|_| invalid("host", format!("'{h}' is not an IP address")))?;
        }
        c.http_port = args.http_port.or(file.http_port).unwrap_or(c.http_port);
        c.grpc_port = args.grpc_port.or(file.grpc_port).unwrap_or(c.grpc_port);
        c.metrics_port = args
            .metrics_port
            .or(file.metrics_port)
            .unwrap_or(c.metrics_port);
        c.repository.model_repository = args.model_repository.clone().or(file.model_repository);
        if let Some(m) = args.model_control_mode.clone().or(file.model_control_mode) {
            c.repository.control_mode = m.parse().map_err(|e| invalid("model_control_mode", e))?;
        }
        c.repository.load_model = if args.load_model.is_empty() {
            file.load_model.unwrap_or_default()
        } else {
            args.load_model.clone()
        };
        let dur = |setting, v: Option<String>, default| -> Result<Duration, ConfigError> {
            v.map(|s| parse_duration(&s).map_err(|e| invalid(setting, e)))
                .unwrap_or(Ok(default))
        };
        c.repository.poll_interval = dur(
            "poll_interval",
            args.poll_interval.clone().or(file.poll_interval),
            c.repository.poll_interval,
        )?;
        c.runtime.max_concurrency = args
            .max_concurrency
            .or(file.max_concurrency)
            .unwrap_or(c.runtime.max_concurrency);
        c.runtime.memory_budget_mb = args
            .memory_budget_mb
            .or(file.memory_budget_mb)
            .unwrap_or(c.runtime.memory_budget_mb);
        c.runtime.response_cache_mb = args
            .response_cache_mb
            .or(file.response_cache_mb)
            .unwrap_or(c.runtime.response_cache_mb);
        c.runtime.memory_guard = args
            .memory_guard
            .or(file.memory_guard)
            .unwrap_or(c.runtime.memory_guard);
        c.runtime.memory_reserve_mb = args
            .memory_reserve_mb
            .or(file.memory_reserve_mb)
            .unwrap_or(c.runtime.memory_reserve_mb);
        if let Some(p) = args.memory_policy.clone().or(file.memory_policy) {
            c.runtime.memory_policy = p
                .parse()
                .map_err(|e: pomme_core::Error| invalid("memory_policy", e.message()))?;
        }
        if let Some(r) = args.routing.clone().or(file.routing) {
            c.repository.default_routing = r.parse().map_err(|e| invalid("routing", e))?;
        }
        c.runtime.default_timeout = dur(
            "default_timeout",
            args.default_timeout.clone().or(file.default_timeout),
            c.runtime.default_timeout,
        )?;
        c.shutdown_grace = dur(
            "shutdown_grace",
            args.shutdown_grace.clone().or(file.shutdown_grace),
            c.shutdown_grace,
        )?;
        if let Some(f) = args.log_format.clone().or(file.log_format) {
            c.log_format = f.parse().map_err(|e| invalid("log_format", e))?;
        }
        c.node.telemetry_interval = dur(
            "telemetry_interval",
            args.telemetry_interval.clone().or(file.telemetry_interval),
            c.node.telemetry_interval,
        )?;
        if let Some(p) = args.thermal_policy.clone().or(file.thermal_policy) {
            c.node.thermal_policy =
                parse_thermal_policy(&p).map_err(|e| invalid("thermal_policy", e))?;
        }
        let us = Duration::from_micros;
        c.runtime.worker_spin = args.worker_spin_us.or(file.worker_spin_us).map(us);
        c.runtime.reply_spin = args.reply_spin_us.or(file.reply_spin_us).map(us);
        c.cache_dir = args.cache_dir.clone().or(file.cache_dir);
        c.coreai_python = args.coreai_python.clone().or(file.coreai_python);
        c.auth_token = args.auth_token.clone().or(file.auth_token);
        if let Some(l) = file.limits {
            c.limits = l;
        }
        if let Some(b) = args.max_body_bytes {
            c.limits.max_body_bytes = b;
        }
        // Each path on its own, so a flag can replace the file's key alone.
        let ft = file.tls.unwrap_or_default();
        let tls = (
            args.tls_cert.clone().or(ft.cert),
            args.tls_key.clone().or(ft.key),
            args.tls_client_ca.clone().or(ft.client_ca),
        );
        c.tls = match tls {
            (None, None, None) => None,
            (Some(cert), Some(key), client_ca) => Some(TlsConfig {
                cert,
                key,
                client_ca,
            }),
            (Some(_), None, _) => return Err(invalid("tls.key", "is required with tls.cert")),
            (None, Some(_), _) => return Err(invalid("tls.cert", "is required with tls.key")),
            (None, None, Some(_)) => {
                return Err(invalid(
                    "tls.client_ca",
                    "needs tls.cert and tls.key (the server's own certificate)",
                ));
            }
        };
        let ft = file.tracing.unwrap_or_default();
        let ratio = args.trace_sampling.or(ft.sampling_ratio);
        let service = args.trace_service_name.clone().or(ft.service_name);
        c.tracing = match args.otlp_endpoint.clone().or(ft.otlp_endpoint) {
            Some(otlp_endpoint) => Some(TracingConfig {
                otlp_endpoint,
                sampling_ratio: ratio.unwrap_or(1.0),
                service_name: service.unwrap_or_else(|| "pomme".into()),
            }),
            None if ratio.is_some() || service.is_some() => {
                return Err(invalid(
                    "tracing.otlp_endpoint",
                    "is required with tracing.sampling_ratio or tracing.service_name (tracing is off without an endpoint)",
                ));
            }
            None => None,
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ports = [
            ("http_port", self.http_port),
            ("grpc_port", self.grpc_port),
            ("metrics_port", self.metrics_port),
        ];
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if *pa != 0 && pa == pb {
                    return Err(invalid(a, format!("port {pa} is also {b}")));
                }
            }
        }
        if self.runtime.max_concurrency == 0 {
            return Err(invalid("max_concurrency", "must be at least 1"));
        }
        if self.runtime.memory_policy == MemoryPolicy::EvictLru
            && self.runtime.memory_budget_mb == 0
        {
            return Err(invalid(
                "memory_policy",
                "evict needs a memory budget (memory_budget_mb > 0) to evict against",
            ));
        }
        if self.node.telemetry_interval.is_zero() {
            return Err(invalid("telemetry_interval", "must be more than zero"));
        }
        let max_spin = Duration::from_millis(10);
        for (setting, spin) in [
            ("worker_spin_us", self.runtime.worker_spin),
            ("reply_spin_us", self.runtime.reply_spin),
        ] {
            if spin.is_some_and(|d| d > max_spin) {
                return Err(invalid(setting, "must be at most 10000 (10 ms)"));
            }
        }
        if self.runtime.default_timeout.is_zero() {
            return Err(invalid("default_timeout", "must be more than zero"));
        }
        let r = &self.repository;
        if r.control_mode == ControlMode::Poll && r.poll_interval < Duration::from_millis(100) {
            return Err(invalid("poll_interval", "must be at least 100ms"));
        }
        match &r.model_repository {
            Some(p) if !p.is_dir() => {
                return Err(invalid(
                    "model_repository",
                    format!("{} is not a directory", p.display()),
                ));
            }
            None if r.control_mode != ControlMode::None || !r.load_model.is_empty() => {
                return Err(invalid(
                    "model_repository",
                    "is required with model_control_mode explicit or poll, or with load_model",
                ));
            }
            _ => {}
        }
        if !r.load_model.is_empty() && r.control_mode != ControlMode::Explicit {
            return Err(invalid(
                "load_model",
                "only applies with model_control_mode = explicit (other modes load every model)",
            ));
        }
        for m in &r.load_model {
            // `*` loads every model of the repository, as Triton's --load-model=*.
            if m == "*" {
                continue;
            }
            crate::repository::validate_name(m)
                .map_err(|e| invalid("load_model", e.to_string()))?;
        }
        let l = &self.limits;
        if l.max_body_bytes == 0 || l.max_elements == 0 || l.max_json_depth == 0 {
            return Err(invalid("limits", "sizes must be more than zero"));
        }
        if l.max_json_depth > 120 {
            return Err(invalid("limits.max_json_depth", "must be at most 120"));
        }
        if self.auth_token.as_deref() == Some("") {
            return Err(invalid("auth_token", "is empty"));
        }
        if let Some(t) = &self.tracing {
            let e = &t.otlp_endpoint;
            let rest = e.strip_prefix("http://").ok_or_else(|| {
                invalid(
                    "tracing.otlp_endpoint",
                    format!("must be an http:// URL (OTLP/HTTP, no TLS), got '{e}'"),
                )
            })?;
            if rest.is_empty() || rest.starts_with('/') || e.chars().any(char::is_whitespace) {
                return Err(invalid(
                    "tracing.otlp_endpoint",
                    format!("'{e}' has no host"),
                ));
            }
            if !(0.0..=1.0).contains(&t.sampling_ratio) {
                return Err(invalid(
                    "tracing.sampling_ratio",
                    format!("must be in [0, 1], got {}", t.sampling_ratio),
                ));
            }
            if t.service_name.trim().is_empty() {
                return Err(invalid("tracing.service_name", "is empty"));
            }
        }
        if let Some(tls) = &self.tls {
            // Reads and checks the PEM files now, so a bad one fails before any port is bound.
            crate::tls::Acceptors::load(tls)?;
        }
        Ok(())
    }

    /// The address a port binds to.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.host, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    fn args(flags: &[&str]) -> ServerArgs {
        Cli::try_parse_from(std::iter::once("pomme").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn defaults() {
        let c = ServerConfig::merge(FileConfig::default(), &ServerArgs::default()).unwrap();
        assert_eq!(
            (c.http_port, c.grpc_port, c.metrics_port),
            (8000, 8001, 8002)
        );
        assert_eq!(c.repository.control_mode, ControlMode::None);
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn flags_override_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = FileConfig::parse(
            &format!(
                r#"http_port = 9000
grpc_port = 9001
model_repository = "{}"
model_control_mode = "explicit"
load_model = ["a"]
shutdown_grace = "5s"
[limits]
max_json_depth = 10
"#,
                tmp.path().display()
            ),
            Path::new("pomme.toml"),
        )
        .unwrap();
        let c = ServerConfig::merge(file, &args(&["--http-port", "9100", "--load-model", "b,c"]))
            .unwrap();
        assert_eq!(c.http_port, 9100);
        assert_eq!(c.grpc_port, 9001);
        assert_eq!(c.repository.load_model, vec!["b", "c"]);
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.limits.max_json_depth, 10);
        assert_eq!(c.limits.max_body_bytes, Limits::default().max_body_bytes);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = |flags: &[&str]| {
            ServerConfig::merge(FileConfig::default(), &args(flags))
                .unwrap_err()
                .to_string()
        };
        assert!(e(&["--http-port", "8001"]).starts_with("http_port: port 8001 is also grpc_port"));
        assert!(e(&["--model-control-mode", "auto"]).starts_with("model_control_mode: 'auto'"));
        assert!(e(&["--host", "nowhere"]).starts_with("host:"));
        assert!(e(&["--default-timeout", "5 parsecs"]).starts_with("default_timeout:"));
        assert!(e(&["--max-concurrency", "0"]).starts_with("max_concurrency:"));
        assert!(
            e(&["--model-repository", "/definitely/not/here"]).starts_with("model_repository:")
        );
        assert!(
            e(&["--model-control-mode", "explicit"]).starts_with("model_repository: is required")
        );
        assert!(e(&["--log-format", "xml"]).starts_with("log_format:"));
        let f = FileConfig::parse("htp_port = 1", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            f.starts_with("config file p.toml:") && f.contains("htp_port") && !f.contains('\n'),
            "{f}"
        );
    }

    #[test]
    fn tracing_settings() {
        let off = ServerConfig::merge(FileConfig::default(), &args(&[])).unwrap();
        assert_eq!(off.tracing, None);
        let file = FileConfig::parse(
            "[tracing]\notlp_endpoint = \"http://collector:4318/v1/traces\"\nsampling_ratio = 0.25\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let c = ServerConfig::merge(file.clone(), &args(&[])).unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.otlp_endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.sampling_ratio, 0.25);
        assert_eq!(t.service_name, "pomme");
        // Flags (and so POMME_OTLP_ENDPOINT / POMME_TRACE_SAMPLING) win over the file.
        let c = ServerConfig::merge(
            file,
            &args(&["--trace-sampling", "1", "--trace-service-name", "edge"]),
        )
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!((t.sampling_ratio, t.service_name.as_str()), (1.0, "edge"));
        let e = |flags: &[&str]| {
            ServerConfig::merge(FileConfig::default(), &args(flags))
                .unwrap_err()
                .to_string()
        };
        let url = "http://127.0.0.1:4318/v1/traces";
        assert!(
            e(&["--otlp-endpoint", url, "--trace-sampling", "1.5"])
                .starts_with("tracing.sampling_ratio:")
        );
        assert!(
            e(&["--otlp-endpoint", url, "--trace-sampling=-0.1"])
                .starts_with("tracing.sampling_ratio:")
        );
        assert!(e(&["--otlp-endpoint", "collector:4318"]).starts_with("tracing.otlp_endpoint:"));
        assert!(
            e(&["--otlp-endpoint", "https://c/v1/traces"]).starts_with("tracing.otlp_endpoint:")
        );
        assert!(e(&["--otlp-endpoint", "http:///v1"]).starts_with("tracing.otlp_endpoint:"));
        assert!(e(&["--trace-sampling", "0.5"]).starts_with("tracing.otlp_endpoint: is required"));
        assert!(
            e(&["--otlp-endpoint", url, "--trace-service-name", " "])
                .starts_with("tracing.service_name:")
        );
    }

    #[test]
    fn memory_policy_and_default_routing() {
        let c = ServerConfig::merge(FileConfig::default(), &ServerArgs::default()).unwrap();
        assert_eq!(c.runtime.memory_policy, MemoryPolicy::Refuse);
        assert_eq!(c.repository.default_routing, RoutingMode::Off);
        let file = FileConfig::parse(
            "memory_budget_mb = 512\nmemory_policy = \"evict\"\nrouting = \"auto\"\n",
            Path::new("pomme.toml"),
        )
        .unwrap();
        let c = ServerConfig::merge(file.clone(), &ServerArgs::default()).unwrap();
        assert_eq!(c.runtime.memory_policy, MemoryPolicy::EvictLru);
        assert_eq!(c.repository.default_routing, RoutingMode::Auto);
        // Flags (and so POMME_MEMORY_POLICY / POMME_ROUTING) win over the file.
        let c = ServerConfig::merge(
            file,
            &args(&["--memory-policy", "refuse", "--routing", "off"]),
        )
        .unwrap();
        assert_eq!(c.runtime.memory_policy, MemoryPolicy::Refuse);
        assert_eq!(c.repository.default_routing, RoutingMode::Off);
        let e = |flags: &[&str]| {
            ServerConfig::merge(FileConfig::default(), &args(flags))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(&["--memory-policy", "lifo", "--memory-budget-mb", "1"]),
            "memory_policy: unknown memory policy 'lifo' (expected refuse or evict)"
        );
        assert!(
            e(&["--memory-policy", "evict"])
                .starts_with("memory_policy: evict needs a memory budget"),
        );
        assert_eq!(
            e(&["--routing", "fastest"]),
            "routing: 'fastest' is not one of off, auto"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn node_spin_and_cache_settings() {
        let file = FileConfig::parse(
            "telemetry_interval = \"2s\"\nthermal_policy = \"off\"\nworker_spin_us = 0\ncache_dir = \"/tmp/c\"\ncoreai_python = \"/env/bin/python\"\n",
            Path::new("pomme.toml"),
        )
        .unwrap();
        let c = ServerConfig::merge(file, &args(&["--reply-spin-us", "5"])).unwrap();
        assert_eq!(c.node.telemetry_interval, Duration::from_secs(2));
        assert_eq!(c.node.thermal_policy, None);
        assert_eq!(c.runtime.worker_spin, Some(Duration::ZERO));
        assert_eq!(c.runtime.reply_spin, Some(Duration::from_micros(5)));
        assert_eq!(c.cache_dir.as_deref(), Some(Path::new("/tmp/c")));
        assert_eq!(
            c.coreai_python.as_deref(),
            Some(Path::new("/env/bin/python"))
        );
        // The flag (or POMME_COREAI_PYTHON) wins over the file.
        let file = FileConfig::parse("coreai_python = \"/a\"\n", Path::new("pomme.toml")).unwrap();
        let f = ServerConfig::merge(file, &args(&["--coreai-python", "/b"])).unwrap();
        assert_eq!(f.coreai_python.as_deref(), Some(Path::new("/b")));
        let d = ServerConfig::merge(FileConfig::default(), &args(&[])).unwrap();
        assert_eq!(d.node, NodeConfig::default());
        assert_eq!(d.runtime.worker_spin, None);
        let e = |flags: &[&str]| {
            ServerConfig::merge(FileConfig::default(), &args(flags))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(&["--thermal-policy", "0.5"]),
            "thermal_policy: must be 'off' or 'SERIOUS,CRITICAL' fractions in (0,1], got '0.5'"
        );
        assert_eq!(
            e(&["--telemetry-interval", "0s"]),
            "telemetry_interval: must be more than zero"
        );
        assert_eq!(
            e(&["--worker-spin-us", "20000"]),
            "worker_spin_us: must be at most 10000 (10 ms)"
        );
        assert_eq!(
            parse_thermal_policy("0.6, 0.3").unwrap(),
            Some(ThermalPolicy {
                serious: 0.6,
                critical: 0.3
            })
        );
    }
}
