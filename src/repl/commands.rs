//! Slash commands: parsing and validation, apart from the terminal so they can be tested.

use crate::engine::SamplingSettings;
use crate::repl::markdown::Palette;

/// The keys `/set` takes (for its usage line and Tab completion).
pub const SET_KEYS: [&str; 8] = [
    "temp",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "seed",
    "max_tokens",
    "theme",
];

/// The topics `/show` takes.
pub const SHOW_TOPICS: [&str; 5] = ["info", "prompt", "ids", "stats", "settings"];

/// Every command, for `/help` and tab completion.
pub const COMMANDS: [(&str, &str); 18] = [
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
        "/role",
        "/role NAME: use a named system prompt (config file or built in); /role lists them",
    ),
    (
        "/set",
        "/set KEY VALUE: temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens, theme (dark|light)",
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
    /// `/role NAME` (`None`: list the roles).
    Role(Option<String>),
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
    /// Code colours for a dark or light terminal background (the REPL applies it).
    Theme(Palette),
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
            Setting::Theme(p) => write!(f, "theme = {}", p.name()),
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
            Setting::Theme(_) => {}
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
        return Err(format!("usage: /set KEY VALUE ({})", SET_KEYS.join(", ")));
    };
    Ok(match key {
        "temp" | "temperature" => Setting::Temperature(in_range(key, number(key, value)?)?),
        "top_k" => Setting::TopK(number(key, value)?),
        "top_p" => Setting::TopP(in_range(key, number(key, value)?)?),
        "min_p" => Setting::MinP(in_range(key, number(key, value)?)?),
        "repeat_penalty" => Setting::RepeatPenalty(in_range(key, number(key, value)?)?),
        "seed" => Setting::Seed(number(key, value)?),
        "max_tokens" | "n" => Setting::MaxTokens(number(key, value)?),
        "theme" => Setting::Theme(match value {
            "dark" => Palette::Dark,
            "light" => Palette::Light,
            _ => return Err(format!("/set theme: '{value}' is not dark or light")),
        }),
        other => {
            return Err(format!(
                "/set: unknown setting '{other}' ({})",
                SET_KEYS.join(", ")
            ))
        }
    })
}

/// `PATH`, `PATH:LINE` or `PATH:START-END` (1-based, inclusive); the path may be quoted
/// (`"my file.py"`, `'x.py':3`) and may start with `~/`.
fn parse_file(rest: &str) -> Result<Command, String> {
    let rest = rest.trim();
    if rest.is_empty() {
        return Err("usage: /file PATH[:LINE or :START-END]".into());
    }
    let (path, range) = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let end = rest[1..]
                .find(q)
                .ok_or_else(|| format!("/file: the quote {q} is not closed"))?;
            let path = &rest[1..1 + end];
            let after = &rest[2 + end..];
            match after.strip_prefix(':') {
                Some(range) => (path, Some(range)),
                None if after.trim().is_empty() => (path, None),
                None => return Err(format!("/file: unexpected '{after}' after the path")),
            }
        }
        _ => match rest.rsplit_once(':') {
            Some((p, r)) if !r.is_empty() && r.chars().all(|c| c.is_ascii_digit() || c == '-') => {
                (p, Some(r))
            }
            _ => (rest, None),
        },
    };
    let lines = match range {
        None => None,
        Some(range) => {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if a >= 1 && b >= a => Some((a, b)),
                _ => {
                    return Err(format!(
                        "/file: bad line range '{range}' (LINE or START-END, 1-based, START <= END)"
                    ))
                }
            }
        }
    };
    if path.is_empty() {
        return Err("usage: /file PATH[:LINE or :START-END]".into());
    }
    Ok(Command::File {
        path: expand_home(path),
        lines,
    })
}

/// `~/x` → the home folder's `x` (the shell would have done it); other paths as they are.
pub fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest).display().to_string(),
        _ if path == "~" => dirs::home_dir().map_or(path.to_string(), |h| h.display().to_string()),
        _ => path.to_string(),
    }
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
        "/role" if rest.contains(char::is_whitespace) => Err("usage: /role NAME".into()),
        "/role" => Ok(Command::Role((!rest.is_empty()).then(|| rest.to_string()))),
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
        assert_eq!(parse("/role"), Ok(Command::Role(None)));
        assert_eq!(
            parse("/role reviewer"),
            Ok(Command::Role(Some("reviewer".into())))
        );
        assert!(parse("/role a b").is_err());
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
        assert_eq!(
            parse("/set theme light"),
            Ok(Command::Set(Setting::Theme(Palette::Light)))
        );
        assert_eq!(Setting::Theme(Palette::Light).to_string(), "theme = light");
    }

    #[test]
    fn file_paths_take_one_line_quotes_and_the_home_folder() {
        let file = |path: &str, lines| {
            Ok(Command::File {
                path: path.into(),
                lines,
            })
        };
        assert_eq!(parse("/file x.py:5"), file("x.py", Some((5, 5))));
        assert_eq!(
            parse("/file \"my file.py\":3-4"),
            file("my file.py", Some((3, 4)))
        );
        assert_eq!(parse("/file 'a b.py'"), file("a b.py", None));
        assert_eq!(parse("/file 'x:1.py'"), file("x:1.py", None));
        let home = dirs::home_dir().unwrap();
        assert_eq!(
            parse("/file ~/src/x.py:2"),
            file(&home.join("src/x.py").display().to_string(), Some((2, 2)))
        );
        assert!(parse("/file \"x.py").unwrap_err().contains("not closed"));
        assert!(parse("/file x.py:0")
            .unwrap_err()
            .contains("bad line range"));
        assert!(parse("/file 'x.py' y").unwrap_err().contains("unexpected"));
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
        assert!(parse("/set theme blue")
            .unwrap_err()
            .contains("dark or light"));
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
