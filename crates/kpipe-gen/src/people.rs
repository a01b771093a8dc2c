//! The fixed user population shared by `music` and `users`, and the `users` kind itself
//! (Russian full names in Cyrillic, gender-consistent, Faker ru_RU style).

use serde::Serialize;

use crate::pool::{self, below, pick, stream, Rng};
use crate::{Event, Generator, Options};

const MALE_FIRST_NAMES: [&str; 30] = [
    "Александр",
    "Алексей",
    "Андрей",
    "Антон",
    "Артём",
    "Борис",
    "Вадим",
    "Василий",
    "Виктор",
    "Владимир",
    "Владислав",
    "Геннадий",
    "Георгий",
    "Григорий",
    "Дмитрий",
    "Евгений",
    "Егор",
    "Иван",
    "Игорь",
    "Илья",
    "Кирилл",
    "Константин",
    "Максим",
    "Михаил",
    "Никита",
    "Николай",
    "Олег",
    "Павел",
    "Роман",
    "Сергей",
];

const FEMALE_FIRST_NAMES: [&str; 30] = [
    "Александра",
    "Алина",
    "Алла",
    "Анастасия",
    "Анна",
    "Валентина",
    "Валерия",
    "Вера",
    "Виктория",
    "Галина",
    "Дарья",
    "Евгения",
    "Екатерина",
    "Елена",
    "Елизавета",
    "Жанна",
    "Зоя",
    "Ирина",
    "Ксения",
    "Лариса",
    "Людмила",
    "Маргарита",
    "Марина",
    "Мария",
    "Надежда",
    "Наталья",
    "Ольга",
    "Полина",
    "Светлана",
    "Татьяна",
];

/// Surnames in their masculine form; all end in -ов/-ев/-ин, so the feminine adds "а".
const SURNAMES: [&str; 30] = [
    "Иванов",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Васильев",
    "Петров",
    "Соколов",
    "Михайлов",
    "Новиков",
    "Фёдоров",
    "Морозов",
    "Волков",
    "Алексеев",
    "Лебедев",
    "Семёнов",
    "Егоров",
    "Павлов",
    "Козлов",
    "Степанов",
    "Николаев",
    "Орлов",
    "Андреев",
    "Макаров",
    "Никитин",
    "Захаров",
    "Зайцев",
    "Соловьёв",
    "Борисов",
    "Яковлев",
    "Григорьев",
];

/// Patronymic stems chosen so that stem + "ич" is male and stem + "на" is female
/// (Сергеев-ич / Сергеев-на); irregular ones such as Ильич are left out on purpose.
const PATRONYMIC_STEMS: [&str; 20] = [
    "Александров",
    "Алексеев",
    "Андреев",
    "Борисов",
    "Васильев",
    "Викторов",
    "Владимиров",
    "Геннадьев",
    "Григорьев",
    "Дмитриев",
    "Евгеньев",
    "Иванов",
    "Игорев",
    "Константинов",
    "Максимов",
    "Михайлов",
    "Николаев",
    "Олегов",
    "Павлов",
    "Сергеев",
];

/// English country names, as Faker's `country()` gives them in the seeds' producers.
const COUNTRIES: [&str; 20] = [
    "Russia",
    "United States",
    "Germany",
    "France",
    "United Kingdom",
    "Brazil",
    "India",
    "Japan",
    "Canada",
    "Spain",
    "Italy",
    "Kazakhstan",
    "Poland",
    "Turkey",
    "Mexico",
    "Netherlands",
    "Sweden",
    "Australia",
    "South Korea",
    "Argentina",
];

/// First octets that are private, loopback, link-local, CGNAT, multicast or otherwise
/// not something a real listener's address starts with.
const NON_PUBLIC_FIRST_OCTETS: [u8; 7] = [0, 10, 100, 127, 169, 172, 192];

/// One member of the population. Names are kept as vocabulary references and spelled
/// out on emission, so a million-user pool costs no per-user name strings.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub uuid: String,
    pub platform_token: String,
    pub ipv4: String,
    pub country: &'static str,
    female: bool,
    first_name: &'static str,
    surname: &'static str,
    patronymic_stem: &'static str,
}

impl User {
    fn generate(rng: &mut Rng) -> User {
        let uuid = pool::uuid_string(rng);
        let mut token_bytes = [0u8; 16];
        rand::RngCore::fill_bytes(rng, &mut token_bytes);
        let platform_token = token_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let ipv4 = public_ipv4(rng);
        let country = pick(rng, &COUNTRIES);
        let female = below(rng, 2) == 1;
        let first_name = pick(
            rng,
            if female {
                &FEMALE_FIRST_NAMES
            } else {
                &MALE_FIRST_NAMES
            },
        );
        User {
            uuid,
            platform_token,
            ipv4,
            country,
            female,
            first_name,
            surname: pick(rng, &SURNAMES),
            patronymic_stem: pick(rng, &PATRONYMIC_STEMS),
        }
    }

    fn last_name_into(&self, out: &mut String) {
        out.clear();
        out.push_str(self.surname);
        if self.female {
            out.push('а');
        }
    }

    fn middle_name_into(&self, out: &mut String) {
        out.clear();
        out.push_str(self.patronymic_stem);
        out.push_str(if self.female { "на" } else { "ич" });
    }
}

fn public_ipv4(rng: &mut Rng) -> String {
    let first = loop {
        // Unicast space only (1-223), minus the non-public blocks.
        let octet = pool::between(rng, 1, 223) as u8;
        if !NON_PUBLIC_FIRST_OCTETS.contains(&octet) {
            break octet;
        }
    };
    let second = below(rng, 256);
    let third = below(rng, 256);
    let fourth = pool::between(rng, 1, 254);
    format!("{first}.{second}.{third}.{fourth}")
}

/// `n` users (at least one) drawn from the seed's user stream: the same for every kind.
pub(crate) fn population(seed: u64, n: usize) -> Vec<User> {
    let mut rng = pool::rng(seed, stream::USERS);
    (0..n.max(1)).map(|_| User::generate(&mut rng)).collect()
}

/// The `users` kind: walks the population in order and starts over at the end, so the
/// first `users` events are a complete, duplicate-free user table for `music`'s user_ids
/// (later rounds re-send the same profiles with new timestamps, like profile updates).
pub(crate) struct Users {
    users: Vec<User>,
    next: usize,
    last_name: String,
    middle_name: String,
}

#[derive(Serialize)]
struct UserRecord<'a> {
    uuid: &'a str,
    first_name: &'a str,
    last_name: &'a str,
    middle_name: &'a str,
    timestamp: i64,
}

impl Users {
    pub(crate) fn new(options: &Options) -> Self {
        Users {
            users: population(options.seed, options.users),
            next: 0,
            last_name: String::new(),
            middle_name: String::new(),
        }
    }
}

impl Generator for Users {
    fn routes(&self) -> &'static [&'static str] {
        &["users"]
    }

    fn next_into(&mut self, timestamp_ms: i64, out: &mut Event) {
        let user = &self.users[self.next];
        self.next = (self.next + 1) % self.users.len();
        user.last_name_into(&mut self.last_name);
        user.middle_name_into(&mut self.middle_name);
        out.reset(0, timestamp_ms);
        out.key.push_str(&user.uuid);
        out.set_value(&UserRecord {
            uuid: &user.uuid,
            first_name: user.first_name,
            last_name: &self.last_name,
            middle_name: &self.middle_name,
            timestamp: timestamp_ms,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::Kind;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    #[test]
    fn user_json_has_exactly_the_listed_fields() {
        for event in events(Kind::Users, &Options::default(), 50) {
            assert_eq!(
                keys_in_order(&event.value),
                [
                    "uuid",
                    "first_name",
                    "last_name",
                    "middle_name",
                    "timestamp"
                ]
            );
            let json = json(&event);
            assert_eq!(json["uuid"], event.key.as_str());
            assert_eq!(json["timestamp"], event.timestamp_ms);
            for field in ["first_name", "last_name", "middle_name"] {
                let name = json[field].as_str().unwrap();
                assert!(
                    name.chars()
                        .all(|c| ('А'..='я').contains(&c) || c == 'ё' || c == 'Ё'),
                    "{field} {name:?} is not Cyrillic"
                );
            }
        }
    }

    #[test]
    fn names_agree_on_gender() {
        for event in events(Kind::Users, &Options::default(), 1000) {
            let json = json(&event);
            let first = json["first_name"].as_str().unwrap();
            let last = json["last_name"].as_str().unwrap();
            let middle = json["middle_name"].as_str().unwrap();
            let female = FEMALE_FIRST_NAMES.contains(&first);
            assert!(female || MALE_FIRST_NAMES.contains(&first));
            assert_eq!(last.ends_with('а'), female, "{first} {middle} {last}");
            assert_eq!(middle.ends_with("на"), female, "{first} {middle} {last}");
            assert_eq!(middle.ends_with("ич"), !female, "{first} {middle} {last}");
        }
    }

    #[test]
    fn users_walk_the_pool_then_repeat() {
        let options = Options {
            users: 100,
            ..Options::default()
        };
        let all = events(Kind::Users, &options, 200);
        let first_round: HashSet<&str> = all[..100].iter().map(|e| e.key.as_str()).collect();
        assert_eq!(first_round.len(), 100);
        assert_eq!(all[0].key, all[100].key);
        let zero = Options {
            users: 0,
            ..Options::default()
        };
        assert_eq!(events(Kind::Users, &zero, 3).len(), 3);
    }

    #[test]
    fn music_user_ids_are_the_users_uuids() {
        let options = Options {
            users: 50,
            ..Options::default()
        };
        let profiles: HashSet<String> = events(Kind::Users, &options, 50)
            .into_iter()
            .map(|e| e.key)
            .collect();
        for event in events(Kind::Music, &options, 500) {
            assert!(profiles.contains(&event.key));
        }
    }

    #[test]
    fn population_fields_look_real() {
        for user in population(5, 2000) {
            assert_eq!(user.platform_token.len(), 32);
            assert!(user
                .platform_token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            let ip: Ipv4Addr = user.ipv4.parse().unwrap();
            assert!(
                !(ip.is_private() || ip.is_loopback() || ip.is_link_local() || ip.is_multicast()),
                "{ip}"
            );
            assert!(!ip.is_unspecified() && !ip.is_broadcast());
            assert!(COUNTRIES.contains(&user.country));
        }
    }
}
