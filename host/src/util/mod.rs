//! Small helpers shared across the host: error messages, files, limits,
//! and the allocator's settings.

pub mod cuda;
pub(crate) mod fs;
pub(crate) mod limits;
pub(crate) mod resize;

/// The folder of the running executable; for test and bench executables,
/// which cargo puts in `target/<profile>/deps`, the profile folder, where it
/// puts the binaries and the plugin libraries.
pub fn exe_dir() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    match dir.parent() {
        Some(profile) if dir.file_name().is_some_and(|n| n == "deps") => {
            Some(profile.to_path_buf())
        }
        _ => Some(dir.to_path_buf()),
    }
}

/// glibc gives every freed block above its mmap threshold (which it moves
/// up to at most 32 MiB) back to the kernel, so the activations of a 64²
/// U-Net step are mapped, faulted in and zeroed again on every step. Above
/// the threshold set here (1 GiB) they stay in the heap and are reused,
/// as is the memory freed at its top (docs/performance.md). Other
/// platforms keep their allocator's defaults. `dtx`'s `main` calls it
/// first, and so do the kernel benchmarks, to time what `dtx` runs.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters; callers run it
    // first in `main`, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Runs `f` on a thread of rayon's global pool, built here with
/// `RAYON_NUM_THREADS` threads (default: every core) and 64 MiB stacks.
///
/// The kernels split their work with rayon. Called from a thread outside
/// the pool, every parallel kernel hands its jobs over and puts the caller
/// to sleep until they are done, then wakes it, once per kernel call.
/// Called from a pool thread, the caller takes part in the work and no
/// hand-over is needed: a 16×16 training step takes ~4 % less time, a
/// 32×32 one no measurably less (docs/performance.md). Results do not
/// change: the kernels split their work by the pool's thread count, which
/// is the same either way.
///
/// The stacks are 64 MiB because everything `main` runs now runs on one of
/// them (rayon's default is 2 MiB, a main thread's 8 MiB). When a caller
/// has built the global pool already, `f` runs on that pool as it is.
pub fn in_thread_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // An error here means the pool exists already: use it.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(64 << 20)
        .build_global();
    rayon::scope(|_| f())
}

/// The candidate closest to `word` when it is close enough to be a likely
/// typo (case-insensitive match, a longer word that starts with it, or an
/// edit distance of about a third of the word, counting a swap of neighbours
/// as one edit).
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = match word.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|candidate| {
            let (w, c) = (word.to_ascii_lowercase(), candidate.to_ascii_lowercase());
            let d = if w == c {
                0
            } else if c.len() >= 4 && w.starts_with(&c) {
                // `training` for `train`: a longer spelling of the same word.
                limit
            } else {
                edit_distance(&w, &c)
            };
            (d, candidate)
        })
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, candidate)| candidate)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and
/// swaps of two neighbours each cost 1.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Writes `bytes` to `path` through a temporary file beside it (`<path>.tmp`):
/// write, fsync, rename, so a reader never sees half a file. When any step
/// fails (a full disk), the temporary file is removed, so it neither takes
/// the space a retry needs nor is left behind.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Bytes in a GiB.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The machine's physical memory in bytes (`MemTotal` of `/proc/meminfo`;
/// 16 GiB where that cannot be read).
pub fn machine_memory() -> f64 {
    static MEMORY: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *MEMORY.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(16.0 * GIB, |kb| kb * 1024.0)
    })
}

/// Why a tensor cannot be allocated ([`check_allocation`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocationError {
    /// The element count overflows.
    #[error("shape {shape:?} has more elements than a tensor can hold")]
    TooManyElements {
        /// The shape asked for.
        shape: Vec<usize>,
    },
    /// More bytes than the machine's memory.
    #[error(
        "a tensor of shape {shape:?} needs {:.1} GiB, more than this machine's {:.1} GiB of memory",
        need / GIB,
        have / GIB
    )]
    TooLarge {
        /// The shape asked for.
        shape: Vec<usize>,
        /// Bytes it needs.
        need: f64,
        /// Bytes of memory the machine has.
        have: f64,
    },
}

/// Checks that a tensor of `shape` with `bytes_per_value` bytes a value can
/// exist on this machine: its element count does not overflow and it fits
/// in the machine's memory. Returns the element count, or why not (naming
/// the shape and the figures).
pub fn check_allocation(shape: &[usize], bytes_per_value: usize) -> Result<usize, AllocationError> {
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| AllocationError::TooManyElements {
            shape: shape.to_vec(),
        })?;
    let need = n as f64 * bytes_per_value as f64;
    let have = machine_memory();
    if need > have {
        return Err(AllocationError::TooLarge {
            shape: shape.to_vec(),
            need,
            have,
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_runs_on_a_pool_thread_and_returns_its_value() {
        // Outside the pool here (the test harness's thread), inside `f`.
        assert_eq!(rayon::current_thread_index(), None);
        let (inside, value) = in_thread_pool(|| (rayon::current_thread_index(), 42));
        assert!(inside.is_some());
        assert_eq!(value, 42);
        // A second call finds the pool built and uses it.
        assert!(in_thread_pool(rayon::current_thread_index).is_some());
    }

    #[test]
    fn distances_match_hand_counts() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("stpes", "steps"), 1, "a swap is one edit");
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("steps", "steps"), 0);
    }

    #[test]
    fn nearest_suggests_only_close_words() {
        assert_eq!(nearest("stpes", ["steps", "batch"]), Some("steps"));
        assert_eq!(nearest("zzz", ["steps", "batch"]), None);
    }

    #[test]
    fn nearest_finds_typos_and_ignores_strangers() {
        let keys = ["steps", "batch", "lr", "schedule", "timesteps"];
        assert_eq!(nearest("stpes", keys), Some("steps"));
        assert_eq!(nearest("Steps", keys), Some("steps"));
        assert_eq!(nearest("shedule", keys), Some("schedule"));
        assert_eq!(nearest("learning_rate", keys), None);
        assert_eq!(
            nearest("training", ["run", "train", "target"]),
            Some("train")
        );
        assert_eq!(edit_distance("lamda", "lambda"), 1);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    /// A write that fails at its last step (the target is a folder, as a
    /// full disk fails at write or fsync) leaves no `.tmp` behind, and the
    /// file already there stays as it was.
    #[test]
    fn a_failed_atomic_write_removes_its_temporary_file() {
        let dir = std::env::temp_dir().join(format!("dtx-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("target.bin/inside")).unwrap();
        assert!(write_atomic(&dir.join("target.bin"), b"new").is_err());
        assert!(!dir.join("target.bin.tmp").exists());
        write_atomic(&dir.join("ok.bin"), b"one").unwrap();
        assert_eq!(std::fs::read(dir.join("ok.bin")).unwrap(), b"one");
        assert!(!dir.join("ok.bin.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
