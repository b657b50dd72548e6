//! vmadm's list filters: `key=value` (equality of the value's text) and `key=~regex`
//! (case-insensitive, as SmartOS's), over dotted paths (`nics.0.ip`, `nics.*.ip`,
//! `tags.role`). A filter on a list property matches when any element matches.

use hull_spec::flatten::{RECORD_PATH_RULE, is_record_path, lookup, text};
use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// A filter that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// No `=` in the expression.
    #[error("filter {0:?} must be key=value or key=~regex")]
    Shape(String),
    /// The key names nothing a record can hold: a filter on it could only ever match nothing.
    #[error("filter {expr:?}: {key:?} {}", RECORD_PATH_RULE)]
    UnknownKey {
        /// The filter as given.
        expr: String,
        /// Its key.
        key: String,
    },
    /// The regex does not compile (or is too large).
    #[error("filter {expr:?} has an invalid regular expression")]
    Regex {
        /// The filter as given.
        expr: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
}

/// One parsed filter.
#[derive(Debug, Clone)]
pub struct Filter {
    path: String,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Equals(String),
    Regex(Regex),
}

impl Filter {
    /// Parses `key=value` or `key=~regex`.
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let (path, rest) = expr
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| FilterError::Shape(expr.to_string()))?;
        if !is_record_path(path) {
            return Err(FilterError::UnknownKey {
                expr: expr.to_string(),
                key: path.to_string(),
            });
        }
        let matcher = match rest.strip_prefix('~') {
            Some(re) => Matcher::Regex(
                RegexBuilder::new(re)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|source| FilterError::Regex {
                        expr: expr.to_string(),
                        source,
                    })?,
            ),
            None => Matcher::Equals(rest.to_string()),
        };
        Ok(Filter {
            path: path.to_string(),
            matcher,
        })
    }

    /// True when the record matches.
    pub fn matches(&self, record: &Value) -> bool {
        lookup(record, &self.path).into_iter().any(|v| match v {
            Value::Array(items) => items.iter().any(|i| self.matches_one(i)) || self.matches_one(v),
            _ => self.matches_one(v),
        })
    }

    fn matches_one(&self, v: &Value) -> bool {
        let t = text(v);
        match &self.matcher {
            Matcher::Equals(want) => &t == want,
            Matcher::Regex(re) => re.is_match(&t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_regex_paths_and_lists() {
        let vm = json!({"alias": "web01", "ram": 256, "autoboot": false,
            "nics": [{"ip": "192.0.2.1"}, {"ips": ["198.51.100.2/24"]}],
            "tags": {"role": "db"}, "resolvers": ["192.0.2.53"]});
        let yes = [
            "alias=web01",
            "ram=256",
            "autoboot=false",
            "alias=~^web",
            "alias=~^WEB",
            "nics.0.ip=192.0.2.1",
            "nics.*.ip=192.0.2.1",
            "nics.1.ips=198.51.100.2/24",
            "tags.role=db",
            "resolvers=192.0.2.53",
            "nics.*.ips=~^198",
        ];
        for f in yes {
            assert!(Filter::parse(f).expect(f).matches(&vm), "{f}");
        }
        let no = [
            "alias=web",
            "alias=WEB01",
            "ram=25",
            "alias=~^db",
            "nics.2.ip=192.0.2.1",
            "tags.role=web",
            "customer_metadata.missing=x",
        ];
        for f in no {
            assert!(!Filter::parse(f).expect(f).matches(&vm), "{f}");
        }
        // A key no record can hold is refused, not an empty match.
        for f in ["missing=x", "nics.0.nosuch=~x"] {
            let e = Filter::parse(f).expect_err(f);
            assert!(matches!(e, FilterError::UnknownKey { .. }), "{f}: {e}");
        }
    }

    #[test]
    fn bad_filters_are_errors() {
        assert!(matches!(Filter::parse("alias"), Err(FilterError::Shape(_))));
        assert!(matches!(Filter::parse("=x"), Err(FilterError::Shape(_))));
        assert!(matches!(
            Filter::parse("alias=~("),
            Err(FilterError::Regex { .. })
        ));
    }
}
