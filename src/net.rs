//! What one client may hold of the server, on both ports: connections, the time a new
//! connection may stay silent, and the bytes of request bodies in flight.
//!
//! Why each bound (issue 25's battery):
//! - **Connections**: each holds a file descriptor. Idle connections by the thousand filled
//!   the process's descriptors, after which new clients, the tokens-file watcher and the
//!   database all failed. Each port holds at most its share of a cap kept below the file limit
//!   ([`connection_cap`]); past it, new connections wait in the kernel's queue.
//! - **First bytes**: a connection that sends nothing within the header timeout is closed
//!   (HTTP also bounds every request head with hyper's header-read timeout; gRPC's first
//!   bytes are its connection preface).
//! - **Request bytes in flight**: every stream may buffer up to the largest message, and
//!   HTTP/2 lets one connection open many streams: one client held 2 GB this way. Every body's
//!   bytes are charged to one server-wide [`Budget`] as they arrive and given back when the
//!   request is answered; a body that does not fit is refused (RESOURCE_EXHAUSTED / 503 with
//!   a retry hint), and one that trickles in longer than the body timeout is cut off.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::PollSemaphore;

/// Descriptors kept for everything but client connections: the database pool, the file and
/// tokens watchers, model files, object downloads, logs.
pub const RESERVED_FDS: u64 = 256;

/// The connections each of `ports` ports may hold: `wanted`, or less when the process's file
/// limit would not leave [`RESERVED_FDS`] free. The soft limit is first raised to the hard
/// one (as servers do; the default soft limit is often 1024).
pub fn connection_cap(wanted: u64, ports: u64) -> u64 {
    let limit = raise_file_limit();
    let share = limit.saturating_sub(RESERVED_FDS) / ports.max(1);
    wanted.min(share.max(1))
}

#[cfg(unix)]
fn raise_file_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

#[cfg(not(unix))]
fn raise_file_limit() -> u64 {
    u64::MAX
}

/// One port's connection bounds.
#[derive(Debug, Clone)]
pub struct Conns {
    permits: Arc<Semaphore>,
    max: usize,
    first_bytes: Duration,
}

impl Conns {
    /// At most `max` connections open at once; each must send its first bytes within
    /// `first_bytes`.
    pub fn new(max: usize, first_bytes: Duration) -> Self {
        let max = max.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            first_bytes,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// The most connections this port holds.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A permit for one more connection, waiting while the port is full.
    pub async fn admit(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// `io` holding `permit`, closed if it sends nothing within the first-bytes timeout.
    pub fn guard<S>(&self, io: S, permit: OwnedSemaphorePermit) -> Guarded<S> {
        Guarded {
            inner: io,
            _permit: permit,
            silent: Some(Box::pin(tokio::time::sleep(self.first_bytes))),
            first_bytes: self.first_bytes,
        }
    }
}

/// `AsyncWrite` for a connection wrapper, every call handed to its field: `forward_write!(Wrapper,
/// field)`, or `forward_write!(Wrapper<S>, field)` for one generic over its stream.
macro_rules! forward_write {
    ($ty:ident $(<$s:ident>)?, $field:ident) => {
        impl$(<$s: tokio::io::AsyncWrite + Unpin>)? tokio::io::AsyncWrite for $ty$(<$s>)? {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }
        }
    };
}
pub(crate) use forward_write;

/// A connection that holds its port's permit until it closes, and fails its reads when the
/// client sends nothing within the first-bytes timeout.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    /// Running until the first byte arrives.
    silent: Option<Pin<Box<Sleep>>>,
    first_bytes: Duration,
}

impl<S> Guarded<S> {
    /// The connection inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(silent) = self.silent.as_mut() {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.silent = None,
                Poll::Ready(_) => {}
                Poll::Pending => {
                    if silent.as_mut().poll(cx).is_ready() {
                        let secs = self.first_bytes.as_secs();
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the client sent nothing within {secs} s"),
                        )));
                    }
                }
            }
        }
        read
    }
}

forward_write!(Guarded<S>, inner);

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A listening socket that the server's stop can close while the server drains: tonic and
/// hyper keep their accept stream until the last request ends, and the port must refuse new
/// connections from the moment the stop begins, not accept them into a backlog nobody serves.
#[derive(Debug, Clone)]
pub struct Listener(Arc<std::sync::Mutex<Option<TcpListener>>>);

impl Listener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(listener))))
    }

    /// Closes the socket: new connections are refused, and accepting ends.
    pub fn close(&self) {
        drop(self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    }

    /// `stop`, then [`Listener::close`]: the shutdown signal to give the server that accepts
    /// on this listener.
    pub fn closing_after<F: Future<Output = ()>>(&self, stop: F) -> impl Future<Output = ()> + use<F> {
        let listener = self.clone();
        async move {
            stop.await;
            listener.close();
        }
    }

    /// The next connection; `None` once closed.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<(TcpStream, std::net::SocketAddr)>>> {
        let slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref() {
            Some(l) => l.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        }
    }

    /// [`Listener::poll_accept`] as a future.
    pub async fn accept(&self) -> Option<io::Result<(TcpStream, std::net::SocketAddr)>> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The bound address, while open.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        let slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Plain TCP connections of a listener, each admitted by [`Conns`] (no descriptor is taken
/// while the port is full), with `TCP_NODELAY` (Nagle and delayed ACKs add ~40 ms to
/// mid-sized replies).
pub struct Incoming {
    listener: Listener,
    conns: Conns,
    permits: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// Accepts on `listener` within `conns`, until it is closed.
    pub fn new(listener: Listener, conns: Conns) -> Self {
        Self {
            listener,
            permits: PollSemaphore::new(Arc::clone(&conns.permits)),
            conns,
            permit: None,
            pause: None,
        }
    }
}

impl futures_util::Stream for Incoming {
    type Item = io::Result<Guarded<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(p) = self.pause.as_mut() {
                ready!(p.as_mut().poll(cx));
                self.pause = None;
            }
            if self.permit.is_none() {
                match ready!(self.permits.poll_acquire(cx)) {
                    Some(p) => self.permit = Some(p),
                    None => return Poll::Ready(None),
                }
            }
            match ready!(self.listener.poll_accept(cx)) {
                None => return Poll::Ready(None),
                Some(Ok((tcp, _))) => {
                    let _ = tcp.set_nodelay(true);
                    let permit = self.permit.take().expect("taken above");
                    let io = self.conns.guard(tcp, permit);
                    return Poll::Ready(Some(Ok(io)));
                }
                Some(Err(e)) => {
                    // Out of descriptors and the like: pause rather than spin.
                    crate::client_event!(tracing::Level::WARN, "accept", error = %e, "accepting a connection failed");
                    self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                }
            }
        }
    }
}

/// The request bytes all clients together may have in flight.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    used: AtomicUsize,
}

impl Budget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.max)
            })
            .is_ok()
    }
}

/// What one request holds of the [`Budget`], given back when the last holder (its body, its
/// answer) drops it.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    held: AtomicUsize,
}

impl Charge {
    /// A charge of nothing yet.
    pub fn new(budget: &Arc<Budget>) -> Arc<Self> {
        Arc::new(Self {
            budget: Arc::clone(budget),
            held: AtomicUsize::new(0),
        })
    }

    /// Charges `n` more bytes; `false` (nothing charged) when the budget cannot hold them.
    pub fn add(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if self.budget.take(n) {
            self.held.fetch_add(n, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(*self.held.get_mut(), Ordering::AcqRel);
    }
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The budget of request bytes in flight is full.
    #[error(
        "the server holds its most request bytes in flight ({max} bytes, --request-bytes-in-flight); try again shortly"
    )]
    Full {
        /// The budget.
        max: usize,
    },
    /// The body took longer than the body timeout to arrive.
    #[error("the request body took longer than {secs} s to arrive (--body-timeout-secs)")]
    Slow {
        /// The timeout.
        secs: u64,
    },
    /// The connection failed or the client went away.
    #[error("reading the request body failed: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<BodyError> for crate::Error {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Full { .. } => crate::Error::ResourceExhausted {
                message: e.to_string(),
                retry_after: Duration::from_secs(1),
            },
            BodyError::Slow { .. } => crate::Error::DeadlineExceeded(e.to_string()),
            BodyError::Read(_) => crate::Error::InvalidArgument(e.to_string()),
        }
    }
}

/// A request body whose bytes are charged to a [`Charge`] as they arrive, and which fails
/// when the budget is full or when it has not ended within the body timeout of first having to
/// wait for bytes.
pub struct Metered<B> {
    inner: B,
    charge: Arc<Charge>,
    /// Bytes charged before the body was read (a declared `Content-Length`).
    prepaid: usize,
    timeout: Duration,
    /// Set only once the body has to wait for bytes (most bodies arrive whole).
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Metered<B> {
    /// `inner`, charged to `charge`, failing `timeout` after it first waits.
    pub fn new(inner: B, charge: Arc<Charge>, timeout: Duration) -> Self {
        Self {
            inner,
            charge,
            prepaid: 0,
            timeout,
            timer: None,
        }
    }
}

impl<B> Metered<B> {
    /// The first `bytes` of the body are already charged (its declared length).
    #[must_use]
    pub fn prepaid(mut self, bytes: usize) -> Self {
        self.prepaid = bytes;
        self
    }
}

impl<B> http_body::Body for Metered<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let paid = this.prepaid.min(data.len());
                    this.prepaid -= paid;
                    if !this.charge.add(data.len() - paid) {
                        return Poll::Ready(Some(Err(BodyError::Full {
                            max: this.charge.budget.max,
                        })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Read(e.into())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // The clock starts the first time the body has to wait: most bodies arrive
                // whole with their headers and never read it (this is every request's path),
                // and a body that trickles waits at once, a frame after its headers.
                let timeout = this.timeout;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyError::Slow {
                        secs: this.timeout.as_secs(),
                    })));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The limits on request bodies: the budget and the body timeout.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Request bytes in flight.
    pub budget: Arc<Budget>,
    /// How long a body may take to arrive.
    pub timeout: Duration,
}

impl BodyLimits {
    /// A budget of `bytes`, bodies within `timeout`.
    pub fn new(bytes: usize, timeout: Duration) -> Self {
        Self {
            budget: Arc::new(Budget::new(bytes)),
            timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn charges_are_given_back_when_dropped() {
        let budget = Arc::new(Budget::new(100));
        let a = Charge::new(&budget);
        assert!(a.add(60));
        let b = Charge::new(&budget);
        assert!(!b.add(41), "over the budget");
        assert!(b.add(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_body_over_the_budget_fails_and_a_slow_one_times_out() {
        let budget = Arc::new(Budget::new(10));
        let whole = Metered::new(
            http_body_util::Full::new(Bytes::from_static(b"0123456789")),
            Charge::new(&budget),
            Duration::from_secs(5),
        );
        assert_eq!(whole.collect().await.unwrap().to_bytes().len(), 10);
        assert_eq!(budget.used(), 0, "collected and dropped");
        let held = Charge::new(&budget);
        assert!(held.add(5));
        let big = Metered::new(
            http_body_util::Full::new(Bytes::from_static(b"0123456789")),
            Charge::new(&budget),
            Duration::from_secs(5),
        );
        assert!(matches!(big.collect().await, Err(BodyError::Full { max: 10 })));
        let (_tx, body) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, io::Error>>(1);
        let never = Metered::new(
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body)),
            Charge::new(&budget),
            Duration::from_millis(20),
        );
        assert!(matches!(never.collect().await, Err(BodyError::Slow { .. })));
    }
}
