"""Sharded prediction: a deterministic share of a folder's studies per machine.

`twoview predict FOLDER --shard K/N` keeps the studies whose id hashes to shard K (1..N), so a SLURM
array, a Kubernetes indexed job or Ray tasks can each take one share of the same folder;
`pipeline.merge` joins their outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import TwoviewError
from pipeline.studies import SetAside, Study

__all__ = ["Shard", "ShardError", "parse_shard", "select"]


class ShardError(TwoviewError):
    """A shard that cannot be parsed, or shard outputs that do not join into one complete result."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1..count) of `count`."""

    index: int
    count: int

    def holds(self, key: str) -> bool:
        """Whether `key` (a study id, or a file path for unreadable files) belongs to this shard."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'K/N' with 1 <= K <= N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise ShardError(f"--shard must look like K/N (for example 2/8), got {text!r}") from err
    if not 1 <= index <= count:
        raise ShardError(f"--shard {text}: K must be between 1 and N")
    return Shard(index, count)


def select(
    studies: Sequence[Study], set_aside: Sequence[SetAside], shard: Shard
) -> tuple[tuple[Study, ...], tuple[SetAside, ...]]:
    """The studies of one shard, and the set-aside files that belong to it (by study, else by path)."""
    mine = tuple(s for s in studies if shard.holds(s.study_id))
    aside = tuple(a for a in set_aside if shard.holds(a.study_id or str(a.path)))
    return mine, aside
