//! Envoy's command line, in kuma-dp's fixed order (KUMA-FACTS 1.5), plus the one flag of ours.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File in the work dir where Envoy writes the admin address it bound, when the agent asked for
/// admin port 0 (`--admin-address-path`). The admin client reads the port from it.
pub const ADMIN_ADDRESS_FILE: &str = "envoy-admin-address";

/// `<work_dir>/envoy-admin-address`.
pub fn admin_address_path(work_dir: &Path) -> PathBuf {
    work_dir.join(ADMIN_ADDRESS_FILE)
}

/// What Envoy's command line is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyArgs {
    /// The bootstrap file (`<work_dir>/bootstrap.yaml`).
    pub config_path: PathBuf,
    /// Passed as whole seconds (`--drain-time-s`), truncated like kuma-dp does.
    pub drain_time: Duration,
    /// `--log-level`: trace, debug, info, warning, error, critical or off.
    pub log_level: String,
    /// `--component-log-level`, e.g. `upstream:debug,connection:trace`.
    pub component_log_level: Option<String>,
    /// Worker threads; 0 lets Envoy size itself to the CPU set (`--cpuset-threads`).
    pub concurrency: u32,
    /// Where Envoy writes its bound admin address; set when the admin port is 0 so the agent can
    /// find the port the kernel picked. Not a kuma-dp flag: Kuma always uses a fixed admin port.
    pub admin_address_path: Option<PathBuf>,
}

/// Envoy's arguments: `--config-path <f> --drain-time-s <N> --drain-strategy immediate
/// --disable-hot-restart --log-level <lvl> [--component-log-level X] [--concurrency N |
/// --cpuset-threads]`, then `--admin-address-path <f>` when set.
pub fn args(envoy: &EnvoyArgs) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--config-path".into(),
        envoy.config_path.clone().into(),
        "--drain-time-s".into(),
        envoy.drain_time.as_secs().to_string().into(),
        // Connections are told to close as soon as the drain starts, rather than over the whole
        // drain time: the agent already waited the drain time after /healthcheck/fail.
        "--drain-strategy".into(),
        "immediate".into(),
        // Hot restart would need a distinct --base-id per Envoy on one host; neither kuma-dp nor
        // this agent uses it, and restarts are full restarts by the supervisor.
        "--disable-hot-restart".into(),
        "--log-level".into(),
        envoy.log_level.clone().into(),
    ];
    if let Some(level) = &envoy.component_log_level {
        args.push("--component-log-level".into());
        args.push(level.into());
    }
    if envoy.concurrency > 0 {
        args.push("--concurrency".into());
        args.push(envoy.concurrency.to_string().into());
    } else if cfg!(target_os = "linux") {
        // Size the worker pool to the CPUs this process may run on (a container's CPU set),
        // not to every CPU of the host.
        args.push("--cpuset-threads".into());
    }
    if let Some(path) = &envoy.admin_address_path {
        args.push("--admin-address-path".into());
        args.push(path.clone().into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect()
    }

    fn base() -> EnvoyArgs {
        EnvoyArgs {
            config_path: PathBuf::from("/work/bootstrap.yaml"),
            drain_time: Duration::from_secs(15),
            log_level: "off".to_string(),
            component_log_level: None,
            concurrency: 0,
            admin_address_path: None,
        }
    }

    #[test]
    fn kuma_golden_for_linux() {
        assert_eq!(
            strings(args(&base())).join(" "),
            "--config-path /work/bootstrap.yaml --drain-time-s 15 --drain-strategy immediate \
             --disable-hot-restart --log-level off --cpuset-threads"
        );
    }

    #[test]
    fn component_log_level_then_concurrency() {
        let envoy = EnvoyArgs {
            drain_time: Duration::from_millis(30_999),
            log_level: "info".to_string(),
            component_log_level: Some("upstream:debug,connection:trace".to_string()),
            concurrency: 2,
            ..base()
        };
        assert_eq!(
            strings(args(&envoy)),
            [
                "--config-path",
                "/work/bootstrap.yaml",
                "--drain-time-s",
                "30",
                "--drain-strategy",
                "immediate",
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--component-log-level",
                "upstream:debug,connection:trace",
                "--concurrency",
                "2",
            ]
        );
    }

    #[test]
    fn admin_address_path_comes_last() {
        let envoy = EnvoyArgs {
            admin_address_path: Some(admin_address_path(Path::new("/work"))),
            ..base()
        };
        assert_eq!(
            strings(args(&envoy)).join(" "),
            "--config-path /work/bootstrap.yaml --drain-time-s 15 --drain-strategy immediate \
             --disable-hot-restart --log-level off --cpuset-threads \
             --admin-address-path /work/envoy-admin-address"
        );
    }
}
