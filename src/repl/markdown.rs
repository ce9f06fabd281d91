//! Markdown-aware printing of the assistant's streamed reply: fenced code blocks are
//! syntax-highlighted (syntect, 24-bit colour) when stdout is a terminal.
//!
//! When stdout is not a terminal every piece is written through untouched, so pipes, scripts and
//! `tests/it/chat.rs` get the model's bytes exactly.
//!
//! The reply arrives a few characters at a time and has to stay live, so prose is written as soon
//! as it arrives. Only two things are held back:
//! - the start of a prose line while it could still turn into a fence (indentation and up to two
//!   backticks), because a marker can arrive split: "``", then "`py", then "thon\n";
//! - fence lines and the lines inside a block, up to their newline, because the info string
//!   names the language and the highlighter works a whole line at a time (it carries state, such
//!   as an open string, from one line to the next).
//!
//! Any line that starts with ``` opens or closes a block, the same rule as
//! [`code_blocks`], so what is highlighted is what `/write` saves. Every
//! coloured write ends with a reset, so a reply cut short (Ctrl-C, an error, even a second Ctrl-C
//! that exits) never leaves the terminal coloured.

use std::io::{self, Write};
use std::sync::OnceLock;

use syntect::easy::HighlightLines;
use syntect::highlighting::{Theme, ThemeSet};
use syntect::parsing::SyntaxSet;
use syntect::util::as_24_bit_terminal_escaped;

/// Light foreground colours that read well on the dark backgrounds most terminals use; the
/// background is left alone.
const THEME: &str = "base16-ocean.dark";
const FENCE: &str = "```";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

struct Assets {
    syntaxes: SyntaxSet,
    theme: Theme,
}

/// Loaded on the first code block, so replies without code (and piped output) never pay for it.
fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| Assets {
        syntaxes: SyntaxSet::load_defaults_newlines(),
        theme: ThemeSet::load_defaults()
            .themes
            .remove(THEME)
            .unwrap_or_default(),
    })
}

/// Where the stream is within the current line.
enum Line {
    /// At the start of a prose line; `held` may still become a fence.
    Start,
    /// Inside a prose line that is not a fence: written straight through.
    Prose,
    /// Inside a fence line or a code line: `held` collects it up to the newline.
    Buffered,
}

/// What the start of a line says about it being a fence.
enum Prefix {
    Fence,
    NotFence,
    Undecided,
}

fn classify(start: &str) -> Prefix {
    let rest = start.trim_start_matches(|c: char| c.is_whitespace() && c != '\n');
    if rest.starts_with(FENCE) {
        Prefix::Fence
    } else if rest.bytes().all(|b| b == b'`') {
        Prefix::Undecided
    } else {
        Prefix::NotFence
    }
}

/// Prints a reply fed in pieces as it streams; see the module doc.
pub struct MarkdownStream {
    highlight: bool,
    line: Line,
    held: String,
    /// The open code block's highlighter; `None` in prose.
    code: Option<HighlightLines<'static>>,
}

impl MarkdownStream {
    /// `highlight` is whether stdout is a terminal; without it the text passes through as is.
    pub fn new(highlight: bool) -> Self {
        MarkdownStream {
            highlight,
            line: Line::Start,
            held: String::new(),
            code: None,
        }
    }

    /// Prints the next piece of the reply (whatever of it can be printed yet).
    pub fn push(&mut self, piece: &str, out: &mut impl Write) -> io::Result<()> {
        if !self.highlight {
            return out.write_all(piece.as_bytes());
        }
        let mut rest = piece;
        while !rest.is_empty() {
            let line_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
            match self.line {
                Line::Prose => {
                    out.write_all(&rest.as_bytes()[..line_end])?;
                    if rest[..line_end].ends_with('\n') {
                        self.line = Line::Start;
                    }
                    rest = &rest[line_end..];
                }
                Line::Buffered => {
                    self.held.push_str(&rest[..line_end]);
                    rest = &rest[line_end..];
                    if self.held.ends_with('\n') {
                        self.end_line(out)?;
                    }
                }
                // One character at a time: the decision usually comes within a character or two.
                Line::Start => {
                    let c = rest.chars().next().unwrap_or('\n');
                    self.held.push(c);
                    rest = &rest[c.len_utf8()..];
                    match classify(&self.held) {
                        Prefix::Undecided => {}
                        Prefix::Fence => self.line = Line::Buffered,
                        Prefix::NotFence => {
                            out.write_all(self.held.as_bytes())?;
                            self.held.clear();
                            self.line = if c == '\n' { Line::Start } else { Line::Prose };
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends the reply (finished or interrupted): prints what is held back and starts afresh.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        let result = match self.line {
            // An undecided start such as "``" at the very end was prose after all.
            Line::Start => out.write_all(self.held.as_bytes()),
            Line::Prose => Ok(()),
            Line::Buffered if self.held.is_empty() => Ok(()),
            Line::Buffered => self.end_line(out),
        };
        *self = MarkdownStream::new(self.highlight);
        result
    }

    /// Prints the buffered line (with or without its newline): a fence, dimmed, which opens or
    /// closes a block, or a line of code, highlighted.
    fn end_line(&mut self, out: &mut impl Write) -> io::Result<()> {
        let line = std::mem::take(&mut self.held);
        let (text, newline) = match line.strip_suffix('\n') {
            Some(text) => (text, "\n"),
            None => (line.as_str(), ""),
        };
        let is_fence = text.trim_start().starts_with(FENCE);
        match self.code.as_mut() {
            Some(highlighter) if !is_fence => {
                // The parser wants the newline; the reset goes before it so that no colour
                // reaches the next line.
                let coloured = match highlighter.highlight_line(&line, &assets().syntaxes) {
                    Ok(ranges) => as_24_bit_terminal_escaped(&ranges, false),
                    Err(_) => line.clone(),
                };
                let coloured = coloured.strip_suffix('\n').unwrap_or(&coloured);
                write!(out, "{coloured}{RESET}{newline}")?;
                self.line = Line::Buffered;
            }
            _ => {
                write!(out, "{DIM}{text}{RESET}{newline}")?;
                self.code = match self.code {
                    Some(_) => None,
                    None => Some(open_block(text)),
                };
                self.line = if self.code.is_some() {
                    Line::Buffered
                } else {
                    Line::Start
                };
            }
        }
        Ok(())
    }
}

/// A highlighter for the block that `fence` opens; an unknown or missing language is plain text.
fn open_block(fence: &str) -> HighlightLines<'static> {
    let assets = assets();
    let info = fence.trim_start().trim_start_matches('`').trim();
    let language = info
        .split(|c: char| c.is_whitespace() || c == ',' || c == '{')
        .next()
        .unwrap_or("");
    let syntax = Some(language)
        .filter(|l| !l.is_empty())
        .and_then(|l| assets.syntaxes.find_syntax_by_token(l))
        .unwrap_or_else(|| assets.syntaxes.find_syntax_plain_text());
    HighlightLines::new(syntax, &assets.theme)
}

/// The fenced code blocks of a markdown reply, in order (for `/write N PATH`).
pub fn code_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(String::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push_str(line);
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prose, indented and plain fences, a language syntect lacks, backticks that are not fences,
    /// and a block left open with its last line unfinished, as an interrupted reply leaves it.
    const REPLY: &str = "Here is the fix → in two languages:\n\n```python\ndef f(x):\n    \
        return \"a\\nb\" + x  # note\n```\n\n  ```rust\n  fn main() {\n      println!(\"{}\", 1);\n  \
        }\n  ```\nInline `code` and `` two `` ticks.\n``\n   \n```zork extra\nmystery\n```\nThen:\n\
        ```js\nlet s = `multi\nline`;\nconsole.log(s)";

    fn render(pieces: &[&str], highlight: bool) -> String {
        let mut md = MarkdownStream::new(highlight);
        let mut out = Vec::new();
        for p in pieces {
            md.push(p, &mut out).unwrap();
        }
        md.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn strip_ansi(s: &str) -> String {
        let mut plain = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                assert_eq!(chars.next(), Some('['));
                // Parameters, then one final byte in '@'..='~'.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// Splits `text` into pieces of the given lengths in characters (cycled), so a multi-byte
    /// character is never cut.
    fn split(text: &str, lengths: impl IntoIterator<Item = usize>) -> Vec<&str> {
        let bounds: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let mut pieces = Vec::new();
        let mut at = 0;
        for n in lengths.into_iter().filter(|&n| n > 0) {
            if at + 1 >= bounds.len() {
                break;
            }
            let next = (at + n).min(bounds.len() - 1);
            pieces.push(&text[bounds[at]..bounds[next]]);
            at = next;
        }
        assert_eq!(pieces.concat(), text);
        pieces
    }

    /// xorshift64: a fixed seed gives the same "random" splits on every run.
    fn splits_at_random(text: &str, seed: u64, count: usize) -> Vec<Vec<&str>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let lengths: Vec<usize> = (0..text.len())
                    .map(|_| 1 + (next() % 12) as usize)
                    .collect();
                split(text, lengths)
            })
            .collect()
    }

    fn small_splits(text: &str) -> Vec<Vec<&str>> {
        let mut all = Vec::new();
        for size in 1..=3 {
            for offset in 0..size {
                all.push(split(text, [offset].into_iter().chain([size; 1 << 12])));
            }
        }
        all.push(split(text, [1, 2, 3].repeat(1 << 10)));
        all.push(split(text, [3, 1, 2, 2, 1].repeat(1 << 10)));
        all
    }

    #[test]
    fn stripping_the_colours_gives_back_the_reply_for_any_split() {
        let whole = render(&[REPLY], true);
        assert_eq!(strip_ansi(&whole), REPLY);
        for pieces in small_splits(REPLY)
            .into_iter()
            .chain(splits_at_random(REPLY, 0x5eed, 300))
        {
            let out = render(&pieces, true);
            assert_eq!(strip_ansi(&out), REPLY, "split: {pieces:?}");
            // How the reply was cut into pieces does not change what is printed.
            assert_eq!(out, whole, "split: {pieces:?}");
        }
    }

    #[test]
    fn code_lines_are_coloured_and_prose_is_not() {
        let reply = "Try this:\n```python\ndef f(x):\n    return x * 2\n```\nDone, `f` doubles.\n";
        let out = render(&split(reply, [2; 100]), true);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6);
        for prose in [lines[0], lines[5]] {
            assert!(!prose.contains('\x1b'), "{prose:?}");
        }
        for fence in [lines[1], lines[4]] {
            assert!(
                fence.starts_with(DIM) && fence.ends_with(RESET),
                "{fence:?}"
            );
        }
        for code in [lines[2], lines[3]] {
            assert!(code.contains("\x1b[38;2;"), "{code:?}");
            assert!(code.ends_with(RESET), "{code:?}");
        }
        // Keywords and names get different colours.
        assert!(
            lines[2].matches("\x1b[38;2;").count() >= 2,
            "{:?}",
            lines[2]
        );
    }

    #[test]
    fn plain_mode_is_byte_identical() {
        for pieces in small_splits(REPLY)
            .into_iter()
            .chain(splits_at_random(REPLY, 7, 50))
        {
            assert_eq!(render(&pieces, false), REPLY);
        }
    }

    #[test]
    fn a_fence_split_across_pieces_is_still_a_fence() {
        let pieces = [
            "Hi\n", "``", "`py", "thon\n", "x = 1\n", "``", "`\n", "done\n",
        ];
        let out = render(&pieces, true);
        assert_eq!(strip_ansi(&out), pieces.concat());
        assert_eq!(out, render(&[&pieces.concat()], true));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], format!("{DIM}```python{RESET}"));
        assert!(lines[2].contains("\x1b[38;2;"));
        assert_eq!(lines[4], "done");

        // Every possible split of a short reply full of near-fences.
        let text = "``\n ```py\nx\n```";
        let whole = render(&[text], true);
        let n = text.chars().count();
        for mask in 0u32..1 << (n - 1) {
            let lengths = (0..n).scan(0, |start, i| {
                if i + 1 == n || mask & (1 << i) != 0 {
                    let len = i + 1 - *start;
                    *start = i + 1;
                    Some(Some(len))
                } else {
                    Some(None)
                }
            });
            let pieces = split(text, lengths.flatten());
            assert_eq!(render(&pieces, true), whole, "split: {pieces:?}");
        }
        assert_eq!(strip_ansi(&whole), text);
    }

    #[test]
    fn prose_is_printed_as_it_arrives() {
        let mut md = MarkdownStream::new(true);
        let mut out = Vec::new();
        md.push("Hello wor", &mut out).unwrap();
        assert_eq!(out, b"Hello wor");
        md.push("ld\n``", &mut out).unwrap();
        // Two backticks at a line start could still open a fence, so only they wait.
        assert_eq!(out, b"Hello world\n");
        md.push(" not a fence", &mut out).unwrap();
        assert_eq!(out, b"Hello world\n`` not a fence");
        md.finish(&mut out).unwrap();
        assert_eq!(out, b"Hello world\n`` not a fence");
    }

    #[test]
    fn code_blocks_are_found_in_order() {
        let text = "Here:\n```python\ndef f():\n    pass\n```\nand\n```\nx = 1\n```\n";
        assert_eq!(code_blocks(text), vec!["def f():\n    pass\n", "x = 1\n"]);
        assert!(code_blocks("no code").is_empty());
    }
}
