//! The simulated network: every connection is an in-memory `tokio::io::duplex` pair whose two
//! ends are wrapped in a [`FaultStream`] sharing one [`Link`]. Faults act on links:
//!
//! - **cut**: both ends fail at once (reads and writes error), as a reset TCP connection;
//! - **stall**: bytes stop flowing both ways (they stay in the duplex buffer, so a writer
//!   blocks once it is full, as on a TCP window) until unstalled;
//! - **delay**: bytes are held at the receiving end until `arrival + delay`;
//! - **partition**: a device's connects are refused; **down**: every connect is refused.
//!
//! Everything buffered is bounded: the duplex buffer ([`DUPLEX_BUF`]) and what an end holds
//! back for a delay ([`HOLD_CAP`]). The network records the peak of the held bytes and of the
//! live links (a link is live while either end exists) for the bound checks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use phoenix_channels::transport::ConnectRequest;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The buffer of each direction of a duplex pair.
pub const DUPLEX_BUF: usize = 64 << 10;
/// The most an end holds back for a delay before it stops reading from its duplex.
pub const HOLD_CAP: usize = 64 << 10;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which end of a link: the client's end reads what the server sent, and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct LinkState {
    cut: bool,
    stalled: bool,
    /// Delay of the bytes arriving at the client's end, and at the server's.
    delay: [Duration; 2],
}

/// One connection's shared fault state.
pub struct Link {
    id: u64,
    device: String,
    state: Mutex<LinkState>,
    /// Read and write wakers of the client's end, then of the server's.
    wakers: [AtomicWaker; 4],
}

impl Link {
    fn state(&self) -> LinkState {
        *lock(&self.state)
    }

    fn update(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut lock(&self.state));
        for waker in &self.wakers {
            waker.wake();
        }
    }
}

/// Counters of the network, for the bound checks and the run summary.
#[derive(Debug, Default)]
pub struct NetStats {
    pub connects: AtomicU64,
    pub refused: AtomicU64,
    pub cuts: AtomicU64,
    pub held: AtomicUsize,
    pub peak_held: AtomicUsize,
    pub peak_live_links: AtomicUsize,
}

type Serve = Box<dyn Fn(FaultStream) + Send + Sync>;

struct NetShared {
    serve: Serve,
    links: Mutex<Vec<Weak<Link>>>,
    next_id: AtomicU64,
    down: Mutex<bool>,
    partitioned: Mutex<HashSet<String>>,
    device_delay: Mutex<HashMap<String, [Duration; 2]>>,
    stats: NetStats,
}

/// The simulated network. Cheap to clone.
#[derive(Clone)]
pub struct Net {
    shared: Arc<NetShared>,
}

impl Net {
    /// A network whose connects hand the server's end to `serve`.
    pub fn new(serve: impl Fn(FaultStream) + Send + Sync + 'static) -> Self {
        Self {
            shared: Arc::new(NetShared {
                serve: Box::new(serve),
                links: Mutex::default(),
                next_id: AtomicU64::new(1),
                down: Mutex::new(false),
                partitioned: Mutex::default(),
                device_delay: Mutex::default(),
                stats: NetStats::default(),
            }),
        }
    }

    pub fn stats(&self) -> &NetStats {
        &self.shared.stats
    }

    /// Opens a connection for the device named in the request's `device_id` param.
    pub fn open(&self, request: &ConnectRequest) -> io::Result<FaultStream> {
        let device = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "device_id")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let shared = &self.shared;
        if *lock(&shared.down) || lock(&shared.partitioned).contains(&device) {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "simulated: connection refused",
            ));
        }
        shared.stats.connects.fetch_add(1, Ordering::Relaxed);
        let delay = lock(&shared.device_delay)
            .get(&device)
            .copied()
            .unwrap_or_default();
        let link = Arc::new(Link {
            id: shared.next_id.fetch_add(1, Ordering::Relaxed),
            device,
            state: Mutex::new(LinkState {
                delay,
                ..LinkState::default()
            }),
            wakers: Default::default(),
        });
        {
            let mut links = lock(&shared.links);
            links.retain(|l| l.strong_count() > 0);
            links.push(Arc::downgrade(&link));
            shared
                .stats
                .peak_live_links
                .fetch_max(links.len(), Ordering::Relaxed);
        }
        let (client, server) = tokio::io::duplex(DUPLEX_BUF);
        (shared.serve)(FaultStream::new(server, link.clone(), Side::Server, self));
        Ok(FaultStream::new(client, link, Side::Client, self))
    }

    fn live(&self) -> Vec<Arc<Link>> {
        let mut links = lock(&self.shared.links);
        links.retain(|l| l.strong_count() > 0);
        links.iter().filter_map(Weak::upgrade).collect()
    }

    /// Live links, by device (for the end-of-run leak check).
    pub fn live_links(&self) -> Vec<(u64, String, bool)> {
        self.live()
            .iter()
            .map(|l| (l.id, l.device.clone(), l.state().cut))
            .collect()
    }

    /// Cuts every live link of a device (every link when `None`); returns how many.
    pub fn cut(&self, device: Option<&str>) -> usize {
        let mut n = 0;
        for link in self.live() {
            if device.is_none_or(|d| d == link.device) && !link.state().cut {
                link.update(|s| s.cut = true);
                n += 1;
            }
        }
        self.shared
            .stats
            .cuts
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Stalls (or unstalls) the device's live links.
    pub fn stall(&self, device: &str, on: bool) {
        for link in self.live().iter().filter(|l| l.device == device) {
            link.update(|s| s.stalled = on);
        }
    }

    /// Sets the device's delays (to the client, to the server), on its live links and the
    /// ones it opens later.
    pub fn delay(&self, device: &str, to_client: Duration, to_server: Duration) {
        lock(&self.shared.device_delay).insert(device.to_owned(), [to_client, to_server]);
        for link in self.live().iter().filter(|l| l.device == device) {
            link.update(|s| s.delay = [to_client, to_server]);
        }
    }

    /// Refuses (or allows) the device's connects.
    pub fn partition(&self, device: &str, on: bool) {
        let mut set = lock(&self.shared.partitioned);
        if on {
            set.insert(device.to_owned());
        } else {
            set.remove(device);
        }
    }

    /// Refuses (or allows) every connect.
    pub fn set_down(&self, on: bool) {
        *lock(&self.shared.down) = on;
    }

    /// Ends every fault: no stall, no delay, no partition, up.
    pub fn heal(&self) {
        self.set_down(false);
        lock(&self.shared.partitioned).clear();
        lock(&self.shared.device_delay).clear();
        for link in self.live() {
            link.update(|s| {
                s.stalled = false;
                s.delay = [Duration::ZERO; 2];
            });
        }
    }
}

/// One end of a link.
pub struct FaultStream {
    inner: DuplexStream,
    link: Arc<Link>,
    side: Side,
    net: Arc<NetShared>,
    held: VecDeque<(Instant, Bytes)>,
    held_bytes: usize,
    eof: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

impl FaultStream {
    fn new(inner: DuplexStream, link: Arc<Link>, side: Side, net: &Net) -> Self {
        Self {
            inner,
            link,
            side,
            net: net.shared.clone(),
            held: VecDeque::new(),
            held_bytes: 0,
            eof: false,
            timer: None,
        }
    }

    fn read_waker(&self) -> &AtomicWaker {
        &self.link.wakers[self.side.index() * 2]
    }

    fn write_waker(&self) -> &AtomicWaker {
        &self.link.wakers[self.side.index() * 2 + 1]
    }

    fn hold(&mut self, chunk: Bytes) {
        let n = chunk.len();
        self.held.push_back((Instant::now(), chunk));
        self.held_bytes += n;
        let total = self.net.stats.held.fetch_add(n, Ordering::Relaxed) + n;
        self.net.stats.peak_held.fetch_max(total, Ordering::Relaxed);
    }

    fn release(&mut self, n: usize) {
        self.held_bytes -= n;
        self.net.stats.held.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for FaultStream {
    fn drop(&mut self) {
        let n = self.held_bytes;
        self.net.stats.held.fetch_sub(n, Ordering::Relaxed);
    }
}

fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "simulated: connection cut")
}

impl AsyncRead for FaultStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        this.read_waker().register(cx.waker());
        let state = this.link.state();
        if state.cut {
            return Poll::Ready(Err(cut_error()));
        }
        if state.stalled {
            return Poll::Pending;
        }
        // Take in what arrived, up to the hold cap (beyond it the sender waits).
        while !this.eof && this.held_bytes < HOLD_CAP {
            let mut chunk = vec![0u8; 8 << 10];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        this.eof = true;
                    } else {
                        chunk.truncate(n);
                        this.hold(Bytes::from(chunk));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        let delay = state.delay[this.side.index()];
        let now = Instant::now();
        let mut delivered = 0;
        while buf.remaining() > 0 {
            let Some((arrived, chunk)) = this.held.front_mut() else {
                break;
            };
            let due = *arrived + delay;
            if due > now {
                if delivered == 0 {
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                    timer.as_mut().reset(due);
                    if timer.as_mut().poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
                break;
            }
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk.split_to(n));
            if chunk.is_empty() {
                this.held.pop_front();
            }
            this.release(n);
            delivered += n;
        }
        if delivered > 0 || this.eof {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl AsyncWrite for FaultStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.write_waker().register(cx.waker());
        if this.link.state().cut {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.write_waker().register(cx.waker());
        if this.link.state().cut {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
