//! A pool of reusable, aligned byte buffers for batch inputs.
//!
//! Concatenating a batch needs a fresh buffer per execution; at thousands of
//! executions a second the allocator shows up. A pooled buffer wraps into
//! [`Bytes`] and goes back to the pool when the last view of it is dropped.

use bytes::Bytes;
use parking_lot::Mutex;
use pomme_core::tensor::AlignedBuf;
use std::sync::Arc;

/// Buffers kept per pool; beyond this, returned buffers are freed.
const MAX_POOLED: usize = 32;

/// A shared pool of [`AlignedBuf`]s.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Vec<AlignedBuf>>,
}

struct Pooled {
    buf: Option<AlignedBuf>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().expect("present until drop").as_ref()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = self.pool.free.lock();
            if free.len() < MAX_POOLED {
                free.push(buf);
            }
        }
    }
}

impl BufferPool {
    /// A new, empty pool.
    pub fn new() -> Arc<BufferPool> {
        Arc::new(BufferPool::default())
    }

    /// Fills a buffer of `len` bytes with `fill` and freezes it into [`Bytes`]
    /// whose drop returns the buffer here.
    pub fn build(self: &Arc<Self>, len: usize, fill: impl FnOnce(&mut [u8])) -> Bytes {
        let reused = {
            let mut free = self.free.lock();
            // Best fit among a few: the first buffer large enough.
            free.iter()
                .position(|b| b.capacity() >= len)
                .map(|i| free.swap_remove(i))
        };
        let mut buf = match reused {
            Some(mut b) => {
                b.resize(len);
                b
            }
            None => AlignedBuf::zeroed(len),
        };
        fill(buf.as_mut_bytes());
        Bytes::from_owner(Pooled {
            buf: Some(buf),
            pool: self.clone(),
        })
    }

    /// Buffers waiting for reuse.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.free.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back() {
        let pool = BufferPool::new();
        let b = pool.build(16, |d| d.copy_from_slice(&[7u8; 16]));
        assert_eq!(&b[..], &[7u8; 16]);
        let view = b.slice(4..8);
        drop(b);
        assert_eq!(pool.idle(), 0, "a view still holds the buffer");
        drop(view);
        assert_eq!(pool.idle(), 1);
        let c = pool.build(8, |d| d.fill(1));
        assert_eq!(c.len(), 8);
        assert_eq!(pool.idle(), 0);
    }
}
