//! The request bodies of the three APIs dscoder speaks (OpenAI, llama.cpp, ollama), parsed
//! into one [`Request`] for the worker. Parsing names the field that is wrong: serde's path to
//! the error for wrong types, our checks for values out of range and unknown roles.
//!
//! Fields clients send that do not change the result here (`model`, `cache_prompt`,
//! `samplers`, `id_slot`, ...) are accepted and ignored, as llama-server and ollama do.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::chat::{Message, Role};
use crate::engine::{DraftMode, GenerateOptions, SamplingSettings};
use crate::prompt::{ExtraFile, FimInput};

use super::worker::{Limits, Work};

/// A parsed generation request.
#[derive(Debug)]
pub struct Request {
    pub work: Work,
    pub options: GenerateOptions,
    pub limits: Limits,
    pub stream: bool,
    /// OpenAI's `stream_options.include_usage`.
    pub include_usage: bool,
}

/// A request that cannot be served as sent: the message names the field.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest(pub String);

/// Parses a JSON body, naming the field on a type error.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, BadRequest> {
    typed(&json(body)?, "")
}

/// The body as JSON, which must be an object.
pub fn json(body: &[u8]) -> Result<Value, BadRequest> {
    if body.is_empty() {
        return Err(BadRequest(
            "the request has no body; send a JSON object".into(),
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(BadRequest("the body: expected a JSON object".into()));
    }
    Ok(v)
}

/// `value` as a `T`; errors name the field, under `prefix` (e.g. `options.`).
fn typed<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, BadRequest> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            BadRequest(format!(
                "{}: {inner}",
                if prefix.is_empty() {
                    "the body"
                } else {
                    prefix.trim_end_matches('.')
                }
            ))
        } else {
            BadRequest(format!("{prefix}{path}: {inner}"))
        }
    })
}

/// A request body with the sampling knobs beside its own fields (OpenAI, llama.cpp). They are
/// parsed on their own because serde's `flatten` would lose the failing field's name.
pub fn parse_with_sampling<T: DeserializeOwned>(body: &[u8]) -> Result<(T, Sampling), BadRequest> {
    let v = json(body)?;
    Ok((typed(&v, "")?, typed(&v, "")?))
}

/// `"text"` or `["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Message content: a string, or OpenAI's array of parts of which the text parts count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// The sampling knobs, under the names each API uses.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub messages: Vec<WireMessage>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    pub suffix: Option<String>,
    pub max_tokens: Option<i64>,
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
pub struct WireExtra {
    #[serde(default)]
    pub filename: String,
    pub text: String,
}

/// `POST /infill` (llama.cpp; what llama.vim and llama.vscode send).
#[derive(Debug, Deserialize)]
pub struct InfillRequest {
    #[serde(default)]
    pub input_prefix: String,
    #[serde(default)]
    pub input_suffix: String,
    #[serde(default)]
    pub input_extra: Vec<WireExtra>,
    #[serde(default)]
    pub prompt: String,
    pub n_predict: Option<i64>,
    pub n_indent: Option<i64>,
    pub t_max_predict_ms: Option<i64>,
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub stream: bool,
}

/// `options` of ollama's requests, besides the sampling knobs.
#[derive(Debug, Default, Deserialize)]
pub struct OllamaOptions {
    pub num_predict: Option<i64>,
    pub stop: Option<OneOrMany>,
}

/// `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub struct OllamaGenerateRequest {
    #[serde(default)]
    pub prompt: String,
    pub suffix: Option<String>,
    pub system: Option<String>,
    #[serde(default)]
    pub raw: bool,
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Value,
}

/// `POST /api/chat`.
#[derive(Debug, Deserialize)]
pub struct OllamaChatRequest {
    pub messages: Vec<WireMessage>,
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Value,
}

/// `POST /tokenize`.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub content: String,
    #[serde(default)]
    pub add_special: bool,
    #[serde(default)]
    pub parse_special: Option<bool>,
    #[serde(default)]
    pub with_pieces: bool,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<i64>,
}

/// The server's defaults for what a request leaves out.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub sampling: SamplingSettings,
    /// Cap when a request sets none (the context's room bounds it anyway).
    pub max_tokens: usize,
    /// Prompt-lookup speculation for every request (`serve --draft`).
    pub draft: DraftMode,
}

fn sampling(s: &Sampling, prefix: &str, d: &Defaults) -> Result<SamplingSettings, BadRequest> {
    let bad = |field: &str, why: &str| BadRequest(format!("{prefix}{field}: {why}"));
    let mut out = d.sampling.clone();
    if let Some(t) = s.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(bad("temperature", &format!("{t} is outside 0..=2")));
        }
        out.temperature = t;
    }
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(bad("top_p", &format!("{p} is outside (0, 1]")));
        }
        out.top_p = p;
    }
    if let Some(k) = s.top_k {
        if k < 0 {
            return Err(bad("top_k", &format!("{k} is negative")));
        }
        out.top_k = k;
    }
    if let Some(m) = s.min_p {
        if !(0.0..=1.0).contains(&m) {
            return Err(bad("min_p", &format!("{m} is outside 0..=1")));
        }
        out.min_p = m;
    }
    if let Some(r) = s.repeat_penalty {
        if !(r > 0.0 && r.is_finite()) {
            return Err(bad(
                "repeat_penalty",
                &format!("{r} is not a positive number"),
            ));
        }
        out.repeat_penalty = r;
    }
    out.seed = match s.seed {
        // llama.cpp's -1 means "random", as does leaving it out.
        Some(-1) | None => rand::random(),
        Some(n) if (0..=u32::MAX as i64).contains(&n) => n as u32,
        Some(n) => return Err(bad("seed", &format!("{n} is outside 0..=4294967295"))),
    };
    Ok(out)
}

/// A token cap: `None` and (for llama.cpp and ollama) -1 mean the default.
fn max_tokens(v: Option<i64>, field: &str, d: &Defaults) -> Result<usize, BadRequest> {
    match v {
        None | Some(-1) => Ok(d.max_tokens),
        Some(n) if n >= 0 => Ok(n as usize),
        Some(n) => Err(BadRequest(format!("{field}: {n} is negative"))),
    }
}

fn messages(msgs: Vec<WireMessage>, field: &str) -> Result<Vec<Message>, BadRequest> {
    if msgs.is_empty() {
        return Err(BadRequest(format!(
            "{field}: at least one message is needed"
        )));
    }
    msgs.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = Role::parse(&m.role).ok_or_else(|| {
                BadRequest(format!(
                    "{field}[{i}].role: unknown role '{}' (expected system, user or assistant)",
                    m.role
                ))
            })?;
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(BadRequest(format!(
                                    "{field}[{i}].content[{j}]: only text parts are supported, not '{kind}'"
                                )))
                            }
                        }
                    }
                    text
                }
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

fn stops(s: Option<OneOrMany>) -> Vec<String> {
    s.map(OneOrMany::into_vec).unwrap_or_default()
}

fn single_prompt(p: OneOrMany) -> Result<String, BadRequest> {
    match p.into_vec() {
        v if v.len() == 1 => Ok(v.into_iter().next().unwrap_or_default()),
        v => Err(BadRequest(format!(
            "prompt: {} prompts given; one prompt per request is supported",
            v.len()
        ))),
    }
}

impl ChatCompletionRequest {
    pub fn into_request(self, s: &Sampling, d: &Defaults) -> Result<Request, BadRequest> {
        let cap = self.max_completion_tokens.or(self.max_tokens);
        let field = if self.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        Ok(Request {
            options: GenerateOptions {
                sampling: sampling(s, "", d)?,
                max_tokens: max_tokens(cap, field, d)?,
                stop: stops(self.stop),
                draft: d.draft,
                context_shift: None,
            },
            work: Work::Chat(messages(self.messages, "messages")?),
            limits: Limits::default(),
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

impl CompletionRequest {
    pub fn into_request(self, s: &Sampling, d: &Defaults) -> Result<Request, BadRequest> {
        let prompt = single_prompt(self.prompt)?;
        let work = match self.suffix {
            // As ollama does: a suffix makes it fill-in-the-middle, the prompt being the prefix.
            Some(suffix) => Work::Fim(FimInput {
                prefix: prompt,
                suffix,
                extra: Vec::new(),
            }),
            None => Work::Text(prompt),
        };
        Ok(Request {
            options: GenerateOptions {
                sampling: sampling(s, "", d)?,
                // OpenAI's default for completions is 16 tokens.
                max_tokens: max_tokens(self.max_tokens.or(Some(16)), "max_tokens", d)?,
                stop: stops(self.stop),
                draft: d.draft,
                context_shift: None,
            },
            work,
            limits: Limits::default(),
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

impl InfillRequest {
    pub fn into_request(self, s: &Sampling, d: &Defaults) -> Result<Request, BadRequest> {
        let n_indent = match self.n_indent {
            None | Some(0) => None,
            Some(n) if n > 0 => Some(n as usize),
            Some(n) => return Err(BadRequest(format!("n_indent: {n} is negative"))),
        };
        let deadline = match self.t_max_predict_ms {
            None | Some(0) => None,
            Some(ms) if ms > 0 => {
                Some(std::time::Instant::now() + std::time::Duration::from_millis(ms as u64))
            }
            Some(ms) => return Err(BadRequest(format!("t_max_predict_ms: {ms} is negative"))),
        };
        let extra = self
            .input_extra
            .into_iter()
            .map(|e| ExtraFile {
                name: e.filename,
                text: e.text,
            })
            .collect();
        Ok(Request {
            options: GenerateOptions {
                sampling: sampling(s, "", d)?,
                max_tokens: max_tokens(self.n_predict, "n_predict", d)?,
                stop: stops(self.stop),
                draft: d.draft,
                context_shift: None,
            },
            // llama-server appends `prompt` to the prefix.
            work: Work::Fim(FimInput {
                prefix: self.input_prefix + &self.prompt,
                suffix: self.input_suffix,
                extra,
            }),
            limits: Limits { n_indent, deadline },
            stream: self.stream,
            include_usage: false,
        })
    }
}

fn ollama_options(options: &Value, d: &Defaults) -> Result<GenerateOptions, BadRequest> {
    let (o, s): (OllamaOptions, Sampling) = if options.is_null() {
        Default::default()
    } else {
        (typed(options, "options.")?, typed(options, "options.")?)
    };
    Ok(GenerateOptions {
        sampling: sampling(&s, "options.", d)?,
        max_tokens: max_tokens(o.num_predict, "options.num_predict", d)?,
        stop: stops(o.stop),
        draft: d.draft,
        context_shift: None,
    })
}

impl OllamaGenerateRequest {
    pub fn into_request(self, d: &Defaults) -> Result<Request, BadRequest> {
        let work = match (self.suffix, self.raw) {
            (Some(suffix), _) if !suffix.is_empty() => Work::Fim(FimInput {
                prefix: self.prompt,
                suffix,
                extra: Vec::new(),
            }),
            (_, true) => Work::Text(self.prompt),
            _ => {
                let mut m = Vec::new();
                if let Some(s) = self.system {
                    m.push(Message::new(Role::System, s));
                }
                m.push(Message::new(Role::User, self.prompt));
                Work::Chat(m)
            }
        };
        Ok(Request {
            options: ollama_options(&self.options, d)?,
            work,
            limits: Limits::default(),
            // ollama streams unless told not to.
            stream: self.stream.unwrap_or(true),
            include_usage: false,
        })
    }
}

impl OllamaChatRequest {
    pub fn into_request(self, d: &Defaults) -> Result<Request, BadRequest> {
        Ok(Request {
            options: ollama_options(&self.options, d)?,
            work: Work::Chat(messages(self.messages, "messages")?),
            limits: Limits::default(),
            stream: self.stream.unwrap_or(true),
            include_usage: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            draft: DraftMode::Off,
            sampling: SamplingSettings::default(),
            max_tokens: 256,
        }
    }

    fn chat(body: &str) -> Result<Request, BadRequest> {
        let (r, s) = parse_with_sampling::<ChatCompletionRequest>(body.as_bytes())?;
        r.into_request(&s, &defaults())
    }

    #[test]
    fn bad_requests_name_the_field() {
        let err = |body: &str| chat(body).unwrap_err().0;
        assert!(err("").contains("no body"));
        assert!(err("{").contains("not valid JSON"));
        assert!(err("[]").starts_with("the body: expected a JSON object"));
        assert!(
            err(r#"{"messages": 3}"#).starts_with("messages:"),
            "{}",
            err(r#"{"messages": 3}"#)
        );
        assert!(err(r#"{"messages": []}"#).contains("at least one"));
        let e = err(
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}"#,
        );
        assert!(
            e.starts_with("messages[1].role: unknown role 'robot'"),
            "{e}"
        );
        let e = err(r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#);
        assert!(e.starts_with("temperature:"), "{e}");
        let e = err(r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 9}"#);
        assert!(e.starts_with("temperature: 9 is outside"), "{e}");
        let e = err(r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}"#);
        assert!(e.starts_with("max_tokens: -5"), "{e}");
        let e = err(r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#);
        assert!(e.contains("messages[0].content[0]"), "{e}");
    }

    #[test]
    fn requests_map_to_work() {
        let r = chat(r#"{"model": "x", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "stop": "\n", "seed": 7, "temperature": 0, "max_completion_tokens": 5, "stream": true, "stream_options": {"include_usage": true}}"#).unwrap();
        let Work::Chat(m) = &r.work else { panic!() };
        assert_eq!(m[1], Message::new(Role::User, "ab"));
        assert_eq!(r.options.stop, vec!["\n".to_string()]);
        assert_eq!((r.options.sampling.seed, r.options.max_tokens), (7, 5));
        assert!(r.stream && r.include_usage);

        let (c, s) =
            parse_with_sampling::<CompletionRequest>(br#"{"prompt": "def f(", "suffix": ")\n"}"#)
                .unwrap();
        let r = c.into_request(&s, &defaults()).unwrap();
        assert!(matches!(r.work, Work::Fim(ref f) if f.prefix == "def f(" && f.suffix == ")\n"));
        assert_eq!(r.options.max_tokens, 16);

        let (i, s) = parse_with_sampling::<InfillRequest>(br#"{"input_prefix": "a", "prompt": "b", "input_suffix": "c", "input_extra": [{"filename": "x.py", "text": "y"}], "n_indent": 4, "n_predict": -1, "cache_prompt": true, "samplers": ["top_k"]}"#).unwrap();
        let r = i.into_request(&s, &defaults()).unwrap();
        let Work::Fim(f) = &r.work else { panic!() };
        assert_eq!(
            (f.prefix.as_str(), f.suffix.as_str(), f.extra.len()),
            ("ab", "c", 1)
        );
        assert_eq!((r.limits.n_indent, r.options.max_tokens), (Some(4), 256));
        let e = parse::<InfillRequest>(br#"{"input_extra": [{"filename": "x"}]}"#).unwrap_err();
        assert!(e.0.starts_with("input_extra[0]"), "{}", e.0);

        let g: OllamaGenerateRequest = parse(br#"{"model": "m", "prompt": "p", "system": "s", "options": {"num_predict": 3, "temperature": 0}}"#).unwrap();
        let r = g.into_request(&defaults()).unwrap();
        assert!(matches!(r.work, Work::Chat(ref m) if m.len() == 2));
        assert!(r.stream);
        assert_eq!(r.options.max_tokens, 3);
        let e = parse::<OllamaGenerateRequest>(br#"{"options": {"temperature": 3}}"#)
            .unwrap()
            .into_request(&defaults())
            .unwrap_err();
        assert!(e.0.starts_with("options.temperature"), "{}", e.0);
    }
}
