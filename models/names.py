"""The names of the network's heads and routes: defined once here, used by every output, report and page.

Torch-free, so the CLI and the app can use them without loading the network.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["HEADS", "OUTPUTS", "ROUTES", "Route"]

#: The three heads of `TwoViewNet`, in the order output columns list them.
HEADS: tuple[str, ...] = ("frontal", "lateral", "joint")
#: Every prediction a row gets: the final one (joint where both views exist, else the one view's head) and each head.
OUTPUTS: tuple[str, ...] = ("final", *HEADS)


class Route(IntEnum):
    """Which head gave a row's final prediction (the integer codes travel in tensors)."""

    JOINT = 0
    FRONTAL = 1
    LATERAL = 2

    @property
    def label(self) -> str:
        """The route's name as outputs write it: "joint", "frontal" or "lateral"."""
        return self.name.lower()


#: The route names, in `Route` code order.
ROUTES: tuple[str, ...] = tuple(route.label for route in Route)
