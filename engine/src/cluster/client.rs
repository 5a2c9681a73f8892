//! A small client of the job manager's REST API, for `rivulet run --jobmanager`, `list`,
//! `status` and `cancel`.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::EngineError;

/// How long a connection to the job manager may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may wait for its whole answer: the job manager answers every request
/// from memory (a cancel is started, not awaited), so more than this means it is stuck, or
/// something else listens at the address.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    /// `host:port`, resolved at each request (a job manager behind a DNS name may move).
    address: String,
    token: Option<String>,
}

impl Client {
    pub fn new(address: String, token: Option<String>) -> Self {
        Self { address, token }
    }

    fn failed(&self, message: impl std::fmt::Display) -> EngineError {
        EngineError::Task {
            task: format!("job manager at {}", self.address),
            message: message.to_string(),
        }
    }

    fn unreachable(&self, detail: String) -> EngineError {
        EngineError::Unreachable {
            address: self.address.clone(),
            detail,
        }
    }

    /// Sends a request; an error status becomes an error carrying the server's message. A job
    /// manager that cannot be reached or does not answer in time is
    /// [`EngineError::Unreachable`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Json, EngineError> {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.address.as_str()))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return Err(self.unreachable(format!(
                        "cannot connect ({e}); is `rivulet jobmanager` running there?"
                    )));
                }
                Err(_) => {
                    return Err(self.unreachable(format!(
                        "no connection within {CONNECT_TIMEOUT:?}; check the address and that \
                     nothing blocks it"
                    )));
                }
            };
        match tokio::time::timeout(ANSWER_TIMEOUT, self.exchange(stream, method, path, body)).await
        {
            Ok(answer) => answer,
            Err(_) => Err(self.unreachable(format!(
                "no answer within {ANSWER_TIMEOUT:?}; is a Rivulet job manager listening there, \
                 and is it running (not stopped)?"
            ))),
        }
    }

    async fn exchange(
        &self,
        stream: TcpStream,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Json, EngineError> {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.failed(e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.address.as_str());
        if let Some(token) = &self.token {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.failed(e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.failed(e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.failed(e))?
            .to_bytes();
        let json: Json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            return Ok(json);
        }
        let message = json
            .get("errors")
            .and_then(|e| e.as_array())
            .map(|e| {
                e.iter()
                    .filter_map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_else(|| json.to_string());
        Err(self.failed(match status {
            StatusCode::UNAUTHORIZED => {
                format!("{message} (give --token or RIVULET_CLUSTER_TOKEN)")
            }
            _ => format!("{status}: {message}"),
        }))
    }

    pub async fn get(&self, path: &str) -> Result<Json, EngineError> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: String) -> Result<Json, EngineError> {
        self.request(Method::POST, path, Some(body)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that accepts and never answers (a stopped job manager, another service on
    /// the port): `rivulet list` and `status` once waited for it forever.
    #[tokio::test(start_paused = true)]
    async fn a_silent_job_manager_is_unreachable_after_the_answer_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                open.push(socket);
            }
        });
        let client = Client::new(address.clone(), None);
        let err = client.get("/overview").await.unwrap_err();
        match &err {
            EngineError::Unreachable { address: a, detail } => {
                assert_eq!(a, &address);
                assert!(detail.contains("no answer within 30s"), "{detail}");
            }
            other => panic!("{other}"),
        }
        held.abort();
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = Client::new(address, None)
            .get("/overview")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::Unreachable { detail, .. } if detail.contains("cannot connect")),
            "{err}"
        );
    }
}
