//! The admin routes of identities over time (DESIGN 10): `POST /v1/reload` and the block
//! list (`GET /v1/blocked`, `PUT`/`DELETE /v1/blocked/{peer-name}`). The route table is in
//! the parent module's docs.
//!
//! Input is checked as an attacker would send it: the PeerName is 40 hex digits, the body
//! is `{}` or `{"reason": "…"}` only (unknown fields refused), the reason is bounded and free
//! of control characters, and the list is bounded (`blocklist.max_entries`); every refusal
//! is counted in `p2ppi_admin_rejected_total{reason}`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{peer_name, AdminError, AdminState, Authorized, Result};
use crate::blocklist::BlockError;
use crate::hub::ReloadError;
use crate::metrics;

/// The optional body of `PUT /v1/blocked/{peer-name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlockBody {
    reason: Option<String>,
}

impl From<BlockError> for AdminError {
    fn from(e: BlockError) -> Self {
        let (status, counted) = match &e {
            BlockError::ReasonTooLong { .. } | BlockError::ReasonControl => {
                (StatusCode::BAD_REQUEST, Some("bad_request"))
            }
            BlockError::Full { .. } => (StatusCode::CONFLICT, Some("blocklist_full")),
            BlockError::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
            BlockError::Cluster(_) | BlockError::Unreplicated(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, None)
            }
        };
        if let Some(reason) = counted {
            metrics::count_reason(metrics::ADMIN_REJECTED, reason);
        }
        Self::new(status, e.to_string())
    }
}

/// An optional JSON body: empty (no body) is the default; anything else must decode.
///
/// Read from the stream against `admin.max_body_bytes` here, not through actix's `Bytes`
/// extractor, whose own limit (256 KiB) would rule over the configured one and answer in
/// plain text, uncounted.
pub(super) async fn optional_body<T: serde::de::DeserializeOwned + Default>(
    mut payload: web::Payload,
    max: usize,
) -> Result<T> {
    use futures_util::StreamExt as _;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            metrics::count_reason(metrics::ADMIN_REJECTED, "bad_request");
            AdminError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
        })?;
        if body.len() + chunk.len() > max {
            metrics::count_reason(metrics::ADMIN_REJECTED, "body_too_large");
            return Err(AdminError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than admin.max_body_bytes ({max})"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        metrics::count_reason(metrics::ADMIN_REJECTED, "bad_request");
        AdminError::new(
            StatusCode::BAD_REQUEST,
            format!("Json deserialize error: {e}"),
        )
    })
}

/// Nothing, as a request body: `{}` or none.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Empty {}

/// `POST /v1/reload` (no body, or `{}`): the TLS files read again; 200 with what is in force
/// now, or 422 with the reason (nothing changed).
pub(super) async fn reload(
    _: Authorized,
    state: web::Data<AdminState>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let Empty {} = optional_body(body, state.hub.config().admin.max_body_bytes).await?;
    match state.hub.reload().await {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(e @ ReloadError::Tls(_)) => Err(AdminError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload failed, nothing changed: {e}"),
        )),
        Err(e @ ReloadError::Stopped) => Err(AdminError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// `GET /v1/blocked`.
pub(super) async fn list_blocked(_: Authorized, state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(state.hub.blocked())
}

/// `PUT /v1/blocked/{peer-name}` with an optional `{"reason": "…"}`: 201 when newly blocked,
/// 200 when it was blocked already (its reason replaced).
pub(super) async fn block(
    _: Authorized,
    state: web::Data<AdminState>,
    peer: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let peer = peer_name(&peer)?;
    let BlockBody { reason } = optional_body(body, state.hub.config().admin.max_body_bytes).await?;
    let blocked = state.hub.block(peer.clone(), reason).await?;
    let status = if blocked.added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(json!({
        "peer_name": peer,
        "blocked": true,
        "disconnected": blocked.disconnected,
    })))
}

/// `DELETE /v1/blocked/{peer-name}`: 204, or 404 when it was not blocked.
pub(super) async fn unblock(
    _: Authorized,
    state: web::Data<AdminState>,
    peer: web::Path<String>,
) -> Result<HttpResponse> {
    let peer = peer_name(&peer)?;
    if state.hub.unblock(&peer).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(AdminError::new(
            StatusCode::NOT_FOUND,
            format!("{peer} is not blocked"),
        ))
    }
}
