//! The access check on gRPC: a tower layer in front of every service that reads the bearer
//! token and asks [`crate::auth::Access`] whether the method's scope is held
//! ([`crate::auth::grpc_need`]). UNAUTHENTICATED without a good token, PERMISSION_DENIED with
//! the wrong scope; the token's name goes into the request's extensions as [`Caller`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::auth::{Access, grpc_need};

pub use crate::auth::Caller;

/// The layer.
#[derive(Debug, Clone)]
pub struct AccessLayer(pub Arc<Access>);

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            access: Arc::clone(&self.0),
        }
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub struct AccessService<S> {
    inner: S,
    access: Arc<Access>,
}

impl<S, B> tower::Service<http::Request<B>> for AccessService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = crate::trace::request_id_from(req.headers().get(crate::trace::REQUEST_ID_HEADER));
        // Without tokens there is nothing to look up: the Predict path pays one load.
        let need = if self.access.enabled() {
            grpc_need(req.uri().path())
        } else {
            crate::auth::Need::Open
        };
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.access.check(header, need) {
            Ok(caller) => {
                if let Some(name) = caller {
                    req.extensions_mut().insert(Caller(name));
                }
                // The service that was polled ready answers; a fresh clone waits for the next.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Answer::Allowed {
                    inner: crate::trace::scope(id.clone(), ready.call(req)),
                    id: Some(id),
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
    /// A call's answer: the service's, run with the request id as the current one and stamped
    /// with it; or the refusal. A plain future in the connection's task (not boxed: this is
    /// every request's path).
    #[project = AnswerProj]
    pub enum Answer<F> {
        /// Let through.
        Allowed {
            #[pin]
            inner: tokio::task::futures::TaskLocalFuture<http::HeaderValue, F>,
            id: Option<http::HeaderValue>,
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
            AnswerProj::Allowed { inner, id } => {
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
