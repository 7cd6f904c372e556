"""Compression methods. Importing this package registers the built-in ones (see `registry`)."""

from . import come, flattengpt, replaceme, shortgpt  # noqa: F401  (each registers itself)
from .registry import METHODS, MethodSpec, get_method, option, register_method

__all__ = ["METHODS", "MethodSpec", "get_method", "option", "register_method"]
