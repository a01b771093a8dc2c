//! The `payments` kind: seed 03's ksqlDB tutorial stream `{name, amount}`.

use serde::Serialize;

use crate::pool::{self, between, pick, stream, Rng};
use crate::{Event, Generator};

/// The cryptography cast the ksqlDB example draws payers from.
const NAMES: [&str; 19] = [
    "Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
    "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter",
];

pub(crate) struct Payments {
    rng: Rng,
}

#[derive(Serialize)]
struct Payment {
    name: &'static str,
    amount: u64,
}

impl Payments {
    pub(crate) fn new(seed: u64) -> Self {
        Payments {
            rng: pool::rng(seed, stream::PAYMENTS),
        }
    }
}

impl Generator for Payments {
    fn routes(&self) -> &'static [&'static str] {
        &["payments"]
    }

    fn next_into(&mut self, timestamp_ms: i64, out: &mut Event) {
        let name = pick(&mut self.rng, &NAMES);
        let amount = between(&mut self.rng, 1, 1000);
        out.reset(0, timestamp_ms);
        out.key.push_str(name);
        out.set_value(&Payment { name, amount });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{Kind, Options};
    use std::collections::HashSet;

    #[test]
    fn payments_have_exactly_name_and_amount() {
        let mut names = HashSet::new();
        for event in events(Kind::Payments, &Options::default(), 2000) {
            assert_eq!(keys_in_order(&event.value), ["name", "amount"]);
            let j = json(&event);
            assert_eq!(j["name"], event.key.as_str());
            assert!(NAMES.contains(&event.key.as_str()));
            let amount = j["amount"].as_u64().unwrap();
            assert!((1..=1000).contains(&amount));
            names.insert(event.key.clone());
        }
        assert_eq!(names.len(), NAMES.len());
    }
}
