//! The request guard in front of every admin route: a web page the operator happens to
//! visit must not be able to drive or read the admin API.
//!
//! It is one middleware wrapped around the whole [`App`](actix_web::App), default service
//! included, so it runs before routing and covers every route, also those added later.
//! The decision itself is [`Policy::check`], a pure function of the method and headers.
//!
//! **Bodies must be JSON (415 otherwise).** A browser sends a cross-site POST without asking
//! first (no CORS preflight) only when its `Content-Type` is `text/plain`,
//! `application/x-www-form-urlencoded` or `multipart/form-data`; `application/json` always
//! needs a preflight, which this server never grants. So:
//! - every request whose method is not `GET`, `HEAD`, `OPTIONS` or `DELETE` (POST, PUT,
//!   PATCH, …) must carry `Content-Type: application/json` (parameters such as
//!   `; charset=utf-8` allowed), **even without a body**: a bodiless `POST` is exactly what a
//!   cross-site form can send;
//! - a `DELETE` that carries a `Content-Type` other than JSON, or a body without a JSON
//!   `Content-Type`, is refused; a bare `DELETE` is allowed (a cross-site `DELETE` always
//!   needs a preflight).
//!
//! **Without `admin.token`, only this machine's names (403 otherwise).** Then nothing but the
//! address protects the API, and a DNS-rebinding page (its own name, resolved to 127.0.0.1)
//! would be same-origin with it. So a request is served only when its `Host` names
//! - a loopback name: `localhost`, any address in 127.0.0.0/8, or `[::1]`, with any port
//!   or none (an SSH tunnel changes the port, never the name; a rebinding page cannot make
//!   its own name one of these), or
//! - the admin listen address as bound (port 0 resolved to the real port), with its port;
//!
//! and, when it carries an `Origin` (a browser sends one on every POST/PUT/DELETE and on
//! cross-origin reads), that origin is this very address: `http://` and the same host and
//! port the `Host` names. `Origin: null` (sandboxed frames, `file:` pages, redirects) is
//! foreign. A request without `Host` comes from no browser and is judged by its other
//! headers. The presence page passes: its requests are same-origin.
//!
//! **With `admin.token`, the token is the protection**: `Host` and `Origin` are not checked.
//! A foreign page can neither read the token (it lives in the page's own `sessionStorage`)
//! nor send an `Authorization` header cross-site without a preflight, and a hub reachable
//! by names and TLS proxies (whose pages have `https://` origins) cannot list them all.
//! The body rule above still applies.
//!
//! Every refusal is counted in `p2ppi_admin_rejected_total{reason="host"|"origin"|
//! "content_type"}` and logged at warn once per episode of its reason: a refusal that comes
//! within [`REFUSALS_QUIET`] of the previous one for the same reason is counted, not logged.
//! Keying the log on the offending value would not do: a page chooses it per request (a
//! new multipart boundary with every cross-site FormData POST, a new name of its wildcard
//! domain with every rebound request), and could write a log line per request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use tracing::warn;

use super::AdminError;
use crate::metrics;

/// Longest piece of an offending header value quoted in an error or a log line.
const QUOTED_MAX_CHARS: usize = 80;

/// How long refusals of one reason must pause before the next is logged again (an episode
/// ends): a page retrying or flooding is one log line, its requests are counted.
pub(super) const REFUSALS_QUIET: Duration = Duration::from_secs(10);

/// Why the guard refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Without a token: the `Host` is neither a loopback name nor the bound address.
    Host,
    /// Without a token: the `Origin` is not the address the request was sent to.
    Origin,
    /// A body or a mutating method without `Content-Type: application/json`.
    ContentType,
}

impl Refusal {
    /// The `reason` label of `p2ppi_admin_rejected_total`.
    fn reason(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Origin => "origin",
            Self::ContentType => "content_type",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::Host | Self::Origin => StatusCode::FORBIDDEN,
            Self::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the guard knows of the server: whether a token protects it, and where it is bound.
pub(super) struct Policy {
    token_set: bool,
    bound: SocketAddr,
    /// When each [`Refusal`] last happened: one within [`REFUSALS_QUIET`] of it is counted,
    /// not logged.
    last_refused: Mutex<[Option<Instant>; 3]>,
}

impl Policy {
    /// The policy of a server bound to `bound`, with or without `admin.token`.
    pub(super) fn new(token_set: bool, bound: SocketAddr) -> Self {
        Self {
            token_set,
            bound,
            last_refused: Mutex::new([None, None, None]),
        }
    }

    /// Judges a request by its method and headers (see the module doc), returning the
    /// refusal and the offending value.
    pub(super) fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<(), (Refusal, String)> {
        if !self.token_set {
            self.check_host_and_origin(headers)?;
        }
        check_content_type(method, headers)
    }

    fn check_host_and_origin(&self, headers: &HeaderMap) -> Result<(), (Refusal, String)> {
        let host = match single(headers, &header::HOST) {
            Single::Absent => None,
            Single::One(value) => {
                let authority = parse_host(value)
                    .filter(|a| self.allowed(a))
                    .ok_or_else(|| (Refusal::Host, value.to_owned()))?;
                Some(authority)
            }
            Single::Invalid(value) => return Err((Refusal::Host, value)),
        };
        match single(headers, &header::ORIGIN) {
            Single::Absent => Ok(()),
            Single::One(origin) if same_origin(origin, host.as_ref()) => Ok(()),
            Single::One(origin) => Err((Refusal::Origin, origin.to_owned())),
            Single::Invalid(origin) => Err((Refusal::Origin, origin)),
        }
    }

    /// A loopback name with any port, or the bound address with its port.
    fn allowed(&self, (host, port): &Authority) -> bool {
        let ip = match host {
            url::Host::Domain(name) => return name == "localhost",
            url::Host::Ipv4(ip) => IpAddr::V4(*ip),
            url::Host::Ipv6(ip) => IpAddr::V6(*ip),
        };
        ip.to_canonical().is_loopback() || (ip == self.bound.ip() && *port == self.bound.port())
    }

    /// Counts a refusal, logs it when it begins an episode, and answers it.
    fn refuse(&self, refusal: Refusal, value: &str) -> AdminError {
        metrics::count_reason(metrics::ADMIN_REJECTED, refusal.reason());
        let quoted = quote(value);
        let message = match refusal {
            Refusal::Host => format!(
                "Host {quoted} is neither a loopback name nor this server's address \
                 {}; without admin.token nothing else is served (DNS rebinding)",
                self.bound
            ),
            Refusal::Origin => format!(
                "Origin {quoted} is not this server's own address; without admin.token \
                 requests from other web pages are refused"
            ),
            Refusal::ContentType => format!(
                "Content-Type {quoted}: the admin API takes application/json only \
                 (a web page cannot send it without permission)"
            ),
        };
        if self.begins_episode(refusal, Instant::now()) {
            warn!(
                reason = refusal.reason(),
                "admin request refused: {message} (more refusals for this reason are counted in p2ppi_admin_rejected_total, and logged again after {}s without one)",
                REFUSALS_QUIET.as_secs()
            );
        }
        AdminError::new(refusal.status(), message)
    }

    /// Whether a refusal at `now` begins an episode of its reason (and so is logged): none
    /// of that reason for [`REFUSALS_QUIET`] before it. Remembers it.
    fn begins_episode(&self, refusal: Refusal, now: Instant) -> bool {
        let mut last = self.last_refused.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut last[refusal.index()];
        let begins = slot.is_none_or(|at| now.saturating_duration_since(at) >= REFUSALS_QUIET);
        *slot = Some(now);
        begins
    }
}

/// The middleware: judges every request before routing.
///
/// # Errors
/// Those of the wrapped service; a refusal is an answer, not an error.
pub(super) async fn guard(
    policy: web::Data<Policy>,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Err((refusal, value)) = policy.check(req.method(), req.headers()) {
        let response = policy.refuse(refusal, &value).error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// A host (lower-cased, IDNA-normalised, IP literals parsed) and a port (80 when absent).
type Authority = (url::Host<String>, u16);

/// `Host: name[:port]` parsed by the same URL parser as an `Origin`, so both compare
/// equal when they name the same place; `None` unless it is exactly a host and a port.
fn parse_host(value: &str) -> Option<Authority> {
    let url = url::Url::parse(&format!("http://{value}/")).ok()?;
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    Some((url.host()?.to_owned(), url.port_or_known_default()?)).filter(|_| bare)
}

/// Whether `origin` is `http://` and the very host and port the request was sent to.
fn same_origin(origin: &str, host: Option<&Authority>) -> bool {
    let Some((host, port)) = host else {
        return false;
    };
    url::Url::parse(origin).is_ok_and(|url| {
        url.scheme() == "http"
            && url.host().map(|h| h.to_owned()).as_ref() == Some(host)
            && url.port_or_known_default() == Some(*port)
    })
}

/// The body rule of the module doc.
fn check_content_type(method: &Method, headers: &HeaderMap) -> Result<(), (Refusal, String)> {
    if [Method::GET, Method::HEAD, Method::OPTIONS].contains(method) {
        return Ok(());
    }
    let content_type = single(headers, &header::CONTENT_TYPE);
    let json = matches!(content_type, Single::One(value) if is_json_text(value));
    let required =
        *method != Method::DELETE || !matches!(content_type, Single::Absent) || has_body(headers);
    if required && !json {
        let value = match content_type {
            Single::Absent => "(none)".to_owned(),
            Single::One(value) => value.to_owned(),
            Single::Invalid(value) => value,
        };
        return Err((Refusal::ContentType, value));
    }
    Ok(())
}

/// Whether a media type is JSON: `application/json`, parameters allowed. The one test of
/// JSON bodies, shared with the JSON extractor's configuration.
pub(super) fn is_json(mime: &mime::Mime) -> bool {
    mime.essence_str() == mime::APPLICATION_JSON.essence_str()
}

fn is_json_text(value: &str) -> bool {
    value.parse::<mime::Mime>().is_ok_and(|m| is_json(&m))
}

/// A body is announced by a non-zero `Content-Length` or any `Transfer-Encoding`.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .any(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0))
}

/// A header that must appear at most once, as text.
enum Single<'a> {
    Absent,
    One(&'a str),
    /// Repeated, or not visible ASCII: refused, with what can be shown of it.
    Invalid(String),
}

fn single<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Single<'a> {
    let mut values = headers.get_all(name);
    match (values.next(), values.next()) {
        (None, _) => Single::Absent,
        (Some(value), None) => match value.to_str() {
            Ok(text) => Single::One(text),
            Err(_) => Single::Invalid(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        },
        (Some(first), Some(_)) => Single::Invalid(format!(
            "{} (repeated)",
            String::from_utf8_lossy(first.as_bytes())
        )),
    }
}

/// A header value as it may appear in an answer or a log: quoted, escaped, bounded.
fn quote(value: &str) -> String {
    let mut shown: String = value.chars().take(QUOTED_MAX_CHARS).collect();
    if shown.len() < value.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn loopback() -> Policy {
        Policy::new(false, "127.0.0.1:9350".parse().unwrap())
    }

    fn verdict(policy: &Policy, method: Method, pairs: &[(&str, &str)]) -> Option<Refusal> {
        policy
            .check(&method, &headers(pairs))
            .err()
            .map(|(refusal, _)| refusal)
    }

    #[test]
    fn loopback_names_with_any_port_and_the_bound_address_are_served() {
        let policy = loopback();
        for host in [
            "localhost",
            "localhost:9350",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:9350",
            "127.1.2.3:9350",
            "[::1]",
            "[::1]:9350",
            "[::ffff:127.0.0.1]:9350",
        ] {
            assert_eq!(
                verdict(&policy, Method::GET, &[("host", host)]),
                None,
                "{host}"
            );
        }
        // Beyond loopback only the bound address itself, with its port.
        let bound = Policy::new(false, "192.0.2.7:9350".parse().unwrap());
        assert_eq!(
            verdict(&bound, Method::GET, &[("host", "192.0.2.7:9350")]),
            None
        );
        for host in ["192.0.2.7", "192.0.2.7:9351", "192.0.2.8:9350"] {
            assert_eq!(
                verdict(&bound, Method::GET, &[("host", host)]),
                Some(Refusal::Host),
                "{host}"
            );
        }
    }

    #[test]
    fn foreign_hosts_are_refused_without_a_token() {
        let policy = loopback();
        for host in [
            "rebound.example:9350",
            "rebound.example",
            "localhost.rebound.example",
            "127.0.0.1.rebound.example:9350",
            "192.0.2.7:9350",
            "user@127.0.0.1:9350",
            "127.0.0.1:9350/x",
            "127.0.0.1:notaport",
            "",
        ] {
            assert_eq!(
                verdict(&policy, Method::GET, &[("host", host)]),
                Some(Refusal::Host),
                "{host:?}"
            );
        }
        let twice = [("host", "127.0.0.1:9350"), ("host", "127.0.0.1:9350")];
        assert_eq!(verdict(&policy, Method::GET, &twice), Some(Refusal::Host));
    }

    #[test]
    fn only_the_same_origin_is_served_without_a_token() {
        let policy = loopback();
        let same = [
            ("127.0.0.1:9350", "http://127.0.0.1:9350"),
            ("localhost:9350", "http://localhost:9350"),
            ("LOCALHOST:9350", "http://localhost:9350"),
            ("[::1]:9350", "http://[::1]:9350"),
            ("localhost", "http://localhost"),
            ("localhost:80", "http://localhost"),
        ];
        for (host, origin) in same {
            let h = [("host", host), ("origin", origin)];
            assert_eq!(verdict(&policy, Method::GET, &h), None, "{host} {origin}");
        }
        let foreign = [
            ("127.0.0.1:9350", "http://localhost:9350"),
            ("127.0.0.1:9350", "http://127.0.0.1:9351"),
            ("127.0.0.1:9350", "https://127.0.0.1:9350"),
            ("127.0.0.1:9350", "http://attacker.example"),
            ("127.0.0.1:9350", "null"),
            ("127.0.0.1:9350", ""),
        ];
        for (host, origin) in foreign {
            let h = [("host", host), ("origin", origin)];
            assert_eq!(
                verdict(&policy, Method::GET, &h),
                Some(Refusal::Origin),
                "{host} {origin}"
            );
        }
        // Without a Host there is nothing to be the same origin as.
        assert_eq!(
            verdict(&policy, Method::GET, &[("origin", "http://127.0.0.1:9350")]),
            Some(Refusal::Origin)
        );
        assert_eq!(verdict(&policy, Method::GET, &[]), None);
    }

    #[test]
    fn with_a_token_host_and_origin_are_not_judged() {
        let policy = Policy::new(true, "0.0.0.0:9350".parse().unwrap());
        let h = [
            ("host", "hub.example:443"),
            ("origin", "https://hub.example"),
        ];
        assert_eq!(verdict(&policy, Method::GET, &h), None);
        let text = [("host", "hub.example"), ("content-type", "text/plain")];
        assert_eq!(
            verdict(&policy, Method::POST, &text),
            Some(Refusal::ContentType),
            "the body rule holds with a token too"
        );
    }

    #[test]
    fn mutating_methods_need_json() {
        let policy = loopback();
        let host = ("host", "127.0.0.1:9350");
        let json = [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ];
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            for ct in json {
                assert_eq!(
                    verdict(&policy, method.clone(), &[host, ("content-type", ct)]),
                    None,
                    "{method} {ct}"
                );
            }
        }
        let not_json = [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/problem+json",
            "application/jsonx",
            "",
        ];
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            for ct in not_json {
                assert_eq!(
                    verdict(&policy, method.clone(), &[host, ("content-type", ct)]),
                    Some(Refusal::ContentType),
                    "{method} {ct:?}"
                );
            }
        }
        // Bodiless POST and PUT still need it (a form can send them).
        for method in [Method::POST, Method::PUT] {
            assert_eq!(
                verdict(&policy, method.clone(), &[host]),
                Some(Refusal::ContentType)
            );
            assert_eq!(
                verdict(&policy, method, &[host, ("content-length", "0")]),
                Some(Refusal::ContentType)
            );
        }
        let twice = [
            host,
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
        ];
        assert_eq!(
            verdict(&policy, Method::POST, &twice),
            Some(Refusal::ContentType)
        );
    }

    #[test]
    fn a_bare_delete_is_allowed_one_with_a_body_needs_json() {
        let policy = loopback();
        let host = ("host", "127.0.0.1:9350");
        assert_eq!(verdict(&policy, Method::DELETE, &[host]), None);
        assert_eq!(
            verdict(&policy, Method::DELETE, &[host, ("content-length", "0")]),
            None
        );
        for body in [("content-length", "5"), ("transfer-encoding", "chunked")] {
            assert_eq!(
                verdict(&policy, Method::DELETE, &[host, body]),
                Some(Refusal::ContentType),
                "{body:?}"
            );
            let json = [host, body, ("content-type", "application/json")];
            assert_eq!(verdict(&policy, Method::DELETE, &json), None, "{body:?}");
        }
        // Reads are never judged by their body headers.
        let text = [
            host,
            ("content-type", "text/plain"),
            ("content-length", "3"),
        ];
        assert_eq!(verdict(&policy, Method::GET, &text), None);
    }

    #[test]
    fn a_refusal_is_logged_once_per_episode_of_its_reason() {
        let policy = loopback();
        let t = Instant::now();
        assert!(policy.begins_episode(Refusal::Host, t));
        let soon = t + Duration::from_secs(1);
        assert!(!policy.begins_episode(Refusal::Host, soon), "a repeat");
        assert!(
            policy.begins_episode(Refusal::Origin, soon),
            "another reason"
        );
        // Refusals that keep coming keep the episode going, however long it lasts.
        let mut at = soon;
        for _ in 0..5 {
            at += REFUSALS_QUIET / 2;
            assert!(!policy.begins_episode(Refusal::Host, at));
        }
        // A pause as long as REFUSALS_QUIET ends it.
        assert!(policy.begins_episode(Refusal::Host, at + REFUSALS_QUIET));
        let long = "x".repeat(500);
        let err = policy.refuse(Refusal::Origin, &long).to_string();
        assert!(err.len() < 300 && err.contains('…'), "{err}");
    }
}
