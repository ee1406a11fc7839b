//! Socket reads into a growing buffer without re-zeroing it.

use futures_lite::{AsyncRead, AsyncReadExt};

use crate::server::shutdown::Gate;

/// Bytes asked of the socket per read.
pub(crate) const READ_CHUNK_BYTES: usize = 64 << 10;

/// A receive buffer: `bytes[..len]` holds unread data. Its allocation only
/// grows (and is zeroed) when a frame needs more room, not on every read.
pub(crate) struct RecvBuf {
    bytes: Vec<u8>,
    len: usize,
}

impl RecvBuf {
    pub(crate) fn new() -> RecvBuf {
        RecvBuf {
            bytes: vec![0; READ_CHUNK_BYTES],
            len: 0,
        }
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Drops the first `n` bytes (the frames already answered).
    pub(crate) fn consume(&mut self, n: usize) {
        assert!(n <= self.len, "consumed more than was read");
        self.bytes.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Reads once from `stream`, unless the node starts shutting down first.
    /// Returns false when the connection should end (end of stream, an
    /// error, or shutdown).
    pub(crate) async fn read_unless_stopping(
        &mut self,
        stream: &mut (impl AsyncRead + Unpin),
        stopping: &Gate,
    ) -> bool {
        let read = futures_lite::future::or(async { Some(self.read_from(stream).await) }, async {
            stopping.closed().await;
            None
        })
        .await;
        matches!(read, Some(Ok(n)) if n > 0)
    }

    /// Reads once from `stream`. Returns the bytes read (0 at end of stream).
    async fn read_from(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<usize> {
        if self.bytes.len() - self.len < READ_CHUNK_BYTES / 4 {
            self.bytes.resize(self.bytes.len() + READ_CHUNK_BYTES, 0);
        }
        let n = stream.read(&mut self.bytes[self.len..]).await?;
        self.len += n;
        Ok(n)
    }
}
