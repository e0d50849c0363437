//! A request hyper cannot parse (a header value holding a bare `\r`, as one cut from `curl -sI`
//! output keeps; a space in the path; a bad method) never reaches a route: hyper answers it
//! with a bare `400 Bad Request` of no body and closes the connection. [`Explained`] puts a
//! JSON body saying why in that answer's place, and the connection's end is logged
//! ([`log_parse_error`]), so neither the client nor the operator is left with an empty 400.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the client is told instead.
const MESSAGE: &str = "the request is not valid HTTP/1.1, so it was not read: a header line holds a \
                       character a header cannot carry (often a carriage return, \\r, left at the end of a value \
                       cut from `curl -sI` output: strip it with tr -d '\\r'), or the request line is malformed \
                       (a space or a control character in the path); see docs/http.md, \"Coming from the guides\"";

/// The answer that replaces hyper's bare 400.
fn explained_400() -> Vec<u8> {
    let reply = crate::error::Reply::new(crate::error::Kind::InvalidArgument, MESSAGE);
    let body = serde_json::to_string(&super::error::ErrorBody::of(&reply)).unwrap_or_default();
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: \
         close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether `buf` is hyper's own answer to a request it could not parse: a 400 with no body and
/// no content type (every 400 modeld's routes write carries a JSON body).
fn is_bare_400(buf: &[u8]) -> bool {
    let Some(rest) = buf.strip_prefix(b"HTTP/1.1 400 Bad Request\r\n") else {
        return false;
    };
    let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&rest[..end + 2]).to_ascii_lowercase();
    end + 4 == rest.len() && head.contains("content-length: 0\r\n") && !head.contains("content-type:")
}

/// An HTTP connection's IO, with hyper's bare 400 replaced by [`explained_400`].
pub struct Explained<S> {
    io: S,
    /// The replacement being written, how much of it is out, and how many bytes of hyper's
    /// answer it stands for.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

impl<S> Explained<S> {
    /// Wraps a connection.
    pub fn new(io: S) -> Self {
        Self { io, replacing: None }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Explained<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Explained<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            if !is_bare_400(buf) {
                return Pin::new(&mut this.io).poll_write(cx, buf);
            }
            this.replacing = Some((explained_400(), 0, buf.len()));
        }
        let Some((bytes, done, stands_for)) = this.replacing.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while *done < bytes.len() {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        // hyper closes the connection after this answer: nothing else is written.
        Poll::Ready(Ok(*stands_for))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Logs why an HTTP connection ended on an error a person can act on: a request hyper could
/// not parse (answered 400 by [`Explained`]).
pub fn log_parse_error(e: &hyper::Error) {
    if e.is_parse() {
        crate::client_event!(
            tracing::Level::WARN,
            "malformed_request",
            error = %e,
            "a client sent a request that is not valid HTTP/1.1 ({e}); answered 400 saying so. A carriage return \
             left in a header value (a value cut from `curl -sI` output) is a common cause"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_400_is_replaced() {
        assert!(is_bare_400(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 02:00:00 GMT\r\n\r\n"
        ));
        // modeld's own 400s carry a JSON body.
        assert!(!is_bare_400(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!is_bare_400(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{\"error\":1}"
        ));
        assert!(!is_bare_400(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        let answer = String::from_utf8(explained_400()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("tr -d"), "{v}");
    }
}
