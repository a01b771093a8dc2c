//! Making user text safe to put into ClickHouse SQL: identifiers, string
//! literals, column types, key expressions and setting values are checked
//! against small grammars and quoted, and anything else is refused, so a table
//! config can never smuggle a second statement or a comment into the DDL.

use anyhow::{bail, Result};

/// A database or table name: `[A-Za-z_][A-Za-z0-9_]*`, returned backquoted.
pub fn name(what: &str, value: &str) -> Result<String> {
    check_name(what, value, false)?;
    Ok(format!("`{value}`"))
}

/// A column name: like [`name`], dots allowed (flattened JSON fields).
pub fn column(what: &str, value: &str) -> Result<String> {
    check_name(what, value, true)?;
    Ok(format!("`{value}`"))
}

fn check_name(what: &str, value: &str, dots: bool) -> Result<()> {
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (dots && c == '.'));
    if !first_ok || !rest_ok || value.len() > 200 {
        bail!(
            "{what} {value:?} is not a valid name: use letters, digits and underscores{}, starting with a letter or underscore",
            if dots { " (and dots)" } else { "" }
        );
    }
    Ok(())
}

/// A string literal in single quotes, with quotes and backslashes escaped.
pub fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Number(String),
    Text(String),
    Punct(char),
}

fn tokenize(what: &str, text: &str, punct: &str, strings: bool) -> Result<Vec<Token>> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            tokens.push(Token::Number(chars[start..i].iter().collect()));
        } else if strings && c == '\'' {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    bail!("{what} {text:?}: backslashes are not allowed in quoted text");
                }
                i += 1;
            }
            if i == chars.len() {
                bail!("{what} {text:?}: a quoted text is not closed");
            }
            tokens.push(Token::Text(chars[start..i].iter().collect()));
            i += 1;
        } else if punct.contains(c) {
            if (c == '-' && chars.get(i + 1) == Some(&'-'))
                || (c == '/' && chars.get(i + 1) == Some(&'*'))
            {
                bail!("{what} {text:?}: comments are not allowed");
            }
            tokens.push(Token::Punct(c));
            i += 1;
        } else {
            bail!(
                "{what} {text:?}: unexpected {c:?} at position {} (allowed: names, numbers, {})",
                i + 1,
                punct
                    .chars()
                    .map(String::from)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    let mut depth = 0i32;
    for t in &tokens {
        match t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            bail!("{what} {text:?}: unbalanced parentheses");
        }
    }
    if depth != 0 {
        bail!("{what} {text:?}: unbalanced parentheses");
    }
    Ok(tokens)
}

/// A column type such as `LowCardinality(String)`, `Decimal(18, 2)` or
/// `DateTime('UTC')`, returned normalised.
pub fn column_type(what: &str, text: &str) -> Result<String> {
    let tokens = tokenize(what, text, "(),=-", true)?;
    // One type name, optionally with one parenthesised argument list and nothing after it.
    let shape_ok = matches!(tokens.first(), Some(Token::Word(_)))
        && (tokens.len() == 1
            || (tokens[1] == Token::Punct('(') && closing_paren(&tokens, 1) == tokens.len() - 1));
    if !shape_ok {
        bail!("{what} {text:?} is not a column type");
    }
    let mut out = String::new();
    for t in &tokens {
        match t {
            Token::Word(w) if w.contains('.') => bail!("{what} {text:?} is not a column type"),
            Token::Word(w) | Token::Number(w) => {
                if out.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '\'') {
                    out.push(' ');
                }
                out.push_str(w);
            }
            Token::Text(s) => out.push_str(&literal(s)),
            Token::Punct(',') => out.push_str(", "),
            Token::Punct('=') => out.push_str(" = "),
            Token::Punct(c) => out.push(*c),
        }
    }
    Ok(out)
}

/// Index of the `)` matching the `(` at `open`.
fn closing_paren(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// A key expression (sort, partition, shard, projection order): column names,
/// function calls, numbers and arithmetic only. Columns must be in `columns` and
/// come back backquoted.
pub fn expression(what: &str, text: &str, columns: &[String]) -> Result<String> {
    let tokens = tokenize(what, text, "(),+-*/%", false)?;
    if tokens.is_empty() {
        bail!("{what} is empty");
    }
    let mut out = String::new();
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Word(w) if tokens.get(i + 1) == Some(&Token::Punct('(')) => {
                check_name(what, w, false)?;
                out.push_str(w);
            }
            Token::Word(w) => {
                if !columns.iter().any(|c| c == w) {
                    bail!("{what} {text:?} names {w:?}, which is not a column of the schema");
                }
                out.push_str(&format!("`{w}`"));
            }
            Token::Number(n) => out.push_str(n),
            Token::Punct(',') => out.push_str(", "),
            Token::Punct(c @ ('+' | '-' | '*' | '/' | '%')) => out.push_str(&format!(" {c} ")),
            Token::Punct(c) => out.push(*c),
            Token::Text(_) => unreachable!("strings are not tokenized here"),
        }
    }
    Ok(out)
}

/// A setting value from JSON: numbers as they are, booleans as 0/1, text quoted.
pub fn setting_value(what: &str, value: &serde_json::Value) -> Result<String> {
    Ok(match value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => u8::from(*b).to_string(),
        serde_json::Value::String(s) => literal(s),
        other => bail!("{what}: {other} is not a number, boolean or string"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<String> {
        ["date", "location_key", "x"].map(String::from).to_vec()
    }

    #[test]
    fn names_are_checked_and_quoted() {
        assert_eq!(
            name("table", "covid_new_cases").unwrap(),
            "`covid_new_cases`"
        );
        assert_eq!(
            column("column", "event_param.user_id").unwrap(),
            "`event_param.user_id`"
        );
        for bad in ["", "1abc", "a-b", "a`b", "a b", "t; DROP TABLE x", "a.b"] {
            assert!(name("table", bad).is_err(), "{bad}");
        }
        assert!(column("column", "a`b").is_err());
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal(r"it's a \ test"), r"'it\'s a \\ test'");
    }

    #[test]
    fn types_keep_their_shape_and_refuse_anything_else() {
        assert_eq!(
            column_type("type", "LowCardinality(String)").unwrap(),
            "LowCardinality(String)"
        );
        assert_eq!(
            column_type("type", "Decimal(18,2)").unwrap(),
            "Decimal(18, 2)"
        );
        assert_eq!(
            column_type("type", "DateTime('UTC')").unwrap(),
            "DateTime('UTC')"
        );
        assert_eq!(
            column_type("type", "Enum8('a' = 1, 'b' = 2)").unwrap(),
            "Enum8('a' = 1, 'b' = 2)"
        );
        for bad in [
            "String; DROP TABLE t",
            "String) ENGINE = Log",
            "String -- x",
            "'x'",
            "Int32 DEFAULT 1",
            "Nullable(String) CODEC(ZSTD)",
        ] {
            assert!(column_type("type", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expressions_allow_functions_columns_and_arithmetic_only() {
        assert_eq!(
            expression("sort_key", "date, location_key", &cols()).unwrap(),
            "`date`, `location_key`"
        );
        assert_eq!(
            expression("partition_key", "toYYYYMM(date)", &cols()).unwrap(),
            "toYYYYMM(`date`)"
        );
        assert_eq!(
            expression("shard_key", "x % 4", &cols()).unwrap(),
            "`x` % 4"
        );
        for bad in [
            "date; DROP TABLE t",
            "date) SETTINGS x = 1 --",
            "date -- comment",
            "f('x')",
            "nosuch",
            "(date",
        ] {
            assert!(expression("sort_key", bad, &cols()).is_err(), "{bad}");
        }
    }
}
