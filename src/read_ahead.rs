//! A read-ahead buffer between the client socket and TLS.
//!
//! rustls asks its transport for at most 4 KiB at a time (its record buffer grows in 4 KiB
//! steps and shrinks back whenever it is drained), so without this every 4 KiB of an upload
//! is one `recv` system call. `ReadAhead` reads up to [`READ_AHEAD`] bytes at once and serves
//! the small reads from memory. The buffer only exists while bytes wait in it or the peer
//! keeps sending: it is freed when drained and the socket has nothing more, so an idle
//! connection holds none. Writes pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes asked of the socket per read: sixteen of rustls's 4 KiB reads.
const READ_AHEAD: usize = 64 * 1024;

pub struct ReadAhead<T> {
    inner: T,
    /// Empty (unallocated) when idle; otherwise `buf[pos..end]` is unread data.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    fn serve(&mut self, dst: &mut ReadBuf<'_>) {
        let n = (self.end - self.pos).min(dst.remaining());
        dst.put_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.end {
            this.serve(dst);
            return Poll::Ready(Ok(()));
        }
        // A reader asking for as much as we would buffer gains nothing from a copy.
        if dst.remaining() >= READ_AHEAD {
            this.buf = Vec::new();
            return Pin::new(&mut this.inner).poll_read(cx, dst);
        }
        if this.buf.is_empty() {
            this.buf = vec![0; READ_AHEAD];
        }
        let mut fill = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.inner).poll_read(cx, &mut fill) {
            Poll::Ready(Ok(())) => {
                this.pos = 0;
                this.end = fill.filled().len();
                // end == 0 is end of stream: serve() copies nothing, which says so.
                this.serve(dst);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Nothing to read now: the connection may stay idle for long, so the
                // buffer goes.
                this.buf = Vec::new();
                this.pos = 0;
                this.end = 0;
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order() {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("shutdown");
        });
        let mut reader = ReadAhead::new(server);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = reader.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.expect("writer");
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = ReadAhead::new(server);
        client.write_all(b"hello").await.expect("write");
        let mut chunk = [0u8; 16];
        assert_eq!(reader.read(&mut chunk).await.expect("read"), 5);
        // Drained; the next read finds nothing and must drop the buffer.
        let pending = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            reader.read(&mut chunk),
        )
        .await;
        assert!(pending.is_err());
        assert_eq!(reader.buf.capacity(), 0);
    }
}
