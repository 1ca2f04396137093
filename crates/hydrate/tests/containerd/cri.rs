//! The kubelet's side of the CRI, as far as the tests need it: pull an image, run a pod (host network: no CNI)
//! with one container to completion, and read what it printed from its CRI log file.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    logs: PathBuf,
}

/// Host network, pid and ipc namespaces of the pod: the sandbox needs no CNI plugin.
fn host_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..NamespaceOption::default()
    }
}

impl Cri {
    /// Connects to the CRI plugin on `socket` (waiting up to 30 s for it to serve); pod logs go under `logs`.
    pub fn connect(socket: &Path, logs: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        tokio::net::UnixStream::connect(path.clone())
                    })),
            )
            .expect("connecting to containerd's CRI socket");
        let mut cri = Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            logs: logs.to_path_buf(),
        };
        let started = Instant::now();
        loop {
            let version = cri.rt.block_on(cri.runtime.version(VersionRequest {
                version: "v1".into(),
            }));
            match version {
                Ok(_) => break,
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    panic!("the CRI plugin does not answer: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        cri
    }

    /// PullImage; the image reference containerd stored (`Err`: the CRI error's message).
    pub fn pull(&mut self, image: &str) -> Result<String, String> {
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..ImageSpec::default()
            }),
            ..PullImageRequest::default()
        };
        self.rt
            .block_on(self.images.pull_image(request))
            .map(|r| r.into_inner().image_ref)
            .map_err(|status| status.message().to_owned())
    }

    pub fn remove_image(&mut self, image: &str) {
        let request = RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..ImageSpec::default()
            }),
        };
        self.rt
            .block_on(self.images.remove_image(request))
            .unwrap_or_else(|e| panic!("RemoveImage {image}: {e}"));
    }

    /// Runs `image` as the one container of a new pod `name` until it exits; what it printed (stdout and
    /// stderr, as the CRI log file holds them). The pod is stopped and removed afterwards. `Err`: which call
    /// failed and why.
    pub fn run_pod(&mut self, name: &str, image: &str) -> Result<String, String> {
        let log_dir = self.logs.join(name);
        std::fs::create_dir_all(&log_dir).unwrap();
        let pod_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "hydrate-test".into(),
                attempt: 0,
            }),
            log_directory: log_dir.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_namespaces()),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let pod = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: String::new(),
            }))
            .map_err(|e| format!("RunPodSandbox {name}: {}", e.message()))?
            .into_inner()
            .pod_sandbox_id;
        let container_config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..ImageSpec::default()
            }),
            log_path: "app.log".into(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_namespaces()),
                    ..LinuxContainerSecurityContext::default()
                }),
                ..LinuxContainerConfig::default()
            }),
            ..ContainerConfig::default()
        };
        let container = self
            .rt
            .block_on(self.runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config),
                sandbox_config: Some(pod_config),
            }))
            .map_err(|e| format!("CreateContainer in {name}: {}", e.message()))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(self.runtime.start_container(StartContainerRequest {
                container_id: container.clone(),
            }))
            .map_err(|e| format!("StartContainer in {name}: {}", e.message()))?;
        let started = Instant::now();
        let exit_code = loop {
            let status = self
                .rt
                .block_on(self.runtime.container_status(ContainerStatusRequest {
                    container_id: container.clone(),
                    verbose: false,
                }))
                .map_err(|e| format!("ContainerStatus in {name}: {}", e.message()))?
                .into_inner()
                .status
                .expect("a container status");
            if status.state == ContainerState::ContainerExited as i32 {
                break status.exit_code;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("the container of {name} did not exit within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let output = read_cri_log(&log_dir.join("app.log"));
        if exit_code != 0 {
            return Err(format!("pod {name} exited {exit_code}: {output}"));
        }
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }))
            .map_err(|e| format!("StopPodSandbox {name}: {}", e.message()))?;
        self.rt
            .block_on(self.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            }))
            .map_err(|e| format!("RemovePodSandbox {name}: {}", e.message()))?;
        Ok(output)
    }
}

/// The text of a CRI log file: each line is `TIMESTAMP STREAM TAG TEXT`, TAG `P` for a partial line continued
/// by the next record, `F` for a full one.
fn read_cri_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading the container log {}: {e}", path.display()));
    let mut out = String::new();
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        let (_time, _stream, tag) = (fields.next(), fields.next(), fields.next());
        out += fields.next().unwrap_or("");
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}
