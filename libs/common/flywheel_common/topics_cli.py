"""``flywheel topics create|list``: create the Flywheel topics with one partition count on an
existing cluster (deploys, operators), and show what is there."""

from __future__ import annotations

import argparse

from flywheel_common.cli import Handler
from flywheel_common.kafka import ensure_topics, make_admin, wait_for_broker
from flywheel_common.settings import DEFAULT_PARTITIONS, KafkaSettings, Topics

__all__ = ["create_command", "list_command"]


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--prefix", default=None, help="namespace the topic names, e.g. staging")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the broker")


def _settings(args: argparse.Namespace) -> KafkaSettings:
    topics = Topics.with_prefix(args.prefix) if args.prefix else Topics()
    return KafkaSettings(
        bootstrap_servers=args.bootstrap_servers,
        topics=topics,
        partitions=getattr(args, "partitions", DEFAULT_PARTITIONS),
        replication_factor=getattr(args, "replication_factor", 1),
    )


def create_command(parser: argparse.ArgumentParser) -> Handler:
    """Create the five Flywheel topics (idempotent; refuses a mismatched partition count)."""
    _add_cluster_args(parser)
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    parser.add_argument("--replication-factor", type=int, default=1)

    def run(args: argparse.Namespace) -> int:
        settings = _settings(args)
        wait_for_broker(settings, timeout_s=args.wait)
        created = ensure_topics(settings)
        for name in settings.topics.all():
            state = "created" if name in created else "exists"
            print(f"{name}\t{settings.partitions} partitions\t{state}")
        return 0

    return run


def list_command(parser: argparse.ArgumentParser) -> Handler:
    """List the Flywheel topics on a cluster with their partition counts."""
    _add_cluster_args(parser)

    def run(args: argparse.Namespace) -> int:
        settings = _settings(args)
        wait_for_broker(settings, timeout_s=args.wait)
        md = make_admin(settings).list_topics(timeout=10).topics
        for name in settings.topics.all():
            count = len(md[name].partitions) if name in md else 0
            print(f"{name}\t{count or 'missing'}")
        return 0 if all(n in md for n in settings.topics.all()) else 1

    return run
