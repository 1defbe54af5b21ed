"""Runs inside the ingest image (``python -c``, confluent-kafka only): the end offset of every
partition of the topics named on the command line, as one JSON object
``{"topic": {"partition": end_offset}}``."""

import json
import sys

from confluent_kafka import Consumer, TopicPartition

BOOTSTRAP, TOPICS = sys.argv[1], sys.argv[2:]


def main() -> None:
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "flywheel-deploy-probe"})
    try:
        metadata = consumer.list_topics(timeout=10)
        ends = {
            topic: {
                str(p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in metadata.topics[topic].partitions
            }
            for topic in TOPICS
        }
    finally:
        consumer.close()
    sys.stdout.write(json.dumps(ends) + "\n")


main()
