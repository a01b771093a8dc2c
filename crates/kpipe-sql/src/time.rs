//! Dates and times as ksqlDB's functions format them: Java
//! DateTimeFormatter patterns (`yyyy-MM-dd HH:mm:ss zzz`) in a time zone;
//! and datetimes as ksqlDB reads them from partial ISO-8601 text.

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

/// Days since the epoch of the date at the start of `text` in the Java
/// pattern `pattern`, as ksqlDB's PARSE_DATE reads it (text after the date
/// is ignored); None when it does not start with one.
pub(crate) fn parse_date(text: &str, pattern: &str) -> Option<i64> {
    let (date, _) = chrono::NaiveDate::parse_and_remainder(text, &strftime(pattern)).ok()?;
    Some(
        date.signed_duration_since(chrono::NaiveDate::default())
            .num_days(),
    )
}

/// Epoch milliseconds of ISO-8601 text that may stop after any field
/// (`2020-02-23`, `2020-02-23T23:45`, `2020-02-23T23:45:12.000`), the missing
/// ones at their least, with an optional zone offset (`Z`, `-0100`,
/// `+01:00`; UTC without one), as ksqlDB reads datetimes in pull queries'
/// window bounds. Hour 24 is midnight of the next day.
pub(crate) fn parse_partial_datetime(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T').unwrap_or((text, ""));
    let mut date_parts = date.split('-');
    let year: i32 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next().map_or(Some(1), |m| m.parse().ok())?;
    let day: u32 = date_parts.next().map_or(Some(1), |d| d.parse().ok())?;
    if date_parts.next().is_some() {
        return None;
    }
    let zone_at = time.find(['Z', '+', '-']).unwrap_or(time.len());
    let (clock, zone) = time.split_at(zone_at);
    let offset_minutes = match zone {
        "" | "Z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
            let hours: i64 = digits.get(..2)?.parse().ok()?;
            let minutes: i64 = digits
                .get(2..)
                .filter(|m| !m.is_empty())
                .map_or(Some(0), |m| m.parse().ok())?;
            sign * (hours * 60 + minutes)
        }
    };
    let (clock, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut fields = clock.split(':').filter(|f| !f.is_empty());
    let mut next = || -> Option<i64> { fields.next().map_or(Some(0), |f| f.parse().ok()) };
    let (hour, minute, second) = (next()?, next()?, next()?);
    // A fraction of a second: `.9` is 900 ms; digits past milliseconds are cut.
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    let midnight = chrono::NaiveDate::from_ymd_opt(year, month, day)?
        .and_hms_opt(0, 0, 0)?
        .and_utc()
        .timestamp_millis();
    Some(midnight + ((hour * 60 + minute - offset_minutes) * 60 + second) * 1000 + millis)
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

    #[test]
    fn partial_datetimes_read_as_ksqldb_reads_window_bounds() {
        let full = parse_partial_datetime("2020-02-23T23:45:12.000");
        assert_eq!(full, Some(1_582_501_512_000));
        assert_eq!(parse_partial_datetime("2020-02-23T22:45:12.000-0100"), full);
        assert_eq!(parse_partial_datetime("2020-02-24T00:45:12+01:00"), full);
        assert_eq!(
            parse_partial_datetime("2020-02-24T24"),
            parse_partial_datetime("2020-02-25")
        );
        assert_eq!(
            parse_partial_datetime("2020-02-22T23:45"),
            Some(1_582_415_100_000)
        );
        assert_eq!(parse_partial_datetime("yesterday"), None);
        // A fraction is of a second, whatever its length.
        assert_eq!(
            parse_partial_datetime("2020-02-23T23:45:12.9"),
            Some(1_582_501_512_900)
        );
        assert_eq!(parse_partial_datetime("2020-02-23T23:45:12.9x"), None);
    }

    #[test]
    fn dates_parse_in_java_patterns_ignoring_what_follows() {
        assert_eq!(parse_date("2003-12-24", "yyyy-MM-dd"), Some(12_410));
        assert_eq!(parse_date("2003-12-24-01-01", "yyyy-MM-dd"), Some(12_410));
        assert_eq!(parse_date("24/12/2003", "dd/MM/yyyy"), Some(12_410));
        assert_eq!(parse_date("2004", "yyyy-MM-dd"), None);
    }
}
