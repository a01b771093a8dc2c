//! Shared building blocks: seeded rng streams, unbiased picks, uuids, JSON and UTC time formatting.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::Event;

/// The rng every generator draws from.
pub(crate) type Rng = ChaCha8Rng;

/// Independent ChaCha streams under one seed. Fixed pools (users, tracks, products,
/// locations) come from their own stream so they are identical whatever kind is
/// generated: `users` and `music` with the same seed agree on who the users are, and a
/// product has one price in `sales` and `retail`. Each kind's events have their own
/// stream too, so `sales` and `warehouse` run with one seed do not share event_ids.
pub(crate) mod stream {
    pub const USERS: u64 = 1;
    pub const TRACKS: u64 = 2;
    pub const PRODUCTS: u64 = 3;
    pub const LOCATIONS: u64 = 4;
    pub const MUSIC: u64 = 10;
    pub const SALES: u64 = 11;
    pub const WAREHOUSE: u64 = 12;
    pub const RETAIL: u64 = 13;
    pub const COVID_NEW: u64 = 14;
    pub const COVID_CUMULATIVE: u64 = 15;
    pub const PAYMENTS: u64 = 16;
}

pub(crate) fn rng(seed: u64, stream: u64) -> Rng {
    let mut rng = Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Uniform integer in `0..n` (Lemire's multiply-and-reject). Hand-written rather than
/// `rand::Rng::random_range` so the byte stream depends only on ChaCha8's output,
/// which is specified, and not on a rand version's sampling algorithm.
pub(crate) fn below(rng: &mut Rng, n: u64) -> u64 {
    debug_assert!(n > 0, "below(0) has no valid result");
    let mut wide = u128::from(rng.next_u64()) * u128::from(n);
    if (wide as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (wide as u64) < threshold {
            wide = u128::from(rng.next_u64()) * u128::from(n);
        }
    }
    (wide >> 64) as u64
}

/// Uniform integer in `lo..=hi`.
pub(crate) fn between(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + below(rng, hi - lo + 1)
}

/// Uniform index into a non-empty collection of `len` items.
pub(crate) fn index(rng: &mut Rng, len: usize) -> usize {
    below(rng, len as u64) as usize
}

/// Uniform element of a non-empty slice of small `Copy` values (names, constants).
pub(crate) fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[index(rng, items.len())]
}

/// Weighted choice of an index by cumulative sums (few choices, so a linear scan wins).
#[derive(Debug, Clone)]
pub(crate) struct Weighted {
    cumulative: Vec<u64>,
}

impl Weighted {
    /// An all-zero table falls back to equal weights rather than having nothing to pick.
    pub(crate) fn new(weights: &[u32]) -> Self {
        assert!(
            !weights.is_empty(),
            "a weighted choice needs at least one option"
        );
        let all_zero = weights.iter().all(|&w| w == 0);
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += if all_zero { 1 } else { u64::from(w) };
                Some(*sum)
            })
            .collect();
        Self { cumulative }
    }

    pub(crate) fn pick(&self, rng: &mut Rng) -> usize {
        let total = *self.cumulative.last().expect("non-empty by construction");
        let r = below(rng, total);
        self.cumulative
            .iter()
            .position(|&c| r < c)
            .expect("r < total")
    }
}

/// Room for one hyphenated uuid.
pub(crate) type UuidBuf = [u8; uuid::fmt::Hyphenated::LENGTH];

/// A v4 uuid from the rng's bytes, written into `buf` without allocating.
pub(crate) fn uuid_into<'b>(rng: &mut Rng, buf: &'b mut UuidBuf) -> &'b str {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(buf)
}

pub(crate) fn uuid_string(rng: &mut Rng) -> String {
    uuid_into(rng, &mut [0; uuid::fmt::Hyphenated::LENGTH]).to_owned()
}

impl Event {
    /// Clears the event for reuse, keeping its buffers' capacity.
    pub(crate) fn reset(&mut self, route: usize, timestamp_ms: i64) {
        self.route = route;
        self.timestamp_ms = timestamp_ms;
        self.key.clear();
        self.value.clear();
    }

    pub(crate) fn set_value<T: Serialize>(&mut self, value: &T) {
        self.value.clear();
        serde_json::to_writer(&mut self.value, value)
            .expect("serializing plain structs into a Vec cannot fail");
    }

    pub(crate) fn set_key_number(&mut self, key: u64) {
        self.key.clear();
        write!(self.key, "{key}").expect("writing to a String cannot fail");
    }
}

/// Formats `timestamp_ms` as UTC `YYYY-MM-DD HH:MM:SS`, re-formatting only when the
/// second changes: generated events arrive in bursts stamped with the same clock reading.
#[derive(Debug, Default)]
pub(crate) struct UtcClock {
    second: Option<i64>,
    text: String,
    date_len: usize,
}

impl UtcClock {
    /// `YYYY-MM-DD HH:MM:SS`.
    pub(crate) fn datetime(&mut self, timestamp_ms: i64) -> &str {
        self.refresh(timestamp_ms);
        &self.text
    }

    /// `YYYY-MM-DD`.
    pub(crate) fn date(&mut self, timestamp_ms: i64) -> &str {
        self.refresh(timestamp_ms);
        &self.text[..self.date_len]
    }

    fn refresh(&mut self, timestamp_ms: i64) {
        let second = timestamp_ms.div_euclid(1000);
        if self.second == Some(second) {
            return;
        }
        self.second = Some(second);
        // Beyond chrono's ±262,000-year range, pin to its edge instead of panicking.
        let at = DateTime::<Utc>::from_timestamp(second, 0).unwrap_or(if second < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        });
        self.text.clear();
        write!(self.text, "{}", at.format("%Y-%m-%d")).expect("String write");
        self.date_len = self.text.len();
        write!(self.text, "{}", at.format(" %H:%M:%S")).expect("String write");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = rng(1, stream::MUSIC);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[below(&mut rng, 7) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(below(&mut rng, 1), 0);
        for _ in 0..100 {
            let v = between(&mut rng, 5, 6);
            assert!(v == 5 || v == 6);
        }
    }

    #[test]
    fn streams_differ() {
        let a = rng(7, stream::SALES).next_u64();
        let b = rng(7, stream::WAREHOUSE).next_u64();
        assert_ne!(a, b);
        assert_eq!(a, rng(7, stream::SALES).next_u64());
    }

    #[test]
    fn zero_weights_mean_equal_weights() {
        let w = Weighted::new(&[0, 0]);
        let mut rng = rng(3, stream::MUSIC);
        let ones = (0..1000).filter(|_| w.pick(&mut rng) == 1).count();
        assert!((400..600).contains(&ones), "{ones}");
        let skip_zero = Weighted::new(&[0, 5, 0]);
        assert!((0..100).all(|_| skip_zero.pick(&mut rng) == 1));
    }

    #[test]
    fn uuids_are_v4() {
        let mut rng = rng(9, stream::MUSIC);
        let s = uuid_string(&mut rng);
        let parsed = uuid::Uuid::parse_str(&s).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(s, s.to_lowercase());
    }

    #[test]
    fn clock_formats_utc() {
        let mut clock = UtcClock::default();
        assert_eq!(clock.datetime(1_728_573_110_999), "2024-10-10 15:11:50");
        assert_eq!(clock.date(1_728_573_110_999), "2024-10-10");
        assert_eq!(clock.datetime(-1), "1969-12-31 23:59:59");
        assert_eq!(clock.date(0), "1970-01-01");
        // Out of chrono's range: no panic.
        assert!(!clock.datetime(i64::MAX).is_empty());
        assert!(!clock.datetime(i64::MIN).is_empty());
    }
}
