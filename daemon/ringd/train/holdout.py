"""The held-out slice: which games no job ever trains on (torch-free).

Per configuration a fixed share of games is kept out of every training window and
used to measure each new model (``ringd.train.evaluate``). Whether a game is held
out is a pure function of its 16-byte key (``ringd.records.game_key``): the first 8
bytes as a big-endian integer, modulo :data:`BUCKETS`, below ``fraction x BUCKETS``.
So the slice never changes as the ledger grows (numbers stay comparable job to job),
a game is held out wherever its file is, and the daemon (which leaves these games
out of the window) and the trainer (which refuses a spec that lists one) agree
without talking to each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

BUCKETS = 10_000


def held_out_buckets(fraction: float) -> int:
    """The buckets (of :data:`BUCKETS`) held out for ``fraction`` (0.02: 200)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"a held-out fraction is in [0, 1), got {fraction!r}")
    return round(fraction * BUCKETS)


def bucket_of(key: bytes) -> int:
    """A game's bucket, 0 to BUCKETS - 1: its key's first 8 bytes (big-endian) mod BUCKETS."""
    return int.from_bytes(key[:8], "big") % BUCKETS


def buckets_of(keys: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """:func:`bucket_of` of each of an array of 16-byte keys (numpy ``V16``)."""
    import numpy as np

    first = np.ascontiguousarray(keys).view(">u8")[::2]
    return first % np.uint64(BUCKETS)


def is_held_out(key: bytes, fraction: float) -> bool:
    """Whether the game with this key is in the held-out slice of ``fraction``."""
    return bucket_of(key) < held_out_buckets(fraction)
