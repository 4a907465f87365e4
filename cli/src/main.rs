//! `heapkeep`: run any program on heapkeep and see what it did to its heap.
//!
//! Verbs:
//! - `heapkeep run [OPTIONS] -- PROGRAM [ARGS...]`: runs the program with
//!   heapkeep's C library preloaded and prints a summary when it exits.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod run;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.verb {
        Verb::Run(args) => run::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("heapkeep: {e}");
            ExitCode::from(125)
        }
    }
}
