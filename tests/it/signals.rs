//! Ctrl-C as the user sends it (SIGINT to the process): long commands stop cleanly and exit
//! with 130, the shell's code for "interrupted".

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common;

#[test]
fn ctrl_c_during_perplexity_exits_130() {
    let model = common::converted(&common::repo("nano/model"), "f32");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("long.txt");
    // Long enough to take minutes at 32 tokens a chunk.
    let held_out = std::fs::read_to_string(common::repo("nano/heldout.py.txt")).unwrap();
    std::fs::write(&text, held_out.repeat(20)).unwrap();
    let mut child = common::dscoder()
        .arg("perplexity")
        .arg(&model)
        .arg("-f")
        .arg(&text)
        .args(["--chunk-size", "32"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before the signal"
    );
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(out.stdout.is_empty(), "no report for an interrupted run");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
}

#[test]
fn ctrl_c_during_run_says_interrupted_and_exits_130() {
    let model = common::converted(&common::repo("nano/model"), "f32");
    // Greedy, this prompt repeats itself until the context is full: seconds of work.
    let mut child = common::dscoder()
        .arg("run")
        .arg(&model)
        .args(["--raw", "--temp", "0", "-n", "100000"])
        .args(["-p", "a = 1\na = 1\na = 1\na = 1\n"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once text is flowing (a loaded machine may take a while to get there).
    let mut first = [0u8; 4];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert_eq!(&first, b"a = ");
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before the signal"
    );
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("[interrupted]"), "{err}");
    assert!(!err.contains("error:"), "{err}");
}

/// SIGTERM, SIGHUP and SIGQUIT stop a job as Ctrl-C does (cleanly, exit 130) instead of
/// killing it mid-write or dumping core; a second one ends it at once (143).
#[test]
fn termination_signals_stop_cleanly_and_a_second_one_ends_it() {
    let model = common::converted(&common::repo("nano/model"), "f32");
    for (sig, twice) in [
        ("-TERM", false),
        ("-HUP", false),
        ("-QUIT", false),
        ("-TERM", true),
    ] {
        let mut child = common::dscoder()
            .arg("run")
            .arg(&model)
            .args([
                "--raw",
                "--temp",
                "0",
                "-n",
                "100000",
                "-p",
                "a = 1\na = 1\n",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 1];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        for _ in 0..if twice { 2 } else { 1 } {
            std::process::Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let want = if twice { Some(143) } else { Some(130) };
        // Two quick signals may both land before the job notices the first: either way it
        // ends promptly with one of the two codes, never by the signal itself.
        let ok = out.status.code() == want || (twice && out.status.code() == Some(130));
        assert!(ok, "{sig} twice={twice}: {:?} {err}", out.status);
    }
}

/// In the chat REPL a termination signal ends the program at once (Ctrl-C does not).
#[test]
fn sigterm_ends_the_chat() {
    let model = common::converted(&common::repo("nano/model"), "f32");
    let mut child = common::dscoder()
        .arg("chat")
        .arg(&model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("dscoder chat:") {
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let sent = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(sent.elapsed() < Duration::from_secs(5));
}
