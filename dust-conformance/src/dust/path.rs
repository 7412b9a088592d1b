//! Dust paths: a non-empty list of non-empty UTF-8 segments, rendered by escaping `~` as `~0`
//! and `/` as `~1` in each segment (RFC 6901) and joining with `/`.
//!
//! The rules and the error names are those of the real server's path module; the test vectors
//! in `reference/dust-fixtures/path_vectors.json` run against these functions.
//!
//! ```
//! use dust_conformance::dust::path::{self, PathError};
//!
//! assert_eq!(path::render(&["files", "image/file"]).unwrap(), "files/image~1file");
//! assert_eq!(path::parse_rendered("a~0b/c").unwrap(), ["a~b", "c"]);
//! assert_eq!(path::parse_rendered("users//alice"), Err(PathError::EmptySegment));
//! assert_eq!(PathError::InvalidEscape.reason(), "invalid_escape");
//! ```

use serde_json::Value;

/// Why a path is invalid. [`PathError::reason`] is the server's rejection string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// No segment at all (`""` or `[]`).
    #[error("empty_path")]
    EmptyPath,
    /// An empty segment (a leading, trailing or doubled `/`).
    #[error("empty_segment")]
    EmptySegment,
    /// A `~` not followed by `0` or `1`.
    #[error("invalid_escape")]
    InvalidEscape,
    /// A segment (or the rendered path) that is not a string.
    #[error("not_a_string")]
    NotAString,
    /// Segments that are not a list.
    #[error("not_a_list")]
    NotAList,
}

impl PathError {
    /// The rejection reason the server replies with, e.g. `"empty_segment"`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::EmptyPath => "empty_path",
            Self::EmptySegment => "empty_segment",
            Self::InvalidEscape => "invalid_escape",
            Self::NotAString => "not_a_string",
            Self::NotAList => "not_a_list",
        }
    }
}

/// Escapes one segment: `~` → `~0` first, then `/` → `~1`.
pub fn escape_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Renders segments: each escaped, joined with `/`. Fails on an empty list or segment.
pub fn render<S: AsRef<str>>(segments: &[S]) -> Result<String, PathError> {
    if segments.is_empty() {
        return Err(PathError::EmptyPath);
    }
    if segments.iter().any(|s| s.as_ref().is_empty()) {
        return Err(PathError::EmptySegment);
    }
    Ok(segments
        .iter()
        .map(|s| escape_segment(s.as_ref()))
        .collect::<Vec<_>>()
        .join("/"))
}

/// Parses a rendered path into segments. Empty segments are reported before bad escapes.
pub fn parse_rendered(rendered: &str) -> Result<Vec<String>, PathError> {
    if rendered.is_empty() {
        return Err(PathError::EmptyPath);
    }
    let raw: Vec<&str> = rendered.split('/').collect();
    if raw.iter().any(|s| s.is_empty()) {
        return Err(PathError::EmptySegment);
    }
    raw.into_iter().map(unescape_segment).collect()
}

fn unescape_segment(segment: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(segment.len());
    let mut chars = segment.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return Err(PathError::InvalidEscape),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Validates a JSON segment list (the `path_segments` of a write): a non-empty list of
/// strings (else `not_a_list` / `empty_path` / `not_a_string`), none empty (`empty_segment`).
pub fn from_segments(value: &Value) -> Result<Vec<String>, PathError> {
    let Value::Array(items) = value else {
        return Err(PathError::NotAList);
    };
    if items.is_empty() {
        return Err(PathError::EmptyPath);
    }
    let segments: Option<Vec<String>> = items
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect();
    let segments = segments.ok_or(PathError::NotAString)?;
    if segments.iter().any(String::is_empty) {
        return Err(PathError::EmptySegment);
    }
    Ok(segments)
}

/// The prefix every strict descendant of `rendered` starts with (`rendered` + `/`).
pub(crate) fn descendant_prefix(rendered: &str) -> String {
    format!("{rendered}/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn render_and_parse_round_trip() {
        let segments = ["a", "b.c", "d/e", "f~g"];
        let rendered = render(&segments).unwrap();
        assert_eq!(rendered, "a/b.c/d~1e/f~0g");
        assert_eq!(parse_rendered(&rendered).unwrap(), segments);
    }

    #[test]
    fn segment_list_errors_in_the_server_order() {
        assert_eq!(from_segments(&json!("a")), Err(PathError::NotAList));
        assert_eq!(from_segments(&json!([])), Err(PathError::EmptyPath));
        assert_eq!(from_segments(&json!(["", 1])), Err(PathError::NotAString));
        assert_eq!(
            from_segments(&json!(["a", ""])),
            Err(PathError::EmptySegment)
        );
        assert_eq!(from_segments(&json!(["a/b"])).unwrap(), ["a/b"]);
    }

    #[test]
    fn empty_segment_wins_over_bad_escape() {
        assert_eq!(parse_rendered("a~/"), Err(PathError::EmptySegment));
        assert_eq!(parse_rendered("~2"), Err(PathError::InvalidEscape));
        assert_eq!(render::<&str>(&[]), Err(PathError::EmptyPath));
    }
}
