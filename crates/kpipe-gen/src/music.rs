//! The `music` kind: seed 01/02's music-service clickstream for topic `music_events`.

use std::io::Write;

use crate::people::{population, User};
use crate::pool::{self, stream, Rng, Weighted};
use crate::{Event, Generator, Options, MUSIC_EVENT_TYPES};

/// Size of the fixed catalogue the events' `uuid_track` comes from.
const TRACKS: usize = 5000;

pub(crate) struct Music {
    rng: Rng,
    types: Weighted,
    users: Vec<User>,
    /// Pre-rendered JSON fragments: generation is a few copies per event instead
    /// of escaping every string again (the benchmark's hot path).
    type_fields: Vec<Vec<u8>>,
    user_fields: Vec<Vec<u8>>,
    track_fields: Vec<Vec<u8>>,
}

/// `"name":value` with serde_json's escaping.
fn field(name: &str, value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec(name).expect("a string serializes");
    out.push(b':');
    serde_json::to_writer(&mut out, value).expect("a plain value serializes");
    out
}

fn fields(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.join(&b',')
}

impl Music {
    pub(crate) fn new(options: &Options) -> Self {
        let mut track_rng = pool::rng(options.seed, stream::TRACKS);
        let users = population(options.seed, options.users);
        Music {
            rng: pool::rng(options.seed, stream::MUSIC),
            types: Weighted::new(&options.music_weights),
            type_fields: MUSIC_EVENT_TYPES
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    fields(&[field("event_type_id", &(i + 1)), field("event_type", name)])
                })
                .collect(),
            user_fields: users
                .iter()
                .map(|u| {
                    fields(&[
                        field("user_id", &u.uuid),
                        field("platform_token", &u.platform_token),
                        field("ipv4", &u.ipv4),
                        field("country", &u.country),
                    ])
                })
                .collect(),
            track_fields: (0..TRACKS)
                .map(|_| field("uuid_track", &pool::uuid_string(&mut track_rng)))
                .collect(),
            users,
        }
    }
}

impl Generator for Music {
    fn routes(&self) -> &'static [&'static str] {
        &["music_events"]
    }

    /// Writes `{"event_param":{event_type_id, event_type, user_id, platform_token,
    /// ipv4, country, uuid_track},"event_timestamp":{"ts":s,"ts_ms":ms}}`.
    fn next_into(&mut self, timestamp_ms: i64, out: &mut Event) {
        let type_index = self.types.pick(&mut self.rng);
        let user = pool::index(&mut self.rng, self.users.len());
        let track = pool::index(&mut self.rng, TRACKS);
        out.reset(0, timestamp_ms);
        out.key.push_str(&self.users[user].uuid);
        let value = &mut out.value;
        value.extend_from_slice(b"{\"event_param\":{");
        value.extend_from_slice(&self.type_fields[type_index]);
        value.push(b',');
        value.extend_from_slice(&self.user_fields[user]);
        value.push(b',');
        value.extend_from_slice(&self.track_fields[track]);
        value.extend_from_slice(b"},\"event_timestamp\":{\"ts\":");
        write!(
            value,
            "{},\"ts_ms\":{timestamp_ms}}}}}",
            timestamp_ms.div_euclid(1000)
        )
        .expect("writing to a Vec cannot fail");
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
