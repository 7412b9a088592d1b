//! Store paths: non-empty lists of non-empty segments, rendered with the RFC 6901 escapes
//! (`~` → `~0`, then `/` → `~1`) and joined with `/`.

use std::fmt;

/// Why a path is invalid; the strings are the server's rejection reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// No segments (or an empty rendered path).
    #[error("empty_path")]
    EmptyPath,
    /// A segment is empty.
    #[error("empty_segment")]
    EmptySegment,
    /// A rendered path has a `~` not followed by `0` or `1`.
    #[error("invalid_escape")]
    InvalidEscape,
}

impl PathError {
    /// The server's reason string (`empty_path`, `empty_segment`, `invalid_escape`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::EmptyPath => "empty_path",
            Self::EmptySegment => "empty_segment",
            Self::InvalidEscape => "invalid_escape",
        }
    }
}

/// A path in a store, as its segments.
///
/// ```
/// use dust_connection::Path;
/// let path = Path::new(["files", "image/file", "a~b"]).unwrap();
/// assert_eq!(path.render(), "files/image~1file/a~0b");
/// assert_eq!(Path::parse("files/image~1file/a~0b").unwrap(), path);
/// assert!(Path::new(Vec::<String>::new()).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(Vec<String>);

impl Path {
    /// A path from its segments: at least one, none empty.
    pub fn new<I, S>(segments: I) -> Result<Self, PathError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segments: Vec<String> = segments.into_iter().map(Into::into).collect();
        if segments.is_empty() {
            return Err(PathError::EmptyPath);
        }
        if segments.iter().any(String::is_empty) {
            return Err(PathError::EmptySegment);
        }
        Ok(Self(segments))
    }

    /// Parses a rendered path (`a/b~1c` → `["a", "b/c"]`).
    pub fn parse(rendered: &str) -> Result<Self, PathError> {
        if rendered.is_empty() {
            return Err(PathError::EmptyPath);
        }
        let segments = rendered
            .split('/')
            .map(unescape)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(segments)
    }

    /// The segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The rendered form: each segment escaped (`~` → `~0`, then `/` → `~1`), joined by `/`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, segment) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            for c in segment.chars() {
                match c {
                    '~' => out.push_str("~0"),
                    '/' => out.push_str("~1"),
                    c => out.push(c),
                }
            }
        }
        out
    }

    /// This path with one more segment.
    pub fn child(&self, segment: impl Into<String>) -> Result<Self, PathError> {
        let segment = segment.into();
        if segment.is_empty() {
            return Err(PathError::EmptySegment);
        }
        let mut segments = self.0.clone();
        segments.push(segment);
        Ok(Self(segments))
    }

    /// Whether `self` is `other` or below it.
    pub fn starts_with(&self, other: &Path) -> bool {
        self.0.starts_with(&other.0)
    }
}

fn unescape(segment: &str) -> Result<String, PathError> {
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

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({:?})", self.render())
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// Anything that names a path: a [`Path`], segments (`["a", "b"]`, `Vec<String>`, ...), or a
/// rendered path with [`Path::parse`]. Checked when the write is validated, not before.
pub trait IntoSegments {
    /// The segments, unchecked.
    fn into_segments(self) -> Vec<String>;
}

impl IntoSegments for Path {
    fn into_segments(self) -> Vec<String> {
        self.0
    }
}

impl IntoSegments for &Path {
    fn into_segments(self) -> Vec<String> {
        self.0.clone()
    }
}

impl IntoSegments for Vec<String> {
    fn into_segments(self) -> Vec<String> {
        self
    }
}

impl IntoSegments for Vec<&str> {
    fn into_segments(self) -> Vec<String> {
        self.into_iter().map(str::to_owned).collect()
    }
}

impl IntoSegments for &[&str] {
    fn into_segments(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl IntoSegments for &[String] {
    fn into_segments(self) -> Vec<String> {
        self.to_vec()
    }
}

impl<const N: usize> IntoSegments for [&str; N] {
    fn into_segments(self) -> Vec<String> {
        self.into_iter().map(str::to_owned).collect()
    }
}

impl<const N: usize> IntoSegments for [String; N] {
    fn into_segments(self) -> Vec<String> {
        self.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_in_the_rfc_6901_order() {
        assert_eq!(Path::new(["~1"]).unwrap().render(), "~01");
        assert_eq!(Path::parse("~01").unwrap().segments(), ["~1"]);
        assert_eq!(
            Path::parse("a/b").unwrap().child("c/d").unwrap().render(),
            "a/b/c~1d"
        );
        assert_eq!(Path::new(["a", ""]), Err(PathError::EmptySegment));
        assert_eq!(Path::parse("a~x"), Err(PathError::InvalidEscape));
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(segments in proptest::collection::vec("[a-z~/.é]{1,6}", 1..5)) {
            let path = Path::new(segments.clone()).unwrap();
            prop_assert_eq!(Path::parse(&path.render()).unwrap(), path);
        }
    }
}
