-- covid_cumulative, recreated, ClickHouse 18
-- note: ClickHouse 18 has no kafka_skip_broken_messages (1000 in the config): set input_format_allow_errors_num in the server's default profile, or load with `kpipe sink clickhouse`, which dead-letters bad messages

CREATE DATABASE IF NOT EXISTS `otus_kafka`;

CREATE DATABASE IF NOT EXISTS `ods`;

DROP TABLE IF EXISTS `ods`.`covid_cumulative_mv`;

DROP TABLE IF EXISTS `ods`.`covid_cumulative`;

DROP TABLE IF EXISTS `otus_kafka`.`covid_cumulative_kafka`;

CREATE TABLE IF NOT EXISTS `otus_kafka`.`covid_cumulative_kafka` (
    `date` String,
    `location_key` String,
    `cumulative_confirmed` Int32,
    `cumulative_deceased` Int32,
    `cumulative_recovered` Int32,
    `cumulative_tested` Int32
) ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka:9092',
    kafka_topic_list = 'covid_cumulative_data_5min',
    kafka_group_name = 'clickhouse-covid_cumulative-consumer',
    kafka_format = 'JSONEachRow',
    kafka_num_consumers = 1,
    kafka_row_delimiter = '\n';

CREATE TABLE IF NOT EXISTS `ods`.`covid_cumulative` (
    `date` Date,
    `location_key` LowCardinality(String),
    `cumulative_confirmed` Int32,
    `cumulative_deceased` Int32,
    `cumulative_recovered` Int32,
    `cumulative_tested` Int32
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(`date`)
ORDER BY (`date`, `location_key`);

CREATE MATERIALIZED VIEW IF NOT EXISTS `ods`.`covid_cumulative_mv`
TO `ods`.`covid_cumulative` AS
SELECT
    toDate(`date`) AS `date`,
    toLowCardinality(`location_key`) AS `location_key`,
    `cumulative_confirmed`,
    `cumulative_deceased`,
    `cumulative_recovered`,
    `cumulative_tested`
FROM `otus_kafka`.`covid_cumulative_kafka`;
