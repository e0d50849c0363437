//! gRPC services that answer before they exist. A server started while its PostgreSQL
//! registry cannot be reached listens at once, so probes and clients get an answer instead of
//! a hung connection: health says NOT_SERVING, and every call to a [`Later`] service is
//! UNAVAILABLE with [`WAITING`] until the registry answers and the service is [`Later::set`].

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;

/// What a call made while the server waits for its registry is told.
pub const WAITING: &str = "the server is starting: it is waiting for its model registry to answer; try again shortly";

/// A service that is set once; UNAVAILABLE ([`WAITING`]) until then.
#[derive(Debug)]
pub struct Later<S> {
    cell: Arc<OnceLock<S>>,
}

impl<S> Clone for Later<S> {
    fn clone(&self) -> Self {
        Self {
            cell: Arc::clone(&self.cell),
        }
    }
}

impl<S> Default for Later<S> {
    fn default() -> Self {
        Self { cell: Arc::default() }
    }
}

impl<S> Later<S> {
    /// Answers with `service` from now on (on every clone). A second call changes nothing.
    pub fn set(&self, service: S) {
        let _ = self.cell.set(service);
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Later<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Later<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is asked of the inner service per call (generated servers are always ready).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.cell.get() {
            Some(service) => {
                let mut service = service.clone();
                Box::pin(async move {
                    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    service.call(req).await
                })
            }
            None => {
                let reply = tonic::Status::unavailable(WAITING).into_http();
                Box::pin(std::future::ready(Ok(reply)))
            }
        }
    }
}
