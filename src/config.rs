//! The config file: the defaults a user would otherwise type on every command (model, threads,
//! context, KV type, sampling, colours) and named system prompts ("roles").
//!
//! `config.toml` in the platform's config folder (`dirs`: `$XDG_CONFIG_HOME/dscoder` or
//! `~/.config/dscoder` on Linux, Application Support on macOS, AppData on Windows), or the file
//! `$DSCODER_CONFIG` names. A missing file means the built-in defaults. Flags override the file;
//! the command line applies it (it knows which flags were given). Unknown keys are errors, so a
//! typo is not silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Everything the file may set. Values are checked where they are applied, by the same checks
/// as the flags.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The default model: a name in the models folder or a path.
    pub model: Option<String>,
    pub threads: Option<usize>,
    pub ctx_size: Option<u32>,
    /// `f16` or `q8_0`.
    pub cache_type: Option<String>,
    pub temp: Option<f32>,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// Most tokens per reply in `chat`.
    pub max_tokens: Option<usize>,
    /// `auto`, `always` or `never`.
    pub color: Option<String>,
    /// `auto`, `dark` or `light`.
    pub theme: Option<String>,
    /// Named system prompts for `--role NAME` and `/role NAME`; they add to (or replace) the
    /// built-in ones.
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
}

/// Roles every user has; the config file can replace them.
pub const BUILTIN_ROLES: [(&str, &str); 3] = [
    (
        "reviewer",
        "You are a careful senior engineer reviewing code. Point out bugs, unclear names and \
         missing error handling first, most serious first, each with the line it concerns and a \
         concrete fix. Be brief; do not rewrite code that is fine.",
    ),
    (
        "explainer",
        "You explain code to a colleague who is new to it: what it does, how the parts fit, \
         and anything surprising. Use short paragraphs and small examples.",
    ),
    (
        "tester",
        "You write unit tests. Given code, reply with tests that cover its normal cases, edge \
         cases and errors, in the same language and the test framework it already uses.",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("no role named '{name}'; the roles are: {known}")]
    UnknownRole { name: String, known: String },
}

/// Where the config file is (it may not exist).
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DSCODER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    Some(dirs::config_dir()?.join("dscoder").join("config.toml"))
}

/// A loaded config and the file it came from (`None`: no file, the defaults).
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub config: Config,
    pub file: Option<PathBuf>,
}

impl Loaded {
    /// The system prompt of role `name` (config first, then the built-in ones).
    pub fn role(&self, name: &str) -> Result<&str, ConfigError> {
        if let Some(text) = self.config.roles.get(name) {
            return Ok(text);
        }
        BUILTIN_ROLES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| ConfigError::UnknownRole {
                name: name.to_string(),
                known: self.role_names().join(", "),
            })
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        let mut names: Vec<String> = BUILTIN_ROLES
            .iter()
            .map(|(n, _)| n.to_string())
            .chain(self.config.roles.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Where a setting comes from, for `dscoder config`.
    pub fn source(&self, is_set: bool) -> String {
        match (&self.file, is_set) {
            (Some(f), true) => format!("config file {}", f.display()),
            _ => "default".to_string(),
        }
    }
}

/// Reads the config file; a missing one gives the defaults.
pub fn load() -> Result<Loaded, ConfigError> {
    match path() {
        Some(p) => load_from(&p),
        None => Ok(Loaded::default()),
    }
}

/// Reads `path`; a missing file gives the defaults.
pub fn load_from(path: &Path) -> Result<Loaded, ConfigError> {
    let text = match crate::input::read_text(path, crate::input::JSON_LIMIT) {
        Ok(t) => t,
        Err(crate::input::InputError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(Loaded::default());
        }
        Err(e) => {
            return Err(ConfigError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string().trim_end().to_string(),
    })?;
    Ok(Loaded {
        config,
        file: Some(path.to_path_buf()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_the_defaults_and_a_typo_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load_from(&dir.path().join("none.toml")).unwrap();
        assert!(missing.file.is_none());
        assert!(missing.config.model.is_none());

        let p = dir.path().join("config.toml");
        std::fs::write(
            &p,
            "model = \"lite\"\ntemp = 0.2\n[roles]\nreviewer = \"Be harsh.\"\nsql = \"You write SQL.\"\n",
        )
        .unwrap();
        let l = load_from(&p).unwrap();
        assert_eq!(l.config.model.as_deref(), Some("lite"));
        assert_eq!(l.config.temp, Some(0.2));
        assert_eq!(l.role("reviewer").unwrap(), "Be harsh.");
        assert_eq!(l.role("sql").unwrap(), "You write SQL.");
        assert!(l.role("explainer").unwrap().contains("explain"));
        let e = l.role("poet").unwrap_err().to_string();
        assert!(e.contains("explainer, reviewer, sql, tester"), "{e}");

        std::fs::write(&p, "temperature = 0.2\n").unwrap();
        let e = load_from(&p).unwrap_err().to_string();
        assert!(
            e.contains("config.toml") && e.contains("temperature"),
            "{e}"
        );
        std::fs::write(&p, "threads = \"many\"\n").unwrap();
        let e = load_from(&p).unwrap_err().to_string();
        assert!(e.contains("threads"), "{e}");
    }
}
