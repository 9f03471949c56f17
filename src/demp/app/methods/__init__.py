"""Training methods (dense, DemP and the baselines) as hooks of the training loop.

Each method module registers its classes when imported; importing this package imports them
all, so ``METHODS`` is complete wherever a method is looked up.
"""
from demp.app.methods.base import (METHODS, Dense, Method, MethodConfig, MethodContext, create_method,
                                   method_class, register_method, setting_keys)
from demp.app.methods import baselines, count, demp, scratch  # noqa: F401,E402  (each registers its methods)

__all__ = ["METHODS", "Dense", "Method", "MethodConfig", "MethodContext", "create_method", "method_class",
           "register_method", "setting_keys"]
