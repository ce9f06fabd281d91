//! `tokenizer.json` + `tokenizer_config.json` → the `tokenizer.*` GGUF keys (deepseek2-gguf.md §6).
//!
//! llama.cpp re-implements the tokenizer from the vocabulary, the merges and the name of a
//! pre-tokenizer (`tokenizer.ggml.pre`), so the converter's job is to copy the first two exactly
//! (byte-level token text, not decoded) and to recognise the third from the tokenizer's own
//! definition. Guessing the pre-tokenizer wrong would silently change token ids, so an unknown one
//! is refused unless the user names it with `--pre`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value as Json};

use super::config::{read_json, HfConfig};
use super::ConvertError;
use crate::gguf::{Array, Metadata, Value};

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The pre-tokenizer names we can recognise, and what they are.
pub const KNOWN_PRE: [&str; 1] = ["deepseek-llm"];

/// What the converter writes for the tokenizer.
#[derive(Debug)]
pub struct TokenizerInfo {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub pre: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub chat_template: Option<String>,
    /// Ids of tokens the tokenizer really has (the rest up to `vocab_size` are padding).
    pub n_real: usize,
}

fn err(path: &Path, key: &str, message: impl Into<String>) -> ConvertError {
    ConvertError::Config {
        path: path.to_path_buf(),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Python's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The `Split` regexes of a pre-tokenizer, in order, and whether it ends in a byte-level step.
fn split_patterns(pre: &Json) -> (Vec<String>, bool) {
    let steps: Vec<&Json> = match pre.get("type").and_then(Json::as_str) {
        Some("Sequence") => pre
            .get("pretokenizers")
            .and_then(Json::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => vec![pre],
    };
    let mut patterns = Vec::new();
    let mut byte_level = false;
    for s in steps {
        match s.get("type").and_then(Json::as_str) {
            Some("Split") => {
                if let Some(p) = s.pointer("/pattern/Regex").and_then(Json::as_str) {
                    patterns.push(p.to_string());
                }
            }
            // DeepSeek's own files use `Digits` where llama.cpp has `\p{N}+`.
            Some("Digits") => {
                let individual = s
                    .get("individual_digits")
                    .and_then(Json::as_bool)
                    .unwrap_or(false);
                patterns.push(
                    if individual {
                        "<digits:individual>"
                    } else {
                        "<digits>"
                    }
                    .to_string(),
                );
            }
            Some("ByteLevel") => byte_level = true,
            _ => {}
        }
    }
    (patterns, byte_level)
}

/// Recognises DeepSeek-V2's split sequence (`deepseek-llm`, §6.3): newlines, letters, punctuation,
/// trailing spaces, CJK, then digits (a `\p{N}+` split, or `Digits` one at a time as DeepSeek's
/// files have it; with no digit merges in the vocabulary both give the same ids). Its neighbours differ in telling places: `deepseek-coder`
/// (V1) has five steps and `\p{N}` single digits, `deepseek-v3` splits digits in threes.
pub fn detect_pre(pre_tokenizer: &Json) -> Option<&'static str> {
    let (p, byte_level) = split_patterns(pre_tokenizer);
    let deepseek_llm = byte_level
        && p.len() == 6
        && (p[0] == "[\\r\\n]" || p[0] == "[\r\n]")
        && p[1].starts_with("\\s?[A-Za-zµÀ-ÖØ-öø-ƺ")
        && p[2].starts_with("\\s?[!-/:-~")
        && p[3] == "\\s+$"
        && p[4].starts_with("[一-龥")
        && (p[5] == "\\p{N}+" || p[5] == "<digits:individual>");
    deepseek_llm.then_some("deepseek-llm")
}

/// The content of a `*_token` entry of tokenizer_config.json: a string or `{content: ...}`.
fn token_content(v: &Json) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Json::as_str))
}

impl TokenizerInfo {
    /// Reads `dir/tokenizer.json` and `dir/tokenizer_config.json`.
    pub fn load(
        dir: &Path,
        cfg: &HfConfig,
        pre_override: Option<&str>,
    ) -> Result<TokenizerInfo, ConvertError> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(ConvertError::MissingFile {
                path: tok_path,
                what: "the tokenizer",
            });
        }
        let tok = read_json(&tok_path)?;
        let config_path = dir.join("tokenizer_config.json");
        let tcfg = if config_path.exists() {
            read_json(&config_path)?
        } else {
            Map::new()
        };
        Self::from_json(&tok_path, &tok, &config_path, &tcfg, cfg, pre_override)
    }

    pub fn from_json(
        tok_path: &Path,
        tok: &Map<String, Json>,
        config_path: &Path,
        tcfg: &Map<String, Json>,
        cfg: &HfConfig,
        pre_override: Option<&str>,
    ) -> Result<TokenizerInfo, ConvertError> {
        let model = tok
            .get("model")
            .and_then(Json::as_object)
            .ok_or_else(|| err(tok_path, "model", "missing"))?;
        match model.get("type").and_then(Json::as_str) {
            Some("BPE") => {}
            other => {
                return Err(err(
                    tok_path,
                    "model.type",
                    format!("{other:?} is not supported; DeepSeek-V2 uses a byte-level BPE"),
                ))
            }
        }
        let pre = match pre_override {
            Some(p) => p.to_string(),
            None => {
                let def = tok.get("pre_tokenizer").unwrap_or(&Json::Null);
                detect_pre(def)
                    .ok_or_else(|| {
                        err(
                            tok_path,
                            "pre_tokenizer",
                            "is not DeepSeek-V2's split sequence (deepseek-llm); if you know which llama.cpp pre-tokenizer it is, pass --pre NAME",
                        )
                    })?
                    .to_string()
            }
        };

        // id -> text, from the BPE vocabulary and the added tokens.
        let vocab = model
            .get("vocab")
            .and_then(Json::as_object)
            .ok_or_else(|| err(tok_path, "model.vocab", "missing"))?;
        let mut by_id: HashMap<u32, (String, i32)> = HashMap::with_capacity(vocab.len());
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    err(
                        tok_path,
                        &format!("model.vocab.{text}"),
                        "id is not an integer",
                    )
                })?;
            by_id.insert(id, (text.clone(), NORMAL));
        }
        let mut content_to_id: HashMap<String, u32> = HashMap::new();
        for added in tok
            .get("added_tokens")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(id), Some(content)) = (
                added
                    .get("id")
                    .and_then(Json::as_u64)
                    .and_then(|i| u32::try_from(i).ok()),
                added.get("content").and_then(Json::as_str),
            ) else {
                return Err(err(
                    tok_path,
                    "added_tokens",
                    format!("entry without id or content: {added}"),
                ));
            };
            let special = added
                .get("special")
                .and_then(Json::as_bool)
                .unwrap_or(false);
            let (text, ty) = if special || looks_special(content) {
                (content.to_string(), CONTROL)
            } else {
                (content.replace('\u{2581}', " "), USER_DEFINED)
            };
            by_id.insert(id, (text, ty));
            content_to_id.insert(content.to_string(), id);
        }
        let n_vocab = cfg.vocab_size as usize;
        if let Some(max) = by_id.keys().max() {
            if *max as usize >= n_vocab {
                return Err(err(
                    tok_path,
                    "model.vocab",
                    format!("token id {max} does not fit config.json vocab_size {n_vocab}"),
                ));
            }
        }
        let n_real = by_id.len();
        let mut tokens = Vec::with_capacity(n_vocab);
        let mut types = Vec::with_capacity(n_vocab);
        for i in 0..n_vocab as u32 {
            match by_id.remove(&i) {
                Some((text, ty)) => {
                    tokens.push(text);
                    types.push(ty);
                }
                None => {
                    tokens.push(format!("[PAD{i}]"));
                    types.push(UNUSED);
                }
            }
        }

        let merges = model
            .get("merges")
            .and_then(Json::as_array)
            .ok_or_else(|| err(tok_path, "model.merges", "missing"))?
            .iter()
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(pair) if pair.len() == 2 => {
                    let part = |v: &Json| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                    match (part(&pair[0]), part(&pair[1])) {
                        (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                        _ => Err(err(tok_path, "model.merges", format!("bad merge {m}"))),
                    }
                }
                _ => Err(err(tok_path, "model.merges", format!("bad merge {m}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let special_id = |key: &str| -> Result<Option<u32>, ConvertError> {
            let Some(v) = tcfg.get(key).filter(|v| !v.is_null()) else {
                return Ok(None);
            };
            let content = token_content(v)
                .ok_or_else(|| err(config_path, key, format!("expected a token, found {v}")))?;
            content_to_id
                .get(content)
                .copied()
                .or_else(|| vocab.get(content).and_then(Json::as_u64).map(|i| i as u32))
                .map(Some)
                .ok_or_else(|| {
                    err(
                        config_path,
                        key,
                        format!("token '{content}' is not in tokenizer.json"),
                    )
                })
        };
        let bos = special_id("bos_token")?.or(cfg.bos_token_id);
        let eos = special_id("eos_token")?.or(cfg.eos_token_id);
        let pad = special_id("pad_token")?;
        let bool_key = |key: &str| -> Result<Option<bool>, ConvertError> {
            match tcfg.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::Bool(b)) => Ok(Some(*b)),
                Some(v) => Err(err(
                    config_path,
                    key,
                    format!("expected true or false, found {v}"),
                )),
            }
        };
        let post_bos = tok
            .get("post_processor")
            .and_then(|p| p.pointer("/single/0/SpecialToken/id"))
            .and_then(Json::as_str)
            .zip(bos)
            .is_some_and(|(t, b)| content_to_id.get(t) == Some(&b));
        let add_bos = bool_key("add_bos_token")?.unwrap_or(post_bos);
        let add_eos = bool_key("add_eos_token")?.unwrap_or(false);
        let chat_template = match tcfg.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .map(str::to_string),
            Some(v) => {
                return Err(err(
                    config_path,
                    "chat_template",
                    format!("expected a string, found {v}"),
                ))
            }
        };
        Ok(TokenizerInfo {
            tokens,
            types,
            merges,
            pre,
            bos,
            eos,
            pad,
            add_bos,
            add_eos,
            chat_template,
            n_real,
        })
    }

    /// Adds the `tokenizer.*` keys.
    pub fn write_to(&self, m: &mut Metadata) {
        m.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        m.set("tokenizer.ggml.pre", Value::String(self.pre.clone()));
        m.set(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(self.tokens.clone())),
        );
        m.set(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(self.types.clone())),
        );
        m.set(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(self.merges.clone())),
        );
        if let Some(b) = self.bos {
            m.set("tokenizer.ggml.bos_token_id", Value::U32(b));
        }
        if let Some(e) = self.eos {
            m.set("tokenizer.ggml.eos_token_id", Value::U32(e));
        }
        if let Some(p) = self.pad {
            m.set("tokenizer.ggml.padding_token_id", Value::U32(p));
        }
        m.set("tokenizer.ggml.add_bos_token", Value::Bool(self.add_bos));
        m.set("tokenizer.ggml.add_eos_token", Value::Bool(self.add_eos));
        if let Some(t) = &self.chat_template {
            m.set("tokenizer.chat_template", Value::String(t.clone()));
        }
    }
}
