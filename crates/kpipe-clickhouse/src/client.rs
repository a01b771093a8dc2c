//! ClickHouse over its HTTP interface: statements, queries, JSONEachRow inserts.
//!
//! Credentials come from the URL (`http://user:pass@host:8123`) or the
//! `CLICKHOUSE_USER` / `CLICKHOUSE_PASSWORD` variables, travel in ClickHouse's
//! `X-ClickHouse-User` / `X-ClickHouse-Key` headers, and are never printed.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, Result};

/// Not `Clone` on purpose: hyper's pooled connections belong to the tokio runtime
/// that opened them, so another runtime (thread) needs [`ClickHouse::with_own_connections`].
pub struct ClickHouse {
    http: reqwest::Client,
    /// The URL without credentials, safe to print.
    url: reqwest::Url,
    user: Option<String>,
    password: Option<String>,
}

/// A statement the server refused (or could not be asked).
#[derive(Debug, Clone)]
pub struct ServerError {
    /// ClickHouse's error code (`Code: N`), when it sent one.
    pub code: Option<u32>,
    pub message: String,
    /// Not worth retrying: the server understood and said no.
    pub permanent: bool,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "{} (code {code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ServerError {}

impl ClickHouse {
    pub fn new(url: &str) -> Result<ClickHouse> {
        let mut parsed = reqwest::Url::parse(url).map_err(|e| {
            anyhow!("{url:?} is not a ClickHouse URL like http://127.0.0.1:8123 ({e})")
        })?;
        if parsed.scheme() != "http" {
            return Err(anyhow!(
                "only http:// ClickHouse URLs are supported, not {}://",
                parsed.scheme()
            ));
        }
        let from_url = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let user = from_url(parsed.username()).or_else(|| std::env::var("CLICKHOUSE_USER").ok());
        let password = parsed
            .password()
            .and_then(from_url)
            .or_else(|| std::env::var("CLICKHOUSE_PASSWORD").ok());
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        Ok(ClickHouse {
            http: http_client()?,
            url: parsed,
            user,
            password,
        })
    }

    /// The same server and credentials over a new connection pool.
    pub fn with_own_connections(&self) -> Result<ClickHouse> {
        Ok(ClickHouse {
            http: http_client()?,
            url: self.url.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
        })
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    async fn post(
        &self,
        query: Option<&str>,
        body: Vec<u8>,
        settings: &[(&str, &str)],
    ) -> Result<String, ServerError> {
        let mut request = self.http.post(self.url.clone()).body(body);
        if let Some(query) = query {
            request = request.query(&[("query", query)]);
        }
        request = request.query(settings);
        if let Some(user) = &self.user {
            request = request.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        let response = request.send().await.map_err(|e| ServerError {
            code: None,
            message: format!(
                "cannot reach ClickHouse at {}: {}",
                self.url,
                root_cause(&e)
            ),
            permanent: false,
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| ServerError {
            code: None,
            message: format!("ClickHouse at {} broke off its answer: {e}", self.url),
            permanent: false,
        })?;
        if status.is_success() {
            return Ok(text);
        }
        let (code, message) = parse_error(&text);
        Err(ServerError {
            code,
            message,
            permanent: status.is_client_error() || code.is_some_and(is_permanent),
        })
    }

    /// Runs one statement; returns what the server printed.
    pub async fn execute(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
    ) -> Result<String, ServerError> {
        self.post(None, sql.as_bytes().to_vec(), settings).await
    }

    /// Rows of a query as JSONEachRow lines, columns in the query's order
    /// (64-bit integers as numbers).
    pub async fn lines(&self, sql: &str) -> Result<Vec<String>, ServerError> {
        let text = self
            .execute(
                &format!("{sql} FORMAT JSONEachRow"),
                &[("output_format_json_quote_64bit_integers", "0")],
            )
            .await?;
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect())
    }

    /// Rows of a query as JSON objects.
    pub async fn rows(&self, sql: &str) -> Result<Vec<serde_json::Value>, ServerError> {
        self.lines(sql)
            .await?
            .iter()
            .map(|l| {
                serde_json::from_str(l).map_err(|e| ServerError {
                    code: None,
                    message: format!("ClickHouse sent a row that is not JSON ({e})"),
                    permanent: true,
                })
            })
            .collect()
    }

    /// One number from a query such as `SELECT count() FROM t`.
    pub async fn number(&self, sql: &str) -> Result<u64, ServerError> {
        let text = self.execute(sql, &[]).await?;
        text.trim().parse().map_err(|_| ServerError {
            code: None,
            message: format!("expected a number from {sql:?}, got {:?}", text.trim()),
            permanent: true,
        })
    }

    /// `INSERT INTO table FORMAT JSONEachRow` with `body` as the rows.
    pub async fn insert(
        &self,
        table: &str,
        body: Vec<u8>,
        settings: &[(&str, &str)],
    ) -> Result<(), ServerError> {
        self.post(
            Some(&format!("INSERT INTO {table} FORMAT JSONEachRow")),
            body,
            settings,
        )
        .await
        .map(|_| ())
    }

    /// The server's (major, minor) version.
    pub async fn version(&self) -> Result<(u32, u32), ServerError> {
        let text = self.execute("SELECT version()", &[]).await?;
        parse_version(text.trim()).ok_or_else(|| ServerError {
            code: None,
            message: format!(
                "ClickHouse reported a version kpipe cannot read: {:?}",
                text.trim()
            ),
            permanent: true,
        })
    }
}

/// `(major, minor)` from a version such as `18.16.1`, `24.8` or `22`.
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Some((major, minor)),
        (Some(Ok(major)), None) => Some((major, 0)),
        _ => None,
    }
}

fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?)
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Codes meaning "the data or the statement is wrong", not "try again".
fn is_permanent(code: u32) -> bool {
    // 6 cannot parse text, 16 no such column, 26/27 cannot parse, 38 cannot parse date,
    // 41 cannot parse datetime, 53 type mismatch, 60 unknown table, 62 syntax error,
    // 70 cannot convert type, 72 cannot parse number, 81 unknown database, 117 incorrect data.
    matches!(
        code,
        6 | 16 | 26 | 27 | 38 | 41 | 53 | 60 | 62 | 70 | 72 | 81 | 117
    )
}

/// `(code, message)` from an error body of any ClickHouse version:
/// 18.x `Code: 60, e.displayText() = DB::Exception: Table x doesn't exist., e.what() = DB::Exception`
/// and later `Code: 60. DB::Exception: Table x doesn't exist. (UNKNOWN_TABLE) (version 23.8.1.1)`.
fn parse_error(body: &str) -> (Option<u32>, String) {
    let body = body.trim();
    let code = body
        .strip_prefix("Code: ")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok());
    let message = body.split_once("DB::Exception: ").map_or(body, |(_, m)| m);
    let message = message
        .split(", e.what() = ")
        .next()
        .unwrap_or(message)
        .split(" (version ")
        .next()
        .unwrap_or(message)
        .lines()
        .next()
        .unwrap_or_default()
        .trim();
    (code, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_old_and_new_servers() {
        assert_eq!(
            parse_error("Code: 36, e.displayText() = DB::Exception: Unknown setting kafka_skip_broken_messages for storage Kafka, e.what() = DB::Exception\n"),
            (Some(36), "Unknown setting kafka_skip_broken_messages for storage Kafka".into())
        );
        assert_eq!(
            parse_error("Code: 60. DB::Exception: Table default.x does not exist. (UNKNOWN_TABLE) (version 23.8.1.1)\n"),
            (Some(60), "Table default.x does not exist. (UNKNOWN_TABLE)".into())
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("18.16.1"), Some((18, 16)));
        assert_eq!(parse_version("24"), Some((24, 0)));
        assert_eq!(parse_version("latest"), None);
    }

    #[test]
    fn credentials_leave_the_url() {
        let ch = ClickHouse::new("http://bob:s3cret@127.0.0.1:8123/").unwrap();
        assert_eq!(ch.url(), "http://127.0.0.1:8123/");
        assert_eq!(ch.password.as_deref(), Some("s3cret"));
        assert!(ClickHouse::new("https://x").is_err());
    }
}
