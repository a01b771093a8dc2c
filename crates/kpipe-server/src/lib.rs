//! `kpipe server`: ksqlDB's REST API over HTTP in front of one `kpipe-sql`
//! session, with its statements kept in the service's command topic so that
//! sources and persistent queries survive a restart and every server of the
//! service runs them (each its share of every query's partitions).
//!
//! Endpoints: `POST /ksql` (statements → entities), `POST /query` (ksqlDB's
//! v1 JSON array), `POST /query-stream` (delimited lines, or a JSON array for
//! `Accept: application/json`), `POST /close-query`, `POST /ksql/terminate`,
//! `GET /info` and `GET /healthcheck`, over HTTP/1.1 and HTTP/2.
//!
//! The session is synchronous: statements run on tokio's blocking threads one
//! at a time, and a push query, once registered, streams from a thread of its
//! own so the session serves other requests meanwhile.

pub mod commands;
mod response;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use kpipe_kafka::client::ClientOptions;
use kpipe_sql::durable::Durability;
use kpipe_sql::live::{Session, Settings};
use kpipe_sql::parser::{parse_with_text, Statement};
use kpipe_sql::rest;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::commands::{Command, CommandTopic};
use crate::response::{Collected, Framing, Streamed};

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    /// The server's own directory: locked while it runs, so two servers
    /// never share one. Statements live in the command topic, and query
    /// state in changelog topics, as ksqlDB keeps them.
    pub state: PathBuf,
    /// ksqlDB's `ksql.service.id`, reported by /info; it names the
    /// command topic and the queries' consumer groups and changelog topics.
    pub service_id: String,
    /// Forget the statements when the server stops (a shell's own server,
    /// whose queries last as long as the shell).
    pub transient: bool,
    /// How often a persistent query checkpoints while input flows
    /// (`ksql.streams.commit.interval.ms`); a query that runs dry
    /// checkpoints at once.
    pub commit_interval: Duration,
}

/// ksqlDB's default `ksql.service.id`.
pub const SERVICE_ID: &str = "default_";

/// ksqlDB's default `ksql.streams.commit.interval.ms`.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(2);

/// A request to /ksql, /query or /query-stream (the latter names it `sql`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    #[serde(alias = "sql")]
    ksql: String,
    #[serde(default, alias = "properties")]
    streams_properties: Map<String, Value>,
}

struct App {
    session: Mutex<Session>,
    log: Mutex<CommandTopic>,
    service_id: String,
    /// Running push queries' stop flags, by query id, for /close-query.
    pushes: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Numbers pull queries' ids (they are answered at once, never listed).
    pulls: AtomicU64,
}

impl App {
    fn session(&self) -> Result<MutexGuard<'_, Session>> {
        self.session
            .lock()
            .map_err(|_| anyhow!("the session failed earlier"))
    }
}

/// Runs the server until `stop` is raised; `ready` learns the bound address.
pub fn run(
    kafka: ClientOptions,
    options: ServerOptions,
    stop: Arc<AtomicBool>,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let _lock = lock(&options.state)?;
    let server = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos())
    );
    let (log, commands) = CommandTopic::open(&kafka, &options.service_id, &server)?;
    let settings = Settings {
        durable: Some(Durability {
            service_id: options.service_id.clone(),
            commit_interval: options.commit_interval,
        }),
        ..Settings::default()
    };
    let mut session = Session::connect(kafka, settings, stop.clone())?;
    replay(&mut session, commands);
    let app = Arc::new(App {
        session: Mutex::new(session),
        log: Mutex::new(log),
        service_id: options.service_id.clone(),
        pushes: Mutex::default(),
        pulls: AtomicU64::new(0),
    });
    let follower = std::thread::Builder::new()
        .name("command-runner".into())
        .spawn({
            let (app, stop) = (app.clone(), stop.clone());
            move || follow_commands(&app, &stop)
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        ready(listener.local_addr()?);
        axum::serve(listener, router(app.clone()))
            .with_graceful_shutdown(raised(stop))
            .await
            .context("the HTTP server failed")
    })?;
    drop(runtime);
    follower
        .join()
        .map_err(|_| anyhow!("the command runner crashed"))?;
    // Push queries end with the stop flag; their threads hand the app back.
    let mut app = app;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let app = loop {
        match Arc::try_unwrap(app) {
            Ok(app) => break app,
            Err(_) if std::time::Instant::now() > deadline => {
                return Err(anyhow!("push queries did not stop within 30 s"))
            }
            Err(shared) => {
                app = shared;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let session = app
        .session
        .into_inner()
        .map_err(|_| anyhow!("the session failed earlier"))?;
    session.finish()?;
    if options.transient {
        let log = app
            .log
            .into_inner()
            .map_err(|_| anyhow!("the log failed earlier"))?;
        log.delete()?;
    }
    Ok(())
}

async fn raised(stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Locks the server's directory for as long as the lock lives.
fn lock(dir: &std::path::Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let path = dir.join("server.lock");
    let file =
        std::fs::File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
    file.try_lock().map_err(|_| {
        anyhow!(
            "another kpipe server runs with --state {}; give each server a directory of its own",
            dir.display()
        )
    })?;
    Ok(file)
}

/// Runs stored commands: the same sources, and the same persistent queries
/// reading from where they first began.
fn replay(session: &mut Session, commands: impl IntoIterator<Item = Command>) {
    for command in commands {
        let replayed = parse_with_text(&command.sql).and_then(|statements| {
            statements.iter().try_for_each(|(statement, _)| {
                if let Some(offsets) = &command.started_at {
                    session.resume_next_at(offsets.clone());
                }
                session.with_properties(&command.properties, |s| {
                    s.statement(statement, &mut Collected::default())
                })
            })
        });
        if let Err(e) = replayed {
            tracing::warn!(
                "cannot run a stored statement again ({}): {e:#}",
                command.sql
            );
        }
    }
}

/// How often a server looks for commands other servers of its service
/// accepted.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Runs the commands other servers write, until `stop`.
fn follow_commands(app: &App, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(FOLLOW_EVERY);
        if let Err(e) = catch_up(app) {
            tracing::warn!("reading the command topic: {e:#}");
        }
    }
}

/// Runs what other servers accepted since this one last looked.
fn catch_up(app: &App) -> Result<()> {
    // Looking costs a broker round trip: not under the session's lock,
    // which every request takes.
    let behind = app
        .log
        .lock()
        .map_err(|_| anyhow!("the log failed earlier"))?
        .behind()?;
    if !behind {
        return Ok(());
    }
    let mut session = app.session()?;
    let mut log = app
        .log
        .lock()
        .map_err(|_| anyhow!("the log failed earlier"))?;
    run_new_commands(&mut session, &mut log)
}

fn run_new_commands(session: &mut Session, log: &mut CommandTopic) -> Result<()> {
    let commands = log.catch_up()?;
    if !commands.is_empty() {
        tracing::info!(commands = commands.len(), "running other servers' commands");
        replay(session, commands.into_values());
    }
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/healthcheck", get(healthcheck))
        .route("/ksql", post(ksql))
        .route("/ksql/terminate", post(terminate))
        .route("/query", post(query))
        .route("/query-stream", post(query_stream))
        .route("/close-query", post(close_query))
        .with_state(app)
}

async fn info(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"KsqlServerInfo": {
        "version": concat!(env!("CARGO_PKG_VERSION"), "-kpipe"),
        "kafkaClusterId": "kpipe",
        "ksqlServiceId": app.service_id,
        "serverStatus": "RUNNING",
    }}))
}

/// 503 while a persistent query restores its state, as ksqlDB answers
/// before its command runner has caught up.
async fn healthcheck(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    let (alive, restored) = match app.session.lock() {
        Ok(session) => (true, !session.restoring()),
        Err(_) => (false, false),
    };
    let healthy = alive && restored;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "isHealthy": healthy,
        "details": {
            "metastore": {"isHealthy": alive},
            "kafka": {"isHealthy": alive},
            "commandRunner": {"isHealthy": restored},
        },
        "ksqlServiceId": app.service_id,
    });
    (status, Json(body))
}

/// Runs blocking session work off the async threads.
async fn blocking(work: impl FnOnce() -> rest::Response + Send + 'static) -> Response {
    answer(
        tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|_| server_error(&anyhow!("a request's work crashed"))),
    )
}

fn server_error(e: &anyhow::Error) -> rest::Response {
    (
        500,
        json!({"@type": "generic_error", "error_code": 50000, "message": format!("{e:#}")}),
    )
}

/// A JSON answer with ksqlDB's status code.
fn answer((status, body): rest::Response) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

fn properties(request: &Request) -> Vec<(String, String)> {
    request
        .streams_properties
        .iter()
        .map(|(name, value)| {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), String::from);
            (name.clone(), text)
        })
        .collect()
}

/// Statements that change what the server runs, and so are stored.
fn is_durable(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::CreateSource { .. }
            | Statement::CreateAs { .. }
            | Statement::InsertInto { .. }
            | Statement::Drop { .. }
            | Statement::Terminate { .. }
            | Statement::Alter { .. }
    )
}

/// A request body as JSON, whatever its Content-Type says (ksqlDB's clients
/// send `application/vnd.ksql.v1+json`, curl sends a form type).
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, rest::Response> {
    serde_json::from_slice(body).map_err(|e| {
        (
            400,
            json!({"@type": "generic_error", "error_code": 40000, "message": format!("the request body is not the JSON expected: {e}")}),
        )
    })
}

async fn ksql(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match parse_body::<Request>(&body) {
        Ok(request) => blocking(move || run_statements(&app, &request)).await,
        Err(response) => answer(response),
    }
}

fn run_statements(app: &App, request: &Request) -> rest::Response {
    let statements = match parse_with_text(&request.ksql) {
        Ok(statements) => statements,
        Err(e) => return rest::statement_error(&format!("{e:#}"), &request.ksql, Vec::new()),
    };
    let properties = properties(request);
    let (mut session, mut log) = match (app.session(), app.log.lock()) {
        (Ok(session), Ok(log)) => (session, log),
        _ => return server_error(&anyhow!("the session failed earlier")),
    };
    // Statements run in the command topic's order on every server, so the
    // ones other servers wrote come first (query ids follow that order).
    if let Err(e) = run_new_commands(&mut session, &mut log) {
        return server_error(&e);
    }
    let mut entities = Vec::new();
    for (statement, text) in &statements {
        if matches!(statement, Statement::Query(_)) {
            return rest::select_on_ksql(text, entities);
        }
        let durable = is_durable(statement);
        let sequence = log.next_sequence() as i64 - i64::from(!durable);
        let ran =
            session.with_properties(&properties, |s| s.rest_entity(statement, text, sequence));
        let started_at = session.take_started_at();
        let entity = match ran {
            Ok(entity) => entity,
            Err(e) => return rest::statement_error(&format!("{e:#}"), text, entities),
        };
        if durable {
            let command = Command {
                sql: text.clone(),
                properties: properties.clone(),
                started_at,
                server: String::new(),
            };
            if let Err(e) = log.append(command) {
                return server_error(&e);
            }
        }
        entities.extend(entity);
    }
    (200, Value::Array(entities))
}

async fn terminate(State(app): State<Arc<App>>) -> Response {
    blocking(move || {
        let ended = (|| -> Result<()> {
            let mut session = app.session()?;
            let mut log = app.log.lock().map_err(|_| anyhow!("the log failed earlier"))?;
            session.terminate_all()?;
            log.clear()
        })();
        match ended {
            Ok(()) => (
                200,
                json!({"@type": "currentStatus", "commandStatus": {"status": "SUCCESS", "message": "Cluster terminated."}}),
            ),
            Err(e) => server_error(&e),
        }
    })
    .await
}

async fn close_query(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let body: Value = match parse_body(&body) {
        Ok(body) => body,
        Err(response) => return answer(response),
    };
    let id = body["queryId"].as_str().unwrap_or_default();
    let flag = app.pushes.lock().ok().and_then(|p| p.get(id).cloned());
    match flag {
        Some(flag) => {
            flag.store(true, Ordering::Relaxed);
            StatusCode::OK.into_response()
        }
        None => answer(rest::statement_error(
            &format!("No query with id {id}"),
            "",
            Vec::new(),
        )),
    }
}

async fn query(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match parse_body(&body) {
        Ok(request) => start_query(app, request, Framing::QueryV1).await,
        Err(response) => answer(response),
    }
}

async fn query_stream(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return answer(response),
    };
    let json = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let framing = if json {
        Framing::JsonArray
    } else {
        Framing::Delimited
    };
    start_query(app, request, framing).await
}

/// A SELECT: a pull query answers at once; a push query streams its rows
/// until its LIMIT, the client leaving, /close-query or the server stopping.
async fn start_query(app: Arc<App>, request: Request, framing: Framing) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
    let started = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || prepare_query(&app, &request, framing, sender))
            .await
            .unwrap_or_else(|_| Err(server_error(&anyhow!("a query crashed"))))
    };
    match started {
        Ok(()) => {
            let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver
                    .recv()
                    .await
                    .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), receiver))
            });
            (
                [(header::CONTENT_TYPE, framing.content_type())],
                axum::body::Body::from_stream(body),
            )
                .into_response()
        }
        Err(response) => answer(response),
    }
}

/// Checks and starts a SELECT: pulls answer into `sender` right away, a push
/// query gets a thread of its own that writes into it.
fn prepare_query(
    app: &Arc<App>,
    request: &Request,
    framing: Framing,
    sender: tokio::sync::mpsc::Sender<Bytes>,
) -> Result<(), rest::Response> {
    let statements = parse_with_text(&request.ksql)
        .map_err(|e| rest::statement_error(&format!("{e:#}"), &request.ksql, Vec::new()))?;
    let [(statement, text)] = statements.as_slice() else {
        return Err(rest::statement_error(
            "Expected exactly one statement, a SELECT",
            &request.ksql,
            Vec::new(),
        ));
    };
    let Statement::Query(select) = statement else {
        return Err(rest::statement_error(
            "The /query endpoint runs SELECT statements; send the others to /ksql",
            text,
            Vec::new(),
        ));
    };
    let properties = properties(request);
    let mut session = app.session().map_err(|e| server_error(&e))?;
    if select.emit.is_none() {
        let mut collected = Collected::default();
        session
            .with_properties(&properties, |s| s.statement(statement, &mut collected))
            .map_err(|e| rest::statement_error(&format!("{e:#}"), text, Vec::new()))?;
        let id = format!("query_{}", app.pulls.fetch_add(1, Ordering::Relaxed));
        for chunk in collected.pulled(framing, &id) {
            // A client that left takes nothing more.
            if sender.blocking_send(chunk).is_err() {
                break;
            }
        }
        return Ok(());
    }
    let push = session
        .with_properties(&properties, |s| s.prepare_push(statement))
        .map_err(|e| rest::statement_error(&format!("{e:#}"), text, Vec::new()))?;
    drop(session);
    let id = push.id().to_string();
    let cancel = Arc::new(AtomicBool::new(false));
    if let Ok(mut pushes) = app.pushes.lock() {
        pushes.insert(id.clone(), cancel.clone());
    }
    let app = app.clone();
    let limit = select.limit;
    std::thread::Builder::new()
        .name(id.clone())
        .spawn(move || {
            let mut out = Streamed::new(framing, &id, limit, sender, cancel.clone());
            if let Err(e) = push.run(&mut out, cancel) {
                out.fail(&format!("{e:#}"));
            }
            if let Ok(mut pushes) = app.pushes.lock() {
                pushes.remove(&id);
            }
            if let Ok(mut session) = app.session() {
                let _ = session.forget(&id);
            }
        })
        .map_err(|e| server_error(&e.into()))?;
    Ok(())
}
