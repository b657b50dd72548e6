//! `vmadm list` and `vmadm lookup`: filters are evaluated by vmmd; columns, sorting and
//! formats here.

use std::path::Path;

use hull_spec::flatten::{RECORD_PATH_RULE, is_record_path, lookup as path_lookup};
use serde_json::{Map, Value};

use crate::table::{fields, render, sort};
use crate::{CmdResult, Failure, client};

pub struct ListArgs {
    pub parsable: bool,
    pub no_header: bool,
    pub fields: Option<String>,
    pub sort: Option<String>,
    pub filters: Vec<String>,
}

const DEFAULT_FIELDS: &str = "uuid,type,ram,state,alias";
const DEFAULT_SORT: &str = "ram,uuid";

fn check_filters(filters: &[String]) -> Result<(), Failure> {
    for f in filters {
        match f.split_once('=') {
            Some((key, _)) if !key.is_empty() => check_key("filter key", key)?,
            _ => {
                return Err(Failure::usage(format!(
                    "{f:?} is not a filter (key=value or key=~regex)"
                )));
            }
        }
    }
    Ok(())
}

/// A column, sort key or filter key must name something a record can hold: a misspelt one
/// would otherwise print an empty column or table and exit 0.
fn check_key(what: &str, key: &str) -> Result<(), Failure> {
    if is_record_path(key) {
        Ok(())
    } else {
        Err(Failure::usage(format!("{what} {key:?} {RECORD_PATH_RULE}")))
    }
}

fn check_keys(what: &str, keys: &[String]) -> Result<(), Failure> {
    keys.iter()
        .try_for_each(|k| check_key(what, k.trim_start_matches('-')))
}

/// The matching records, holding only the properties `need` names (all when `None`).
fn records(
    socket: Option<&Path>,
    filters: &[String],
    need: Option<Vec<String>>,
) -> Result<Vec<Value>, Failure> {
    check_filters(filters)?;
    Ok(client(socket)?.list_values(filters, need.as_deref())?)
}

/// Columns plus sort keys (without their `-`).
fn needed(cols: &[String], by: &[String]) -> Vec<String> {
    cols.iter()
        .cloned()
        .chain(by.iter().map(|b| b.trim_start_matches('-').to_string()))
        .collect()
}

pub fn list(socket: Option<&Path>, a: &ListArgs) -> CmdResult {
    let cols = fields(a.fields.as_deref().unwrap_or(DEFAULT_FIELDS)).map_err(Failure::usage)?;
    let by = fields(a.sort.as_deref().unwrap_or(DEFAULT_SORT)).map_err(Failure::usage)?;
    check_keys("-o field", &cols)?;
    check_keys("-s key", &by)?;
    let mut rows = records(socket, &a.filters, Some(needed(&cols, &by)))?;
    sort(&mut rows, &by);
    crate::out!(
        "{}",
        render(&rows, &cols, !(a.no_header || a.parsable), a.parsable)
    );
    Ok(())
}

pub fn lookup(
    socket: Option<&Path>,
    json: bool,
    unique: bool,
    cols: Option<&str>,
    filters: &[String],
) -> CmdResult {
    if cols.is_some() && !json {
        return Err(Failure::usage("-o goes with -j"));
    }
    let need = match (json, cols) {
        (false, _) => Some(vec!["uuid".to_string()]),
        (true, Some(list)) => {
            let cols = fields(list).map_err(Failure::usage)?;
            check_keys("-o field", &cols)?;
            Some(cols)
        }
        (true, None) => None,
    };
    let rows = records(socket, filters, need)?;
    if unique && rows.len() != 1 {
        return Err(Failure::new(format!(
            "requested unique lookup but found {} results",
            rows.len()
        )));
    }
    if !json {
        for r in &rows {
            crate::outln!("{}", r.get("uuid").and_then(Value::as_str).unwrap_or("-"));
        }
        return Ok(());
    }
    let out: Vec<Value> = match cols {
        None => rows,
        Some(list) => {
            let cols = fields(list).map_err(Failure::usage)?;
            rows.iter()
                .map(|r| {
                    let mut m = Map::new();
                    for c in &cols {
                        if let Some(v) = path_lookup(r, c).first() {
                            m.insert(c.clone(), (*v).clone());
                        }
                    }
                    Value::Object(m)
                })
                .collect()
        }
    };
    let text = serde_json::to_string_pretty(&out).map_err(|e| Failure::new(e.to_string()))?;
    crate::outln!("{text}");
    Ok(())
}
