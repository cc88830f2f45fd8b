"""Packages whose public names are imported on first use (PEP 562), so that importing the package is cheap.

Every CLI checks its flags through modules of these packages before any model work; were `import mini_ldm`
(or `import measure`) to import torch, a mistyped flag would wait seconds for its one-line error.
"""
import importlib


def exports(package: str, where: dict):
    """(__getattr__, __dir__) for `package` (its __name__): `where` maps each public name to the module, relative
    to the package, that defines it; that module is imported the first time the name is asked for."""
    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], package), name)

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(where))

    return __getattr__, __dir__
