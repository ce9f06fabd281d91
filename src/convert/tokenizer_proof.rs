//! The proof that a converted file tokenizes as the checkpoint does.
//!
//! [`super::tokenizer`] copies `tokenizer.json` into llama.cpp's keys and names a pre-tokenizer;
//! if that name is wrong (a fine-tune with an odd tokenizer, a wrong `--pre`), every token id
//! after the first mismatch is off and the model answers in garbage: the "replies in Chinese"
//! reports of other runners. So before writing any weights `convert` tokenizes a sample (code in
//! several languages, CJK, emoji, whitespace runs, digits, the special tokens' text) with the
//! checkpoint's own `tokenizer.json` through Hugging Face's `tokenizers` (the reference) and
//! with the new file's metadata through llama.cpp, and refuses on the first difference.

use std::path::Path;

use crate::engine::vocab::Vocab;
use crate::engine::EngineError;

/// What is tokenized: each piece on its own, so a difference names a short text.
pub const SAMPLE: &[&str] = &[
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n    let v: Vec<u64> = (1..=10).map(|x| x * x).collect();\n    println!(\"{v:?}\");\n}\n",
    "const sum = (xs) => xs.reduce((a, b) => a + b, 0); // ES2015\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
    "SELECT id, COUNT(*) FROM users WHERE created_at >= '2024-01-01' GROUP BY id;\n",
    "for f in *.py; do echo \"$f\"; done && ls -la | grep -v '^d'\n",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "1234567 3.14159 0xFF 1e-9 100000000000 007",
    "快速排序算法的实现：选择一个基准元素，然后分区。",
    "こんにちは、世界！カタカナとひらがな。",
    "안녕하세요 세계, 코드를 작성합니다.",
    "Deploy 🚀 done ✅ thumbs 👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵",
    "naïve café Ünïcödé ß Ελληνικά Русский العربية हिन्दी",
    "a  b   c\t\td\n\n\n    indented\r\n  \n        \n",
    "\t\t\t// tabs\n    \n\n\n\n}\n",
    "   leading spaces and trailing   ",
];

/// Specials from `tokenizer.json` whose text is tried inside ordinary text.
const SPECIALS_TRIED: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("{path}: Hugging Face's tokenizers cannot load it: {message}")]
    Reference { path: String, message: String },
    #[error("{text:?} tokenizes as {ours:?} in the written file but as {reference:?} with the checkpoint's tokenizer.json: the pre-tokenizer ({pre}) does not match this tokenizer. If you know which llama.cpp pre-tokenizer it uses, pass --pre NAME; --skip-tokenizer-check converts anyway")]
    Mismatch {
        text: String,
        ours: Vec<i32>,
        reference: Vec<i32>,
        pre: String,
    },
    #[error("llama.cpp cannot read the written tokenizer (pre-tokenizer '{pre}'): is it a name llama.cpp knows (deepseek-llm for DeepSeek-V2)? DSCODER_LLAMA_LOG=1 shows llama.cpp's own message")]
    Unreadable {
        pre: String,
        #[source]
        source: EngineError,
    },
}

/// Checks `gguf` (a metadata-only file will do) against `tokenizer_json`; returns the number of
/// texts compared. `pre` is the pre-tokenizer name written, for the message.
pub fn prove(tokenizer_json: &Path, gguf: &Path, pre: &str) -> Result<usize, ProofError> {
    let reference =
        tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| ProofError::Reference {
            path: tokenizer_json.display().to_string(),
            message: e.to_string(),
        })?;
    let vocab = Vocab::load(gguf).map_err(|source| ProofError::Unreadable {
        pre: pre.to_string(),
        source,
    })?;
    let specials: Vec<String> = reference
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, t)| (id, t.content))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .take(SPECIALS_TRIED)
        .collect();
    let with_specials: Vec<String> = specials
        .iter()
        .map(|s| format!("x = 1{s}def f():{s} pass"))
        .collect();
    let texts = SAMPLE
        .iter()
        .copied()
        .chain(with_specials.iter().map(String::as_str));
    let mut n = 0;
    for text in texts {
        let want: Vec<i32> = reference
            .encode(text, false)
            .map_err(|e| ProofError::Reference {
                path: tokenizer_json.display().to_string(),
                message: e.to_string(),
            })?
            .get_ids()
            .iter()
            .map(|&i| i as i32)
            .collect();
        let got = vocab.tokenize(text);
        if got != want {
            return Err(ProofError::Mismatch {
                text: text.to_string(),
                ours: got,
                reference: want,
                pre: pre.to_string(),
            });
        }
        n += 1;
    }
    Ok(n)
}
