//! Slash commands: parsing and validation, apart from the terminal so they can be tested.

use crate::engine::SamplingSettings;

/// Every command, for `/help` and tab completion.
pub const COMMANDS: [(&str, &str); 17] = [
    ("/help", "show this help"),
    ("/exit", "leave (Ctrl-D also works)"),
    (
        "/clear",
        "forget the conversation (the system prompt stays)",
    ),
    (
        "/system",
        "/system TEXT: set the system prompt (empty to remove)",
    ),
    (
        "/set",
        "/set KEY VALUE: temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens",
    ),
    ("/show", "/show info|prompt|ids|stats|settings"),
    (
        "/file",
        "/file PATH[:START-END]: insert a file (or some lines) as a code block",
    ),
    ("/retry", "answer the last message again"),
    ("/undo", "remove the last exchange"),
    (
        "/write",
        "/write N PATH[!]: save code block N of the last reply (! to overwrite)",
    ),
    ("/compact", "/compact N: keep only the last N exchanges"),
    (
        "/pin",
        "keep the exchanges so far when the context fills (older unpinned ones are dropped)",
    ),
    (
        "/unpin",
        "let every exchange be dropped when the context fills",
    ),
    (
        "/save",
        "/save NAME[!]: save the conversation and the KV cache (! to overwrite)",
    ),
    (
        "/load",
        "/load NAME: restore a saved conversation (and its KV cache if it still fits)",
    ),
    ("/sessions", "list the saved conversations"),
    ("\"\"\"", "start or end a multi-line message"),
];

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help,
    Exit,
    Clear,
    System(Option<String>),
    Set(Setting),
    Show(Show),
    File {
        path: String,
        lines: Option<(usize, usize)>,
    },
    Retry,
    Undo,
    Write {
        n: usize,
        path: String,
        overwrite: bool,
    },
    Compact(usize),
    Pin,
    Unpin,
    Save {
        name: String,
        overwrite: bool,
    },
    Load(String),
    Sessions,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Show {
    Info,
    Prompt,
    Ids,
    Stats,
    Settings,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    Temperature(f32),
    TopK(i32),
    TopP(f32),
    MinP(f32),
    RepeatPenalty(f32),
    Seed(u32),
    MaxTokens(usize),
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Temperature(v) => write!(f, "temp = {v}"),
            Setting::TopK(v) => write!(f, "top_k = {v}"),
            Setting::TopP(v) => write!(f, "top_p = {v}"),
            Setting::MinP(v) => write!(f, "min_p = {v}"),
            Setting::RepeatPenalty(v) => write!(f, "repeat_penalty = {v}"),
            Setting::Seed(v) => write!(f, "seed = {v}"),
            Setting::MaxTokens(v) => write!(f, "max_tokens = {v}"),
        }
    }
}

impl Setting {
    pub fn apply(self, s: &mut SamplingSettings, max_tokens: &mut usize) {
        match self {
            Setting::Temperature(v) => s.temperature = v,
            Setting::TopK(v) => s.top_k = v,
            Setting::TopP(v) => s.top_p = v,
            Setting::MinP(v) => s.min_p = v,
            Setting::RepeatPenalty(v) => s.repeat_penalty = v,
            Setting::Seed(v) => s.seed = v,
            Setting::MaxTokens(v) => *max_tokens = v,
        }
    }
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("/set {key}: '{v}' is not a valid value"))
}

/// The shared range check, with the message in `/set`'s words.
fn in_range(key: &str, v: f32) -> Result<f32, String> {
    crate::engine::check_knob(key, v).map_err(|e| format!("/set {e}"))
}

fn parse_setting(rest: &str) -> Result<Setting, String> {
    let mut it = rest.split_whitespace();
    let (Some(key), Some(value), None) = (it.next(), it.next(), it.next()) else {
        return Err(
            "usage: /set KEY VALUE (temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens)"
                .into(),
        );
    };
    Ok(match key {
        "temp" | "temperature" => Setting::Temperature(in_range(key, number(key, value)?)?),
        "top_k" => Setting::TopK(number(key, value)?),
        "top_p" => Setting::TopP(in_range(key, number(key, value)?)?),
        "min_p" => Setting::MinP(in_range(key, number(key, value)?)?),
        "repeat_penalty" => Setting::RepeatPenalty(in_range(key, number(key, value)?)?),
        "seed" => Setting::Seed(number(key, value)?),
        "max_tokens" | "n" => Setting::MaxTokens(number(key, value)?),
        other => return Err(format!("/set: unknown setting '{other}' (temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens)")),
    })
}

/// `PATH` or `PATH:START-END` (1-based, inclusive).
fn parse_file(rest: &str) -> Result<Command, String> {
    let rest = rest.trim();
    if rest.is_empty() {
        return Err("usage: /file PATH[:START-END]".into());
    }
    if let Some((path, range)) = rest.rsplit_once(':') {
        if let Some((a, b)) = range.split_once('-') {
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                if a == 0 || b < a {
                    return Err(format!(
                        "/file: bad line range {range} (1-based, START <= END)"
                    ));
                }
                return Ok(Command::File {
                    path: path.to_string(),
                    lines: Some((a, b)),
                });
            }
        }
    }
    Ok(Command::File {
        path: rest.to_string(),
        lines: None,
    })
}

/// Parses a line that starts with `/`.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let no_args = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(format!("{name} takes no arguments"))
        }
    };
    match name {
        "/help" | "/?" => no_args(Command::Help),
        "/exit" | "/quit" | "/bye" => no_args(Command::Exit),
        "/clear" => no_args(Command::Clear),
        "/retry" => no_args(Command::Retry),
        "/undo" => no_args(Command::Undo),
        "/pin" => no_args(Command::Pin),
        "/sessions" => no_args(Command::Sessions),
        "/unpin" => no_args(Command::Unpin),
        "/system" => Ok(Command::System(
            (!rest.is_empty()).then(|| rest.to_string()),
        )),
        "/set" => parse_setting(rest).map(Command::Set),
        "/show" => Ok(Command::Show(match rest {
            "info" => Show::Info,
            "prompt" => Show::Prompt,
            "ids" => Show::Ids,
            "stats" => Show::Stats,
            "settings" | "" => Show::Settings,
            other => {
                return Err(format!(
                    "/show: unknown '{other}' (info, prompt, ids, stats, settings)"
                ))
            }
        })),
        "/file" => parse_file(rest),
        "/write" => {
            let mut it = rest.split_whitespace();
            let (Some(n), Some(path), None) = (it.next(), it.next(), it.next()) else {
                return Err("usage: /write N PATH (PATH! to overwrite)".into());
            };
            let n: usize =
                n.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    format!("/write: '{n}' is not a code block number (1, 2, ...)")
                })?;
            let (path, overwrite) = match path.strip_suffix('!') {
                Some(p) => (p.to_string(), true),
                None => (path.to_string(), false),
            };
            Ok(Command::Write { n, path, overwrite })
        }
        "/compact" => rest
            .parse()
            .ok()
            .filter(|&n: &usize| n >= 1)
            .map(Command::Compact)
            .ok_or_else(|| "usage: /compact N (keep the last N exchanges)".to_string()),
        "/save" | "/load" => {
            let (rest, overwrite) = match rest.strip_suffix('!') {
                Some(r) if name == "/save" => (r, true),
                _ => (rest, false),
            };
            let ok = !rest.is_empty()
                && rest.len() <= 64
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !rest.starts_with('.');
            if !ok {
                return Err(format!(
                    "usage: {name} NAME (letters, digits, '-', '_' and '.'; not a path)"
                ));
            }
            Ok(if name == "/save" {
                Command::Save {
                    name: rest.to_string(),
                    overwrite,
                }
            } else {
                Command::Load(rest.to_string())
            })
        }
        other => Err(format!("unknown command '{other}'; /help lists them")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("/help"), Ok(Command::Help));
        assert_eq!(parse("  /exit "), Ok(Command::Exit));
        assert_eq!(
            parse("/system Be brief."),
            Ok(Command::System(Some("Be brief.".into())))
        );
        assert_eq!(parse("/system"), Ok(Command::System(None)));
        assert_eq!(
            parse("/set temp 0"),
            Ok(Command::Set(Setting::Temperature(0.0)))
        );
        assert_eq!(
            parse("/set max_tokens 64"),
            Ok(Command::Set(Setting::MaxTokens(64)))
        );
        assert_eq!(parse("/show prompt"), Ok(Command::Show(Show::Prompt)));
        assert_eq!(
            parse("/file src/main.rs:10-20"),
            Ok(Command::File {
                path: "src/main.rs".into(),
                lines: Some((10, 20))
            })
        );
        assert_eq!(
            parse("/file C:notes.txt"),
            Ok(Command::File {
                path: "C:notes.txt".into(),
                lines: None
            })
        );
        assert_eq!(
            parse("/write 2 out.py!"),
            Ok(Command::Write {
                n: 2,
                path: "out.py".into(),
                overwrite: true
            })
        );
        assert_eq!(parse("/compact 3"), Ok(Command::Compact(3)));
        assert_eq!(parse("/pin"), Ok(Command::Pin));
        assert_eq!(parse("/sessions"), Ok(Command::Sessions));
        assert_eq!(parse("/unpin"), Ok(Command::Unpin));
        assert!(parse("/pin 3").is_err());
        assert_eq!(
            parse("/save work-1"),
            Ok(Command::Save {
                name: "work-1".into(),
                overwrite: false
            })
        );
        assert_eq!(
            parse("/save work-1!"),
            Ok(Command::Save {
                name: "work-1".into(),
                overwrite: true
            })
        );
        assert_eq!(Setting::Temperature(0.2).to_string(), "temp = 0.2");
        assert_eq!(parse("/load work-1"), Ok(Command::Load("work-1".into())));
    }

    #[test]
    fn bad_commands_and_values_are_explained() {
        assert!(parse("/frobnicate")
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse("/set temp hot").unwrap_err().contains("hot"));
        assert!(parse("/set temp -1").unwrap_err().contains("outside"));
        assert!(parse("/set top_p 2").unwrap_err().contains("outside"));
        assert!(parse("/set colour blue")
            .unwrap_err()
            .contains("unknown setting"));
        assert!(parse("/set temp").is_err());
        assert!(parse("/write x a.py").is_err());
        assert!(parse("/write 0 a.py").is_err());
        assert!(parse("/file x:5-2").is_err());
        assert!(parse("/clear now").is_err());
        assert!(parse("/show everything").is_err());
        assert!(parse("/compact 0").is_err());
        assert!(parse("/save ../etc/passwd").is_err());
        assert!(parse("/load").is_err());
    }
}
