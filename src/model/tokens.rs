//! DeepSeek-V2's special tokens and formats, as text. Prompts are built from token ids (the
//! engine looks these up in the vocabulary), never by pasting this text into user input: text
//! that came from a user is tokenized as text.

/// Beginning and end of a sequence.
pub const BOS: &str = "<｜begin▁of▁sentence｜>";
pub const EOS: &str = "<｜end▁of▁sentence｜>";

/// Fill-in-the-middle markers, in PSM order: `BOS FIM_BEGIN prefix FIM_HOLE suffix FIM_END`,
/// then the model writes the middle and ends with EOS. llama.cpp's loader detects them as its
/// FIM prefix / suffix / middle tokens. (U+FF5C and U+2581 inside, not ASCII.)
pub const FIM_BEGIN: &str = "<｜fim▁begin｜>";
pub const FIM_HOLE: &str = "<｜fim▁hole｜>";
pub const FIM_END: &str = "<｜fim▁end｜>";

/// llama.cpp's name for DeepSeek-V2's built-in chat format (`User: ...\n\nAssistant:`), used
/// when a file carries no template of its own.
pub const CHAT_TEMPLATE_NAME: &str = "deepseek2";
