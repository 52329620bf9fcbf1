use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Every API error: an HTTP status and a JSON body with a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The JSON body of an error.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

/// `{code, message}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `internal`.
    pub code: &'static str,
    /// For humans.
    pub message: String,
}

impl ApiError {
    /// Bad request (400).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// Unauthenticated (401).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// Forbidden (403).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// Not found (404).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// Conflict (409).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// An internal error (500). The detail is logged; the client gets a
    /// generic message so that internals such as paths and SQL never leak.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the gateway log has the details",
        )
    }

    /// The gate's own machinery (the store, the audit log) failed, so it
    /// refused: nothing was done and the caller may retry (the database
    /// restarting, a failover). The detail (addresses, SQL) stays in the
    /// log.
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "storage failed; refused");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "gavel's store does not answer, so nothing was let through; retry shortly (a decision on a request may or may not have been saved: check the request before deciding again)",
        )
    }

    /// An error for `status`, with the stable code that status maps to.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let code = match status.as_u16() {
            400 | 422 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            409 => "conflict",
            413 => "payload_too_large",
            415 => "unsupported_media_type",
            s if s >= 500 => "internal",
            _ => "error",
        };
        Self::new(status, code, message)
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<gavel_core::Error> for ApiError {
    fn from(e: gavel_core::Error) -> Self {
        match e.source_kind() {
            gavel_core::ErrorSource::Caller => ApiError::bad_request(e.to_string()),
            // The store or the audit log failed: the gate refused, nothing
            // was done, and the caller may retry (the database restarting,
            // a failover). The detail (addresses, SQL) stays in the log.
            gavel_core::ErrorSource::Internal => ApiError::unavailable(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"gavel\""),
            );
        }
        response
    }
}
