//! A throwaway Varnish: `varnishd` (with varnish-modules' vmod xkey) as a child process on a
//! free loopback port, in front of a backend the test runs, with the VCL walbust's README
//! shows for `sinks.http` (`format: varnish_xkey`).
//!
//! Runs in the foreground (`-F`) without a jail (`-j none`): as root, the default jail would
//! switch to the `varnish` user, which cannot read a private temporary directory; without one,
//! varnishd runs as whoever started it, root or not. Killing the manager process takes its
//! cache process down with it.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{self, OrphanGuard};
use crate::Error;

const BINARY: &str = "varnishd";
const INSTALL_HINT: &str = "install it with 'apt-get install -y varnish varnish-modules'";
/// Where Debian puts varnishd, often off a normal user's PATH.
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin"];
/// How long to wait for the first answer (the VCL is compiled first).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when another process took ours first.
const PORT_ATTEMPTS: usize = 4;

/// The VCL: purges by `xkey` on `PURGE`, backend `127.0.0.1:8080` (replaced by the test's).
pub const XKEY_VCL: &str = include_str!("varnish.vcl");

/// A throwaway Varnish in front of a backend on `127.0.0.1`.
///
/// Dropping it kills the process (and reaps it) and deletes its directory, also when a test
/// panics. If the test process dies without unwinding, a guard process does the same.
pub struct Varnish {
    guard: Option<OrphanGuard>,
    port: u16,
    log_file: PathBuf,
    child: Option<Child>,
    dir: TempDir,
}

impl std::fmt::Debug for Varnish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Varnish")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Varnish {
    /// Starts `varnishd` with [`XKEY_VCL`] in front of the backend on `127.0.0.1:backend_port`,
    /// and waits until it answers a purge.
    pub fn start(backend_port: u16) -> Result<Varnish, Error> {
        let binary = find_varnishd().ok_or_else(|| Error::MissingBinary {
            name: BINARY.to_owned(),
            searched: format!("on PATH and in {}", SBIN_DIRS.join(", ")),
            hint: INSTALL_HINT.to_owned(),
        })?;
        let dir = tempfile::Builder::new()
            .prefix("walbust-varnish-")
            .tempdir()
            .map_err(|e| Error::io("could not create a temporary directory", e))?;
        let vcl_file = dir.path().join("walbust.vcl");
        let vcl = XKEY_VCL.replace("\"8080\"", &format!("\"{backend_port}\""));
        fs::write(&vcl_file, vcl)
            .map_err(|e| Error::io(format!("could not write {}", vcl_file.display()), e))?;
        let pid_file = dir.path().join("varnishd.pid");
        let guard = OrphanGuard::spawn(&pid_file, "KILL", dir.path())?;
        let mut varnish = Varnish {
            guard: Some(guard),
            port: 0,
            log_file: dir.path().join("varnishd.log"),
            child: None,
            dir,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            varnish.port = process::free_port();
            match varnish.spawn(&binary, &vcl_file, &pid_file) {
                Ok(()) => return Ok(varnish),
                Err(Error::StartFailed { log_tail, .. })
                    if attempt < PORT_ATTEMPTS && log_tail.contains("Address already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The port Varnish listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The log of `varnishd` (its standard output and error).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    fn spawn(&mut self, binary: &Path, vcl: &Path, pid_file: &Path) -> Result<(), Error> {
        let mut cmd = Command::new(binary);
        cmd.args(["-F", "-j", "none", "-T", "none", "-s", "malloc,32m"])
            .arg("-a")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("-n")
            .arg(self.dir.path().join("work"))
            .arg("-f")
            .arg(vcl)
            .current_dir(self.dir.path());
        self.child = Some(process::spawn_logged(&mut cmd, &self.log_file, pid_file)?);
        match self.wait_ready() {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.stop();
                Err(Error::StartFailed {
                    server: "Varnish",
                    port: self.port,
                    reason,
                    log: self.log_file.clone(),
                    log_tail: process::log_tail(&self.log_file),
                })
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            process::still_running(self.child.as_mut(), BINARY)?;
            if purge_answers(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no answer to a purge within {} s",
                    START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Varnish {
    fn drop(&mut self) {
        // The guard goes first so it cannot race us deleting the directory.
        drop(self.guard.take());
        self.stop();
    }
}

fn find_varnishd() -> Option<PathBuf> {
    process::find_on_path(BINARY).or_else(|| {
        SBIN_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(BINARY))
            .find(|path| process::is_executable(path))
    })
}

/// One purge of a key no object carries, over a fresh connection; true on a 200, which only
/// the VCL's purge handler answers once the cache process runs.
fn purge_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(1000)))?;
        stream.write_all(
            b"PURGE / HTTP/1.1\r\nHost: localhost\r\nxkey: walbust-testkit-probe\r\nConnection: close\r\n\r\n",
        )?;
        let mut reply = [0u8; 12];
        let n = stream.read(&mut reply)?;
        Ok(reply
            .get(..n)
            .is_some_and(|r| r.starts_with(b"HTTP/1.1 200")))
    };
    attempt().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_shows_the_vcl_the_tests_use() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(super::XKEY_VCL.trim_end()),
            "README.md must show crates/testkit/src/varnish.vcl verbatim"
        );
    }
}
