//! Channels between task managers over TCP.
//!
//! A channel that crosses task managers is a plain bounded channel at each end, with a TCP
//! connection in between: on the producer's side a pump thread writes the batches it receives
//! as frames; on the consumer's side the data server reads them into the consumer's input
//! channel. When the consumer falls behind its channel fills, the server stops reading, TCP's
//! window closes and the producer's pump and then the producer block: backpressure crosses
//! the network with memory bounded at both ends.
//!
//! A connection starts with a header frame naming its channel ([`ChannelKey`]); then each
//! frame is one batch ([`super::codec`]). Frames are `length u32 LE | bytes`.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::codec::{decode_batch, encode_batch};
use super::element::Batch;
use super::exchange;
use crate::error::EngineError;

/// Largest frame accepted: a batch of 512 records of up to 128 KiB each.
const MAX_FRAME: usize = 64 << 20;
const MAX_HEADER: usize = 4096;

/// One channel of one attempt of a job: from subtask `from` of the edge's upstream task to
/// subtask `to` of its downstream task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelKey {
    pub job_id: String,
    pub attempt: u32,
    /// Index of the edge in the execution plan.
    pub edge: usize,
    pub from: usize,
    pub to: usize,
}

enum Waiting {
    /// The connection came first: the consumer will take this receiver.
    ForConsumer(Receiver<Batch>),
    /// The consumer came first: the connection will take this sender.
    ForConnection(Sender<Batch>),
}

/// Matches incoming connections with the subtasks that read them, whichever comes first. An
/// entry lives only until both ends have taken their half, so that no sender is kept here (a
/// channel whose connection ended must look disconnected to its consumer).
#[derive(Default)]
pub struct InboundChannels {
    waiting: Mutex<HashMap<ChannelKey, Waiting>>,
}

impl InboundChannels {
    /// The receiving end for a local consumer.
    pub fn receiver(&self, key: &ChannelKey) -> Receiver<Batch> {
        let Ok(mut waiting) = self.waiting.lock() else {
            return crossbeam_channel::never();
        };
        match waiting.remove(key) {
            Some(Waiting::ForConsumer(rx)) => rx,
            Some(Waiting::ForConnection(tx)) => {
                // A second consumer for one key cannot happen; keep the first's pairing.
                waiting.insert(key.clone(), Waiting::ForConnection(tx));
                crossbeam_channel::never()
            }
            None => {
                let (tx, rx) = exchange::channel();
                waiting.insert(key.clone(), Waiting::ForConnection(tx));
                rx
            }
        }
    }

    fn sender(&self, key: &ChannelKey) -> Option<Sender<Batch>> {
        let mut waiting = self.waiting.lock().ok()?;
        match waiting.remove(key) {
            Some(Waiting::ForConnection(tx)) => Some(tx),
            Some(Waiting::ForConsumer(rx)) => {
                // A duplicate connection: refuse it, keep the first.
                waiting.insert(key.clone(), Waiting::ForConsumer(rx));
                None
            }
            None => {
                let (tx, rx) = exchange::channel();
                waiting.insert(key.clone(), Waiting::ForConsumer(rx));
                Some(tx)
            }
        }
    }

    /// Drops what an attempt left waiting (it was cancelled before every end met).
    pub fn forget(&self, job_id: &str, attempt: u32) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.retain(|k, _| !(k.job_id == job_id && k.attempt == attempt));
        }
    }
}

/// The next frame's body, or `None` at the end of the stream; a frame over `limit` is an
/// error (a peer cannot make us allocate more).
pub(crate) fn read_frame(reader: &mut impl Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {limit})"),
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(Some(body))
}

pub(crate) fn write_frame(writer: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    writer.write_all(&(body.len() as u32).to_le_bytes())?;
    writer.write_all(body)
}

/// The first frame of a data connection.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    /// The cluster's shared secret, when it has one: data ports accept only their cluster.
    token: Option<String>,
    key: ChannelKey,
}

/// Accepts data connections for the subtasks of this task manager.
pub struct DataServer {
    pub address: SocketAddr,
    pub inbound: Arc<InboundChannels>,
}

impl DataServer {
    /// Listens on `address` (port 0 picks one) and serves connections on threads. With a
    /// `token`, connections that do not present it are closed.
    pub fn start(address: SocketAddr, token: Option<String>) -> Result<DataServer, EngineError> {
        let listener = TcpListener::bind(address)
            .map_err(|e| EngineError::io(format!("listening for data on {address}"), e))?;
        let address = listener
            .local_addr()
            .map_err(|e| EngineError::io("reading the data address", e))?;
        let inbound = Arc::new(InboundChannels::default());
        let serving = inbound.clone();
        std::thread::Builder::new()
            .name("data-server".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let inbound = serving.clone();
                    let token = token.clone();
                    let _ = std::thread::Builder::new()
                        .name("data-in".into())
                        .spawn(move || {
                            if let Err(e) = serve_connection(stream, &inbound, token.as_deref()) {
                                tracing::debug!("data connection ended: {e}");
                            }
                        });
                }
            })
            .map_err(|e| EngineError::io("starting the data server", e))?;
        Ok(DataServer { address, inbound })
    }
}

fn serve_connection(
    stream: TcpStream,
    inbound: &InboundChannels,
    token: Option<&str>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let Some(header) = read_frame(&mut reader, MAX_HEADER)? else {
        return Ok(());
    };
    let hello: Hello = serde_json::from_slice(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if token.is_some() && hello.token.as_deref() != token {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "a data connection without the cluster's token",
        ));
    }
    let key = hello.key;
    let Some(sender) = inbound.sender(&key) else {
        return Ok(());
    };
    while let Some(frame) = read_frame(&mut reader, MAX_FRAME)? {
        let batch = decode_batch(&frame)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        if sender.send(batch).is_err() {
            break; // the consumer is gone
        }
    }
    Ok(())
}

/// Opens the producer's end of a channel to a subtask on the task manager at `address`.
pub fn connect(
    address: SocketAddr,
    key: &ChannelKey,
    token: Option<&str>,
) -> Result<Sender<Batch>, EngineError> {
    let what = || format!("connecting to the task manager at {address}");
    let mut attempt = 0;
    let stream = loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::debug!("{}: {e}; retrying", what());
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            Err(e) => return Err(EngineError::io(what(), e)),
        }
    };
    stream
        .set_nodelay(true)
        .map_err(|e| EngineError::io(what(), e))?;
    let mut writer = BufWriter::with_capacity(256 * 1024, stream);
    let hello = Hello {
        token: token.map(str::to_string),
        key: key.clone(),
    };
    let header = serde_json::to_vec(&hello).map_err(|e| EngineError::state("channel key", e))?;
    write_frame(&mut writer, &header)
        .and_then(|()| writer.flush())
        .map_err(|e| EngineError::io(what(), e))?;
    let (tx, rx) = exchange::channel();
    std::thread::Builder::new()
        .name("data-out".into())
        .spawn(move || pump(rx, writer))
        .map_err(|e| EngineError::io("starting a data pump", e))?;
    Ok(tx)
}

/// Writes batches to the connection until the producer is done or the connection breaks
/// (then the producer's next send fails, and its task ends).
fn pump(batches: Receiver<Batch>, mut writer: BufWriter<TcpStream>) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    for batch in batches.iter() {
        buffer.clear();
        encode_batch(&batch, &mut buffer);
        if let Err(e) = write_frame(&mut writer, &buffer) {
            tracing::debug!("data connection broke: {e}");
            return;
        }
        // Flush when nothing more is queued: batches already wait for a full size or a flush
        // interval upstream, so holding them here would only add latency.
        if batches.is_empty() && writer.flush().is_err() {
            return;
        }
    }
    let _ = writer.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Record, Value};
    use crate::runtime::element::Element;

    #[test]
    fn batches_cross_a_connection_in_order_whichever_end_comes_first() {
        let server = DataServer::start("127.0.0.1:0".parse().unwrap(), Some("t".into())).unwrap();
        let key = |to| ChannelKey {
            job_id: "j".into(),
            attempt: 0,
            edge: 0,
            from: 0,
            to,
        };
        // Consumer first.
        let rx0 = server.inbound.receiver(&key(0));
        let tx0 = connect(server.address, &key(0), Some("t")).unwrap();
        // Connection first.
        let tx1 = connect(server.address, &key(1), Some("t")).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let rx1 = server.inbound.receiver(&key(1));
        for i in 0..100 {
            let batch = vec![Element::Record(Record::new(i, vec![Value::Int(i)]))];
            tx0.send(batch.clone()).unwrap();
            tx1.send(batch).unwrap();
        }
        drop((tx0, tx1));
        for rx in [rx0, rx1] {
            let got: Vec<i64> = rx
                .iter()
                .flatten()
                .map(|e| match e {
                    Element::Record(r) => r.timestamp,
                    _ => -1,
                })
                .collect();
            assert_eq!(got, (0..100).collect::<Vec<_>>());
        }
    }
}
