-- covid_new_cases on cluster dwh_test

CREATE DATABASE IF NOT EXISTS `otus_kafka` ON CLUSTER `dwh_test`;

CREATE DATABASE IF NOT EXISTS `raw` ON CLUSTER `dwh_test`;

CREATE TABLE IF NOT EXISTS `otus_kafka`.`covid_new_cases_kafka` ON CLUSTER `dwh_test` (
    `date` String,
    `location_key` String,
    `new_confirmed` Int32,
    `new_deceased` Int32,
    `new_recovered` Int32,
    `new_tested` Int32
) ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka:9092',
    kafka_topic_list = 'covid_new_cases_1min',
    kafka_group_name = 'clickhouse-covid_new_cases-consumer',
    kafka_format = 'JSONEachRow',
    kafka_num_consumers = 1,
    kafka_skip_broken_messages = 1000;

CREATE TABLE IF NOT EXISTS `raw`.`covid_new_cases_local` ON CLUSTER `dwh_test` (
    `date` Date,
    `location_key` LowCardinality(String),
    `new_confirmed` Int32,
    `new_deceased` Int32,
    `new_recovered` Int32,
    `new_tested` Int32
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/raw/covid_new_cases_local', '{replica}')
PARTITION BY toYYYYMM(`date`)
ORDER BY (`date`, `location_key`);

CREATE TABLE IF NOT EXISTS `raw`.`covid_new_cases` ON CLUSTER `dwh_test` AS `raw`.`covid_new_cases_local`
ENGINE = Distributed('dwh_test', 'raw', 'covid_new_cases_local', xxHash64(`location_key`));

CREATE MATERIALIZED VIEW IF NOT EXISTS `raw`.`covid_new_cases_mv` ON CLUSTER `dwh_test`
TO `raw`.`covid_new_cases` AS
SELECT
    toDate(`date`) AS `date`,
    `location_key`,
    `new_confirmed`,
    `new_deceased`,
    `new_recovered`,
    `new_tested`
FROM `otus_kafka`.`covid_new_cases_kafka`;

-- may fail without stopping (skip_alter_on_error)
ALTER TABLE `raw`.`covid_new_cases_local` ON CLUSTER `dwh_test` ADD PROJECTION IF NOT EXISTS `covid_new_cases_by_date` (SELECT * ORDER BY (`date`, `new_confirmed`));

-- may fail without stopping (skip_alter_on_error)
ALTER TABLE `raw`.`covid_new_cases_local` ON CLUSTER `dwh_test` MATERIALIZE PROJECTION `covid_new_cases_by_date`;

-- may fail without stopping (skip_alter_on_error)
ALTER TABLE `raw`.`covid_new_cases_local` ON CLUSTER `dwh_test` ADD INDEX IF NOT EXISTS `idx_date` `date` TYPE minmax GRANULARITY 4;

-- may fail without stopping (skip_alter_on_error)
ALTER TABLE `raw`.`covid_new_cases_local` ON CLUSTER `dwh_test` ADD INDEX IF NOT EXISTS `idx_location_key` `location_key` TYPE bloom_filter GRANULARITY 4;
