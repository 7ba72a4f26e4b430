//! Command-line helpers shared by the workspace's binaries.

use std::ffi::OsString;

use clap::Parser;

/// Parses a clap command line where, as in Kuma, a set environment variable wins over its flag.
///
/// clap itself prefers the flag. So every flag whose `env` variable is set (in `env`) is removed
/// from the arguments before parsing, and clap then reads the variable instead.
pub fn parse_env_wins<T: Parser>(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<T, clap::Error> {
    let command = T::command();
    let args: Vec<OsString> = args.into_iter().collect();
    let filtered = strip_overridden_flags(&command, args, &env);
    let mut matches = command.try_get_matches_from(filtered)?;
    T::from_arg_matches_mut(&mut matches)
}

/// Removes `--flag value`, `--flag=value` and bare `--flag` occurrences of every flag (of the
/// command or any subcommand) whose environment variable is set.
fn strip_overridden_flags(
    command: &clap::Command,
    args: Vec<OsString>,
    env: &impl Fn(&str) -> Option<OsString>,
) -> Vec<OsString> {
    let mut overridden: Vec<(String, bool)> = Vec::new();
    collect_overridden(command, env, &mut overridden);
    if overridden.is_empty() {
        return args;
    }
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        if text == "--" {
            out.push(arg);
            out.extend(iter);
            break;
        }
        let hit = overridden.iter().find(|(long, _)| {
            text == format!("--{long}") || text.starts_with(&format!("--{long}="))
        });
        match hit {
            Some((long, takes_value)) => {
                if *takes_value && text == format!("--{long}") {
                    // The value is the next argument.
                    iter.next();
                }
            }
            None => out.push(arg),
        }
    }
    out
}

fn collect_overridden(
    command: &clap::Command,
    env: &impl Fn(&str) -> Option<OsString>,
    out: &mut Vec<(String, bool)>,
) {
    for arg in command.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        if env(&var.to_string_lossy()).is_some() {
            out.push((long.to_string(), arg.get_action().takes_values()));
        }
    }
    for sub in command.get_subcommands() {
        collect_overridden(sub, env, out);
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long, env = "TEST_CLI_PORT", default_value_t = 1)]
        port: u16,
        #[arg(long, env = "TEST_CLI_NAME", default_value = "x")]
        name: String,
    }

    #[test]
    fn a_set_variable_removes_its_flag() {
        let args = ["bin", "--port", "1234", "--name=y"]
            .map(OsString::from)
            .to_vec();
        let env = |name: &str| (name == "TEST_CLI_PORT").then(|| OsString::from("7"));
        let stripped = strip_overridden_flags(&Cli::command(), args, &env);
        assert_eq!(stripped, ["bin", "--name=y"].map(OsString::from));
    }

    #[test]
    fn flags_stay_when_no_variable_is_set() {
        let args = ["bin", "--port", "1234"].map(OsString::from).to_vec();
        let cli: Cli = parse_env_wins(args, |_| None).unwrap();
        assert_eq!(cli.port, 1234);
        assert_eq!(cli.name, "x");
    }
}
