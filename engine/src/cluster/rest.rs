//! The job manager's REST API, shaped like Flink's (JSON, kebab-case fields), plus
//! Prometheus metrics on `/metrics`.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /overview` | task managers, slots, jobs by state |
//! | `GET /jobs` | every job: id and state |
//! | `POST /jobs` | submit a job file (TOML body); answers `{"jobid": ...}` |
//! | `GET /jobs/{id}` | one job: state, restarts and restores, vertices with parallelism, records in/out and malformed records skipped |
//! | `GET /jobs/{id}/checkpoints` | checkpoint counts and history |
//! | `POST /jobs/{id}/cancel` | cancel a job |
//! | `GET /taskmanagers` | task managers: slots total and free, last heartbeat |
//! | `GET /metrics` | Prometheus text format |
//!
//! With a cluster token, every request needs `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value as Json, json};

use super::jobmanager::{JobManager, KnownJob};
use crate::runtime::cluster::JobHandle;
use crate::runtime::master::JobState;

/// Largest job file accepted.
const MAX_BODY: usize = 1 << 20;

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: Json) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
    reply(status, json!({ "errors": [message.to_string()] }))
}

fn state_name(state: &JobState) -> &'static str {
    match state {
        JobState::Created => "CREATED",
        JobState::Running => "RUNNING",
        JobState::Restarting => "RESTARTING",
        JobState::Finished => "FINISHED",
        JobState::Failed(_) => "FAILED",
        JobState::Canceled => "CANCELED",
    }
}

pub async fn handle(
    jm: Arc<JobManager>,
    request: Request<hyper::body::Incoming>,
) -> Result<Reply, Infallible> {
    if let Some(token) = &jm.config.token {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_str()) {
            let mut refused = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer <token> (rivulet --token)",
            );
            // RFC 9110: a 401 names the scheme that would get in.
            refused.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"rivulet\""),
            );
            return Ok(refused);
        }
    }
    // HEAD is GET without the body (hyper leaves a HEAD answer's body out).
    let method = match request.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    let path: Vec<String> = request
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    let response = match (&method, parts.as_slice()) {
        (&Method::GET, ["overview"]) => overview(&jm).await,
        (&Method::GET, ["jobs"]) => jobs(&jm).await,
        (&Method::POST, ["jobs"]) => submit(&jm, request).await,
        (&Method::GET, ["jobs", id]) => job(&jm, id).await,
        (&Method::GET, ["jobs", id, "checkpoints"]) => checkpoints(&jm, id),
        (&Method::POST, ["jobs", id, "cancel"]) => cancel(&jm, id).await,
        (&Method::GET, ["taskmanagers"]) => reply(
            StatusCode::OK,
            json!({ "taskmanagers": jm.resources.task_managers() }),
        ),
        (&Method::GET, ["metrics"]) => metrics(&jm),
        _ => match allowed_methods(&parts) {
            // A resource that exists, asked with another method: 405, with the methods it
            // takes in `Allow` (RFC 9110 requires it).
            Some(allow) => {
                let mut response = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!(
                        "{method} is not allowed on {}; it takes {allow}",
                        request_path(&parts)
                    ),
                );
                response
                    .headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                response
            }
            None => error(
                StatusCode::NOT_FOUND,
                format!(
                    "no resource {} (see GET /overview, /jobs, /jobs/ID, /jobs/ID/checkpoints, \
                     /taskmanagers, /metrics; POST /jobs, /jobs/ID/cancel)",
                    request_path(&parts)
                ),
            ),
        },
    };
    Ok(response)
}

/// The methods a resource of the API takes, or `None` if there is no such resource.
fn allowed_methods(parts: &[&str]) -> Option<&'static str> {
    match parts {
        ["overview" | "taskmanagers" | "metrics"] => Some("GET, HEAD"),
        ["jobs"] => Some("GET, HEAD, POST"),
        ["jobs", _] | ["jobs", _, "checkpoints"] => Some("GET, HEAD"),
        ["jobs", _, "cancel"] => Some("POST"),
        _ => None,
    }
}

fn request_path(parts: &[&str]) -> String {
    format!("/{}", parts.join("/"))
}

async fn overview(jm: &JobManager) -> Reply {
    let tms = jm.resources.task_managers();
    let jobs = match jm.all_jobs().await {
        Ok(j) => j,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for job in &jobs {
        let state = match job {
            KnownJob::Live(h) => state_name(&h.state()),
            KnownJob::Recorded(r) => recorded_state(r),
        };
        *counts.entry(state).or_default() += 1;
    }
    let count = |s: &str| counts.get(s).copied().unwrap_or(0);
    reply(
        StatusCode::OK,
        json!({
            "taskmanagers": tms.len(),
            "slots-total": tms.iter().map(|t| t.slots).sum::<usize>(),
            "slots-available": tms.iter().map(|t| t.free_slots).sum::<usize>(),
            "jobs-running": count("RUNNING") + count("RESTARTING") + count("CREATED"),
            "jobs-finished": count("FINISHED"),
            "jobs-cancelled": count("CANCELED"),
            "jobs-failed": count("FAILED"),
            "rivulet-version": env!("CARGO_PKG_VERSION"),
            "uptime-ms": jm.started.elapsed().as_millis() as u64,
        }),
    )
}

fn recorded_state(r: &crate::job::registry::JobRecord) -> &'static str {
    use crate::job::registry::RecordedState;
    match r.state {
        // Recorded as running but not live here: it is waiting to be resumed.
        RecordedState::Running => "RUNNING",
        RecordedState::Cancelling => "CANCELLING",
        RecordedState::Finished => "FINISHED",
        RecordedState::Failed => "FAILED",
        RecordedState::Canceled => "CANCELED",
    }
}

async fn jobs(jm: &JobManager) -> Reply {
    match jm.all_jobs().await {
        Ok(jobs) => {
            let list: Vec<Json> = jobs
                .iter()
                .map(|j| match j {
                    KnownJob::Live(h) => json!({
                        "id": h.job_id(),
                        "name": h.shared.graph.name,
                        "status": state_name(&h.state()),
                    }),
                    KnownJob::Recorded(r) => json!({
                        "id": r.job_id,
                        "name": r.name,
                        "status": recorded_state(r),
                    }),
                })
                .collect();
            reply(StatusCode::OK, json!({ "jobs": list }))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn submit(jm: &Arc<JobManager>, request: Request<hyper::body::Incoming>) -> Reply {
    // A declared length over the limit is refused before any of the body is waited for.
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the job file is larger than {MAX_BODY} bytes"),
        );
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading the job file: {e} (at most {MAX_BODY} bytes)"),
            );
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the job file is not UTF-8");
    };
    match jm.submit(text).await {
        Ok(id) => reply(StatusCode::ACCEPTED, json!({ "jobid": id })),
        Err(e @ crate::EngineError::Job { .. }) | Err(e @ crate::EngineError::Expr { .. }) => {
            error(StatusCode::BAD_REQUEST, e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn live_job_json(jm: &JobManager, h: &JobHandle) -> Json {
    let graph = &h.shared.graph;
    let counts = jm.resources.vertex_counts(h.job_id(), graph.vertices.len());
    let state = h.state();
    let vertices: Vec<Json> = graph
        .vertices
        .iter()
        .zip(counts)
        .map(|(v, c)| {
            json!({
                "id": v.id,
                "name": v.description,
                "kind": if v.is_source() { "source" } else if v.is_sink() { "sink" } else { "operator" },
                "parallelism": v.parallelism,
                "status": state_name(&state),
                "metrics": {
                    "read-records": c.records_in,
                    "write-records": c.records_out,
                    "malformed-records": c.malformed_records,
                },
            })
        })
        .collect();
    let reason = match &state {
        JobState::Failed(r) => Some(r.clone()),
        _ => h.shared.note(),
    };
    json!({
        "jid": h.job_id(),
        "name": graph.name,
        "state": state_name(&state),
        "reason": reason,
        "duration": h.shared.duration().as_millis() as u64,
        "restarts": h.metrics().restarts(),
        "restores": h.metrics().restores(),
        "restored-checkpoint": h.metrics().restored_checkpoint(),
        "vertices": vertices,
    })
}

async fn job(jm: &JobManager, id: &str) -> Reply {
    if let Some(h) = jm.live_job(id) {
        return reply(StatusCode::OK, live_job_json(jm, &h));
    }
    match crate::job::registry::get(jm.store(), id).await {
        Ok(Some(r)) => reply(
            StatusCode::OK,
            json!({
                "jid": r.job_id,
                "name": r.name,
                "state": recorded_state(&r),
                "vertices": [],
            }),
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn checkpoints(jm: &JobManager, id: &str) -> Reply {
    let Some(h) = jm.live_job(id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no running job {id} (checkpoint history is kept for live jobs)"),
        );
    };
    let history = h.metrics().checkpoints();
    let completed: Vec<_> = history.iter().filter(|c| c.completed).collect();
    reply(
        StatusCode::OK,
        json!({
            "counts": {
                "completed": completed.len(),
                "failed": history.len() - completed.len(),
                "total": history.len(),
            },
            "latest": completed.last(),
            "history": history,
        }),
    )
}

async fn cancel(jm: &JobManager, id: &str) -> Reply {
    match jm.live_job(id) {
        Some(h) if !h.state().is_terminal() => {
            // Recorded before it is acknowledged: a job manager that stops before the cancel is
            // done leaves it to the next one, which finishes it instead of resuming the job.
            let recorded = crate::job::registry::set_state(
                jm.store(),
                id,
                crate::job::registry::RecordedState::Cancelling,
            )
            .await;
            if let Err(e) = recorded {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the cancel of job {id} could not be recorded ({e}); try again"),
                );
            }
            h.cancel();
            reply(
                StatusCode::ACCEPTED,
                json!({ "jid": id, "request": "cancel" }),
            )
        }
        Some(h) => error(
            StatusCode::CONFLICT,
            format!("job {id} has already ended ({})", state_name(&h.state())),
        ),
        None => error(StatusCode::NOT_FOUND, format!("no running job {id}")),
    }
}

/// Prometheus text exposition.
fn metrics(jm: &JobManager) -> Reply {
    let mut out = String::new();
    let tms = jm.resources.task_managers();
    let _ = writeln!(out, "# HELP rivulet_taskmanagers Registered task managers.");
    let _ = writeln!(out, "# TYPE rivulet_taskmanagers gauge");
    let _ = writeln!(out, "rivulet_taskmanagers {}", tms.len());
    let _ = writeln!(out, "# HELP rivulet_slots Task slots, by state.");
    let _ = writeln!(out, "# TYPE rivulet_slots gauge");
    let total: usize = tms.iter().map(|t| t.slots).sum();
    let free: usize = tms.iter().map(|t| t.free_slots).sum();
    let _ = writeln!(out, "rivulet_slots{{state=\"total\"}} {total}");
    let _ = writeln!(out, "rivulet_slots{{state=\"free\"}} {free}");
    let _ = writeln!(
        out,
        "# HELP rivulet_job_records_total Records into and out of each job vertex."
    );
    let _ = writeln!(out, "# TYPE rivulet_job_records_total counter");
    let mut checkpoint_lines = String::new();
    let mut restart_lines = String::new();
    let mut restore_lines = String::new();
    let mut malformed_lines = String::new();
    for h in jm.live_jobs() {
        let graph = &h.shared.graph;
        let counts = jm.resources.vertex_counts(h.job_id(), graph.vertices.len());
        for (v, c) in graph.vertices.iter().zip(counts) {
            let labels = format!("job=\"{}\",vertex=\"{}\"", h.job_id(), escape(&v.id));
            let _ = writeln!(
                out,
                "rivulet_job_records_total{{{labels},direction=\"in\"}} {}",
                c.records_in
            );
            let _ = writeln!(
                out,
                "rivulet_job_records_total{{{labels},direction=\"out\"}} {}",
                c.records_out
            );
            if v.is_source() {
                let _ = writeln!(
                    malformed_lines,
                    "rivulet_job_malformed_records_total{{{labels}}} {}",
                    c.malformed_records
                );
            }
        }
        let history = h.metrics().checkpoints();
        let completed = history.iter().filter(|c| c.completed).count();
        let _ = writeln!(
            checkpoint_lines,
            "rivulet_job_checkpoints_total{{job=\"{}\",result=\"completed\"}} {completed}",
            h.job_id()
        );
        let _ = writeln!(
            checkpoint_lines,
            "rivulet_job_checkpoints_total{{job=\"{}\",result=\"declined\"}} {}",
            h.job_id(),
            history.len() - completed
        );
        let _ = writeln!(
            restart_lines,
            "rivulet_job_restarts_total{{job=\"{}\"}} {}",
            h.job_id(),
            h.metrics().restarts()
        );
        let _ = writeln!(
            restore_lines,
            "rivulet_job_restores_total{{job=\"{}\"}} {}",
            h.job_id(),
            h.metrics().restores()
        );
    }
    let _ = writeln!(
        out,
        "# HELP rivulet_job_checkpoints_total Checkpoints by result."
    );
    let _ = writeln!(out, "# TYPE rivulet_job_checkpoints_total counter");
    out.push_str(&checkpoint_lines);
    let _ = writeln!(
        out,
        "# HELP rivulet_job_restarts_total Job restarts after failures."
    );
    let _ = writeln!(out, "# TYPE rivulet_job_restarts_total counter");
    out.push_str(&restart_lines);
    let _ = writeln!(
        out,
        "# HELP rivulet_job_restores_total Job attempts started from a completed checkpoint."
    );
    let _ = writeln!(out, "# TYPE rivulet_job_restores_total counter");
    out.push_str(&restore_lines);
    let _ = writeln!(
        out,
        "# HELP rivulet_job_malformed_records_total Malformed records skipped by each source vertex."
    );
    let _ = writeln!(out, "# TYPE rivulet_job_malformed_records_total counter");
    out.push_str(&malformed_lines);
    let mut response = Response::new(Full::new(Bytes::from(out)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Escapes a Prometheus label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
