//! [`Garage`]: a real Garage S3 cluster on loopback (one node, or several with replication), with a bucket and an
//! access key ready.
//!
//! Each node gets its own config (generated TOML), metadata and data directories and ports (S3 API, RPC, admin).
//! The launcher then does what an operator does: connects the nodes, assigns every node a role in its own zone
//! (`garage layout assign`, so replicas land on distinct nodes), applies the layout, creates the bucket, imports
//! the access key and grants it read/write on the bucket.
//!
//! All instances of a test process use the same access key ([`TEST_KEY_ID`], [`TEST_SECRET`]): a store opened by
//! hydrate takes credentials only from the environment, which is per process, so one set of values that is valid
//! on every instance lets parallel tests share one environment ([`Garage::export_credentials`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_port, server_dir, wait_for_port, ServerProcess, TestkitError};

const SERVER: &str = "garage";

/// The S3 region every test instance uses.
pub const REGION: &str = "garage";
/// The access key id imported into every test instance.
pub const TEST_KEY_ID: &str = "GKhydrate0test0access0key0";
/// The secret of [`TEST_KEY_ID`].
pub const TEST_SECRET: &str = "4f1e9c2b7d3a8e6f0b5c1d9a2e7f3b8c6d0a4e1f9b2c7d5a3e8f0b6c1d4a9e2f";

/// One node of a [`Garage`] cluster.
#[derive(Debug)]
pub struct GarageNode {
    process: ServerProcess,
    config: PathBuf,
    /// Address of the node's S3 API.
    pub s3_addr: SocketAddr,
    rpc_addr: SocketAddr,
}

impl GarageNode {
    /// The node's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// A running Garage cluster; dropping it kills every node and deletes its files.
#[derive(Debug)]
pub struct Garage {
    binary: PathBuf,
    nodes: Vec<GarageNode>,
    /// The bucket created for the test.
    pub bucket: String,
    _dir: tempfile::TempDir,
}

impl Garage {
    /// A single node with replication factor 1.
    pub fn start(binary: &Path) -> Result<Garage, TestkitError> {
        Garage::start_cluster(binary, 1, 1)
    }

    /// `nodes` nodes with replication factor `replication`, each node in its own zone.
    pub fn start_cluster(
        binary: &Path,
        nodes: usize,
        replication: usize,
    ) -> Result<Garage, TestkitError> {
        let dir = server_dir("hydrate-garage", SERVER)?;
        let rpc_secret = hex::encode(rand::random::<[u8; 32]>());
        let mut started = Vec::with_capacity(nodes);
        for i in 0..nodes {
            started.push(start_node(binary, dir.path(), i, replication, &rpc_secret)?);
        }
        let mut garage = Garage {
            binary: binary.to_owned(),
            nodes: started,
            bucket: "hydrate".into(),
            _dir: dir,
        };
        garage.configure()?;
        Ok(garage)
    }

    fn configure(&mut self) -> Result<(), TestkitError> {
        // Node ids are generated at first start; `node id -q` prints `<id>@<addr>`.
        let mut ids = Vec::new();
        for i in 0..self.nodes.len() {
            let out = self.cli_retrying(i, &["node", "id", "-q"], Duration::from_secs(30))?;
            let full = out.trim().to_owned();
            let id = full.split('@').next().unwrap_or_default().to_owned();
            ids.push((
                id,
                format!(
                    "{}@{}",
                    full.split('@').next().unwrap_or_default(),
                    self.nodes[i].rpc_addr
                ),
            ));
        }
        for (_, full) in ids.iter().skip(1) {
            self.cli_retrying(0, &["node", "connect", full], Duration::from_secs(30))?;
        }
        for (i, (id, _)) in ids.iter().enumerate() {
            let zone = format!("z{i}");
            self.cli(0, &["layout", "assign", "-z", &zone, "-c", "1G", id])?;
        }
        self.cli(0, &["layout", "apply", "--version", "1"])?;
        // Bucket and key operations need the layout to have propagated to a quorum: retry until they work.
        let timeout = Duration::from_secs(60);
        self.cli_retrying(0, &["bucket", "create", &self.bucket.clone()], timeout)?;
        self.cli_retrying(
            0,
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "hydrate-test",
                TEST_KEY_ID,
                TEST_SECRET,
            ],
            timeout,
        )?;
        let bucket = self.bucket.clone();
        self.cli_retrying(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &bucket,
                "--key",
                TEST_KEY_ID,
            ],
            timeout,
        )?;
        Ok(())
    }

    /// Runs the garage CLI against node `node`; its stdout on success.
    pub fn cli(&self, node: usize, args: &[&str]) -> Result<String, TestkitError> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.nodes[node].config)
            .args(args)
            .output()
            .map_err(|source| TestkitError::Spawn {
                server: SERVER,
                binary: self.binary.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(TestkitError::Command {
                server: SERVER,
                command: format!("garage {}", args.join(" ")),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Garage::cli`], retried until it succeeds or `timeout` passes (the cluster is still converging).
    fn cli_retrying(
        &self,
        node: usize,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String, TestkitError> {
        let start = Instant::now();
        loop {
            match self.cli(node, args) {
                Ok(out) => return Ok(out),
                Err(e) if start.elapsed() > timeout => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[GarageNode] {
        &self.nodes
    }

    /// The S3 endpoint of node `node` (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self, node: usize) -> String {
        format!("http://{}", self.nodes[node].s3_addr)
    }

    /// The hydrate store address of `prefix` in the test bucket, through node `node`'s S3 API.
    pub fn store_addr(&self, node: usize, prefix: &str) -> String {
        self.store_addr_at(&self.endpoint(node), prefix)
    }

    /// Like [`Garage::store_addr`] for another endpoint in front of the cluster (a proxy).
    pub fn store_addr_at(&self, endpoint: &str, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={endpoint}&region={REGION}",
            self.bucket
        )
    }

    /// The environment variables that give an S3 client the test key, as (name, value) pairs.
    pub fn credentials_env() -> [(&'static str, &'static str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", TEST_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", TEST_SECRET),
        ]
    }

    /// Puts the test key into this process's environment, where hydrate (and child processes) find it. The
    /// values are the same for every instance, so concurrent tests do not disturb each other.
    pub fn export_credentials() {
        // Once per process: the environment is written a single time, before any S3 client of the tests reads
        // it (tests call this first), and never changes afterwards.
        static EXPORTED: std::sync::Once = std::sync::Once::new();
        EXPORTED.call_once(|| {
            for (k, v) in Garage::credentials_env() {
                std::env::set_var(k, v);
            }
        });
    }

    /// Kills node `node` with SIGKILL (a crash), by its PID.
    pub fn kill_node(&mut self, node: usize) {
        self.nodes[node].process.kill();
    }
}

fn start_node(
    binary: &Path,
    root: &Path,
    index: usize,
    replication: usize,
    rpc_secret: &str,
) -> Result<GarageNode, TestkitError> {
    let dir = root.join(format!("node{index}"));
    let io = |what: &str, source| TestkitError::Io {
        server: SERVER,
        what: format!("{what} {}", dir.display()),
        source,
    };
    std::fs::create_dir_all(dir.join("meta")).map_err(|e| io("creating", e))?;
    std::fs::create_dir_all(dir.join("data")).map_err(|e| io("creating", e))?;
    let s3_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let rpc_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin_port = free_port();
    let config = format!(
        r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = {replication}
rpc_bind_addr = "{rpc_addr}"
rpc_public_addr = "{rpc_addr}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{s3_addr}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
"#,
        dir = dir.display(),
        admin_token = hex::encode(rand::random::<[u8; 16]>()),
    );
    let config_path = dir.join("garage.toml");
    std::fs::write(&config_path, config).map_err(|e| io("writing config in", e))?;
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(&config_path)
        .arg("server")
        .env("RUST_LOG", "garage=warn");
    let mut process = ServerProcess::spawn(SERVER, command, &dir.join("garage.log"))?;
    wait_for_port(SERVER, &mut process, s3_addr, Duration::from_secs(30))?;
    Ok(GarageNode {
        process,
        config: config_path,
        s3_addr,
        rpc_addr,
    })
}
