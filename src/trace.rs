//! What ties a client's error to the server's log: every request has an id (the client's
//! `x-request-id` when it sends a sane one, else a new one), which the response carries in its
//! `x-request-id` header and which every log line of the request names; an error whose detail
//! stays in the log (a database's words, an internal failure) names it in its message too.
//! And warnings that clients cause — bad tokens, bad requests — are rate-limited per kind, so
//! that a misbehaving client cannot flood the log.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The header both transports read and answer with.
pub const REQUEST_ID_HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The request's id, as the header value it is answered with (a clone is a reference
    /// count: the request path copies no string for it).
    static REQUEST_ID: http::HeaderValue;
}

/// A new request id: 16 hex digits, a per-process random prefix and a counter.
pub fn new_request_id() -> String {
    String::from_utf8(new_id_bytes().to_vec()).unwrap_or_default()
}

fn new_id_bytes() -> [u8; 16] {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        if getrandom::fill(&mut b).is_err() {
            // No randomness: the process id and the clock still tell processes apart.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            return std::process::id() ^ t;
        }
        u32::from_le_bytes(b)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // By hand, not format!: this runs on every request, and the formatting machinery cost
    // about 1,400 instructions of a request's 120,000 (callgrind, docs/benchmarks.md).
    let v = (u64::from(prefix) << 32) | (n & 0xffff_ffff);
    let mut hex = [0u8; 16];
    for (i, h) in hex.iter_mut().enumerate() {
        *h = b"0123456789abcdef"[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    hex
}

/// The client's `x-request-id` when it is one we can log and echo (1-64 of `A-Z a-z 0-9 - _
/// .`), else a new one; as the header value the response carries.
pub fn request_id_from(header: Option<&http::HeaderValue>) -> http::HeaderValue {
    match header {
        Some(h)
            if !h.is_empty()
                && h.len() <= 64
                && h.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b)) =>
        {
            h.clone()
        }
        _ => http::HeaderValue::from_bytes(&new_id_bytes()).unwrap_or_else(|_| http::HeaderValue::from_static("0")),
    }
}

/// A request id as text, for a log line (ids are ASCII by construction).
pub fn shown(id: &http::HeaderValue) -> &str {
    id.to_str().unwrap_or_default()
}

/// `f` with `id` as the current request id (the future itself: nothing boxed or moved again).
pub fn scope<F: std::future::Future>(
    id: http::HeaderValue,
    f: F,
) -> tokio::task::futures::TaskLocalFuture<http::HeaderValue, F> {
    REQUEST_ID.scope(id, f)
}

/// The request id on a response. Marked sensitive, which HTTP/2 encodes as a literal never
/// indexed: a value that never repeats would only churn both sides' HPACK tables
/// (docs/benchmarks.md).
pub fn stamp<B>(r: &mut http::Response<B>, mut id: http::HeaderValue) {
    id.set_sensitive(true);
    r.headers_mut().insert(REQUEST_ID_HEADER, id);
}

/// The span a request's job runs in on another thread (a compute or shadow thread), so that
/// a line logged there names the request: `request` with the field `request_id`. Made there,
/// from the id the job carries: the request's own task, where most requests compute inline,
/// pays nothing for it.
pub fn job_span(request_id: Option<&str>) -> tracing::Span {
    match request_id {
        Some(id) => tracing::info_span!("request", request_id = %id),
        None => tracing::Span::none(),
    }
}

/// The current request's id, when there is a request.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(|id| shown(id).to_owned()).ok()
}

/// The current request's id, or a new one for work no request asked for (so that a log line
/// and a message can still be matched).
pub fn request_id_or_new() -> String {
    current_request_id().unwrap_or_else(new_request_id)
}

/// Lets a few lines of a kind through each window and counts the rest; the first line after
/// a window says how many were left out.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u32,
    window: Duration,
    state: Mutex<Vec<(&'static str, Instant, u32, u64)>>,
}

/// Client-caused warnings: 10 of a kind every 10 seconds.
pub static CLIENT_WARNINGS: RateLimit = RateLimit::new(10, Duration::from_secs(10));

impl RateLimit {
    /// `per_window` lines of a kind every `window`.
    pub const fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new(Vec::new()),
        }
    }

    /// Whether a line of `kind` may be written now: `Some(n)` with the lines of this kind left
    /// out since the last one written, `None` to leave this one out.
    pub fn admit(&self, kind: &'static str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    fn admit_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = if let Some(i) = state.iter().position(|s| s.0 == kind) {
            i
        } else {
            state.push((kind, now, 0, 0));
            state.len() - 1
        };
        let (_, start, written, left_out) = &mut state[i];
        if now.duration_since(*start) >= self.window {
            *start = now;
            *written = 0;
        }
        if *written < self.per_window {
            *written += 1;
            Some(std::mem::take(left_out))
        } else {
            *left_out += 1;
            None
        }
    }
}

/// A log line a client caused, rate-limited by `kind`:
/// `client_event!(tracing::Level::WARN, "kind", fields..., "msg")`. The first line after some
/// were left out says how many (`left_out`).
#[macro_export]
macro_rules! client_event {
    ($level:expr, $kind:expr, $($rest:tt)+) => {
        if let Some(left_out) = $crate::trace::CLIENT_WARNINGS.admit($kind) {
            if left_out > 0 {
                tracing::event!($level, kind = $kind, left_out, $($rest)+);
            } else {
                tracing::event!($level, kind = $kind, $($rest)+);
            }
        }
    };
}

/// A duration in milliseconds for a log line, to a tenth: `load_ms=1.3`, not
/// `load_ms=1.2552329999999998`.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_gets_its_lines_per_window_then_a_count() {
        let limit = RateLimit::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at("a", t0), Some(0));
        assert_eq!(limit.admit_at("a", t0), Some(0));
        assert_eq!(limit.admit_at("a", t0), None);
        assert_eq!(limit.admit_at("a", t0), None);
        assert_eq!(limit.admit_at("b", t0), Some(0), "kinds are counted apart");
        assert_eq!(limit.admit_at("a", t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(limit.admit_at("a", t0 + Duration::from_secs(10)), Some(0));
    }

    #[test]
    fn ids_are_new_unless_the_client_sent_a_sane_one() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(
            a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        // One process prefix, then a counter that grows.
        assert_eq!(a[..8], b[..8]);
        let count = |id: &str| u64::from_str_radix(&id[8..], 16).unwrap();
        assert!(count(&b) > count(&a), "{a} {b}");
        let header = |v: &str| http::HeaderValue::from_str(v).unwrap();
        assert_eq!(request_id_from(Some(&header("abc-123.X_y"))), "abc-123.X_y");
        assert_eq!(request_id_from(None).len(), 16);
        for bad in ["", "has space", "a\tb", &"x".repeat(65), "/etc/passwd", "caf\u{e9}"] {
            let bad = http::HeaderValue::from_bytes(bad.as_bytes()).unwrap();
            let got = request_id_from(Some(&bad));
            assert_ne!(got, bad);
            assert_eq!(got.len(), 16);
            assert!(shown(&got).bytes().all(|c| c.is_ascii_hexdigit()), "{got:?}");
        }
    }
}
