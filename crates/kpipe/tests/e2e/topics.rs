//! Seed 04's topic flows (create, exists, recreate) from its JSON configs, and
//! the topic commands around them.

use crate::harness::BrokerProcess;

fn example(name: &str) -> String {
    format!(
        "{}/../../examples/topics/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn describe(broker: &BrokerProcess, topic: &str) -> String {
    broker.kpipe(&["topic", "describe", topic], "").out()
}

#[test]
fn seed_04_topic_config_create_exists_recreate() {
    let broker = BrokerProcess::start();
    let created = broker
        .kpipe(
            &["topic", "apply", &example("covid_new_cases_1min.json")],
            "",
        )
        .out();
    assert!(
        created.contains("created: covid_new_cases_1min (3 partitions"),
        "{created}"
    );
    let described = describe(&broker, "covid_new_cases_1min");
    assert!(
        described.contains("retention.ms") && described.contains("86400000"),
        "{described}"
    );
    assert!(described.contains("compression.type") && described.contains("snappy"));

    broker
        .kpipe(
            &[
                "gen",
                "covid-new",
                "--topic",
                "covid_new_cases_1min",
                "--count",
                "50",
            ],
            "",
        )
        .out();
    let again = broker
        .kpipe(
            &["topic", "apply", &example("covid_new_cases_1min.json")],
            "",
        )
        .out();
    assert!(again.contains("exists: covid_new_cases_1min"), "{again}");

    let recreated = broker.kpipe(
        &[
            "topic",
            "apply",
            &example("covid_new_cases_1min_recreate.json"),
        ],
        "",
    );
    assert!(recreated.ok, "{}", recreated.stderr);
    assert!(
        recreated
            .stdout
            .contains("recreated: covid_new_cases_1min (5 partitions"),
        "{}",
        recreated.stdout
    );
    assert!(
        recreated.stderr.contains("deletes all of its messages"),
        "no data-loss warning: {}",
        recreated.stderr
    );
    let described = describe(&broker, "covid_new_cases_1min");
    assert!(
        described.contains("(5 partitions)")
            && described.contains("172800000")
            && described.contains("lz4"),
        "{described}"
    );
    let empty = broker.kpipe(
        &[
            "consume",
            "covid_new_cases_1min",
            "--from-beginning",
            "--timeout-ms",
            "1000",
        ],
        "",
    );
    assert!(empty.out().is_empty(), "a recreated topic must be empty");

    let cumulative = broker
        .kpipe(
            &[
                "topic",
                "apply",
                &example("covid_cumulative_data_5min.json"),
            ],
            "",
        )
        .out();
    assert!(cumulative.contains("created: covid_cumulative_data_5min"));
    let listed = broker.kpipe(&["topic", "list"], "").out();
    assert!(
        listed.contains("covid_new_cases_1min") && listed.contains("covid_cumulative_data_5min")
    );
}

#[test]
fn topic_create_if_not_exists_recreate_alter_delete() {
    let broker = BrokerProcess::start();
    let create = [
        "topic",
        "create",
        "orders",
        "--partitions",
        "2",
        "--config",
        "retention.ms=3600000",
    ];
    assert!(broker
        .kpipe(&create, "")
        .out()
        .starts_with("created: orders (2 partitions"));
    let twice = broker.kpipe(&create, "");
    twice.fails_with("topic orders already exists");
    let keep = broker
        .kpipe(&["topic", "create", "orders", "--if-not-exists"], "")
        .out();
    assert!(keep.starts_with("exists: orders"));

    broker.kpipe(&["produce", "orders"], "a\nb\nc\n").out();
    let recreate = broker.kpipe(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "4",
            "--recreate",
        ],
        "",
    );
    assert!(recreate
        .out()
        .starts_with("recreated: orders (4 partitions"));
    assert!(broker
        .kpipe(
            &[
                "consume",
                "orders",
                "--from-beginning",
                "--timeout-ms",
                "800"
            ],
            ""
        )
        .out()
        .is_empty());

    let alter = [
        "topic",
        "alter",
        "orders",
        "--config",
        "min.insync.replicas=1",
        "--config",
        "cleanup.policy=compact",
        "--partitions",
        "6",
    ];
    broker.kpipe(&alter, "").out();
    let described = describe(&broker, "orders");
    assert!(
        described.contains("(6 partitions)")
            && described.contains("compact")
            && described.contains("min.insync.replicas"),
        "{described}"
    );
    broker
        .kpipe(
            &[
                "topic",
                "alter",
                "orders",
                "--delete-config",
                "cleanup.policy",
            ],
            "",
        )
        .out();
    assert!(!describe(&broker, "orders").contains("compact"));
    let shrink = broker.kpipe(&["topic", "alter", "orders", "--partitions", "2"], "");
    shrink.fails_with("can only grow");
    let bad = broker.kpipe(
        &["topic", "alter", "orders", "--config", "retention.ms=soon"],
        "",
    );
    assert!(
        !bad.ok && bad.stderr.lines().count() == 1,
        "one clear sentence: {}",
        bad.stderr
    );

    broker.kpipe(&["topic", "create", "keep-me"], "").out();
    broker.kpipe(&["topic", "delete", "orders"], "").out();
    let listed = broker.kpipe(&["topic", "list"], "").out();
    assert!(!listed.contains("orders") && listed.contains("keep-me"));
    let missing = broker.kpipe(&["topic", "delete", "orders"], "");
    missing.fails_with("topic orders does not exist");
    assert!(
        broker
            .kpipe(&["topic", "delete", "orders", "--if-exists"], "")
            .ok
    );
    let rf = broker.kpipe(
        &["topic", "create", "replicated", "--replication-factor", "3"],
        "",
    );
    rf.fails_with("cannot create topic replicated");
}
