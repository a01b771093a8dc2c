//! Tokens of ksqlDB's SQL: unquoted identifiers are upper-cased as ksqlDB does,
//! back-quoted and double-quoted ones keep their case; strings use '' to escape.

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// An identifier or keyword; `quoted` ones never act as keywords.
    Word {
        text: String,
        quoted: bool,
    },
    Number(String),
    Text(String),
    Symbol(&'static str),
}

impl Token {
    /// Whether this is the (unquoted) keyword `keyword`.
    pub fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word { text, quoted: false } if text == keyword)
    }
}

const SYMBOLS: [&str; 21] = [
    "<=", ">=", "!=", "<>", "->", "=>", ":=", "(", ")", "[", "]", ",", ";", "*", "=", "<", ">",
    "+", "-", "/", "%",
];

/// Where the identifier running through `at` ends.
fn word_end(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
        at += 1;
    }
    at
}

/// An unquoted identifier, upper-cased as ksqlDB does.
fn word(text: &str) -> Token {
    Token::Word {
        text: text.to_ascii_uppercase(),
        quoted: false,
    }
}

/// Splits `sql` into tokens, each with its byte position (for error messages).
pub fn tokenize(sql: &str) -> Result<Vec<(Token, usize)>> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && bytes.get(i + 1) == Some(&b'-') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            i = word_end(bytes, i);
            tokens.push((word(&sql[start..i]), start));
        } else if c.is_ascii_digit()
            || (c == '.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                i += 1;
                if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
                    i += 1;
                }
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if bytes
                .get(i)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
            {
                // `1R`: an identifier that starts with digits.
                i = word_end(bytes, i);
                tokens.push((word(&sql[start..i]), start));
                continue;
            }
            tokens.push((Token::Number(sql[start..i].to_string()), start));
        } else if c == '\'' || c == '`' || c == '"' {
            let (text, end) = quoted(sql, i, c)?;
            i = end;
            tokens.push((
                match c {
                    '\'' => Token::Text(text),
                    _ => Token::Word { text, quoted: true },
                },
                start,
            ));
        } else if c == '.' {
            tokens.push((Token::Symbol("."), start));
            i += 1;
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| sql[i..].starts_with(**s)) {
            tokens.push((Token::Symbol(symbol), start));
            i += symbol.len();
        } else {
            bail!("line {}: unexpected character {c:?}", line_of(sql, i));
        }
    }
    Ok(tokens)
}

/// A quoted text starting at `start`; a doubled quote stands for one.
fn quoted(sql: &str, start: usize, quote: char) -> Result<(String, usize)> {
    let mut text = String::new();
    let mut chars = sql[start + 1..].char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        if c == quote {
            if chars.peek().map(|(_, n)| *n) == Some(quote) {
                text.push(quote);
                chars.next();
                continue;
            }
            return Ok((text, start + 1 + offset + 1));
        }
        text.push(c);
    }
    bail!("line {}: {quote} is never closed", line_of(sql, start))
}

pub fn line_of(sql: &str, position: usize) -> usize {
    sql[..position.min(sql.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_numbers_strings_and_symbols() {
        let tokens: Vec<Token> = tokenize("select `Id`, 'it''s', 1.5e3 FROM t where a <> -2;")
            .unwrap()
            .into_iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(
            tokens[0],
            Token::Word {
                text: "SELECT".into(),
                quoted: false
            }
        );
        assert_eq!(
            tokens[1],
            Token::Word {
                text: "Id".into(),
                quoted: true
            }
        );
        assert_eq!(tokens[3], Token::Text("it's".into()));
        assert_eq!(tokens[5], Token::Number("1.5e3".into()));
        assert!(tokens.contains(&Token::Symbol("<>")));
        assert!(tokenize("select 'open").is_err());
        assert_eq!(
            tokenize("2r").unwrap()[0].0,
            Token::Word {
                text: "2R".into(),
                quoted: false
            }
        );
    }
}
