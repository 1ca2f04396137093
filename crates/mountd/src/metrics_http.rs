//! `hydrate mount --metrics 127.0.0.1:PORT`: the mount's counters over HTTP in the Prometheus text format.
//!
//! The endpoint serves exactly what `hydrate status --metrics` prints (the supervisor's `metrics` answer, which
//! merges the worker's); if the supervisor cannot be asked, it falls back to the worker's own counters, so a
//! scrape never comes back empty while the mount serves. tiny_http does the HTTP; the server runs on one thread
//! of its own, answers `GET /metrics` (and `/`), and nothing else.
//!
//! A worker that replaces another (upgrade, crash recovery) starts while its predecessor still holds the port:
//! binding is retried in the background until the port is free, for as long as the worker lives.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Produces the metrics text for one scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` (retrying while another process holds it) and serves scrapes on a thread for the life of the
/// process. Returns once the first bind attempt was made; a bind failure other than "in use" is an error.
pub fn spawn(addr: SocketAddr, render: Render) -> Result<()> {
    let first = tiny_http::Server::http(addr);
    let server = match first {
        Ok(server) => Some(server),
        Err(e) if is_addr_in_use(&*e) => {
            tracing::info!(%addr, "metrics port busy (a previous worker?); will keep trying");
            None
        }
        Err(e) => {
            return Err(anyhow::anyhow!("{e}"))
                .with_context(|| format!("serving metrics on {addr}"))
        }
    };
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            let server = server.unwrap_or_else(|| loop {
                std::thread::sleep(Duration::from_millis(200));
                if let Ok(server) = tiny_http::Server::http(addr) {
                    tracing::info!(%addr, "serving metrics");
                    break server;
                }
            });
            for request in server.incoming_requests() {
                answer(request, &render);
            }
        })
        .context("starting the metrics thread")?;
    Ok(())
}

fn is_addr_in_use(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
}

fn answer(request: tiny_http::Request, render: &Render) {
    let path = request.url().split('?').next().unwrap_or("");
    let ok_method = matches!(
        request.method(),
        tiny_http::Method::Get | tiny_http::Method::Head
    );
    let response = if ok_method && (path == "/metrics" || path == "/") {
        let header = tiny_http::Header::from_bytes(
            "Content-Type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .expect("static header is valid");
        tiny_http::Response::from_string(render()).with_header(header)
    } else {
        tiny_http::Response::from_string("only GET /metrics is served here\n").with_status_code(404)
    };
    if let Err(error) = request.respond(response) {
        tracing::debug!(%error, "metrics scrape: sending the answer failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_rendered_text_and_only_that() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        spawn(addr, Arc::new(|| "hydrate_x 1\n".to_owned())).unwrap();
        let ok = get(addr, "/metrics");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.ends_with("hydrate_x 1\n"), "{ok}");
        assert!(get(addr, "/other").starts_with("HTTP/1.1 404"));
    }
}
