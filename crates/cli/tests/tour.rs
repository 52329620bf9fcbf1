//! The README's five-minute tour, run as the README writes it: the block
//! after the `<!-- tour: … -->` marker, on a fresh directory, with the
//! binary under test (GAVEL_BIN) and a free port in place of 8470 (so it
//! can run beside anything on the machine). If the README changes, this
//! runs what it says now.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tour_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let marker = readme.find("<!-- tour:").expect("the tour marker");
    let after = &readme[marker..];
    let start = after.find("```sh\n").expect("the tour's sh block") + "```sh\n".len();
    let end = after[start..].find("\n```").expect("the block's end");
    after[start..start + end].to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the tour's whole process group (bash and the gateway it started
/// in the background) however the test ends.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // `--`: without it, procps's kill reads `-PID` as an option and
        // signals every process (-1).
        if self.0 > 1 {
            let _ = Command::new("kill")
                .args(["-s", "TERM", "--", &format!("-{}", self.0)])
                .status();
        }
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    let block = tour_block();
    assert!(block.contains("scripts/gavel quickstart"), "{block}");
    let port = free_port().to_string();
    let script = block.replace("8470", &port);
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts"),
        dir.path().join("scripts"),
    )
    .unwrap();
    // Fail at the first failing step; the harness's own lines, not the
    // README's.
    let harness = format!("set -euo pipefail\n{script}\n");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&harness)
        .current_dir(dir.path())
        .env("GAVEL_BIN", env!("CARGO_BIN_EXE_gavel"))
        .env("GAVEL_SERVER", format!("http://127.0.0.1:{port}"))
        .env("HOME", dir.path())
        .env("NO_COLOR", "1")
        .env_remove("GAVEL_TOKEN")
        .env_remove("GAVEL_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let _group = Group(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the tour took over 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tour failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    for expected in [
        r#""verdict":"pending""#,
        r#""review_with":"gavel approve "#,
        "needs approval by group:dba",
        "approved request",
        r#""verdict":"allow""#,
        r#""admission_id":""#,
        "executed",
        "audit log verified",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
    }
    assert!(
        !dir.path().join("gavel-quickstart").exists(),
        "the tour cleans up after itself"
    );
}
