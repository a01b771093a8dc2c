-- warehouse

CREATE DATABASE IF NOT EXISTS `retail_kafka`;

CREATE DATABASE IF NOT EXISTS `retail`;

CREATE TABLE IF NOT EXISTS `retail_kafka`.`stock_movements_kafka` (
    `event_id` String,
    `event_time` String,
    `product_id` UInt32,
    `warehouse_id` UInt32,
    `movement_type` String,
    `quantity` UInt32
) ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka:9092',
    kafka_topic_list = 'warehouse',
    kafka_group_name = 'clickhouse_warehouse_consumer',
    kafka_format = 'JSONEachRow',
    kafka_num_consumers = 1,
    kafka_skip_broken_messages = 1000;

CREATE TABLE IF NOT EXISTS `retail`.`stock_movements` (
    `event_id` String,
    `event_time` DateTime,
    `product_id` UInt32,
    `warehouse_id` UInt32,
    `movement_type` String,
    `quantity` UInt32
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(`event_time`)
ORDER BY (`event_time`, `product_id`);

CREATE MATERIALIZED VIEW IF NOT EXISTS `retail`.`stock_movements_mv`
TO `retail`.`stock_movements` AS
SELECT
    `event_id`,
    parseDateTimeBestEffort(`event_time`) AS `event_time`,
    `product_id`,
    `warehouse_id`,
    `movement_type`,
    `quantity`
FROM `retail_kafka`.`stock_movements_kafka`;
