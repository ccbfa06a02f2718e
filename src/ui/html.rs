//! HTML built so that escaping cannot be forgotten: markup goes in only as `&'static str`
//! (written in this crate), and every other value only through `text`, which escapes it for
//! element content and quoted attribute values alike.
//!
//! Repository names, tags, labels and every value of an image config are written by whoever
//! pushed the image; none of them may reach a page unescaped.

use std::fmt::Write;

/// A page or a fragment of one.
#[derive(Default)]
pub struct Html(String);

impl Html {
    pub fn new() -> Html {
        Html(String::with_capacity(4096))
    }

    /// Markup from the source code; never a value from a request or the registry.
    pub fn raw(&mut self, markup: &'static str) -> &mut Html {
        self.0.push_str(markup);
        self
    }

    /// A value, escaped. Safe in element content and in a double- or single-quoted
    /// attribute; never to be put in an unquoted attribute, a `<script>` or a URL scheme.
    pub fn text(&mut self, value: &str) -> &mut Html {
        escape_into(&mut self.0, value);
        self
    }

    /// A number, which needs no escaping.
    pub fn num(&mut self, n: u64) -> &mut Html {
        let _ = write!(self.0, "{n}");
        self
    }

    /// A fragment built the same way.
    pub fn append(&mut self, other: Html) -> &mut Html {
        self.0.push_str(&other.0);
        self
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Appends `value` escaped for HTML: the five characters that can end a text node or an
/// attribute value, or start markup or an entity.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // A NUL is replaced by browsers anyway; other controls are shown as they are.
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// A byte count for people: `1.5 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escape(value: &str) -> String {
        let mut h = Html::new();
        h.text(value);
        h.into_string()
    }

    #[test]
    fn every_markup_character_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("a\0b"), "a\u{FFFD}b");
        assert_eq!(
            escape("plain team/app:v1.0_rc-2"),
            "plain team/app:v1.0_rc-2"
        );
        assert_eq!(escape("&amp;"), "&amp;amp;", "escaped twice is still text");
        assert_eq!(escape("ünïcødé ✓"), "ünïcødé ✓");
    }

    #[test]
    fn values_go_in_escaped_and_markup_as_written() {
        let mut h = Html::new();
        h.raw("<td title=\"")
            .text("\"><img src=x onerror=alert(1)>")
            .raw("\">")
            .text("<b>")
            .num(42)
            .raw("</td>");
        let out = h.into_string();
        assert_eq!(
            out,
            "<td title=\"&quot;&gt;&lt;img src=x onerror=alert(1)&gt;\">&lt;b&gt;42</td>"
        );
        assert!(!out.contains("<img") && !out.contains("<b>"));
    }

    #[test]
    fn sizes_read_like_docker_s() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024), "5.0 MiB");
    }
}
