//! `dscoder serve` with real clients: the `async-openai` crate for the OpenAI endpoints,
//! reqwest for llama.cpp's and ollama's, on the bundled nano model over 127.0.0.1 with a free
//! port. Answers are checked against `dscoder run`, against transformers' FIM references, and
//! across the APIs; bad requests against the status and message each must get.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::Client;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::common;
use crate::complete::{fim_reference, nano_f32};

/// A running `dscoder serve`, stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = common::dscoder()
            .arg("serve")
            .arg(nano_f32())
            .args(["--port", "0", "--temp", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no address: {}", log.lock().unwrap()));
        Server { child, base, log }
    }

    /// The server's stderr once `ready` holds for it (at most 20 s).
    fn wait_log(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log.lock().unwrap().clone();
            if ready(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn openai(&self) -> Client<OpenAIConfig> {
        Client::with_config(
            OpenAIConfig::new()
                .with_api_base(self.url("/v1"))
                .with_api_key("unused"),
        )
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `dscoder run` at temperature 0: what every chat endpoint must answer.
fn run_text(system: Option<&str>, user: &str, n: usize) -> String {
    let mut cmd = common::dscoder();
    cmd.arg("run")
        .arg(nano_f32())
        .args(["-p", user, "--temp", "0", "-n", &n.to_string()]);
    if let Some(s) = system {
        cmd.args(["--system", s]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

const USER: &str = "Write a function that returns the factorial of n.";
const SYSTEM: &str = "You write short Python.";

#[test]
fn openai_client_chat_and_completions_match_run_streamed_or_not() {
    let server = Server::start(&[]);
    let want = run_text(Some(SYSTEM), USER, 48);
    let rt = runtime();
    rt.block_on(async {
        let client = server.openai();
        let messages: Vec<ChatCompletionRequestMessage> = vec![
            ChatCompletionRequestSystemMessage::from(SYSTEM).into(),
            ChatCompletionRequestUserMessage::from(USER).into(),
        ];
        let request = CreateChatCompletionRequestArgs::default()
            .model("dscoder-nano")
            .messages(messages.clone())
            .temperature(0.0)
            .max_completion_tokens(48u32)
            .build()
            .unwrap();
        let r = client.chat().create(request.clone()).await.unwrap();
        let text = r.choices[0].message.content.clone().unwrap();
        // `run` ends a reply with a newline for the terminal; the reply itself is the same.
        assert_eq!(text.trim_end(), want.trim_end());
        assert!(!text.starts_with(' '), "{text:?}");
        let usage = r.usage.unwrap();
        assert_eq!(
            usage.total_tokens,
            usage.prompt_tokens + usage.completion_tokens
        );

        let mut stream = client.chat().create_stream(request).await.unwrap();
        let mut streamed = String::new();
        let mut finish = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            for c in chunk.choices {
                streamed += c.delta.content.as_deref().unwrap_or("");
                finish = finish.or(c.finish_reason);
            }
        }
        assert_eq!(streamed, text);
        assert!(finish.is_some());

        // Raw completion of the same rendered prompt is the same text, with the template's space.
        let rendered = format!("{SYSTEM}\n\nUser: {USER}\n\nAssistant:");
        let c = CreateCompletionRequestArgs::default()
            .model("dscoder-nano")
            .prompt(rendered)
            .max_tokens(48u32)
            .temperature(0.0)
            .build()
            .unwrap();
        let one = client.completions().create(c.clone()).await.unwrap();
        let mut s = client.completions().create_stream(c).await.unwrap();
        let mut streamed = String::new();
        while let Some(chunk) = s.next().await {
            for choice in chunk.unwrap().choices {
                streamed += &choice.text;
            }
        }
        assert_eq!(one.choices[0].text, streamed);
    });
    assert!(server.stop().success());
}

#[test]
fn fim_is_the_same_middle_on_every_endpoint_and_equals_transformers() {
    let server = Server::start(&[]);
    let r = fim_reference();
    let rt = runtime();
    rt.block_on(async {
        for case in r["cases"].as_array().unwrap().iter().take(5) {
            let (prefix, suffix) = (case["prefix"].clone(), case["suffix"].clone());
            let want = case["middle_text"].as_str().unwrap();
            let (s, infill) = post(
                &server.url("/infill"),
                json!({ "input_prefix": prefix, "input_suffix": suffix, "n_predict": 64, "temperature": 0 }),
            )
            .await;
            assert_eq!(s, 200, "{infill}");
            assert_eq!(infill["content"], want, "{}", case["name"]);
            let (_, v1) = post(
                &server.url("/v1/completions"),
                json!({ "prompt": prefix, "suffix": suffix, "max_tokens": 64, "temperature": 0 }),
            )
            .await;
            assert_eq!(v1["choices"][0]["text"], want);
            let (_, ol) = post(
                &server.url("/api/generate"),
                json!({ "prompt": prefix, "suffix": suffix, "stream": false, "options": { "num_predict": 64, "temperature": 0 } }),
            )
            .await;
            assert_eq!(ol["response"], want);
        }
    });
}

#[test]
fn the_prompt_cache_evaluates_only_what_changed() {
    let server = Server::start(&[]);
    let text = std::fs::read_to_string(common::repo("nano/heldout.py.txt")).unwrap();
    // About 1,200 tokens of code, then two different endings.
    let head: String = text.chars().take(2300).collect();
    let rt = runtime();
    let url = server.url("/v1/completions");
    rt.block_on(async {
        let ask = |tail: &str| {
            post(
                &url,
                json!({ "prompt": format!("{head}{tail}"), "max_tokens": 4, "temperature": 0 }),
            )
        };
        let (_, first) = ask("\ndef first():").await;
        let (_, second) = ask("\nclass Second:").await;
        let p1 = first["usage"]["prompt_tokens"].as_u64().unwrap();
        let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        let p2 = second["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(p1 > 1000, "{p1}");
        assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert!(cached >= 1000, "{second}");
        assert!(p2 - cached <= 8, "evaluated {} of {p2}", p2 - cached);
        // llama.cpp's timings say the same on /infill.
        let (_, a) = post(
            &server.url("/infill"),
            json!({ "input_prefix": head, "input_suffix": "", "n_predict": 2 }),
        )
        .await;
        let (_, b) = post(
            &server.url("/infill"),
            json!({ "input_prefix": format!("{head}x"), "input_suffix": "", "n_predict": 2 }),
        )
        .await;
        assert!(a["timings"]["prompt_n"].as_u64().unwrap() > 100);
        assert!(b["timings"]["prompt_n"].as_u64().unwrap() <= 8, "{b}");
        assert!(b["timings"]["cache_n"].as_u64().unwrap() > 1000, "{b}");
    });
    let log = server.wait_log(|l| l.contains("POST /v1/completions 200 prompt="));
    assert!(log.contains("POST /v1/completions 200 prompt="), "{log}");
}

#[test]
fn a_client_that_leaves_frees_the_worker_and_concurrent_clients_all_get_answers() {
    let server = Server::start(&[]);
    let rt = runtime();
    rt.block_on(async {
        // A long stream (greedy, this prompt repeats itself for 1,500 tokens, ~4 s here),
        // abandoned after its first event; while it runs, a second request queues and its
        // client gives up.
        let long =
            json!({ "prompt": "a = 1\na = 1\na = 1\na = 1\n", "max_tokens": 1500, "stream": true });
        let r = reqwest::Client::new()
            .post(server.url("/v1/completions"))
            .json(&long)
            .send()
            .await
            .unwrap();
        let mut body = r.bytes_stream();
        body.next().await.unwrap().unwrap();
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap()
            .post(server.url("/v1/completions"))
            .json(&json!({ "prompt": "b = 2\n", "max_tokens": 5 }))
            .send()
            .await;
        assert!(impatient.unwrap_err().is_timeout());
        drop(body);
        let t = Instant::now();
        let (s, _) = post(
            &server.url("/v1/completions"),
            json!({ "prompt": "x = 1\n", "max_tokens": 1 }),
        )
        .await;
        assert_eq!(s, 200);
        // Loose on time (a busy machine starves llama.cpp's threads); the log below is the proof.
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        // The request lines reach the log through a pipe and a reader thread: wait for them.
        let log = server.wait_log(|l| l.contains("stop=cancelled") && l.contains(" closed"));
        let cancelled = log
            .lines()
            .find(|l| l.contains("stop=cancelled"))
            .unwrap_or_else(|| panic!("{log}"));
        let generated: usize = cancelled
            .split("generated=")
            .nth(1)
            .and_then(|g| g.split(' ').next())
            .and_then(|g| g.parse().ok())
            .unwrap();
        assert!(generated < 1000, "{cancelled}");
        // The queued request whose client left never ran: no tokens in its line.
        let closed: Vec<&str> = log.lines().filter(|l| l.contains(" closed")).collect();
        assert_eq!(closed.len(), 1, "{log}");
        assert!(!closed[0].contains("prompt="), "{log}");

        // Eight at once, each the answer `run` gives alone.
        let users = [
            USER,
            "Reverse a string in Python.",
            "def fibonacci(n):",
            "Sort a list of numbers.",
        ];
        let mut wants = Vec::new();
        for u in users {
            wants.push(run_text(None, u, 24));
        }
        let client = server.openai();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let client = client.clone();
                let user = users[i % users.len()];
                tokio::spawn(async move {
                    let req = CreateChatCompletionRequestArgs::default()
                        .model("m")
                        .messages(vec![ChatCompletionRequestUserMessage::from(user).into()])
                        .max_completion_tokens(24u32)
                        .temperature(0.0)
                        .build()
                        .unwrap();
                    let r = client.chat().create(req).await.unwrap();
                    r.choices[0].message.content.clone().unwrap()
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(
                t.await.unwrap().trim_end(),
                wants[i % users.len()].trim_end(),
                "client {i}"
            );
        }
    });
}

#[test]
fn bad_requests_get_their_status_and_a_message_naming_the_field() {
    let server = Server::start(&["--max-body-mib", "1"]);
    let rt = runtime();
    rt.block_on(async {
        let raw = |path: &'static str, body: &'static str| {
            let url = server.url(path);
            async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                (s, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let msg = |v: &Value| {
            v["error"]["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("")
                .to_string()
        };
        let cases: &[(&str, &str, u16, &str)] = &[
            ("/v1/chat/completions", "{", 400, "not valid JSON"),
            ("/v1/chat/completions", "", 400, "no body"),
            (
                "/v1/chat/completions",
                r#"{"messages": "hi"}"#,
                400,
                "messages",
            ),
            (
                "/v1/chat/completions",
                r#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
                400,
                "messages[0].role: unknown role 'wizard'",
            ),
            (
                "/v1/chat/completions",
                r#"{"messages": [{"role": "user", "content": "x"}], "temperature": "warm"}"#,
                400,
                "temperature",
            ),
            (
                "/v1/chat/completions",
                r#"{"messages": [{"role": "user", "content": "x"}], "top_p": 7}"#,
                400,
                "top_p: 7 is outside",
            ),
            (
                "/v1/completions",
                r#"{"prompt": ["a", "b"]}"#,
                400,
                "one prompt per request",
            ),
            ("/v1/completions", r#"{"max_tokens": 3}"#, 400, "prompt"),
            (
                "/infill",
                r#"{"input_extra": [{"filename": "a.py"}]}"#,
                400,
                "input_extra[0]",
            ),
            ("/infill", r#"{"n_indent": -2}"#, 400, "n_indent"),
            (
                "/api/generate",
                r#"{"prompt": "x", "options": {"temperature": -1}}"#,
                400,
                "options.temperature",
            ),
            (
                "/api/chat",
                r#"{"messages": [{"role": "tool", "content": "x"}]}"#,
                400,
                "messages[0].role",
            ),
            (
                "/detokenize",
                r#"{"tokens": [999999999]}"#,
                400,
                "not a token id",
            ),
            ("/nope", "{}", 404, "no endpoint POST /nope"),
        ];
        for (path, body, status, needle) in cases {
            let (s, v) = raw(path, body).await;
            assert_eq!(s, *status, "{path} {body}: {v}");
            assert!(msg(&v).contains(needle), "{path} {body}: {v}");
        }
        // A prompt longer than the context: 400 with the numbers, never truncated.
        let long = "def f(x):\n    return x\n".repeat(600);
        let (s, v) = post(&server.url("/v1/completions"), json!({ "prompt": long })).await;
        assert_eq!(s, 400);
        assert!(msg(&v).contains("the context holds 2048"), "{v}");
        // A cap beyond the context is clamped, and says so.
        let r = reqwest::Client::new()
            .post(server.url("/v1/completions"))
            .json(&json!({ "prompt": "x", "max_tokens": 100000, "stop": ["\n"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-dscoder-max-tokens-clamped"));
        // Bodies over the limit.
        let big = "x".repeat(2 << 20);
        let (s, _) = post(&server.url("/v1/completions"), json!({ "prompt": big })).await;
        assert_eq!(s, 413);
        // The server is still serving.
        let (s, v) = post(&server.url("/tokenize"), json!({ "content": "def f():" })).await;
        assert_eq!(s, 200, "{v}");
        let tokens = v["tokens"].clone();
        let (_, v) = post(&server.url("/detokenize"), json!({ "tokens": tokens })).await;
        assert_eq!(v["content"], "def f():");
    });
}

#[test]
fn the_api_key_is_required_everywhere_but_health() {
    let server = Server::start(&["--api-key", "s3cret"]);
    let rt = runtime();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let get = |path: &str, key: Option<&str>| {
            let mut r = c.get(server.url(path));
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            r.send()
        };
        assert_eq!(get("/health", None).await.unwrap().status(), 200);
        assert_eq!(get("/v1/models", None).await.unwrap().status(), 401);
        assert_eq!(get("/api/tags", Some("wrong")).await.unwrap().status(), 401);
        let ok = get("/v1/models", Some("s3cret")).await.unwrap();
        assert_eq!(ok.status(), 200);
        let v: Value = ok.json().await.unwrap();
        assert_eq!(v["data"][0]["object"], "model");
        let denied = c
            .post(server.url("/v1/completions"))
            .json(&json!({ "prompt": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 401);
        let v: Value = denied.json().await.unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
    });
    assert!(server.stop().success(), "SIGTERM stops the server with 0");
}

/// Past the queue, 503 with Retry-After; the queued request still gets its answer.
#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let server = Server::start(&["--queue", "1"]);
    let rt = runtime();
    rt.block_on(async {
        // The worker is busy for seconds with this one (greedy, it repeats itself).
        let busy = reqwest::Client::new()
            .post(server.url("/v1/completions"))
            .json(&json!({ "prompt": "a = 1\na = 1\na = 1\na = 1\n", "max_tokens": 1500, "stream": true }))
            .send()
            .await
            .unwrap();
        let mut busy = busy.bytes_stream();
        busy.next().await.unwrap().unwrap();
        // One waits in the queue...
        let url = server.url("/v1/completions");
        let queued = tokio::spawn(async move {
            post(&url, json!({ "prompt": "x = 1\n", "max_tokens": 2 })).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ...and the next finds it full.
        let r = reqwest::Client::new()
            .post(server.url("/v1/completions"))
            .json(&json!({ "prompt": "y = 2\n", "max_tokens": 2 }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("busy"), "{v}");
        drop(busy);
        let (s, v) = queued.await.unwrap();
        assert_eq!(s, 200, "{v}");
    });
}
