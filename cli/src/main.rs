//! `heapkeep`: run any program on heapkeep and see what it did to its heap.
//!
//! Verbs:
//! - `heapkeep run [OPTIONS] -- PROGRAM [ARGS...]`: runs the program with
//!   heapkeep's C library preloaded and prints a summary when it exits.
//! - `heapkeep check [OPTIONS] -- PROGRAM [ARGS...]`: runs the program the
//!   same way with check mode on; heap misuse and leaks are reported on its
//!   stderr.
//! - `heapkeep profile [OPTIONS] -- PROGRAM [ARGS...]`: runs it with the
//!   sampling heap profile on; a DHAT profile is written at exit.
//! - `heapkeep map [OPTIONS] -- PROGRAM [ARGS...]`: runs it with heap map
//!   snapshots on and draws the snapshot (SVG, PNG or HTML); `--from`
//!   draws a snapshot written earlier.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod map;
mod picture;
mod profile;
mod raster;
mod run;
mod snapshot;
mod summary;

#[global_allocator]
static GLOBAL: heapkeep::HeapKeep = heapkeep::HeapKeep;

/// Run any program on the heapkeep memory allocator and see what it did to
/// its heap.
#[derive(Parser, Debug)]
#[command(name = "heapkeep", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Run PROGRAM on heapkeep and print a heap summary to stderr when it exits.
    ///
    /// The program runs with heapkeep's C library preloaded (LD_PRELOAD): every
    /// malloc, free, realloc, C++ new and delete goes to heapkeep. Its output
    /// and exit status are passed through untouched (a program killed by signal
    /// N makes heapkeep exit with 128+N). At exit the summary gives the calls
    /// (allocations, frees, reallocs), the heap bytes in use at their peak and
    /// at exit, the memory mapped from the OS, and the wall time.
    ///
    /// The library is the one beside this executable
    /// (libheapkeep_preload.so), or the one named by --lib or HEAPKEEP_LIB.
    /// Child processes the program starts run on heapkeep too; the summary
    /// describes the program's own process.
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Run PROGRAM on heapkeep in check mode: heap misuse is reported.
    ///
    /// The program runs with heapkeep's C library preloaded (LD_PRELOAD) and
    /// HEAPKEEP_CHECK=1. A double or invalid free, a use after free, a heap
    /// overflow or underflow, a layout mismatch (Rust) or a stack overflow
    /// is reported on the program's stderr, with where it happened and where
    /// the block was allocated and freed, and the program is aborted
    /// (SIGABRT: heapkeep exits with 134). At exit, leaked blocks are
    /// reported by allocation site. A correct program prints nothing more.
    ///
    /// The program's output and exit status are passed through untouched (a
    /// program killed by signal N makes heapkeep exit with 128+N). The
    /// library is the one beside this executable (libheapkeep_preload.so),
    /// or the one named by --lib or HEAPKEEP_LIB.
    #[command(verbatim_doc_comment, after_help = check::options_help())]
    Check(CheckArgs),
    /// Run PROGRAM on heapkeep and write a heap profile when it exits.
    ///
    /// The program runs with heapkeep's C library preloaded (LD_PRELOAD) and
    /// HEAPKEEP_PROFILE=1. Allocations are sampled, on average one per
    /// --rate bytes allocated (default 512K), or all with --every; each
    /// sample records its stack. At exit the profile is written to --out
    /// (default: heapkeep-profile.<program>.<pid>.json in the working
    /// directory; %p in the name becomes the process id, which lets forked
    /// children write their own) in the format of valgrind's DHAT: open it
    /// with dh_view.html. The top sites by bytes allocated, live at the
    /// peak and leaked at exit are printed on stderr.
    ///
    /// A Rust program with heapkeep as its global allocator records the same
    /// profile when run with HEAPKEEP_PROFILE=1 (HEAPKEEP_PROFILE_RATE,
    /// HEAPKEEP_PROFILE_OUT).
    #[command(verbatim_doc_comment)]
    Profile(ProfileArgs),
    /// Run PROGRAM on heapkeep and draw a map of its heap.
    ///
    /// The program runs with heapkeep's C library preloaded (LD_PRELOAD) and
    /// HEAPKEEP_MAP set: the library walks its heap and writes a snapshot at
    /// exit (--at exit, the default), at the peak of bytes in use (--at
    /// peak: rewritten whenever the peak grew by --peak-step percent), or
    /// when the program gets SIGUSR2 (--at signal; the last one is drawn).
    /// The picture shows one row per 4 MiB segment: its 64 KiB slices,
    /// each page a box coloured by its block size and filled by the share
    /// of its blocks in use, free slices resident or purged, huge blocks
    /// as bars, and the fragmentation figures in the legend. The picture's
    /// format follows --out's extension: .svg (default
    /// heapkeep-map.<program>.svg), .png, or .html (a self-contained page
    /// with tables of every size class and heap, for large heaps).
    ///
    /// --from FILE draws a snapshot written earlier: by a program run with
    /// HEAPKEEP_MAP=exit|peak|signal (and HEAPKEEP_MAP_OUT), or by a call to
    /// heapkeep_write_snapshot() (C) or heapkeep::write_snapshot() (Rust).
    ///
    /// The program's output and exit status are passed through.
    #[command(verbatim_doc_comment)]
    Map(MapArgs),
}

/// Options of `heapkeep map`.
#[derive(clap::Args, Debug)]
pub struct MapArgs {
    /// The heapkeep library to preload [env: HEAPKEEP_LIB; default: the
    /// libheapkeep_preload.so beside this executable].
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,
    /// When the snapshot is taken.
    #[arg(long, value_name = "WHEN", default_value = "exit", value_parser = ["exit", "peak", "signal"])]
    pub at: String,
    /// The picture: FILE.svg, FILE.png or FILE.html [default:
    /// heapkeep-map.<program>.svg].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also keep the snapshot (text) in FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "from")]
    pub snapshot: Option<PathBuf>,
    /// --at peak: rewrite the snapshot when the peak grew by this many
    /// percent (HEAPKEEP_MAP_PEAK_STEP; default 10).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub peak_step: Option<u32>,
    /// Draw this snapshot instead of running a program.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with = "command")]
    pub from: Option<PathBuf>,
    /// The program to run, and its arguments (put them after `--`).
    #[arg(
        required_unless_present = "from",
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    pub command: Vec<std::ffi::OsString>,
}

/// Options of `heapkeep profile`.
#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    /// The heapkeep library to preload [env: HEAPKEEP_LIB; default: the
    /// libheapkeep_preload.so beside this executable].
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,
    /// Where the profile goes (HEAPKEEP_PROFILE_OUT; %p: the process id).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// One sample per this many bytes allocated, on average; suffix K, M or
    /// G (HEAPKEEP_PROFILE_RATE; default 512K).
    #[arg(long, value_name = "BYTES", conflicts_with = "every")]
    pub rate: Option<String>,
    /// Record every allocation (slower; exact counts).
    #[arg(long)]
    pub every: bool,
    /// The program to run, and its arguments (put them after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    pub command: Vec<std::ffi::OsString>,
}

/// Options of `heapkeep run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Also write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// The heapkeep library to preload [env: HEAPKEEP_LIB; default: the
    /// libheapkeep_preload.so beside this executable].
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,
    /// Print nothing; only the JSON file, if asked for, gets the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// The program to run, and its arguments (put them after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    pub command: Vec<std::ffi::OsString>,
}

/// Options of `heapkeep check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The heapkeep library to preload [env: HEAPKEEP_LIB; default: the
    /// libheapkeep_preload.so beside this executable].
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,
    /// After reporting an error, continue instead of aborting
    /// (HEAPKEEP_CHECK_KEEP_GOING=1).
    #[arg(long)]
    pub keep_going: bool,
    /// Leaks reported at exit: 0 none, 1 blocks no longer referenced, all
    /// every live block (HEAPKEEP_CHECK_LEAKS).
    #[arg(long, value_name = "MODE", value_parser = ["0", "1", "all"])]
    pub leaks: Option<String>,
    /// If not 0, a run with leaks exits with code N
    /// (HEAPKEEP_CHECK_LEAK_EXIT_CODE).
    #[arg(long, value_name = "N")]
    pub leak_exit_code: Option<u8>,
    /// MiB of freed blocks held back from reuse to catch use after free
    /// (HEAPKEEP_CHECK_QUARANTINE_MB).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1 << 20))]
    pub quarantine_mb: Option<u32>,
    /// The program to run, and its arguments (put them after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    pub command: Vec<std::ffi::OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.verb {
        Verb::Run(args) => run::run(&args),
        Verb::Check(args) => check::check(&args),
        Verb::Profile(args) => profile::profile(&args),
        Verb::Map(args) => map::map(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("heapkeep: {e}");
            ExitCode::from(125)
        }
    }
}
