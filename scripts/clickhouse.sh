#!/bin/sh
# Starts a throwaway ClickHouse server (Debian's clickhouse-server package)
# with everything under DIR, listening on 127.0.0.1 only (HTTP and native TCP),
# and returns once GET /ping answers. Prints the server's PID; stop it with
# `kill -9 PID` and remove DIR (ClickHouse 18.16 + librdkafka 2.0 can abort on
# a graceful stop while Kafka tables exist). Used by the tests and bench/.
# Usage: scripts/clickhouse.sh DIR HTTP_PORT TCP_PORT
set -eu
DIR=$(realpath -m "$1"); HTTP=$2; TCP=$3
SERVER=$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)
[ -x "$SERVER" ] || { echo "clickhouse-server not found: apt-get install clickhouse-server (scripts/test.sh does)" >&2; exit 1; }
mkdir -p "$DIR/data" "$DIR/tmp" "$DIR/user_files" "$DIR/format_schemas" "$DIR/log"
cat > "$DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$DIR/log/clickhouse-server.log</log>
        <errorlog>$DIR/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$HTTP</http_port>
    <tcp_port>$TCP</tcp_port>
    <path>$DIR/data/</path>
    <tmp_path>$DIR/tmp/</tmp_path>
    <user_files_path>$DIR/user_files/</user_files_path>
    <format_schema_path>$DIR/format_schemas/</format_schema_path>
    <users_config>$DIR/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mlock_executable>false</mlock_executable>
    <max_table_size_to_drop>0</max_table_size_to_drop>
    <max_partition_size_to_drop>0</max_partition_size_to_drop>
    <remote_servers>
        <test_cluster>
            <shard><replica><host>127.0.0.1</host><port>$TCP</port></replica></shard>
        </test_cluster>
    </remote_servers>
    <macros><shard>01</shard><replica>r1</replica></macros>
    <!-- librdkafka settings of the Kafka engine: read topics from the start when a
         group has no offsets yet, and notice a vanished member in seconds. -->
    <kafka>
        <auto_offset_reset>smallest</auto_offset_reset>
        <session_timeout_ms>6000</session_timeout_ms>
        <heartbeat_interval_ms>1000</heartbeat_interval_ms>
    </kafka>
</yandex>
XML
cat > "$DIR/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <!-- the Kafka engine flushes a block after this long -->
            <stream_flush_interval_ms>1000</stream_flush_interval_ms>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default>
    </quotas>
</yandex>
XML
cd "$DIR"
"$SERVER" --config-file="$DIR/config.xml" >"$DIR/log/stdout.log" 2>&1 &
PID=$!
i=0
until [ "$(curl -s --max-time 1 "http://127.0.0.1:$HTTP/ping" 2>/dev/null)" = "Ok." ]; do
    if ! kill -0 $PID 2>/dev/null; then
        echo "clickhouse-server exited; its log:" >&2
        tail -5 "$DIR/log/clickhouse-server.err.log" "$DIR/log/stdout.log" >&2 || true
        exit 1
    fi
    i=$((i + 1))
    [ $i -le 600 ] || { kill -9 $PID; echo "clickhouse-server did not answer /ping within 60 s" >&2; exit 1; }
    sleep 0.1
done
echo $PID
