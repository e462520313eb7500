//! The walbust process under test: started, killed, terminated and
//! restarted like an operator's supervisor would, one log file per start.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How many log lines go into a finding.
const LOG_TAIL_LINES: usize = 40;

/// Kills walbust if this process dies without cleaning up (a test runner's
/// timeout, Ctrl-C): it would otherwise keep reconnecting to nothing.
const GUARD_SCRIPT: &str = r#"
trap '' HUP INT TERM QUIT
while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
kill -9 "$2" 2>/dev/null
"#;

struct Running {
    child: Child,
    guard: Option<Child>,
}

impl Running {
    fn reap_guard(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            let _ = guard.kill();
            let _ = guard.wait();
        }
    }

    /// `kill -9`, then reaps it.
    fn kill(mut self) -> Result<()> {
        // kill() fails only if it already exited; wait() reaps either way.
        let _ = self.child.kill();
        self.child.wait().context("cannot reap walbust")?;
        self.reap_guard();
        Ok(())
    }

    /// The exit status of the process in `slot` if it exited, which then
    /// empties the slot (its log stays).
    fn exited(slot: &mut Option<Running>) -> Result<Option<ExitStatus>> {
        let Some(r) = slot.as_mut() else {
            return Ok(None);
        };
        let status = r.child.try_wait().context("cannot check on walbust")?;
        if status.is_some() {
            if let Some(mut r) = slot.take() {
                r.reap_guard();
            }
        }
        Ok(status)
    }
}

/// How a SIGTERM went.
#[derive(Debug)]
pub enum Terminated {
    /// Exited on its own, with this status, after this long.
    Exited(ExitStatus, Duration),
    /// Still running after the timeout; it was killed.
    Hung(Duration),
}

/// Starts and stops walbust.
pub struct Walbust {
    binary: PathBuf,
    config: PathBuf,
    logs: PathBuf,
    log_filter: String,
    starts: u32,
    running: Option<Running>,
    /// A second walbust on the same slot, waiting to take over.
    standby: Option<Running>,
}

impl Walbust {
    pub fn new(binary: &Path, config: &Path, logs: &Path, log_filter: &str) -> Walbust {
        Walbust {
            binary: binary.to_owned(),
            config: config.to_owned(),
            logs: logs.to_owned(),
            log_filter: log_filter.to_owned(),
            starts: 0,
            running: None,
            standby: None,
        }
    }

    /// How many times walbust was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Starts `walbust run --config ...`, logging to `walbust-NNN.log`.
    pub fn start(&mut self) -> Result<()> {
        if self.running.is_some() {
            bail!("walbust is already running");
        }
        self.running = Some(self.spawn()?);
        Ok(())
    }

    /// Starts a second walbust with the same configuration beside the
    /// running one: it finds the slot in use and waits as a standby.
    pub fn start_standby(&mut self) -> Result<()> {
        if self.standby.is_some() {
            bail!("a standby walbust is already running");
        }
        self.standby = Some(self.spawn()?);
        Ok(())
    }

    /// `kill -9` of the running walbust; the standby becomes the running
    /// one (whose log is then [`Walbust::last_log`]).
    pub fn kill_for_takeover(&mut self) -> Result<()> {
        let Some(standby) = self.standby.take() else {
            bail!("no standby walbust to take over");
        };
        self.kill()?;
        self.running = Some(standby);
        Ok(())
    }

    /// The standby's exit status, if it exited (it never should).
    pub fn standby_exited(&mut self) -> Result<Option<ExitStatus>> {
        Running::exited(&mut self.standby)
    }

    fn spawn(&mut self) -> Result<Running> {
        self.starts += 1;
        let log = self.logs.join(format!("walbust-{:03}.log", self.starts));
        let file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(&self.binary)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("WALBUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .arg("walbust-torture-guard")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        Ok(Running { child, guard })
    }

    /// `kill -9`, then reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.running.take().map_or(Ok(()), Running::kill)
    }

    /// SIGTERM, then waits up to `timeout` for the exit; kills it if it
    /// does not come.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Terminated> {
        let Some(r) = self.running.as_mut() else {
            bail!("walbust is not running");
        };
        signal(r.child.id(), "TERM")?;
        let sent = Instant::now();
        loop {
            if let Some(status) = r.child.try_wait().context("cannot wait for walbust")? {
                let took = sent.elapsed();
                self.forget();
                return Ok(Terminated::Exited(status, took));
            }
            if sent.elapsed() > timeout {
                self.kill()?;
                return Ok(Terminated::Hung(timeout));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process exited on its own (it never should).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Running::exited(&mut self.running)
    }

    /// Drops the handle of an exited process (its log stays, see
    /// [`Walbust::last_log`]).
    fn forget(&mut self) {
        if let Some(mut r) = self.running.take() {
            r.reap_guard();
        }
    }

    /// The log of process number `n` (1-based).
    pub fn log_of(&self, n: u32) -> PathBuf {
        self.logs.join(format!("walbust-{n:03}.log"))
    }

    /// The log of the most recent process.
    pub fn last_log(&self) -> PathBuf {
        self.log_of(self.starts)
    }
}

impl Drop for Walbust {
    fn drop(&mut self) {
        let _ = self.kill();
        if let Some(standby) = self.standby.take() {
            let _ = standby.kill();
        }
    }
}

fn signal(pid: u32, name: &str) -> Result<()> {
    // `kill` rather than libc: the workspace forbids unsafe code.
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed ({status})");
    }
    Ok(())
}

/// The last lines of a log file, for a finding.
pub fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
