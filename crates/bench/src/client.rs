//! A minimal HTTPS (HTTP/2 over TLS) client for the kobune API: one TCP+TLS
//! connection per `Conn`, requests multiplexed as HTTP/2 streams.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Everything needed to open authenticated connections to one server.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub token: Arc<str>,
    tls: TlsConnector,
}

impl Target {
    /// Reads `DIR/tls/ca.crt` and `DIR/tls/token`.
    pub fn from_data_dir(dir: &Path, addr: SocketAddr) -> Result<Self> {
        let ca = std::fs::read(dir.join("tls/ca.crt")).context("reading tls/ca.crt")?;
        let token = std::fs::read_to_string(dir.join("tls/token")).context("reading tls/token")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.context("parsing CA")?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Target {
            addr,
            token: token.trim().into(),
            tls: TlsConnector::from(Arc::new(cfg)),
        })
    }

    /// Opens a new TLS connection and performs the HTTP/2 handshake.
    pub async fn connect(&self) -> Result<Conn> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let tls = self.tls.connect(name, tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("server did not negotiate h2");
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(8 << 20)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            target: self.clone(),
        })
    }
}

#[derive(Clone)]
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    target: Target,
}

impl Conn {
    fn request(&self, method: &str, path: &str, body: Bytes) -> Result<Request<Full<Bytes>>> {
        self.request_typed(method, path, body, "application/json")
    }

    fn request_typed(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("https://{}{}", self.target.addr, path))
            .header("authorization", format!("Bearer {}", self.target.token))
            .header("accept", "application/json");
        if !body.is_empty() {
            b = b.header("content-type", content_type);
        }
        Ok(b.body(Full::new(body))?)
    }

    /// Sends a request and returns the response with its headers only.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>> {
        let req = self.request(method, path, body)?;
        self.sender.ready().await?;
        Ok(self.sender.send_request(req).await?)
    }

    /// Sends a request and reads the whole body; non-2xx is an error.
    pub async fn call(&mut self, method: &str, path: &str, body: Bytes) -> Result<Bytes> {
        self.call_with_type(method, path, body, "application/json")
            .await
    }

    /// As [`Conn::call`] with the given request content type (e.g. a patch type).
    pub async fn call_with_type(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Bytes> {
        let req = self.request_typed(method, path, body, content_type)?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(anyhow!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
        }
        Ok(body)
    }
}
