//! kobune's container runtime layer: a private, supervised containerd
//! ([`containerd`]), a CRI v1 client ([`client`]), built-in images that need
//! no registry ([`images`], built by [`oci`]), and the pod lifecycle the
//! node agent drives over CRI ([`pod`]).
//!
//! ```no_run
//! # async fn demo(pod: serde_json::Value) -> anyhow::Result<()> {
//! use kobune_cri::{containerd::{Containerd, CniConfig}, images, pod};
//! let rt = Containerd::start("/var/lib/kobune/containerd".as_ref(), CniConfig::default()).await?;
//! images::import_builtin_images(rt.socket()).await?;
//! let cri = rt.cri();
//! let running = pod::run_pod(&cri, &pod, "/var/log/pods".as_ref()).await?;
//! let status = pod::pod_status(&cri, &running).await?;
//! pod::stop_pod(&cri, &running, 30).await?;
//! # let _ = status; Ok(()) }
//! ```

pub mod client;
pub mod containerd;
pub mod images;
pub mod oci;
pub mod pod;

pub use client::{Cri, ExecOutput};
pub use containerd::{CniConfig, Containerd};
pub use pod::{
    pod_status, restart_container, run_pod, stop_pod, ContainerRuntimeStatus, ContainerState,
    PodRuntimeStatus, RunningContainer, RunningPod,
};
