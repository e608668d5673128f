//! The axum application: configuration, routes, authentication, metrics and CORS layers.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::generate::{self, unix_now};
use crate::metrics::ServerMetrics;
use crate::request::{self, Endpoint};

/// Server settings. The defaults are the safe ones: loopback only, no CORS.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind; 127.0.0.1 by default (use 0.0.0.0 to expose it, with an API key).
    pub host: IpAddr,
    pub port: u16,
    /// When set, every route but `/health` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// CORS allowed origins. Empty: no CORS headers at all. `"*"`: any origin.
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes (413 above it).
    pub max_body: usize,
    /// Longest a generation request may take before it ends with an error.
    pub request_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            api_key: None,
            cors_origins: Vec::new(),
            max_body: 4 << 20,
            request_timeout: Some(Duration::from_secs(600)),
        }
    }
}

impl ServerConfig {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

pub(crate) struct AppState {
    pub backend: Arc<dyn Backend>,
    pub config: ServerConfig,
    pub metrics: ServerMetrics,
    pub started: u64,
}

/// The OpenAI-compatible HTTP server.
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    pub fn new<B: Backend>(backend: Arc<B>, config: ServerConfig) -> Self {
        let backend: Arc<dyn Backend> = backend;
        Server {
            state: Arc::new(AppState {
                backend,
                config,
                metrics: ServerMetrics::default(),
                started: unix_now(),
            }),
        }
    }

    /// Bind the configured address.
    pub async fn bind(&self) -> std::io::Result<TcpListener> {
        TcpListener::bind(self.state.config.addr()).await
    }

    /// The full application, for embedding or in-process tests.
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let mut app = Router::new()
            .route(
                "/v1/chat/completions",
                post(chat_completions).fallback(method_not_allowed),
            )
            .route(
                "/v1/completions",
                post(completions).fallback(method_not_allowed),
            )
            .route("/v1/models", get(models).fallback(method_not_allowed))
            .route(
                "/v1/models/{id}",
                get(model_by_id).fallback(method_not_allowed),
            )
            .route("/health", get(health).fallback(method_not_allowed))
            .route("/metrics", get(metrics).fallback(method_not_allowed))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(state.config.max_body))
            // A panic anywhere below becomes a 500 JSON error (and is still counted).
            .layer(CatchPanicLayer::custom(|_| {
                ApiError::internal("internal error").into_response()
            }))
            .layer(middleware::from_fn_with_state(state.clone(), auth))
            .layer(middleware::from_fn_with_state(state.clone(), count))
            .with_state(state.clone());
        if let Some(cors) = cors_layer(&state.config.cors_origins) {
            app = app.layer(cors);
        }
        app
    }

    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serve until `signal` completes, then finish the requests in flight.
    pub async fn serve_with_shutdown<F>(
        self,
        listener: TcpListener,
        signal: F,
    ) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(signal)
            .await
    }
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    )
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        if req.uri().path() != "/health" {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|got| same(got.trim().as_bytes(), key.as_bytes()));
            if !ok {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    next.run(req).await
}

async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "other".to_string());
    let resp = next.run(req).await;
    state.metrics.request(&route, resp.status().as_u16());
    resp
}

async fn not_found(req: Request) -> ApiError {
    let path: String = req.uri().path().chars().take(200).collect();
    ApiError::not_found(&path)
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// `Content-Type` must be `application/json` (parameters such as `charset` allowed).
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::bad_body(format!(
            "Expected 'Content-Type: application/json'; got '{}'.",
            ct.chars().take(100).collect::<String>()
        ))
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        .with_code("unsupported_media_type"))
    }
}

fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::bad_body("The request body is too large.")
                .with_status(status)
                .with_code("request_too_large")
        } else {
            ApiError::bad_body(format!("Could not read the request body: {r}.")).with_status(
                if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                },
            )
        }
    })
}

async fn generation(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    check_json_content_type(&headers)?;
    let body = read_body(body)?;
    let params = request::parse(&body, endpoint)?;
    if !state.backend.ready() {
        return Err(ApiError::not_ready());
    }
    generate::run(state, params, endpoint, t0).await
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generation(state, headers, body, Endpoint::Chat).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generation(state, headers, body, Endpoint::Completions).await
}

fn model_object(state: &AppState) -> serde_json::Value {
    json!({
        "id": state.backend.model_id(),
        "object": "model",
        "created": state.started,
        "owned_by": "dino",
    })
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    json_response(json!({"object": "list", "data": [model_object(&state)]})).into_response()
}

async fn model_by_id(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if id == state.backend.model_id() {
        Ok(json_response(model_object(&state)).into_response())
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.backend.ready() {
        json_response(json!({"status": "ok"})).into_response()
    } else {
        ApiError::not_ready().into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state.backend.metrics());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn json_response(v: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}
