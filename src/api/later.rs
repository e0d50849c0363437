//! gRPC services that answer before they exist. A server started while its PostgreSQL
//! registry cannot be reached listens at once, so probes and clients get an answer instead of
//! a hung connection: health says NOT_SERVING, and every call to a [`Later`] service is
//! UNAVAILABLE with [`WAITING`] until the registry answers and the service is [`Later::set`].

use std::convert::Infallible;
use std::future::Ready;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::future::Either;

/// What a call made while the server waits for its registry is told.
pub const WAITING: &str = "the server is starting: it is waiting for its model registry to answer; try again shortly";

/// A service that is set once; UNAVAILABLE ([`WAITING`]) until then. Once set, a call costs a
/// clone of the inner service in `poll_ready` and nothing boxed.
#[derive(Debug)]
pub struct Later<S> {
    cell: Arc<OnceLock<S>>,
    /// The inner service, taken from the cell and polled ready, for the next call.
    ready: Option<S>,
}

impl<S> Clone for Later<S> {
    fn clone(&self) -> Self {
        Self {
            cell: Arc::clone(&self.cell),
            ready: None,
        }
    }
}

impl<S> Default for Later<S> {
    fn default() -> Self {
        Self {
            cell: Arc::default(),
            ready: None,
        }
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
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible> + Clone,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Self::Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready.is_none() {
            self.ready = self.cell.get().cloned();
        }
        match &mut self.ready {
            Some(service) => service.poll_ready(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.ready.take() {
            Some(mut service) => Either::Left(service.call(req)),
            None => Either::Right(std::future::ready(Ok(tonic::Status::unavailable(WAITING).into_http()))),
        }
    }
}
