"""Which epochs of the ledger's key index may hold a game key: one Bloom filter per epoch.

The ledger indexes game keys by epoch first (a range of about a million sequence
numbers: ``ringd.ledger.EPOCH_BITS``), so that a new game's key lands in the current
epoch's part of the index and a commit rewrites a few thousand pages of it, however
large the ledger has grown (one index ordered by the random keys alone had every new
game dirty a page of its own). The price is the lookup: a key may be in any epoch.
These filters answer, for a batch of keys at once, which epochs may hold each key; for
a new game, almost always none, so the ledger probes its index only where a filter
says "maybe".

Each epoch's filter is a blocked Bloom filter: a key sets ``K`` bits of one 64-bit
word, the word chosen by the key's last 8 bytes and the bits by its first 8 (game keys
are xxh3-128 digests, so every bit is uniform). At ``BITS_PER_KEY`` bits a key (2.5
MiB for an epoch of a million games) a lookup says "maybe" for a key that a full
epoch does not hold 0.17% of the time: with 20 epochs, a probe for one new game in 30
(at 12 bits a key, one in 5: the probes were 8% of the time of indexing 3 M games
into 20 M). A filter
never forgets a key (a key changed in place stays in it): that costs a probe, never a
miss. Pure data, no I/O: the ledger stores the filters of closed epochs and rebuilds
the others from its index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

BITS_PER_KEY = 20
K = 7
KEY_BYTES = 16


class EpochFilters:
    """A Bloom filter per epoch, each sized for ``keys_per_epoch`` keys, checked together."""

    def __init__(self, keys_per_epoch: int) -> None:
        self.words = max(1, keys_per_epoch * BITS_PER_KEY // 64)
        # Word-major: a key's words of every epoch lie side by side, so checking a key
        # against all epochs reads one short row.
        self._bits: npt.NDArray[np.uint64] = np.zeros((self.words, 0), np.uint64)

    @property
    def format(self) -> str:
        """The layout, stored beside the filters: one of another layout is rebuilt, never misread."""
        return f"blocked64:{self.words}:{K}"

    @property
    def epochs(self) -> int:
        """Epochs 0 to ``epochs - 1`` have a filter (an empty one where nothing was added)."""
        return int(self._bits.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self._bits.nbytes)

    def add(self, keys: Sequence[bytes], epochs: Sequence[int] | int) -> None:
        """Add ``keys``, each to its epoch's filter (``epochs``: one per key, or one for all)."""
        if not keys:
            return
        words, masks = _hash(keys, self.words)
        where = np.broadcast_to(np.asarray(epochs, np.int64), words.shape)
        self._grow(int(where.max()) + 1)
        np.bitwise_or.at(self._bits, (words, where), masks)

    def candidates(self, keys: Sequence[bytes]) -> list[tuple[int, int]]:
        """(index into ``keys``, epoch) for every epoch whose filter may hold that key,
        ordered by key index, newest epoch first."""
        if not keys or not self.epochs:
            return []
        words, masks = _hash(keys, self.words)
        column = masks[:, None]
        hits = (self._bits[words] & column) == column  # (keys, epochs)
        index, newest_first = np.nonzero(hits[:, ::-1])
        epochs = self.epochs - 1 - newest_first
        return list(zip(index.tolist(), epochs.tolist(), strict=True))

    def epoch_bytes(self, epoch: int) -> bytes:
        """One epoch's filter, to store (little-endian words)."""
        self._grow(epoch + 1)
        return bytes(self._bits[:, epoch].astype("<u8").tobytes())

    def load_epoch(self, epoch: int, data: bytes) -> None:
        """Put back a stored filter; ValueError when it is not one of this layout."""
        if len(data) != self.words * 8:
            raise ValueError(f"a key filter of {len(data)} bytes is not {self.words * 8}")
        self._grow(epoch + 1)
        self._bits[:, epoch] = np.frombuffer(data, "<u8")

    def _grow(self, epochs: int) -> None:
        if epochs > self.epochs:
            more = np.zeros((self.words, epochs - self.epochs), np.uint64)
            self._bits = np.concatenate([self._bits, more], axis=1)


def _hash(
    keys: Sequence[bytes], words: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Each key's word and the mask of its K bits in that word."""
    joined = b"".join(keys)
    if len(joined) != KEY_BYTES * len(keys):
        raise ValueError(f"game keys are {KEY_BYTES} bytes each")
    halves = np.frombuffer(joined, "<u8").reshape(-1, 2)
    low, high = halves[:, 0], halves[:, 1]
    masks = np.zeros(len(keys), np.uint64)
    one, six = np.uint64(1), np.uint64(6)
    for j in range(K):
        masks |= one << ((low >> (six * np.uint64(j))) & np.uint64(63))
    return high % np.uint64(words), masks
