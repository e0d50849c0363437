//! Every gRPC call's way in, as one tower layer in front of every service (one layer, not
//! three: this is every request's path):
//! - the request id: the client's `x-request-id` when it is a sane one, else a new one; the
//!   current id while the call runs ([`crate::trace::scope`]), and answered in the response;
//! - the access check: the bearer token against [`crate::auth::Access`] for the method's scope
//!   ([`crate::auth::grpc_need`]); UNAUTHENTICATED without a good token, PERMISSION_DENIED with
//!   the wrong scope; the token's name goes into the request's extensions as
//!   [`crate::auth::Caller`];
//! - the body's charge ([`crate::net`]): the request's bytes are charged to the server-wide
//!   budget as they arrive and the charge is held until the call is answered. A body that does
//!   not fit fails the call with RESOURCE_EXHAUSTED and a retry hint; one that trickles in past
//!   the body timeout with DEADLINE_EXCEEDED (tonic answers a failed request body with the
//!   body's own status).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt as _;

use crate::auth::{Access, Caller, grpc_need};
use crate::net::{BodyLimits, Charge, Metered};

/// The layer.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Who may call what.
    pub access: Arc<Access>,
    /// The request-body budget and timeout.
    pub bodies: BodyLimits,
}

impl<S> tower::Layer<S> for Gate {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            inner,
            gate: self.clone(),
        }
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub struct GateService<S> {
    inner: S,
    gate: Gate,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for GateService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let id = crate::trace::request_id_from(req.headers().get(crate::trace::REQUEST_ID_HEADER));
        let access = &self.gate.access;
        // Without tokens there is nothing to look up: the Predict path pays one load.
        let need = if access.enabled() {
            grpc_need(req.uri().path())
        } else {
            crate::auth::Need::Open
        };
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match access.check(header, need) {
            Ok(caller) => {
                if let Some(name) = caller {
                    req.extensions_mut().insert(Caller(name));
                }
                let charge = Charge::new(&self.gate.bodies.budget);
                let (held, timeout) = (Arc::clone(&charge), self.gate.bodies.timeout);
                let req = req.map(|b| {
                    tonic::body::Body::new(
                        Metered::new(b, held, timeout).map_err(|e| tonic::Status::from(crate::Error::from(e))),
                    )
                });
                // The service that was polled ready answers; a fresh clone waits for the next.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Answer::Allowed {
                    inner: crate::trace::scope(id.clone(), ready.call(req)),
                    id: Some(id),
                    _charge: charge,
                }
            }
            Err(denied) => {
                let peer = req
                    .extensions()
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                crate::client_event!(
                    tracing::Level::WARN,
                    "access_denied",
                    request_id = crate::trace::shown(&id),
                    method = req.uri().path(),
                    peer,
                    "refused: {}",
                    denied.message()
                );
                let mut r = tonic::Status::from(denied.reply()).into_http();
                crate::trace::stamp(&mut r, id);
                Answer::Denied { answer: Some(r) }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's answer: the service's, run with the request id as the current one, stamped with
    /// it and holding the body's charge until it is ready; or the refusal. A plain future in the
    /// connection's task (not boxed: this is every request's path).
    #[project = AnswerProj]
    pub enum Answer<F> {
        /// Let through.
        Allowed {
            #[pin]
            inner: tokio::task::futures::TaskLocalFuture<http::HeaderValue, F>,
            id: Option<http::HeaderValue>,
            _charge: Arc<Charge>,
        },
        /// Refused.
        Denied {
            answer: Option<http::Response<tonic::body::Body>>,
        },
    }
}

impl<F, E> Future for Answer<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            AnswerProj::Allowed { inner, id, .. } => {
                let mut r = std::task::ready!(inner.poll(cx))?;
                if let Some(id) = id.take() {
                    crate::trace::stamp(&mut r, id);
                }
                Poll::Ready(Ok(r))
            }
            AnswerProj::Denied { answer } => Poll::Ready(Ok(answer.take().expect("polled after it answered"))),
        }
    }
}
