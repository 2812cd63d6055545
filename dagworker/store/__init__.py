"""The run store: everything dagworker keeps in Redis, behind typed methods (``Store``)."""

from dagworker.store.base import connect, now
from dagworker.store.outputs import (
    INLINE_OUTPUTS,
    READ_CHUNK,
    STAGE_CHUNK,
    decode_artifact,
    encode_artifact,
)
from dagworker.store.records import LazyMap, Prefetched, TaskBegin, TaskFinish
from dagworker.store.runs import Store

__all__ = [
    "INLINE_OUTPUTS",
    "READ_CHUNK",
    "STAGE_CHUNK",
    "LazyMap",
    "Prefetched",
    "Store",
    "TaskBegin",
    "TaskFinish",
    "connect",
    "decode_artifact",
    "encode_artifact",
    "now",
]
