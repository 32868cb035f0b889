"""Read an offline W&B run back from its `run-<id>.wandb` file, without a server.

wandb keeps no summary or config files for offline runs; everything is in the transaction
log: a 7-byte header (":W&B", magic, version), then LevelDB log records (32 KiB blocks; each
record: crc32c, 2-byte length, type FULL/FIRST/MIDDLE/LAST) holding `Record` protobufs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (missing ':W&B' header)")
    pos, chunks = HEADER, []
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer: zero padding
            pos += left_in_block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            chunks = [payload]
        elif kind == MIDDLE:
            chunks.append(payload)
        elif kind == LAST:
            yield b"".join(chunks + [payload])


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """{"run": {id, name, project, group, job_type, tags}, "config": {...}, "summary": {...},
    "history": [{key: value, ...} per step], "exit_code": int (absent while running)}
    of one offline run folder (or its .wandb file)."""
    from wandb.proto import wandb_internal_pb2

    path = Path(run_dir)
    if path.is_dir():
        found = sorted(path.glob("run-*.wandb"))
        if not found:
            raise FileNotFoundError(f"no run-*.wandb file in {path}")
        path = found[0]
    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "history": []}
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out["run"] = {"id": r.run_id, "name": r.display_name, "project": r.project, "group": r.run_group,
                          "job_type": r.job_type, "tags": list(r.tags)}
            out["config"].update({_key(u): json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            out["config"].update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "summary":
            out["summary"].update({_key(u): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
    return out
