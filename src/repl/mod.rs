//! `dscoder chat`: the interactive coding REPL.
//!
//! It speaks to the model through [`crate::chat`] (the conversation and the one turn path) and
//! [`crate::prompt`], and parses slash commands in [`commands`], so the terminal code here is
//! only input, output and bookkeeping. Each turn renders the whole
//! conversation with the model's chat template; the session reuses the KV cache for the part that
//! did not change, so only the new tokens are evaluated.

pub mod commands;
pub mod markdown;

use std::io::Write;
use std::path::{Path, PathBuf};

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Config, Editor, Helper};

use crate::chat::{self, Conversation, Message, Role};
use crate::engine::{
    DraftMode, Engine, EngineError, GenerateOptions, GenerationStats, SamplingSettings, StopReason,
};
use crate::{interrupt, prompt};
use commands::{Command, Show, COMMANDS};
use markdown::{code_blocks, MarkdownStream};

/// Where the input history lives: the platform's data folder (`dirs`: `$XDG_DATA_HOME`, else
/// `~/.local/share` on Linux, found without `HOME` too; Application Support on macOS; AppData on
/// Windows), `dscoder/history` in it.
pub fn history_path() -> Option<PathBuf> {
    Some(dirs::data_dir()?.join("dscoder").join("history"))
}

/// Where `/save` keeps sessions: next to the history.
fn sessions_dir() -> Option<PathBuf> {
    history_path().and_then(|h| h.parent().map(|d| d.join("sessions")))
}

/// Every chat is saved as it goes under `auto-YYYYMMDD-HHMMSS` (a session like those `/save`
/// writes: `/sessions` lists them, `/load` and `chat --continue` resume them); the newest this
/// many are kept.
const AUTOSAVES_KEPT: usize = 10;
const AUTOSAVE_PREFIX: &str = "auto-";

/// Saved autosaves, newest first.
fn autosaves() -> Vec<String> {
    let Some(dir) = sessions_dir() else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let name = p.file_stem()?.to_str()?.to_string();
            (p.extension()? == "json" && name.starts_with(AUTOSAVE_PREFIX)).then_some(())?;
            Some((e.metadata().ok()?.modified().ok()?, name))
        })
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found.into_iter().map(|(_, n)| n).collect()
}

/// A fresh autosave name for a chat starting now.
fn new_autosave_name() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = stamp
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect::<String>()
        .replace('T', "-");
    let base = format!("{AUTOSAVE_PREFIX}{stamp}");
    let taken = |n: &str| sessions_dir().is_some_and(|d| d.join(format!("{n}.json")).exists());
    let mut name = base.clone();
    let mut i = 2;
    while taken(&name) {
        name = format!("{base}-{i}");
        i += 1;
    }
    name
}

/// Removes all but the newest [`AUTOSAVES_KEPT`] autosaves (never `current`).
fn prune_autosaves(current: &str) {
    let Some(dir) = sessions_dir() else { return };
    for name in autosaves().into_iter().skip(AUTOSAVES_KEPT) {
        if name != current {
            let _ = std::fs::remove_file(dir.join(format!("{name}.json")));
            let state = dir.join(format!("{name}.state"));
            let _ = std::fs::remove_file(&state);
            crate::checksum::forget(&state);
        }
    }
}

/// What `/save` writes next to the KV state, to check the state still applies when loaded.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSession {
    /// [`Engine::identity`] when saved: model file and context settings.
    identity: String,
    conversation: Conversation,
    /// The settings in force (absent in sessions saved by older versions).
    #[serde(default)]
    settings: Option<SavedSettings>,
}

/// What `/set` changed, so `/load` puts the conversation back as it was.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSettings {
    sampling: SamplingSettings,
    fixed_seed: bool,
    max_tokens: usize,
}

/// The names of the saved sessions (for Tab completion).
fn session_names() -> Vec<String> {
    let Some(dir) = sessions_dir() else {
        return Vec::new();
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "json").then(|| Some(p.file_stem()?.to_str()?.to_string()))?
        })
        .collect();
    names.sort();
    names
}

/// Tab completion: command names, then each command's argument: `/set` keys, `/show` topics,
/// saved session names after `/load` and `/save`, file paths after `/file` and `/write N`.
struct SlashHelper {
    files: rustyline::completion::FilenameCompleter,
    roles: Vec<String>,
}

impl SlashHelper {
    fn words(
        start: usize,
        typed: &str,
        words: impl IntoIterator<Item = String>,
    ) -> (usize, Vec<Pair>) {
        let found = words
            .into_iter()
            .filter(|w| w.starts_with(typed))
            .map(|w| Pair {
                display: w.clone(),
                replacement: format!("{w} "),
            })
            .collect();
        (start, found)
    }
}

impl Completer for SlashHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        if !head.starts_with('/') {
            return Ok((pos, Vec::new()));
        }
        let Some((command, rest)) = head.split_once(' ') else {
            let names = COMMANDS.iter().map(|(c, _)| c.to_string());
            return Ok(Self::words(0, head, names));
        };
        let start = pos - rest.len();
        let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Ok(match command {
            "/set" if !rest.contains(' ') => Self::words(start, rest, own(&commands::SET_KEYS)),
            "/set" if rest.starts_with("theme ") => {
                Self::words(start + 6, &rest[6..], own(&["dark", "light"]))
            }
            "/show" => Self::words(start, rest, own(&commands::SHOW_TOPICS)),
            "/load" | "/save" => Self::words(start, rest, session_names()),
            "/role" => Self::words(start, rest, self.roles.clone()),
            // Paths: after `/file`, and after the block number of `/write`.
            "/file" => self.files.complete(line, pos, ctx)?,
            "/write" if rest.contains(' ') => self.files.complete(line, pos, ctx)?,
            _ => (pos, Vec::new()),
        })
    }
}

impl Hinter for SlashHelper {
    type Hint = String;
}
impl Highlighter for SlashHelper {}
impl Validator for SlashHelper {}
impl Helper for SlashHelper {}

/// Chat options from the command line.
pub struct ChatOptions {
    pub system: Option<String>,
    /// The config file (its roles, for `/role`).
    pub roles: crate::config::Loaded,
    pub sampling: SamplingSettings,
    /// `--seed` was given: every reply uses it; otherwise each reply (and `/retry`) draws a
    /// new one, so a retry at a temperature above 0 gives another answer.
    pub fixed_seed: bool,
    /// Stdout is a terminal: code blocks are numbered as they stream (for `/write N`).
    pub terminal: bool,
    /// Highlight code blocks (the front-end decides: terminal, NO_COLOR, --color).
    pub color: bool,
    /// Colours for a dark or light terminal background.
    pub palette: markdown::Palette,
    pub max_tokens: usize,
    pub draft: DraftMode,
    /// Drop the oldest unpinned exchanges when the context fills, instead of refusing.
    pub context_shift: bool,
    /// Resume the newest autosaved conversation (`chat --continue`).
    pub resume: bool,
}

struct Chat<'e> {
    engine: &'e Engine,
    session: crate::engine::Session<'e>,
    conversation: Conversation,
    sampling: SamplingSettings,
    fixed_seed: bool,
    terminal: bool,
    color: bool,
    palette: markdown::Palette,
    max_tokens: usize,
    draft: DraftMode,
    context_shift: bool,
    last_stats: Option<GenerationStats>,
    /// Files inserted with `/file`, sent ahead of the next message.
    attachments: String,
    roles: crate::config::Loaded,
    /// The session name this chat autosaves under.
    autosave_name: String,
}

/// Speeds measured over fewer tokens than this are noise (timer and first-token costs), so
/// the stats line leaves them out.
const MIN_TOKENS_FOR_SPEED: usize = 8;

/// The line after each reply, short enough for an 80-column terminal at a 16K context:
/// `[340 cached + 12 new, 85.2 t/s; 64 generated, 9.1 t/s; ctx 416/4096]`.
fn stats_line(stats: &GenerationStats, used: usize, n_ctx: usize) -> String {
    let speed = |tokens: usize, per_second: f64| {
        if tokens < MIN_TOKENS_FOR_SPEED {
            String::new()
        } else if per_second >= 100.0 {
            format!(", {per_second:.0} t/s")
        } else {
            format!(", {per_second:.1} t/s")
        }
    };
    format!(
        "[{} cached + {} new{}; {} generated{}; ctx {used}/{n_ctx}]",
        stats.reused_tokens,
        stats.evaluated_tokens(),
        speed(stats.evaluated_tokens(), stats.prompt_tokens_per_second()),
        stats.generated_tokens,
        speed(stats.generated_tokens, stats.generation_tokens_per_second()),
    )
}

/// Runs the REPL until `/exit` or Ctrl-D.
pub fn run(engine: &Engine, options: ChatOptions) -> anyhow::Result<()> {
    let mut editor: Editor<SlashHelper, rustyline::history::DefaultHistory> =
        Editor::with_config(Config::builder().auto_add_history(false).build())?;
    editor.set_helper(Some(SlashHelper {
        files: rustyline::completion::FilenameCompleter::new(),
        roles: options.roles.role_names(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let mut session = engine.session()?;
    crate::progress::show_prefill(&mut session);
    let mut chat = Chat {
        engine,
        session,
        conversation: Conversation {
            system: options.system,
            ..Default::default()
        },
        sampling: options.sampling,
        fixed_seed: options.fixed_seed,
        terminal: options.terminal,
        color: options.color,
        palette: options.palette,
        max_tokens: options.max_tokens,
        draft: options.draft,
        context_shift: options.context_shift,
        last_stats: None,
        attachments: String::new(),
        roles: options.roles,
        autosave_name: new_autosave_name(),
    };
    if options.resume {
        match autosaves().into_iter().next() {
            Some(name) => {
                chat.load(&name).map_err(|e| anyhow::anyhow!(e))?;
                chat.autosave_name = name;
            }
            None => eprintln!("[no earlier conversation to continue; starting a new one]"),
        }
    }
    eprintln!(
        "dscoder chat: {} (context {} tokens). /help for commands, \"\"\" for multi-line input, Ctrl-D to leave.",
        engine.name(),
        chat.session.n_ctx()
    );
    loop {
        let line = match editor.readline(">>> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let mut input = line;
        if input.trim() == "\"\"\"" || input.trim_start().starts_with("\"\"\"") {
            match read_block(&mut editor, &input) {
                Some(block) => input = block,
                None => continue,
            }
        }
        if input.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(input.as_str());
        if input.trim_start().starts_with('/') {
            match commands::parse(&input) {
                Ok(Command::Exit) => break,
                Ok(cmd) => {
                    if let Err(e) = chat.command(cmd) {
                        eprintln!("{e}");
                    }
                }
                Err(e) => eprintln!("{e}"),
            }
            continue;
        }
        let attached = std::mem::take(&mut chat.attachments);
        chat.conversation.push_user(attached.clone() + &input);
        let sent = chat.reply().unwrap_or_else(|e| {
            // An unanswered message would be sent again with the next one.
            chat.conversation.undo();
            eprintln!("error: {e} (the message was not kept)");
            false
        });
        if !sent && !attached.is_empty() {
            chat.attachments = attached;
            eprintln!("[the attached files are kept; they go with your next message]");
        }
    }
    chat.autosave(true);
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// Reads a `"""` block: lines until one that ends with `"""`. `None` when cancelled.
fn read_block(
    editor: &mut Editor<SlashHelper, rustyline::history::DefaultHistory>,
    first: &str,
) -> Option<String> {
    let mut text = first.trim_start().trim_start_matches("\"\"\"").to_string();
    if let Some(done) = text.strip_suffix("\"\"\"") {
        return Some(done.to_string());
    }
    loop {
        match editor.readline("... ") {
            Ok(l) => {
                if let Some(end) = l.strip_suffix("\"\"\"") {
                    if !end.is_empty() {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(end);
                    }
                    return Some(text);
                }
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&l);
            }
            Err(_) => return None,
        }
    }
}

impl Chat<'_> {
    /// Generates the assistant's reply to the conversation so far, streaming it. Returns false
    /// when the message does not fit the context (it is taken back, and nothing is generated).
    fn reply(&mut self) -> Result<bool, EngineError> {
        let n_ctx = self.session.n_ctx() as usize;
        let messages = self.conversation.template_messages();
        let tokens = prompt::chat_tokens(self.engine, &messages)?;
        let n_prompt = tokens.len();
        let alone = self.conversation.messages.len() == 1;
        // Room for a reply: the token cap, at most a quarter of the context.
        let reserve = self.max_tokens.min(n_ctx / 4).max(16);
        let fit = if self.context_shift && n_prompt + reserve >= n_ctx {
            chat::fit_to_context(self.engine, &mut self.conversation, tokens, n_ctx, reserve)?
        } else if n_prompt + 16 >= n_ctx {
            None
        } else {
            Some(chat::Fit {
                tokens,
                ..Default::default()
            })
        };
        let Some(fit) = fit else {
            self.conversation.undo();
            if alone {
                eprintln!(
                    "This message alone is {n_prompt} tokens, more than the context of {n_ctx}: attach less (/file PATH:START-END), or start with a larger --ctx-size."
                );
            } else if self.context_shift {
                eprintln!(
                    "This message and the pinned ones are too many tokens for the context of {n_ctx}: attach less (/file PATH:START-END), /unpin, or start with a larger --ctx-size."
                );
            } else {
                eprintln!(
                    "The context is full ({n_prompt} of {n_ctx} tokens with this message). Use /clear, or /compact N to keep the last N exchanges (compaction re-evaluates what it keeps)."
                );
            }
            return Ok(false);
        };
        if fit.dropped_exchanges > 0 {
            let moved = self.session.shift_to_match(&fit.tokens)?;
            eprintln!(
                "[context full: dropped the {} oldest exchange(s) ({} tokens){}; /pin keeps exchanges]",
                fit.dropped_exchanges,
                fit.dropped_tokens,
                if moved > 0 {
                    ", the rest of the cache moved back"
                } else {
                    ""
                }
            );
        }
        let tokens = fit.tokens;
        let n_sent = tokens.len();
        // A reply that fills the context mid-way drops older tokens after the pinned ones.
        let keep = chat::pinned_prefix(self.engine, &self.conversation, &tokens)?;
        interrupt::reset();
        let mut stdout = std::io::stdout().lock();
        let mut markdown = MarkdownStream::for_output(self.terminal, self.color, self.palette);
        if !self.fixed_seed {
            self.sampling.seed = rand::random();
        }
        let options = GenerateOptions {
            sampling: self.sampling.clone(),
            max_tokens: self.max_tokens,
            stop: Vec::new(),
            draft: self.draft,
            context_shift: self.context_shift.then_some(keep),
        };
        let turn = chat::reply_to_tokens(
            &mut self.session,
            &tokens,
            &options,
            interrupt::requested,
            |t| {
                let _ = markdown.push(t, &mut stdout);
                let _ = stdout.flush();
                true
            },
        );
        // Also when interrupted or failed: print what is held back and leave no colour set.
        let _ = markdown.finish(&mut stdout);
        let turn = turn?;
        interrupt::reset();
        let _ = writeln!(stdout);
        drop(stdout);
        let stats = turn.stats;
        if stats.stop_reason == StopReason::Cancelled && stats.prompt_tokens < n_sent {
            // Stopped while reading the prompt: no reply to keep, so the message goes too (it
            // is in the input history); the cache keeps what was evaluated.
            self.conversation.undo();
            eprintln!(
                "[interrupted while reading the prompt: {} of {n_sent} tokens are in the cache; the message was not sent]",
                stats.prompt_tokens
            );
            return Ok(false);
        }
        let interrupted = stats.stop_reason != StopReason::EndOfGeneration;
        match stats.stop_reason {
            StopReason::Cancelled => eprintln!("[interrupted]"),
            StopReason::TokenLimit => {
                eprintln!("[stopped at the token limit; /set max_tokens N to raise it]")
            }
            StopReason::ContextFull => {
                eprintln!("[stopped: the context is full; /compact N or /clear]")
            }
            StopReason::EndOfGeneration | StopReason::StopString => {}
        }
        self.conversation.push_assistant(turn.reply, interrupted);
        let used = self.session.cached_tokens().len();
        let pct = used as f64 * 100.0 / n_ctx as f64;
        eprintln!("{}", stats_line(&stats, used, n_ctx));
        if stats.drafted_tokens > 0 {
            eprintln!(
                "[speculation:{}]",
                stats.draft_summary().trim_start_matches(',')
            );
        }
        if stats.shifts > 0 {
            eprintln!(
                "[the context filled during the reply: {} older tokens were dropped to go on]",
                stats.dropped_tokens
            );
        }
        if pct >= 80.0 && !self.context_shift {
            eprintln!("warning: the context is {pct:.0}% full; /compact N or /clear soon");
        }
        self.last_stats = Some(stats);
        self.autosave(false);
        Ok(true)
    }

    fn command(&mut self, cmd: Command) -> Result<(), String> {
        match cmd {
            Command::Help => {
                for (c, help) in COMMANDS {
                    eprintln!("  {c:<10} {help}");
                }
            }
            Command::Exit => {}
            Command::Clear => {
                self.conversation.clear();
                eprintln!("[conversation cleared]");
            }
            Command::System(s) => {
                self.conversation.system = s;
                eprintln!(
                    "[system prompt {}]",
                    if self.conversation.system.is_some() {
                        "set"
                    } else {
                        "removed"
                    }
                );
            }
            Command::Role(None) => {
                for name in self.roles.role_names() {
                    let text = self.roles.role(&name).map_err(|e| e.to_string())?;
                    let first: String = text.chars().take(64).collect();
                    eprintln!("  {name:<12} {first}...");
                }
                eprintln!(
                    "[/role NAME uses one; roles are set in the config file (dscoder config)]"
                );
            }
            Command::Role(Some(name)) => {
                let text = self.roles.role(&name).map_err(|e| e.to_string())?;
                self.conversation.system = Some(text.to_string());
                eprintln!("[system prompt: the {name} role]");
            }
            Command::Set(s) => {
                s.apply(&mut self.sampling, &mut self.max_tokens);
                if let commands::Setting::Theme(p) = s {
                    self.palette = p;
                }
                // A seed set by hand is meant to be kept.
                self.fixed_seed |= matches!(s, commands::Setting::Seed(_));
                eprintln!("[{s}]");
            }
            Command::Show(what) => self.show(what)?,
            Command::File { path, lines } => self.insert_file(&path, lines)?,
            Command::Retry => match self.conversation.retry() {
                Some(_) => {
                    self.reply().map_err(|e| e.to_string())?;
                }
                None => return Err("nothing to retry".into()),
            },
            Command::Undo => match self.conversation.undo() {
                Some(m) => {
                    // The stats were the removed reply's.
                    self.last_stats = None;
                    eprintln!("[removed: {}]", m.lines().next().unwrap_or(""))
                }
                None => return Err("nothing to undo".into()),
            },
            Command::Write { n, path, overwrite } => {
                let reply = self.conversation.last_reply().ok_or("no reply yet")?;
                let blocks = code_blocks(reply);
                let block = blocks
                    .get(n - 1)
                    .ok_or_else(|| format!("the last reply has {} code block(s)", blocks.len()))?;
                let p = Path::new(&path);
                if p.exists() && !overwrite {
                    return Err(format!("{path} exists; /write {n} {path}! overwrites it"));
                }
                std::fs::write(p, block).map_err(|e| format!("{path}: {e}"))?;
                eprintln!("[wrote {} bytes to {path}]", block.len());
            }
            Command::Save { name, overwrite } => self.save(&name, overwrite)?,
            Command::Load(name) => self.load(&name)?,
            Command::Sessions => self.list_sessions()?,
            Command::Compact(n) => {
                self.conversation.keep_last_turns(n);
                eprintln!("[kept the last {n} exchange(s); the next reply re-evaluates them]");
            }
            Command::Pin => {
                self.conversation.pin();
                eprintln!(
                    "[pinned {} message(s): a full context drops only later exchanges]",
                    self.conversation.pinned
                );
            }
            Command::Unpin => {
                self.conversation.pinned = 0;
                eprintln!("[unpinned: a full context drops the oldest exchanges]");
            }
        }
        Ok(())
    }

    fn save(&self, name: &str, overwrite: bool) -> Result<(), String> {
        let dir = sessions_dir().ok_or("no data folder (set XDG_DATA_HOME)")?;
        if dir.join(format!("{name}.json")).exists() && !overwrite {
            return Err(format!(
                "a session named {name} exists; /save {name}! overwrites it"
            ));
        }
        match self.write_session(name, true)? {
            Ok(()) => eprintln!(
                "[saved {name}: {} messages and {} cached tokens]",
                self.conversation.messages.len(),
                self.session.cached_tokens().len()
            ),
            Err(e) => eprintln!("[saved {name} without its KV cache: {e}]"),
        }
        Ok(())
    }

    /// Writes session `name`: the conversation and settings, and with `state` the KV cache (the
    /// inner result: a conversation saved without its cache is still saved).
    fn write_session(&self, name: &str, state: bool) -> Result<Result<(), EngineError>, String> {
        let dir = sessions_dir().ok_or("no data folder (set XDG_DATA_HOME)")?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let saved = SavedSession {
            identity: self.engine.identity().to_string(),
            conversation: self.conversation.clone(),
            settings: Some(SavedSettings {
                sampling: self.sampling.clone(),
                fixed_seed: self.fixed_seed,
                max_tokens: self.max_tokens,
            }),
        };
        let json = dir.join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&saved).map_err(|e| e.to_string())?;
        crate::output::write_atomically(&json, text.as_bytes())
            .map_err(|e| format!("{}: {e}", json.display()))?;
        if !state {
            return Ok(Ok(()));
        }
        Ok(self.session.save_state(&dir.join(format!("{name}.state"))))
    }

    /// Saves the conversation under its autosave name (after each reply: the conversation; at
    /// the end: with the KV cache too), and keeps only the newest [`AUTOSAVES_KEPT`].
    fn autosave(&self, with_state: bool) {
        if self.conversation.messages.is_empty() {
            return;
        }
        match self.write_session(&self.autosave_name, with_state) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("autosave: the KV cache was not saved: {e}"),
            Err(e) => tracing::warn!("autosave: {e}"),
        }
        prune_autosaves(&self.autosave_name);
    }

    /// `/sessions`: each saved conversation with its message count, newest first, and whether
    /// its KV cache was saved with it.
    fn list_sessions(&self) -> Result<(), String> {
        let dir = sessions_dir().ok_or("no data folder (set XDG_DATA_HOME)")?;
        let mut found: Vec<(std::time::SystemTime, String, usize, bool)> = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let (Some(name), Some("json")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let Ok(text) = crate::input::read_text(&path, crate::input::JSON_LIMIT) else {
                continue;
            };
            let Ok(saved) = serde_json::from_str::<SavedSession>(&text) else {
                continue;
            };
            let when = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let state = dir.join(format!("{name}.state")).is_file();
            found.push((
                when,
                name.to_string(),
                saved.conversation.messages.len(),
                state,
            ));
        }
        if found.is_empty() {
            eprintln!("[no saved conversations; /save NAME saves this one]");
            return Ok(());
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (_, name, messages, state) in found {
            eprintln!(
                "  {name:<20} {messages} messages{}",
                if state { ", KV cache saved" } else { "" }
            );
        }
        Ok(())
    }

    fn load(&mut self, name: &str) -> Result<(), String> {
        let dir = sessions_dir().ok_or("no data folder (set XDG_DATA_HOME)")?;
        let json = dir.join(format!("{name}.json"));
        let text =
            crate::input::read_text(&json, crate::input::JSON_LIMIT).map_err(|e| e.to_string())?;
        let saved: SavedSession = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a saved session: {e}", json.display()))?;
        self.conversation = saved.conversation;
        if let Some(settings) = saved.settings {
            self.sampling = settings.sampling;
            self.fixed_seed = settings.fixed_seed;
            self.max_tokens = settings.max_tokens;
        }
        self.last_stats = None;
        self.show_conversation();
        let state = dir.join(format!("{name}.state"));
        if saved.identity != self.engine.identity() {
            eprintln!("[loaded {name}; its KV cache was saved with another model or context settings, so the next reply re-evaluates the conversation]");
            return Ok(());
        }
        match self.session.load_state(&state) {
            Ok(n) => eprintln!("[loaded {name}: {} messages, {n} cached tokens restored]", self.conversation.messages.len()),
            Err(e) => eprintln!("[loaded {name}; the KV cache could not be restored ({e}), so the next reply re-evaluates]"),
        }
        Ok(())
    }

    /// Prints a loaded conversation the way it was shown (its last exchanges: a long one would
    /// scroll everything else away).
    fn show_conversation(&self) {
        const SHOWN: usize = 6;
        let messages = &self.conversation.messages;
        let skip = messages.len().saturating_sub(SHOWN);
        if skip > 0 {
            eprintln!("[{skip} earlier message(s) not shown]");
        }
        if let Some(system) = &self.conversation.system {
            eprintln!("[system prompt: {}]", system.lines().next().unwrap_or(""));
        }
        let mut stdout = std::io::stdout().lock();
        for m in &messages[skip..] {
            match m.role {
                Role::User => {
                    for line in m.content.lines() {
                        let _ = writeln!(stdout, "you> {line}");
                    }
                }
                _ => {
                    let mut markdown =
                        MarkdownStream::for_output(self.terminal, self.color, self.palette);
                    let _ = markdown.push(&m.content, &mut stdout);
                    let _ = markdown.finish(&mut stdout);
                    let _ = writeln!(stdout);
                }
            }
        }
    }

    fn show(&self, what: Show) -> Result<(), String> {
        match what {
            Show::Info => {
                for (label, value) in self.engine.describe() {
                    eprintln!("{label:<11} {value}");
                }
            }
            Show::Settings => {
                let s = &self.sampling;
                eprintln!(
                    "temp = {}\ntop_k = {}\ntop_p = {}\nmin_p = {}\nrepeat_penalty = {}\nseed = {}\nmax_tokens = {}\ntheme = {}",
                    s.temperature,
                    s.top_k,
                    s.top_p,
                    s.min_p,
                    s.repeat_penalty,
                    if self.fixed_seed {
                        s.seed.to_string()
                    } else {
                        "random, a new one for each reply".to_string()
                    },
                    self.max_tokens,
                    self.palette.name()
                )
            }
            Show::Stats => {
                match &self.last_stats {
                    Some(s) => eprintln!(
                        "last reply: {} prompt tokens ({} reused) in {:.2} s, {} generated in {:.2} s ({:.1} t/s){}",
                        s.prompt_tokens,
                        s.reused_tokens,
                        s.prompt_seconds,
                        s.generated_tokens,
                        s.generation_seconds,
                        s.generation_tokens_per_second(),
                        s.draft_summary(),
                    ),
                    None => eprintln!("last reply: none (or undone)"),
                }
                let messages = self.conversation.template_messages();
                let n = prompt::chat_tokens(self.engine, &messages).map_or(0, |t| t.len());
                eprintln!(
                    "conversation: {} messages, {n} of {} context tokens",
                    self.conversation.messages.len(),
                    self.session.n_ctx()
                );
            }
            Show::Prompt | Show::Ids => {
                let rendered =
                    prompt::render_chat(self.engine, &self.conversation.template_messages())
                        .map_err(|e| e.to_string())?;
                if what == Show::Prompt {
                    println!("{rendered}");
                } else {
                    println!("{:?}", self.engine.tokenize(&rendered, true));
                }
            }
        }
        Ok(())
    }

    fn insert_file(&mut self, path: &str, lines: Option<(usize, usize)>) -> Result<(), String> {
        let bytes = crate::input::read_file(Path::new(path), crate::input::TEXT_LIMIT)
            .map_err(|e| e.to_string())?;
        if bytes.contains(&0) {
            return Err(format!(
                "{path}: looks like a binary file; /file inserts text"
            ));
        }
        let text = String::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8 text"))?;
        let body: String = match lines {
            None => text,
            Some((a, b)) => {
                let n = text.lines().count();
                if a > n {
                    return Err(format!("{path} has {n} lines"));
                }
                text.lines()
                    .skip(a - 1)
                    .take(b + 1 - a)
                    .map(|l| format!("{l}\n"))
                    .collect()
            }
        };
        let lang = Path::new(path)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("");
        let label = match lines {
            Some((a, b)) => format!("{path} (lines {a}-{b})"),
            None => path.to_string(),
        };
        let block = format!(
            "{label}:\n```{lang}\n{}{}```\n",
            body,
            if body.ends_with('\n') { "" } else { "\n" }
        );
        let cost = self.engine.tokenize(&block, false).len();
        self.attachments.push_str(&block);
        self.attachments.push('\n');
        eprintln!("[attached {label}: {cost} tokens; it is sent with your next message]");
        // Say now, not at send time, when it cannot fit.
        let mut pending = self.conversation.template_messages();
        pending.push(Message::new(Role::User, self.attachments.clone()));
        let n = prompt::chat_tokens(self.engine, &pending).map_or(0, |t| t.len());
        let n_ctx = self.session.n_ctx() as usize;
        if n + 16 >= n_ctx {
            eprintln!(
                "[warning: with it the next message is at least {n} tokens, more than the context of {n_ctx}; it will be refused. Attach fewer lines (/file PATH:START-END), /clear, or start with a larger --ctx-size]"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(reused: usize, prompt: usize, generated: usize) -> GenerationStats {
        GenerationStats {
            prompt_tokens: prompt,
            reused_tokens: reused,
            generated_tokens: generated,
            prompt_seconds: 1.0,
            generation_seconds: 10.0,
            ..Default::default()
        }
    }

    #[test]
    fn the_stats_line_fits_80_columns_and_leaves_out_noisy_speeds() {
        // A full 16K context and a reply of the default 1024-token cap.
        let line = stats_line(&stats(12_000, 13_200, 1_024), 16_384, 16_384);
        assert_eq!(
            line,
            "[12000 cached + 1200 new, 1200 t/s; 1024 generated, 102 t/s; ctx 16384/16384]"
        );
        assert!(line.len() <= 80, "{} columns: {line}", line.len());
        // Fewer than 8 tokens: no speed.
        assert_eq!(
            stats_line(&stats(340, 347, 64), 411, 4096),
            "[340 cached + 7 new; 64 generated, 6.4 t/s; ctx 411/4096]"
        );
        assert_eq!(
            stats_line(&stats(0, 20, 7), 27, 4096),
            "[0 cached + 20 new, 20.0 t/s; 7 generated; ctx 27/4096]"
        );
    }
}
