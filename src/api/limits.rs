//! The request-body limits on gRPC ([`crate::net`]): a tower layer that charges every
//! request's bytes to the server-wide budget as they arrive and holds the charge until the
//! call is answered. A body that does not fit fails the call with RESOURCE_EXHAUSTED and a
//! retry hint; one that trickles in past the body timeout with DEADLINE_EXCEEDED (tonic
//! answers a failed request body with the body's own status).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt as _;

use crate::net::{BodyLimits, Charge, Metered};

/// The layer.
#[derive(Debug, Clone)]
pub struct BodyLimitLayer(pub BodyLimits);

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimitService {
            inner,
            limits: self.0.clone(),
        }
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub struct BodyLimitService<S> {
    inner: S,
    limits: BodyLimits,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for BodyLimitService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Charged<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let charge = Charge::new(&self.limits.budget);
        let timeout = self.limits.timeout;
        let held = Arc::clone(&charge);
        let req = req.map(|b| {
            tonic::body::Body::new(
                Metered::new(b, held, timeout).map_err(|e| tonic::Status::from(crate::Error::from(e))),
            )
        });
        Charged {
            inner: self.inner.call(req),
            _charge: charge,
        }
    }
}

pin_project_lite::pin_project! {
    /// The call's answer, holding its charge until it is ready.
    pub struct Charged<F> {
        #[pin]
        inner: F,
        _charge: Arc<Charge>,
    }
}

impl<F: Future> Future for Charged<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}
