//! [`FaultProxy`]: a TCP proxy that makes the network between hydrate and a server misbehave on cue.
//!
//! There is no tc netem in the test kernel, so link emulation and fault injection live here, in user space, on a
//! tokio runtime of the proxy's own. Each accepted connection opens one to the upstream; each direction is a
//! delay line: a reader takes up to 64 KiB, reserves its transmission slot on the direction's shared link (the
//! bandwidth cap is per direction and shared by all connections, like a real link), and queues it for delivery
//! at "slot end + latency"; a writer delivers it then. Throughput is therefore bandwidth-limited and latency adds
//! once per direction, as on a long link, instead of being paid per chunk.
//!
//! Faults, all switchable at any time through [`Faults`] (the data path reads them for every chunk):
//! - latency each way and a bandwidth cap (the emulated link);
//! - stalls: while set, nothing is delivered in either direction (connections stay open, bytes wait);
//! - connection resets: with a probability per server→client chunk, the client connection is reset (RST);
//! - truncated bodies: with a probability per server→client chunk, half the chunk is delivered and the
//!   connection closed (FIN) mid-response;
//! - flipped bytes: with a probability per server→client chunk, one bit of one byte is inverted;
//! - HTTP 500s (HTTP shim): with a probability per client request (request heads are tracked, bodies skipped by
//!   Content-Length), the request is not forwarded and the client gets `500 Internal Server Error`;
//! - a fault budget: at most N of the faults above in total, so a test of "occasional faults are retried away"
//!   can bound the faults any one request can meet below the client's retry limit instead of hoping for luck.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Size of the pieces the proxy forwards: small enough to pace smoothly at 1 Gbit/s (0.5 ms each).
const PIECE: usize = 64 * 1024;
/// Pieces queued per direction of a connection: 16 MiB, more than a 1 Gbit/s × 2 × 50 ms link holds.
const QUEUE: usize = 256;
const HTTP_500: &[u8] =
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A probability stored as parts per million, so it can sit in an atomic.
fn ppm(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * 1e6).round() as u64
}

fn chance(ppm: &AtomicU64) -> bool {
    let p = ppm.load(Ordering::Relaxed);
    p > 0 && rand::random_range(0..1_000_000) < p
}

/// A link direction's transmission schedule: when the next byte may start.
#[derive(Debug)]
struct Link {
    next_free: Mutex<Option<Instant>>,
}

impl Link {
    /// Reserves the slot of `n` bytes at `rate` bytes/s; returns when its last byte has been sent.
    fn reserve(&self, n: usize, rate: u64) -> Instant {
        let now = Instant::now();
        if rate == 0 {
            return now;
        }
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let start = next.map_or(now, |t| t.max(now));
        let end = start + Duration::from_secs_f64(n as f64 / rate as f64);
        *next = Some(end);
        end
    }
}

/// The switchable faults and the counters of what was injected; shared by every connection of a proxy.
#[derive(Debug)]
pub struct Faults {
    latency_us: AtomicU64,
    bandwidth: AtomicU64,
    stall: AtomicBool,
    reset_ppm: AtomicU64,
    truncate_ppm: AtomicU64,
    flip_ppm: AtomicU64,
    http500_ppm: AtomicU64,
    /// Faults still allowed (`u64::MAX`: no limit).
    budget: AtomicU64,
    up: Link,
    down: Link,
    stats: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    resets: AtomicU64,
    truncations: AtomicU64,
    flips: AtomicU64,
    http_500s: AtomicU64,
}

/// What a proxy has carried and injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub connections: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub resets: u64,
    pub truncations: u64,
    pub flips: u64,
    pub http_500s: u64,
}

impl Faults {
    fn new() -> Faults {
        Faults {
            latency_us: AtomicU64::new(0),
            bandwidth: AtomicU64::new(0),
            stall: AtomicBool::new(false),
            reset_ppm: AtomicU64::new(0),
            truncate_ppm: AtomicU64::new(0),
            flip_ppm: AtomicU64::new(0),
            http500_ppm: AtomicU64::new(0),
            budget: AtomicU64::new(u64::MAX),
            up: Link {
                next_free: Mutex::new(None),
            },
            down: Link {
                next_free: Mutex::new(None),
            },
            stats: Counters::default(),
        }
    }

    /// One-way delay added in each direction (a round trip costs twice this).
    pub fn set_latency(&self, each_way: Duration) {
        self.latency_us
            .store(each_way.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cap of each direction in bytes per second (`None`: unlimited).
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.bandwidth
            .store(bytes_per_second.unwrap_or(0), Ordering::Relaxed);
    }

    /// While `true`, nothing is delivered in either direction.
    pub fn set_stall(&self, stalled: bool) {
        self.stall.store(stalled, Ordering::Relaxed);
    }

    /// Probability that a server→client piece resets the connection instead of being delivered.
    pub fn set_reset_probability(&self, p: f64) {
        self.reset_ppm.store(ppm(p), Ordering::Relaxed);
    }

    /// Probability that a server→client piece is cut in half and the connection closed after it.
    pub fn set_truncate_probability(&self, p: f64) {
        self.truncate_ppm.store(ppm(p), Ordering::Relaxed);
    }

    /// Probability that a server→client piece has one bit flipped.
    pub fn set_flip_probability(&self, p: f64) {
        self.flip_ppm.store(ppm(p), Ordering::Relaxed);
    }

    /// Probability that a client request is answered `500 Internal Server Error` by the proxy.
    pub fn set_http_500_probability(&self, p: f64) {
        self.http500_ppm.store(ppm(p), Ordering::Relaxed);
    }

    /// Allows at most `n` more injected faults of any kind (`None`: no limit); the probabilities still decide
    /// where they fall.
    pub fn set_fault_budget(&self, n: Option<u64>) {
        self.budget.store(
            n.map_or(u64::MAX, |n| n.min(u64::MAX - 1)),
            Ordering::Relaxed,
        );
    }

    /// Turns every fault off, lifts the budget and removes the link emulation (counters are kept).
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        self.set_bandwidth(None);
        self.set_stall(false);
        self.set_fault_budget(None);
        for p in [
            &self.reset_ppm,
            &self.truncate_ppm,
            &self.flip_ppm,
            &self.http500_ppm,
        ] {
            p.store(0, Ordering::Relaxed);
        }
    }

    /// The counters.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections: l(&c.connections),
            bytes_up: l(&c.bytes_up),
            bytes_down: l(&c.bytes_down),
            resets: l(&c.resets),
            truncations: l(&c.truncations),
            flips: l(&c.flips),
            http_500s: l(&c.http_500s),
        }
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// Whether a fault of the kind with probability `ppm` strikes now, spending one unit of the budget if so.
    fn strikes(&self, ppm: &AtomicU64) -> bool {
        chance(ppm)
            && self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    if b == u64::MAX {
                        Some(b)
                    } else {
                        b.checked_sub(1)
                    }
                })
                .is_ok()
    }
}

/// A running proxy; dropping it stops its runtime and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`, with no fault configured.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults::new());
        runtime.spawn(accept_loop(listener, upstream, faults.clone()));
        Ok(FaultProxy {
            addr,
            faults,
            runtime: Some(runtime),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The fault switches (shared with the data path).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, faults: Arc<Faults>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        faults.stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(client, upstream, faults.clone()));
    }
}

/// How a direction of a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Its reader saw end of file and everything was delivered: half-close and let the other side finish.
    Eof,
    /// Close the whole connection now, with a FIN (truncation, HTTP 500) ...
    Close,
    /// ... or with a RST (reset fault), or because a socket failed.
    Reset,
}

async fn connection(client: TcpStream, upstream: SocketAddr, faults: Arc<Faults>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        set_reset_on_close(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let client = Arc::new(client);
    let server = Arc::new(server);
    let up = pipe(
        client.clone(),
        server.clone(),
        faults.clone(),
        Direction::Up,
    );
    let down = pipe(
        server.clone(),
        client.clone(),
        faults.clone(),
        Direction::Down,
    );
    tokio::pin!(up, down);
    let (first, up_done) = tokio::select! {
        end = &mut up => (end, true),
        end = &mut down => (end, false),
    };
    let end = match first {
        End::Eof if up_done => down.await,
        End::Eof => up.await,
        other => other,
    };
    if end == End::Reset {
        set_reset_on_close(&client);
    }
    // Dropping the pipes and the last Arcs closes both sockets.
}

/// Makes the next close of `stream` send RST instead of FIN.
fn set_reset_on_close(stream: &TcpStream) {
    let linger = nix::sys::socket::sockopt::Linger;
    let _ = nix::sys::socket::setsockopt(stream, linger, &libc_linger_zero());
}

fn libc_linger_zero() -> nix::libc::linger {
    nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server: requests (HTTP shim applies here).
    Up,
    /// Server to client: responses (resets, truncation, flips apply here).
    Down,
}

enum Piece {
    Data(Instant, Vec<u8>),
    /// Deliver what is queued, then end the connection this way.
    End(End),
}

async fn pipe(
    from: Arc<TcpStream>,
    to: Arc<TcpStream>,
    faults: Arc<Faults>,
    dir: Direction,
) -> End {
    let (tx, mut rx) = mpsc::channel::<Piece>(QUEUE);
    let client = if dir == Direction::Up {
        from.clone()
    } else {
        to.clone()
    };
    let reader = async {
        let mut shim = HttpShim::default();
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = match read_some(&from, &mut buf).await {
                Ok(0) => return tx.send(Piece::End(End::Eof)).await.is_ok(),
                Ok(n) => n,
                Err(_) => return tx.send(Piece::End(End::Reset)).await.is_ok(),
            };
            let mut data = buf[..n].to_vec();
            let mut after: Option<End> = None;
            match dir {
                Direction::Up => {
                    if shim.fail_request(&data, &faults) {
                        faults.stats.http_500s.fetch_add(1, Ordering::Relaxed);
                        let _ = write_all(&client, HTTP_500).await;
                        let _ = tx.send(Piece::End(End::Close)).await;
                        return false;
                    }
                }
                Direction::Down => {
                    if faults.strikes(&faults.reset_ppm) {
                        faults.stats.resets.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Piece::End(End::Reset)).await;
                        return false;
                    }
                    if faults.strikes(&faults.truncate_ppm) {
                        faults.stats.truncations.fetch_add(1, Ordering::Relaxed);
                        data.truncate(n / 2);
                        after = Some(End::Close);
                    } else if faults.strikes(&faults.flip_ppm) {
                        faults.stats.flips.fetch_add(1, Ordering::Relaxed);
                        let at = rand::random_range(0..data.len());
                        data[at] ^= 1 << rand::random_range(0..8u32);
                    }
                }
            }
            let link = if dir == Direction::Up {
                &faults.up
            } else {
                &faults.down
            };
            let sent = link.reserve(data.len(), faults.bandwidth.load(Ordering::Relaxed));
            let counter = if dir == Direction::Up {
                &faults.stats.bytes_up
            } else {
                &faults.stats.bytes_down
            };
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            if tx
                .send(Piece::Data(sent + faults.latency(), data))
                .await
                .is_err()
            {
                return false;
            }
            if let Some(end) = after {
                let _ = tx.send(Piece::End(end)).await;
                return false;
            }
        }
    };
    let writer = async {
        while let Some(piece) = rx.recv().await {
            match piece {
                Piece::Data(at, data) => {
                    tokio::time::sleep_until(at).await;
                    while faults.stall.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if write_all(&to, &data).await.is_err() {
                        return End::Reset;
                    }
                }
                Piece::End(End::Eof) => {
                    let _ = nix::sys::socket::shutdown(
                        to.as_raw_fd(),
                        nix::sys::socket::Shutdown::Write,
                    );
                    return End::Eof;
                }
                Piece::End(end) => return end,
            }
        }
        End::Reset
    };
    let (_, end) = tokio::join!(reader, writer);
    end
}

// Both directions of a connection use the same socket (reader of one, writer of the other) through an `Arc`, so
// that a reset can close it at once; tokio offers readiness-based I/O on `&TcpStream` for exactly this.
async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Tracks HTTP/1.1 request boundaries in the client→server stream, to fail whole requests.
#[derive(Debug, Default)]
struct HttpShim {
    /// Bytes of a request head seen so far (only while looking for its end).
    head: Vec<u8>,
    /// Body bytes of the current request still to pass through.
    body_left: u64,
}

impl HttpShim {
    /// Feeds `data`; returns true if a request starting in it was chosen to fail.
    fn fail_request(&mut self, data: &[u8], faults: &Faults) -> bool {
        let mut rest = data;
        while !rest.is_empty() {
            if self.body_left > 0 {
                let skip = (self.body_left as usize).min(rest.len());
                self.body_left -= skip as u64;
                rest = &rest[skip..];
                continue;
            }
            let start_len = self.head.len();
            self.head.extend_from_slice(rest);
            let Some(end) = find(&self.head, b"\r\n\r\n") else {
                return false;
            };
            let head_end = end + 4;
            // A new request head is complete: decide its fate.
            if faults.strikes(&faults.http500_ppm) {
                return true;
            }
            self.body_left = content_length(&self.head[..head_end]);
            let consumed = head_end - start_len;
            rest = &rest[consumed..];
            self.head.clear();
        }
        false
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> u64 {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An upstream that answers each line with a fixed block of bytes.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = stream;
                    let mut buf = [0u8; 1];
                    while s.read_exact(&mut buf).is_ok() {
                        if buf[0] == b'\n' && s.write_all(&[7u8; 100_000]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn ask(proxy: &FaultProxy) -> io::Result<Vec<u8>> {
        let mut s = std::net::TcpStream::connect(proxy.addr())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"\n")?;
        let mut out = vec![0u8; 100_000];
        s.read_exact(&mut out)?;
        Ok(out)
    }

    #[test]
    fn link_emulation_and_faults() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        assert_eq!(ask(&proxy).unwrap(), vec![7u8; 100_000]);

        proxy.faults().set_latency(Duration::from_millis(30));
        let t = std::time::Instant::now();
        ask(&proxy).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(60),
            "{:?}",
            t.elapsed()
        );

        proxy.faults().clear();
        proxy.faults().set_bandwidth(Some(1_000_000));
        let t = std::time::Instant::now();
        ask(&proxy).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "100 kB at 1 MB/s: {:?}",
            t.elapsed()
        );

        proxy.faults().clear();
        proxy.faults().set_flip_probability(1.0);
        assert_ne!(ask(&proxy).unwrap(), vec![7u8; 100_000]);

        proxy.faults().clear();
        proxy.faults().set_reset_probability(1.0);
        assert!(ask(&proxy).is_err());
        proxy.faults().clear();
        proxy.faults().set_truncate_probability(1.0);
        assert!(ask(&proxy).is_err());

        proxy.faults().clear();
        proxy.faults().set_stall(true);
        assert!(ask(&proxy).is_err(), "stalled: read times out");
        proxy.faults().set_stall(false);
        assert_eq!(ask(&proxy).unwrap(), vec![7u8; 100_000], "recovers");

        let s = proxy.faults().stats();
        assert!(s.flips >= 1 && s.resets >= 1 && s.truncations >= 1, "{s:?}");
    }

    #[test]
    fn http_shim_fails_whole_requests() {
        let f = Faults::new();
        let mut shim = HttpShim::default();
        let req = b"PUT /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert!(!shim.fail_request(req, &f));
        assert_eq!((shim.body_left, shim.head.len()), (0, 0));
        f.set_http_500_probability(1.0);
        // A head split over two reads is recognised once complete; body bytes are never mistaken for a head.
        assert!(!shim.fail_request(b"GET /b HTTP/1.1\r\nHost: x\r\n", &f));
        assert!(shim.fail_request(b"\r\n", &f));
        let mut shim = HttpShim::default();
        f.set_http_500_probability(0.0);
        assert!(!shim.fail_request(b"PUT /a HTTP/1.1\r\nContent-Length: 8\r\n\r\nGET", &f));
        f.set_http_500_probability(1.0);
        assert!(!shim.fail_request(b" /x\r\n", &f), "still body");
        assert!(shim.fail_request(b"GET /c HTTP/1.1\r\n\r\n", &f));
    }

    #[test]
    fn the_fault_budget_bounds_injected_faults() {
        let f = Faults::new();
        f.set_http_500_probability(1.0);
        f.set_fault_budget(Some(2));
        let fails = (0..10)
            .filter(|i| {
                let mut shim = HttpShim::default();
                shim.fail_request(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes(), &f)
            })
            .count();
        assert_eq!(fails, 2);
        f.clear();
        f.set_http_500_probability(1.0);
        let mut shim = HttpShim::default();
        assert!(
            shim.fail_request(b"GET / HTTP/1.1\r\n\r\n", &f),
            "clear lifts the budget"
        );
    }
}
