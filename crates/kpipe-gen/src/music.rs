//! The `music` kind: seed 01/02's music-service clickstream for topic `music_events`.

use serde::Serialize;

use crate::people::{population, User};
use crate::pool::{self, stream, Rng, Weighted};
use crate::{Event, Generator, Options, MUSIC_EVENT_TYPES};

/// Size of the fixed catalogue the events' `uuid_track` comes from.
const TRACKS: usize = 5000;

pub(crate) struct Music {
    rng: Rng,
    types: Weighted,
    users: Vec<User>,
    tracks: Vec<String>,
}

#[derive(Serialize)]
struct MusicEvent<'a> {
    event_param: EventParam<'a>,
    event_timestamp: EventTimestamp,
}

#[derive(Serialize)]
struct EventParam<'a> {
    event_type_id: usize,
    event_type: &'static str,
    user_id: &'a str,
    platform_token: &'a str,
    ipv4: &'a str,
    country: &'static str,
    uuid_track: &'a str,
}

#[derive(Serialize)]
struct EventTimestamp {
    ts: i64,
    ts_ms: i64,
}

impl Music {
    pub(crate) fn new(options: &Options) -> Self {
        let mut track_rng = pool::rng(options.seed, stream::TRACKS);
        Music {
            rng: pool::rng(options.seed, stream::MUSIC),
            types: Weighted::new(&options.music_weights),
            users: population(options.seed, options.users),
            tracks: (0..TRACKS)
                .map(|_| pool::uuid_string(&mut track_rng))
                .collect(),
        }
    }
}

impl Generator for Music {
    fn routes(&self) -> &'static [&'static str] {
        &["music_events"]
    }

    fn next_into(&mut self, timestamp_ms: i64, out: &mut Event) {
        let type_index = self.types.pick(&mut self.rng);
        let user = &self.users[pool::index(&mut self.rng, self.users.len())];
        let track = &self.tracks[pool::index(&mut self.rng, TRACKS)];
        out.reset(0, timestamp_ms);
        out.key.push_str(&user.uuid);
        out.set_value(&MusicEvent {
            event_param: EventParam {
                event_type_id: type_index + 1,
                event_type: MUSIC_EVENT_TYPES[type_index],
                user_id: &user.uuid,
                platform_token: &user.platform_token,
                ipv4: &user.ipv4,
                country: user.country,
                uuid_track: track,
            },
            event_timestamp: EventTimestamp {
                ts: timestamp_ms.div_euclid(1000),
                ts_ms: timestamp_ms,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::Kind;
    use std::collections::HashSet;

    #[test]
    fn music_json_has_exactly_the_listed_fields() {
        for event in events(Kind::Music, &Options::default(), 100) {
            assert_eq!(
                keys_in_order(&event.value),
                ["event_param", "event_timestamp"]
            );
            let text = std::str::from_utf8(&event.value).unwrap();
            let param_start = text.find("\"event_param\":").unwrap() + "\"event_param\":".len();
            let param_end = text.find(",\"event_timestamp\":").unwrap();
            assert_eq!(
                keys_in_order(&event.value[param_start..param_end]),
                [
                    "event_type_id",
                    "event_type",
                    "user_id",
                    "platform_token",
                    "ipv4",
                    "country",
                    "uuid_track"
                ]
            );
            let ts_start = param_end + ",\"event_timestamp\":".len();
            assert_eq!(
                keys_in_order(&event.value[ts_start..text.len() - 1]),
                ["ts", "ts_ms"]
            );
            let json = json(&event);
            let param = &json["event_param"];
            let id = param["event_type_id"].as_u64().unwrap() as usize;
            assert_eq!(param["event_type"], MUSIC_EVENT_TYPES[id - 1]);
            assert_eq!(param["user_id"], event.key.as_str());
            uuid::Uuid::parse_str(param["uuid_track"].as_str().unwrap()).unwrap();
            assert_eq!(json["event_timestamp"]["ts_ms"], event.timestamp_ms);
            assert_eq!(json["event_timestamp"]["ts"], event.timestamp_ms / 1000);
        }
    }

    #[test]
    fn weights_are_respected() {
        for weights in [
            crate::DEFAULT_MUSIC_WEIGHTS,
            crate::parse_weights("track_playback=1,7=50,track_unlike=0").unwrap(),
        ] {
            let options = Options {
                music_weights: weights,
                ..Options::default()
            };
            let n = 100_000;
            let mut counts = [0usize; 8];
            for event in events(Kind::Music, &options, n) {
                let id = json(&event)["event_param"]["event_type_id"]
                    .as_u64()
                    .unwrap();
                counts[id as usize - 1] += 1;
            }
            let total: u32 = weights.iter().sum();
            for i in 0..8 {
                let expected = 100.0 * f64::from(weights[i]) / f64::from(total);
                let actual = 100.0 * counts[i] as f64 / n as f64;
                assert!(
                    (expected - actual).abs() < 1.0,
                    "{}: expected {expected:.2}%, got {actual:.2}%",
                    MUSIC_EVENT_TYPES[i]
                );
            }
        }
    }

    #[test]
    fn keys_are_spread_over_users_and_tracks() {
        let mut gen = generator_for_test();
        let mut out = Event::default();
        let mut users = HashSet::new();
        let mut tracks = HashSet::new();
        for i in 0..100_000 {
            gen.next_into(T0 + i, &mut out);
            users.insert(out.key.clone());
            if i < 20_000 {
                tracks.insert(json(&out)["event_param"]["uuid_track"].clone());
            }
        }
        assert!(users.len() >= 500, "only {} distinct users", users.len());
        assert!(
            tracks.len() >= 3000,
            "only {} distinct tracks",
            tracks.len()
        );
    }

    fn generator_for_test() -> Music {
        Music::new(&Options::default())
    }
}
