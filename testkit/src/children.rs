//! Child processes of a test: the test binary itself, re-run to execute one
//! `#[ignore]`d entry test, so a test can spread its callers over several OS
//! processes (and SIGKILL one of them) without a separate helper binary.
//!
//! The entry test does nothing unless the parent set its environment variables
//! ([`child_env`] returns `None` otherwise), so running the ignored tests by hand
//! is harmless. Its body builds its own runtime with [`child_runtime`].
//!
//! ```no_run
//! use aside_testkit::{child_env, child_runtime, Children};
//! use std::time::Duration;
//!
//! #[test]
//! #[ignore = "child process of parent"]
//! fn child() {
//!     let Some(env) = child_env(&["MY_TEST_URL"]) else { return };
//!     child_runtime().block_on(async move {
//!         println!("RESULT {}", env["MY_TEST_URL"]);
//!     });
//! }
//!
//! # async fn parent() {
//! let mut children = Children::default();
//! children.spawn("child", &[("MY_TEST_URL", "redis://127.0.0.1:1".to_owned())]);
//! let outputs = children.wait(Duration::from_secs(60)).await;
//! assert!(outputs[0].status.success());
//! # }
//! ```

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Child processes of one test, killed (SIGKILL) and reaped when dropped, so a
/// panicking parent leaves none behind. On Linux they also die with the parent
/// process (they are forked from the testkit's long-lived spawner thread).
#[derive(Default)]
pub struct Children {
    procs: Vec<ChildProc>,
}

struct ChildProc {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// What a child left behind when it exited.
#[derive(Debug)]
pub struct ChildOutput {
    /// Its exit status (a SIGKILLed child has no code).
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// Reads a pipe to its end on a thread of its own, so a chatty child never blocks
/// on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn joined(handle: Option<JoinHandle<String>>) -> String {
    handle.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
}

impl Children {
    /// Runs the `#[ignore]`d test `name` of this binary in a new process, with
    /// `env` added to its environment; returns its index for [`kill`](Self::kill).
    /// The arguments work for binaries run by `cargo test` and by `cargo nextest`
    /// alike: both are libtest binaries.
    ///
    /// # Panics
    ///
    /// When the process cannot be started.
    pub fn spawn(&mut self, name: &str, env: &[(&str, String)]) -> usize {
        let exe = std::env::current_exe().expect("path of the test binary");
        let mut command = Command::new(exe);
        command
            .args([name, "--exact", "--ignored", "--nocapture"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = crate::spawn::spawn(command).expect("spawn a child test process");
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        self.procs.push(ChildProc { child, stdout, stderr });
        self.procs.len() - 1
    }

    /// How many children were spawned (killed ones included).
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether none was spawned.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// The process id of child `index`.
    pub fn pid(&self, index: usize) -> u32 {
        self.procs[index].child.id()
    }

    /// SIGKILLs child `index` and reaps it.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent or the child not reaped.
    pub fn kill(&mut self, index: usize) {
        let child = &mut self.procs[index].child;
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
    }

    /// Waits for every child to exit (at most `limit`) and returns their output,
    /// in spawn order (killed children included).
    ///
    /// # Panics
    ///
    /// When a child is still running after `limit`: it is killed, and the panic
    /// message carries every child's output.
    pub async fn wait(&mut self, limit: Duration) -> Vec<ChildOutput> {
        let deadline = Instant::now() + limit;
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; self.procs.len()];
        loop {
            for (proc, status) in self.procs.iter_mut().zip(&mut statuses) {
                if status.is_none() {
                    *status = proc.child.try_wait().expect("poll a child");
                }
            }
            if statuses.iter().all(Option::is_some) {
                break;
            }
            if Instant::now() >= deadline {
                for proc in &mut self.procs {
                    let _ = proc.child.kill();
                    let _ = proc.child.wait();
                }
                let outputs: Vec<String> = self
                    .procs
                    .iter_mut()
                    .map(|proc| {
                        format!(
                            "--- stdout\n{}\n--- stderr\n{}",
                            joined(proc.stdout.take()),
                            joined(proc.stderr.take())
                        )
                    })
                    .collect();
                panic!(
                    "child processes still running after {limit:?}; killed them:\n{}",
                    outputs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.procs
            .iter_mut()
            .zip(statuses)
            .map(|(proc, status)| ChildOutput {
                status: status.expect("exited"),
                stdout: proc
                    .stdout
                    .take()
                    .map(|h| h.join().expect("stdout reader"))
                    .unwrap_or_default(),
                stderr: proc
                    .stderr
                    .take()
                    .map(|h| h.join().expect("stderr reader"))
                    .unwrap_or_default(),
            })
            .collect()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }
}

/// The environment a child entry test reads, by name; `None` when any is unset,
/// i.e. when the test runs outside its parent (by hand, or by `--include-ignored`).
pub fn child_env(names: &[&str]) -> Option<HashMap<String, String>> {
    names
        .iter()
        .map(|name| std::env::var(name).ok().map(|value| (name.to_string(), value)))
        .collect()
}

/// The runtime a child entry test runs its async body on: multi-threaded, two
/// workers, with I/O and timers.
///
/// # Panics
///
/// When the runtime cannot be built.
pub fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
