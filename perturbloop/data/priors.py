"""Prior screens as features, and the one check that keeps a target screen's scores out of them."""

from __future__ import annotations

from collections.abc import Sequence

from perturbloop.data.registry import REGISTRY, get_spec
from perturbloop.errors import ConfigError


def registry_screens() -> list[str]:
    return [n for n, s in REGISTRY.items() if s.kind == "screen"]


def same_source(a: str, b: str) -> bool:
    """Two screens that are one screen: the same name, or registry screens sharing a source file (e.g. tau
    up / tau down)."""
    if a == b:
        return True
    if a not in REGISTRY or b not in REGISTRY:
        return False
    return bool({f.path for f in get_spec(a).files} & {f.path for f in get_spec(b).files})


def default_prior_screens(target: str, holdout: Sequence[str] = ()) -> list[str]:
    """Every registry screen except the target, the `holdout` screens and anything sharing their source."""
    return [n for n in registry_screens() if not any(same_source(n, t) for t in (target, *holdout))]


def prior_screen_names(target: str, names: Sequence[str] | None, field: str = "design.prior_screens") -> list[str]:
    """The prior screens of a campaign on `target` (default: `default_prior_screens`); naming the target, or a
    screen derived from it, is a ConfigError (`field` says where it was named): it would leak the target's scores."""
    if names is None:
        return default_prior_screens(target)
    leak = [n for n in names if same_source(n, target)]
    if leak:
        raise ConfigError(f"{field}: {', '.join(leak)} is the target screen (or derived from it): "
                          "that would leak its scores")
    return list(names)
