//! A small client of the job manager's REST API, for `rivulet run --jobmanager`, `list`,
//! `status` and `cancel`.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use tokio::net::TcpStream;

use crate::error::EngineError;

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

    /// Sends a request; an error status becomes an error carrying the server's message.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Json, EngineError> {
        let stream = TcpStream::connect(self.address.as_str())
            .await
            .map_err(|e| {
                self.failed(format!(
                    "cannot connect ({e}); is `rivulet jobmanager` running there?"
                ))
            })?;
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
