//! Child processes of the harness (walbust, pg_recvlogical, pgbench) and what `/proc` says about
//! them: CPU time (`utime + stime` of `/proc/<pid>/stat`) and peak RSS (`VmHWM` of
//! `/proc/<pid>/status`). Both must be read while the process is alive; a process that exits
//! on its own (pg_recvlogical) is sampled periodically and its last sample kept.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// CPU time and peak memory of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStats {
    /// User plus system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Peak resident set size (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
    /// Voluntary and involuntary context switches of all its threads (those still alive).
    pub context_switches: u64,
}

/// Reads the stats of `pid`; `None` once it is gone (or on a system without `/proc`).
pub fn stats(pid: u32) -> Option<ProcStats> {
    Some(ProcStats {
        cpu_seconds: cpu_seconds(pid)?,
        peak_rss_bytes: peak_rss_bytes(pid).unwrap_or(0),
        context_switches: context_switches(pid),
    })
}

fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .map(|status| {
            ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
                .iter()
                .filter_map(|field| parse_status_number(&status, field))
                .sum::<u64>()
        })
        .sum()
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, "VmHWM:").map(|kib| kib * 1024)
}

/// A `kB` field of `/proc/<pid>/status` or `/proc/meminfo`.
pub fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    parse_status_number(text, field)
}

/// The number after `field` on its line of `/proc/<pid>/status` or `/proc/meminfo`.
fn parse_status_number(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.get(field.len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// A child process with its stderr in a log file. Killed on drop if still running.
pub struct Proc {
    what: &'static str,
    child: Child,
    pid: u32,
    log: PathBuf,
    /// Last stats read while it was alive.
    pub last: Option<ProcStats>,
}

impl Proc {
    /// Spawns `cmd`, stdout discarded, stderr into `log`.
    pub fn spawn(what: &'static str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let pid = child.id().context("child has no pid")?;
        Ok(Proc {
            what,
            child,
            pid,
            log: log.to_path_buf(),
            last: None,
        })
    }

    /// Reads its stats now (kept in `last` while it lives).
    pub fn sample(&mut self) -> Option<ProcStats> {
        let now = stats(self.pid);
        if now.is_some() {
            self.last = now;
        }
        now
    }

    /// `Some(status)` once it exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for it to exit.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.child.wait().await?)
    }

    /// Fails with the log's tail if it exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.exited()? {
            bail!(
                "{} exited early ({status}); its log ends with:\n{}",
                self.what,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM (walbust finishes its batch and exits), then SIGKILL after `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                Ok(self.child.wait().await?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_last_parenthesis() {
        let stat = "4242 (wal (bust) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 1000 100000 500";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn kib_fields_are_read() {
        let status = "Name:\twalbust\nVmPeak:\t  99 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn our_own_process_has_stats() {
        let me = stats(std::process::id()).expect("/proc/self readable");
        assert!(me.peak_rss_bytes > 0);
        assert!(me.context_switches > 0);
        assert!(me.cpu_seconds >= 0.0);
    }
}
