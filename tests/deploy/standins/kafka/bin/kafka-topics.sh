#!/bin/bash
# The official image's bin/kafka-topics.sh: the topic tool on the bundled jars.
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} -XX:TieredStopAtLevel=1 \
  "-Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.xml" \
  -cp "/opt/kafka/libs/*" org.apache.kafka.tools.TopicCommand "$@"
