//! Working matrices reused across kernel calls: each thread keeps the
//! buffers its kernels have used, so a call neither allocates nor
//! zero-fills its column matrices and staging copies again (the
//! allocation and `memset` were ~7 % of a training step).

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// `len` zeros, written by rayon's threads in chunks: a kernel's output
/// buffer. `vec![0.0; len]` zero-fills on the calling thread while the
/// others wait (`memset`, with burn's own, was a third of the training
/// step's single-threaded time),
/// and takes its fresh pages' faults there too.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    if len < CHUNK {
        return vec![0.0; len];
    }
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|x| _ = x.write(0.0)));
    // SAFETY: the loop above initialised every one of the first `len`
    // values (a panic there unwinds past this line, leaving `out` empty).
    unsafe { out.set_len(len) };
    out
}

/// Buffers kept per thread, at most.
const KEPT: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` f32 from this thread's pool, returned to it on drop.
/// Its values are unspecified (whatever an earlier call left): every user
/// writes each value before reading it.
pub(crate) struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

impl Scratch {
    /// A buffer of `len` values (the pool's largest, grown where needed;
    /// only the growth is zero-filled).
    pub(crate) fn take(len: usize) -> Scratch {
        let mut buf = POOL
            .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
            .ok()
            .flatten()
            .unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch { buf, len }
    }
}

impl Deref for Scratch {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // Largest last, so that `take` gets it; a full pool drops the
        // smallest. (Thread teardown or a nested borrow just frees it.)
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                let at = p.partition_point(|b| b.len() <= buf.len());
                p.insert(at, buf);
                if p.len() > KEPT {
                    p.remove(0);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_with_the_asked_length_and_are_reused() {
        let mut a = Scratch::take(100);
        assert_eq!(a.len(), 100);
        a.fill(7.0);
        let ptr = a.as_ptr();
        drop(a);
        // The same allocation, at the shorter length asked.
        let b = Scratch::take(10);
        assert_eq!((b.len(), b.as_ptr()), (10, ptr));
        // Two at once are two buffers; growth keeps the old values' room.
        let c = Scratch::take(200);
        assert_eq!(c.len(), 200);
        assert_ne!(c.as_ptr(), b.as_ptr());
        drop((b, c));
        let pool = POOL.with(|p| p.borrow().iter().map(Vec::len).collect::<Vec<_>>());
        assert!(pool.windows(2).all(|w| w[0] <= w[1]) && pool.len() <= KEPT);
    }

    #[test]
    fn zeroed_is_all_zeros_at_every_length() {
        // Below one chunk, exactly chunks, and a partial last chunk.
        for len in [0, 5, 1 << 15, 3 << 15, (1 << 17) + 7] {
            let v = zeroed(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x.to_bits() == 0), "length {len}");
        }
    }
}
