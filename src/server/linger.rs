//! Lingering close: the last answer the gate writes on a connection reaches the client even
//! when the client is still sending.
//!
//! Closing a TCP socket while bytes the application never read wait in its receive queue,
//! or arrive after the close, makes the kernel answer with a reset; the client's kernel then
//! throws away whatever it had received but the client had not read yet. The 431 for an
//! oversized head, or the 401/403 for a refused 1 GiB upload, would arrive as "connection
//! reset by peer" instead. nginx's `lingering_close` solves this, and so does [`Linger`]:
//! when a connection is dropped before the client closed its side, the write side is shut
//! (a FIN after the last answer) and whatever the client still sends is read and thrown
//! away until it closes, pauses for [`LINGER_TIMEOUT`], or [`LINGER_TIME`] has passed.
//!
//! This module owns only the socket's last moments; what was answered is the proxy floor's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Longest a closed connection keeps reading what the client still sends (nginx's
/// `lingering_time` is 30 s). A client uploading into a refusal learns of it within this
/// time, and the gate reads at most this long on its behalf.
pub const LINGER_TIME: Duration = Duration::from_secs(10);

/// A client silent this long has stopped sending; the socket closes at once (nginx's
/// `lingering_timeout` is 5 s).
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes read per `recv` while lingering. Taken on the stack between awaits, so a lingering
/// connection holds no buffer while it waits.
const DISCARD_CHUNK: usize = 16 * 1024;

/// A client TCP connection that lingers on drop unless the client already closed its side.
pub struct Linger {
    /// `None` only after drop handed the socket to the lingering task.
    stream: Option<TcpStream>,
    /// A read returned end of stream: the client sends nothing more, closing is safe.
    read_closed: bool,
}

impl Linger {
    pub fn new(stream: TcpStream) -> Self {
        Linger {
            stream: Some(stream),
            read_closed: false,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        if self.read_closed {
            return;
        }
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Outside a runtime (never the case for a served connection) the socket simply closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream));
        }
    }
}

/// Shuts the write side, then reads and discards until the client closes, goes quiet, or
/// the time is up. Dropping the socket afterwards resets nothing the client still needs.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    loop {
        let quiet = tokio::time::Instant::now() + LINGER_TIMEOUT;
        match tokio::time::timeout_at(quiet.min(deadline), stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        let mut sink = [0u8; DISCARD_CHUNK];
        loop {
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
    }
}

impl AsyncRead for Linger {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(this.stream()?).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if buf.filled().len() == before && buf.remaining() > 0 {
                this.read_closed = true;
            }
        }
        result
    }
}

impl AsyncWrite for Linger {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Reads the first KiB of a request, answers 403 without reading the rest, drops `conn`.
    async fn answer_and_drop<S: AsyncRead + AsyncWrite + Unpin>(mut conn: S) {
        let mut first = [0u8; 1024];
        conn.read_exact(&mut first).await.expect("read");
        conn.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            .await
            .expect("write");
    }

    /// The client writes `upload` bytes the server never reads, then reads the answer the
    /// server wrote before dropping its end. Returns what the client got.
    async fn answer_after_unread_upload(wrap: bool, upload: usize) -> io::Result<Vec<u8>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            if wrap {
                answer_and_drop(Linger::new(stream)).await;
            } else {
                answer_and_drop(stream).await;
            }
        });
        let mut client = TcpStream::connect(addr).await?;
        let data = vec![7u8; upload];
        // The answer is already waiting when the client gets to read it; writing more into a
        // closed connection is what provokes the reset.
        let written = client.write_all(&data).await;
        server.await.expect("server task");
        tokio::time::sleep(Duration::from_millis(100)).await;
        written?;
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn an_answer_survives_a_client_that_is_still_sending() {
        let answer = answer_after_unread_upload(true, 4 * 1024 * 1024)
            .await
            .expect("the client saw a reset");
        assert_eq!(answer, b"HTTP/1.1 403 Forbidden\r\n\r\n");
    }

    /// Proves the test above can fail: a plain close with unread bytes resets the answer away.
    #[tokio::test]
    async fn without_lingering_the_same_answer_is_lost_to_a_reset() {
        let result = answer_after_unread_upload(false, 4 * 1024 * 1024).await;
        assert!(
            result.is_err() || result.as_ref().is_ok_and(|a| a.is_empty()),
            "a plain close delivered {result:?}"
        );
    }

    #[tokio::test]
    async fn a_client_that_closed_first_leaves_nothing_to_linger_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        drop(client);
        let mut conn = Linger::new(stream);
        let mut buf = [0u8; 16];
        assert_eq!(conn.read(&mut buf).await.expect("read"), 0);
        assert!(conn.read_closed);
    }
}
