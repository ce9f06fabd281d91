//! Prompts as token ids: chat turns through the model's template, and fill-in-the-middle.
//!
//! FIM follows DeepSeek-Coder-V2's training format, PSM order:
//! `BOS <｜fim▁begin｜> [extra files] prefix <｜fim▁hole｜> suffix <｜fim▁end｜>`, after which the
//! model writes the middle and ends with EOS. The markers are put in as token ids; the prefix,
//! suffix and extra files are tokenized as plain text, so marker text inside a file stays text.
//!
//! Budget: the prompt plus the tokens to generate must fit the context. When they do not, the
//! extra files go first (from the first one given, the farthest from the cursor by llama.vim's
//! convention), then the prefix loses its start and the suffix its end; the suffix keeps at
//! least a quarter of the room. Nothing is dropped silently: [`FimPrompt::dropped`] counts it.

use crate::chat::Message;
use crate::engine::{Engine, EngineError, Generator};

/// Renders messages (system prompt first) with the model's chat template, ending with the
/// assistant's turn.
pub fn render_chat(engine: &Engine, messages: &[Message]) -> Result<String, EngineError> {
    let pairs: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    engine.apply_chat_template(&pairs)
}

/// The token ids of a rendered chat, with BOS as the model wants it. The template's own markers
/// become control tokens; text inside the messages never does: where a message contains the
/// text of a control token (a user typing `<｜end▁of▁sentence｜>`, a file of a tokenizer config),
/// that text is tokenized as text.
pub fn chat_tokens(engine: &Engine, messages: &[Message]) -> Result<Vec<i32>, EngineError> {
    let rendered = render_chat(engine, messages)?;
    let literal = control_text_in_messages(&rendered, messages, engine.control_texts());
    if literal.is_empty() {
        return Ok(engine.tokenize(&rendered, true));
    }
    // Special-token parsing everywhere but in those ranges.
    let mut tokens = Vec::new();
    let mut at = 0;
    for (a, b) in literal {
        tokens.extend(engine.tokenize_with(&rendered[at..a], at == 0, true));
        tokens.extend(engine.tokenize_with(&rendered[a..b], false, false));
        at = b;
    }
    tokens.extend(engine.tokenize_with(&rendered[at..], false, true));
    Ok(tokens)
}

/// Byte ranges of `rendered` where a message's content (found verbatim, in order) contains
/// the text of a control token; sorted, not overlapping.
fn control_text_in_messages(
    rendered: &str,
    messages: &[Message],
    controls: &[String],
) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut from = 0;
    for m in messages {
        if m.content.is_empty() {
            continue;
        }
        let Some(found) = rendered[from..].find(&m.content) else {
            continue;
        };
        let start = from + found;
        let content = &rendered[start..start + m.content.len()];
        for c in controls {
            for (i, _) in content.match_indices(c.as_str()) {
                ranges.push((start + i, start + i + c.len()));
            }
        }
        from = start + m.content.len();
    }
    ranges.sort_unstable();
    // Merge overlaps (one control text inside another).
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Another file given as context for a completion (llama.cpp's `input_extra`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExtraFile {
    pub name: String,
    pub text: String,
}

/// What a fill-in-the-middle request asks for.
#[derive(Clone, Debug, Default)]
pub struct FimInput {
    /// Text before the cursor.
    pub prefix: String,
    /// Text after the cursor.
    pub suffix: String,
    /// Other files, placed before the prefix.
    pub extra: Vec<ExtraFile>,
}

/// Tokens dropped to fit the context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// From the start of the prefix.
    pub prefix: usize,
    /// From the end of the suffix.
    pub suffix: usize,
    /// Whole extra files, and their tokens.
    pub extra_files: usize,
    pub extra: usize,
}

impl Dropped {
    pub fn any(&self) -> bool {
        self.prefix + self.suffix + self.extra > 0
    }
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dropped {} prefix tokens, {} suffix tokens and {} extra-context tokens ({} files) to fit the context",
            self.prefix, self.suffix, self.extra, self.extra_files
        )
    }
}

/// A FIM prompt ready to generate from.
#[derive(Clone, Debug)]
pub struct FimPrompt {
    pub tokens: Vec<i32>,
    pub dropped: Dropped,
}

/// How an extra file reads inside the prompt.
fn extra_text(e: &ExtraFile) -> String {
    let mut t = format!("# {}\n{}", e.name, e.text);
    if !t.ends_with('\n') {
        t.push('\n');
    }
    t.push('\n');
    t
}

/// Builds the FIM prompt so that it leaves room in the context for a middle of `max_tokens`
/// (at most half the context: a huge cap must not squeeze the code out of the prompt).
pub fn fim_tokens(
    engine: &Engine,
    input: &FimInput,
    max_tokens: usize,
) -> Result<FimPrompt, EngineError> {
    let room = max_tokens.min(engine.ctx_size() as usize / 2).max(1);
    let (pre, suf, mid) = engine.fim_tokens()?;
    let head: Vec<i32> = engine.bos().into_iter().chain([pre]).collect();
    let fixed = head.len() + 2;
    let budget = (engine.ctx_size() as usize).saturating_sub(room + fixed);
    let prefix = engine.tokenize_text(&input.prefix);
    let suffix = engine.tokenize_text(&input.suffix);
    let extras: Vec<Vec<i32>> = input
        .extra
        .iter()
        .map(|e| engine.tokenize_text(&extra_text(e)))
        .collect();
    let fit = fit(
        prefix.len(),
        suffix.len(),
        &extras.iter().map(Vec::len).collect::<Vec<_>>(),
        budget,
    );
    let mut tokens = head;
    for e in &extras[fit.dropped.extra_files..] {
        tokens.extend_from_slice(e);
    }
    tokens.extend_from_slice(&prefix[fit.dropped.prefix..]);
    tokens.push(suf);
    tokens.extend_from_slice(&suffix[..suffix.len() - fit.dropped.suffix]);
    tokens.push(mid);
    Ok(FimPrompt {
        tokens,
        dropped: fit.dropped,
    })
}

struct Fit {
    dropped: Dropped,
}

/// The budget rule, on token counts: extra files go first (in order), then the prefix's start
/// and the suffix's end, the suffix keeping at least a quarter of the budget.
fn fit(prefix: usize, suffix: usize, extras: &[usize], budget: usize) -> Fit {
    let mut dropped = Dropped::default();
    let mut extra_total: usize = extras.iter().sum();
    for &e in extras {
        if prefix + suffix + extra_total <= budget {
            break;
        }
        extra_total -= e;
        dropped.extra += e;
        dropped.extra_files += 1;
    }
    if prefix + suffix > budget {
        let keep_suffix = suffix.min((budget / 4).max(budget.saturating_sub(prefix)));
        let keep_prefix = prefix.min(budget - keep_suffix);
        dropped.prefix = prefix - keep_prefix;
        dropped.suffix = suffix - keep_suffix;
    }
    Fit { dropped }
}

/// Ends a completion at the end of the current block: at the first line, after the first one,
/// that starts with less indentation than `n_indent` (llama.vim's `n_indent`). That line is
/// dropped; text is held back only while a new line's indentation is still undecided.
#[derive(Debug)]
pub struct BlockEnd {
    n_indent: usize,
    /// Text after the last newline, not yet emitted because its indentation is unknown.
    held: String,
    /// After a newline: reading the next line's indentation.
    at_line_start: bool,
    ended: bool,
}

impl BlockEnd {
    pub fn new(n_indent: usize) -> BlockEnd {
        BlockEnd {
            n_indent,
            held: String::new(),
            at_line_start: false,
            ended: false,
        }
    }

    /// The indentation of the cursor's line: what `complete --block` stops below.
    pub fn indent_of_last_line(prefix: &str) -> usize {
        let line = prefix.rsplit('\n').next().unwrap_or("");
        line.chars().take_while(|c| *c == ' ' || *c == '\t').count()
    }

    /// Adds text; returns what may be emitted and whether the block has ended.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.ended {
            return (String::new(), true);
        }
        let mut out = String::new();
        for c in text.chars() {
            if !self.at_line_start {
                // Inside a line (the cursor's own line included) everything passes.
                out.push(c);
                self.at_line_start = c == '\n';
                continue;
            }
            match c {
                ' ' | '\t' => self.held.push(c),
                // A blank line decides nothing.
                '\n' => {
                    out.push_str(&std::mem::take(&mut self.held));
                    out.push(c);
                }
                _ if self.held.chars().count() < self.n_indent => {
                    self.ended = true;
                    self.held.clear();
                    return (out, true);
                }
                _ => {
                    out.push_str(&std::mem::take(&mut self.held));
                    out.push(c);
                    self.at_line_start = false;
                }
            }
        }
        (out, false)
    }

    /// Generated `text` through an optional block end: what may be shown, the generator being
    /// cancelled once the block has ended.
    pub fn apply(block: Option<&mut BlockEnd>, text: String, generator: &mut Generator) -> String {
        match block {
            Some(b) => {
                let (emit, ended) = b.push(&text);
                if ended {
                    generator.cancel();
                }
                emit
            }
            None => text,
        }
    }

    /// What is held back when generation ends on its own.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_fits_when_there_is_room() {
        assert_eq!(fit(100, 50, &[30, 20], 200).dropped, Dropped::default());
    }

    #[test]
    fn extra_files_are_dropped_first_in_order() {
        let d = fit(100, 50, &[30, 20], 175).dropped;
        assert_eq!((d.extra_files, d.extra, d.prefix, d.suffix), (1, 30, 0, 0));
        let d = fit(100, 50, &[30, 20], 150).dropped;
        assert_eq!((d.extra_files, d.extra, d.prefix, d.suffix), (2, 50, 0, 0));
    }

    #[test]
    fn prefix_and_suffix_are_cut_far_from_the_cursor() {
        // A long prefix gives way; the short suffix is kept whole.
        let d = fit(1000, 50, &[], 400).dropped;
        assert_eq!((d.prefix, d.suffix), (650, 0));
        // Both long: the suffix keeps a quarter.
        let d = fit(1000, 1000, &[10], 400).dropped;
        assert_eq!((d.prefix, d.suffix, d.extra_files), (700, 900, 1));
        // A short prefix leaves the rest to the suffix.
        let d = fit(50, 1000, &[], 400).dropped;
        assert_eq!((d.prefix, d.suffix), (0, 650));
        // No room at all.
        let d = fit(10, 10, &[], 0).dropped;
        assert_eq!((d.prefix, d.suffix), (10, 10));
    }

    fn block_end(n: usize, pieces: &[&str]) -> (String, bool) {
        let mut b = BlockEnd::new(n);
        let mut out = String::new();
        for p in pieces {
            let (emit, ended) = b.push(p);
            out += &emit;
            if ended {
                return (out, true);
            }
        }
        (out + &b.finish(), false)
    }

    #[test]
    fn a_block_ends_at_the_first_line_indented_less() {
        let text = "x = 1\n    y = 2\n\n    return y\ndef g():\n";
        for width in 1..=3 {
            let chars: Vec<char> = text.chars().collect();
            let pieces: Vec<String> = chars.chunks(width).map(|c| c.iter().collect()).collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            assert_eq!(
                block_end(4, &refs),
                ("x = 1\n    y = 2\n\n    return y\n".to_string(), true),
                "pieces of {width}"
            );
        }
        // Indented enough throughout: nothing ends, nothing is lost.
        assert_eq!(
            block_end(2, &["a\n  b\n  "]),
            ("a\n  b\n  ".to_string(), false)
        );
        assert_eq!(BlockEnd::indent_of_last_line("def f():\n    return"), 4);
        assert_eq!(BlockEnd::indent_of_last_line("\tx"), 1);
    }

    #[test]
    fn control_text_is_found_only_inside_messages() {
        use crate::chat::Role;
        let eos = "<｜end▁of▁sentence｜>".to_string();
        let messages = [
            Message::new(Role::User, format!("say {eos} now")),
            Message::new(Role::Assistant, "ok"),
        ];
        let rendered = format!("User: say {eos} now\n\nAssistant: ok{eos}");
        let ranges = control_text_in_messages(&rendered, &messages, std::slice::from_ref(&eos));
        assert_eq!(ranges, vec![(10, 10 + eos.len())]);
        assert_eq!(&rendered[ranges[0].0..ranges[0].1], eos);
        let plain = [Message::new(Role::User, "hi")];
        assert!(control_text_in_messages("User: hi", &plain, &[eos]).is_empty());
    }
}
