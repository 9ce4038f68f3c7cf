//! TLS on real sockets: a server with a self-signed certificate made by rcgen
//! (tract backend, `identity_f32`: `y = x`, `x: f32[batch, 16]`) answers
//! HTTPS over HTTP/1.1 and h2 and gRPC over TLS, refuses plaintext on both
//! ports, requires a client certificate when `tls.client_ca` is set, and
//! reports bad TLS settings as one line naming the setting.

#[path = "common/platform.rs"]
mod platform;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use pomme_core::Tensor;
use pomme_runtime::Runtime;
use pomme_server::config::{FileConfig, ServerArgs};
use pomme_server::kserve::{self, Limits};
use pomme_server::proto::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use pomme_server::{RunningServer, ServerConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const INFER: &str = "/v2/models/identity/infer";

/// PEM files in a temp dir: the server's self-signed certificate and key, and
/// a client CA with one client certificate it signed.
struct Pki {
    dir: tempfile::TempDir,
    cert_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client_params = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca).unwrap();
        let pki = Pki {
            cert_pem: cert.pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
            dir,
        };
        pki.write("cert.pem", &pki.cert_pem);
        pki.write("key.pem", &key.serialize_pem());
        pki.write("client_ca.pem", &ca.pem());
        pki
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A rustls client trusting the server's certificate, offering `alpn`,
    /// with the client certificate when `client_cert`.
    fn connector(&self, alpn: &[&[u8]], client_cert: bool) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&self.cert_pem)).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = if client_cert {
            use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
            builder
                .with_client_auth_cert(
                    vec![der(&self.client_cert_pem)],
                    PrivateKeyDer::from_pem_slice(self.client_key_pem.as_bytes()).unwrap(),
                )
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A tonic channel over TLS trusting the server's certificate.
    async fn grpc(
        &self,
        addr: SocketAddr,
        client_cert: bool,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cert_pem))
            .domain_name("localhost");
        if client_cert {
            tls = tls.identity(Identity::from_pem(
                &self.client_cert_pem,
                &self.client_key_pem,
            ));
        }
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }
}

fn der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn fixture() -> PathBuf {
    // Shipped in the repository's models/ folder.
    pomme_test_support::fixtures::repo_models().join("identity_f32.onnx")
}

fn tls_args(pki: &Pki, client_ca: bool) -> ServerArgs {
    ServerArgs {
        tls_cert: Some(pki.path("cert.pem")),
        tls_key: Some(pki.path("key.pem")),
        tls_client_ca: client_ca.then(|| pki.path("client_ca.pem")),
        ..ServerArgs::default()
    }
}

async fn start(repo: &Path, args: ServerArgs) -> RunningServer {
    let v = repo.join("identity/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(fixture(), v.join("model.onnx")).unwrap();
    std::fs::write(
        repo.join("identity/config.toml"),
        "backends = [\"tract\"]\n",
    )
    .unwrap();
    let args = ServerArgs {
        model_repository: Some(repo.to_path_buf()),
        http_port: Some(0),
        grpc_port: Some(0),
        metrics_port: Some(0),
        host: Some("127.0.0.1".into()),
        shutdown_grace: Some("2s".into()),
        ..args
    };
    let config = ServerConfig::merge(FileConfig::default(), &args).unwrap();
    let runtime = Runtime::builder()
        .backends(vec![Arc::new(pomme_tract::TractBackend::new())])
        .build()
        .unwrap();
    let s = pomme_server::start(config, runtime, platform::platform())
        .await
        .unwrap();
    assert!(s.wait_ready(Duration::from_secs(60)).await, "never ready");
    assert!(
        s.shared().model_ready("identity", None),
        "identity did not load"
    );
    s
}

fn infer_body() -> (Vec<f32>, String) {
    let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x}]});
    (x, body.to_string())
}

/// One POST over TLS with hyper (HTTP/1.1 or h2, whichever ALPN chose):
/// the negotiated protocol, the status and the JSON body.
async fn https_post(
    addr: SocketAddr,
    connector: &TlsConnector,
    path: &str,
    body: String,
) -> Result<(Option<Vec<u8>>, u16, Value), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let tcp = TcpStream::connect(addr).await.map_err(|x| e(&x))?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|x| e(&x))?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = hyper_util::rt::TokioIo::new(tls);
    let req = hyper::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|x| e(&x))?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|x| e(&x))?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|x| e(&x))?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|x| e(&x))?
    };
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|x| e(&x))?
        .to_bytes();
    Ok((
        alpn,
        status,
        serde_json::from_slice(&bytes).map_err(|x| e(&x))?,
    ))
}

fn output(v: &Value) -> Vec<f32> {
    v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpc_over_tls() {
    let pki = Pki::new();
    let repo = tempfile::tempdir().unwrap();
    let s = start(repo.path(), tls_args(&pki, false)).await;
    assert!(s.tls);
    let (x, body) = infer_body();

    // HTTP/1.1 and h2, as ALPN chooses.
    for (offer, want) in [
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
        (&[&b"h2"[..], &b"http/1.1"[..]][..], &b"h2"[..]),
    ] {
        let (alpn, status, v) = https_post(
            s.http_addr,
            &pki.connector(offer, false),
            INFER,
            body.clone(),
        )
        .await
        .unwrap();
        assert_eq!(alpn.as_deref(), Some(want));
        assert_eq!(status, 200, "{v}");
        assert_eq!(output(&v), x);
    }

    // gRPC: ServerLive and ModelInfer through tonic's TLS client.
    let mut c = GrpcInferenceServiceClient::new(pki.grpc(s.grpc_addr, false).await.unwrap());
    let live = c.server_live(proto::ServerLiveRequest {}).await.unwrap();
    assert!(live.into_inner().live);
    let t = Tensor::from_vec(vec![1, 16], x.clone()).unwrap();
    let req = kserve::grpc::encode_request("identity", None, &[("x".into(), t)], &[]).unwrap();
    let resp = c.model_infer(req).await.unwrap().into_inner();
    let outs = kserve::grpc::decode_response(resp, &Limits::default()).unwrap();
    assert_eq!(outs[0].1.to_vec::<f32>().unwrap(), x);

    // A client that does not trust the certificate gets no connection.
    let stranger = Pki::new();
    assert!(
        https_post(
            s.http_addr,
            &stranger.connector(&[b"http/1.1"], false),
            INFER,
            body
        )
        .await
        .is_err()
    );

    // Graceful shutdown still drains and returns.
    assert!(s.stop().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_tls_ports_fails() {
    let pki = Pki::new();
    let repo = tempfile::tempdir().unwrap();
    let s = start(repo.path(), tls_args(&pki, false)).await;
    let (_, body) = infer_body();

    // Plain HTTP/1.1: no HTTP answer, just a TLS alert or a closed socket.
    let mut sock = TcpStream::connect(s.http_addr).await.unwrap();
    let req = format!(
        "POST {INFER} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the server kept a plaintext connection open");
    assert!(
        !raw.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );

    // Plain gRPC (h2c).
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
            .await
            .map_err(|e| e.to_string())?;
        c.server_live(proto::ServerLiveRequest {})
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("plaintext gRPC hung");
    assert!(plain.is_err(), "plaintext gRPC succeeded on the TLS port");

    // The metrics port stays plain HTTP.
    let mut m = TcpStream::connect(s.metrics_addr).await.unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    m.read_to_end(&mut raw).await.unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new();
    let repo = tempfile::tempdir().unwrap();
    let s = start(repo.path(), tls_args(&pki, true)).await;
    let (x, body) = infer_body();

    let (_, status, v) = https_post(
        s.http_addr,
        &pki.connector(&[b"http/1.1"], true),
        INFER,
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(output(&v), x);
    // Without one, the handshake (or the first read, in TLS 1.3) fails.
    assert!(
        https_post(
            s.http_addr,
            &pki.connector(&[b"http/1.1"], false),
            INFER,
            body
        )
        .await
        .is_err()
    );

    let mut c = GrpcInferenceServiceClient::new(pki.grpc(s.grpc_addr, true).await.unwrap());
    assert!(
        c.server_live(proto::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    let anonymous = async {
        let mut c = GrpcInferenceServiceClient::new(
            pki.grpc(s.grpc_addr, false)
                .await
                .map_err(|e| e.to_string())?,
        );
        c.server_live(proto::ServerLiveRequest {})
            .await
            .map_err(|e| e.to_string())
    };
    assert!(anonymous.await.is_err());
    s.stop().await.unwrap();
}

#[test]
fn bad_tls_settings_are_one_line() {
    let pki = Pki::new();
    let err = |args: ServerArgs| {
        let e = ServerConfig::merge(FileConfig::default(), &args)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    };
    let cert = pki.path("cert.pem");
    let key = pki.path("key.pem");
    let garbage = pki.write("garbage.pem", "this is not PEM\n");
    let broken = pki.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let other_key = pki.write(
        "other_key.pem",
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    let args = |c: Option<&PathBuf>, k: Option<&PathBuf>| ServerArgs {
        tls_cert: c.cloned(),
        tls_key: k.cloned(),
        ..ServerArgs::default()
    };

    assert_eq!(
        err(args(Some(&cert), None)),
        "tls.key: is required with tls.cert"
    );
    assert_eq!(
        err(args(None, Some(&key))),
        "tls.cert: is required with tls.key"
    );
    let e = err(args(Some(&pki.path("missing.pem")), Some(&key)));
    assert!(
        e.starts_with("tls.cert: cannot read ") && e.contains("missing.pem"),
        "{e}"
    );
    let e = err(args(Some(&garbage), Some(&key)));
    assert_eq!(
        e,
        format!("tls.cert: {} has no PEM certificate", garbage.display())
    );
    let e = err(args(Some(&broken), Some(&key)));
    assert_eq!(
        e,
        format!("tls.cert: {} is not valid PEM", broken.display())
    );
    let e = err(args(Some(&cert), Some(&garbage)));
    assert_eq!(
        e,
        format!("tls.key: {} has no PEM private key", garbage.display())
    );
    // A certificate file is not a key.
    let e = err(args(Some(&cert), Some(&cert)));
    assert!(e.starts_with("tls.key: "), "{e}");
    let e = err(args(Some(&cert), Some(&other_key)));
    assert_eq!(
        e,
        format!(
            "tls.key: {} does not match the certificate in {}",
            other_key.display(),
            cert.display()
        )
    );
    let e = err(ServerArgs {
        tls_client_ca: Some(garbage.clone()),
        ..tls_args(&pki, false)
    });
    assert!(e.starts_with("tls.client_ca: "), "{e}");
    let e = err(ServerArgs {
        tls_client_ca: Some(pki.path("client_ca.pem")),
        ..ServerArgs::default()
    });
    assert!(
        e.starts_with("tls.client_ca: needs tls.cert and tls.key"),
        "{e}"
    );

    // The `[tls]` table, with a flag replacing one of its paths.
    let file = FileConfig::parse(
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            other_key.display()
        ),
        Path::new("pomme.toml"),
    )
    .unwrap();
    let c = ServerConfig::merge(file, &args(None, Some(&key))).unwrap();
    let tls = c.tls.unwrap();
    assert_eq!((tls.cert, tls.key, tls.client_ca), (cert, key, None));
    let bad = FileConfig::parse("[tls]\ncrt = \"x\"\n", Path::new("pomme.toml")).unwrap_err();
    assert!(bad.to_string().contains("crt"), "{bad}");
}
