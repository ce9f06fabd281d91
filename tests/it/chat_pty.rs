//! `dscoder chat` driven through a real pseudo-terminal (expectrl), as a person at a terminal
//! would: rustyline in raw mode, Enter as `\r`, Ctrl-C and Ctrl-D as control bytes, the reply
//! streamed to a terminal (so code blocks may be coloured). `chat.rs` covers the same REPL
//! through piped stdin.
//!
//! The model is the Lite-style fixture converted to Q8_0; its weights are random, so replies are
//! noise, but at `--temp 0` they are deterministic, which is what these tests compare.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use expectrl::process::unix::WaitStatus;
use expectrl::session::OsSession;

/// How long any one expected piece of output may take.
const TIMEOUT: Duration = Duration::from_secs(30);
const PROMPT: &str = ">>> ";
const CTRL_C: &[u8] = b"\x03";
const CTRL_D: &[u8] = b"\x04";

/// The fixture as a GGUF, converted once per run.
fn model() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| common::converted(&common::fixture("lite-tiny"), "q8_0"))
}

/// One chat at a time: the machine has few cores, and llama.cpp's threads of two models at once
/// would slow each other down enough to blur the Ctrl-C timing.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The counts of a reply's stats line: `[R cached + E new, ... t/s; G generated, ... t/s;
/// context U/N]` (a speed only when there are 8 tokens or more).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    reused: usize,
    evaluated: usize,
    generated: usize,
    context_used: usize,
}

#[derive(Debug)]
struct Reply {
    /// What the terminal showed after the entered line and before the stats line: the reply,
    /// then any notice such as the token-limit one.
    text: String,
    stats: Stats,
}

/// A `dscoder chat` running in a pseudo-terminal, and what it printed so far.
struct Chat {
    session: OsSession,
    /// Everything read from the terminal, as sent.
    raw: Vec<u8>,
    /// How much of [`screen`](Self::screen) earlier waits consumed.
    seen: usize,
    eof: bool,
    _guard: MutexGuard<'static, ()>,
}

impl Chat {
    /// Starts `dscoder chat MODEL --temp 0 ARGS...` in `dir`, which is also its XDG_DATA_HOME
    /// (history and saved sessions), and waits for the first prompt. Give files relative to
    /// `dir`: a temporary path in a message would change the prompt, and so the reply, from one
    /// run to the next.
    fn start(dir: &Path, args: &[&str]) -> Chat {
        Self::start_with(dir, model(), args, &[])
    }

    /// [`Chat::start`] with another model and environment variables.
    fn start_with(dir: &Path, model: &Path, args: &[&str], env: &[(&str, &str)]) -> Chat {
        let guard = one_at_a_time();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dscoder"));
        common::isolate(&mut cmd);
        cmd.envs(env.iter().copied());
        cmd.arg("chat")
            .arg(model)
            // One thread: the tiny model gains nothing from more, and on a busy machine two
            // llama.cpp threads that wait on each other slow generation down a hundredfold.
            .args(["--temp", "0", "--threads", "1"])
            .args(args)
            .current_dir(dir)
            .env("XDG_DATA_HOME", dir)
            // A terminal rustyline fully supports (TERM=dumb would make it read plain lines).
            .env("TERM", "xterm")
            .env_remove("DSCODER_LOG");
        let mut session = OsSession::spawn(cmd).expect("spawning dscoder chat in a pty");
        // Wide enough that no typed line wraps (the REPL is still loading the model).
        session.get_process_mut().set_window_size(1000, 50).unwrap();
        let mut chat = Chat {
            session,
            raw: Vec::new(),
            seen: 0,
            eof: false,
            _guard: guard,
        };
        chat.expect(PROMPT);
        chat
    }

    /// The terminal's output so far without escape sequences and carriage returns.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&strip_escapes(&self.raw)).into_owned()
    }

    /// Reads what is available; false when nothing was.
    fn read_some(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut buf = [0u8; 4096];
        match self.session.try_read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
            Err(e) => panic!("reading the pty: {e}"),
        }
    }

    /// Waits until the unseen output satisfies `found` (which returns the end of the match in
    /// the text it is given), consumes the output up to there and returns it.
    fn wait_until(&mut self, what: &str, found: impl Fn(&str) -> Option<usize>) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let screen = self.screen();
            let unseen = screen.get(self.seen..).unwrap_or("");
            if let Some(end) = found(unseen) {
                let text = unseen[..end].to_string();
                self.seen += end;
                return text;
            }
            if self.eof {
                panic!("the chat ended before {what}; its output:\n{screen}");
            }
            if Instant::now() > deadline {
                panic!("no {what} after {TIMEOUT:?}; the chat's output:\n{screen}");
            }
            if !self.read_some() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Waits for `text` and returns the output up to and including it.
    fn expect(&mut self, text: &str) -> String {
        self.wait_until(&format!("{text:?}"), |s| {
            s.find(text).map(|i| i + text.len())
        })
    }

    fn send(&mut self, bytes: &[u8]) {
        self.session.write_all(bytes).unwrap();
        self.session.flush().unwrap();
    }

    /// Types `line` and Enter (a carriage return, as a terminal sends it in raw mode), and waits
    /// for the terminal to show the line entered.
    fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\r").as_bytes());
        self.expect(&format!("{line}\n"));
    }

    /// Runs a command and returns what it printed before the next prompt.
    fn command(&mut self, line: &str) -> String {
        self.send_line(line);
        let out = self.expect(PROMPT);
        out.strip_suffix(PROMPT).unwrap().to_string()
    }

    /// Waits for the end of a reply: its stats line, then the prompt.
    fn reply(&mut self) -> Reply {
        let out = self.wait_until("a stats line", |s| {
            let start = stats_start(s)?;
            Some(start + s[start..].find("]\n")? + 2)
        });
        self.expect(PROMPT);
        let start = stats_start(&out).unwrap();
        let stats = parse_stats(&out[start..]).unwrap_or_else(|| panic!("stats in {out:?}"));
        Reply {
            text: out[..start].to_string(),
            stats,
        }
    }

    /// Sends a message and waits for the whole reply.
    fn turn(&mut self, message: &str) -> Reply {
        self.send_line(message);
        self.reply()
    }

    /// Reads to the end of the output and returns the exit code.
    fn exit_code(mut self) -> i32 {
        let deadline = Instant::now() + TIMEOUT;
        while !self.eof {
            assert!(
                Instant::now() < deadline,
                "the chat did not exit; its output:\n{}",
                self.screen()
            );
            if !self.read_some() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        match self.session.get_process().wait().unwrap() {
            WaitStatus::Exited(_, code) => code,
            other => panic!(
                "the chat did not exit normally: {other:?}\n{}",
                self.screen()
            ),
        }
    }
}

/// Where the stats line starts in `s`: the `[` of the last line that reads `[N cached + `.
fn stats_start(s: &str) -> Option<usize> {
    let at = s.rfind(" cached + ")?;
    let open = s[..at].rfind('[')?;
    s[open + 1..at]
        .chars()
        .all(|c| c.is_ascii_digit())
        .then_some(open)
}

fn parse_stats(line: &str) -> Option<Stats> {
    let line = &line[..line.find(']')? + 1];
    let number_before = |s: &str, word: &str| -> Option<usize> {
        let head = &s[..s.find(word)?];
        let digits = head.rsplit(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse().ok()
    };
    let context = &line[line.find("; ctx ")? + "; ctx ".len()..];
    // Every reply's line fits an 80-column terminal.
    assert!(
        line.chars().count() <= 80,
        "{line:?} is wider than 80 columns"
    );
    Some(Stats {
        reused: line[1..].split(' ').next()?.parse().ok()?,
        evaluated: number_before(line, " new")?,
        generated: number_before(line, " generated")?,
        context_used: context.split('/').next()?.parse().ok()?,
    })
}

/// Removes ANSI escape sequences (CSI, OSC and two-byte ones), carriage returns and bells. An
/// unfinished sequence at the end is dropped, so the result only grows as output arrives.
fn strip_escapes(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            0x1b => {
                i += 1;
                match raw.get(i) {
                    // CSI: parameters and intermediates, then one final byte.
                    Some(b'[') => {
                        i += 1;
                        while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                            i += 1;
                        }
                        i += 1;
                    }
                    // OSC: up to BEL or ESC \.
                    Some(b']') => {
                        while i < raw.len() && raw[i] != 0x07 && raw[i] != 0x1b {
                            i += 1;
                        }
                        i += if raw.get(i) == Some(&0x1b) { 2 } else { 1 };
                    }
                    Some(_) => i += 1,
                    None => {}
                }
            }
            b'\r' | 0x07 => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[test]
fn two_turns_reuse_the_cache_and_ctrl_d_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let mut chat = Chat::start(dir.path(), &["-n", "16"]);
    assert!(
        chat.screen().contains("dscoder chat: lite-tiny (context "),
        "{}",
        chat.screen()
    );

    let first = chat.turn("def add(a, b):");
    assert_eq!(first.stats.reused, 0, "{first:?}");
    assert!(first.stats.evaluated > 5, "{first:?}");
    assert_eq!(first.stats.generated, 16, "{first:?}");
    assert!(
        first.text.contains("[stopped at the token limit"),
        "{first:?}"
    );

    // The second turn does not evaluate the first turn's prompt again: it is in the KV cache.
    // (The reply's own tokens may not be: the random model's text does not always tokenize back
    // to the tokens it was generated as.)
    let second = chat.turn("and subtract?");
    assert!(
        second.stats.reused >= first.stats.evaluated,
        "{first:?}\n{second:?}"
    );
    assert!(
        second.stats.context_used > first.stats.context_used,
        "{first:?}\n{second:?}"
    );

    chat.send(CTRL_D);
    assert_eq!(chat.exit_code(), 0);
    let history = std::fs::read_to_string(dir.path().join("dscoder/history")).unwrap();
    assert!(history.contains("and subtract?"), "{history}");
}

#[test]
fn ctrl_c_stops_a_reply_and_the_chat_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // The random model does not end its reply to "hello": without Ctrl-C it fills the
    // 4096-token context, which takes seconds.
    let mut chat = Chat::start(dir.path(), &["-n", "100000", "-c", "4096"]);

    // Ctrl-C at the prompt drops the line being typed.
    chat.send(b"never sent");
    chat.expect("never sent");
    chat.send(CTRL_C);
    chat.expect(PROMPT);

    chat.send_line("hello");
    // Some of the reply has streamed: generation is under way. (Stop it early: some 1,100 bytes
    // in, that reply has a NUL byte, and a conversation holding one cannot be rendered.)
    chat.wait_until("streamed reply text", |s| (s.len() > 64).then_some(0));
    let interrupted_at = Instant::now();
    // Twice, quickly: an impatient user must not lose the conversation.
    chat.send(CTRL_C);
    chat.send(CTRL_C);
    let stopped = chat.reply();
    assert!(
        interrupted_at.elapsed() < Duration::from_secs(10),
        "Ctrl-C stopped the reply only after {:?}",
        interrupted_at.elapsed()
    );
    assert!(
        stopped.stats.generated < 3500,
        "the reply ran on to the context limit: {:?}",
        stopped.stats
    );
    assert!(
        !stopped.text.contains("[stopped at the token limit"),
        "{stopped:?}"
    );
    assert!(
        stopped.text.trim_end().ends_with("[interrupted]"),
        "the REPL should say the reply was interrupted: {stopped:?}"
    );

    // What streamed stays in the conversation. (The terminal discards output still queued when
    // it turns Ctrl-C into a signal, so the screen may lack the last few characters.)
    let prompt = chat.command("/show prompt");
    let partial = stopped
        .text
        .strip_suffix("[interrupted]\n")
        .unwrap_or(&stopped.text)
        .trim_end();
    let chars: Vec<char> = partial.chars().collect();
    let partial: String = chars[..chars.len().saturating_sub(16)].iter().collect();
    assert!(partial.len() > 16, "too little streamed: {partial:?}");
    assert!(prompt.contains(&partial), "{partial:?} not in {prompt:?}");

    // The chat goes on: the next message is answered, after the cached conversation.
    chat.command("/set max_tokens 8");
    let next = chat.turn("now a short one");
    assert!(
        next.stats.reused >= stopped.stats.reused + stopped.stats.evaluated,
        "{stopped:?}\n{next:?}"
    );
    assert!(!next.text.contains("[interrupted]"), "{next:?}");
    // That reply depends on where Ctrl-C cut the last one; a fresh conversation's does not: it
    // runs to the token limit (the random model does not end it).
    chat.command("/clear");
    let fresh = chat.turn("def add(a, b):");
    assert_eq!(fresh.stats.generated, 8, "{fresh:?}");
    assert!(
        fresh.text.contains("[stopped at the token limit"),
        "{fresh:?}"
    );

    chat.send_line("/exit");
    assert_eq!(chat.exit_code(), 0);
    let history = std::fs::read_to_string(dir.path().join("dscoder/history")).unwrap();
    assert!(history.contains("hello"), "{history}");
    assert!(!history.contains("never sent"), "{history}");
}

#[test]
fn file_retry_undo_and_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut chat = Chat::start(dir.path(), &["-n", "12"]);

    // /write before any reply.
    let target = dir.path().join("out.py");
    let out = chat.command("/write 1 out.py");
    assert!(out.contains("no reply yet"), "{out}");

    // /file attaches a file and says what it costs.
    std::fs::write(
        dir.path().join("snippet.py"),
        "def double(x):\n    return x * 2\n",
    )
    .unwrap();
    let out = chat.command("/file snippet.py");
    let cost = out
        .split_once("[attached snippet.py: ")
        .and_then(|(_, rest)| rest.split_once(" tokens; it is sent with your next message]"))
        .and_then(|(n, _)| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no token cost in {out:?}"));
    assert!((10..200).contains(&cost), "{out}");

    let first = chat.turn("explain");
    // The attachment went in ahead of the message, as a labelled code block.
    let prompt = chat.command("/show prompt");
    assert!(
        prompt.contains("snippet.py:\n```py\ndef double(x):\n    return x * 2\n```\n\nexplain"),
        "{prompt}"
    );
    // The attachment's tokens were evaluated with the message.
    assert!(first.stats.evaluated > cost, "{first:?} cost {cost}");

    // /retry answers the same message again: at temperature 0 the same reply, and the prompt
    // comes from the cache (only its last token is evaluated again, for fresh logits).
    chat.send_line("/retry");
    let again = chat.reply();
    assert_eq!(again.text, first.text);
    assert_eq!(again.stats.generated, first.stats.generated);
    assert_eq!(
        again.stats.reused + again.stats.evaluated,
        first.stats.reused + first.stats.evaluated
    );
    assert!(again.stats.evaluated <= 1, "{first:?}\n{again:?}");

    // The random reply has no code block; /write says so and writes nothing.
    let out = chat.command("/write 1 out.py");
    assert!(out.contains("the last reply has 0 code block(s)"), "{out}");
    assert!(!target.exists());

    // /undo removes the exchange (the attachment and the message with it).
    let out = chat.command("/undo");
    assert!(out.contains("[removed: snippet.py:]"), "{out}");
    let prompt = chat.command("/show prompt");
    assert!(!prompt.contains("explain"), "{prompt}");
    assert!(!prompt.contains("snippet.py"), "{prompt}");
    let out = chat.command("/undo");
    assert!(out.contains("nothing to undo"), "{out}");
    let out = chat.command("/retry");
    assert!(out.contains("nothing to retry"), "{out}");

    // A reply with a code block: saved sessions are JSON, so edit one to hold such a reply.
    chat.turn("hello");
    let out = chat.command("/save withcode");
    assert!(out.contains("[saved withcode: 2 messages"), "{out}");
    let json = dir.path().join("dscoder/sessions/withcode.json");
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let messages = saved["conversation"]["messages"].as_array_mut().unwrap();
    assert_eq!(messages[1]["role"], "assistant");
    messages[1]["content"] = "Here:\n```python\nprint('hi')\n```\nand\n```\nx = 1\n```\n".into();
    std::fs::write(&json, serde_json::to_vec(&saved).unwrap()).unwrap();
    let out = chat.command("/load withcode");
    assert!(out.contains("[loaded withcode"), "{out}");

    let out = chat.command("/write 1 out.py");
    assert!(out.contains("[wrote 12 bytes to out.py]"), "{out}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "print('hi')\n");
    // An existing file is kept unless the path ends with '!'.
    let out = chat.command("/write 2 out.py");
    assert!(
        out.contains("out.py exists; /write 2 out.py! overwrites it"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "print('hi')\n");
    let out = chat.command("/write 2 out.py!");
    assert!(out.contains("[wrote 6 bytes"), "{out}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "x = 1\n");
    let out = chat.command("/write 3 out.py");
    assert!(out.contains("the last reply has 2 code block(s)"), "{out}");

    chat.send_line("/exit");
    assert_eq!(chat.exit_code(), 0);
}

#[test]
fn save_then_load_gives_the_same_next_reply() {
    let dir = tempfile::tempdir().unwrap();
    let mut chat = Chat::start(dir.path(), &["-n", "24"]);
    chat.turn("def add(a, b):");
    let out = chat.command("/save s1");
    assert!(out.contains("[saved s1: 2 messages"), "{out}");

    let answer = chat.turn("and then?");
    // Move the conversation and the cache on, so /load has to put them back.
    chat.turn("something else entirely");

    let out = chat.command("/load s1");
    assert!(out.contains("[loaded s1: 2 messages"), "{out}");
    assert!(out.contains("cached tokens restored]"), "{out}");
    let again = chat.turn("and then?");
    assert_eq!(again.text, answer.text);
    assert_eq!(again.stats, answer.stats);

    chat.send(CTRL_D);
    assert_eq!(chat.exit_code(), 0);
}

/// Code blocks are coloured on a terminal, unless NO_COLOR is set or `--color never` is given.
/// The bundled model's answer to this request has a fenced Python block (nano/reference.json).
#[test]
fn code_is_coloured_on_a_terminal_unless_no_color_or_never() {
    let nano = common::converted(&common::repo("nano/model"), "f32");
    let request = "Write a function that returns the factorial of n.";
    for (env, args, coloured) in [
        (vec![], vec![], true),
        (vec![("NO_COLOR", "1")], vec![], false),
        (vec![], vec!["--color", "never"], false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args_all = vec!["-n", "64"];
        args_all.extend(args.iter().copied());
        let mut chat = Chat::start_with(dir.path(), &nano, &args_all, &env);
        let reply = chat.turn(request);
        assert!(reply.text.contains("def factorial"), "{reply:?}");
        let escapes = chat.raw.windows(7).any(|w| w == b"\x1b[38;2;");
        assert_eq!(escapes, coloured, "{env:?} {args:?}");
        chat.send(CTRL_D);
        assert_eq!(chat.exit_code(), 0);
    }
}

/// A long prompt shows its progress on the terminal (tokens done of the total), and Ctrl-C
/// while it is read stops between batches: the message is not sent, the attachment waits for
/// the next message, and the cache keeps what was evaluated, so sending again reuses it.
#[test]
fn a_long_prompt_shows_progress_and_ctrl_c_stops_it_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    // One token per batch: thousands of decode calls, seconds of prefill on the tiny model.
    // The progress shows at once (the delay is a second by default).
    let mut chat = Chat::start_with(
        dir.path(),
        model(),
        &["-n", "4", "-c", "8192", "--batch-size", "1"],
        &[("DSCODER_PROGRESS_AFTER_MS", "0")],
    );
    let body: String = (0..300).map(|i| format!("x{i} = {i} * 2\n")).collect();
    std::fs::write(dir.path().join("long.py"), &body).unwrap();
    chat.command("/file long.py");
    chat.send_line("explain");
    // The bar counts the prompt's tokens: "prompt D/T tokens".
    let progress = |s: &str| -> Option<(usize, usize)> {
        let at = s.rfind("prompt ")?;
        let (d, rest) = s[at + 7..].split_once('/')?;
        let (t, _) = rest.split_once(" tokens")?;
        Some((d.parse().ok()?, t.parse().ok()?))
    };
    chat.wait_until("prefill progress past 100 tokens", |s| {
        progress(s).filter(|&(d, _)| d >= 100).map(|_| s.len())
    });
    chat.send(CTRL_C);
    let out = chat.expect(PROMPT);
    let (kept, total) = out
        .split_once("[interrupted while reading the prompt: ")
        .and_then(|(_, r)| r.split_once(" tokens are in the cache; the message was not sent]"))
        .and_then(|(n, _)| n.split_once(" of "))
        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
        .unwrap_or_else(|| panic!("no interruption notice in {out:?}"));
    assert!(total > 2000, "{out}");
    assert!(kept >= 100 && kept < total, "{out}");
    assert!(out.contains("[the attached files are kept"), "{out}");
    // Nothing was added to the conversation.
    let prompt = chat.command("/show prompt");
    assert!(!prompt.contains("explain"), "{prompt}");

    // Sent again (with the attachment): what was evaluated is reused.
    chat.send_line("explain");
    let reply = chat.reply();
    assert!(reply.stats.reused >= kept, "{reply:?}, kept {kept}");
    assert_eq!(
        reply.stats.reused + reply.stats.evaluated,
        total,
        "{reply:?}"
    );
    chat.send(CTRL_D);
    assert_eq!(chat.exit_code(), 0);
}

/// Tab completes commands, `/set` keys, `/show` topics, saved session names and paths; `/load`
/// brings back the settings the conversation was saved with and shows it; `/show info` says
/// what runs; a light theme and the block numbers `/write` uses.
#[test]
fn tab_completion_load_restores_settings_and_show_info() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snippet_for_tab.py"), "x = 1\n").unwrap();
    let mut chat = Chat::start(dir.path(), &["-n", "6"]);

    // A command name, then a /set key: the line is completed in place and runs.
    chat.send(b"/se\t");
    chat.expect("/set ");
    chat.send(b"max_t\t");
    chat.expect("/set max_tokens ");
    chat.send(b"5\r");
    let out = chat.expect(PROMPT);
    assert!(out.contains("[max_tokens = 5]"), "{out}");
    chat.send(b"/set te\t");
    chat.expect("/set temp ");
    chat.send(b"0.25\r");
    chat.expect("[temp = 0.25]");
    chat.expect(PROMPT);

    // A path after /file.
    chat.send(b"/file snippet_for_t\t");
    chat.expect("snippet_for_tab.py");
    chat.send(b"\r");
    let out = chat.expect(PROMPT);
    assert!(out.contains("[attached snippet_for_tab.py: "), "{out}");
    let first = chat.turn("explain");
    assert_eq!(first.stats.generated, 5, "{first:?}");
    chat.command("/save tabbed");

    // Other settings, then /load (its name completed) restores the saved ones.
    chat.command("/set temp 0");
    chat.command("/set max_tokens 9");
    chat.send(b"/load tab\t");
    chat.expect("/load tabbed ");
    chat.send(b"\r");
    let out = chat.expect(PROMPT);
    assert!(out.contains("[loaded tabbed: 2 messages"), "{out}");
    // The conversation is shown: the message as typed, then the reply.
    assert!(out.contains("you> snippet_for_tab.py:"), "{out}");
    assert!(out.contains("you> explain"), "{out}");
    let settings = chat.command("/show settings");
    assert!(settings.contains("temp = 0.25"), "{settings}");
    assert!(settings.contains("max_tokens = 5"), "{settings}");

    // /show with a completed topic: what runs.
    chat.send(b"/show inf\t");
    chat.expect("/show info ");
    chat.send(b"\r");
    let info = chat.expect(PROMPT);
    for label in [
        "model",
        "file",
        "parameters",
        "file type",
        "KV cache",
        "threads",
        "placement",
    ] {
        assert!(
            info.contains(&format!("\n{label} ")),
            "no {label} in {info}"
        );
    }
    assert!(info.contains("file type   q8_0"), "{info}");
    assert!(info.contains("KV cache    f16"), "{info}");

    let out = chat.command("/set theme light");
    assert!(out.contains("[theme = light]"), "{out}");
    let out = chat.command("/set theme blue");
    assert!(out.contains("'blue' is not dark or light"), "{out}");
    chat.send(CTRL_D);
    assert_eq!(chat.exit_code(), 0);
}
