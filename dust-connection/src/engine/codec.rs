//! The server's storage envelope (its `ValueCodec`): how a value is stored in an entry, which
//! maps are expanded into leaf entries, and how a stored value is rendered when the server
//! lists its entries (`{"_scalar": v}` → `v`, a `decimal` / `datetime` typed value → the string
//! the server's JSON encoder gives it).

use serde_json::{Map, Value};

use crate::write::Path;

/// Wraps a value for storage: a map is stored as it is, anything else as `{"_scalar": v}`.
pub(super) fn wrap(value: &Value) -> Value {
    match value {
        Value::Object(_) => value.clone(),
        other => Value::Object(Map::from_iter([("_scalar".to_owned(), other.clone())])),
    }
}

/// Whether a map is a typed value the server keeps as one entry: a file ref, a lease envelope,
/// or any map holding both `_typed` and `_type`.
pub(super) fn is_typed(value: &Value) -> bool {
    let Value::Object(map) = value else {
        return false;
    };
    matches!(
        map.get("_type").and_then(Value::as_str),
        Some("file" | "lease")
    ) || (map.contains_key("_typed") && map.contains_key("_type"))
}

/// The map a `set` / `merge` expands into leaf entries (a map that is not typed).
pub(super) fn expandable(value: &Value) -> Option<&Map<String, Value>> {
    match value {
        Value::Object(map) if !is_typed(value) => Some(map),
        _ => None,
    }
}

/// The leaves of an expandable map under `prefix`, as (rendered path, value): nested
/// expandable maps are descended into (an empty one yields nothing), anything else is a leaf.
/// A key the server could not store (an empty one) is skipped.
pub(super) fn flatten(prefix: &Path, map: &Map<String, Value>, out: &mut Vec<(String, Value)>) {
    for (key, value) in map {
        let Ok(child) = prefix.child(key.as_str()) else {
            tracing::warn!(path = %prefix.render(), "an empty key in a map value; skipped");
            continue;
        };
        match expandable(value) {
            Some(inner) => flatten(&child, inner, out),
            None => out.push((child.render(), value.clone())),
        }
    }
}

/// A stored value as the server renders it in its entries: a `decimal` typed value as
/// `Decimal.to_string/1` gives it, a `datetime` as its ISO 8601 form in UTC, `{"_scalar": v}`
/// as `v`, anything else unchanged. A typed value the server could not decode stays as it is.
pub(super) fn render(stored: &Value) -> Value {
    let Value::Object(map) = stored else {
        return stored.clone();
    };
    if let (Some(typed), Some(kind)) = (map.get("_typed"), map.get("_type")) {
        let rendered = match kind.as_str() {
            Some("decimal") => Some(decimal(typed)),
            Some("datetime") => Some(typed.as_str().and_then(datetime)),
            _ => None,
        };
        if let Some(rendered) = rendered {
            return rendered.map_or_else(|| stored.clone(), Value::String);
        }
    }
    match map.get("_scalar") {
        Some(scalar) => scalar.clone(),
        None => stored.clone(),
    }
}

/// `Decimal.new/1` of a string or an integer, rendered as `Decimal.to_string/1` does
/// (scientific notation where the exponent calls for it).
fn decimal(typed: &Value) -> Option<String> {
    match typed {
        Value::String(text) => parse_decimal(text),
        Value::Number(n) if !n.is_f64() => Some(n.to_string()),
        _ => None,
    }
}

fn parse_decimal(text: &str) -> Option<String> {
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'-') => ("-", &text[1..]),
        Some(b'+') => ("", &text[1..]),
        _ => ("", text),
    };
    match rest.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => return Some(format!("{sign}Infinity")),
        "nan" => return Some("NaN".to_owned()),
        _ => {}
    }
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (mantissa, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty()) || !digits(int_part) || !digits(frac_part) {
        return None;
    }
    let exp: i64 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if unsigned.is_empty() || !digits(unsigned) {
                return None;
            }
            e.parse().ok()?
        }
    };
    let coef = format!("{int_part}{frac_part}");
    let coef = match coef.trim_start_matches('0') {
        "" => "0",
        trimmed => trimmed,
    };
    let exp = exp.checked_sub(i64::try_from(frac_part.len()).ok()?)?;
    let len = i64::try_from(coef.len()).ok()?;
    let adjusted = exp.checked_add(len - 1)?;
    let body = if exp <= 0 && adjusted >= -6 {
        let point = len + exp;
        if exp == 0 {
            coef.to_owned()
        } else if point > 0 {
            let point = usize::try_from(point).ok()?;
            format!("{}.{}", &coef[..point], &coef[point..])
        } else {
            format!("0.{}{coef}", "0".repeat(usize::try_from(-point).ok()?))
        }
    } else {
        let mantissa = match coef.len() {
            1 => coef.to_owned(),
            _ => format!("{}.{}", &coef[..1], &coef[1..]),
        };
        let exp_sign = if adjusted >= 0 { "+" } else { "-" };
        format!("{mantissa}E{exp_sign}{}", adjusted.unsigned_abs())
    };
    Some(format!("{sign}{body}"))
}

/// `DateTime.from_iso8601/1` then `DateTime.to_iso8601/1`: shifted to UTC, the fraction kept
/// to at most microseconds.
fn datetime(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let s = text.get(from..to)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut fraction = "";
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        fraction = &text[start..(start + 6).min(i)];
    }
    let offset_minutes = match &text[i..] {
        "Z" => 0,
        rest if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let minutes = num(i + 1, i + 3)? * 60 + num(i + 4, i + 6)?;
            match rest.as_bytes()[0] {
                b'+' => minutes,
                b'-' => -minutes,
                _ => return None,
            }
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
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
    let max_day = *month_days.get(usize::try_from(month - 1).ok()?)?;
    if day < 1 || day > max_day || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_minutes * 60;
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let dot = if fraction.is_empty() { "" } else { "." };
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{dot}{fraction}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_stored_values_as_the_server_lists_them() {
        assert_eq!(render(&wrap(&json!(5))), json!(5));
        assert_eq!(render(&wrap(&Value::Null)), Value::Null);
        assert_eq!(render(&wrap(&json!([1, "a"]))), json!([1, "a"]));
        let lease = json!({"_type": "lease", "token": 3, "holder": "w", "expires_at": 9});
        assert_eq!(render(&wrap(&lease)), lease);
        assert_eq!(
            render(&json!({"_type": "decimal", "_typed": "1.50"})),
            json!("1.50")
        );
        assert_eq!(
            render(&json!({"_type": "datetime", "_typed": "2024-01-01T01:30:00+01:00"})),
            json!("2024-01-01T00:30:00Z")
        );
        let bad = json!({"_type": "decimal", "_typed": "one"});
        assert_eq!(
            render(&bad),
            bad,
            "undecodable typed values stay as they are"
        );
        assert_eq!(
            render(&json!({"_type": "x", "_typed": 1, "_scalar": 2})),
            json!(2)
        );
    }

    #[test]
    fn decimals_render_like_decimal_to_string() {
        for (input, out) in [
            ("1.50", "1.50"),
            ("1e3", "1E+3"),
            ("100", "100"),
            ("-0.001", "-0.001"),
            ("0.0000001", "1E-7"),
            (".5", "0.5"),
            ("007", "7"),
            ("+2.0", "2.0"),
            ("1.23E-2", "0.0123"),
            ("inf", "Infinity"),
            ("-Infinity", "-Infinity"),
        ] {
            assert_eq!(parse_decimal(input).as_deref(), Some(out), "{input}");
        }
        for bad in ["x", "1e", "1.2.3", "", ".", "1e+", "--1"] {
            assert_eq!(parse_decimal(bad), None, "{bad}");
        }
        assert_eq!(decimal(&json!(42)).as_deref(), Some("42"));
        assert_eq!(decimal(&json!(4.2)), None);
    }

    #[test]
    fn datetimes_shift_to_utc() {
        for (input, out) in [
            ("2024-01-01T01:30:00+01:00", "2024-01-01T00:30:00Z"),
            (
                "2024-02-29T23:59:59.1234567Z",
                "2024-02-29T23:59:59.123456Z",
            ),
            ("2023-12-31T23:30:00-01:00", "2024-01-01T00:30:00Z"),
            ("2024-03-01T00:10:00.5+00:20", "2024-02-29T23:50:00.5Z"),
        ] {
            assert_eq!(datetime(input).as_deref(), Some(out), "{input}");
        }
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00*01:00",
        ] {
            assert_eq!(datetime(bad), None, "{bad}");
        }
    }

    #[test]
    fn flattens_like_the_server() {
        let map = json!({"a": {"b": 1, "c": {}}, "d/e": {"_type": "file"}, "": 3});
        let mut out = Vec::new();
        flatten(
            &Path::new(["p"]).unwrap(),
            map.as_object().unwrap(),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                ("p/a/b".to_owned(), json!(1)),
                ("p/d~1e".to_owned(), json!({"_type": "file"}))
            ]
        );
        assert!(is_typed(&json!({"_typed": 1, "_type": "x"})));
        assert!(!is_typed(&json!({"_type": "x"})));
    }
}
