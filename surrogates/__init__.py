"""Surrogate models of perturbation outcomes, with uncertainty. Registered by config name."""

from surrogates.base import Surrogate, SurrogatePosterior
from surrogates.registry import RESPONSE_SURROGATES, SURROGATES, make_response_surrogate, make_surrogate

__all__ = ["RESPONSE_SURROGATES", "SURROGATES", "Surrogate", "SurrogatePosterior", "make_response_surrogate",
           "make_surrogate"]
