//! Reading records and fields out of raw JSON text, in one pass.
//!
//! A connector that passes upstream records through untouched needs the
//! page's records as text, and perhaps one field of each (the cursor) and
//! one of the page (the next page's token). Deserialising with serde for
//! that costs a full parse of the page (`RawValue` records) and then one
//! more of every record for its cursor. [`Page::parse`] gets all three in
//! one scan of the page, skipping what it does not need without decoding
//! it; [`string_field`] reads one top-level string field of a record.
//! (The `gjson` crate does the field lookup in general; measured in the
//! guest, it used more fuel than the full parse it replaced.)
//!
//! The scan is lenient: it finds fields, it does not validate. The host
//! validates every emitted record against the stream's schema.

use std::borrow::Cow;

/// A page of records, read in one pass by [`Page::parse`].
#[derive(Debug, Default)]
pub struct Page<'a> {
    /// The elements of the page's records array, in order.
    pub records: Vec<Record<'a>>,
    /// The page's other top-level fields: key and raw value text.
    fields: Vec<(Cow<'a, str>, &'a str)>,
}

/// One element of a page's records array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its JSON text, as the upstream sent it.
    pub text: &'a str,
    /// Its top-level cursor field, if it is an object with that field as a
    /// string.
    pub cursor: Option<Cow<'a, str>>,
}

impl<'a> Page<'a> {
    /// Read the JSON object `raw`: the elements of its top-level array
    /// field `records` (absent: none), each with its top-level string field
    /// `cursor`, and the object's other fields. `None` if `raw` is not one
    /// JSON object or `records` is not an array.
    pub fn parse(raw: &'a str, records: &str, cursor: &str) -> Option<Page<'a>> {
        let b = raw.as_bytes();
        let mut page = Page::default();
        let end = walk_object(raw, skip_ws(b, 0), |key, v| {
            if key == records {
                page.records.clear();
                return records_in(raw, v, cursor, &mut page.records).map(Some);
            }
            let end = skip_value(b, v)?;
            page.fields.push((key, raw.get(v..end)?));
            Some(Some(end))
        })?;
        (skip_ws(b, end) == b.len()).then_some(page)
    }

    /// The JSON text of the page's top-level field `key` (not the
    /// records); the last one if it repeats.
    pub fn field(&self, key: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|f| f.1)
    }

    /// The page's top-level field `key` (not the records), if it is a
    /// string; the last one if it repeats.
    pub fn string_field(&self, key: &str) -> Option<Cow<'a, str>> {
        string_at(self.field(key)?, 0).map(|(s, _)| s)
    }
}

/// The elements of the array at `i` into `out`, with their cursors; where
/// the array ends.
fn records_in<'a>(
    raw: &'a str,
    i: usize,
    cursor: &str,
    out: &mut Vec<Record<'a>>,
) -> Option<usize> {
    let b = raw.as_bytes();
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let mut i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b']') {
        return Some(i + 1);
    }
    loop {
        let mut found = None;
        let end = if b.get(i) == Some(&b'{') {
            walk_object(raw, i, |key, v| field_if(raw, key, v, cursor, &mut found))?
        } else {
            skip_value(b, i)?
        };
        out.push(Record {
            text: raw.get(i..end)?,
            cursor: found,
        });
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Some(i + 1),
            _ => return None,
        }
    }
}

/// For [`walk_object`]: if `key` is `wanted`, its string value (or `None`
/// for another type) into `found`, and where a string value ends.
fn field_if<'a>(
    raw: &'a str,
    key: Cow<'a, str>,
    v: usize,
    wanted: &str,
    found: &mut Option<Cow<'a, str>>,
) -> Option<Option<usize>> {
    if key != wanted {
        return Some(None);
    }
    if raw.as_bytes()[v] != b'"' {
        *found = None;
        return Some(None);
    }
    let (s, end) = string_at(raw, v)?;
    *found = Some(s);
    Some(Some(end))
}

/// The string value of the top-level field `key` of the JSON object in
/// `raw`: borrowed from `raw` unless it has escapes. `None` if `raw` is not
/// an object, lacks the field, or the field's value is not a string. When
/// a key repeats, the last one counts (as with `serde_json`).
pub fn string_field<'a>(raw: &'a str, key: &str) -> Option<Cow<'a, str>> {
    let mut found = None;
    walk_object(raw, skip_ws(raw.as_bytes(), 0), |k, v| {
        field_if(raw, k, v, key, &mut found)
    })?;
    found
}

/// Walk the object starting at `i`, calling `field(key, value_start)` for
/// each field in order. `field` returns `Some(Some(end))` if it read the
/// value itself (ending at `end`), `Some(None)` to have it skipped, `None`
/// to stop: the text is not what the caller can read. Returns where the
/// object ends.
fn walk_object<'a>(
    raw: &'a str,
    i: usize,
    mut field: impl FnMut(Cow<'a, str>, usize) -> Option<Option<usize>>,
) -> Option<usize> {
    let b = raw.as_bytes();
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        let (key, after_key) = string_at(raw, i)?;
        i = skip_ws(b, after_key);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let v = skip_ws(b, i + 1);
        b.get(v)?;
        let end = match field(key, v)? {
            Some(end) => end,
            None => skip_value(b, v)?,
        };
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Some(i + 1),
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
        j = next_quote_or_backslash(b, j)?;
        if b[j] == b'"' {
            return Some((j + 1, escaped));
        }
        escaped = true;
        j += 2;
    }
}

/// The index of the first `"` or `\\` at or after `j`. Eight bytes at a
/// time (wasm has 64-bit integers; most strings in a record are short, too
/// short for a SIMD search's setup to pay).
fn next_quote_or_backslash(b: &[u8], mut j: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(j..j + 8) {
        let w = u64::from_le_bytes(chunk.try_into().ok()?);
        // A byte of `x` is zero where `w` has the byte searched for.
        let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let hits =
            zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\')));
        if hits != 0 {
            return Some(j + (hits.trailing_zeros() / 8) as usize);
        }
        j += 8;
    }
    b.get(j..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|k| j + k)
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

    #[test]
    fn a_page_gives_its_records_their_cursors_and_its_fields() {
        let raw = r#" {"next":"t\u0031","items":[ {"id":1,"u":"a","n":{"u":"no"}} ,
            {"u":"b\"c","tags":["]","}"]}, 7, {"id":3}, {"u":1}, "x" ],"n":null} "#;
        let page = Page::parse(raw, "items", "u").unwrap();
        let got: Vec<(&str, Option<&str>)> = page
            .records
            .iter()
            .map(|r| (r.text, r.cursor.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (r#"{"id":1,"u":"a","n":{"u":"no"}}"#, Some("a")),
                (r#"{"u":"b\"c","tags":["]","}"]}"#, Some("b\"c")),
                ("7", None),
                (r#"{"id":3}"#, None),
                (r#"{"u":1}"#, None),
                (r#""x""#, None),
            ]
        );
        assert_eq!(page.string_field("next").as_deref(), Some("t1"));
        assert_eq!(page.string_field("n"), None);
        assert_eq!(page.field("n"), Some("null"));
        assert_eq!(page.field("next"), Some(r#""t\u0031""#));
        assert_eq!(page.string_field("items"), None);
        assert_eq!(page.string_field("absent"), None);

        let empty = Page::parse(r#"{"items":[],"next":"z"}"#, "items", "u").unwrap();
        assert!(empty.records.is_empty());
        let none = Page::parse(r#"{"next":"z"}"#, "items", "u").unwrap();
        assert!(none.records.is_empty());
    }

    #[test]
    fn a_page_that_is_not_one_object_with_an_array_is_none() {
        for raw in [
            "",
            "[]",
            r#"{"items":{}}"#,
            r#"{"items":[1,2}"#,
            r#"{"items":[1 2]}"#,
            r#"{"items":[{"u":"a"]}"#,
            r#"{"items":[]} {}"#,
            r#"{"items":[],}"#,
            r#"{"items":["unterminated]}"#,
            r#"{"items":[]"#,
        ] {
            assert!(Page::parse(raw, "items", "u").is_none(), "{raw}");
        }
    }
}
