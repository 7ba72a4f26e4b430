//! The DP server's connection I/O: writes are gathered until HTTP/2 flushes, so that a unary
//! response (HEADERS, DATA, trailers) leaves as one TLS record and one system call.
//!
//! Without it, every `poll_write` of the h2 codec goes through rustls straight to the socket,
//! and h2 flushes between a response's DATA frame and its trailers whenever it keeps the DATA
//! payload aside instead of copying it (payloads of 256 bytes or more on a vectored stream).
//! Each extra write is a TCP segment on loopback, which wakes the agent's side once more.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Writes at least this large skip the buffer (after what is buffered): copying them would
/// gain nothing, the write is large anyway.
const CAPACITY: usize = 16 * 1024;

/// A stream whose writes are held until [`AsyncWrite::poll_flush`] (or a full buffer).
#[derive(Debug)]
pub(crate) struct GatheredWrites<S> {
    inner: S,
    /// Bytes accepted from the writer and not yet handed to `inner`.
    pending: Vec<u8>,
    /// How much of `pending` `inner` has taken already.
    written: usize,
}

impl<S> GatheredWrites<S> {
    pub(crate) fn new(inner: S) -> Self {
        GatheredWrites {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> GatheredWrites<S> {
    /// Hands everything buffered to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GatheredWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GatheredWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() + buf.len() > CAPACITY {
            ready!(this.poll_drain(cx))?;
        }
        if buf.len() >= CAPACITY {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.pending.len() + len > CAPACITY {
            ready!(this.poll_drain(cx))?;
        }
        if len >= CAPACITY {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for buf in bufs {
            this.pending.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    /// `false`, although vectored writes work: h2 then copies DATA payloads below 1 KiB into
    /// its own buffer (instead of below 256 bytes), so a typical response's DATA and trailers
    /// are encoded before the one flush.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for GatheredWrites<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Records every write it takes and every flush; refuses writes while `blocked`, taking
    /// at most `max_write` bytes per write.
    #[derive(Debug, Default, Clone)]
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        blocked: Arc<Mutex<bool>>,
        max_write: usize,
    }

    impl Recorder {
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if *self.blocked.lock().unwrap() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(if self.max_write == 0 {
                usize::MAX
            } else {
                self.max_write
            });
            self.log
                .lock()
                .unwrap()
                .push(format!("write {}", String::from_utf8_lossy(&buf[..n])));
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.log.lock().unwrap().push("flush".to_string());
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.log.lock().unwrap().push("shutdown".to_string());
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_leave_together_on_flush() {
        let recorder = Recorder::default();
        let mut stream = GatheredWrites::new(recorder.clone());
        stream.write_all(b"headers ").await.unwrap();
        let n = stream
            .write_vectored(&[IoSlice::new(b"data "), IoSlice::new(b"more ")])
            .await
            .unwrap();
        assert_eq!(n, 10);
        stream.write_all(b"trailers").await.unwrap();
        assert_eq!(recorder.log(), Vec::<String>::new());

        stream.flush().await.unwrap();
        assert_eq!(
            recorder.log(),
            ["write headers data more trailers", "flush"]
        );

        stream.write_all(b"bye").await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(
            recorder.log(),
            [
                "write headers data more trailers",
                "flush",
                "write bye",
                "shutdown"
            ]
        );
    }

    #[tokio::test]
    async fn partial_and_refused_writes_keep_the_rest() {
        let recorder = Recorder {
            max_write: 4,
            ..Recorder::default()
        };
        let mut stream = GatheredWrites::new(recorder.clone());
        stream.write_all(b"0123456789").await.unwrap();

        *recorder.blocked.lock().unwrap() = true;
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut stream).poll_flush(&mut cx).is_pending());
        assert_eq!(recorder.log(), Vec::<String>::new());

        *recorder.blocked.lock().unwrap() = false;
        stream.flush().await.unwrap();
        assert_eq!(
            recorder.log(),
            ["write 0123", "write 4567", "write 89", "flush"]
        );
    }

    #[tokio::test]
    async fn large_writes_pass_through_after_what_is_buffered() {
        let recorder = Recorder::default();
        let mut stream = GatheredWrites::new(recorder.clone());
        stream.write_all(b"small").await.unwrap();
        let large = vec![b'x'; CAPACITY];
        let n = stream.write(&large).await.unwrap();
        assert_eq!(n, CAPACITY);
        assert_eq!(
            recorder.log(),
            [
                "write small".to_string(),
                format!("write {}", "x".repeat(CAPACITY))
            ]
        );
        assert!(stream.pending.is_empty());
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (client, server) = tokio::io::duplex(64);
        let mut client = GatheredWrites::new(client);
        let mut server = GatheredWrites::new(server);
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0; 4];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"ping");
        assert!(!client.is_write_vectored());
    }
}
