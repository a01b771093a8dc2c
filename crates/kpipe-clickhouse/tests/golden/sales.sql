-- sales

CREATE DATABASE IF NOT EXISTS `retail_kafka`;

CREATE DATABASE IF NOT EXISTS `retail`;

CREATE TABLE IF NOT EXISTS `retail_kafka`.`sales_kafka` (
    `event_id` String,
    `event_time` String,
    `product_id` UInt32,
    `store_id` UInt32,
    `customer_id` UInt32,
    `quantity` UInt32,
    `price` Float64,
    `total_amount` Float64,
    `payment_method` String
) ENGINE = Kafka
SETTINGS
    kafka_broker_list = 'kafka:9092',
    kafka_topic_list = 'sales',
    kafka_group_name = 'clickhouse_sales_consumer',
    kafka_format = 'JSONEachRow',
    kafka_num_consumers = 1,
    kafka_skip_broken_messages = 1000;

CREATE TABLE IF NOT EXISTS `retail`.`sales` (
    `event_id` String,
    `event_time` DateTime,
    `product_id` UInt32,
    `store_id` UInt32,
    `customer_id` UInt32,
    `quantity` UInt32,
    `price` Float64,
    `total_amount` Float64,
    `payment_method` String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(`event_time`)
ORDER BY (`event_time`, `product_id`);

CREATE MATERIALIZED VIEW IF NOT EXISTS `retail`.`sales_mv`
TO `retail`.`sales` AS
SELECT
    `event_id`,
    parseDateTimeBestEffort(`event_time`) AS `event_time`,
    `product_id`,
    `store_id`,
    `customer_id`,
    `quantity`,
    `price`,
    `total_amount`,
    `payment_method`
FROM `retail_kafka`.`sales_kafka`;
