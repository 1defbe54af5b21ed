"""Delta Lake table contracts shared by the curator (writer) and the trainer (reader).

Needs the ``lake`` extra (deltalake, pyarrow); the ingest service never imports this package.
"""

from flywheel_common.lake.tables import (
    DPO_PAIRS,
    KTO_EXAMPLES,
    KTO_SIGNALS,
    REJECTED_CANDIDATES,
    SFT_EXAMPLES,
    TABLE_SCHEMAS,
    TableName,
    chat_prompt,
    content_hash,
    kto_example_id,
    txn_app_id,
)

__all__ = [
    "DPO_PAIRS",
    "KTO_EXAMPLES",
    "KTO_SIGNALS",
    "REJECTED_CANDIDATES",
    "SFT_EXAMPLES",
    "TABLE_SCHEMAS",
    "TableName",
    "chat_prompt",
    "content_hash",
    "kto_example_id",
    "txn_app_id",
]
