"""What every configurable object (initializer, regularizer, loss) shares: Keras' config API."""

from __future__ import annotations

from typing import Any


class Configurable:
    """``get_config``/``from_config`` with equality, hashing and repr derived from the config.

    Subclasses override :meth:`get_config` to return their constructor arguments.
    """

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Configurable:
        """Rebuild from :meth:`get_config`."""
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
