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
use syntect::highlighting::{Color, Style, Theme, ThemeSet};
use syntect::parsing::SyntaxSet;
use syntect::util::as_24_bit_terminal_escaped;

/// Which terminal background the colours are for. Only foregrounds are painted; the terminal's
/// own background stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Palette {
    /// Light colours for dark backgrounds (most terminals).
    #[default]
    Dark,
    /// Dark colours for light backgrounds.
    Light,
}

impl Palette {
    /// From `COLORFGBG` (`"15;0"`: foreground 15 on background 0), which many terminals
    /// (rxvt, Konsole, iTerm2, some xterms) set: backgrounds 7 and 9-15 are light. Dark
    /// otherwise, including when it is not set.
    pub fn detect() -> Palette {
        let bg = std::env::var("COLORFGBG").ok().and_then(|v| {
            v.rsplit(';')
                .next()
                .and_then(|b| b.trim().parse::<u8>().ok())
        });
        match bg {
            Some(7) | Some(9..=15) => Palette::Light,
            _ => Palette::Dark,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Palette::Dark => "dark",
            Palette::Light => "light",
        }
    }

    fn theme_name(self) -> &'static str {
        match self {
            Palette::Dark => "base16-ocean.dark",
            Palette::Light => "base16-ocean.light",
        }
    }
}

const FENCE: &str = "```";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

struct Assets {
    syntaxes: SyntaxSet,
    dark: Theme,
    light: Theme,
}

impl Assets {
    fn theme(&self, palette: Palette) -> &Theme {
        match palette {
            Palette::Dark => &self.dark,
            Palette::Light => &self.light,
        }
    }
}

/// Loaded on the first code block, so replies without code (and piped output) never pay for it.
fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let mut themes = ThemeSet::load_defaults().themes;
        let mut take = |p: Palette| themes.remove(p.theme_name()).unwrap_or_default();
        Assets {
            syntaxes: SyntaxSet::load_defaults_newlines(),
            dark: take(Palette::Dark),
            light: take(Palette::Light),
        }
    })
}

/// WCAG's contrast ratio of two colours (1 = the same luminance, 21 = black on white).
fn contrast(a: Color, b: Color) -> f64 {
    let luminance = |c: Color| {
        let channel = |v: u8| {
            let v = v as f64 / 255.0;
            if v <= 0.03928 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b)
    };
    let (x, y) = (luminance(a), luminance(b));
    (x.max(y) + 0.05) / (x.min(y) + 0.05)
}

/// Below this contrast with the background a colour is hard to read.
const MIN_CONTRAST: f64 = 2.0;

/// `style` with a foreground that can be read on the theme's background. Themes paint some
/// scopes (syntect's "invalid", for one) in the background colour on a coloured background;
/// with only the foreground printed that text would be invisible, so it gets the theme's
/// ordinary text colour.
fn legible(style: Style, theme: &Theme) -> Style {
    let (Some(bg), Some(fg)) = (theme.settings.background, theme.settings.foreground) else {
        return style;
    };
    if contrast(style.foreground, bg) >= MIN_CONTRAST {
        return style;
    }
    Style {
        foreground: fg,
        ..style
    }
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
    /// On a terminal (or asked for colour): fences are numbered; otherwise text passes through.
    active: bool,
    /// Colours as well (not with NO_COLOR or `--color never`).
    colour: bool,
    palette: Palette,
    /// Inside a code block.
    in_block: bool,
    line: Line,
    held: String,
    /// The open code block's highlighter; `None` in prose.
    code: Option<HighlightLines<'static>>,
    /// Code blocks opened so far in this reply: each opening fence shows its number, the `N`
    /// of `/write N PATH`.
    blocks: usize,
}

impl MarkdownStream {
    /// `highlight`: colours and block numbers (a terminal); without it the text passes through
    /// as is.
    pub fn new(highlight: bool) -> Self {
        Self::with_palette(highlight, Palette::Dark)
    }

    /// [`MarkdownStream::new`] with colours for a light or dark background.
    pub fn with_palette(highlight: bool, palette: Palette) -> Self {
        Self::for_output(highlight, highlight, palette)
    }

    /// `terminal`: stdout is one, so opening fences show their block's number; `colour`: and
    /// code is highlighted (which also implies the numbers).
    pub fn for_output(terminal: bool, colour: bool, palette: Palette) -> Self {
        MarkdownStream {
            active: terminal || colour,
            colour,
            palette,
            in_block: false,
            line: Line::Start,
            held: String::new(),
            code: None,
            blocks: 0,
        }
    }

    /// Prints the next piece of the reply (whatever of it can be printed yet).
    pub fn push(&mut self, piece: &str, out: &mut impl Write) -> io::Result<()> {
        if !self.active {
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
        *self = MarkdownStream::for_output(self.active, self.colour, self.palette);
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
        let (dim, reset) = if self.colour { (DIM, RESET) } else { ("", "") };
        if self.in_block && !is_fence {
            match self.code.as_mut() {
                Some(highlighter) => {
                    // The parser wants the newline; the reset goes before it so that no colour
                    // reaches the next line.
                    let theme = assets().theme(self.palette);
                    let coloured = match highlighter.highlight_line(&line, &assets().syntaxes) {
                        Ok(ranges) => {
                            let ranges: Vec<(Style, &str)> = ranges
                                .into_iter()
                                .map(|(style, text)| (legible(style, theme), text))
                                .collect();
                            as_24_bit_terminal_escaped(&ranges, false)
                        }
                        Err(_) => line.clone(),
                    };
                    let coloured = coloured.strip_suffix('\n').unwrap_or(&coloured);
                    write!(out, "{coloured}{RESET}{newline}")?;
                }
                None => write!(out, "{text}{newline}")?,
            }
            self.line = Line::Buffered;
        } else if self.in_block {
            write!(out, "{dim}{text}{reset}{newline}")?;
            self.in_block = false;
            self.code = None;
            self.line = Line::Start;
        } else {
            self.blocks += 1;
            write!(out, "{dim}{text}  [{}]{reset}{newline}", self.blocks)?;
            self.in_block = true;
            self.code = self.colour.then(|| open_block(text, self.palette));
            self.line = Line::Buffered;
        }
        Ok(())
    }
}

/// A highlighter for the block that `fence` opens; an unknown or missing language is plain text.
fn open_block(fence: &str, palette: Palette) -> HighlightLines<'static> {
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
    HighlightLines::new(syntax, assets.theme(palette))
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

    /// The text without colours and without the block numbers shown after opening fences.
    fn strip_ansi(s: &str) -> String {
        let mut s = s.to_string();
        for n in 1..10 {
            s = s.replace(&format!("  [{n}]{RESET}"), RESET);
        }
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

    /// Opening fences show the block's number, the one `/write N` (and [`code_blocks`]) use;
    /// closing fences show none.
    #[test]
    fn opening_fences_are_numbered_as_write_counts_them() {
        let out = render(&[REPLY], true);
        let labels: Vec<usize> = out
            .lines()
            .filter_map(|l| {
                l.strip_suffix(RESET)?
                    .rsplit_once("  [")?
                    .1
                    .strip_suffix(']')
            })
            .map(|n| n.parse().unwrap())
            .collect();
        // The last block is left open (an interrupted reply); closed, `/write` counts it too.
        let closed = code_blocks(&format!("{REPLY}\n```\n")).len();
        assert_eq!(labels, (1..=closed).collect::<Vec<_>>());
        assert_eq!(labels.len(), 4);
        // A new reply counts from 1 again.
        let mut md = MarkdownStream::new(true);
        let mut out = Vec::new();
        for _ in 0..2 {
            md.push("```py\nx\n```\n", &mut out).unwrap();
            md.finish(&mut out).unwrap();
        }
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.matches("  [1]").count(), 2, "{out:?}");
    }

    /// On a terminal without colours (NO_COLOR, `--color never`) opening fences are still
    /// numbered, with no escape codes; piped output stays the model's exact bytes.
    #[test]
    fn a_terminal_without_colour_still_numbers_the_blocks() {
        let reply = "Two:\n```py\nx = 1\n```\nand\n```\ny\n```\n";
        let mut md = MarkdownStream::for_output(true, false, Palette::Dark);
        let mut out = Vec::new();
        for p in split(reply, [3; 50]) {
            md.push(p, &mut out).unwrap();
        }
        md.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Two:\n```py  [1]\nx = 1\n```\nand\n```  [2]\ny\n```\n"
        );
        let mut md = MarkdownStream::for_output(false, false, Palette::Dark);
        let mut out = Vec::new();
        md.push(reply, &mut out).unwrap();
        md.finish(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), reply);
    }

    /// Whatever a theme paints, text never comes out in (nearly) the background colour: the
    /// themes' scopes for invalid code set the background colour as the foreground, and only
    /// foregrounds are printed.
    #[test]
    fn no_scope_is_painted_in_the_background_colour() {
        for palette in [Palette::Dark, Palette::Light] {
            let theme = assets().theme(palette);
            let bg = theme.settings.background.unwrap();
            let mut fixed = 0;
            for item in &theme.scopes {
                let Some(fg) = item.style.foreground else {
                    continue;
                };
                let style = Style {
                    foreground: fg,
                    ..Style::default()
                };
                if contrast(fg, bg) < MIN_CONTRAST {
                    fixed += 1;
                }
                let shown = legible(style, theme).foreground;
                assert!(
                    contrast(shown, bg) >= MIN_CONTRAST,
                    "{palette:?}: {:?} is unreadable",
                    item.scope
                );
            }
            // The case this guards against exists in the shipped themes.
            assert!(fixed > 0, "{palette:?}: no scope needed fixing");
        }
        // And end to end: C's invalid escape `\q` is visible.
        let line = "char *s = \"\\q\";\n";
        let theme = assets().theme(Palette::Dark);
        let bg = theme.settings.background.unwrap();
        let mut h = open_block("```c", Palette::Dark);
        let ranges = h.highlight_line(line, &assets().syntaxes).unwrap();
        assert!(
            ranges
                .iter()
                .any(|(s, _)| contrast(s.foreground, bg) < MIN_CONTRAST),
            "this line no longer has an invisible scope: {ranges:?}"
        );
        let out = render(&[&format!("```c\n{line}```\n")], true);
        let bg_escape = format!("\x1b[38;2;{};{};{}m", bg.r, bg.g, bg.b);
        assert!(!out.contains(&bg_escape), "{out:?}");
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
        assert_eq!(lines[1], format!("{DIM}```python  [1]{RESET}"));
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
