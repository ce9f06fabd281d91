//! Sizes for people: bytes in binary units and bits per weight.

/// Bits per weight of `bytes` holding `elements` values (0 for no elements).
pub fn bits_per_weight(bytes: u64, elements: u64) -> f64 {
    if elements == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / elements as f64
    }
}

/// `1536` → `1.50 KiB`; exact bytes below 1 KiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// `15_706_484_224` → `15.7B`, `7_100_000` → `7.1M`: a parameter count as model cards write it.
pub fn human_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}B", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes() {
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(10 << 30), "10.00 GiB");
        assert_eq!(bits_per_weight(18, 32), 4.5);
        assert_eq!(bits_per_weight(1, 0), 0.0);
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(15_706_484_224), "15.7B");
        assert_eq!(human_count(7_100_000), "7.1M");
    }
}

/// `text` with control characters (terminal escape sequences, newlines, NUL) written as Rust
/// escapes, for names read from an untrusted file: nothing in a GGUF can move the cursor, change
/// colours or fake a line of output. Other text, non-ASCII included, is kept as it is.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(super::printable("blk.0.attn_q"), "blk.0.attn_q");
        assert_eq!(super::printable("ü✓"), "ü✓");
        assert_eq!(super::printable("a\u{1b}[31mred\n"), "a\\u{1b}[31mred\\n");
    }
}
