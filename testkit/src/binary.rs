//! Finding the `redis-server` and `redis-cli` executables.
//!
//! A missing binary is a test failure with instructions, never a silent skip.

use std::env;
use std::path::{Path, PathBuf};

/// Environment variable naming the `redis-server` executable to use instead of `$PATH`.
pub const SERVER_ENV: &str = "ASIDE_REDIS_SERVER";
/// Environment variable naming the `redis-cli` executable to use instead of `$PATH`.
pub const CLI_ENV: &str = "ASIDE_REDIS_CLI";

/// The `redis-server` executable: `$ASIDE_REDIS_SERVER`, else `redis-server` on `$PATH`.
///
/// # Panics
///
/// When neither exists, with a message saying how to install it.
///
/// ```no_run
/// let path = aside_testkit::redis_server_binary();
/// assert!(path.is_file());
/// ```
pub fn redis_server_binary() -> PathBuf {
    find("redis-server", SERVER_ENV)
}

/// The `redis-cli` executable: `$ASIDE_REDIS_CLI`, else `redis-cli` on `$PATH`.
///
/// # Panics
///
/// When neither exists, with a message saying how to install it.
///
/// ```no_run
/// let path = aside_testkit::redis_cli_binary();
/// assert!(path.is_file());
/// ```
pub fn redis_cli_binary() -> PathBuf {
    find("redis-cli", CLI_ENV)
}

fn find(name: &str, env_var: &str) -> PathBuf {
    if let Some(explicit) = env::var_os(env_var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(explicit);
        if is_executable(&path) {
            return path;
        }
        panic!(
            "{env_var} is set to {}, which is not an executable file. \
             Point it at a {name} binary, or unset it to use {name} from PATH.",
            path.display()
        );
    }
    if let Some(found) = search_path(name) {
        return found;
    }
    panic!(
        "{name} not found on PATH. Install it: `sudo apt-get install -y redis-server` \
         (or run `scripts/test`, which does), or set {env_var} to its path."
    );
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
