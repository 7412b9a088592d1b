//! The storage envelope of values (the real server's `ValueCodec`), and the few Elixir
//! behaviours that leak onto the wire: `inspect/1` of exceptions in rejection reasons,
//! number addition, and the `Decimal` / `DateTime` envelopes a client may forge.

use serde_json::{Map, Number, Value, json};

use super::path;

/// An Elixir exception the real server would raise, as `inspect/1` renders it: a rejection
/// reason where the server rescues it, a channel crash where it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Raise(pub(crate) String);

impl Raise {
    pub(crate) fn arithmetic() -> Self {
        Self(r#"%ArithmeticError{message: "bad argument in arithmetic expression"}"#.to_owned())
    }

    pub(crate) fn empty_segment_match() -> Self {
        Self("%MatchError{term: {:error, :empty_segment}}".to_owned())
    }

    pub(crate) fn case_clause(term: &Value) -> Self {
        Self(format!("%CaseClauseError{{term: {}}}", inspect(term)))
    }

    pub(crate) fn function_clause(module: &str, function: &str, arity: u32) -> Self {
        Self(format!(
            "%FunctionClauseError{{module: {module}, function: :{function}, arity: {arity}, kind: nil, args: nil, clauses: nil}}"
        ))
    }
}

/// Wraps a value for storage: maps are stored as they are, anything else as
/// `{"_scalar": value}`.
pub(crate) fn wrap(value: &Value) -> Value {
    match value {
        Value::Object(_) => value.clone(),
        other => json!({ "_scalar": other }),
    }
}

/// Unwraps a stored value: `{"_scalar": v}` → `v`; the `decimal` and `datetime` typed
/// envelopes become the strings Jason encodes a `Decimal` / `DateTime` as; anything else
/// unchanged. Fails where the server's `Decimal.new` / `DateTime.from_iso8601` would raise.
pub(crate) fn unwrap(value: &Value) -> Result<Value, Raise> {
    if let Value::Object(map) = value {
        if let (Some(typed), Some(kind)) = (map.get("_typed"), map.get("_type")) {
            if kind == "decimal" {
                return decimal(typed);
            }
            if kind == "datetime" {
                return datetime(typed);
            }
        }
        if let Some(scalar) = map.get("_scalar") {
            return Ok(scalar.clone());
        }
    }
    Ok(value.clone())
}

/// `unwrap` of an optional stored value (`NULL` → `nil`).
pub(crate) fn unwrap_opt(value: Option<&Value>) -> Result<Value, Raise> {
    value.map_or(Ok(Value::Null), unwrap)
}

/// The members of a stored set: `{"_scalar": [..]}` → the list, anything else → empty.
pub(crate) fn unwrap_set(value: Option<&Value>) -> Vec<Value> {
    match value {
        Some(Value::Object(map)) => match map.get("_scalar") {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Whether a map is a typed envelope stored as one leaf (file ref, lease, `_typed`).
pub(crate) fn is_typed(value: &Value) -> bool {
    let Value::Object(map) = value else {
        return false;
    };
    matches!(
        map.get("_type").and_then(Value::as_str),
        Some("file" | "lease")
    ) || (map.contains_key("_typed") && map.contains_key("_type"))
}

/// Whether a value is a map that a `set`/`merge` expands into leaf entries.
pub(crate) fn is_expandable(value: &Value) -> bool {
    value.is_object() && !is_typed(value)
}

/// The entry type the server records for a value.
pub(crate) fn detect_type(value: &Value) -> &'static str {
    match value {
        Value::Object(map) if map.get("_type").and_then(Value::as_str) == Some("lease") => "lease",
        Value::Object(_) => "map",
        Value::String(_) => "string",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
        // Lists fall through to the server's catch-all clause.
        Value::Array(_) => "string",
    }
}

/// Flattens a map into `(rendered leaf path, leaf value)` pairs under `prefix`; nested maps
/// (but not typed envelopes) are expanded, an empty map yields nothing. An empty key makes
/// the server raise a `MatchError`.
pub(crate) fn flatten(
    prefix: &[String],
    map: &Map<String, Value>,
) -> Result<Vec<(String, Value)>, Raise> {
    let mut out = Vec::new();
    let mut segments = prefix.to_vec();
    flatten_into(&mut segments, map, &mut out)?;
    Ok(out)
}

fn flatten_into(
    segments: &mut Vec<String>,
    map: &Map<String, Value>,
    out: &mut Vec<(String, Value)>,
) -> Result<(), Raise> {
    for (key, value) in map {
        if key.is_empty() {
            return Err(Raise::empty_segment_match());
        }
        segments.push(key.clone());
        match value {
            Value::Object(inner) if !is_typed(value) => flatten_into(segments, inner, out)?,
            _ => {
                let rendered = path::render(segments).map_err(|_| Raise::empty_segment_match())?;
                out.push((rendered, value.clone()));
            }
        }
        segments.pop();
    }
    Ok(())
}

/// Elixir's `a + b` on decoded JSON: `None` where it raises `ArithmeticError` (a non-number,
/// a float overflow). Integers beyond 64 bits become floats here (Elixir has bignums).
pub(crate) fn add(a: &Value, b: &Value) -> Option<Value> {
    let (Value::Number(a), Value::Number(b)) = (a, b) else {
        return None;
    };
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        let sum = x.checked_add(y)?;
        if let Ok(v) = u64::try_from(sum) {
            return Some(Value::Number(v.into()));
        }
        if let Ok(v) = i64::try_from(sum) {
            return Some(Value::Number(v.into()));
        }
        return Number::from_f64(sum as f64).map(Value::Number);
    }
    let sum = a.as_f64()? + b.as_f64()?;
    if sum.is_finite() {
        Number::from_f64(sum).map(Value::Number)
    } else {
        None
    }
}

fn int(n: &Number) -> Option<i128> {
    if n.is_f64() {
        return None;
    }
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Elixir's `inspect/1` of a decoded JSON term (strings quoted, `nil`, lists, `%{}` maps).
pub(crate) fn inspect(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_f64() => inspect_float(n.as_f64().unwrap_or(0.0)),
        Value::Number(n) => n.to_string(),
        Value::String(s) => inspect_string(s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(inspect).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "%{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{} => {}", inspect_string(k), inspect(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn inspect_float(f: f64) -> String {
    let s = format!("{f:?}");
    if s.contains('e') && !s.contains('.') {
        s.replacen('e', ".0e", 1)
    } else {
        s
    }
}

fn inspect_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '#' => out.push('#'),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `Decimal.new(v)` then Jason's encoding of it (`Decimal.to_string/1`, scientific form).
fn decimal(typed: &Value) -> Result<Value, Raise> {
    let text = match typed {
        Value::String(s) => s.clone(),
        Value::Number(n) if !n.is_f64() => n.to_string(),
        _ => return Err(Raise::function_clause("Decimal", "new", 1)),
    };
    match parse_decimal(&text) {
        Some(d) => Ok(Value::String(d)),
        None => Err(Raise(format!(
            "%Decimal.Error{{message: \"number parsing syntax: {}\", reason: \"number parsing syntax: {}\", result: nil, signal: :invalid_operation}}",
            inspect(&Value::String(text.clone())),
            inspect(&Value::String(text))
        ))),
    }
}

/// Parses Decimal's syntax (`[+-]digits[.digits][e[+-]digits]`, `inf`, `nan`) and renders it
/// as `Decimal.to_string(d, :scientific)` does.
fn parse_decimal(text: &str) -> Option<String> {
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let sign = if negative { "-" } else { "" };
    match rest.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => return Some(format!("{sign}Infinity")),
        "nan" => return Some("NaN".to_owned()),
        _ => {}
    }
    let bytes = rest.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        &rest[start..*i]
    };
    let int_part = digits(&mut i);
    let mut frac_part = "";
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        frac_part = digits(&mut i);
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let mut exp: i64 = 0;
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        let exp_negative = match bytes.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let e = digits(&mut i);
        if e.is_empty() {
            return None;
        }
        let e: i64 = e.parse().ok()?;
        exp = if exp_negative { -e } else { e };
    }
    if i != bytes.len() {
        return None;
    }
    let mut coef: String = format!("{int_part}{frac_part}")
        .trim_start_matches('0')
        .to_owned();
    if coef.is_empty() {
        coef.push('0');
    }
    let exp = exp - i64::try_from(frac_part.len()).ok()?;
    let len = i64::try_from(coef.len()).ok()?;
    let adjusted = exp + len - 1;
    let body = if exp <= 0 && adjusted >= -6 {
        if exp == 0 {
            coef
        } else {
            let point = len + exp;
            if point > 0 {
                let point = usize::try_from(point).ok()?;
                format!("{}.{}", &coef[..point], &coef[point..])
            } else {
                let zeros = usize::try_from(-point).ok()?;
                format!("0.{}{coef}", "0".repeat(zeros))
            }
        }
    } else {
        let mantissa = if coef.len() > 1 {
            format!("{}.{}", &coef[..1], &coef[1..])
        } else {
            coef
        };
        let exp_sign = if adjusted >= 0 { "+" } else { "-" };
        format!("{mantissa}E{exp_sign}{}", adjusted.abs())
    };
    Some(format!("{sign}{body}"))
}

/// `DateTime.from_iso8601(v)` then `DateTime.to_iso8601/1` (shifted to UTC).
fn datetime(typed: &Value) -> Result<Value, Raise> {
    let Value::String(text) = typed else {
        return Err(Raise::function_clause("DateTime", "from_iso8601", 1));
    };
    parse_datetime(text)
        .map(Value::String)
        .ok_or_else(|| Raise("%MatchError{term: {:error, :invalid_format}}".to_owned()))
}

pub(crate) fn parse_datetime(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut frac = String::new();
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        frac = text[start..i].chars().take(6).collect();
    }
    let offset_min = match &text[i..] {
        "Z" => 0,
        rest if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let hh = num(i + 1..i + 3)?;
            let mm = num(i + 4..i + 6)?;
            let minutes = hh * 60 + mm;
            if rest.starts_with('-') {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let max_day = month_days[usize::try_from(mo - 1).ok()?];
    if d < 1 || d > max_day {
        return None;
    }
    let days = super::clock::days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60;
    let us = secs * 1_000_000;
    let base = super::clock::iso8601(us, 0);
    let base = base.trim_end_matches('Z');
    if frac.is_empty() {
        Some(format!("{base}Z"))
    } else {
        Some(format!("{base}.{frac}Z"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_unwraps() {
        assert_eq!(wrap(&json!(5)), json!({"_scalar": 5}));
        assert_eq!(wrap(&json!({"a": 1})), json!({"a": 1}));
        assert_eq!(unwrap(&json!({"_scalar": [1]})).unwrap(), json!([1]));
        assert_eq!(unwrap(&json!({"_scalar": 1, "x": 2})).unwrap(), json!(1));
        assert_eq!(unwrap(&json!({"a": 1})).unwrap(), json!({"a": 1}));
        assert_eq!(
            unwrap_set(Some(&json!({"_scalar": 3}))),
            Vec::<Value>::new()
        );
    }

    #[test]
    fn types() {
        assert_eq!(detect_type(&json!({"_type": "lease"})), "lease");
        assert_eq!(detect_type(&json!({"_type": "file"})), "map");
        assert_eq!(detect_type(&json!([1])), "string");
        assert_eq!(detect_type(&json!(1.0)), "float");
        assert_eq!(detect_type(&json!(1)), "integer");
        assert!(is_typed(&json!({"_typed": 1, "_type": "x"})));
        assert!(!is_typed(&json!({"_type": "x"})));
    }

    #[test]
    fn flattens_nested_maps() {
        let map = json!({"a": {"b": 1, "c": {}}, "d/e": {"_type": "file"}});
        let leaves = flatten(&["p".to_owned()], map.as_object().unwrap()).unwrap();
        assert_eq!(
            leaves,
            vec![
                ("p/a/b".to_owned(), json!(1)),
                ("p/d~1e".to_owned(), json!({"_type": "file"}))
            ]
        );
        let bad = json!({"a": {"": 1}});
        assert_eq!(
            flatten(&["p".to_owned()], bad.as_object().unwrap()),
            Err(Raise::empty_segment_match())
        );
    }

    #[test]
    fn adds_like_elixir() {
        assert_eq!(add(&json!(1), &json!(2)), Some(json!(3)));
        assert_eq!(add(&json!(1), &json!(0.5)), Some(json!(1.5)));
        assert_eq!(add(&json!(-5), &json!(2)), Some(json!(-3)));
        assert_eq!(add(&json!("1"), &json!(2)), None);
        assert_eq!(
            add(&json!(u64::MAX), &json!(1)),
            Some(json!(18446744073709551616.0))
        );
    }

    #[test]
    fn inspects_like_elixir() {
        assert_eq!(
            inspect(&json!({"b": [1, "x\""], "a": null})),
            r#"%{"a" => nil, "b" => [1, "x\""]}"#
        );
        assert_eq!(inspect(&json!(1.5)), "1.5");
        assert_eq!(inspect(&json!(true)), "true");
    }

    #[test]
    fn decimals_render_scientific() {
        for (input, out) in [
            ("1.50", "1.50"),
            ("1e3", "1E+3"),
            ("100", "100"),
            ("-0.001", "-0.001"),
            ("0.0000001", "1E-7"),
            (".5", "0.5"),
            ("007", "7"),
            ("inf", "Infinity"),
        ] {
            assert_eq!(parse_decimal(input).as_deref(), Some(out), "{input}");
        }
        assert_eq!(parse_decimal("x"), None);
        assert_eq!(parse_decimal("1e"), None);
        assert_eq!(
            unwrap(&json!({"_typed": "2.50", "_type": "decimal"})).unwrap(),
            json!("2.50")
        );
    }

    #[test]
    fn datetimes_shift_to_utc() {
        assert_eq!(
            parse_datetime("2024-01-01T01:30:00+01:00").as_deref(),
            Some("2024-01-01T00:30:00Z")
        );
        assert_eq!(
            parse_datetime("2024-02-29T23:59:59.1234567Z").as_deref(),
            Some("2024-02-29T23:59:59.123456Z")
        );
        assert_eq!(parse_datetime("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_datetime("2024-01-01T00:00:00"), None);
    }
}
