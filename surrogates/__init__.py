"""Surrogate models of perturbation outcomes, with uncertainty. Registered by config name."""

from surrogates.base import Surrogate, SurrogatePosterior
from surrogates.registry import SURROGATES, make_surrogate

__all__ = ["SURROGATES", "Surrogate", "SurrogatePosterior", "make_surrogate"]
