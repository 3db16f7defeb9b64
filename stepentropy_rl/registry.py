"""Extension points: a name -> function table that a decorator fills at import, as verl's registries are."""
from __future__ import annotations


class Registry(dict):
    """``@REGISTRY.register("name")`` on a function makes it available under that config name.

    >>> GREETERS = Registry("greeter")
    >>> @GREETERS.register("hi")
    ... def hi(name): return "hi " + name
    >>> GREETERS["hi"]("ann"), sorted(GREETERS)
    ('hi ann', ['hi'])
    """

    def __init__(self, kind: str, reserved: tuple[str, ...] = ()):
        super().__init__()
        self.kind, self.reserved = kind, reserved

    def register(self, name: str):
        def deco(fn):
            if name in self or name in self.reserved:
                raise ValueError(f"{self.kind} name {name!r} is reserved or already registered")
            self[name] = fn
            return fn
        return deco
