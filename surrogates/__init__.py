"""Surrogate models of perturbation outcomes, with uncertainty. Registered by config name."""

from surrogates.base import Surrogate, SurrogatePosterior
from surrogates.registry import REGISTRY, make_surrogate, surrogate_names

__all__ = ["REGISTRY", "Surrogate", "SurrogatePosterior", "make_surrogate", "surrogate_names"]
