//! A GGUF's tokenizer alone: llama.cpp's `vocab_only` load reads the metadata and no weights,
//! so a file's tokenization can be checked in milliseconds (a metadata-only file will do).

use std::path::Path;

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

use super::{backend, EngineError};

/// llama.cpp's tokenizer of one GGUF file.
pub struct Vocab {
    model: LlamaModel,
}

impl Vocab {
    pub fn load(path: &Path) -> Result<Vocab, EngineError> {
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend(), path, &params).map_err(|_| {
            EngineError::Load {
                path: path.display().to_string(),
            }
        })?;
        Ok(Vocab { model })
    }

    /// `text` as token ids, without a BOS, with special-token text parsed as the special token
    /// (as Hugging Face's `encode(text, add_special_tokens=False)` does with added tokens).
    pub fn tokenize(&self, text: &str) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, true)
            .into_iter()
            .map(|t| t.0)
            .collect()
    }
}
