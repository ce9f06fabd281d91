//! `dscoder serve`: one loaded model behind the HTTP APIs editors and chat front-ends speak:
//! OpenAI (`/v1/chat/completions`, `/v1/completions` with `suffix` for FIM, `/v1/models`),
//! llama.cpp (`/infill` as llama.vim and llama.vscode send it, `/health`, `/tokenize`,
//! `/detokenize`) and ollama (`/api/generate` with `suffix`, `/api/chat`, `/api/tags`,
//! `/api/show`, `/api/version`).
//!
//! Shape (mistral.rs's): axum handlers parse and check a request ([`wire`]), then hand it to
//! the [`worker`], the one thread that owns the engine, through a bounded queue; past it they
//! answer 503 with `Retry-After`. Text comes back over a per-request channel and is streamed as
//! server-sent events (OpenAI, llama.cpp) or NDJSON (ollama). A client that goes away drops its
//! response stream or handler future, whose guard sets the job's cancel flag: a queued job is
//! skipped, a running one stops within a token.

pub mod wire;
pub mod worker;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::{EngineSettings, GenerationStats, StopReason};
use crate::prompt::Dropped;
use wire::{BadRequest, Defaults, Request};
use worker::{Event, Job, JobError, ModelInfo, Work};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Every endpoint but `/health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Origins allowed by CORS; none means CORS is off.
    pub cors: Vec<String>,
    /// Requests that may wait for the worker; more get 503.
    pub queue: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
    pub defaults: Defaults,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("loading the model: {0}")]
    Load(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Io(#[source] std::io::Error),
    #[error("--cors '{0}' is not a valid origin")]
    Cors(String),
}

struct Inner {
    jobs: SyncSender<Job>,
    info: ModelInfo,
    defaults: Defaults,
    api_key: Option<String>,
    started: SystemTime,
    next_id: AtomicU64,
}

#[derive(Clone)]
struct AppState(Arc<Inner>);

/// Loads the model, listens, and serves until `stop()` turns true (the CLI passes its Ctrl-C /
/// SIGTERM check); then stops accepting, cancels the running job and returns. `on_ready` gets
/// the address actually bound (port 0 picks a free one).
pub fn serve(
    model: PathBuf,
    settings: EngineSettings,
    options: ServeOptions,
    stop: impl Fn() -> bool + Send + 'static,
    on_ready: impl FnOnce(SocketAddr, &ModelInfo),
) -> Result<(), ServeError> {
    let shutdown = Arc::new(AtomicBool::new(false));
    let (jobs, queue) = sync_channel::<Job>(options.queue.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let worker_shutdown = shutdown.clone();
    let worker = std::thread::Builder::new()
        .name("dscoder-worker".into())
        .spawn(move || worker::run(model, settings, queue, ready_tx, worker_shutdown))
        .map_err(ServeError::Io)?;
    let info = ready_rx
        .recv()
        .map_err(|_| ServeError::Load("the worker stopped".into()))?
        .map_err(ServeError::Load)?;
    let state = AppState(Arc::new(Inner {
        jobs,
        info: info.clone(),
        defaults: options.defaults.clone(),
        api_key: options.api_key.clone(),
        started: SystemTime::now(),
        next_id: AtomicU64::new(1),
    }));
    let app = router(state, &options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Io)?;
    let addr = format!("{}:{}", options.host, options.port);
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let bound = listener.local_addr().map_err(ServeError::Io)?;
        on_ready(bound, &info);
        let shutdown = shutdown.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                while !stop() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Running work stops at its next token; streams then end.
                shutdown.store(true, Ordering::SeqCst);
            })
            .await
            .map_err(ServeError::Io)
    });
    shutdown.store(true, Ordering::SeqCst);
    drop(runtime);
    let _ = worker.join();
    result
}

fn router(state: AppState, options: &ServeOptions) -> Result<Router, ServeError> {
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/infill", post(infill))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/api/generate", post(ollama_generate))
        .route("/api/chat", post(ollama_chat))
        .route("/api/tags", get(ollama_tags))
        .route("/api/show", post(ollama_show))
        .route("/api/version", get(ollama_version))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(options.max_body))
        .with_state(state);
    if !options.cors.is_empty() {
        let origins = options
            .cors
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| ServeError::Cors(o.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    // Outermost, so that it sees every response, refusals included.
    Ok(app.layer(middleware::from_fn(log_request)))
}

// ---------------------------------------------------------------------------------------------
// Errors, in each API's shape.

/// Which API's error shape a response takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    OpenAi,
    Ollama,
}

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    api: Api,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            api: Api::OpenAi,
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn from_job(e: JobError) -> ApiError {
        match e {
            JobError::BadRequest(m) => Self::bad(m),
            JobError::Internal(m) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }

    fn api(mut self, api: Api) -> ApiError {
        self.api = api;
        self
    }
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> ApiError {
        ApiError::bad(e.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.api {
            Api::Ollama => json!({ "error": self.message }),
            Api::OpenAi => {
                let kind = match self.status {
                    StatusCode::UNAUTHORIZED => "authentication_error",
                    StatusCode::NOT_FOUND => "not_found_error",
                    StatusCode::SERVICE_UNAVAILABLE => "unavailable_error",
                    s if s.is_server_error() => "server_error",
                    _ => "invalid_request_error",
                };
                json!({ "error": { "message": self.message, "type": kind, "param": null, "code": self.status.as_u16() } })
            }
        };
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

async fn not_found(req: HttpRequest) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
}

// ---------------------------------------------------------------------------------------------
// Middleware: the per-request log line, and the API key.

/// One line per request on stderr, written when the request is completely done (for a stream,
/// when its last event has gone out): method, path, status, tokens, milliseconds.
#[derive(Clone)]
struct RequestLog(Arc<LogLine>);

struct LogLine {
    method: Method,
    path: String,
    started: Instant,
    status: AtomicU16,
    /// (prompt, cached, generated) tokens and the stop reason, when the request ran the model.
    tokens: Mutex<Option<(usize, usize, usize, StopReason)>>,
}

impl RequestLog {
    fn tokens(&self, stats: &GenerationStats) {
        if let Ok(mut t) = self.0.tokens.lock() {
            *t = Some((
                stats.prompt_tokens,
                stats.reused_tokens,
                stats.generated_tokens,
                stats.stop_reason,
            ));
        }
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let tokens = match self.tokens.lock().ok().and_then(|t| *t) {
            Some((p, c, g, stop)) => {
                format!(" prompt={p} cached={c} generated={g} stop={}", stop.name())
            }
            None => String::new(),
        };
        // No status: the client left before the response began.
        let status = match self.status.load(Ordering::Relaxed) {
            0 => "closed".to_string(),
            s => s.to_string(),
        };
        eprintln!(
            "{} {} {status}{tokens} {} ms",
            self.method,
            self.path,
            self.started.elapsed().as_millis()
        );
    }
}

async fn log_request(mut req: HttpRequest, next: Next) -> Response {
    let log = RequestLog(Arc::new(LogLine {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        started: Instant::now(),
        status: AtomicU16::new(0),
        tokens: Mutex::new(None),
    }));
    req.extensions_mut().insert(log.clone());
    let res = next.run(req).await;
    log.0.status.store(res.status().as_u16(), Ordering::Relaxed);
    res
}

/// Equal strings, in time that does not depend on where they differ.
fn same_key(given: &[u8], key: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.len() == key.len() && bool::from(given.ct_eq(key))
}

async fn authorize(State(state): State<AppState>, req: HttpRequest, next: Next) -> Response {
    let Some(key) = &state.0.api_key else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same_key(g.as_bytes(), key.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid API key").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs an API key: send 'Authorization: Bearer KEY'",
        )
        .into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Submitting work.

/// Sets the job's cancel flag when dropped: when the handler future or the response stream is
/// dropped because the client went away (or simply when the request is over).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A job in the queue: its events, and the guard that cancels it.
struct Submitted {
    events: UnboundedReceiver<Event>,
    /// Held for its `Drop`.
    _guard: CancelOnDrop,
}

fn submit(state: &AppState, req: Request, log: Option<RequestLog>) -> Result<Submitted, ApiError> {
    let (tx, rx) = unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let job = Job {
        work: req.work,
        options: req.options,
        limits: req.limits,
        cancel: cancel.clone(),
        events: tx,
        on_done: log
            .map(|log| Box::new(move |stats: &GenerationStats| log.tokens(stats)) as Box<_>),
    };
    match state.0.jobs.try_send(job) {
        Ok(()) => Ok(Submitted {
            events: rx,
            _guard: CancelOnDrop(cancel),
        }),
        Err(TrySendError::Full(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy (the request queue is full); retry shortly",
        )),
        Err(TrySendError::Disconnected(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )),
    }
}

/// What a generation job said before its text: its prompt counts, or why it could not run.
struct Started {
    prompt_tokens: usize,
    cached_tokens: usize,
    max_tokens_clamped: Option<usize>,
    dropped: Dropped,
}

async fn started(s: &mut Submitted) -> Result<Started, ApiError> {
    match s.events.recv().await {
        Some(Event::Started {
            prompt_tokens,
            cached_tokens,
            max_tokens_clamped,
            dropped,
        }) => Ok(Started {
            prompt_tokens,
            cached_tokens,
            max_tokens_clamped,
            dropped,
        }),
        Some(Event::Failed(e)) => Err(ApiError::from_job(e)),
        Some(other) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected worker event {other:?}"),
        )),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request was cancelled (the server is shutting down)",
        )),
    }
}

/// The whole text of a non-streamed request.
async fn collect(s: &mut Submitted) -> Result<(String, GenerationStats), ApiError> {
    let mut text = String::new();
    while let Some(e) = s.events.recv().await {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done(stats) => return Ok((text, stats)),
            Event::Failed(e) => return Err(ApiError::from_job(e)),
            _ => {}
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the request was cancelled (the server is shutting down)",
    ))
}

/// What a stream carries after `Started`: text pieces, then the end.
enum Piece {
    Text(String),
    Done(GenerationStats),
    Failed(String),
}

/// The job's remaining events as a stream that owns the cancel guard, so a client that
/// disconnects cancels the job when axum drops the stream.
fn pieces(s: Submitted) -> impl Stream<Item = Piece> + Send {
    stream::unfold(Some(s), |state| async move {
        let mut s = state?;
        loop {
            match s.events.recv().await? {
                Event::Text(t) => return Some((Piece::Text(t), Some(s))),
                Event::Done(stats) => return Some((Piece::Done(stats), None)),
                Event::Failed(e) => {
                    let m = match e {
                        JobError::BadRequest(m) | JobError::Internal(m) => m,
                    };
                    return Some((Piece::Failed(m), None));
                }
                _ => continue,
            }
        }
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage(started: &Started, stats: &GenerationStats) -> Value {
    json!({
        "prompt_tokens": started.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": started.prompt_tokens + stats.generated_tokens,
        "prompt_tokens_details": { "cached_tokens": started.cached_tokens },
    })
}

/// llama.cpp's `timings` object.
fn timings(stats: &GenerationStats) -> Value {
    let ms = |s: f64| s * 1000.0;
    json!({
        "cache_n": stats.reused_tokens,
        "prompt_n": stats.evaluated_tokens(),
        "prompt_ms": ms(stats.prompt_seconds),
        "prompt_per_second": stats.prompt_tokens_per_second(),
        "predicted_n": stats.generated_tokens,
        "predicted_ms": ms(stats.generation_seconds),
        "predicted_per_second": stats.generation_tokens_per_second(),
        // llama-server's names for speculative decoding's counts.
        "draft_n": stats.drafted_tokens,
        "draft_n_accepted": stats.accepted_tokens,
    })
}

/// Headers that report what the server changed in the request.
fn notes(res: &mut Response, started: &Started) {
    if let Some(n) = started.max_tokens_clamped {
        if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
            res.headers_mut().insert("x-dscoder-max-tokens-clamped", v);
        }
    }
    if started.dropped.any() {
        if let Ok(v) = HeaderValue::from_str(&started.dropped.to_string()) {
            res.headers_mut().insert("x-dscoder-dropped", v);
        }
    }
}

fn sse(events: impl Stream<Item = Value> + Send + 'static, done_marker: bool) -> Response {
    let events = events.map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())));
    let tail = stream::iter(done_marker.then(|| Ok(SseEvent::default().data("[DONE]"))));
    Sse::new(events.chain(tail))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn ndjson(lines: impl Stream<Item = Value> + Send + 'static) -> Response {
    let body = Body::from_stream(lines.map(|v| Ok::<_, Infallible>(Bytes::from(format!("{v}\n")))));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

// ---------------------------------------------------------------------------------------------
// OpenAI.

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    let created = state
        .0
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Json(json!({
        "object": "list",
        "data": [{ "id": state.0.info.name, "object": "model", "created": created, "owned_by": "dscoder" }],
    }))
}

fn id(state: &AppState, prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        state.0.next_id.fetch_add(1, Ordering::Relaxed)
    )
}

async fn chat_completions(
    State(state): State<AppState>,
    Extension(log): Extension<RequestLog>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (req, sampling) = wire::parse_with_sampling::<wire::ChatCompletionRequest>(&body)?;
    let req = req.into_request(&sampling, &state.0.defaults)?;
    openai(state, log, req, true).await
}

async fn completions(
    State(state): State<AppState>,
    Extension(log): Extension<RequestLog>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (req, sampling) = wire::parse_with_sampling::<wire::CompletionRequest>(&body)?;
    let req = req.into_request(&sampling, &state.0.defaults)?;
    openai(state, log, req, false).await
}

/// Both OpenAI endpoints: `chat` picks `chat.completion` messages over `text_completion` text.
async fn openai(
    state: AppState,
    log: RequestLog,
    req: Request,
    chat: bool,
) -> Result<Response, ApiError> {
    let (stream, include_usage) = (req.stream, req.include_usage);
    let mut job = submit(&state, req, Some(log))?;
    let started = started(&mut job).await?;
    let id = id(&state, if chat { "chatcmpl" } else { "cmpl" });
    let model = state.0.info.name.clone();
    let created = unix_now();
    let object = if chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    if !stream {
        let (text, stats) = collect(&mut job).await?;
        let choice = if chat {
            json!({ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": stats.stop_reason.finish_reason() })
        } else {
            json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": stats.stop_reason.finish_reason() })
        };
        let mut res = Json(json!({
            "id": id, "object": object, "created": created, "model": model,
            "choices": [choice], "usage": usage(&started, &stats),
        }))
        .into_response();
        notes(&mut res, &started);
        return Ok(res);
    }
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |delta: Value, finish: Value| {
        let choice = if chat {
            json!({ "index": 0, "delta": delta, "finish_reason": finish })
        } else {
            json!({ "index": 0, "text": delta, "logprobs": null, "finish_reason": finish })
        };
        json!({ "id": id, "object": object, "created": created, "model": model, "choices": [choice] })
    };
    let first = chat.then(|| chunk(json!({ "role": "assistant", "content": "" }), Value::Null));
    let prompt_tokens = started.prompt_tokens;
    let cached_tokens = started.cached_tokens;
    let events = stream::iter(first).chain(pieces(job).flat_map(move |p| {
        let out = match p {
            Piece::Text(t) => {
                let delta = if chat {
                    json!({ "content": t })
                } else {
                    json!(t)
                };
                vec![chunk(delta, Value::Null)]
            }
            Piece::Done(stats) => {
                let end = if chat { json!({}) } else { json!("") };
                let mut v = vec![chunk(end, json!(stats.stop_reason.finish_reason()))];
                if include_usage {
                    let mut u = chunk(Value::Null, Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage(
                        &Started {
                            prompt_tokens,
                            cached_tokens,
                            max_tokens_clamped: None,
                            dropped: Dropped::default(),
                        },
                        &stats,
                    );
                    v.push(u);
                }
                v
            }
            Piece::Failed(m) => vec![json!({ "error": { "message": m, "type": "server_error" } })],
        };
        stream::iter(out)
    }));
    let mut res = sse(events, true);
    notes(&mut res, &started);
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// llama.cpp.

fn stop_type(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndOfGeneration => "eos",
        StopReason::StopString => "word",
        StopReason::TokenLimit | StopReason::ContextFull | StopReason::Cancelled => "limit",
    }
}

async fn infill(
    State(state): State<AppState>,
    Extension(log): Extension<RequestLog>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (req, sampling) = wire::parse_with_sampling::<wire::InfillRequest>(&body)?;
    let req = req.into_request(&sampling, &state.0.defaults)?;
    let stream = req.stream;
    let mut job = submit(&state, req, Some(log))?;
    let started = started(&mut job).await?;
    let dropped = started.dropped;
    let summary = move |stats: &GenerationStats, content: String| {
        json!({
            "content": content,
            "stop": true,
            "stop_type": stop_type(stats.stop_reason),
            "tokens_predicted": stats.generated_tokens,
            "tokens_evaluated": stats.prompt_tokens,
            "tokens_cached": stats.reused_tokens,
            "truncated": dropped.any(),
            "dropped": {
                "prefix_tokens": dropped.prefix,
                "suffix_tokens": dropped.suffix,
                "extra_tokens": dropped.extra,
                "extra_files": dropped.extra_files,
            },
            "timings": timings(stats),
        })
    };
    let mut res = if stream {
        let events = pieces(job).map(move |p| match p {
            Piece::Text(t) => json!({ "content": t, "stop": false }),
            Piece::Done(stats) => summary(&stats, String::new()),
            Piece::Failed(m) => json!({ "error": { "message": m, "type": "server_error" } }),
        });
        sse(events, false)
    } else {
        let (text, stats) = collect(&mut job).await?;
        Json(summary(&stats, text)).into_response()
    };
    notes(&mut res, &started);
    Ok(res)
}

async fn tokenize(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req = wire::parse::<wire::TokenizeRequest>(&body)?;
    let special = req.parse_special.unwrap_or(true);
    let job = Request {
        work: Work::Tokenize {
            text: req.content,
            special,
        },
        options: Default::default(),
        limits: Default::default(),
        stream: false,
        include_usage: false,
    };
    let mut s = submit(&state, job, None)?;
    match s.events.recv().await {
        Some(Event::Tokens(mut pieces)) => {
            if req.add_special {
                // BOS first, as the model wants it (llama.cpp's add_special).
                if let Some(bos) = state.0.info.bos {
                    pieces.insert(0, (bos, String::new()));
                }
            }
            Ok(Json(if req.with_pieces {
                json!({ "tokens": pieces.iter().map(|(id, p)| json!({ "id": id, "piece": p })).collect::<Vec<_>>() })
            } else {
                json!({ "tokens": pieces.iter().map(|(id, _)| *id).collect::<Vec<_>>() })
            }))
        }
        Some(Event::Failed(e)) => Err(ApiError::from_job(e)),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )),
    }
}

async fn detokenize(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req = wire::parse::<wire::DetokenizeRequest>(&body)?;
    let ids = req
        .tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            i32::try_from(t)
                .map_err(|_| ApiError::bad(format!("tokens[{i}]: {t} is not a token id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let job = Request {
        work: Work::Detokenize(ids),
        options: Default::default(),
        limits: Default::default(),
        stream: false,
        include_usage: false,
    };
    let mut s = submit(&state, job, None)?;
    match s.events.recv().await {
        Some(Event::Detokenized(content)) => Ok(Json(json!({ "content": content }))),
        Some(Event::Failed(e)) => Err(ApiError::from_job(e)),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// ollama.

fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn ns(seconds: f64) -> u64 {
    (seconds * 1e9) as u64
}

async fn ollama_generate(
    State(state): State<AppState>,
    Extension(log): Extension<RequestLog>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = wire::parse::<wire::OllamaGenerateRequest>(&body)
        .and_then(|r| r.into_request(&state.0.defaults))
        .map_err(|e| ApiError::from(e).api(Api::Ollama))?;
    ollama(state, log, req, false).await
}

async fn ollama_chat(
    State(state): State<AppState>,
    Extension(log): Extension<RequestLog>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = wire::parse::<wire::OllamaChatRequest>(&body)
        .and_then(|r| r.into_request(&state.0.defaults))
        .map_err(|e| ApiError::from(e).api(Api::Ollama))?;
    ollama(state, log, req, true).await
}

async fn ollama(
    state: AppState,
    log: RequestLog,
    req: Request,
    chat: bool,
) -> Result<Response, ApiError> {
    let stream = req.stream;
    let mut job = submit(&state, req, Some(log)).map_err(|e| e.api(Api::Ollama))?;
    let started = started(&mut job).await.map_err(|e| e.api(Api::Ollama))?;
    let model = state.0.info.name.clone();
    let line = move |text: String, done: Option<&GenerationStats>| {
        let mut v = json!({ "model": model, "created_at": rfc3339_now(), "done": done.is_some() });
        if chat {
            v["message"] = json!({ "role": "assistant", "content": text });
        } else {
            v["response"] = json!(text);
        }
        if let Some(s) = done {
            v["done_reason"] = json!(s.stop_reason.finish_reason());
            v["total_duration"] = json!(ns(s.prompt_seconds + s.generation_seconds));
            v["load_duration"] = json!(0);
            v["prompt_eval_count"] = json!(s.prompt_tokens);
            v["prompt_eval_duration"] = json!(ns(s.prompt_seconds));
            v["eval_count"] = json!(s.generated_tokens);
            v["eval_duration"] = json!(ns(s.generation_seconds));
        }
        v
    };
    let mut res = if stream {
        ndjson(pieces(job).map(move |p| match p {
            Piece::Text(t) => line(t, None),
            Piece::Done(stats) => line(String::new(), Some(&stats)),
            Piece::Failed(m) => json!({ "error": m }),
        }))
    } else {
        let (text, stats) = collect(&mut job).await.map_err(|e| e.api(Api::Ollama))?;
        Json(line(text, Some(&stats))).into_response()
    };
    notes(&mut res, &started);
    Ok(res)
}

fn ollama_details() -> Value {
    json!({ "format": "gguf", "family": "deepseek2", "families": ["deepseek2"], "parameter_size": "", "quantization_level": "" })
}

async fn ollama_tags(State(state): State<AppState>) -> Json<Value> {
    let i = &state.0.info;
    Json(json!({ "models": [{
        "name": i.name, "model": i.name,
        "modified_at": humantime::format_rfc3339_seconds(state.0.started).to_string(),
        "size": i.file_bytes, "digest": "",
        "details": ollama_details(),
    }]}))
}

async fn ollama_show(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "modelfile": "", "parameters": "", "template": "",
        "details": ollama_details(),
        "model_info": { "general.architecture": "deepseek2", "deepseek2.context_length": state.0.info.n_ctx },
        "capabilities": ["completion", "insert"],
    }))
}

async fn ollama_version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}
