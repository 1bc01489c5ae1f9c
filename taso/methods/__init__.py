"""Ways of adapting a model, one module each, behind one contract (:class:`~taso.methods.base.Method`).

``METHODS`` maps a method's name to its class: adding a method is a new module, one line here
and its name in ``taso.names.METHOD_NAMES`` (what params.yaml's quick check accepts, without
importing torch); nothing else in taso/, pipeline/ or the benchmarks branches on method names.
"""

from taso.methods.base import Method, MethodConfig
from taso.methods.full import FullFinetune
from taso.methods.head import HeadOnly
from taso.methods.imp import Imp
from taso.methods.lora import Lora
from taso.methods.losia import Losia
from taso.methods.taso import RandomMask, Taso

METHODS: dict[str, type[Method]] = {m.name: m for m in (Taso, RandomMask, Imp, Losia, Lora, HeadOnly, FullFinetune)}


def build(name: str, config: MethodConfig | None = None) -> Method:
    """The method registered as ``name``, built from ``config``.

    Raises:
        ValueError: no method has that name (the message lists those that exist).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](config)


__all__ = ["METHODS", "Method", "MethodConfig", "build"]
