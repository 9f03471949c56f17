"""Training methods (dense, DemP and the baselines) as hooks of the training loop."""
from demp.app.methods.base import METHODS, Method, MethodConfig, MethodContext, create_method, register_method

__all__ = ["METHODS", "Method", "MethodConfig", "MethodContext", "create_method", "register_method"]
