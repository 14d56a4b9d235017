//! clap's companions from the real binary: completion scripts for bash, zsh and fish, the man
//! pages, `--version` with the commit, output cut short by its reader, and a healthcheck with
//! nothing to ask. No Docker needed.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::operator::{TempDir, operator, operator_bin};

fn stdout(args: &[&str]) -> String {
    let out = operator(args, None);
    assert!(
        out.status.success(),
        "operator {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_know_every_command_and_their_flags() {
    let bash = stdout(&["completions", "bash"]);
    assert!(
        bash.contains("complete -F _operator"),
        "{}",
        &bash[..200.min(bash.len())]
    );
    for word in [
        "tickets",
        "retry",
        "--force",
        "chaos",
        "completions",
        "--agent-lease-timeout",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    assert!(stdout(&["completions", "zsh"]).starts_with("#compdef operator"));
    let fish = stdout(&["completions", "fish"]);
    assert!(
        fish.contains("complete -c operator"),
        "{}",
        &fish[..200.min(fish.len())]
    );
    // An unknown shell is a usage error naming the ones there are.
    let out = operator(&["completions", "tcsh"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bash") && err.contains("zsh") && err.contains("fish"),
        "{err}"
    );
}

#[test]
fn man_pages_are_written_per_command_and_say_the_version() {
    let page = stdout(&["man"]);
    assert!(
        page.contains(".TH operator 1"),
        "{}",
        &page[..300.min(page.len())]
    );
    let version = stdout(&["--version"]);
    // "operator 0.1.0 (commit 0123456789ab)", or "(commit unknown)" outside a git checkout.
    let commit = version
        .trim()
        .strip_prefix(&format!("operator {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {version}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
    assert!(page.contains(commit), "the page does not name the build");

    let dir = TempDir::new(&common::unique("man"));
    let target = dir.path().join("man1");
    let said = stdout(&["man", "--dir", target.to_str().unwrap()]);
    assert!(said.starts_with("wrote "), "{said}");
    for name in [
        "operator.1",
        "operator-run.1",
        "operator-tickets-retry.1",
        "operator-chaos-run.1",
    ] {
        let text =
            std::fs::read_to_string(target.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".TH"), "{name} is not a man page");
    }
    let retry = std::fs::read_to_string(target.join("operator-tickets-retry.1")).unwrap();
    assert!(retry.contains("force"), "the page lacks --force");

    // A folder that cannot be made is one line naming it.
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, "").unwrap();
    let out = operator(&["man", "--dir", blocked.join("x").to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot write man pages to ") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    // A pipe smaller than the script (61 kB of bash), so the writer meets the closed end.
    let (mut reader, writer) = std::io::pipe().unwrap();
    {
        use std::os::fd::AsRawFd;
        let set = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        assert!(set >= 4096, "cannot shrink the pipe");
    }
    let mut cmd = Command::new(operator_bin());
    cmd.args(["completions", "bash"])
        .stdout(writer)
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // our copy of the write end
    // Read one byte, then close the pipe: what `| head -c1` does.
    let mut first = [0u8; 1];
    reader.read_exact(&mut first).unwrap();
    drop(reader);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn a_healthcheck_with_no_controller_behind_it_fails_in_one_line() {
    let port = common::free_port().to_string();
    let out = operator(
        &[
            "healthcheck",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--timeout",
            "1s",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: no controller answers at http://127.0.0.1:{port}/healthz"
        )) && err.lines().count() == 1,
        "{err}"
    );
}
