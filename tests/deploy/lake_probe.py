"""Runs inside the curator image (``python -c``, deltalake only): what the lake volume holds.

Prints one JSON object: per table its version and row count, the event ids of every gold
pair (duplicates included, so the test can count them), which versions of ``dpo_pairs`` still
load (a vacuumed version does not), and the Delta application-transaction version of each app
id named on the command line (the curator's next offset per topic-partition).
"""

import json
import sys

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

LAKE = "/lake"
APP_IDS = sys.argv[1:]
TABLES = ("dpo_pairs", "sft_examples", "rejected_candidates", "training_runs")


def main() -> None:
    report: dict[str, object] = {}
    for name in TABLES:
        uri = f"{LAKE}/{name}"
        if not DeltaTable.is_deltatable(uri):
            report[name] = None
            continue
        table = DeltaTable(uri)
        report[name] = {
            "version": table.version(),
            "rows": table.to_pyarrow_dataset().count_rows(),
            "files": len(table.file_uris()),
        }
    pairs = f"{LAKE}/dpo_pairs"
    if report.get("dpo_pairs"):
        rows = DeltaTable(pairs).to_pyarrow_table(columns=["event_id"]).column("event_id")
        report["pair_event_ids"] = rows.to_pylist()
        loadable = []
        for version in range(DeltaTable(pairs).version() + 1):
            try:
                DeltaTable(pairs, version=version).to_pyarrow_dataset().count_rows()
            except (DeltaError, OSError):  # its files were vacuumed away
                continue
            loadable.append(version)
        report["pairs_loadable_versions"] = loadable
        report["txn"] = {app: DeltaTable(pairs).transaction_version(app) for app in APP_IDS}
    sys.stdout.write(json.dumps(report) + "\n")


main()
