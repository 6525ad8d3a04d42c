//! Reading one field out of a record kept as raw JSON text.
//!
//! A connector that passes upstream records through untouched (as
//! `serde_json::value::RawValue`, see the `items` example) often needs just
//! one field of each, the cursor. Deserialising the record for it costs a
//! full parse per record; [`string_field`] instead scans the top level of
//! the text once, skipping nested values and other fields without decoding
//! them. (The `gjson` crate does the same in general; measured in the
//! guest, it used more fuel than the full parse it replaced.)
//!
//! The scan is lenient: it finds fields, it does not validate. The host
//! validates every emitted record against the stream's schema.

use std::borrow::Cow;

/// The string value of the top-level field `key` of the JSON object in
/// `raw`: borrowed from `raw` unless it has escapes. `None` if `raw` is not
/// an object, lacks the field, or the field's value is not a string. When
/// a key repeats, the last one counts (as with `serde_json`).
pub fn string_field<'a>(raw: &'a str, key: &str) -> Option<Cow<'a, str>> {
    let b = raw.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return None;
    }
    let mut found = None;
    loop {
        let (k, after_key) = string_at(raw, i)?;
        i = skip_ws(b, after_key);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = skip_value(b, i)?;
        if k == key {
            found = match b[i] {
                b'"' => Some(string_at(raw, i)?.0),
                _ => None,
            };
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return found,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (one past the closing quote) of the string starting at `i`,
/// and whether it has escapes.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        // Most of a record's bytes are inside strings: memchr finds the
        // next quote or backslash a word at a time.
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[j] == b'"' {
            return Some((j + 1, escaped));
        }
        escaped = true;
        j += 2;
    }
}

/// The string starting at `i`, decoded, and where it ends.
fn string_at(raw: &str, i: usize) -> Option<(Cow<'_, str>, usize)> {
    let (end, escaped) = string_end(raw.as_bytes(), i)?;
    let text = if escaped {
        Cow::Owned(serde_json::from_str::<String>(raw.get(i..end)?).ok()?)
    } else {
        Cow::Borrowed(raw.get(i + 1..end - 1)?)
    };
    Some((text, end))
}

/// The end of the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while !matches!(
                b.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(raw: &str) -> Option<String> {
        string_field(raw, "updated_at").map(Cow::into_owned)
    }

    #[test]
    fn finds_top_level_string_fields() {
        let t = Some("2026-01-01T00:00:00Z".to_string());
        assert_eq!(
            get(r#"{"id":1,"tags":["a","]"],"updated_at":"2026-01-01T00:00:00Z"}"#),
            t
        );
        assert_eq!(
            get(" {\n \"n\" : {\"updated_at\":\"no\",\"x\":[{}]} ,\t\"updated_at\" : \"2026-01-01T00:00:00Z\" } "),
            t
        );
        assert_eq!(
            get(r#"{"updated_at":"a\"b\u00e9"}"#),
            Some("a\"b\u{e9}".into())
        );
        assert_eq!(get(r#"{"updat\u0065d_at":"esc"}"#), Some("esc".into()));
        assert_eq!(
            get(r#"{"updated_at":"x","updated_at":"y"}"#),
            Some("y".into())
        );
        assert_eq!(
            get(r#"{"note":"\"updated_at\":\"x\"","updated_at":"z"}"#),
            Some("z".into())
        );
        assert!(matches!(
            string_field(r#"{"updated_at":"plain"}"#, "updated_at"),
            Some(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn anything_else_is_none() {
        for raw in [
            r#"{"updated_at":17}"#,
            r#"{"updated_at":null}"#,
            r#"{"updated_at":["x"]}"#,
            r#"{"n":{"updated_at":"no"}}"#,
            r#"{"id":1}"#,
            "{}",
            "[1,2]",
            r#""updated_at""#,
            "",
            r#"{"updated_at":"x""#,
            r#"{"updated_at" "x"}"#,
            r#"{"a":1 "updated_at":"x"}"#,
            r#"{"a":[1,"updated_at":"x"}"#,
            r#"{"updated_at":"unterminated}"#,
        ] {
            assert_eq!(get(raw), None, "{raw}");
        }
    }
}
