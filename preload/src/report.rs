//! The exit report `heapkeep run` reads, and the C extension API
//! (`heapkeep.h`).
//!
//! When the environment names a report prefix (`HEAPKEEP_REPORT`, set by
//! `heapkeep run`), the library writes `<prefix>.<pid>` as one JSON object
//! when the process exits: from `.fini_array`, which runs after the
//! program's own `atexit` handlers and C++ static destructors (the preloaded
//! library is finalized after the program), so their allocations count too.
//! A process that ends by `_exit`, `exec` or a signal writes nothing.
//! Everything here runs without allocating: the JSON is formatted into a
//! stack buffer.

use core::ffi::{c_char, c_int, CStr};

/// Environment variable holding the report path prefix.
const REPORT_ENV: &CStr = c"HEAPKEEP_REPORT";

/// A fixed-capacity byte buffer; writes past the end are dropped.
struct Buf<const N: usize> {
    data: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    fn new() -> Self {
        Buf {
            data: [0; N],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(N - self.len);
        self.data[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_u64(&mut self, v: u64) {
        // `core::fmt` does not allocate; writing to a Buf never fails.
        let _ = core::fmt::Write::write_fmt(self, format_args!("{v}"));
    }

    fn full(&self) -> bool {
        self.len == N
    }
}

impl<const N: usize> core::fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Size of the report buffer: the counts and up to 64 stack rows of at
/// most ~190 bytes each.
const REPORT_MAX: usize = 16 * 1024;

/// Appends `s` as a JSON string (quoted, escaped).
fn push_json_str<const N: usize>(out: &mut Buf<N>, s: &str) {
    out.push(b"\"");
    for c in s.bytes() {
        match c {
            b'"' | b'\\' => out.push(&[b'\\', c]),
            0..=0x1f => {
                let _ = core::fmt::Write::write_fmt(out, format_args!("\\u{c:04x}"));
            }
            _ => out.push(&[c]),
        }
    }
    out.push(b"\"");
}

/// Formats the report of `s` and `stacks` for process `pid` as one line of
/// JSON.
fn format_report(
    s: &heapkeep::Stats,
    stacks: &heapkeep::StackPeaks,
    pid: u64,
    two_heaps: bool,
    out: &mut Buf<REPORT_MAX>,
) {
    let fields: [(&[u8], u64); 12] = [
        (b"pid", pid),
        (b"allocs", s.allocs),
        (b"frees", s.frees),
        (b"reallocs", s.reallocs),
        (b"bytes_requested", s.bytes_requested),
        (b"bytes_allocated", s.bytes_allocated),
        (b"peak_live_bytes", s.peak_live_bytes),
        (b"live_bytes_at_exit", s.live_bytes),
        (b"live_blocks_at_exit", s.live_blocks),
        (b"os_mapped_bytes_at_exit", s.os_mapped_bytes),
        (b"os_mapped_peak_bytes", s.os_mapped_peak_bytes),
        (b"stats_enabled", heapkeep::STATS_ENABLED as u64),
    ];
    out.push(b"{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b",");
        }
        out.push(b"\"");
        out.push(k);
        out.push(b"\":");
        out.push_u64(*v);
    }
    out.push(if two_heaps {
        b",\"heaps\":2".as_slice()
    } else {
        b",\"heaps\":1"
    });
    out.push(b",\"threads_measured\":");
    out.push_u64(stacks.threads as u64);
    out.push(b",\"stacks\":[");
    for (i, p) in stacks.deepest().iter().enumerate() {
        if i > 0 {
            out.push(b",");
        }
        out.push(b"{\"thread_id\":");
        out.push_u64(p.thread_id.into());
        out.push(b",\"name\":");
        push_json_str(out, p.name());
        out.push(b",\"peak_bytes\":");
        out.push_u64(p.peak_bytes as u64);
        out.push(b",\"size_bytes\":");
        out.push_u64(p.size_bytes as u64);
        out.push(if p.running {
            b",\"running\":true".as_slice()
        } else {
            b",\"running\":false"
        });
        out.push(if p.main {
            b",\"main\":true}".as_slice()
        } else {
            b",\"main\":false}"
        });
    }
    out.push(b"]}\n");
}

/// Adds another heapkeep copy's counts to this one's. Calls, bytes and
/// blocks are exact sums; the two peaks were reached apart, so their sum
/// is an upper bound of the process's peak (exact when one heap holds all
/// but a few bytes at its peak, as the C heap of a Rust program does).
fn add_peer(s: &mut heapkeep::Stats, p: &heapkeep::Stats) {
    s.allocs += p.allocs;
    s.frees += p.frees;
    s.reallocs += p.reallocs;
    s.bytes_requested += p.bytes_requested;
    s.bytes_allocated += p.bytes_allocated;
    s.live_bytes += p.live_bytes;
    s.live_blocks += p.live_blocks;
    s.peak_live_bytes += p.peak_live_bytes;
    s.os_mapped_bytes += p.os_mapped_bytes;
    s.os_mapped_peak_bytes += p.os_mapped_peak_bytes;
}

/// The C front's work at exit: the profile (if one is taken), then the
/// report (if `HEAPKEEP_REPORT` is set).
extern "C" fn at_exit() {
    heapkeep::c_front_exit();
    write_exit_report();
}

/// Writes the exit report if `HEAPKEEP_REPORT` is set.
fn write_exit_report() {
    // SAFETY: getenv with a valid C string; the result is read before any
    // call that could change the environment.
    let prefix = unsafe { libc::getenv(REPORT_ENV.as_ptr()) };
    if prefix.is_null() {
        return;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    let prefix = unsafe { CStr::from_ptr(prefix) }.to_bytes();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let mut path = Buf::<4096>::new();
    path.push(prefix);
    path.push(b".");
    path.push_u64(pid);
    // Not full: nothing was cut off and there is room for the NUL.
    if path.full() {
        return;
    }
    path.data[path.len] = 0;
    let mut stats = heapkeep::stats();
    // A Rust program on heapkeep has its own copy, which registered at
    // exit (`heapkeep::peer`): its calls are the program's too.
    let peer = heapkeep::peer::peer_stats();
    if let Some(p) = &peer {
        add_peer(&mut stats, p);
    }
    // Two copies of the library may be loaded (say, preloaded twice from
    // different paths): the one that served no call keeps quiet, so it
    // cannot overwrite the other's report. (Asking dlsym which `malloc` won
    // does not work: a non-PIE program that takes malloc's address makes
    // its own PLT entry the canonical one.)
    if heapkeep::STATS_ENABLED && stats.allocs == 0 && stats.frees == 0 && stats.reallocs == 0 {
        return;
    }
    let stacks = heapkeep::stack_peaks();
    let mut json = Buf::<REPORT_MAX>::new();
    format_report(&stats, &stacks, pid, peer.is_some(), &mut json);
    // SAFETY: `path` is NUL-terminated; the fd is ours until closed.
    unsafe {
        let fd = libc::open(
            path.data.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o600,
        );
        if fd < 0 {
            return;
        }
        let mut done = 0;
        while done < json.len {
            let n = libc::write(fd, json.data[done..].as_ptr().cast(), json.len - done);
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
        libc::close(fd);
    }
}

/// Runs [`at_exit`] when the library is finalized at exit.
#[used]
#[link_section = ".fini_array"]
static EXIT_REPORT: extern "C" fn() = at_exit;

/// Marks this library's heapkeep as the process's C heap, before `main`.
extern "C" fn mark_c_front() {
    heapkeep::peer::mark_c_front();
}

#[used]
#[link_section = ".init_array"]
static MARK_C_FRONT: extern "C" fn() = mark_c_front;

/// Another copy of heapkeep in this process (a Rust program's global
/// allocator) registers here at exit, so that the exit report counts its
/// calls too and the profiles of the two heaps do not collide. Returns 1
/// if `info` was taken.
///
/// # Safety
/// `info` is null or points to a `heapkeep::peer::PeerInfo` that stays
/// valid until the process exits.
#[no_mangle]
pub unsafe extern "C" fn heapkeep_peer_register(info: *const heapkeep::peer::PeerInfo) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { heapkeep::peer::accept(info) as c_int }
}

/// Copies the current statistics (`heapkeep_stats_t`) into `*out`, at most `size` bytes of them
/// (pass `sizeof *out`; a program built against an older, shorter struct
/// gets the fields it knows). Returns the size of the full struct. Never
/// allocates; safe from any thread.
///
/// # Safety
/// `out` is valid for writes of `size` bytes (or null with `size` 0).
#[no_mangle]
pub unsafe extern "C" fn heapkeep_stats(out: *mut heapkeep::Stats, size: usize) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { heapkeep::stats_into(out, size) }
}

/// Copies the calling thread's counts since it started
/// (`heapkeep_thread_stats_t`) into `*out`, at most `size` bytes of them
/// (pass `sizeof *out`). Returns the size of the full struct. Never
/// allocates.
///
/// # Safety
/// `out` is valid for writes of `size` bytes (or null with `size` 0).
#[no_mangle]
pub unsafe extern "C" fn heapkeep_thread_stats(
    out: *mut heapkeep::ThreadStats,
    size: usize,
) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { heapkeep::thread_stats_into(out, size) }
}

/// Copies the figures of the first `n` size classes (`heapkeep_class_stats_t`,
/// indexed by class: block size, blocks in use, blocks the class's pages
/// hold, pages and their bytes, over all threads) into `out[0..n]`. Returns
/// the number of size classes (pass `out` null and `n` 0 to ask). From a
/// heap walk: exact when other threads are quiet. Never allocates; any
/// thread, but not from a signal handler.
///
/// # Safety
/// `out` is valid for writes of `n` elements (or null with `n` 0).
#[no_mangle]
pub unsafe extern "C" fn heapkeep_class_stats(out: *mut heapkeep::ClassStats, n: usize) -> usize {
    let all = heapkeep::class_stats();
    if !out.is_null() {
        // SAFETY: `out` has room for `n` elements (caller); we copy no more
        // than there are classes.
        unsafe { core::ptr::copy_nonoverlapping(all.as_ptr(), out, n.min(all.len())) };
    }
    all.len()
}

/// Writes a heap map snapshot to the file `path` now (`heapkeep map --from
/// FILE` draws it). Returns 1 when written, 0 otherwise (the reason is
/// printed on stderr). Never allocates; any thread, but not from a signal
/// handler (set `HEAPKEEP_MAP=signal` for snapshots on a signal).
///
/// # Safety
/// `path` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn heapkeep_write_snapshot(path: *const c_char) -> core::ffi::c_int {
    if path.is_null() {
        return 0;
    }
    // SAFETY: a NUL-terminated string (caller).
    heapkeep::write_snapshot(unsafe { CStr::from_ptr(path) }) as core::ffi::c_int
}

/// Caps the memory heapkeep maps from the OS at `bytes` (0: no cap; also
/// set by the environment option `HEAPKEEP_MEMORY_CAP`, e.g. `512M`). Beyond
/// the cap `malloc` and friends return NULL with `errno` ENOMEM. The cap
/// counts every byte mapped, caches included (they are given back before
/// an allocation fails).
#[no_mangle]
pub extern "C" fn heapkeep_set_memory_cap(bytes: usize) {
    heapkeep::set_memory_cap(bytes);
}

/// The memory cap in bytes (0: none).
#[no_mangle]
pub extern "C" fn heapkeep_memory_cap() -> usize {
    heapkeep::memory_cap()
}

/// The version of the heapkeep library, as a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn heapkeep_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_json_with_the_keys_the_cli_reads() {
        let mut s = heapkeep::stats();
        s.allocs = 12;
        s.peak_live_bytes = 18_446_744_073_709_551_615;
        let mut b = Buf::<REPORT_MAX>::new();
        format_report(&s, &heapkeep::stack_peaks(), 42, false, &mut b);
        let text = core::str::from_utf8(&b.data[..b.len]).unwrap();
        assert!(text.starts_with("{\"pid\":42,\"allocs\":12,"), "{text}");
        assert!(text.contains("\"peak_live_bytes\":18446744073709551615,"));
        assert!(text.ends_with(",\"stacks\":[]}\n"), "{text}");
    }

    #[test]
    fn names_are_escaped() {
        let mut b = Buf::<64>::new();
        push_json_str(&mut b, "a\"b\\c\n");
        assert_eq!(&b.data[..b.len], b"\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn buffer_drops_what_does_not_fit() {
        let mut b = Buf::<4>::new();
        b.push(b"abc");
        b.push_u64(12345);
        assert_eq!(&b.data[..b.len], b"abc1");
        assert!(b.full());
    }
}
