//! TLS for the HTTP and gRPC ports: rustls with the ring provider.
//!
//! [`TlsConfig`] names the PEM files; [`Acceptors::load`] reads and checks
//! them. The server configuration's validation calls it too, so a bad file
//! fails before any port is bound; a [`TlsError`] names the setting and the
//! configuration turns it into its own error, which keeps this module free of
//! any dependency on the rest of the server. [`TlsListener`] turns a bound
//! `TcpListener` into a stream of finished handshakes that axum (as a
//! [`Listener`]) and tonic (through [`TlsListener::into_stream`]) serve as they
//! serve plain TCP, so graceful shutdown works the same way. Handshakes run in
//! tasks of their own: a slow or silent client cannot hold up the others.

use axum::serve::Listener;
use futures::Stream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// PEM files for TLS on the HTTP and gRPC ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to (mutual TLS); `None`
    /// asks for no client certificate.
    pub client_ca: Option<PathBuf>,
}

/// A TLS file that cannot be used, naming the setting (`tls.cert`,
/// `tls.key`, `tls.client_ca`) and what is wrong, on one line.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct TlsError {
    pub setting: &'static str,
    pub message: String,
}

fn invalid(setting: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        setting,
        message: message.into(),
    }
}

/// A connection's handshake must finish within this, or it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One acceptor per protocol: they share the certificate and differ in ALPN.
#[derive(Clone)]
pub struct Acceptors {
    /// ALPN h2 and http/1.1.
    pub http: TlsAcceptor,
    /// ALPN h2 only: gRPC clients insist on it.
    pub grpc: TlsAcceptor,
}

impl Acceptors {
    /// Reads the certificate chain, the key (checked against the
    /// certificate) and the optional client CA bundle.
    pub fn load(c: &TlsConfig) -> Result<Acceptors, TlsError> {
        // Named explicitly rather than installed process-wide, so nothing
        // depends on which rustls providers happen to be compiled in.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs("tls.cert", &c.cert)?;
        let key = PrivateKeyDer::from_pem_file(&c.key)
            .map_err(|e| pem_error("tls.key", &c.key, "private key", e))?;
        check_key(&provider, &certs, key.clone_key(), c)?;

        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls", e.to_string()))?;
        let builder = match &c.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs("tls.client_ca", path)? {
                    roots.add(cert).map_err(|e| {
                        invalid("tls.client_ca", format!("{}: {e}", path.display()))
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| invalid("tls.client_ca", format!("{}: {e}", path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let base = builder
            .with_single_cert(certs, key)
            .map_err(|e| invalid("tls.cert", format!("{}: {e}", c.cert.display())))?;
        let with_alpn = |protocols: &[&[u8]]| {
            let mut config = base.clone();
            config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            TlsAcceptor::from(Arc::new(config))
        };
        Ok(Acceptors {
            http: with_alpn(&[b"h2", b"http/1.1"]),
            grpc: with_alpn(&[b"h2"]),
        })
    }
}

fn read_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(setting, path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(
            setting,
            path,
            "certificate",
            pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

fn pem_error(setting: &'static str, path: &Path, what: &str, e: pem::Error) -> TlsError {
    let path = path.display();
    invalid(
        setting,
        match e {
            pem::Error::Io(e) => format!("cannot read {path}: {e}"),
            pem::Error::NoItemsFound => format!("{path} has no PEM {what}"),
            // The other variants quote raw bytes; the file name says enough.
            _ => format!("{path} is not valid PEM"),
        },
    )
}

/// Tells a key that does not parse (`tls.key`) from a certificate that does
/// not parse (`tls.cert`) from a pair that does not belong together.
fn check_key(
    provider: &CryptoProvider,
    certs: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
    c: &TlsConfig,
) -> Result<(), TlsError> {
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid("tls.key", format!("{}: {e}", c.key.display())))?;
    match rustls::sign::CertifiedKey::new(certs.to_vec(), signing).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(invalid(
                "tls.key",
                format!(
                    "{} does not match the certificate in {}",
                    c.key.display(),
                    c.cert.display()
                ),
            ))
        }
        Err(e) => Err(invalid("tls.cert", format!("{}: {e}", c.cert.display()))),
    }
}

/// A TCP listener whose connections come out with the TLS handshake done.
/// Accepting stops (and the port closes) when this is dropped.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(mut listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // axum's accept retries transient errors (and backs off on EMFILE).
                let (tcp, peer) = tokio::select! {
                    accepted = Listener::accept(&mut listener) => accepted,
                    () = tx.closed() => return,
                };
                // rustls writes whole records; Nagle would only hold back small
                // ones (h2 WINDOW_UPDATE, PING) behind an unacknowledged segment.
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }

    /// The connections as the stream tonic's `serve_with_incoming` takes.
    pub fn into_stream(self) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
        futures::stream::unfold(self.rx, |mut rx| async move {
            rx.recv().await.map(|(tls, _)| (Ok(tls), rx))
        })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // Only if the accept task died; there is nothing more to accept.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
