"""Read an offline wandb run (`run-*.wandb`) back as wandb's own protobuf records.

wandb 0.31 moved its Python reader (`wandb.sdk.internal.datastore`) into the Go core, so the
test reads the file itself: a 7-byte header (`:W&B`, a magic number, a version byte), then
LevelDB-log framing (32 KiB blocks of chunks: crc32c, little-endian length, chunk type) around
serialized `wandb.proto.wandb_internal_pb2.Record` messages. Decoding with wandb's schema checks
the logged values themselves, not that some bytes happen to appear in the file.
"""

from __future__ import annotations

import json
import struct

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    if data[:4] != b':W&B':
        raise ValueError('not a wandb transaction log (missing the :W&B header)')
    pos, pending = HEADER, b''
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack('<IHB', data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind in (FIRST, MIDDLE):
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b''
        elif kind == 0 and length == 0:  # zero fill at the end of a block
            continue
        else:
            raise ValueError(f'unknown chunk type {kind} at byte {pos}')


def history_rows(path: str) -> list[dict]:
    """Every `wandb.log` row of the run, as {key: value} with values decoded from JSON."""
    from wandb.proto import wandb_internal_pb2

    with open(path, 'rb') as f:
        data = f.read()
    rows = []
    for payload in _payloads(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof('record_type') == 'history':
            rows.append({item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows
