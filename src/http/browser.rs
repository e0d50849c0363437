//! What a web page in an operator's browser may ask of the HTTP port.
//!
//! A browser sends some requests to any site without asking first ("simple" requests: a form
//! post, a `text/plain` fetch), and a page whose DNS name is rebound to this server's address
//! reads the answers as its own. Without tokens either would let any page the operator opens
//! change the registry. Three checks close it, before the access check:
//! - **Host**: the `Host` header must name this server: an IP address, a name public DNS
//!   cannot serve (one label, `localhost`, `.local`, `.internal`, `.home.arpa`), this machine's
//!   name, `--public-url`'s host or one of `--allowed-hosts` (a rebinding page's requests carry
//!   its own, public, name). On by default without tokens; with tokens (a rebinding
//!   page has none) only when `--allowed-hosts` is given.
//! - **Origin**: a request that predicts or changes something and carries an `Origin` (every
//!   browser sends one on such cross-site requests) must come from the server's own origin or
//!   one of `--allowed-origins`. The model-config route keeps its open CORS (devices and web
//!   views poll it from anywhere; it changes nothing).
//! - **Content type**: a change (an admin-scope route) may not carry a body as a form or
//!   `text/plain`, the types a browser sends without a preflight: send `application/json`.

use axum::http::{HeaderMap, Method, StatusCode, header};

use crate::auth::{Need, Scope};

/// The checks' settings (from [`crate::config::NetArgs`]).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Names answered besides IP addresses and `localhost` (lower case; `.example.com` for it
    /// and its subdomains); `None` answers any.
    hosts: Option<Vec<String>>,
    /// Origins allowed besides the server's own, as `scheme://host[:port]`.
    origins: Vec<String>,
    /// The port's scheme, for the server's own origin.
    scheme: &'static str,
}

impl Policy {
    /// The policy for a port (`tls` sets its scheme): hosts checked when `check_hosts` (no
    /// tokens) or when `allowed_hosts` is given, unless it holds `*`; `public_url`'s host and
    /// this machine's name are always answered.
    pub fn new(
        allowed_hosts: &[String],
        allowed_origins: &[String],
        public_url: &str,
        check_hosts: bool,
        tls: bool,
    ) -> Self {
        let any = allowed_hosts.iter().any(|h| h.trim() == "*");
        let hosts = if any || (!check_hosts && allowed_hosts.is_empty()) {
            None
        } else {
            let mut names: Vec<String> = allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
            let me = crate::app::hostname().to_ascii_lowercase();
            names.push(me.split('.').next().unwrap_or(&me).to_string());
            names.push(me);
            if let Some(h) = url::Url::parse(public_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            {
                names.push(h);
            }
            Some(names)
        };
        let mut origins: Vec<String> = allowed_origins.iter().filter_map(|o| origin_of(o)).collect();
        if let Some(o) = origin_of(public_url) {
            origins.push(o);
        }
        Self {
            hosts,
            origins,
            scheme: if tls { "https" } else { "http" },
        }
    }

    /// Whether the Host checks are on (for the start-up line).
    pub fn checks_hosts(&self) -> bool {
        self.hosts.is_some()
    }

    /// Whether a request may go on; the refusal (status and words) when not.
    ///
    /// # Errors
    /// 403 for a Host or an Origin this server does not answer, 415 for a change sent as a
    /// form or plain text.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let (Some(names), Some(h)) = (&self.hosts, host)
            && !host_answered(names, h)
        {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "this server does not answer to the host name {:?}; add it with --allowed-hosts (MODELD_ALLOWED_HOSTS)",
                    crate::error::cut(host_name(h), 80)
                ),
            ));
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || path == "/api/v1/model-config" {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().ok().and_then(origin_of);
            let own = host.and_then(|h| origin_of(&format!("{}://{h}", self.scheme)));
            let allowed = origin
                .as_ref()
                .is_some_and(|o| Some(o) == own.as_ref() || self.origins.contains(o));
            if !allowed {
                return Err((
                    StatusCode::FORBIDDEN,
                    "a web page of another origin may not send this request; allow its origin with --allowed-origins \
                     (MODELD_ALLOWED_ORIGINS)"
                        .into(),
                ));
            }
        }
        // The admin page's routes are the REST routes under /admin.
        let api = path
            .strip_prefix("/admin")
            .filter(|p| p.starts_with("/api/"))
            .unwrap_or(path);
        if crate::auth::http_need(method.as_str(), api) == Need::Scope(Scope::Admin)
            && let Some(t) = headers.get(header::CONTENT_TYPE)
        {
            let essence = t
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if matches!(
                essence.as_str(),
                "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
            ) {
                return Err((
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "a change is sent as JSON: Content-Type: application/json, not {}",
                        crate::error::cut(&essence, 40)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `scheme://host[:port]` of a URL or an origin, the default port left out; `None` for an
/// opaque origin (`null`) or what does not parse.
fn origin_of(text: &str) -> Option<String> {
    let u = url::Url::parse(text.trim()).ok()?;
    let o = u.origin();
    o.is_tuple().then(|| o.ascii_serialization())
}

/// The name of a Host header, without its port (an IPv6 address keeps its brackets).
fn host_name(host: &str) -> &str {
    let h = host.trim();
    if h.starts_with('[') {
        return h.find(']').map_or(h, |i| &h[..=i]);
    }
    h.rsplit_once(':').map_or(h, |(n, _)| n)
}

/// A name that public DNS cannot hand to a remote page, so no page can rebind it: a name of
/// one label (`modeld`, a Compose service or a Kubernetes short name), or one under
/// `localhost`, `local` (mDNS), `internal` or `home.arpa` (reserved for private networks).
fn private_name(name: &str) -> bool {
    !name.is_empty()
        && (!name.contains('.')
            || ["localhost", "local", "internal", "home.arpa"]
                .iter()
                .any(|suffix| name == *suffix || name.ends_with(&format!(".{suffix}"))))
}

fn host_answered(names: &[String], host: &str) -> bool {
    let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
    if name.starts_with('[') && name.ends_with(']') {
        return name[1..name.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() || private_name(&name) {
        return true;
    }
    names.iter().any(|n| {
        n.strip_prefix('.')
            .map_or(*n == name, |base| name == base || name.ends_with(&format!(".{base}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hosts_are_ip_addresses_localhost_and_the_named_ones() {
        let p = Policy::new(&[".corp.example".into(), "models.example".into()], &[], "", true, false);
        for ok in [
            "127.0.0.1:8000",
            "10.1.2.3",
            "[::1]:8000",
            "localhost:8000",
            "LOCALHOST",
            "api.localhost",
            "modeld:8000",
            "modeld.default.svc.cluster.local",
            "models.corp.internal",
            "models.example:443",
            "corp.example",
            "a.b.corp.example",
        ] {
            assert!(host_answered(p.hosts.as_ref().unwrap(), ok), "{ok}");
        }
        for refused in [
            "attacker.example:8000",
            "models.example.evil",
            "evilcorp.example",
            "[zz]",
        ] {
            assert!(!host_answered(p.hosts.as_ref().unwrap(), refused), "{refused}");
        }
        let open = Policy::new(&["*".into()], &[], "", true, false);
        assert!(!open.checks_hosts());
        let tokens = Policy::new(&[], &[], "", false, false);
        assert!(!tokens.checks_hosts());
    }

    #[test]
    fn cross_site_changes_are_refused_and_reads_are_not() {
        let p = Policy::new(&[], &["https://app.example".into()], "", true, false);
        let post = Method::POST;
        let evil = headers(&[("host", "127.0.0.1:8000"), ("origin", "https://evil.example")]);
        assert_eq!(
            p.check(&post, "/api/v1/models/1/activate", &evil).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            p.check(&post, "/v2/models/active/infer", &evil).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert!(p.check(&Method::GET, "/api/v1/models", &evil).is_ok());
        assert!(p.check(&post, "/api/v1/model-config", &evil).is_ok());
        let null = headers(&[("host", "127.0.0.1:8000"), ("origin", "null")]);
        assert!(p.check(&post, "/api/v1/models/1/activate", &null).is_err());
        let own = headers(&[("host", "127.0.0.1:8000"), ("origin", "http://127.0.0.1:8000")]);
        assert!(p.check(&post, "/api/v1/models/1/activate", &own).is_ok());
        let allowed = headers(&[("host", "127.0.0.1:8000"), ("origin", "https://app.example:443")]);
        assert!(p.check(&post, "/api/v1/models/1/activate", &allowed).is_ok());
        let rebound = headers(&[("host", "attacker.example:8000")]);
        assert!(p.check(&Method::GET, "/api/v1/models", &rebound).is_err());
    }

    #[test]
    fn changes_are_not_sent_as_forms() {
        let p = Policy::new(&[], &[], "", true, false);
        let form = headers(&[("host", "127.0.0.1"), ("content-type", "text/plain;charset=UTF-8")]);
        let refused = p.check(&Method::POST, "/api/v1/models/1/activate", &form).unwrap_err();
        assert_eq!(refused.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(p.check(&Method::POST, "/admin/api/v1/models", &form).is_err());
        // Predicting is not a change: Triton's curl examples send no content type.
        assert!(p.check(&Method::POST, "/v2/models/active/infer", &form).is_ok());
        let json = headers(&[("host", "127.0.0.1"), ("content-type", "application/json")]);
        assert!(p.check(&Method::POST, "/api/v1/models/1/activate", &json).is_ok());
    }
}
