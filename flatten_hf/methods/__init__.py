"""Compression methods. Importing this package registers the built-in ones (see `registry`).

Every module of this package is imported here, so a method is one module that calls
`register_method` (plus its tests): nothing else lists the methods.
"""

import importlib
import pkgutil

from .registry import METHODS, MethodSpec, get_method, option, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "MethodSpec", "get_method", "option", "register_method"]
