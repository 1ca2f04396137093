//! [`Nginx`]: nginx on a free loopback port, serving a directory (an HTTP store) or proxying to an upstream (an
//! S3 server, to study keep-alive behaviour with nginx in front).
//!
//! The instance runs in the foreground without a master process (`daemon off; master_process off;`): one
//! process whose PID we own and kill on drop. It writes its own config, pid file, logs and temp directories in a
//! temporary directory; the system's nginx configuration and service are never touched. Running as root, the
//! worker also runs as root so it can read test directories created with mode 0700.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{free_port, server_dir, wait_for_port, ServerProcess, TestkitError};

const SERVER: &str = "nginx";

/// What the server does with requests.
#[derive(Debug, Clone)]
pub enum NginxMode {
    /// Serve the files under this directory (GET, HEAD and Range).
    Directory(PathBuf),
    /// Forward every request to one of these `http://ADDR`s (round robin) over keep-alive connections,
    /// preserving the Host header (so S3 signatures made for the proxy's address stay valid). A request that
    /// fails to connect, or to get an answer, is passed to the next upstream: a load balancer in front of a
    /// cluster, whose clients then survive the loss of any one node.
    ReverseProxy(Vec<SocketAddr>),
}

/// A running nginx; dropping it kills the process and removes its files.
#[derive(Debug)]
pub struct Nginx {
    process: ServerProcess,
    /// The address it listens on.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx in `mode`.
    pub fn start(binary: &Path, mode: NginxMode) -> Result<Nginx, TestkitError> {
        let dir = server_dir("hydrate-nginx", SERVER)?;
        let d = dir.path();
        for sub in ["tmp", "logs"] {
            std::fs::create_dir_all(d.join(sub)).map_err(|source| TestkitError::Io {
                server: SERVER,
                what: format!("creating {}", d.join(sub).display()),
                source,
            })?;
        }
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let user = if nix::unistd::geteuid().is_root() {
            "user root root;"
        } else {
            ""
        };
        let location = match &mode {
            NginxMode::Directory(root) => {
                format!("root {};\n        location / {{ }}", root.display())
            }
            NginxMode::ReverseProxy(upstreams) => format!(
                "location / {{
            proxy_pass http://upstream_server;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502 http_503 http_504;
        }}
    }}
    upstream upstream_server {{
        {servers}
        keepalive 64;",
                servers = upstreams
                    .iter()
                    .map(|u| format!("server {u} max_fails=1 fail_timeout=30s;"))
                    .collect::<String>()
            ),
        };
        let t = d.join("tmp");
        let config = format!(
            "{user}
daemon off;
master_process off;
worker_processes 1;
pid {pid};
error_log {logs}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush off;
    tcp_nodelay on;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    default_type application/octet-stream;
    server {{
        listen {addr};
        {location}
    }}
}}
",
            pid = d.join("nginx.pid").display(),
            logs = d.join("logs").display(),
            t = t.display(),
        );
        let conf = d.join("nginx.conf");
        std::fs::write(&conf, config).map_err(|source| TestkitError::Io {
            server: SERVER,
            what: format!("writing {}", conf.display()),
            source,
        })?;
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("logs/error.log"));
        let mut process = ServerProcess::spawn(SERVER, command, &d.join("logs/stdout.log"))?;
        wait_for_port(SERVER, &mut process, addr, Duration::from_secs(10))?;
        Ok(Nginx {
            process,
            addr,
            _dir: dir,
        })
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The PID of the nginx process.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}
