//! Working matrices reused across kernel calls: each thread keeps the
//! buffers its kernels have used, so a call neither allocates nor
//! zero-fills its column matrices and staging copies again (the
//! allocation and `memset` were ~7 % of a training step).

use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `len` zeros, written by rayon's threads in chunks: a kernel's output
/// buffer. `vec![0.0; len]` zero-fills on the calling thread while the
/// others wait (`memset`, with burn's own, was a third of the training
/// step's single-threaded time),
/// and takes its fresh pages' faults there too.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
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

/// A kernel's output of `len` values, handed out in chunks that are
/// zero-filled only when a thread takes one up ([`Pending::zeroed`]):
/// the zeros go into that thread's cache right before the kernel writes
/// its values there, instead of one pass over the whole buffer in memory
/// first ([`zeroed`]), after which every kernel write missed the cache
/// again.
pub(crate) struct Output {
    buf: Vec<f32>,
    len: usize,
    written: AtomicUsize,
    handed_out: bool,
}

/// One chunk of an [`Output`], not yet initialised.
pub(crate) struct Pending<'a> {
    chunk: &'a mut [MaybeUninit<f32>],
    written: &'a AtomicUsize,
}

impl<'a> Pending<'a> {
    /// The chunk, zero-filled.
    #[inline]
    pub(crate) fn zeroed(self) -> &'a mut [f32] {
        for v in self.chunk.iter_mut() {
            v.write(0.0);
        }
        self.written.fetch_add(self.chunk.len(), Ordering::Relaxed);
        // SAFETY: every value of the chunk was written just above, and
        // `MaybeUninit<f32>` has `f32`'s layout.
        unsafe { &mut *(self.chunk as *mut [MaybeUninit<f32>] as *mut [f32]) }
    }
}

impl Output {
    /// Room for `len` values; nothing written yet.
    pub(crate) fn new(len: usize) -> Output {
        Output {
            buf: Vec::with_capacity(len),
            len,
            written: AtomicUsize::new(0),
            handed_out: false,
        }
    }

    /// The buffer in chunks of `chunk` values (the last may be shorter),
    /// each to be taken up with [`Pending::zeroed`]; once per output.
    pub(crate) fn chunks(&mut self, chunk: usize) -> Vec<Pending<'_>> {
        assert!(!self.handed_out, "an output's chunks are handed out once");
        self.handed_out = true;
        let written = &self.written;
        self.buf.spare_capacity_mut()[..self.len]
            .chunks_mut(chunk.max(1))
            .map(|chunk| Pending { chunk, written })
            .collect()
    }

    /// [`Output::chunks`] as a parallel iterator of zero-filled chunks,
    /// each filled by the thread that takes it.
    pub(crate) fn par_chunks_mut(
        &mut self,
        chunk: usize,
    ) -> impl IndexedParallelIterator<Item = &mut [f32]> + '_ {
        self.chunks(chunk).into_par_iter().map(Pending::zeroed)
    }

    /// The values, once every chunk was taken up.
    pub(crate) fn into_vec(mut self) -> Vec<f32> {
        if self.len > 0 {
            // Each chunk is handed out once and counted once when filled.
            assert_eq!(
                self.written.load(Ordering::Relaxed),
                self.len,
                "every chunk of a kernel's output is filled"
            );
        }
        // SAFETY: the capacity is at least `len`, and every one of the
        // first `len` values was written (the count above; chunks are
        // disjoint and each is counted once, by `Pending::zeroed`).
        unsafe { self.buf.set_len(self.len) };
        self.buf
    }
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
    fn an_output_is_its_chunks_values() {
        for (len, chunk) in [(0, 4), (5, 4), (8, 4), (1000, 7), (3, 10)] {
            let mut out = Output::new(len);
            out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| {
                assert!(c.iter().all(|&x| x.to_bits() == 0));
                c.iter_mut().for_each(|x| *x = i as f32);
            });
            let v = out.into_vec();
            let want: Vec<f32> = (0..len).map(|j| (j / chunk) as f32).collect();
            assert_eq!(v, want, "{len} values in chunks of {chunk}");
        }
    }

    #[test]
    #[should_panic(expected = "every chunk")]
    fn an_output_with_a_chunk_not_taken_up_is_refused() {
        let mut out = Output::new(8);
        let mut chunks = out.chunks(4);
        chunks.pop();
        chunks.into_iter().for_each(|c| _ = c.zeroed());
        let _ = out.into_vec();
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
