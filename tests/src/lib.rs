//! Shared helpers for the heapkeep integration tests in tests/tests/: byte patterns, a small
//! deterministic RNG, an invariant-check wrapper.

/// `heapkeep::check_invariants()` (which walks the calling thread's heap, every retired heap
/// and the global caches), panicking with the allocator's description on failure.
#[track_caller]
pub fn assert_invariants(context: &str) {
    if let Err(e) = heapkeep::check_invariants() {
        panic!("heapkeep::check_invariants() failed ({context}): {e}");
    }
}

/// The message of a panic payload (from `JoinHandle::join` or `catch_unwind`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "non-string panic payload".to_string()
    }
}

/// The workspace root.
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds `packages` (debug profile) with a nested `cargo build` into
/// `target/nested-tests`, a target directory of its own so it does not wait
/// on the outer cargo's lock; returns the directory holding the artifacts.
/// Test binaries run one after another, so they share it without waiting.
pub fn build_packages(packages: &[&str]) -> std::path::PathBuf {
    let target = workspace().join("target").join("nested-tests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-q"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(workspace())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building {packages:?} failed");
    target.join("debug")
}

/// Builds the `heapkeep` command and the library beside it (once per test
/// binary); returns the command's path.
pub fn heapkeep_cmd() -> &'static std::path::Path {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let dir = build_packages(&["heapkeep-cli", "heapkeep-preload"]);
        let exe = dir.join("heapkeep");
        assert!(exe.exists() && dir.join("libheapkeep_preload.so").exists());
        exe
    })
}

/// Compiles `tests/c/<src>` with `compiler` into `out`: `compiler OPTS -o
/// out SRC EXTRA` (options before, libraries and link flags after).
pub fn compile_c(compiler: &str, src: &str, out: &std::path::Path, opts: &[&str], extra: &[&str]) {
    let status = std::process::Command::new(compiler)
        .args(opts)
        .arg("-o")
        .arg(out)
        .arg(workspace().join("tests").join("c").join(src))
        .args(extra)
        .status()
        .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
    assert!(status.success(), "compiling {src} failed");
}

/// Resident memory of this process in bytes (`VmRSS` in `/proc/self/status`).
pub fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/self/status has VmRSS");
    kib * 1024
}

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

/// Period of [`Pattern`]; prime, so the pattern never lines up with power-of-two boundaries.
const PERIOD: usize = 251;
const TABLE_LEN: usize = PERIOD * 8;

/// A position-dependent byte pattern: `byte(i) = 3 * ((i + shift) % 251) ^ xor`.
/// Different seeds (mod 64256) give different sequences, so a block that received another
/// block's bytes (or stale bytes) is detected. Filling and checking use memcpy/memcmp on a
/// precomputed table, so whole multi-MiB blocks can be checked cheaply even in debug builds.
pub struct Pattern {
    seed: u32,
    table: Box<[u8; TABLE_LEN]>,
}

impl Pattern {
    pub fn new(seed: u32) -> Pattern {
        let seed = seed % (PERIOD as u32 * 256);
        let shift = seed as usize % PERIOD;
        let xor = (seed / PERIOD as u32) as u8;
        let mut table = Box::new([0u8; TABLE_LEN]);
        for (i, b) in table.iter_mut().enumerate() {
            *b = (((i + shift) % PERIOD) as u8).wrapping_mul(3) ^ xor;
        }
        Pattern { seed, table }
    }

    pub fn seed(&self) -> u32 {
        self.seed
    }

    /// Expected byte at offset `i`.
    pub fn byte(&self, i: usize) -> u8 {
        self.table[i % PERIOD]
    }

    /// Fills `len` bytes at `ptr` with the pattern (offset 0 at `ptr`).
    ///
    /// # Safety
    /// `ptr..ptr + len` must be writable.
    pub unsafe fn fill(&self, ptr: *mut u8, len: usize) {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(TABLE_LEN);
            unsafe { std::ptr::copy_nonoverlapping(self.table.as_ptr(), ptr.add(off), n) };
            off += n;
        }
    }

    /// Checks the first `len` bytes at `ptr`; returns the first mismatching offset.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be readable.
    pub unsafe fn check(&self, ptr: *const u8, len: usize) -> Result<(), usize> {
        let mut off = 0;
        while off < len {
            let n = (len - off).min(TABLE_LEN);
            let got = unsafe { std::slice::from_raw_parts(ptr.add(off), n) };
            if got != &self.table[..n] {
                let i = got.iter().zip(self.table.iter()).position(|(a, b)| a != b);
                return Err(off + i.expect("slices differ"));
            }
            off += n;
        }
        Ok(())
    }

    pub fn fill_slice(&self, s: &mut [u8]) {
        unsafe { self.fill(s.as_mut_ptr(), s.len()) }
    }

    pub fn check_slice(&self, s: &[u8]) -> Result<(), usize> {
        unsafe { self.check(s.as_ptr(), s.len()) }
    }

    /// A `Vec` of `len` bytes holding the pattern.
    pub fn vec(&self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        unsafe {
            self.fill(v.as_mut_ptr(), len);
            v.set_len(len);
        }
        v
    }
}

/// Returns the first nonzero offset among `len` bytes at `ptr`.
///
/// # Safety
/// `ptr..ptr + len` must be readable.
pub unsafe fn check_zero(ptr: *const u8, len: usize) -> Result<(), usize> {
    static ZEROS: [u8; 4096] = [0; 4096];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(ZEROS.len());
        let got = unsafe { std::slice::from_raw_parts(ptr.add(off), n) };
        if got != &ZEROS[..n] {
            return Err(off + got.iter().position(|&b| b != 0).expect("nonzero"));
        }
        off += n;
    }
    Ok(())
}

/// SplitMix64: small, deterministic, good enough to drive tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    /// A size biased towards small: mostly 0..=1024, some up to 64 KiB, a few up to `max_big`.
    pub fn size(&mut self, max_big: usize) -> usize {
        match self.next_u64() % 100 {
            0..=79 => self.range(0, 1024),
            80..=96 => self.range(1025, 64 * KIB),
            _ => self.range(64 * KIB + 1, max_big.max(64 * KIB + 1)),
        }
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.range(0, i);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_detects_corruption_and_differs_between_seeds() {
        let p = Pattern::new(7);
        let mut v = p.vec(100_000);
        assert_eq!(p.check_slice(&v), Ok(()));
        v[54_321] ^= 1;
        assert_eq!(p.check_slice(&v), Err(54_321));
        let q = Pattern::new(8);
        assert!(q.check_slice(&p.vec(300)).is_err());
        let r = Pattern::new(7 + 251);
        assert!(r.check_slice(&p.vec(300)).is_err());
        for i in [0, 1, 250, 251, 8000, 99_999] {
            assert_eq!(p.vec(100_000)[i], p.byte(i));
        }
        let z = [0u8, 0, 0, 9];
        assert_eq!(unsafe { check_zero(z.as_ptr(), 3) }, Ok(()));
        assert_eq!(unsafe { check_zero(z.as_ptr(), 4) }, Err(3));
    }
}
