//! Checks that text is exactly one JSON value, without building it.
//!
//! Every payload received is checked once, so this is on the hot path of every inbound message:
//! it accepts exactly what `serde_json::from_str::<serde_json::Value>` accepts, without its
//! depth limit (the property tests below compare the two on generated and mutated documents):
//! unlike serde_json's `IgnoredAny` and `RawValue`, it refuses a `\u` escape of a lone UTF-16
//! surrogate, which no string can hold, so that every payload it lets in can be read back. It
//! scans the inside of
//! strings — most of the bytes of a realistic payload — with SIMD (see [`plain_len`]), where
//! serde_json's scanner takes 8 bytes at a time.

/// Whether `text` is one JSON value, with optional whitespace around it.
///
/// Iterative, with the open arrays and objects kept as bits: any nesting depth is checked
/// without recursion (like serde_json's `IgnoredAny`, which has no depth limit either).
pub(crate) fn is_one_value(text: &str) -> bool {
    let mut checker = Checker {
        bytes: text.as_bytes(),
        at: 0,
    };
    checker.document().is_some()
}

/// The arrays and objects open around the current position, innermost last: one bit each,
/// 64 to a word, allocating only beyond 64 levels.
#[derive(Default)]
struct Open {
    top: u64,
    len: usize,
    spilled: Vec<u64>,
}

impl Open {
    const ARRAY: bool = false;
    const OBJECT: bool = true;

    fn push(&mut self, object: bool) {
        if self.len > 0 && self.len.is_multiple_of(64) {
            self.spilled.push(self.top);
            self.top = 0;
        }
        self.top = (self.top << 1) | u64::from(object);
        self.len += 1;
    }

    fn innermost(&self) -> Option<bool> {
        (self.len > 0).then_some(self.top & 1 == 1)
    }

    fn pop(&mut self) {
        self.top >>= 1;
        self.len -= 1;
        if self.len > 0 && self.len.is_multiple_of(64) {
            self.top = self.spilled.pop().unwrap_or_default();
        }
    }
}

/// The position in the text being checked. Every method returns `None` at the first byte that
/// cannot continue a JSON value.
struct Checker<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Checker<'_> {
    fn document(&mut self) -> Option<()> {
        let mut open = Open::default();
        loop {
            // At the start of a value.
            self.skip_whitespace();
            match self.next()? {
                b'"' => self.string_rest()?,
                b'[' => {
                    self.skip_whitespace();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                    } else {
                        open.push(Open::ARRAY);
                        continue;
                    }
                }
                b'{' => {
                    self.skip_whitespace();
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                    } else {
                        open.push(Open::OBJECT);
                        self.key()?;
                        continue;
                    }
                }
                b't' => self.literal_rest(b"rue")?,
                b'f' => self.literal_rest(b"alse")?,
                b'n' => self.literal_rest(b"ull")?,
                b'-' | b'0'..=b'9' => {
                    self.at -= 1;
                    self.number()?;
                }
                _ => return None,
            }
            // After a whole value: close what it ends, up to the next value.
            loop {
                self.skip_whitespace();
                match (open.innermost(), self.next()) {
                    (None, None) => return Some(()),
                    (Some(Open::ARRAY), Some(b']')) | (Some(Open::OBJECT), Some(b'}')) => {
                        open.pop();
                    }
                    (Some(Open::ARRAY), Some(b',')) => break,
                    (Some(Open::OBJECT), Some(b',')) => {
                        self.key()?;
                        break;
                    }
                    _ => return None,
                }
            }
        }
    }

    /// An object's key and its colon.
    fn key(&mut self) -> Option<()> {
        self.skip_whitespace();
        if self.next()? != b'"' {
            return None;
        }
        self.string_rest()?;
        self.skip_whitespace();
        (self.next()? == b':').then_some(())
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal_rest(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.at + rest.len();
        (self.bytes.get(self.at..end)? == rest).then(|| self.at = end)
    }

    /// A number, from its first byte (a `-` or a digit).
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// The four hex digits of a `\\u` escape, as a number.
    fn hex4(&mut self) -> Option<u16> {
        let hex = self.bytes.get(self.at..self.at + 4)?;
        let mut value = 0u16;
        for &b in hex {
            value = (value << 4) | u16::try_from(char::from(b).to_digit(16)?).ok()?;
        }
        self.at += 4;
        Some(value)
    }

    /// The rest of a string after its opening quote.
    fn string_rest(&mut self) -> Option<()> {
        loop {
            self.at += plain_len(self.bytes.get(self.at..)?);
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => match self.hex4()? {
                        // A surrogate pair: a high surrogate, then a low one.
                        0xD800..=0xDBFF => {
                            if self.next()? != b'\\' || self.next()? != b'u' {
                                return None;
                            }
                            if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                                return None;
                            }
                        }
                        // A lone low surrogate.
                        0xDC00..=0xDFFF => return None,
                        _ => {}
                    },
                    _ => return None,
                },
                // A control character.
                _ => return None,
            }
        }
    }
}

/// How many bytes at the start of `bytes` may stand as they are inside a string: up to the
/// first quote, backslash or control character.
///
/// Most keys and many values are short: the first [`HEAD`] bytes are looked at eight at a
/// time in a `u64`; longer strings go on in [`plain_len_long`], which runs as SIMD.
pub(crate) fn plain_len(bytes: &[u8]) -> usize {
    const HEAD: usize = 32;
    let head = &bytes[..bytes.len().min(HEAD)];
    let mut words = head.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut eight = [0; 8];
        eight.copy_from_slice(word);
        let hits = special_bytes(u64::from_le_bytes(eight));
        if hits != 0 {
            return at + (hits.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let rest = words.remainder();
    if let Some(end) = rest.iter().position(is_special) {
        return at + end;
    }
    at += rest.len();
    if at < HEAD {
        return at;
    }
    at + plain_len_long(&bytes[at..])
}

/// A quote, a backslash or a control character.
fn is_special(b: &u8) -> bool {
    *b == b'"' || *b == b'\\' || *b < 0x20
}

/// The high bit of each special byte of eight (little-endian) is set in the result, and no
/// bit below the first special byte's (bits above it may be set where none is: the borrows of
/// the subtractions run upward, which is why only the lowest counts).
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | below_space
}

/// [`plain_len`] after the first bytes.
fn plain_len_long(bytes: &[u8]) -> usize {
    let end = memchr::memchr2(b'"', b'\\', bytes).unwrap_or(bytes.len());
    let before = &bytes[..end];
    if before.iter().fold(u8::MAX, |least, &b| least.min(b)) >= 0x20 {
        end
    } else {
        before.iter().position(|&b| b < 0x20).unwrap_or(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn plain_len_stops_at_the_first_quote_backslash_or_control_character(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..=0xff, Just(0x7f), Just(0x80)],
                0..80,
            ),
            plain in 0usize..80,
        ) {
            // Mostly plain bytes first, so that every position is where the first stop may be.
            let mut text = vec![b'a'; plain];
            text.extend(bytes);
            let expected = text.iter().position(is_special).unwrap_or(text.len());
            prop_assert_eq!(plain_len(&text), expected);
        }
    }

    /// What serde_json reads into a `Value`, without its limits on nesting and on the range of
    /// numbers: where `Value` stops at one of those, what `IgnoredAny` accepts (which checks
    /// everything but the characters of `\\u` escapes) with no lone surrogate escape.
    fn serde_accepts(text: &str) -> bool {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(_) => true,
            Err(e)
                if e.to_string().starts_with("recursion limit exceeded")
                    || e.to_string().starts_with("number out of range") =>
            {
                serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
                    && !has_lone_surrogate(text)
            }
            Err(_) => false,
        }
    }

    /// Whether a `\\u` escape of a lone surrogate is in the text of a JSON document that
    /// `IgnoredAny` accepts (so that every backslash is in a string).
    fn has_lone_surrogate(text: &str) -> bool {
        let units: Vec<u16> = text.encode_utf16().collect();
        let mut escapes = Vec::new();
        let mut i = 0;
        while i < units.len() {
            if units[i] == u16::from(b'\\') {
                if units.get(i + 1) == Some(&u16::from(b'u')) {
                    let hex = String::from_utf16_lossy(&units[i + 2..i + 6]);
                    escapes.push((i, u16::from_str_radix(&hex, 16).unwrap()));
                    i += 6;
                } else {
                    i += 2;
                }
            } else {
                i += 1;
            }
        }
        escapes
            .iter()
            .enumerate()
            .any(|(n, &(at, unit))| match unit {
                0xD800..=0xDBFF => !escapes
                    .get(n + 1)
                    .is_some_and(|&(next, low)| next == at + 6 && (0xDC00..=0xDFFF).contains(&low)),
                0xDC00..=0xDFFF => {
                    !(n > 0
                        && escapes[n - 1].0 + 6 == at
                        && (0xD800..=0xDBFF).contains(&escapes[n - 1].1))
                }
                _ => false,
            })
    }

    #[track_caller]
    fn agrees(text: &str) {
        assert_eq!(is_one_value(text), serde_accepts(text), "on {text:?}");
    }

    #[test]
    fn accepts_and_refuses_what_serde_json_does() {
        for text in [
            "0",
            "-0",
            "12",
            "-12.5e+3",
            "1E9",
            "0.0",
            "{}",
            "[]",
            " [ 1 , 2 ] ",
            "null",
            "true",
            "false",
            r#""a\"b\\c\/d\b\f\n\r\t\u00e9\uD83D\uDE00""#,
            r#""\ud800""#,
            r#""\uDFFF""#,
            r#""\ud800\u0041""#,
            r#""\ud800\n""#,
            r#""\ud800x""#,
            r#""\udbff\udfff""#,
            r#"{"\ud800":1}"#,
            r#"{"a":{"b":[{}]}}"#,
            "\"é€😀\"",
            "",
            " ",
            "01",
            "-",
            "-a",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{1:2}"#,
            "[1 2]",
            "\"a",
            "\"\\x\"",
            "\"\\u12G4\"",
            "\"\\u12\"",
            "\"tab\there\"",
            "nul",
            "nulll",
            "truee",
            "1 2",
            "[]]",
            "{}}",
            "[",
            "{",
            "\u{a0}1",
            "1\u{0}",
            "\"\u{7f}\"",
            "-01",
            "1.5.5",
            "1e5e5",
        ] {
            agrees(text);
        }
    }

    #[test]
    fn long_strings_find_their_escapes_and_control_characters_anywhere() {
        for len in [0_usize, 1, 31, 32, 33, 63, 64, 65, 100, 4096] {
            for at in [0, len / 2, len.saturating_sub(1)] {
                let mut text = format!("\"{}\"", "x".repeat(len));
                agrees(&text);
                if len > 0 {
                    for special in ["\\n", "\\", "\u{1}", "\"", "é"] {
                        text = format!("\"{}{special}{}\"", "x".repeat(at), "x".repeat(len - at));
                        agrees(&text);
                    }
                }
            }
        }
    }

    #[test]
    fn any_nesting_is_checked_without_recursion() {
        for depth in [1, 63, 64, 65, 127, 128, 129, 1000, 100_000] {
            agrees(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
            agrees(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth)));
            agrees(&format!(
                "{}{}",
                r#"{"a":"#.repeat(depth),
                "}".repeat(depth)
            ));
            agrees(&format!("{}{}", "[".repeat(depth), "]".repeat(depth - 1)));
            agrees(&format!("{}{}}}", "[".repeat(depth), "]".repeat(depth - 1)));
            agrees(&format!(
                "{}[{{}}]{}",
                r#"{"a":["#.repeat(depth),
                "]}".repeat(depth)
            ));
        }
    }

    /// JSON documents, with whitespace, escapes and every kind of number.
    fn document() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| serde_json::to_string(&n).unwrap_or_default()),
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            "\"([a-z ]|\\\\[\"\\\\/bfnrt]|\\\\u[0-9a-cA-CeEfF][0-9a-fA-F]{3}|\\\\u[dD][0-7][0-9a-fA-F]{2}|\\\\u[dD][89abAB][0-9a-fA-F]{2}\\\\u[dD][c-fC-F][0-9a-fA-F]{2}){0,40}\"",
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z]{0,5}", inner), 0..6).prop_map(|v| {
                    let fields: Vec<String> =
                        v.iter().map(|(k, v)| format!("\"{k}\" :\n{v}")).collect();
                    format!("{{ {} }}", fields.join(" ,\t"))
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn agrees_with_serde_json_on_documents(doc in document()) {
            prop_assert!(is_one_value(&doc), "refused {doc:?}");
            prop_assert!(serde_accepts(&doc));
        }

        #[test]
        fn agrees_with_serde_json_on_damaged_documents(
            doc in document(),
            cut in any::<prop::sample::Index>(),
            byte in prop::sample::select(b"{}[],:\"\\ -.0e+tnx\x01".to_vec()),
            edit in 0..3u8,
        ) {
            let mut bytes = doc.into_bytes();
            let at = cut.index(bytes.len() + 1);
            match edit {
                0 => bytes.truncate(at),
                1 => bytes.insert(at, byte),
                _ => if at < bytes.len() { bytes[at] = byte; },
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(is_one_value(text), serde_accepts(text), "on {:?}", text);
            }
        }

        #[test]
        fn agrees_with_serde_json_on_any_unicode_escapes(
            escapes in prop::collection::vec(
                ("[dD][0-9a-fA-F]{3}|[0-9a-fA-F]{4}", prop::sample::select(vec!["", "", "x", "\\n"])),
                0..4,
            ),
        ) {
            let body: String = escapes.iter().map(|(hex, sep)| format!("\\u{hex}{sep}")).collect();
            let text = format!("\"{body}\"");
            prop_assert_eq!(is_one_value(&text), serde_accepts(&text), "on {:?}", text);
        }

        #[test]
        fn agrees_with_serde_json_on_any_text(text in "[\\[\\]{}\",:0-9a-z\\\\ .eE+-]{0,40}") {
            prop_assert_eq!(is_one_value(&text), serde_accepts(&text), "on {:?}", text);
        }
    }
}
