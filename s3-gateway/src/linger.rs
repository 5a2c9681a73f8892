//! Lingering close for the gateway's client connections.
//!
//! A request refused on its headers alone (a malformed `Content-MD5`, a bad signature) is
//! answered without reading its body, and hyper then closes the connection. A client that is
//! still sending that body (most do not wait for `100-continue`) would make the kernel answer
//! the unread bytes with a reset, which can destroy the error response before the client reads
//! it: the client then sees "connection reset" and retries, instead of the S3 error that says
//! what to fix. So, like nginx's `lingering_close`, the connection's shutdown first ends our
//! side (the client sees the whole response and then the end of the stream), then reads and
//! discards what the client still sends, until it closes its side, falls quiet for
//! [`LINGER_IDLE`] or [`LINGER_MAX`] has passed. Only then is the socket closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a closing connection waits for more bytes from a client that fell quiet.
pub const LINGER_IDLE: Duration = Duration::from_secs(1);
/// How long a closing connection reads at most, however fast the client sends.
pub const LINGER_MAX: Duration = Duration::from_secs(10);

/// Reads per poll of the drain before it yields to the runtime: a client sending faster than
/// the gateway discards must not hold a worker thread.
const READS_PER_POLL: usize = 16;

/// A connection whose shutdown lingers: see the module documentation.
#[derive(Debug)]
pub struct Lingering<S> {
    inner: S,
    /// Set once our side is shut down and the drain has begun.
    drain: Option<Drain>,
}

#[derive(Debug)]
struct Drain {
    /// When the drain gives up regardless of the client.
    until: Instant,
    /// Fires after [`LINGER_IDLE`] without bytes, or at `until`.
    timer: Pin<Box<Sleep>>,
}

impl<S> Lingering<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, drain: None }
    }
}

impl<S: AsyncRead + Unpin> Lingering<S> {
    /// Discards what the client still sends: ready once it closed its side, fell quiet, failed,
    /// or the drain ran out of time.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(drain) = self.drain.as_mut() else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; 16 * 1024];
        for _ in 0..READS_PER_POLL {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                // The client closed its side (or the socket failed): nothing left to protect.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    let idle_until = (Instant::now() + LINGER_IDLE).min(drain.until);
                    drain.timer.as_mut().reset(idle_until);
                }
                Poll::Pending => {
                    return match drain.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        if Instant::now() >= drain.until {
            return Poll::Ready(());
        }
        // More may be waiting: come back after the other tasks had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.drain.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            let now = Instant::now();
            this.drain = Some(Drain {
                until: now + LINGER_MAX,
                timer: Box::pin(tokio::time::sleep_until(now + LINGER_IDLE)),
            });
        }
        ready!(this.poll_drain(cx));
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A server that answers and shuts down while the client is still sending megabytes: the
    /// client's writes all succeed and it reads the whole answer, then the end of the stream.
    #[tokio::test]
    async fn a_client_still_sending_gets_the_answer_and_a_clean_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            socket.write_all(b"request head\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            // Far more than the socket buffers hold: without the drain, the server's close
            // turns these bytes into a reset.
            let body = vec![7u8; 32 * 1024 * 1024];
            socket.write_all(&body).unwrap();
            socket.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = Vec::new();
            socket.read_to_end(&mut answer).unwrap();
            answer
        });
        let (socket, _) = listener.accept().await.unwrap();
        let mut conn = Lingering::new(socket);
        conn.write_all(b"400 refused").await.unwrap();
        let started = Instant::now();
        conn.shutdown().await.unwrap();
        assert!(
            started.elapsed() < LINGER_MAX,
            "the client's end stops the drain"
        );
        drop(conn);
        assert_eq!(client.join().unwrap(), b"400 refused");
    }

    /// A client that sends nothing and keeps its side open costs at most the idle wait.
    #[tokio::test]
    async fn a_quiet_client_is_closed_after_the_idle_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let mut conn = Lingering::new(socket);
        let started = Instant::now();
        conn.shutdown().await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= LINGER_IDLE && waited < LINGER_IDLE + Duration::from_secs(2),
            "waited {waited:?}"
        );
        drop(client);
    }

    /// A client that closed its side first is closed at once.
    #[tokio::test]
    async fn a_client_that_left_is_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut conn = Lingering::new(socket);
        let started = Instant::now();
        conn.shutdown().await.unwrap();
        assert!(started.elapsed() < LINGER_IDLE, "{:?}", started.elapsed());
    }
}
