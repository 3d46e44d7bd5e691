"""Encoders: a game record -> its positions as training samples (numpy, no torch).

An encoder turns one finished game into one sample per position: binary feature
planes over a ``height x width`` grid, a policy target (the index of the next move's
destination cell, ``row * width + col``, or ``height * width`` for a move without a
destination: a pass) and a value target in [-1, 1] from the side to move's view.

Planes are binary, so samples are stored bit-packed (``np.packbits`` of the
``(planes, height, width)`` array flattened, big-endian bit order): eight times less
memory and bandwidth, unpacked on the device. Non-binary features (counts, heights)
are encoded as several binary planes (thermometer coding: plane k is "at least k").

Sites plug in their own engine's encoder under the entry-point group
``ringd.encoders``: the entry point loads a zero-argument callable (a class will do)
returning an :class:`Encoder`. The built-in ``grid`` encoder is registered the same
way in ringd's pyproject.toml.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

ENTRY_POINT_GROUP = "ringd.encoders"


@dataclass(frozen=True, slots=True)
class Geometry:
    """The shape of an encoder's samples for one board and player count."""

    board: str
    players: int
    planes: int
    height: int
    width: int

    @property
    def cells(self) -> int:
        return self.height * self.width

    @property
    def pass_index(self) -> int:
        """The policy index of a move without a destination cell."""
        return self.cells

    @property
    def policy_size(self) -> int:
        return self.cells + 1

    @property
    def packed_bytes(self) -> int:
        """Bytes of one sample's bit-packed planes."""
        return (self.planes * self.cells + 7) // 8

    @property
    def sample_bytes(self) -> int:
        """Bytes of one stored sample: packed planes, int32 policy, float32 value."""
        return self.packed_bytes + 8

    def as_dict(self) -> dict[str, Any]:
        return {
            "board": self.board,
            "players": self.players,
            "planes": self.planes,
            "height": self.height,
            "width": self.width,
        }


@dataclass(frozen=True, slots=True)
class Samples:
    """The samples of one game (or of several, concatenated), in position order."""

    planes: npt.NDArray[np.uint8]  # (n, geometry.packed_bytes), bit-packed
    policy: npt.NDArray[np.int32]  # (n,), in [0, geometry.policy_size)
    value: npt.NDArray[np.float32]  # (n,), in [-1, 1]

    def __len__(self) -> int:
        return int(self.policy.shape[0])

    def check(self, geometry: Geometry) -> None:
        """Raise :class:`EncodeError` unless these arrays fit ``geometry``."""
        n = len(self)
        if self.planes.dtype != np.uint8 or self.planes.shape != (n, geometry.packed_bytes):
            raise EncodeError(
                f"planes must be uint8 ({n}, {geometry.packed_bytes}), got "
                f"{self.planes.dtype} {self.planes.shape}"
            )
        if self.policy.dtype != np.int32 or self.value.dtype != np.float32:
            raise EncodeError("policy must be int32 and value float32")
        if self.value.shape != (n,):
            raise EncodeError(f"value must have shape ({n},), got {self.value.shape}")
        if n and (self.policy.min() < 0 or self.policy.max() >= geometry.policy_size):
            raise EncodeError(f"policy targets outside [0, {geometry.policy_size})")
        if n and not (np.all(np.abs(self.value) <= 1)):
            raise EncodeError("value targets outside [-1, 1]")


class EncodeError(ValueError):
    """A record the encoder cannot turn into samples (the game is skipped and counted)."""


class UnsupportedBoard(ValueError):
    """The encoder has no geometry for this board and player count."""


@runtime_checkable
class Encoder(Protocol):
    """Record -> samples. Encoders are never pickled: each encoding process loads its
    own by name (``load_encoder``), so constructing one should be cheap and give the
    same encoder every time."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int:
        """Bump when the samples change: cached samples are kept per name and version."""
        ...

    def geometry(self, board: str, players: int) -> Geometry:
        """The sample shape for ``board``/``players``; :class:`UnsupportedBoard` if none."""
        ...

    def encode(self, record: Mapping[str, Any], geometry: Geometry) -> Samples:
        """All positions of one game (the decoded JSON record); :class:`EncodeError` if bad."""
        ...


class UnknownEncoder(LookupError):
    pass


def load_encoder(name: str) -> Encoder:
    """The encoder registered as ``name`` in the ``ringd.encoders`` entry points.

    ``grid`` is always available: if ringd's own entry points are not installed (a
    source checkout on PYTHONPATH), the built-in class is used directly.
    """
    factory: Callable[[], object] | None = None
    candidates = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    matching = [ep for ep in candidates if ep.name == name]
    if matching:
        factory = matching[0].load()
    elif name == "grid":
        from ringd.train.grid import GridEncoder

        factory = GridEncoder
    if factory is None:
        known = sorted({ep.name for ep in candidates} | {"grid"})
        raise UnknownEncoder(f"no encoder {name!r} registered; known: {', '.join(known)}")
    encoder = factory()
    if not isinstance(encoder, Encoder):
        raise UnknownEncoder(
            f"entry point {name!r} gave {type(encoder).__name__}, which lacks name, version, "
            "geometry() or encode()"
        )
    return encoder
