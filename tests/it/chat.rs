//! `dscoder chat` driven through stdin (rustyline reads plain lines when stdin is not a terminal):
//! commands, bad input and turns, on the Lite-style fixture.

use std::path::{Path, PathBuf};

use crate::common;

fn converted(_dir: &Path) -> PathBuf {
    common::converted(&common::fixture("lite-tiny"), "q8_0")
}

fn chat(model: &Path, data_home: &Path, input: &str) -> (String, String, Option<i32>) {
    chat_with(model, data_home, &[], input)
}

#[test]
fn a_session_of_turns_and_commands() {
    let dir = tempfile::tempdir().unwrap();
    let model = converted(dir.path());
    let src = dir.path().join("snippet.py");
    std::fs::write(&src, "def f(x):\n    return x * 2\n").unwrap();
    let input = format!(
        "def add(a, b):\n/set temp hot\n/bogus\n/file {}\nexplain\n/file /nonexistent.py\n/show prompt\n/undo\n/show prompt\n/exit\n",
        src.display()
    );
    let (out, err, code) = chat(&model, dir.path(), &input);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("dscoder chat: lite-tiny"),
        "names the model on start: {err}"
    );
    assert!(err.contains("'hot' is not a valid value"), "{err}");
    assert!(err.contains("unknown command '/bogus'"), "{err}");
    assert!(err.contains("/nonexistent.py"), "{err}");
    // The second turn reuses the first turn's KV cache.
    let reused = reused(&err);
    assert_eq!(reused.len(), 2, "{err}");
    assert_eq!(reused[0], 0);
    assert!(reused[1] > 10, "{err}");
    assert!(err.contains("context "), "context meter: {err}");
    // The file went in as a labelled code block with the next message; /undo removed that turn.
    let prompts: Vec<&str> = out.split("User: def add(a, b):").collect();
    assert_eq!(prompts.len(), 3, "two /show prompt outputs: {out}");
    assert!(
        prompts[1].contains("snippet.py:\n```py\ndef f(x):\n    return x * 2\n```\n\nexplain"),
        "{out}"
    );
    assert!(!prompts[2].contains("snippet.py"), "{out}");
    assert!(dir.path().join("dscoder/history").exists(), "history file");
}

#[test]
fn write_explains_a_missing_code_block_and_a_bad_number() {
    let dir = tempfile::tempdir().unwrap();
    let model = converted(dir.path());
    let target = dir.path().join("out.py");
    // The random model's reply has no code block: /write explains that.
    let input = format!("hello\n/write 1 {}\n/write x y\n", target.display());
    let (_, err, code) = chat(&model, dir.path(), &input);
    assert_eq!(code, Some(0));
    assert!(err.contains("has 0 code block(s)"), "{err}");
    assert!(err.contains("not a code block number"), "{err}");
    assert!(!target.exists());
}

fn chat_with(
    model: &Path,
    data_home: &Path,
    extra: &[&str],
    input: &str,
) -> (String, String, Option<i32>) {
    let o = common::output_with_stdin(
        common::dscoder()
            .arg("chat")
            .arg(model)
            .args(["--temp", "0", "-n", "8"])
            .args(extra)
            .env("XDG_DATA_HOME", data_home),
        input,
    );
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.code(),
    )
}

/// Reused-token counts of each reply, from the stats lines.
fn reused(err: &str) -> Vec<usize> {
    err.lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split(" cached + ").next()?.parse().ok())
        .collect()
}

#[test]
fn save_and_load_restore_the_conversation_and_the_kv_cache() {
    let dir = tempfile::tempdir().unwrap();
    let model = converted(dir.path());
    let (_, err, code) = chat_with(&model, dir.path(), &[], "def add(a, b):\n/save s1\n");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("[saved s1: 2 messages"), "{err}");

    // Same model and settings: the state is restored and the next turn reuses it.
    let (out_a, err, _) = chat_with(
        &model,
        dir.path(),
        &[],
        "/load s1\nand then?\n/show prompt\n",
    );
    assert!(err.contains("[loaded s1: 2 messages"), "{err}");
    assert!(reused(&err)[0] > 10, "{err}");
    assert!(out_a.contains("User: def add(a, b):"), "{out_a}");

    // Another context size: the state does not apply, the conversation is re-evaluated, and the
    // reply is the same as with the restored cache.
    let (out_b, err, _) = chat_with(
        &model,
        dir.path(),
        &["--ctx-size", "512"],
        "/load s1\nand then?\n/show prompt\n",
    );
    assert!(err.contains("re-evaluates"), "{err}");
    assert_eq!(reused(&err)[0], 0, "{err}");
    assert_eq!(out_a, out_b);

    let (_, err, _) = chat_with(&model, dir.path(), &[], "/load nosuch\n/save ../x\n");
    assert!(err.contains("nosuch.json"), "{err}");
    assert!(err.contains("not a path"), "{err}");

    // /sessions lists what was saved, with its size; nothing else is in the folder (the saves
    // went through temporary files renamed over their targets).
    let (_, err, _) = chat_with(&model, dir.path(), &[], "/sessions\n");
    assert!(
        err.lines()
            .any(|l| l.trim_start().starts_with("s1 ") && l.contains("2 messages, KV cache saved")),
        "{err}"
    );
    let sessions = dir.path().join("dscoder/sessions");
    let mut files: Vec<String> = std::fs::read_dir(&sessions)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| !f.ends_with(".crc32") && !f.starts_with("auto-"))
        .collect();
    files.sort();
    // (Besides the autosaves each chat writes.)
    assert_eq!(files, ["s1.json", "s1.state"], "{files:?}");
}

/// Settings read as settings, `/save` does not overwrite without `!`, and an attachment that
/// cannot fit is announced when attached and kept (not dropped) when its message is refused.
#[test]
fn settings_saves_and_oversized_attachments_are_handled_in_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let model = converted(dir.path());
    let big = dir.path().join("big.py");
    std::fs::write(&big, "x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n".repeat(200)).unwrap();
    let input = format!(
        "/set temp 0.2\n/show settings\nhi\n/save s\n/save s\n/save s!\n/clear\n/file {}\nexplain\n/exit\n",
        big.display()
    );
    let (_, err, code) = chat_with(&model, dir.path(), &["-c", "512"], &input);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("[temp = 0.2]"), "{err}");
    assert!(err.contains("temp = 0.2\ntop_k = 40"), "{err}");
    assert!(
        err.contains("a session named s exists; /save s! overwrites it"),
        "{err}"
    );
    assert_eq!(err.matches("[saved s:").count(), 2, "{err}");
    assert!(
        err.contains("more than the context of 512; it will be refused"),
        "{err}"
    );
    assert!(err.contains("This message alone is"), "{err}");
    assert!(err.contains("the attached files are kept"), "{err}");
}

/// Every chat is autosaved; `--continue` resumes the newest one with its KV cache (the next
/// reply evaluates only the new message), and continuing does not start another autosave.
/// Only the newest ten autosaves are kept.
#[test]
fn chats_are_autosaved_and_continue_resumes_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = converted(dir.path());
    let sessions = dir.path().join("dscoder/sessions");
    // Eleven older autosaves (of another conversation) that pruning should thin out.
    std::fs::create_dir_all(&sessions).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for i in 0..11 {
        let p = sessions.join(format!("auto-20200101-0000{i:02}.json"));
        std::fs::write(
            &p,
            r#"{"identity":"x","conversation":{"system":null,"messages":[]}}"#,
        )
        .unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(old + std::time::Duration::from_secs(i))
            .unwrap();
    }

    let (_, err, code) = chat(&model, dir.path(), "def add(a, b):\n/exit\n");
    assert_eq!(code, Some(0), "{err}");
    let autos = |ext: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&sessions)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("auto-") && n.ends_with(ext))
            .collect();
        v.sort();
        v
    };
    let jsons = autos(".json");
    assert_eq!(jsons.len(), 10, "{jsons:?}");
    // The new one (named for today) is there with its KV cache; the oldest were removed.
    let newest = jsons
        .iter()
        .find(|n| !n.starts_with("auto-2020"))
        .unwrap()
        .clone();
    let name = newest.strip_suffix(".json").unwrap().to_string();
    assert!(autos(".state").contains(&format!("{name}.state")));
    assert!(
        !jsons.contains(&"auto-20200101-000000.json".to_string()),
        "{jsons:?}"
    );
    let saved = common::json(&sessions.join(&newest));
    assert_eq!(
        saved["conversation"]["messages"].as_array().unwrap().len(),
        2
    );

    // --continue: the conversation, its settings and the KV cache come back.
    let (out, err, code) = chat_with(
        &model,
        dir.path(),
        &["--continue"],
        "/show prompt\nand then?\n/exit\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!("[loaded {name}: 2 messages, ")),
        "{err}"
    );
    assert!(out.contains("def add(a, b):"), "{out}");
    let cached: Vec<usize> = err
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split(" cached + ").next()?.parse().ok())
        .collect();
    assert_eq!(cached.len(), 1, "{err}");
    assert!(cached[0] > 10, "the restored cache was not reused: {err}");
    // The continued chat saved into the same autosave: now 4 messages, no new file.
    assert_eq!(autos(".json"), jsons);
    let saved = common::json(&sessions.join(&newest));
    assert_eq!(
        saved["conversation"]["messages"].as_array().unwrap().len(),
        4
    );
}

/// `/show stats` describes the last reply and the conversation, and `/undo` of that reply
/// clears them (they no longer describe anything in the conversation).
#[test]
fn show_stats_follows_undo() {
    let dir = tempfile::tempdir().unwrap();
    let model = converted(dir.path());
    let (_, err, code) = chat(
        &model,
        dir.path(),
        "def add(a, b):\n/show stats\n/undo\n/show stats\n/exit\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let shown: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("last reply: ") || l.starts_with("conversation: "))
        .collect();
    assert_eq!(shown.len(), 4, "{err}");
    assert!(shown[0].contains(" generated in "), "{err}");
    assert!(shown[1].starts_with("conversation: 2 messages, "), "{err}");
    assert_eq!(shown[2], "last reply: none (or undone)", "{err}");
    assert!(shown[3].starts_with("conversation: 0 messages, "), "{err}");
}
