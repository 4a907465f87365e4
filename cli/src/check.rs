//! `heapkeep check`: run the program with the library preloaded and check
//! mode on (`HEAPKEEP_CHECK=1`); the library itself reports misuse and
//! leaks on the program's stderr, so we only pass everything through.

use std::process::ExitCode;

use crate::run::run_preloaded;
use crate::CheckArgs;

/// The environment variables the program gets for `args`: check mode on,
/// plus one per flag given. (Variables already in our environment for
/// flags not given pass through unchanged.)
fn check_env(args: &CheckArgs) -> Vec<(&'static str, String)> {
    let mut env = vec![("HEAPKEEP_CHECK", "1".to_string())];
    if args.keep_going {
        env.push(("HEAPKEEP_CHECK_KEEP_GOING", "1".to_string()));
    }
    if let Some(l) = &args.leaks {
        env.push(("HEAPKEEP_CHECK_LEAKS", l.clone()));
    }
    if let Some(c) = args.leak_exit_code {
        env.push(("HEAPKEEP_CHECK_LEAK_EXIT_CODE", c.to_string()));
    }
    if let Some(mb) = args.quarantine_mb {
        env.push(("HEAPKEEP_CHECK_QUARANTINE_MB", mb.to_string()));
    }
    env
}

/// The text after `heapkeep check --help`: every option of check mode from
/// the library's own table (variable, default, meaning).
pub fn options_help() -> String {
    let mut text = String::from(
        "Environment variables of check mode, read by the program (the flags above set\n\
         some of them; set the others in heapkeep's environment):\n",
    );
    let width = heapkeep::check::OPTIONS
        .iter()
        .map(|o| o.env.len())
        .max()
        .unwrap_or(0);
    for o in heapkeep::check::OPTIONS {
        text.push_str(&format!(
            "  {:width$}  [default: {}] {}\n",
            o.env, o.default, o.meaning
        ));
    }
    text
}

pub fn check(args: &CheckArgs) -> Result<ExitCode, String> {
    run_preloaded(args.lib.as_deref(), &args.command, check_env(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_option_and_flags_become_variables() {
        let help = options_help();
        for o in heapkeep::check::OPTIONS {
            assert!(help.contains(o.env) && help.contains(o.meaning), "{help}");
        }
        let args = CheckArgs {
            lib: None,
            keep_going: true,
            leaks: Some("all".into()),
            leak_exit_code: Some(23),
            quarantine_mb: None,
            command: vec!["true".into()],
        };
        let env = check_env(&args);
        assert_eq!(
            env,
            [
                ("HEAPKEEP_CHECK", "1".to_string()),
                ("HEAPKEEP_CHECK_KEEP_GOING", "1".to_string()),
                ("HEAPKEEP_CHECK_LEAKS", "all".to_string()),
                ("HEAPKEEP_CHECK_LEAK_EXIT_CODE", "23".to_string()),
            ]
        );
        // Every variable we set is one the library reads.
        for (name, _) in env {
            assert!(heapkeep::check::OPTIONS.iter().any(|o| o.env == name));
        }
    }
}
