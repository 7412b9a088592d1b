//! [`Glob`]: Dust's segment globs, which select the paths a read or a subscription covers.

use std::fmt;

use crate::write::{Path, PathError};

/// Why a glob pattern is invalid; [`reason`](GlobError::reason) gives Dust's name for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum GlobError {
    /// The pattern has no segments.
    #[error("empty_path")]
    EmptyPath,
    /// A segment is empty (`a//b`).
    #[error("empty_segment")]
    EmptySegment,
    /// A rendered pattern has a `~` not followed by `0` or `1`.
    #[error("invalid_escape")]
    InvalidEscape,
    /// `**` is somewhere else than the last segment (`a/**/z`).
    #[error("wildcard_many_not_tail")]
    WildcardManyNotTail,
}

impl GlobError {
    /// Dust's reason string (`empty_path`, `empty_segment`, `invalid_escape`,
    /// `wildcard_many_not_tail`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::EmptyPath => "empty_path",
            Self::EmptySegment => "empty_segment",
            Self::InvalidEscape => "invalid_escape",
            Self::WildcardManyNotTail => "wildcard_many_not_tail",
        }
    }
}

impl From<PathError> for GlobError {
    fn from(error: PathError) -> Self {
        match error {
            PathError::EmptyPath => Self::EmptyPath,
            PathError::EmptySegment => Self::EmptySegment,
            PathError::InvalidEscape => Self::InvalidEscape,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Token {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**` (last segment only): one segment or more.
    Many,
}

/// A compiled Dust glob: path segments where `*` matches exactly one segment, `**` (only as
/// the last segment) one segment or more, `\*` and `\**` a segment that is literally `*` or
/// `**`, and anything else that very segment. A rendered pattern is parsed like a
/// [`Path`] (`/` between segments, `~1` for a `/` inside one, `~0` for `~`).
///
/// ```
/// use dust_connection::{Glob, GlobError, Path};
///
/// let posts = Glob::parse("posts/*").unwrap();
/// assert!(posts.matches(&Path::parse("posts/hello").unwrap()));
/// assert!(!posts.matches(&Path::parse("posts/hello/title").unwrap()));
///
/// let below = Glob::parse("posts/**").unwrap();
/// assert!(below.matches_segments(["posts", "hello", "title"]));
/// assert!(!below.matches_segments(["posts"]), "** is one segment or more");
///
/// assert_eq!(Glob::parse("a/**/z"), Err(GlobError::WildcardManyNotTail));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    tokens: Vec<Token>,
    rendered: String,
}

impl Glob {
    /// Parses a rendered pattern (`users/*/name`, `files/image~1png`, `**`).
    pub fn parse(pattern: &str) -> Result<Self, GlobError> {
        Self::from_path(Path::parse(pattern)?)
    }

    /// A pattern from its segments (`["users", "*"]`).
    pub fn from_segments<I, S>(segments: I) -> Result<Self, GlobError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::from_path(Path::new(segments)?)
    }

    fn from_path(path: Path) -> Result<Self, GlobError> {
        let rendered = path.render();
        let segments = path.segments();
        let tokens: Vec<Token> = segments
            .iter()
            .map(|segment| match segment.as_str() {
                "*" => Token::One,
                "**" => Token::Many,
                "\\*" => Token::Literal("*".to_owned()),
                "\\**" => Token::Literal("**".to_owned()),
                other => Token::Literal(other.to_owned()),
            })
            .collect();
        let last = tokens.len() - 1;
        if tokens
            .iter()
            .enumerate()
            .any(|(i, token)| *token == Token::Many && i != last)
        {
            return Err(GlobError::WildcardManyNotTail);
        }
        Ok(Self { tokens, rendered })
    }

    /// Matches `**`: every path.
    pub fn all() -> Self {
        Self {
            tokens: vec![Token::Many],
            rendered: "**".to_owned(),
        }
    }

    /// Whether the pattern matches `path`.
    pub fn matches(&self, path: &Path) -> bool {
        self.matches_segments(path.segments())
    }

    /// Whether the pattern matches a path given by its segments.
    pub fn matches_segments<I, S>(&self, segments: I) -> bool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut segments = segments.into_iter();
        for token in &self.tokens {
            match token {
                Token::Many => return segments.next().is_some(),
                Token::One => {
                    if segments.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(literal) => match segments.next() {
                    Some(segment) if segment.as_ref() == literal => {}
                    _ => return false,
                },
            }
        }
        segments.next().is_none()
    }

    /// Whether the pattern matches a rendered path (`false` for an invalid one).
    pub fn matches_rendered(&self, rendered: &str) -> bool {
        Path::parse(rendered).is_ok_and(|path| self.matches(&path))
    }

    /// The rendered prefix every matching path starts with: the literal segments before the
    /// first wildcard, rendered and followed by `/` (empty when the pattern starts with one,
    /// the whole rendered path when it has none). Matching paths sort inside that prefix's
    /// range, which is how reads avoid scanning a whole store.
    pub(crate) fn literal_prefix(&self) -> String {
        let mut literals = Vec::new();
        for token in &self.tokens {
            match token {
                Token::Literal(literal) => literals.push(literal.clone()),
                Token::One | Token::Many => {
                    return match Path::new(literals) {
                        Ok(path) => format!("{}/", path.render()),
                        Err(_) => String::new(),
                    };
                }
            }
        }
        Path::new(literals)
            .map(|path| path.render())
            .unwrap_or_default()
    }

    /// The pattern as a rendered string.
    pub fn as_str(&self) -> &str {
        &self.rendered
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.rendered)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rendered)
    }
}

impl std::str::FromStr for Glob {
    type Err = GlobError;

    fn from_str(pattern: &str) -> Result<Self, Self::Err> {
        Self::parse(pattern)
    }
}

impl TryFrom<&str> for Glob {
    type Error = GlobError;

    fn try_from(pattern: &str) -> Result<Self, Self::Error> {
        Self::parse(pattern)
    }
}

impl TryFrom<String> for Glob {
    type Error = GlobError;

    fn try_from(pattern: String) -> Result<Self, Self::Error> {
        Self::parse(&pattern)
    }
}

impl TryFrom<&String> for Glob {
    type Error = GlobError;

    fn try_from(pattern: &String) -> Result<Self, Self::Error> {
        Self::parse(pattern)
    }
}

/// Anything that names a glob: a [`Glob`] (owned or borrowed) or a rendered pattern (`&str`,
/// `String`), parsed when it is used.
pub trait IntoGlob {
    /// The glob, or why the pattern is invalid.
    fn into_glob(self) -> Result<Glob, GlobError>;
}

impl IntoGlob for Glob {
    fn into_glob(self) -> Result<Glob, GlobError> {
        Ok(self)
    }
}

impl IntoGlob for &Glob {
    fn into_glob(self) -> Result<Glob, GlobError> {
        Ok(self.clone())
    }
}

impl IntoGlob for &str {
    fn into_glob(self) -> Result<Glob, GlobError> {
        Glob::parse(self)
    }
}

impl IntoGlob for String {
    fn into_glob(self) -> Result<Glob, GlobError> {
        Glob::parse(&self)
    }
}

impl IntoGlob for &String {
    fn into_glob(self) -> Result<Glob, GlobError> {
        Glob::parse(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes_bound_the_matching_range() {
        assert_eq!(
            Glob::parse("users/*/name").unwrap().literal_prefix(),
            "users/"
        );
        assert_eq!(Glob::parse("**").unwrap().literal_prefix(), "");
        assert_eq!(Glob::parse("a~1b/**").unwrap().literal_prefix(), "a~1b/");
        assert_eq!(Glob::parse("a/b").unwrap().literal_prefix(), "a/b");
        assert_eq!(Glob::parse("a/\\*").unwrap().literal_prefix(), "a/*");
    }
}
