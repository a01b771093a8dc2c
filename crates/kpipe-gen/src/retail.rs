//! The `sales`, `warehouse` and `retail` kinds: seed 05's store sales and stock
//! movements, one generator with three mixes.

use serde::Serialize;

use crate::pool::{self, between, pick, stream, Rng, UtcClock, UuidBuf, Weighted};
use crate::{Event, Generator};

const PRODUCTS: u64 = 500;
const STORES: u64 = 50;
const CUSTOMERS: u64 = 100_000;
const WAREHOUSES: u64 = 10;
const PAYMENT_METHODS: [&str; 4] = ["card", "cash", "sbp", "online"];
const MOVEMENT_TYPES: [&str; 3] = ["in", "out", "transfer"];
/// Seed 05's producer sends a sale 70% of the time and a stock movement otherwise.
const SALES_WAREHOUSE_SPLIT: [u32; 2] = [70, 30];

/// Which of seed 05's two streams a generator produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mix {
    Sales,
    Warehouse,
    Both,
}

pub(crate) struct Retail {
    rng: Rng,
    mix: Mix,
    split: Weighted,
    /// Price in kopecks of product `id` at index `id - 1`: a product keeps its price.
    prices: Vec<u64>,
    clock: UtcClock,
}

#[derive(Serialize)]
struct Sale<'a> {
    event_id: &'a str,
    event_time: &'a str,
    product_id: u64,
    store_id: u64,
    customer_id: u64,
    quantity: u64,
    price: f64,
    total_amount: f64,
    payment_method: &'static str,
}

#[derive(Serialize)]
struct Movement<'a> {
    event_id: &'a str,
    event_time: &'a str,
    product_id: u64,
    warehouse_id: u64,
    movement_type: &'static str,
    quantity: u64,
}

impl Retail {
    pub(crate) fn new(seed: u64, mix: Mix) -> Self {
        let mut price_rng = pool::rng(seed, stream::PRODUCTS);
        // Shop-like prices: whole units from 1 to 4999 ending in .00, .50, .90 or .99.
        let prices = (0..PRODUCTS)
            .map(|_| {
                100 * between(&mut price_rng, 1, 4999) + pick(&mut price_rng, &[0, 50, 90, 99])
            })
            .collect();
        Retail {
            rng: pool::rng(
                seed,
                match mix {
                    Mix::Sales => stream::SALES,
                    Mix::Warehouse => stream::WAREHOUSE,
                    Mix::Both => stream::RETAIL,
                },
            ),
            mix,
            split: Weighted::new(&SALES_WAREHOUSE_SPLIT),
            prices,
            clock: UtcClock::default(),
        }
    }
}

/// Kopecks to a JSON number with at most two decimals (exact: both are integers / 100).
fn money(kopecks: u64) -> f64 {
    kopecks as f64 / 100.0
}

impl Generator for Retail {
    fn routes(&self) -> &'static [&'static str] {
        match self.mix {
            Mix::Sales => &["sales"],
            Mix::Warehouse => &["warehouse"],
            Mix::Both => &["sales", "warehouse"],
        }
    }

    fn next_into(&mut self, timestamp_ms: i64, out: &mut Event) {
        let is_sale = match self.mix {
            Mix::Sales => true,
            Mix::Warehouse => false,
            Mix::Both => self.split.pick(&mut self.rng) == 0,
        };
        let route = usize::from(self.mix == Mix::Both && !is_sale);
        let mut id_buf: UuidBuf = [0; uuid::fmt::Hyphenated::LENGTH];
        let event_id = pool::uuid_into(&mut self.rng, &mut id_buf);
        let event_time = self.clock.datetime(timestamp_ms);
        let product_id = between(&mut self.rng, 1, PRODUCTS);
        out.reset(route, timestamp_ms);
        out.set_key_number(product_id);
        if is_sale {
            let quantity = between(&mut self.rng, 1, 10);
            let price = self.prices[(product_id - 1) as usize];
            out.set_value(&Sale {
                event_id,
                event_time,
                product_id,
                store_id: between(&mut self.rng, 1, STORES),
                customer_id: between(&mut self.rng, 1, CUSTOMERS),
                quantity,
                price: money(price),
                total_amount: money(quantity * price),
                payment_method: pick(&mut self.rng, &PAYMENT_METHODS),
            });
        } else {
            out.set_value(&Movement {
                event_id,
                event_time,
                product_id,
                warehouse_id: between(&mut self.rng, 1, WAREHOUSES),
                movement_type: pick(&mut self.rng, &MOVEMENT_TYPES),
                quantity: between(&mut self.rng, 1, 200),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{generator, Kind, Options};
    use std::collections::{HashMap, HashSet};

    const SALE_FIELDS: [&str; 9] = [
        "event_id",
        "event_time",
        "product_id",
        "store_id",
        "customer_id",
        "quantity",
        "price",
        "total_amount",
        "payment_method",
    ];
    const MOVEMENT_FIELDS: [&str; 6] = [
        "event_id",
        "event_time",
        "product_id",
        "warehouse_id",
        "movement_type",
        "quantity",
    ];

    fn in_range(v: &serde_json::Value, lo: u64, hi: u64) -> bool {
        v.as_u64().is_some_and(|n| (lo..=hi).contains(&n))
    }

    fn expected_time(timestamp_ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(timestamp_ms)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    }

    fn check_sale(event: &Event, prices: &mut HashMap<u64, f64>) {
        assert_eq!(keys_in_order(&event.value), SALE_FIELDS);
        let j = json(event);
        uuid::Uuid::parse_str(j["event_id"].as_str().unwrap()).unwrap();
        assert_eq!(j["event_time"], expected_time(event.timestamp_ms));
        assert!(in_range(&j["product_id"], 1, 500));
        assert_eq!(event.key, j["product_id"].to_string());
        assert!(in_range(&j["store_id"], 1, 50));
        assert!(in_range(&j["customer_id"], 1, 100_000));
        assert!(in_range(&j["quantity"], 1, 10));
        assert!(PAYMENT_METHODS.contains(&j["payment_method"].as_str().unwrap()));
        let price = j["price"].as_f64().unwrap();
        let total = j["total_amount"].as_f64().unwrap();
        for text in [j["price"].to_string(), j["total_amount"].to_string()] {
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 2, "{text} has more than 2 decimals");
        }
        let quantity = j["quantity"].as_f64().unwrap();
        assert!((total - quantity * price).abs() < 0.005);
        let product = j["product_id"].as_u64().unwrap();
        assert_eq!(*prices.entry(product).or_insert(price), price);
    }

    fn check_movement(event: &Event) {
        assert_eq!(keys_in_order(&event.value), MOVEMENT_FIELDS);
        let j = json(event);
        uuid::Uuid::parse_str(j["event_id"].as_str().unwrap()).unwrap();
        assert_eq!(j["event_time"], expected_time(event.timestamp_ms));
        assert!(in_range(&j["product_id"], 1, 500));
        assert_eq!(event.key, j["product_id"].to_string());
        assert!(in_range(&j["warehouse_id"], 1, 10));
        assert!(in_range(&j["quantity"], 1, 200));
        assert!(MOVEMENT_TYPES.contains(&j["movement_type"].as_str().unwrap()));
    }

    #[test]
    fn sales_and_warehouse_have_exactly_the_listed_fields() {
        let mut prices = HashMap::new();
        for event in events(Kind::Sales, &Options::default(), 500) {
            assert_eq!(event.route, 0);
            check_sale(&event, &mut prices);
        }
        for event in events(Kind::Warehouse, &Options::default(), 500) {
            assert_eq!(event.route, 0);
            check_movement(&event);
        }
        assert_eq!(
            generator(Kind::Sales, &Options::default()).routes(),
            ["sales"]
        );
        assert_eq!(
            generator(Kind::Warehouse, &Options::default()).routes(),
            ["warehouse"]
        );
    }

    #[test]
    fn sales_and_warehouse_with_one_seed_do_not_share_event_ids() {
        let ids = |kind| -> HashSet<String> {
            events(kind, &Options::default(), 1000)
                .iter()
                .map(|e| json(e)["event_id"].as_str().unwrap().to_owned())
                .collect()
        };
        let (sales, warehouse) = (ids(Kind::Sales), ids(Kind::Warehouse));
        assert_eq!(sales.len(), 1000);
        assert!(sales.is_disjoint(&warehouse));
    }

    #[test]
    fn retail_splits_70_30_and_routes_by_shape() {
        let gen = generator(Kind::Retail, &Options::default());
        assert_eq!(gen.routes(), ["sales", "warehouse"]);
        let n = 20_000;
        let mut prices = HashMap::new();
        let mut sales = 0;
        for event in events(Kind::Retail, &Options::default(), n) {
            if event.route == 0 {
                sales += 1;
                check_sale(&event, &mut prices);
            } else {
                assert_eq!(event.route, 1);
                check_movement(&event);
            }
        }
        let share = sales as f64 / n as f64;
        assert!((0.68..0.72).contains(&share), "sales share {share}");
        // Prices are per product, not per kind: sales-only agrees with retail.
        for event in events(Kind::Sales, &Options::default(), 2000) {
            check_sale(&event, &mut prices);
        }
    }
}
