//! A fault-injecting TCP proxy with toxiproxy-style toxics (RELIABILITY.md, "Toxiproxy-style
//! toxics"): latency with jitter, bandwidth, slicing, truncation, reset, blackhole, each per
//! direction (`Faults::direction`; truncation has a limit per direction), and cutting live
//! connections. Faults change while it runs and apply to the next chunk read on every connection;
//! `stats()` proves a fault fired (`Stats::up` / `Stats::down` count it per direction). Dropping
//! the proxy aborts every task, which closes every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::sleep;

/// Which way a fault applies: client→server (`Up`, e.g. writer→mirror), server→client (`Down`,
/// e.g. the mirror's answers), or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    Both,
    Up,
    Down,
}

impl Direction {
    fn covers(self, up: bool) -> bool {
        match self {
            Direction::Both => true,
            Direction::Up => up,
            Direction::Down => !up,
        }
    }
}

/// The faults to inject; `Faults::default()` is a clean pipe.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Which way latency, bandwidth, slice, blackhole and reset-on-open-connections apply
    /// (truncation has its own limit per direction).
    pub direction: Direction,
    /// Added before forwarding each chunk; plus a random 0..=`jitter`.
    pub latency: Duration,
    pub jitter: Duration,
    /// Bytes per second, per direction.
    pub bandwidth: Option<u64>,
    /// Forward in pieces of at most N bytes, with a tiny delay between them.
    pub slice: Option<usize>,
    /// After N bytes client→server on a connection, close it.
    pub truncate_after: Option<u64>,
    /// After N bytes server→client on a connection, close it.
    pub truncate_down_after: Option<u64>,
    /// Accept, then immediately close (RST) new connections; on an open connection, RST both
    /// sides at the next chunk read in `direction` (toxiproxy `reset_peer`).
    pub reset: bool,
    /// Accept and read, but never forward or close: new connections (when `direction` is
    /// `Both`) are held without a byte forwarded, and open ones swallow what they read in
    /// `direction` (toxiproxy `timeout` 0).
    pub blackhole: bool,
}

/// Counters proving a fault fired. Each is bumped before the effect is visible to a peer.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Connections accepted, whatever happened to them.
    pub connections: u64,
    /// Bytes forwarded client→server and server→client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Connections closed by `truncate_after` / `truncate_down_after`.
    pub truncated: u64,
    /// Connections closed at once by `reset`.
    pub reset: u64,
    /// Connections accepted while `blackhole` was set.
    pub blackholed: u64,
    /// Connections dropped by `cut()`, or refused while cut.
    pub cut: u64,
    /// What the per-chunk faults did, client→server and server→client.
    pub up: DirStats,
    pub down: DirStats,
}

/// Per-direction evidence that a toxic fired, counted in chunks read from the sender.
#[derive(Clone, Debug, Default)]
pub struct DirStats {
    /// Chunks held back by latency (+ jitter) before forwarding.
    pub delayed: u64,
    /// Chunks forwarded in more than one piece by `slice`.
    pub sliced: u64,
    /// Chunks paced by `bandwidth`.
    pub throttled: u64,
    /// Bytes read and dropped by `blackhole` on an open connection.
    pub swallowed: u64,
    /// Open connections reset by `reset`.
    pub reset: u64,
}

struct Shared {
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    /// Set by `cut()`: refuse new connections until `set()`/`clear()`.
    refusing: AtomicBool,
    /// Bumped by each `cut()`; every connection watches it.
    cuts: watch::Sender<u64>,
}

impl Shared {
    fn faults(&self) -> Faults {
        self.faults.lock().unwrap().clone()
    }
    fn bump(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap());
    }
}

/// A TCP proxy on 127.0.0.1:0 forwarding to `upstream`, whose faults can be changed while it runs.
pub struct ChaosProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ChaosProxy {
    pub async fn spawn(upstream: SocketAddr) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            faults: Mutex::default(),
            stats: Mutex::default(),
            refusing: AtomicBool::new(false),
            cuts: watch::Sender::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        ChaosProxy { addr, shared, task }
    }

    /// Applies to new data on existing and new connections, per direction; ends a `cut()`.
    pub fn set(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
        self.shared.refusing.store(false, SeqCst);
    }

    /// Back to a clean pipe.
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    /// Closes every open connection now (RST) and refuses new ones until `clear()`/`set()`.
    pub fn cut(&self) {
        self.shared.refusing.store(true, SeqCst);
        self.shared.cuts.send_modify(|generation| *generation += 1);
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connections: dropping it aborts them all.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                // Subscribe before checking `refusing`, so a concurrent cut() is never missed.
                let cut = shared.cuts.subscribe();
                let faults = shared.faults();
                let n = {
                    let mut stats = shared.stats.lock().unwrap();
                    stats.connections += 1;
                    stats.connections
                };
                if shared.refusing.load(SeqCst) {
                    shared.bump(|s| s.cut += 1);
                    let _ = client.set_zero_linger();
                } else if faults.reset {
                    shared.bump(|s| s.reset += 1);
                    let _ = client.set_zero_linger();
                } else if faults.blackhole && faults.direction == Direction::Both {
                    shared.bump(|s| s.blackholed += 1);
                    conns.spawn(blackhole(client, shared.clone(), cut));
                } else {
                    conns.spawn(serve(client, upstream, shared.clone(), cut, n));
                }
            }
        }
    }
}

/// Reads and discards until cut or dropped; never answers, never closes on its own.
async fn blackhole(mut client: TcpStream, shared: Arc<Shared>, mut cut: watch::Receiver<u64>) {
    let mut buf = vec![0u8; 16 * 1024];
    let drain = async {
        while let Ok(1..) = client.read(&mut buf).await {}
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = drain => {}
        _ = cut.changed() => shared.bump(|s| s.cut += 1),
    }
    let _ = client.set_zero_linger();
}

/// Why a connection ended early.
enum Close {
    Truncated,
    Broken,
    Cut,
    Reset,
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut cut: watch::Receiver<u64>,
    n: u64,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger(); // upstream down: the client sees a reset
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let seed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let outcome = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let both = async {
            tokio::try_join!(
                pump(cr, sw, &shared, true, seed),
                pump(sr, cw, &shared, false, seed.rotate_left(32) | 1),
            )
        };
        tokio::select! {
            done = both => done.err(),
            _ = cut.changed() => Some(Close::Cut),
        }
    };
    match outcome {
        Some(Close::Truncated) => shared.bump(|s| s.truncated += 1), // plain close, like limit_data
        Some(Close::Cut) => {
            shared.bump(|s| s.cut += 1);
            let _ = (client.set_zero_linger(), server.set_zero_linger());
        }
        // Counted in `pump`, per direction; here only the RST on both sides.
        Some(Close::Reset) => {
            shared.bump(|s| s.reset += 1);
            let _ = (client.set_zero_linger(), server.set_zero_linger());
        }
        Some(Close::Broken) | None => {}
    }
}

/// Forwards one direction until EOF (then half-closes), applying the current faults per chunk.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
    up: bool,
    mut rng: u64,
) -> Result<(), Close> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0u64;
    loop {
        let n = from.read(&mut buf).await.map_err(|_| Close::Broken)?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let f = shared.faults();
        let here = f.direction.covers(up);
        if here && f.reset {
            shared.bump(|s| dir(s, up).reset += 1);
            return Err(Close::Reset);
        }
        if here && f.blackhole {
            shared.bump(|s| dir(s, up).swallowed += n as u64);
            continue;
        }
        let delay = f.latency + jitter(&mut rng, f.jitter);
        if here && !delay.is_zero() {
            shared.bump(|s| dir(s, up).delayed += 1);
            sleep(delay).await;
        }
        let slice = f.slice.filter(|_| here);
        let bandwidth = f.bandwidth.filter(|_| here);
        let limit = if up {
            f.truncate_after
        } else {
            f.truncate_down_after
        };
        let allowed = limit.map_or(n, |l| {
            usize::try_from(l.saturating_sub(sent)).map_or(n, |left| left.min(n))
        });
        // With a bandwidth cap, pieces of ~1/20 s keep the pacing smooth.
        let piece = slice
            .unwrap_or(usize::MAX)
            .min(bandwidth.map_or(usize::MAX, |b| (b / 20) as usize))
            .max(1);
        if slice.is_some_and(|s| allowed > s) {
            shared.bump(|s| dir(s, up).sliced += 1);
        }
        if bandwidth.is_some() && allowed > 0 {
            shared.bump(|s| dir(s, up).throttled += 1);
        }
        for (i, chunk) in buf[..allowed].chunks(piece).enumerate() {
            if i > 0 && slice.is_some() {
                sleep(Duration::from_millis(1)).await;
            }
            let len = chunk.len() as u64;
            shared.bump(|s| *forwarded(s, up) += len);
            to.write_all(chunk).await.map_err(|_| Close::Broken)?;
            sent += len;
            if let Some(bw) = bandwidth {
                sleep(Duration::from_secs_f64(len as f64 / bw.max(1) as f64)).await;
            }
        }
        if limit.is_some_and(|l| sent >= l) {
            return Err(Close::Truncated);
        }
    }
}

fn forwarded(stats: &mut Stats, up: bool) -> &mut u64 {
    if up {
        &mut stats.bytes_up
    } else {
        &mut stats.bytes_down
    }
}

fn dir(stats: &mut Stats, up: bool) -> &mut DirStats {
    if up {
        &mut stats.up
    } else {
        &mut stats.down
    }
}

/// A uniform 0..=`max` from a xorshift64 state.
fn jitter(state: &mut u64, max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(*state % max.saturating_add(1))
}

mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(10);

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn faults(edit: impl FnOnce(&mut Faults)) -> Faults {
        let mut faults = Faults::default();
        edit(&mut faults);
        faults
    }

    async fn proxy() -> (ChaosProxy, TcpStream) {
        let proxy = ChaosProxy::spawn(echo_server().await).await;
        let conn = TcpStream::connect(proxy.addr).await.unwrap();
        (proxy, conn)
    }

    /// A new connection is closed without an answer (on loopback a reset may even fail connect).
    async fn closed_at_once(addr: SocketAddr) -> bool {
        let Ok(mut conn) = TcpStream::connect(addr).await else {
            return true;
        };
        let _ = conn.write_all(b"hello").await;
        read_to_close(&mut conn).await.is_empty()
    }

    async fn roundtrip(conn: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        conn.write_all(data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        timeout(LIMIT, conn.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        back
    }

    /// Everything until EOF or reset; panics if the connection stays open.
    async fn read_to_close(conn: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        timeout(LIMIT, async {
            while let Ok(n @ 1..) = conn.read(&mut buf).await {
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("connection was not closed");
        got
    }

    #[tokio::test]
    async fn clean_pipe_echoes_and_slicing_keeps_bytes_intact() {
        let (proxy, mut conn) = proxy().await;
        assert_eq!(roundtrip(&mut conn, b"hello").await, b"hello");
        proxy.set(faults(|f| f.slice = Some(3)));
        let data: Vec<u8> = (0..200u8).collect();
        assert_eq!(roundtrip(&mut conn, &data).await, data);
        conn.shutdown().await.unwrap();
        assert!(read_to_close(&mut conn).await.is_empty());
        let stats = proxy.stats();
        assert_eq!(
            (stats.connections, stats.bytes_up, stats.bytes_down),
            (1, 205, 205)
        );
        // Only up: the echo comes back in the 3-byte pieces it was sent in.
        assert!(stats.up.sliced >= 1, "{stats:?}");
    }

    #[tokio::test]
    async fn slicing_one_direction_counts_only_there() {
        let (proxy, mut conn) = proxy().await;
        proxy.set(faults(|f| {
            f.slice = Some(3);
            f.direction = Direction::Down;
        }));
        let data: Vec<u8> = (0..200u8).collect();
        assert_eq!(roundtrip(&mut conn, &data).await, data);
        let stats = proxy.stats();
        assert_eq!(stats.up.sliced, 0, "{stats:?}");
        assert!(stats.down.sliced >= 1, "{stats:?}");
    }

    #[tokio::test]
    async fn latency_applies_to_an_open_connection() {
        let (proxy, mut conn) = proxy().await;
        roundtrip(&mut conn, b"warm").await;
        let latency = Duration::from_millis(150);
        let jitter = Duration::from_millis(20);
        proxy.set(faults(|f| {
            f.latency = latency;
            f.jitter = jitter;
        }));
        let start = Instant::now();
        assert_eq!(roundtrip(&mut conn, b"slow").await, b"slow");
        assert!(start.elapsed() >= 2 * latency, "{:?}", start.elapsed());
        let stats = proxy.stats();
        assert_eq!((stats.up.delayed, stats.down.delayed), (1, 1));
    }

    #[tokio::test]
    async fn latency_upstream_only_delays_one_way() {
        let (proxy, mut conn) = proxy().await;
        let latency = Duration::from_millis(200);
        proxy.set(faults(|f| {
            f.latency = latency;
            f.direction = Direction::Up;
        }));
        let start = Instant::now();
        assert_eq!(roundtrip(&mut conn, b"one-way").await, b"one-way");
        let took = start.elapsed();
        assert!(took >= latency && took < 2 * latency, "{took:?}");
        let stats = proxy.stats();
        assert_eq!((stats.up.delayed, stats.down.delayed), (1, 0));
    }

    #[tokio::test]
    async fn truncate_after_closes_after_n_bytes_up() {
        let (proxy, mut conn) = proxy().await;
        proxy.set(faults(|f| f.truncate_after = Some(10)));
        let _ = conn.write_all(&[7u8; 100]).await;
        assert!(read_to_close(&mut conn).await.len() <= 10);
        let stats = proxy.stats();
        assert_eq!((stats.truncated, stats.bytes_up), (1, 10));
    }

    #[tokio::test]
    async fn truncate_down_after_closes_after_n_bytes_down() {
        let (proxy, mut conn) = proxy().await;
        proxy.set(faults(|f| f.truncate_down_after = Some(10)));
        let data: Vec<u8> = (0..100u8).collect();
        conn.write_all(&data).await.unwrap();
        assert_eq!(read_to_close(&mut conn).await, data[..10]);
        let stats = proxy.stats();
        assert_eq!((stats.truncated, stats.bytes_down), (1, 10));
    }

    #[tokio::test]
    async fn reset_closes_at_once() {
        let proxy = ChaosProxy::spawn(echo_server().await).await;
        proxy.set(faults(|f| f.reset = true));
        assert!(closed_at_once(proxy.addr).await);
        let stats = proxy.stats();
        assert_eq!((stats.reset, stats.bytes_up), (1, 0));
    }

    #[tokio::test]
    async fn reset_downstream_resets_an_open_connection_mid_transfer() {
        let (proxy, mut conn) = proxy().await;
        roundtrip(&mut conn, b"warm").await;
        proxy.set(faults(|f| {
            f.reset = true;
            f.direction = Direction::Down;
        }));
        conn.write_all(b"lost").await.unwrap();
        // The echo went up (counted) but the answer was never forwarded.
        assert!(read_to_close(&mut conn).await.is_empty());
        let stats = proxy.stats();
        assert_eq!((stats.reset, stats.down.reset, stats.up.reset), (1, 1, 0));
        assert_eq!((stats.bytes_up, stats.bytes_down), (8, 4));
    }

    #[tokio::test]
    async fn blackhole_downstream_forwards_up_but_never_answers_nor_closes() {
        let (proxy, mut conn) = proxy().await;
        proxy.set(faults(|f| {
            f.blackhole = true;
            f.direction = Direction::Down;
        }));
        conn.write_all(b"hello").await.unwrap();
        crate::assert_eventually!(proxy.stats().down.swallowed == 5, "echo not swallowed");
        let mut buf = [0u8; 16];
        let held = timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
        assert!(held.is_err(), "blackhole answered: {held:?}");
        let stats = proxy.stats();
        assert_eq!(
            (stats.bytes_up, stats.bytes_down, stats.blackholed),
            (5, 0, 0)
        );
        proxy.clear();
        assert_eq!(roundtrip(&mut conn, b"again").await, b"again");
    }

    #[tokio::test]
    async fn blackhole_holds_open_with_no_bytes_down() {
        let proxy = ChaosProxy::spawn(echo_server().await).await;
        proxy.set(faults(|f| f.blackhole = true));
        let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
        conn.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let held = timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
        assert!(held.is_err(), "blackhole answered: {held:?}");
        let stats = proxy.stats();
        assert_eq!(
            (stats.blackholed, stats.bytes_up, stats.bytes_down),
            (1, 0, 0)
        );
        proxy.cut(); // it was still open: cut() is what closes it
        assert!(read_to_close(&mut conn).await.is_empty());
        assert_eq!(proxy.stats().cut, 1);
    }

    #[tokio::test]
    async fn cut_drops_open_connections_and_refuses_until_clear() {
        let (proxy, mut conn) = proxy().await;
        roundtrip(&mut conn, b"up").await;
        proxy.cut();
        assert!(read_to_close(&mut conn).await.is_empty());
        assert_eq!(proxy.stats().cut, 1);
        assert!(closed_at_once(proxy.addr).await);
        assert_eq!(proxy.stats().cut, 2);
        proxy.clear();
        let mut again = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(roundtrip(&mut again, b"back").await, b"back");
    }

    #[tokio::test]
    async fn bandwidth_limits_roughly() {
        let (proxy, mut conn) = proxy().await;
        proxy.set(faults(|f| f.bandwidth = Some(10_000)));
        let start = Instant::now();
        roundtrip(&mut conn, &[1u8; 4_000]).await;
        let took = start.elapsed();
        let stats = proxy.stats();
        assert!(
            stats.up.throttled >= 1 && stats.down.throttled >= 1,
            "{stats:?}"
        );
        // 4 KB at 10 KB/s is 0.4 s per direction, the two directions overlapping.
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let (proxy, mut conn) = proxy().await;
        roundtrip(&mut conn, b"up").await;
        drop(proxy);
        assert!(read_to_close(&mut conn).await.is_empty());
    }
}
