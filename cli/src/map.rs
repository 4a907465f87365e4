//! `heapkeep map`: run the program with the library preloaded and
//! `HEAPKEEP_MAP` set, read the heap map snapshot it writes (at exit, at
//! its peak of bytes in use, or on a signal), and draw it: SVG, PNG or a
//! self-contained HTML page, by the output's extension. `--from` draws a
//! snapshot written earlier (`HEAPKEEP_MAP`, `heapkeep_write_snapshot`,
//! `heapkeep::write_snapshot`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::picture::{self, bytes};
use crate::raster;
use crate::run::{exit_code, find_lib, preload_value, spawn_and_wait_with, ReportDir};
use crate::snapshot::Snapshot;
use crate::MapArgs;

/// What the picture is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Svg,
    Png,
    Html,
}

fn format_of(path: &Path) -> Result<Format, String> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        Some("html" | "htm") => Ok(Format::Html),
        _ => Err(format!(
            "cannot tell the picture format of {}: name it .svg, .png or .html",
            path.display()
        )),
    }
}

/// The environment variables the program gets.
fn map_env(args: &MapArgs, out: &Path) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("HEAPKEEP_MAP", args.at.clone()),
        ("HEAPKEEP_MAP_OUT", out.to_string_lossy().into_owned()),
    ];
    if let Some(step) = args.peak_step {
        env.push(("HEAPKEEP_MAP_PEAK_STEP", step.to_string()));
    }
    env
}

/// Draws `snap` into `out` in the format its name says.
pub fn render(snap: &Snapshot, out: &Path) -> Result<(), String> {
    let format = format_of(out)?;
    let scene = picture::scene(snap);
    let data = match format {
        Format::Svg => picture::svg(&scene).into_bytes(),
        Format::Html => picture::html(snap, &scene).into_bytes(),
        Format::Png => raster::png(&scene)?,
    };
    std::fs::write(out, data).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

/// The default picture name for a program.
fn default_out(program: &str) -> PathBuf {
    let base = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    PathBuf::from(format!("heapkeep-map.{base}.svg"))
}

/// The snapshot of process `pid` in `dir` (files `snapshot.<pid>`), or,
/// when it wrote none, the one other process's (a wrapper's child).
fn pick_snapshot(dir: &Path, pid: u32) -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snapshot.") && !n.ends_with(".tmp"))
        })
        .collect();
    found.sort();
    let own = dir.join(format!("snapshot.{pid}"));
    let n = found.len();
    if found.contains(&own) {
        return Ok(own);
    }
    match found.pop() {
        Some(p) if n == 1 => Ok(p),
        Some(_) => Err(format!(
            "the program (pid {pid}) wrote no heap map snapshot, but {n} other processes did; \
             run the one you want directly"
        )),
        None => Err("no heap map snapshot was written".to_string()),
    }
}

pub fn map(args: &MapArgs) -> Result<ExitCode, String> {
    if let Some(from) = &args.from {
        let snap = Snapshot::read(from)?;
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| default_out(&snap.program));
        render(&snap, &out)?;
        summary(&snap, &out);
        return Ok(ExitCode::SUCCESS);
    }
    if args.command.is_empty() {
        return Err("give a program to run (after --), or --from SNAPSHOT".into());
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&args.command[0].to_string_lossy()));
    format_of(&out)?;
    let lib = find_lib(args.lib.as_deref())?;
    let dir = ReportDir::new()?;
    let pattern = dir.path().join("snapshot.%p");
    let program = args.command[0].to_string_lossy().into_owned();
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("LD_PRELOAD", preload_value(&lib))
        .env_remove("HEAPKEEP_CHECK")
        .envs(map_env(args, &pattern));
    let signal = args.at == "signal";
    let (pid, ending) = spawn_and_wait_with(&mut cmd, &program, |pid| {
        if signal {
            eprintln!(
                "heapkeep: map: {program} runs as pid {pid}; `kill -USR2 {pid}` takes a snapshot \
                 (the last one is drawn)"
            );
        }
    })?;
    let path = pick_snapshot(dir.path(), pid).map_err(|e| {
        let why = match args.at.as_str() {
            "signal" => " (no signal reached it?)",
            _ => " (did it end by a signal, _exit or exec?)",
        };
        format!("{e}{why}")
    })?;
    let snap = Snapshot::read(&path)?;
    if let Some(keep) = &args.snapshot {
        std::fs::copy(&path, keep).map_err(|e| format!("cannot write {}: {e}", keep.display()))?;
    }
    render(&snap, &out)?;
    summary(&snap, &out);
    Ok(exit_code(ending))
}

/// Two lines on stderr: what was drawn, and the headline figures.
fn summary(snap: &Snapshot, out: &Path) {
    let t = &snap.totals;
    eprintln!(
        "heapkeep: map: wrote {} ({} segments, {} huge blocks; snapshot at {}{})",
        out.display(),
        snap.segments.len(),
        snap.huge.len(),
        snap.when,
        if snap.complete { "" } else { ", INCOMPLETE" }
    );
    eprintln!(
        "heapkeep: map: held {}, resident {}, in use {}; held but not in use {}; largest free run {}",
        bytes(t.held),
        bytes(t.resident),
        bytes(t.in_use),
        bytes(snap.unused()),
        bytes(t.largest_free_run)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(format_of(Path::new("a.svg")), Ok(Format::Svg));
        assert_eq!(format_of(Path::new("a.PNG")), Ok(Format::Png));
        assert_eq!(format_of(Path::new("x/a.html")), Ok(Format::Html));
        assert!(format_of(Path::new("a.jpg")).is_err());
        assert_eq!(
            default_out("/usr/bin/python3"),
            PathBuf::from("heapkeep-map.python3.svg")
        );
    }

    #[test]
    fn flags_become_variables_the_library_reads() {
        let args = MapArgs {
            lib: None,
            at: "peak".into(),
            out: None,
            snapshot: None,
            peak_step: Some(25),
            from: None,
            command: vec!["true".into()],
        };
        let env = map_env(&args, Path::new("/tmp/x/snapshot.%p"));
        assert_eq!(env[0], ("HEAPKEEP_MAP", "peak".to_string()));
        assert_eq!(
            env[1],
            ("HEAPKEEP_MAP_OUT", "/tmp/x/snapshot.%p".to_string())
        );
        assert_eq!(env[2], ("HEAPKEEP_MAP_PEAK_STEP", "25".to_string()));
        for (name, _) in &env {
            assert!(
                *name == "HEAPKEEP_MAP_OUT"
                    || heapkeep::check::OPTIONS.iter().any(|o| o.env == *name),
                "{name}"
            );
        }
    }

    #[test]
    fn the_programs_own_snapshot_is_picked() {
        let dir = std::env::temp_dir().join(format!("hk-map-pick-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(pick_snapshot(&dir, 7).is_err());
        std::fs::write(dir.join("snapshot.9"), "x").unwrap();
        assert_eq!(pick_snapshot(&dir, 7).unwrap(), dir.join("snapshot.9"));
        std::fs::write(dir.join("snapshot.7"), "x").unwrap();
        std::fs::write(dir.join("snapshot.7.tmp"), "x").unwrap();
        assert_eq!(pick_snapshot(&dir, 7).unwrap(), dir.join("snapshot.7"));
        std::fs::remove_file(dir.join("snapshot.7")).unwrap();
        std::fs::write(dir.join("snapshot.8"), "x").unwrap();
        assert!(pick_snapshot(&dir, 7).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
