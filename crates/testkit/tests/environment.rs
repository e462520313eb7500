//! Environment problems are clear errors, never a skip: missing server
//! binaries name the package to install, and (as root) a temp dir the
//! postgres user cannot enter is named. One test in its own binary: it
//! changes process-wide environment variables.

use walbust_testkit::{Error, Postgres, Redis};

#[test]
fn environment_problems_are_clear_errors() {
    let empty = tempfile::tempdir().expect("tempdir");

    std::env::set_var("WALBUST_PG_BINDIR", empty.path());
    let err = Postgres::start().expect_err("no initdb there");
    std::env::remove_var("WALBUST_PG_BINDIR");
    assert!(matches!(err, Error::MissingBinary { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("initdb not found"), "{text}");
    assert!(text.contains("apt-get install -y postgresql"), "{text}");

    let path = std::env::var_os("PATH").expect("PATH");
    std::env::set_var("PATH", empty.path());
    let err = Redis::start().expect_err("no redis-server on PATH");
    std::env::set_var("PATH", path);
    let text = err.to_string();
    assert_eq!(
        text,
        "redis-server not found on PATH: install it with 'apt-get install -y redis-server'"
    );

    // As root, PostgreSQL runs as the postgres user, which must be able to
    // enter TMPDIR; a private one is reported as such, before initdb.
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .expect("id -u");
    if root {
        use std::os::unix::fs::PermissionsExt;
        let private = empty.path().join("private");
        std::fs::create_dir(&private).expect("mkdir");
        std::fs::set_permissions(empty.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        std::env::set_var("TMPDIR", &private);
        let err = Postgres::start().expect_err("postgres cannot enter TMPDIR");
        std::env::remove_var("TMPDIR");
        assert!(matches!(err, Error::DirNotAccessible { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&empty.path().display().to_string()), "{text}");
        assert!(text.contains("TMPDIR"), "{text}");
    }
}
