//! The allocators: glibc (no preload), heapkeep (this workspace's
//! `libheapkeep_preload.so`) and the Debian peers found on this machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::workloads::find_program;

/// An allocator under test; `lib` is what goes in `LD_PRELOAD` (none for
/// glibc).
#[derive(Clone, Debug)]
pub struct Allocator {
    pub name: String,
    pub lib: Option<PathBuf>,
}

impl Allocator {
    pub fn glibc() -> Allocator {
        Allocator {
            name: "glibc".into(),
            lib: None,
        }
    }
}

/// All allocator names, in report order.
pub const NAMES: &[&str] = &["glibc", "heapkeep", "mimalloc", "jemalloc", "tcmalloc"];

/// Library file name prefixes of the peers, best first.
pub fn peer_prefixes(name: &str) -> &'static [&'static str] {
    match name {
        "mimalloc" => &["libmimalloc.so"],
        "jemalloc" => &["libjemalloc.so"],
        "tcmalloc" => &["libtcmalloc_minimal.so", "libtcmalloc.so"],
        _ => &[],
    }
}

fn lib_dirs() -> Vec<PathBuf> {
    let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
    vec![
        PathBuf::from("/usr/lib").join(&triple),
        PathBuf::from("/lib").join(&triple),
        PathBuf::from("/usr/lib64"),
        PathBuf::from("/usr/lib"),
        PathBuf::from("/usr/local/lib"),
    ]
}

/// Finds a peer's shared library: a file named `<prefix>` or
/// `<prefix>.<version>` in the usual library directories (the shortest
/// name wins, e.g. `libmimalloc.so.2` over `libmimalloc.so.2.0`).
pub fn find_peer(name: &str) -> Option<PathBuf> {
    for prefix in peer_prefixes(name) {
        for dir in lib_dirs() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut found: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| {
                    f.strip_prefix(prefix).is_some_and(|rest| {
                        rest.is_empty()
                            || (rest.starts_with('.')
                                && rest[1..].chars().all(|c| c.is_ascii_digit() || c == '.'))
                    })
                })
                .collect();
            found.sort_by_key(|f| (f.len(), f.clone()));
            if let Some(f) = found.first() {
                return Some(dir.join(f));
            }
        }
    }
    None
}

/// Checks that `lib` really preloads: `true` runs with it, exits 0, and
/// the dynamic loader says nothing (a library it cannot load is only
/// warned about and ignored, which would silently measure glibc).
pub fn probe(lib: &Path) -> Result<(), String> {
    if !lib.is_file() {
        return Err(format!("{} not found", lib.display()));
    }
    let t = find_program("true").unwrap_or_else(|| PathBuf::from("/bin/true"));
    let out = Command::new(t)
        .env("LD_PRELOAD", lib)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run true: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !err.trim().is_empty() {
        return Err(format!(
            "does not preload cleanly ({}): {}",
            out.status,
            crate::workloads::tail(&err, 300)
        ));
    }
    Ok(())
}
