//! Spawning child processes that die with the test process.
//!
//! On Linux every child gets `PR_SET_PDEATHSIG = SIGKILL`, so a test binary that
//! is killed abruptly (timeout, Ctrl-C, `SIGKILL`) does not leave `redis-server`
//! processes behind. The kernel sends that signal when the *thread* that forked
//! the child exits, not the process; a test thread, a `spawn_blocking` thread or
//! the thread that filled a `OnceLock` may exit long before the server is done
//! with. So every child is forked from one process-wide spawner thread that lives
//! as long as the process.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread;

type Request = (Command, Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();

/// Spawns `command` from the long-lived spawner thread.
pub(crate) fn spawn(command: Command) -> io::Result<Child> {
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, inbox) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("aside-testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in inbox {
                    // The requester may have given up; nothing to do then.
                    let _ = reply.send(spawn_here(&mut command));
                }
            })
            .expect("start the aside-testkit spawner thread");
        Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .expect("the aside-testkit spawner thread is gone");
    answer
        .recv()
        .expect("the aside-testkit spawner thread dropped a request")
}

#[cfg(target_os = "linux")]
fn spawn_here(command: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;

    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only calls
    // async-signal-safe functions (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.spawn()
}

#[cfg(not(target_os = "linux"))]
fn spawn_here(command: &mut Command) -> io::Result<Child> {
    command.spawn()
}
