//! `heapkeep profile`: run the program with the library preloaded and the
//! sampling profile on (`HEAPKEEP_PROFILE=1`); the library writes the DHAT
//! profile and prints the top sites when the program exits.

use std::process::ExitCode;

use crate::run::run_preloaded;
use crate::ProfileArgs;

/// The environment variables the program gets for `args`.
fn profile_env(args: &ProfileArgs) -> Vec<(&'static str, String)> {
    let mut env = vec![("HEAPKEEP_PROFILE", "1".to_string())];
    if args.every {
        env.push(("HEAPKEEP_PROFILE_RATE", "1".to_string()));
    } else if let Some(r) = &args.rate {
        env.push(("HEAPKEEP_PROFILE_RATE", r.clone()));
    }
    if let Some(out) = &args.out {
        // The program may change directory: give it an absolute path.
        let out = std::path::absolute(out).unwrap_or_else(|_| out.clone());
        env.push(("HEAPKEEP_PROFILE_OUT", out.to_string_lossy().into_owned()));
    }
    env
}

pub fn profile(args: &ProfileArgs) -> Result<ExitCode, String> {
    run_preloaded(args.lib.as_deref(), &args.command, profile_env(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_variables_the_library_reads() {
        let args = ProfileArgs {
            lib: None,
            out: Some("p.json".into()),
            rate: Some("64K".into()),
            every: false,
            command: vec!["true".into()],
        };
        let env = profile_env(&args);
        assert_eq!(env[0], ("HEAPKEEP_PROFILE", "1".to_string()));
        assert_eq!(env[1], ("HEAPKEEP_PROFILE_RATE", "64K".to_string()));
        assert_eq!(env[2].0, "HEAPKEEP_PROFILE_OUT");
        assert!(env[2].1.ends_with("/p.json") && env[2].1.starts_with('/'));
        let every = profile_env(&ProfileArgs {
            every: true,
            out: None,
            ..args
        });
        assert_eq!(every[1], ("HEAPKEEP_PROFILE_RATE", "1".to_string()));
        for (name, _) in env.iter().chain(&every) {
            assert!(
                *name == "HEAPKEEP_PROFILE_OUT"
                    || heapkeep::check::OPTIONS.iter().any(|o| o.env == *name),
                "{name}"
            );
        }
    }
}
