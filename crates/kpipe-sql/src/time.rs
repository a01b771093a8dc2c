//! Dates and times as ksqlDB's functions format them: Java
//! DateTimeFormatter patterns (`yyyy-MM-dd HH:mm:ss zzz`) in a time zone.

use anyhow::{anyhow, Result};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Epoch milliseconds as text in `pattern`, in the zone named `zone` (UTC if none).
pub(crate) fn format_millis(millis: i64, pattern: &str, zone: Option<&str>) -> Result<String> {
    let instant: DateTime<Utc> = Utc
        .timestamp_millis_opt(millis)
        .single()
        .ok_or_else(|| anyhow!("{millis} is not a representable time"))?;
    let format = strftime(pattern);
    Ok(match zone {
        Some(zone) => {
            let tz: Tz = zone
                .parse()
                .map_err(|_| anyhow!("Unknown time zone: '{zone}'"))?;
            instant.with_timezone(&tz).format(&format).to_string()
        }
        None => instant.format(&format).to_string(),
    })
}

/// A Java DateTimeFormatter pattern as a chrono (strftime) one: runs of a
/// pattern letter become the matching field, `'quoted'` text stays as it is.
fn strftime(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted literal text; '' is a quote.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                push_literal(&mut out, chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        i += run;
        let field = match (c, run) {
            ('y' | 'u', 2) => "%y",
            ('y' | 'u', _) => "%Y",
            ('M', 1) => "%-m",
            ('M', 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', 1) => "%-d",
            ('d', _) => "%d",
            ('H', 1) => "%-H",
            ('H', _) => "%H",
            ('h', 1) => "%-I",
            ('h', _) => "%I",
            ('m', 1) => "%-M",
            ('m', _) => "%M",
            ('s', 1) => "%-S",
            ('s', _) => "%S",
            ('S', 1) => "%1f",
            ('S', 2) => "%2f",
            ('S', _) => "%3f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('D', _) => "%j",
            ('z', 1..=3) => "%Z",
            ('Z', _) => "%z",
            ('X' | 'x', 1 | 2) => "%z",
            ('X' | 'x', _) => "%:z",
            _ => {
                for _ in 0..run {
                    push_literal(&mut out, c);
                }
                continue;
            }
        };
        out.push_str(field);
    }
    out
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_patterns_format_in_a_zone() {
        let millis = 1_526_075_913_000;
        assert_eq!(
            format_millis(
                millis,
                "yyyy-MM-dd HH:mm:ss zzz",
                Some("America/Los_Angeles")
            )
            .unwrap(),
            "2018-05-11 14:58:33 PDT"
        );
        assert_eq!(
            format_millis(millis, "yyyy-MM-dd'T'HH:mm:ss.SSS", None).unwrap(),
            "2018-05-11T21:58:33.000"
        );
        assert!(format_millis(millis, "yyyy", Some("Mars/Olympus")).is_err());
    }
}
