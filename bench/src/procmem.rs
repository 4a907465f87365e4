//! Resident-memory readings from `/proc/self`.
//!
//! The peak resident set (`VmHWM`) comes from `/proc/self/status`; the
//! current resident set comes from the second field of `/proc/self/statm`
//! (pages), converted to KiB.

use std::fs;

/// Reads a `kB` field such as `VmHWM` from `/proc/self/status`.
pub fn status_kib(field: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Peak resident set size of this process so far, in KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM").unwrap_or(0)
}

/// Current resident set size from `/proc/self/statm`, in KiB.
pub fn rss_kib() -> u64 {
    let pages: u64 = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    pages * page_size() / 1024
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}
