//! A client of the Kubernetes CRI over gRPC on containerd's socket, as kubelet speaks it
//! (Debian has no crictl): the k8s-cri crate's types, and a connection over a Unix socket.
//! Included by the CRI test (tests/containerd.rs) and benchmark (examples/cri-bench.rs).

use std::path::Path;

pub use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

pub async fn connect(socket: &Path) -> RuntimeServiceClient<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:0")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let s = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .expect("connect to containerd's CRI");
    RuntimeServiceClient::new(channel)
}

/// A pod as kubelet asks for one without host namespaces: the pod's own network (CNI's),
/// IPC and UTS, each container's own PIDs.
pub fn pod_config(name: &str, uid: &str, hostname: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: hostname.into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of `image` running `sh -c script`, its memory limited to 256 MiB, in the
/// pod's namespaces as kubelet puts one (no shareProcessNamespace).
pub fn container_config(name: &str, image: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: 256 << 20,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
