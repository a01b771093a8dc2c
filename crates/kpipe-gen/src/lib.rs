//! kpipe-gen: deterministic synthetic event generators shaped like the seeds' data.
//!
//! A [`Generator`] produces `(route, key, JSON value, timestamp)` [`Event`]s; it knows
//! nothing about Kafka (the `kpipe gen` command sends them). Output is a pure function
//! of [`Options`] and the timestamps passed to [`Generator::next_into`]: the same seed
//! gives byte-identical events on every platform, because all randomness comes from
//! `ChaCha8Rng` seeded from the `u64` seed, never from the clock or `thread_rng`.
//!
//! ```
//! use kpipe_gen::{generator, Event, Kind, Options};
//!
//! let mut gen = generator(Kind::Music, &Options::default());
//! let mut event = Event::default();
//! gen.next_into(1_728_573_110_000, &mut event);
//! assert_eq!(gen.routes()[event.route], "music_events");
//! let json: serde_json::Value = serde_json::from_slice(&event.value).unwrap();
//! assert_eq!(json["event_param"]["user_id"], event.key.as_str());
//! ```
//!
//! Users are a fixed pool drawn from the seed, shared by the `music` and `users`
//! kinds: the `user_id`s in music events are the `uuid`s of the `users` kind.

mod covid;
mod music;
mod payments;
mod people;
mod pool;
mod retail;

use std::fmt;
use std::str::FromStr;

/// One generated event. `route` indexes `Generator::routes()` (retail has two: sales, warehouse).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub route: usize,
    pub key: String,
    pub value: Vec<u8>,
    pub timestamp_ms: i64,
}

/// An endless, deterministic source of events of one kind.
pub trait Generator: Send {
    /// Default topic names for each route, e.g. ["music_events"], or ["sales", "warehouse"] for retail.
    fn routes(&self) -> &'static [&'static str];
    /// Overwrites `out` (reusing its buffers) with the next event, stamped `timestamp_ms`.
    fn next_into(&mut self, timestamp_ms: i64, out: &mut Event);
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Music,
    Users,
    Sales,
    Warehouse,
    Retail,
    CovidNew,
    CovidCumulative,
    Payments,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Music,
        Kind::Users,
        Kind::Sales,
        Kind::Warehouse,
        Kind::Retail,
        Kind::CovidNew,
        Kind::CovidCumulative,
        Kind::Payments,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Music => "music",
            Kind::Users => "users",
            Kind::Sales => "sales",
            Kind::Warehouse => "warehouse",
            Kind::Retail => "retail",
            Kind::CovidNew => "covid-new",
            Kind::CovidCumulative => "covid-cumulative",
            Kind::Payments => "payments",
        }
    }

    /// One line for `--help`.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Music => "music service clickstream (track_playback, Pause_track, ...) keyed by user_id, topic music_events",
            Kind::Users => "user profiles with Russian full names, keyed by uuid (the user_ids of music), topic users",
            Kind::Sales => "store sales (product, store, customer, quantity, price, payment method) keyed by product_id, topic sales",
            Kind::Warehouse => "warehouse stock movements (in, out, transfer) keyed by product_id, topic warehouse",
            Kind::Retail => "70% sales and 30% warehouse events, each to its own topic (sales, warehouse)",
            Kind::CovidNew => "daily new COVID-19 cases per location keyed by location_key, topic covid_new_cases_1min",
            Kind::CovidCumulative => "running COVID-19 totals per location keyed by location_key, topic covid_cumulative_data_5min",
            Kind::Payments => "ksqlDB tutorial payments {name, amount} keyed by name, topic payments",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown generator kind {s:?}; choose one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// Music event types by id 1..=8, spelled as in seed 01's table (capital P included).
pub const MUSIC_EVENT_TYPES: [&str; 8] = [
    "track_playback",
    "Pause_track",
    "resume_track",
    "skipping_track_next",
    "skipping_track_prev",
    "adding_track_to_playlist",
    "track_like",
    "track_unlike",
];

/// Default weights of [`MUSIC_EVENT_TYPES`]: playback dominates, likes and unlikes are rare.
pub const DEFAULT_MUSIC_WEIGHTS: [u32; 8] = [40, 15, 12, 12, 5, 6, 7, 3];

/// How to generate; [`Options::default`] is seed 42, the default weights, 1000 users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub seed: u64,
    /// music only: weights of the 8 event types by id 1..=8
    pub music_weights: [u32; 8],
    /// size of the fixed pool of generated users (music, users); 0 is treated as 1
    pub users: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 42,
            music_weights: DEFAULT_MUSIC_WEIGHTS,
            users: 1000,
        }
    }
}

/// Parses "track_playback=50,track_like=10" (names or ids 1-8; unspecified types keep their default weight); error is one sentence naming the bad part.
///
/// Names match case-insensitively, so seed 02's `pause_track` works too.
pub fn parse_weights(spec: &str) -> Result<[u32; 8], String> {
    let mut weights = DEFAULT_MUSIC_WEIGHTS;
    let mut given = [false; 8];
    let mut any = false;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        any = true;
        let (name, value) = part.split_once('=').ok_or_else(|| {
            format!("bad music weight {part:?}: expected TYPE=WEIGHT, e.g. track_playback=50")
        })?;
        let (name, value) = (name.trim(), value.trim());
        let index = music_type_index(name).ok_or_else(|| {
            format!(
                "unknown music event type {name:?} in {part:?}; use an id 1-8 or one of: {}",
                MUSIC_EVENT_TYPES.join(", ")
            )
        })?;
        let weight: u32 = value.parse().map_err(|_| {
            format!(
                "bad weight {value:?} in {part:?}: expected a whole number from 0 to {}",
                u32::MAX
            )
        })?;
        if given[index] {
            return Err(format!(
                "music event type {} is given more than once in {spec:?}",
                MUSIC_EVENT_TYPES[index]
            ));
        }
        given[index] = true;
        weights[index] = weight;
    }
    if !any {
        return Err("empty music weight list: expected TYPE=WEIGHT pairs such as track_playback=50,track_like=10".to_owned());
    }
    if weights.iter().all(|&w| w == 0) {
        return Err(format!(
            "music weights {spec:?} leave every event type at 0; at least one must be positive"
        ));
    }
    Ok(weights)
}

fn music_type_index(name: &str) -> Option<usize> {
    if let Ok(id) = name.parse::<usize>() {
        return (1..=8).contains(&id).then(|| id - 1);
    }
    MUSIC_EVENT_TYPES
        .iter()
        .position(|t| t.eq_ignore_ascii_case(name))
}

/// A fresh generator of `kind`, deterministic in `options`.
pub fn generator(kind: Kind, options: &Options) -> Box<dyn Generator> {
    match kind {
        Kind::Music => Box::new(music::Music::new(options)),
        Kind::Users => Box::new(people::Users::new(options)),
        Kind::Sales => Box::new(retail::Retail::new(options.seed, retail::Mix::Sales)),
        Kind::Warehouse => Box::new(retail::Retail::new(options.seed, retail::Mix::Warehouse)),
        Kind::Retail => Box::new(retail::Retail::new(options.seed, retail::Mix::Both)),
        Kind::CovidNew => Box::new(covid::Covid::new(options.seed, covid::Mode::New)),
        Kind::CovidCumulative => Box::new(covid::Covid::new(options.seed, covid::Mode::Cumulative)),
        Kind::Payments => Box::new(payments::Payments::new(options.seed)),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers for the per-module tests.

    use super::*;

    /// A fixed base time, 2024-10-10 15:11:50 UTC (seed 03's window example).
    pub const T0: i64 = 1_728_573_110_000;

    /// `n` events, one millisecond apart from [`T0`].
    pub fn events(kind: Kind, options: &Options, n: usize) -> Vec<Event> {
        let mut gen = generator(kind, options);
        let mut out = Event::default();
        (0..n)
            .map(|i| {
                gen.next_into(T0 + i as i64, &mut out);
                out.clone()
            })
            .collect()
    }

    /// The value's top-level keys in document order, after checking it is a JSON object.
    pub fn keys_in_order(value: &[u8]) -> Vec<String> {
        let parsed: serde_json::Value = serde_json::from_slice(value).expect("valid JSON");
        let object = parsed.as_object().expect("a JSON object");
        let text = std::str::from_utf8(value).unwrap();
        let mut keys: Vec<(usize, String)> = object
            .keys()
            .map(|k| {
                let at = text
                    .find(&format!("{k:?}:"))
                    .expect("key present in the text");
                (at, k.clone())
            })
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    pub fn json(event: &Event) -> serde_json::Value {
        serde_json::from_slice(&event.value).expect("valid JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn every_kind_is_deterministic_per_seed() {
        for kind in Kind::ALL {
            let a = events(kind, &Options::default(), 1000);
            let b = events(kind, &Options::default(), 1000);
            assert_eq!(a, b, "{kind}: same seed must give identical events");
            let other = Options {
                seed: 7,
                ..Options::default()
            };
            let c = events(kind, &other, 1000);
            assert_ne!(a, c, "{kind}: a different seed must give different events");
        }
    }

    /// Pins the exact bytes for seed 42, so a change to the rng streams or draw order
    /// (which would silently change every user's `--seed` output) fails here first.
    #[test]
    fn seed_42_output_is_pinned() {
        let first = |kind| {
            String::from_utf8(events(kind, &Options::default(), 1)[0].value.clone()).unwrap()
        };
        assert_eq!(first(Kind::Payments), r#"{"name":"Dave","amount":543}"#);
        assert_eq!(
            first(Kind::Music),
            r#"{"event_param":{"event_type_id":2,"event_type":"Pause_track","user_id":"a7e1fe89-9db0-4715-b2d6-2991e1412d01","platform_token":"db0ca0cd028e89937cc6d7d003df7fda","ipv4":"199.16.239.153","country":"Netherlands","uuid_track":"6b288e3c-7ae6-4ba3-a436-bd94e2921229"},"event_timestamp":{"ts":1728573110,"ts_ms":1728573110000}}"#
        );
        assert_eq!(
            first(Kind::Users),
            r#"{"uuid":"90e8c98d-61a8-4fb7-9d35-60a5d2a2ba2a","first_name":"Валентина","last_name":"Григорьева","middle_name":"Константиновна","timestamp":1728573110000}"#
        );
    }

    #[test]
    fn events_carry_the_given_timestamp_and_a_valid_route() {
        for kind in Kind::ALL {
            let mut gen = generator(kind, &Options::default());
            let mut out = Event::default();
            for ts in [T0, T0 + 5, -1_000] {
                gen.next_into(ts, &mut out);
                assert_eq!(out.timestamp_ms, ts);
                assert!(out.route < gen.routes().len());
                assert!(!out.key.is_empty());
            }
        }
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(kind.name().parse::<Kind>(), Ok(kind));
            assert!(!kind.describe().is_empty());
        }
        assert_eq!("Covid-New".parse::<Kind>(), Ok(Kind::CovidNew));
        let err = "clicks".parse::<Kind>().unwrap_err();
        assert_eq!(
            err,
            "unknown generator kind \"clicks\"; choose one of: music, users, sales, warehouse, \
             retail, covid-new, covid-cumulative, payments"
        );
    }

    #[test]
    fn default_options() {
        let o = Options::default();
        assert_eq!(o.seed, 42);
        assert_eq!(o.users, 1000);
        assert_eq!(o.music_weights, [40, 15, 12, 12, 5, 6, 7, 3]);
    }

    #[test]
    fn parse_weights_accepts_names_and_ids() {
        let w = parse_weights("track_playback=50, track_like=10").unwrap();
        assert_eq!(w, [50, 15, 12, 12, 5, 6, 10, 3]);
        let w = parse_weights("2=0,8=9,pause_track=0").unwrap_err();
        assert!(w.contains("more than once"), "{w}");
        let w = parse_weights("2=0,8=9,").unwrap();
        assert_eq!(w, [40, 0, 12, 12, 5, 6, 7, 9]);
        let w = parse_weights("Pause_track=1,ADDING_TRACK_TO_PLAYLIST=2").unwrap();
        assert_eq!(w, [40, 1, 12, 12, 5, 2, 7, 3]);
    }

    #[test]
    fn parse_weights_rejects_garbage_with_a_sentence() {
        let cases = [
            ("track_playback", "expected TYPE=WEIGHT"),
            ("dance=5", "unknown music event type \"dance\""),
            ("9=5", "unknown music event type \"9\""),
            ("0=5", "unknown music event type \"0\""),
            ("track_like=-1", "bad weight \"-1\""),
            ("track_like=lots", "bad weight \"lots\""),
            ("", "empty music weight list"),
            (
                "1=0,2=0,3=0,4=0,5=0,6=0,7=0,8=0",
                "at least one must be positive",
            ),
        ];
        for (spec, expected) in cases {
            let err = parse_weights(spec).unwrap_err();
            assert!(err.contains(expected), "{spec:?} gave {err:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }
}
