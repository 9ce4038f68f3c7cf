//! The load generator's connections: one HTTP/1.1 keep-alive connection
//! (hyper's connection API) or one HTTP/2 connection driven by its owning
//! task (h2 directly) per simulated client, each sending the prepared request
//! and classifying the answer. Requests are encoded by `pomme_kserve` before
//! the run; nothing here builds a message.

use super::{Outcome, Prepared, Target, brief, classify_grpc, classify_http};
use crate::cli::usage;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use pomme_kserve::HEADER_CONTENT_LENGTH;
use pomme_kserve::grpc::MODEL_INFER_PATH;
use tokio::net::TcpStream;

/// One HTTP/1.1 keep-alive connection.
pub(super) struct HttpConn {
    pub(super) sender: http1::SendRequest<Full<Bytes>>,
}

impl HttpConn {
    pub(super) async fn connect(authority: &str) -> Result<HttpConn> {
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        // Requests are small and latency is what is measured: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {authority}"))?;
        tokio::spawn(async move {
            // The connection ends when its sender is dropped or the server closes it.
            let _ = conn.await;
        });
        Ok(HttpConn { sender })
    }
}

pub(super) async fn grpc_channel(endpoint: &str) -> Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| usage(format!("bad gRPC endpoint '{endpoint}': {e}")))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

/// One HTTP/2 connection for unary gRPC calls, driven by the client task
/// that owns it (h2 directly, no connection task and no tonic channel).
///
/// tonic's `Channel` puts a buffer task and hyper's connection task between
/// the caller and the socket, and hyper writes a request's HEADERS and DATA
/// frames in two `writev`s (the body waits for stream capacity, which the
/// connection task assigns after sending the headers). On a 2-core machine
/// shared with the server those hops, thread wake-ups and the server's second
/// read cost more than the server's own work per tiny request. Here the
/// request is queued whole (HEADERS, then DATA with END_STREAM) and the owning
/// task polls the connection itself, so one request is one write and the
/// answer one read, on whichever thread runs the task.
pub(super) struct GrpcConn {
    send: h2::client::SendRequest<Bytes>,
    conn: h2::client::Connection<TcpStream, Bytes>,
}

/// The connection ended (or failed) while a call waited on it.
enum Driven<T> {
    Done(T),
    Closed(String),
}

impl GrpcConn {
    async fn connect(endpoint: &str) -> Result<GrpcConn> {
        let authority = endpoint.trim_start_matches("http://");
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))?;
        let _ = stream.set_nodelay(true);
        // hyper's client windows (tonic's defaults), so large tensors are not
        // held back by HTTP/2's 64 KiB default.
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(2 << 20)
            .initial_connection_window_size(5 << 20)
            .handshake(stream)
            .await
            .with_context(|| format!("HTTP/2 handshake with {endpoint}"))?;
        Ok(GrpcConn { send, conn })
    }

    /// Polls `fut` and, while it is pending, the connection (which writes
    /// what `fut` queued and reads what answers it).
    ///
    /// Only the connection's progress can complete `fut`, and the connection
    /// is polled here, so `fut` is polled with a no-op waker: h2 wakes a
    /// stream's waker when its answer arrives, during the connection poll of
    /// this very task, and a task woken while it runs is re-queued (waking an
    /// idle runtime thread for nothing on every call).
    async fn drive<F: std::future::Future>(&mut self, fut: F) -> Driven<F::Output> {
        use std::task::{Context, Poll, Waker};
        let mut fut = std::pin::pin!(fut);
        let conn = &mut self.conn;
        std::future::poll_fn(|cx| {
            let mut noop = Context::from_waker(Waker::noop());
            if let Poll::Ready(v) = fut.as_mut().poll(&mut noop) {
                return Poll::Ready(Driven::Done(v));
            }
            match std::pin::Pin::new(&mut *conn).poll(cx) {
                Poll::Pending => match fut.as_mut().poll(&mut noop) {
                    Poll::Ready(v) => Poll::Ready(Driven::Done(v)),
                    Poll::Pending => Poll::Pending,
                },
                Poll::Ready(Ok(())) => {
                    Poll::Ready(Driven::Closed("the server closed the connection".into()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Driven::Closed(format!("connection: {e}"))),
            }
        })
        .await
    }

    /// Polls the connection once with a no-op waker.
    ///
    /// h2 wakes the connection's last waker when a request is queued or a
    /// finished stream's handles are dropped; that waker is this very task,
    /// and a task woken while it runs is re-queued, which wakes an idle runtime
    /// thread for nothing on every call. After this poll those events wake
    /// nobody; `drive` polls with the real waker again before any wait
    /// (socket readiness seen in between is kept by tokio, not lost).
    fn quiesce(&mut self) -> std::result::Result<(), String> {
        let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut self.conn).poll(&mut noop) {
            std::task::Poll::Pending => Ok(()),
            std::task::Poll::Ready(Ok(())) => Err("the server closed the connection".into()),
            std::task::Poll::Ready(Err(e)) => Err(format!("connection: {e}")),
        }
    }

    /// One unary call: `uri` and the framed message `body`. `Err` means the
    /// connection is unusable.
    async fn unary(&mut self, uri: &str, body: &Bytes) -> std::result::Result<Outcome, String> {
        let mut send = self.send.clone();
        match self
            .drive(std::future::poll_fn(|cx| send.poll_ready(cx)))
            .await
        {
            Driven::Done(Ok(())) => {}
            Driven::Done(Err(e)) => return Err(format!("HTTP/2: {e}")),
            Driven::Closed(e) => return Err(e),
        }
        self.quiesce()?;
        let req = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/grpc")
            .header(hyper::header::TE, "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let (resp, mut stream) = send
            .send_request(req, false)
            .map_err(|e| format!("HTTP/2: {e}"))?;
        stream
            .send_data(body.clone(), true)
            .map_err(|e| format!("HTTP/2: {e}"))?;
        let resp = match self.drive(resp).await {
            Driven::Done(Ok(r)) => r,
            Driven::Done(Err(e)) => return Ok(Outcome::Error(format!("HTTP/2 stream: {e}"))),
            Driven::Closed(e) => return Err(e),
        };
        let (head, mut recv) = resp.into_parts();
        if head.status != hyper::StatusCode::OK {
            return Ok(Outcome::Error(format!("HTTP {}", head.status.as_u16())));
        }
        // A trailers-only answer (how errors come) carries grpc-status in its headers.
        let mut status = grpc_status(&head.headers);
        while !recv.is_end_stream() {
            match self.drive(recv.data()).await {
                Driven::Done(Some(Ok(chunk))) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                }
                Driven::Done(None) => break,
                Driven::Done(Some(Err(e))) => {
                    return Ok(Outcome::Error(format!("reading the answer: {e}")));
                }
                Driven::Closed(e) => return Err(e),
            }
        }
        if status.is_none() {
            match self.drive(recv.trailers()).await {
                Driven::Done(Ok(Some(t))) => status = grpc_status(&t),
                Driven::Done(Ok(None)) => {}
                Driven::Done(Err(e)) => {
                    return Ok(Outcome::Error(format!("reading the trailers: {e}")));
                }
                Driven::Closed(e) => return Err(e),
            }
        }
        // Dropping the finished stream's handles wakes the connection too.
        self.quiesce()?;
        drop((recv, stream));
        Ok(match status {
            None => Outcome::Error("the answer has no grpc-status".into()),
            Some((code, message)) => match classify_grpc(code) {
                Outcome::Error(c) => Outcome::Error(format!("{c}: {}", brief(&message))),
                o => o,
            },
        })
    }
}

/// `grpc-status` and the (percent-decoded) `grpc-message` from headers or trailers.
fn grpc_status(h: &hyper::HeaderMap) -> Option<(tonic::Code, String)> {
    tonic::Status::from_header_map(h).map(|s| (s.code(), s.message().to_string()))
}

/// One simulated client: a connection and the request it repeats.
pub(super) enum Client {
    Http {
        authority: String,
        conn: Option<HttpConn>,
    },
    Grpc {
        endpoint: String,
        /// `endpoint` + the ModelInfer path.
        uri: String,
        conn: Option<Box<GrpcConn>>,
    },
}

impl Client {
    pub(super) async fn connect(target: &Target) -> Result<Client> {
        Ok(match target {
            Target::Http { authority } => Client::Http {
                authority: authority.clone(),
                conn: Some(HttpConn::connect(authority).await?),
            },
            Target::Grpc { endpoint } => Client::Grpc {
                endpoint: endpoint.clone(),
                uri: format!("{endpoint}{MODEL_INFER_PATH}"),
                conn: Some(Box::new(GrpcConn::connect(endpoint).await?)),
            },
        })
    }

    /// Drops the connection of a request abandoned half-way (HTTP/1.1 cannot
    /// reuse it; the gRPC connection may hold the abandoned stream's state).
    pub(super) fn abandon(&mut self) {
        match self {
            Client::Http { conn, .. } => *conn = None,
            Client::Grpc { conn, .. } => *conn = None,
        }
    }

    pub(super) async fn call(&mut self, p: &Prepared) -> Outcome {
        match (self, p) {
            (
                Client::Http { authority, conn },
                Prepared::Http {
                    path,
                    body,
                    header_len,
                },
            ) => {
                // A connection the server closed is replaced; the request that
                // found it closed counts as an error.
                let c = match conn {
                    Some(c) if !c.sender.is_closed() => c,
                    _ => match HttpConn::connect(authority).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => return Outcome::Error(format!("{e:#}")),
                    },
                };
                if let Err(e) = c.sender.ready().await {
                    *conn = None;
                    return Outcome::Error(format!("connection: {e}"));
                }
                let mut req = hyper::Request::post(path.as_str())
                    .header(hyper::header::HOST, authority.as_str())
                    .header(hyper::header::CONTENT_LENGTH, body.len());
                req = match header_len {
                    Some(n) => req
                        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                        .header(HEADER_CONTENT_LENGTH, *n),
                    None => req.header(hyper::header::CONTENT_TYPE, "application/json"),
                };
                let req = match req.body(Full::new(body.clone())) {
                    Ok(r) => r,
                    Err(e) => return Outcome::Error(e.to_string()),
                };
                match c.sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        // The body is read to the end so the connection can be reused.
                        let body = resp.into_body().collect().await;
                        match (classify_http(status), body) {
                            (_, Err(e)) => {
                                *conn = None;
                                Outcome::Error(format!("reading the answer: {e}"))
                            }
                            (Outcome::Error(s), Ok(b)) => Outcome::Error(format!(
                                "{s}: {}",
                                brief(&String::from_utf8_lossy(&b.to_bytes()))
                            )),
                            (o, Ok(_)) => o,
                        }
                    }
                    Err(e) => {
                        *conn = None;
                        Outcome::Error(format!("request: {e}"))
                    }
                }
            }
            (
                Client::Grpc {
                    endpoint,
                    uri,
                    conn,
                },
                Prepared::Grpc { body },
            ) => {
                // A broken connection is replaced; the request that found it
                // broken counts as an error.
                let c = match conn {
                    Some(c) => c,
                    None => match GrpcConn::connect(endpoint).await {
                        Ok(c) => conn.insert(Box::new(c)),
                        Err(e) => return Outcome::Error(format!("{e:#}")),
                    },
                };
                match c.unary(uri, body).await {
                    Ok(o) => o,
                    Err(e) => {
                        *conn = None;
                        Outcome::Error(e)
                    }
                }
            }
            _ => Outcome::Error("request prepared for another protocol".into()),
        }
    }
}
