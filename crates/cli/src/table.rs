//! SmartOS-style tables: columns named by dotted property paths, upper-case headers, two
//! spaces between columns, `-` for a missing value; `-p` gives colon-separated rows with
//! colons escaped; `-s` sorts by fields (`-field` descending), numbers numerically.

use std::cmp::Ordering;

use hull_spec::flatten::{lookup, text};
use serde_json::Value;

/// The cell for `field` in `row`.
pub fn cell(row: &Value, field: &str) -> String {
    match lookup(row, field).as_slice() {
        [] => "-".to_string(),
        [one] => text(one),
        many => many.iter().map(|v| text(v)).collect::<Vec<_>>().join(","),
    }
}

/// Splits a comma-separated field list, refusing empty names.
pub fn fields(list: &str) -> Result<Vec<String>, String> {
    let out: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
    if out.iter().any(String::is_empty) {
        return Err(format!("{list:?} is not a comma-separated list of fields"));
    }
    Ok(out)
}

/// A precomputed sort key: computed once per row, not once per comparison.
#[derive(Debug, PartialEq, PartialOrd)]
enum Key {
    Missing,
    Number(f64),
    Text(String),
}

fn key(row: &Value, field: &str) -> Key {
    match lookup(row, field).first() {
        None => Key::Missing,
        Some(Value::Number(n)) => n.as_f64().map_or(Key::Missing, Key::Number),
        Some(v) => Key::Text(text(v)),
    }
}

/// Sorts rows by the fields, each optionally prefixed with `-` for descending.
pub fn sort(rows: &mut Vec<Value>, by: &[String]) {
    let spec: Vec<(&str, bool)> = by
        .iter()
        .map(|f| match f.strip_prefix('-') {
            Some(rest) => (rest, true),
            None => (f.as_str(), false),
        })
        .collect();
    let mut keyed: Vec<(Vec<Key>, Value)> = rows
        .drain(..)
        .map(|r| (spec.iter().map(|(f, _)| key(&r, f)).collect(), r))
        .collect();
    keyed.sort_by(|(a, _), (b, _)| {
        for ((ka, kb), (_, desc)) in a.iter().zip(b).zip(&spec) {
            let o = ka.partial_cmp(kb).unwrap_or(Ordering::Equal);
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    rows.extend(keyed.into_iter().map(|(_, r)| r));
}

/// Renders the rows.
pub fn render(rows: &[Value], fields: &[String], header: bool, parsable: bool) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| fields.iter().map(|f| cell(r, f)).collect())
        .collect();
    let mut out = String::new();
    if parsable {
        for row in &cells {
            let escaped: Vec<String> = row.iter().map(|c| c.replace(':', "\\:")).collect();
            out.push_str(&escaped.join(":"));
            out.push('\n');
        }
        return out;
    }
    let headers: Vec<String> = fields.iter().map(|f| f.to_uppercase()).collect();
    let mut widths: Vec<usize> = if header {
        headers.iter().map(|h| h.chars().count()).collect()
    } else {
        vec![0; fields.len()]
    };
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |row: &[String]| {
        let last = row.len().saturating_sub(1);
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push('\n');
    };
    if header {
        line(&headers);
    }
    for row in &cells {
        line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_aligned_parsable_and_sorted() {
        let mut rows = vec![
            json!({"uuid": "b", "ram": 1024, "alias": "web:1"}),
            json!({"uuid": "a", "ram": 256}),
        ];
        let f = fields("uuid,ram,alias").expect("fields");
        sort(&mut rows, &["ram".into()]);
        assert_eq!(
            render(&rows, &f, true, false),
            "UUID  RAM   ALIAS\na     256   -\nb     1024  web:1\n"
        );
        assert_eq!(render(&rows, &f, false, true), "a:256:-\nb:1024:web\\:1\n");
        sort(&mut rows, &["-ram".into()]);
        assert_eq!(cell(&rows[0], "uuid"), "b");
        assert!(fields("a,,b").is_err());
    }
}
