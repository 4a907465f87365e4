//! heapkeep's options (check mode, the sampled guard, allocation-free
//! regions, the memory cap, profiles, heap map snapshots, stack depths): one table (name,
//! environment variable, default, meaning), read once at start-up with
//! `getenv` (which does not allocate). A value that does not parse is
//! reported on stderr and the default is kept.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::os;

/// One option: how it is named, set and documented.
#[derive(Clone, Copy, Debug)]
pub struct CheckOption {
    /// Short name (the `heapkeep check` flag without its dashes).
    pub name: &'static str,
    /// The environment variable that sets it.
    pub env: &'static str,
    /// The value used when the variable is unset or does not parse.
    pub default: &'static str,
    /// What it does, one sentence.
    pub meaning: &'static str,
}

/// Indices into [`OPTIONS`] and into the values read from the environment.
pub(crate) mod id {
    pub const CHECK: usize = 0;
    pub const KEEP_GOING: usize = 1;
    pub const LEAKS: usize = 2;
    pub const LEAK_EXIT_CODE: usize = 3;
    pub const QUARANTINE_MB: usize = 4;
    pub const REDZONE: usize = 5;
    pub const STACK_DEPTH: usize = 6;
    pub const SYMBOLIZE: usize = 7;
    pub const GUARD_SAMPLE: usize = 8;
    pub const FORBID_ALLOC: usize = 9;
    pub const MEMORY_CAP: usize = 10;
    pub const PROFILE: usize = 11;
    pub const PROFILE_RATE: usize = 12;
    pub const MAP: usize = 13;
    pub const MAP_SIGNAL: usize = 14;
    pub const MAP_PEAK_STEP: usize = 15;
    pub const STACKS: usize = 16;
}

/// What an allocation inside `forbid_alloc` does (`HEAPKEEP_FORBID_ALLOC`),
/// in [`crate::OnAlloc`] order.
pub(crate) const FORBID_NAMES: [&[u8]; 3] = [b"abort", b"panic", b"log"];

/// When heap map snapshots are written (`HEAPKEEP_MAP`), in `map::Mode`
/// order (0 is also accepted for off).
pub(crate) const MAP_NAMES: [&[u8]; 4] = [b"off", b"exit", b"peak", b"signal"];

/// Leak report modes (`HEAPKEEP_CHECK_LEAKS`).
pub(crate) const LEAKS_OFF: usize = 0;
/// Report blocks that no root (data segments, TLS, the exiting thread's
/// stack) reaches, directly or through other blocks.
#[allow(dead_code)] // the default; named for the table
pub(crate) const LEAKS_UNREFERENCED: usize = 1;
/// Report every block still allocated at exit.
pub(crate) const LEAKS_ALL: usize = 2;

/// Every option of heapkeep.
pub const OPTIONS: &[CheckOption] = &[
    CheckOption {
        name: "check",
        env: "HEAPKEEP_CHECK",
        default: "0",
        meaning: "1 turns check mode on (heapkeep check sets it)",
    },
    CheckOption {
        name: "keep-going",
        env: "HEAPKEEP_CHECK_KEEP_GOING",
        default: "0",
        meaning: "1: after reporting an error, continue instead of aborting",
    },
    CheckOption {
        name: "leaks",
        env: "HEAPKEEP_CHECK_LEAKS",
        default: "1",
        meaning: "at exit report leaks: 0 no, 1 blocks no longer referenced, all every live block",
    },
    CheckOption {
        name: "leak-exit-code",
        env: "HEAPKEEP_CHECK_LEAK_EXIT_CODE",
        default: "0",
        meaning: "if not 0, a run with leaks exits with this code",
    },
    CheckOption {
        name: "quarantine-mb",
        env: "HEAPKEEP_CHECK_QUARANTINE_MB",
        default: "64",
        meaning: "MiB of freed blocks held back from reuse to catch use-after-free",
    },
    CheckOption {
        name: "redzone",
        env: "HEAPKEEP_CHECK_REDZONE",
        default: "16",
        meaning: "bytes of guard pattern before and after each small block (8 to 4096)",
    },
    CheckOption {
        name: "stack-depth",
        env: "HEAPKEEP_CHECK_STACK_DEPTH",
        default: "12",
        meaning: "frames recorded per allocation and free (1 to 64)",
    },
    CheckOption {
        name: "symbolize",
        env: "HEAPKEEP_CHECK_SYMBOLIZE",
        default: "1",
        meaning: "1: name functions, files and lines in reports (runs addr2line)",
    },
    CheckOption {
        name: "guard-sample",
        env: "HEAPKEEP_GUARD_SAMPLE",
        default: "32768",
        meaning: "fast mode: about one allocation (of at most 4 KiB) in N gets guard pages, 0 off",
    },
    CheckOption {
        name: "forbid-alloc",
        env: "HEAPKEEP_FORBID_ALLOC",
        default: "abort",
        meaning: "an allocation inside heapkeep::forbid_alloc: abort, panic (when the region ends) or log",
    },
    CheckOption {
        name: "memory-cap",
        env: "HEAPKEEP_MEMORY_CAP",
        default: "0",
        meaning: "bytes heapkeep may map from the OS (suffix K, M or G), 0 no cap; beyond it allocations fail",
    },
    CheckOption {
        name: "profile",
        env: "HEAPKEEP_PROFILE",
        default: "0",
        meaning: "1: record a sampled heap profile, written at exit (heapkeep profile sets it)",
    },
    CheckOption {
        name: "profile-rate",
        env: "HEAPKEEP_PROFILE_RATE",
        default: "512K",
        meaning: "profile: one sample per this many bytes allocated on average (suffix K, M or G); 1 records every allocation",
    },
    CheckOption {
        name: "map",
        env: "HEAPKEEP_MAP",
        default: "off",
        meaning: "write a heap map snapshot (HEAPKEEP_MAP_OUT) at exit, at the peak of bytes in use, or on a signal: off, exit, peak or signal (heapkeep map sets it)",
    },
    CheckOption {
        name: "map-signal",
        env: "HEAPKEEP_MAP_SIGNAL",
        default: "12",
        meaning: "map: the signal that asks for a snapshot (default 12, SIGUSR2)",
    },
    CheckOption {
        name: "map-peak-step",
        env: "HEAPKEEP_MAP_PEAK_STEP",
        default: "10",
        meaning: "map: rewrite the peak snapshot when the peak of bytes in use grew by this many percent (1 to 1000)",
    },
    CheckOption {
        name: "stacks",
        env: "HEAPKEEP_STACKS",
        default: "0",
        meaning: "1: measure how deep each thread's stack went (heapkeep run sets it; one /proc/self/maps read per thread)",
    },
];

/// Values read from the environment, in [`OPTIONS`] order.
static VALUES: [AtomicUsize; 17] = [const { AtomicUsize::new(0) }; 17];

/// The value of option `i` (see [`id`]); read after [`read_all`].
#[inline]
pub(crate) fn get(i: usize) -> usize {
    VALUES[i].load(Ordering::Relaxed)
}

/// Parses `text` as the value of option `i`; `None` if it does not fit.
fn parse(i: usize, text: &[u8]) -> Option<usize> {
    if i == id::LEAKS && text == b"all" {
        return Some(LEAKS_ALL);
    }
    if i == id::FORBID_ALLOC {
        return FORBID_NAMES.iter().position(|n| *n == text);
    }
    if i == id::MAP {
        return if text == b"0" {
            Some(0)
        } else {
            MAP_NAMES.iter().position(|n| *n == text)
        };
    }
    let mut text = text;
    let mut scale = 1usize;
    if i == id::MEMORY_CAP || i == id::PROFILE_RATE {
        let shift = match text.last() {
            Some(b'K' | b'k') => 10,
            Some(b'M' | b'm') => 20,
            Some(b'G' | b'g') => 30,
            _ => 0,
        };
        if shift != 0 {
            text = &text[..text.len() - 1];
            scale = 1 << shift;
        }
    }
    if text.is_empty() || text.len() > 12 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = text
        .iter()
        .fold(0usize, |v, d| v * 10 + usize::from(d - b'0'))
        .checked_mul(scale)?;
    let ok = match i {
        id::CHECK | id::KEEP_GOING | id::SYMBOLIZE | id::PROFILE | id::STACKS => v <= 1,
        id::PROFILE_RATE => v >= 1,
        id::LEAKS => v <= 1,
        id::LEAK_EXIT_CODE => v <= 255,
        id::QUARANTINE_MB => v <= 1 << 20,
        id::REDZONE => (8..=4096).contains(&v),
        id::STACK_DEPTH => (1..=64).contains(&v),
        // Signals a program may catch (not SIGKILL, SIGSEGV or SIGSTOP).
        id::MAP_SIGNAL => (1..=64).contains(&v) && ![9, 11, 19].contains(&v),
        id::MAP_PEAK_STEP => (1..=1000).contains(&v),
        _ => true,
    };
    ok.then_some(v)
}

/// Reads every option from the environment. Called once, at start-up.
pub(crate) fn read_all() {
    debug_assert_eq!(OPTIONS.len(), VALUES.len());
    for (i, opt) in OPTIONS.iter().enumerate() {
        let default = parse(i, opt.default.as_bytes()).unwrap_or(0);
        let mut name = [0u8; 48];
        name[..opt.env.len()].copy_from_slice(opt.env.as_bytes());
        let value = match os::getenv(&name[..=opt.env.len()]) {
            None => default,
            Some(text) => parse(i, text).unwrap_or_else(|| {
                let mut w = crate::writer::Writer::new();
                w.s("heapkeep: warning: ignoring ")
                    .s(opt.env)
                    .s("=")
                    .b(&text[..text.len().min(40)])
                    .s(" (")
                    .s(opt.meaning)
                    .s("); using ")
                    .s(opt.default)
                    .s("\n");
                w.flush();
                default
            }),
        };
        VALUES[i].store(value, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_bad_values_do_not() {
        for (i, o) in OPTIONS.iter().enumerate() {
            assert!(parse(i, o.default.as_bytes()).is_some(), "{}", o.env);
            assert!(o.env.len() < 47);
        }
        assert_eq!(parse(id::LEAKS, b"all"), Some(LEAKS_ALL));
        assert_eq!(parse(id::REDZONE, b"4"), None);
        assert_eq!(parse(id::CHECK, b"yes"), None);
        assert_eq!(parse(id::FORBID_ALLOC, b"log"), Some(2));
        assert_eq!(parse(id::FORBID_ALLOC, b"warn"), None);
        assert_eq!(parse(id::MEMORY_CAP, b"64M"), Some(64 << 20));
        assert_eq!(parse(id::MEMORY_CAP, b"3g"), Some(3 << 30));
        assert_eq!(parse(id::MEMORY_CAP, b"4096"), Some(4096));
        assert_eq!(parse(id::MEMORY_CAP, b"M"), None);
        assert_eq!(parse(id::QUARANTINE_MB, b"-1"), None);
        assert_eq!(parse(id::STACK_DEPTH, b"64"), Some(64));
        assert_eq!(parse(id::MAP, b"peak"), Some(2));
        assert_eq!(parse(id::MAP, b"0"), Some(0));
        assert_eq!(parse(id::MAP, b"always"), None);
        assert_eq!(parse(id::MAP_SIGNAL, b"9"), None);
        assert_eq!(parse(id::MAP_PEAK_STEP, b"0"), None);
    }
}
