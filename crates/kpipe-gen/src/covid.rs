//! The `covid-new` and `covid-cumulative` kinds: seed 04's daily COVID-19 figures per
//! location (Google COVID-19 Open Data keys), as new cases or as running totals.

use serde::Serialize;

use crate::pool::{self, below, between, stream, Rng, UtcClock};
use crate::{Event, Generator};

/// Location keys in the Open Data style (country, or country_subdivision) with a rough
/// population in thousands, which scales the figures so US outnumbers US_CA outnumbers RU_SPE.
const LOCATIONS: [(&str, u64); 40] = [
    ("US", 331_000),
    ("US_CA", 39_500),
    ("US_NY", 20_200),
    ("US_TX", 29_100),
    ("US_FL", 21_500),
    ("RU", 146_000),
    ("RU_MOW", 12_600),
    ("RU_SPE", 5_400),
    ("DE", 83_200),
    ("DE_BY", 13_100),
    ("DE_BE", 3_700),
    ("BR", 212_000),
    ("BR_SP", 46_300),
    ("IN", 1_380_000),
    ("IN_MH", 112_000),
    ("IN_DL", 16_800),
    ("GB", 67_000),
    ("GB_ENG", 56_500),
    ("FR", 67_400),
    ("IT", 59_600),
    ("ES", 47_400),
    ("JP", 125_800),
    ("CN", 1_402_000),
    ("KR", 51_800),
    ("CA", 38_000),
    ("CA_ON", 14_700),
    ("AU", 25_700),
    ("AU_NSW", 8_200),
    ("MX", 128_900),
    ("AR", 45_400),
    ("ZA", 59_300),
    ("NG", 206_000),
    ("EG", 102_300),
    ("TR", 84_300),
    ("ID", 273_500),
    ("PL", 37_900),
    ("UA", 44_100),
    ("KZ", 18_800),
    ("SE", 10_400),
    ("NL", 17_400),
];

/// New figures or running totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    New,
    Cumulative,
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    confirmed: u64,
    deceased: u64,
    recovered: u64,
    tested: u64,
}

impl Figures {
    /// One day's new figures for a location of `population_k` thousand people:
    /// up to ~50 cases per 100k, deaths ≤ cases / 40, tests ≥ cases.
    fn daily(rng: &mut Rng, population_k: u64) -> Figures {
        let confirmed = below(rng, population_k / 2 + 1);
        Figures {
            confirmed,
            deceased: below(rng, confirmed / 40 + 1),
            recovered: below(rng, confirmed + 1),
            tested: confirmed + below(rng, confirmed * 8 + 10),
        }
    }

    /// Totals as if the pandemic had already run for a while, so the first snapshot of a
    /// location does not start from zero.
    fn history(rng: &mut Rng, population_k: u64) -> Figures {
        let confirmed = below(rng, population_k * 100 + 1);
        Figures {
            confirmed,
            deceased: confirmed / between(rng, 50, 120),
            recovered: confirmed / 10 * between(rng, 7, 9),
            tested: confirmed * between(rng, 5, 15),
        }
    }

    fn add(&mut self, day: Figures) {
        self.confirmed += day.confirmed;
        self.deceased += day.deceased;
        self.recovered += day.recovered;
        self.tested += day.tested;
    }
}

pub(crate) struct Covid {
    rng: Rng,
    mode: Mode,
    clock: UtcClock,
    /// Running totals by location index (cumulative mode only).
    totals: Vec<Figures>,
}

#[derive(Serialize)]
struct NewCases<'a> {
    date: &'a str,
    location_key: &'static str,
    new_confirmed: u64,
    new_deceased: u64,
    new_recovered: u64,
    new_tested: u64,
}

#[derive(Serialize)]
struct Cumulative<'a> {
    date: &'a str,
    location_key: &'static str,
    cumulative_confirmed: u64,
    cumulative_deceased: u64,
    cumulative_recovered: u64,
    cumulative_tested: u64,
}

impl Covid {
    pub(crate) fn new(seed: u64, mode: Mode) -> Self {
        let totals = match mode {
            Mode::New => Vec::new(),
            Mode::Cumulative => {
                let mut rng = pool::rng(seed, stream::LOCATIONS);
                LOCATIONS
                    .iter()
                    .map(|&(_, population_k)| Figures::history(&mut rng, population_k))
                    .collect()
            }
        };
        Covid {
            rng: pool::rng(
                seed,
                match mode {
                    Mode::New => stream::COVID_NEW,
                    Mode::Cumulative => stream::COVID_CUMULATIVE,
                },
            ),
            mode,
            clock: UtcClock::default(),
            totals,
        }
    }
}

impl Generator for Covid {
    fn routes(&self) -> &'static [&'static str] {
        match self.mode {
            Mode::New => &["covid_new_cases_1min"],
            Mode::Cumulative => &["covid_cumulative_data_5min"],
        }
    }

    fn next_into(&mut self, timestamp_ms: i64, out: &mut Event) {
        let index = pool::index(&mut self.rng, LOCATIONS.len());
        let (location_key, population_k) = LOCATIONS[index];
        let day = Figures::daily(&mut self.rng, population_k);
        let date = self.clock.date(timestamp_ms);
        out.reset(0, timestamp_ms);
        out.key.push_str(location_key);
        match self.mode {
            Mode::New => out.set_value(&NewCases {
                date,
                location_key,
                new_confirmed: day.confirmed,
                new_deceased: day.deceased,
                new_recovered: day.recovered,
                new_tested: day.tested,
            }),
            Mode::Cumulative => {
                let total = &mut self.totals[index];
                total.add(day);
                out.set_value(&Cumulative {
                    date,
                    location_key,
                    cumulative_confirmed: total.confirmed,
                    cumulative_deceased: total.deceased,
                    cumulative_recovered: total.recovered,
                    cumulative_tested: total.tested,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{generator, Kind, Options};
    use std::collections::{HashMap, HashSet};

    fn field(j: &serde_json::Value, name: &str) -> u64 {
        j[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} is not a u64 in {j}"))
    }

    #[test]
    fn new_cases_have_exactly_the_listed_fields_and_sane_figures() {
        assert_eq!(
            generator(Kind::CovidNew, &Options::default()).routes(),
            ["covid_new_cases_1min"]
        );
        let keys: HashSet<&str> = LOCATIONS.iter().map(|(k, _)| *k).collect();
        let mut seen = HashSet::new();
        for event in events(Kind::CovidNew, &Options::default(), 2000) {
            assert_eq!(
                keys_in_order(&event.value),
                [
                    "date",
                    "location_key",
                    "new_confirmed",
                    "new_deceased",
                    "new_recovered",
                    "new_tested"
                ]
            );
            let j = json(&event);
            assert_eq!(j["date"], "2024-10-10");
            assert_eq!(j["location_key"], event.key.as_str());
            assert!(keys.contains(event.key.as_str()));
            seen.insert(event.key.clone());
            let confirmed = field(&j, "new_confirmed");
            assert!(field(&j, "new_deceased") <= confirmed);
            assert!(field(&j, "new_recovered") <= confirmed);
            assert!(field(&j, "new_tested") >= confirmed);
        }
        assert_eq!(seen.len(), LOCATIONS.len());
    }

    #[test]
    fn cumulative_totals_never_decrease_per_location() {
        assert_eq!(
            generator(Kind::CovidCumulative, &Options::default()).routes(),
            ["covid_cumulative_data_5min"]
        );
        let fields = [
            "cumulative_confirmed",
            "cumulative_deceased",
            "cumulative_recovered",
            "cumulative_tested",
        ];
        let mut last: HashMap<String, [u64; 4]> = HashMap::new();
        let mut grew = 0;
        for event in events(Kind::CovidCumulative, &Options::default(), 5000) {
            let mut expected_keys = vec!["date", "location_key"];
            expected_keys.extend(fields);
            assert_eq!(keys_in_order(&event.value), expected_keys);
            let j = json(&event);
            assert_eq!(j["location_key"], event.key.as_str());
            let now = fields.map(|f| field(&j, f));
            assert!(now[1] <= now[0] && now[3] >= now[0], "{j}");
            if let Some(before) = last.insert(event.key.clone(), now) {
                for i in 0..4 {
                    assert!(now[i] >= before[i], "{} fell for {}", fields[i], event.key);
                }
                grew += usize::from(now[0] > before[0]);
            }
        }
        assert_eq!(last.len(), LOCATIONS.len());
        assert!(grew > 4000, "totals should mostly grow, grew {grew} times");
    }
}
