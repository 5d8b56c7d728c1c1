//! The admin HTTP API (DESIGN 6), on actix-web.
//!
//! | route | does |
//! |---|---|
//! | `GET /` | the presence page (`page.rs`; served without the token, it holds no data) |
//! | `GET /v1/events` | the page's live feed, server-sent events (`sse.rs`) |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while serving, 503 once shutdown began (the lame duck included) or, in a cluster, while Redis does not answer |
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /v1/objects` | the hub's objects |
//! | `POST /v1/objects` `{"name","value"}` | publish: 201, or 200 when the identical object was present |
//! | `PUT /v1/objects/{name}` `{"value"}` | update: 200, 404 when no object has the name |
//! | `DELETE /v1/objects/{name}[?value=]` | delete: 204, 404 when nothing matched |
//! | `GET /v1/sessions` | open sessions: PeerName, mesh, address, the three flags, since, relayed objects |
//! | `GET /v1/sessions/{peer-name}` | one session: the above, its WATCH_LIST (in force, applied/rejected and why), its view (objects, bytes, watched peers present and left out): 200, 404 |
//! | `DELETE /v1/sessions/{peer-name}[?block=true]` | disconnect (close_notify): 204, 404; with `block=true` also block the PeerName (as `PUT /v1/blocked/…`): 200 `{"peer_name","blocked","disconnected"}` |
//! | `POST /v1/sessions/{peer-name}/messages` `{"mime_type","value"}` | send an APPLICATION_DEFINED_MESSAGE: 202 |
//! | `GET /v1/messages` | the latest messages peers addressed to the hub |
//! | `POST /v1/reload` (no body, or `{}`) | read the hub certificate and key, the CA bundle and the CRLs again and swap them in (as SIGHUP; DESIGN 10); live sessions the new files refuse are closed: 200 with what is in force and what was closed, 422 naming the file when a file cannot be used (nothing changed) |
//! | `GET /v1/blocked` | the block list: PeerName, reason, since |
//! | `PUT /v1/blocked/{peer-name}` (no body, or `{"reason"}`) | block a PeerName whatever CA signed it (in a cluster, on every hub): refused at the handshake from now on, its session closed: 201, 200 when blocked already (reason replaced), 409 when the list is full |
//! | `DELETE /v1/blocked/{peer-name}` | lift a block: 204, 404 when not blocked |
//! | `GET /v1/cluster` | in a cluster (DESIGN 8): this hub's node, whether Redis answers, and every registered hub with its peers and lease; 404 for a hub alone, 503 when Redis does not answer |
//! | `POST /v1/drain` (no body, or `{}`) | start the shutdown as SIGTERM does (DESIGN 11: lame duck, paced drain, hand-off; the process exits at its end): 202 with the phase and the settings, 200 when it had begun already |
//!
//! JSON in and out; errors are `{"error": "…"}` with 400 (bad input), 401 (token missing
//! or wrong), 403 (see below), 404, 409 (the block list is full), 413 (body above
//! `admin.max_body_bytes`, or a change that would take the hub's objects over
//! `hub.max_objects_bytes`), 415 (see below), 422 (a reload whose files cannot be used), 500
//! (not durable) or 503. With `admin.token` set, every route but `/healthz`, `/readyz` and
//! the page's document at `/` (which holds no data) needs `Authorization: Bearer <token>`.
//! Object changes are acknowledged only once persisted and served by every worker.
//!
//! **Web pages cannot drive it** (`guard.rs`, one middleware before routing, so every route,
//! also one added later, is covered): every POST, PUT (any method but GET, HEAD, OPTIONS and
//! DELETE) must carry `Content-Type: application/json`, even without a body, and a DELETE
//! may carry a body or a `Content-Type` only as JSON (415 otherwise), so a cross-site form
//! or `fetch` never gets through without a CORS preflight, which this server never grants.
//! Without `admin.token`, a request whose `Host` is neither a loopback name nor the bound
//! address (DNS rebinding), or whose `Origin` is not that same address, gets 403; with a
//! token, the token is the protection. The checks run before the token's (so a refused
//! request gets 403/415 whatever its token).

mod guard;
mod identities;
mod page;
mod sse;

use std::future::{ready, Ready};
use std::net::SocketAddr;

use actix_web::dev::Server;
use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{web, App, FromRequest, HttpRequest, HttpResponse, HttpServer, ResponseError};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::hub::{HubError, HubHandle, SendError};
use crate::metrics;
use crate::protocol::wire::Object;
use crate::tls::PeerName;

/// What the admin server serves from.
#[derive(Clone)]
pub struct AdminState {
    /// The hub.
    pub hub: HubHandle,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Bearer token required on `/v1/*` and `/metrics`, if set.
    pub token: Option<String>,
}

/// An error answered as `{"error": …}`.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    message: String,
}

impl AdminError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({ "error": self.message }))
    }
}

impl From<HubError> for AdminError {
    fn from(e: HubError) -> Self {
        let status = match &e {
            HubError::NotFound(_) => StatusCode::NOT_FOUND,
            HubError::TooLarge { .. } => {
                // A limit that rejects is counted (DESIGN 7): hub.max_objects_bytes.
                metrics::count_reason(metrics::ADMIN_REJECTED, "hub_objects_budget");
                StatusCode::PAYLOAD_TOO_LARGE
            }
            HubError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HubError::Stopped | HubError::Cluster(_) | HubError::Unreplicated(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        Self::new(status, e.to_string())
    }
}

/// Proof that the request carries the admin token (or that none is configured).
struct Authorized;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequest for Authorized {
    type Error = AdminError;
    type Future = Ready<std::result::Result<Self, AdminError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AdminState>>() else {
            return ready(Err(AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "admin state missing",
            )));
        };
        let Some(token) = &state.token else {
            return ready(Ok(Authorized));
        };
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => {
                ready(Ok(Authorized))
            }
            _ => {
                metrics::count_reason(metrics::ADMIN_REJECTED, "unauthorized");
                ready(Err(AdminError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token",
                )))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewObject {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewValue {
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectQuery {
    #[serde(default)]
    block: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutgoingMessage {
    mime_type: String,
    value: String,
}

type Result<T> = std::result::Result<T, AdminError>;

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AdminState>) -> HttpResponse {
    if !state.hub.serving() {
        HttpResponse::ServiceUnavailable().json(json!({
            "status": "shutting down",
            "phase": state.hub.shutdown_phase(),
        }))
    } else if !state.hub.cluster_ready() {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "no working connection to the cluster's Redis"}))
    } else {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    }
}

/// `POST /v1/drain` (no body, or `{}`): starts the shutdown as SIGTERM does (DESIGN 11);
/// 202 when it began now, 200 when it had begun already; both with the phase and the
/// settings it runs with.
async fn drain(
    _: Authorized,
    state: web::Data<AdminState>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let config = state.hub.config();
    let identities::Empty {} = identities::optional_body(body, config.admin.max_body_bytes).await?;
    let began = state.hub.drain();
    if began {
        tracing::info!("POST /v1/drain: shutting down");
    }
    let status = if began {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let shutdown = &config.shutdown;
    let handoff = config.cluster.as_ref().map(|c| c.handoff);
    Ok(HttpResponse::build(status).json(json!({
        "phase": state.hub.shutdown_phase(),
        "lame_duck": humantime::format_duration(shutdown.lame_duck).to_string(),
        "drain_rate": shutdown.drain_rate,
        "grace": humantime::format_duration(shutdown.grace).to_string(),
        "handoff": handoff.map(|h| humantime::format_duration(h).to_string()),
    })))
}

/// `GET /v1/cluster`: this hub's node and the live hubs with their peers and leases.
async fn cluster(_: Authorized, state: web::Data<AdminState>) -> Result<HttpResponse> {
    let Some(store) = state.hub.cluster() else {
        return Err(AdminError::new(
            StatusCode::NOT_FOUND,
            "this hub is not part of a cluster",
        ));
    };
    let hubs = store
        .hubs()
        .await
        .map_err(|e| AdminError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({
        "node": store.node(),
        "redis_available": store.redis_available(),
        "hubs": hubs,
    })))
}

async fn metrics_text(_: Authorized, state: web::Data<AdminState>) -> HttpResponse {
    let mut text = state.prometheus.render();
    text.push_str(&metrics::certificate_expiry_text(
        &state.hub.certificate_expiries(),
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

async fn list_objects(_: Authorized, state: web::Data<AdminState>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.hub.list().await?))
}

async fn publish_object(
    _: Authorized,
    state: web::Data<AdminState>,
    body: web::Json<NewObject>,
) -> Result<HttpResponse> {
    let NewObject { name, value } = body.into_inner();
    let object = Object::new(name, value);
    let outcome = state.hub.publish(object.clone()).await?;
    let status = if outcome.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(object))
}

async fn update_object(
    _: Authorized,
    state: web::Data<AdminState>,
    name: web::Path<String>,
    body: web::Json<NewValue>,
) -> Result<HttpResponse> {
    let object = Object::new(name.into_inner(), body.into_inner().value);
    state.hub.update(object.clone()).await?;
    Ok(HttpResponse::Ok().json(object))
}

async fn delete_object(
    _: Authorized,
    state: web::Data<AdminState>,
    name: web::Path<String>,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse> {
    state.hub.delete(&name, query.value.as_deref()).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn list_sessions(_: Authorized, state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(state.hub.sessions())
}

fn peer_name(raw: &str) -> Result<PeerName> {
    PeerName::parse(raw).ok_or_else(|| {
        metrics::count_reason(metrics::ADMIN_REJECTED, "bad_request");
        AdminError::new(
            StatusCode::BAD_REQUEST,
            format!("{raw:?} is not a PeerName (40 hex digits)"),
        )
    })
}

async fn session_detail(
    _: Authorized,
    state: web::Data<AdminState>,
    peer: web::Path<String>,
) -> Result<HttpResponse> {
    let peer = peer_name(&peer)?;
    match state.hub.session_detail(&peer).await? {
        Some(detail) => Ok(HttpResponse::Ok().json(detail)),
        None => Err(AdminError::new(
            StatusCode::NOT_FOUND,
            format!("no session for {peer}"),
        )),
    }
}

async fn disconnect_session(
    _: Authorized,
    state: web::Data<AdminState>,
    peer: web::Path<String>,
    query: web::Query<DisconnectQuery>,
) -> Result<HttpResponse> {
    let peer = peer_name(&peer)?;
    if query.block {
        // Blocking closes the session (here, or on its hub in a cluster).
        let blocked = state.hub.block(peer.clone(), None).await?;
        return Ok(HttpResponse::Ok().json(json!({
            "peer_name": peer,
            "blocked": true,
            "disconnected": blocked.disconnected,
        })));
    }
    if state.hub.disconnect(&peer, "admin") {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(AdminError::new(
            StatusCode::NOT_FOUND,
            format!("no session for {peer}"),
        ))
    }
}

async fn send_message(
    _: Authorized,
    state: web::Data<AdminState>,
    peer: web::Path<String>,
    body: web::Json<OutgoingMessage>,
) -> Result<HttpResponse> {
    let peer = peer_name(&peer)?;
    let OutgoingMessage { mime_type, value } = body.into_inner();
    match state.hub.send_message(&peer, &mime_type, &value).await {
        Ok(()) => Ok(HttpResponse::Accepted().json(json!({"status": "queued"}))),
        Err(e @ SendError::NotConnected) => {
            Err(AdminError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ SendError::TooLarge) => Err(AdminError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            e.to_string(),
        )),
        Err(e @ SendError::QueueFull) => Err(AdminError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

async fn hub_messages(_: Authorized, state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(state.hub.hub_messages())
}

async fn not_found() -> Result<HttpResponse> {
    Err(AdminError::new(StatusCode::NOT_FOUND, "no such route"))
}

fn json_error(err: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let (status, reason) = match &err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        }
        // The guard refuses these first; the extractor agrees, should a route ever be
        // reached another way.
        JsonPayloadError::ContentType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "content_type"),
        _ => (StatusCode::BAD_REQUEST, "bad_request"),
    };
    metrics::count_reason(metrics::ADMIN_REJECTED, reason);
    AdminError::new(status, err.to_string()).into()
}

fn query_error(err: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    metrics::count_reason(metrics::ADMIN_REJECTED, "bad_request");
    AdminError::new(StatusCode::BAD_REQUEST, err.to_string()).into()
}

/// Binds the admin server and returns it (not yet polled) with its bound address.
///
/// # Errors
/// The bind error.
pub fn server(
    state: AdminState,
    listen: SocketAddr,
    max_body_bytes: usize,
) -> std::io::Result<(Server, SocketAddr)> {
    // Bound first, so the guard knows the real address (port 0 resolved) before any
    // request arrives.
    let listener = std::net::TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let policy = web::Data::new(guard::Policy::new(state.token.is_some(), addr));
    let streams = web::Data::new(sse::EventStreams::new(
        state.hub.config().admin.max_event_streams,
    ));
    let data = web::Data::new(state);
    let http = HttpServer::new(move || {
        App::new()
            // Before routing: every route, the default service and routes added later.
            .wrap(from_fn(guard::guard))
            .app_data(policy.clone())
            .app_data(data.clone())
            .app_data(streams.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body_bytes)
                    .content_type_required(true)
                    .content_type(|mime| guard::is_json(&mime))
                    .error_handler(json_error),
            )
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .route("/", web::get().to(page::page))
            .route("/v1/events", web::get().to(sse::events))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics_text))
            .route("/v1/cluster", web::get().to(cluster))
            .route("/v1/objects", web::get().to(list_objects))
            .route("/v1/objects", web::post().to(publish_object))
            .route("/v1/objects/{name}", web::put().to(update_object))
            .route("/v1/objects/{name}", web::delete().to(delete_object))
            .route("/v1/sessions", web::get().to(list_sessions))
            .route("/v1/sessions/{peer}", web::get().to(session_detail))
            .route("/v1/sessions/{peer}", web::delete().to(disconnect_session))
            .route("/v1/sessions/{peer}/messages", web::post().to(send_message))
            .route("/v1/messages", web::get().to(hub_messages))
            .route("/v1/reload", web::post().to(identities::reload))
            .route("/v1/drain", web::post().to(drain))
            .route("/v1/blocked", web::get().to(identities::list_blocked))
            .route("/v1/blocked/{peer}", web::put().to(identities::block))
            .route("/v1/blocked/{peer}", web::delete().to(identities::unblock))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?;
    Ok((http.run(), addr))
}
