//! Process plumbing shared by the servers: finding binaries, running helper
//! commands, choosing ports, dropping root, and the orphan guard.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::Error;

/// How many log lines go into a start-up error.
const LOG_TAIL_LINES: usize = 30;

/// Returns the full path of `name` if it is an executable file on `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A command line as a person would type it, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion, capturing its output; a non-zero exit is an
/// [`Error::CommandFailed`] carrying that output.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, Error> {
    let line = describe(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("could not run {line}"), e))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::CommandFailed {
            command: line,
            status: output.status.to_string(),
            output: combined_output(&output),
        })
    }
}

pub(crate) fn combined_output(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text.trim().to_owned()
}

/// The last lines of a log file; a note instead if it cannot be read.
pub(crate) fn log_tail(path: &Path) -> String {
    // Logs of throwaway servers are small, but a crash loop can grow one, so
    // only the end is read.
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            let tail = lines[start..].join("\n");
            if tail.trim().is_empty() {
                "(log is empty)".to_owned()
            } else {
                tail
            }
        }
        Err(e) => format!("(could not read the log: {e})"),
    }
}

/// Spawns `cmd` with its standard output and error appended to `log`, and writes its pid to
/// `pid_file` for the [`OrphanGuard`], which cannot know it otherwise.
pub(crate) fn spawn_logged(cmd: &mut Command, log: &Path, pid_file: &Path) -> Result<Child, Error> {
    let out = fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("could not open {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("could not duplicate the log file handle", e))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let line = describe(cmd);
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("could not run {line}"), e))?;
    fs::write(pid_file, format!("{}\n", child.id()))
        .map_err(|e| Error::io(format!("could not write {}", pid_file.display()), e))?;
    Ok(child)
}

/// `Ok` while `child` (the server `name`) runs; how it ended otherwise. Checked before trusting
/// an answer on the server's port: it could come from whoever else holds the port if the
/// server failed to bind.
pub(crate) fn still_running(child: Option<&mut Child>, name: &str) -> Result<(), String> {
    match child.map(Child::try_wait) {
        None | Some(Ok(None)) => Ok(()),
        Some(Ok(Some(status))) => Err(format!("{name} exited with {status}")),
        Some(Err(e)) => Err(format!("could not check on {name}: {e}")),
    }
}

/// A system user a server is run as, instead of the current (root) user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl RunAs {
    pub(crate) fn apply(self, cmd: &mut Command) {
        // std drops the supplementary groups of root when uid() is set, so
        // the child keeps no trace of root's privileges.
        cmd.uid(self.uid).gid(self.gid);
    }

    pub(crate) fn chown(self, path: &Path) -> Result<(), Error> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| Error::io(format!("could not chown {}", path.display()), e))
    }
}

/// The Unix user PostgreSQL runs as when testkit runs as root.
pub(crate) const POSTGRES_USER: &str = "postgres";

static PG_RUN_AS: OnceLock<Option<RunAs>> = OnceLock::new();

/// `None` when we are not root (servers run as ourselves); otherwise the
/// uid/gid of the `postgres` system user.
pub(crate) fn postgres_run_as() -> Result<Option<RunAs>, Error> {
    if let Some(known) = PG_RUN_AS.get() {
        return Ok(*known);
    }
    // `id` rather than libc: the workspace forbids unsafe code, and this runs
    // once per process.
    let euid = id_number(&["-u"])?;
    let run_as = if euid == 0 {
        let missing = |_| Error::MissingUser {
            user: POSTGRES_USER.to_owned(),
            hint: "install PostgreSQL with 'apt-get install -y postgresql', which creates it"
                .to_owned(),
        };
        let uid = id_number(&["-u", POSTGRES_USER]).map_err(missing)?;
        let gid = id_number(&["-g", POSTGRES_USER]).map_err(missing)?;
        Some(RunAs { uid, gid })
    } else {
        None
    };
    Ok(*PG_RUN_AS.get_or_init(|| run_as))
}

fn id_number(args: &[&str]) -> Result<u32, Error> {
    let mut cmd = Command::new("id");
    cmd.args(args);
    let line = describe(&cmd);
    let output = run(&mut cmd)?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().map_err(|_| Error::CommandFailed {
        command: line,
        status: "unexpected output".to_owned(),
        output: text.trim().to_owned(),
    })
}

/// Checks that `user` (not root) can reach `dir`: every ancestor must be
/// searchable by it. Root can always get in, so a bad `TMPDIR` such as
/// `/root/tmp` would otherwise surface as an obscure initdb failure.
pub(crate) fn check_traversable(dir: &Path, run_as: RunAs, user: &str) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in dir.ancestors() {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let ok = if meta.uid() == run_as.uid {
            mode & 0o100 != 0
        } else if meta.gid() == run_as.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(Error::DirNotAccessible {
                path: ancestor.to_owned(),
                user: user.to_owned(),
                hint: "point TMPDIR at a world-searchable directory such as /tmp".to_owned(),
            });
        }
    }
    Ok(())
}

/// A random-enough `u64` without a dependency: std's `RandomState` is seeded
/// from the OS per instance.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();

/// A TCP port on 127.0.0.1 that nothing listens on right now, never the same
/// twice in one process.
///
/// Ports are drawn at random from *below* the kernel's ephemeral range when
/// there is room: ports in that range are what the kernel hands to outgoing
/// connections, and one of those could take a stopped server's port before
/// its restart. Falls back to asking the kernel (bind to port 0).
pub fn free_port() -> u16 {
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    let mut handed_out = handed_out.lock().unwrap_or_else(|p| p.into_inner());
    let (low, high) = non_ephemeral_range();
    if high > low {
        for _ in 0..200 {
            let span = u64::from(high - low);
            let port = low + u16::try_from(random_u64() % span).unwrap_or(0);
            if !handed_out.contains(&port) && can_bind(port) {
                handed_out.insert(port);
                return port;
            }
        }
    }
    // The kernel's choice: free now, though possibly one we gave out before
    // (only if that server has since gone, or bind would have failed).
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("cannot bind a TCP socket on 127.0.0.1: {e}"));
    handed_out.insert(listener.port());
    listener.port()
}

fn can_bind(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// `[low, high)` of ports outside the ephemeral range, or an empty range.
fn non_ephemeral_range() -> (u16, u16) {
    const FLOOR: u16 = 10_000;
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok());
    match ephemeral_low {
        Some(low) if low >= FLOOR + 1_000 => (FLOOR, low),
        _ => (0, 0),
    }
}

/// Cleans up a server if the process that started it dies without running
/// destructors (killed by a test runner's timeout, Ctrl-C on `walbust demo`).
///
/// A small `sh` loop in its own process group (so signals sent to the test's
/// group do not reach it) waits for us to exit, then signals the pid in
/// `pidfile` and deletes `dir`. Dropping the guard kills and reaps it: the
/// normal path cleans up in `Drop` instead.
pub(crate) struct OrphanGuard {
    child: Child,
}

const GUARD_SCRIPT: &str = r#"
trap '' HUP INT TERM QUIT
while kill -0 "$1" 2>/dev/null; do sleep 1; done
pid=$(head -n 1 "$2" 2>/dev/null)
if [ -n "$pid" ]; then
  kill "-$3" "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.2; i=$((i+1)); done
fi
rm -rf "$4"
"#;

impl OrphanGuard {
    pub(crate) fn spawn(pidfile: &Path, signal: &str, dir: &Path) -> Result<Self, Error> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .arg("walbust-testkit-guard")
            .arg(std::process::id().to_string())
            .arg(pidfile)
            .arg(signal)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("could not start the clean-up guard (sh)", e))?;
        Ok(OrphanGuard { child })
    }
}

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary `name` of the same cargo build as `exe`, a binary under test
/// (`env!("CARGO_BIN_EXE_...")`): cargo puts every binary of a workspace
/// build in one folder.
pub fn sibling_binary(exe: &str, name: &str) -> Result<PathBuf, Error> {
    let exe = Path::new(exe);
    let path = exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        return Ok(path);
    }
    Err(Error::MissingBinary {
        name: name.to_owned(),
        searched: format!("beside {}", exe.display()),
        hint: format!("build it with `cargo build -p {name}` (cargo nextest run --workspace does)"),
    })
}
