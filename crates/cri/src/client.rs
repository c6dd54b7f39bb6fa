//! The CRI v1 client over a unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{self as cri};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

/// A CRI connection: the runtime and image services over one channel.
/// Cheap to clone; the channel reconnects lazily if the runtime restarts.
#[derive(Clone, Debug)]
pub struct Cri {
    socket: PathBuf,
    /// The CRI runtime service (sandboxes, containers).
    pub runtime: RuntimeServiceClient<Channel>,
    /// The CRI image service.
    pub images: ImageServiceClient<Channel>,
}

fn endpoint() -> Endpoint {
    // The URI is ignored by the connector; it only has to parse.
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(120))
}

fn connector(
    socket: PathBuf,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    service_fn(move |_: Uri| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
    })
}

impl Cri {
    /// Connects eagerly: fails if nothing listens on `socket`.
    pub async fn connect(socket: &Path) -> anyhow::Result<Cri> {
        let channel = endpoint()
            .connect_with_connector(connector(socket.to_path_buf()))
            .await
            .with_context(|| format!("connecting to CRI socket {}", socket.display()))?;
        Ok(Self::from_channel(socket, channel))
    }

    /// Connects lazily: the first call opens the socket, and later calls
    /// reconnect after the runtime restarts.
    pub fn connect_lazy(socket: &Path) -> Cri {
        let channel = endpoint().connect_with_connector_lazy(connector(socket.to_path_buf()));
        Self::from_channel(socket, channel)
    }

    fn from_channel(socket: &Path, channel: Channel) -> Cri {
        Cri {
            socket: socket.to_path_buf(),
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20),
            images: ImageServiceClient::new(channel).max_decoding_message_size(16 << 20),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// CRI `Version`: (runtime name, runtime version, CRI API version).
    pub async fn version(&self) -> anyhow::Result<cri::VersionResponse> {
        let resp = self
            .runtime
            .clone()
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
            .context("CRI Version")?;
        Ok(resp.into_inner())
    }

    /// CRI `ImageStatus`: the image if present locally.
    pub async fn image_status(&self, image: &str) -> anyhow::Result<Option<cri::Image>> {
        let resp = self
            .images
            .clone()
            .image_status(cri::ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            })
            .await
            .with_context(|| format!("CRI ImageStatus {image}"))?;
        Ok(resp.into_inner().image)
    }

    /// CRI `PullImage`; returns the image reference (ID) containerd resolved.
    pub async fn pull_image(&self, image: &str) -> anyhow::Result<String> {
        let resp = self
            .images
            .clone()
            .pull_image(cri::PullImageRequest {
                image: Some(image_spec(image)),
                auth: None,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("CRI PullImage {image}"))?;
        Ok(resp.into_inner().image_ref)
    }

    /// CRI `PodSandboxStatus`; `None` if the sandbox does not exist.
    pub async fn sandbox_status(&self, id: &str) -> anyhow::Result<Option<cri::PodSandboxStatus>> {
        match self
            .runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().status),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(anyhow::Error::new(s).context(format!("CRI PodSandboxStatus {id}"))),
        }
    }

    /// CRI `ContainerStatus`; `None` if the container does not exist.
    pub async fn container_status(&self, id: &str) -> anyhow::Result<Option<cri::ContainerStatus>> {
        match self
            .runtime
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().status),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(anyhow::Error::new(s).context(format!("CRI ContainerStatus {id}"))),
        }
    }
}

/// The outcome of [`Cri::exec_sync`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Cri {
    /// CRI `ExecSync`: runs `cmd` in the container and waits at most
    /// `timeout` (whole seconds, at least 1) for it.
    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> anyhow::Result<ExecOutput> {
        let secs = timeout.as_secs().max(1);
        let req = cri::ExecSyncRequest {
            container_id: container_id.into(),
            cmd: cmd.to_vec(),
            timeout: secs as i64,
        };
        let mut rt = self.runtime.clone();
        let call = rt.exec_sync(req);
        let resp = tokio::time::timeout(Duration::from_secs(secs + 2), call)
            .await
            .map_err(|_| anyhow::anyhow!("command {:?} timed out", cmd.join(" ")))?
            .map_err(|s| {
                if s.code() == tonic::Code::DeadlineExceeded || s.message().contains("timeout") {
                    anyhow::anyhow!("command {:?} timed out", cmd.join(" "))
                } else {
                    anyhow::Error::new(s).context("CRI ExecSync")
                }
            })?
            .into_inner();
        Ok(ExecOutput {
            exit_code: resp.exit_code,
            stdout: resp.stdout,
            stderr: resp.stderr,
        })
    }
}

/// A CRI `ImageSpec` naming `image`.
pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

impl Cri {
    /// CRI `Exec`: a one-time URL on the runtime's streaming server that
    /// runs `cmd` in the container once a client connects.
    pub async fn exec_url(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> anyhow::Result<String> {
        let req = cri::ExecRequest {
            container_id: container_id.into(),
            cmd: cmd.to_vec(),
            tty,
            stdin,
            stdout,
            stderr,
        };
        let resp = self.runtime.clone().exec(req).await.context("CRI Exec")?;
        Ok(resp.into_inner().url)
    }

    /// CRI `Attach`: a one-time URL attaching to the container's streams.
    pub async fn attach_url(
        &self,
        container_id: &str,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> anyhow::Result<String> {
        let req = cri::AttachRequest {
            container_id: container_id.into(),
            tty,
            stdin,
            stdout,
            stderr,
        };
        let resp = self
            .runtime
            .clone()
            .attach(req)
            .await
            .context("CRI Attach")?;
        Ok(resp.into_inner().url)
    }

    /// CRI `PortForward`: a one-time URL forwarding to `ports` in the
    /// sandbox's network namespace.
    pub async fn port_forward_url(
        &self,
        sandbox_id: &str,
        ports: &[i32],
    ) -> anyhow::Result<String> {
        let req = cri::PortForwardRequest {
            pod_sandbox_id: sandbox_id.into(),
            port: ports.to_vec(),
        };
        let resp = self
            .runtime
            .clone()
            .port_forward(req)
            .await
            .context("CRI PortForward")?;
        Ok(resp.into_inner().url)
    }

    /// The ready sandbox of the pod with this uid, if any.
    pub async fn ready_sandbox_for_pod(&self, uid: &str) -> anyhow::Result<Option<String>> {
        let mut labels = std::collections::HashMap::new();
        labels.insert("io.kubernetes.pod.uid".to_string(), uid.to_string());
        let req = cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                label_selector: labels,
                ..Default::default()
            }),
        };
        let resp = self
            .runtime
            .clone()
            .list_pod_sandbox(req)
            .await
            .context("CRI ListPodSandbox")?;
        Ok(resp.into_inner().items.into_iter().next().map(|s| s.id))
    }
}
