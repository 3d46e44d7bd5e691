"""A site's encoder as a plug-in would ship it (loaded through an entry point in a test)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ringd.train.encode import Geometry, Samples


class SiteEncoder:
    """One plane (the last move's destination), policy = the next destination or pass."""

    name = "site"
    version = 3

    def geometry(self, board: str, players: int) -> Geometry:
        return Geometry(board, players, planes=1, height=8, width=8)

    def encode(self, record: Mapping[str, Any], geometry: Geometry) -> Samples:
        moves = record["moves"]
        targets = [m["to"]["y"] * 8 + m["to"]["x"] if "to" in m else 64 for m in moves]
        planes = np.zeros((len(moves), geometry.cells), np.uint8)
        for t in range(1, len(moves)):
            if targets[t - 1] < 64:
                planes[t, targets[t - 1]] = 1
        return Samples(
            np.packbits(planes, axis=1),
            np.array(targets, np.int32),
            np.zeros(len(moves), np.float32),
        )


class NotAnEncoder:
    name = "broken"
