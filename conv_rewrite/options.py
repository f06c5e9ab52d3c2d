"""Options shared by every entry point, validated in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

POLICIES = ("always", "auto", "never")
POLICY_VARIABLE = "CONV_REWRITE_POLICY"


def default_policy() -> str:
    """The policy named by the environment variable CONV_REWRITE_POLICY, read now; "auto" where it is unset or empty.

    A value that is not a policy raises a ValueError naming the variable, at the call that reads it.
    """
    value = os.environ.get(POLICY_VARIABLE, "")
    if not value:
        return "auto"
    if value not in POLICIES:
        raise ValueError(
            f"environment variable {POLICY_VARIABLE}={value!r} is not a policy; valid values: {', '.join(POLICIES)} "
            f"(or unset it for the default, auto)"
        )
    return value


@dataclass(frozen=True)
class Options:
    """How the rewrite behaves.

    policy: "auto" (the default) rewrites where the GEMM form is faster (the CUDA cost model, or a cached
    micro-benchmark on other devices), so it never loses; "always" rewrites every conv that qualifies; "never" only
    reports what it would rewrite. The environment variable CONV_REWRITE_POLICY changes the default (read when Options
    are made without a policy; a bad value raises a ValueError naming the variable).
    """

    policy: str = field(default_factory=default_policy)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; valid policies: {', '.join(POLICIES)}")


def make_options(options: Options | dict[str, Any] | None = None, **kwargs: Any) -> Options:
    """Build Options from an Options object, a dict and/or keywords; unknown names raise ValueError."""
    if options is not None and not isinstance(options, (Options, dict)):
        raise TypeError(f"options must be a conv_rewrite.Options or a dict, got {type(options).__name__}")
    base = dict(options.__dict__ if isinstance(options, Options) else options or {})
    base.update(kwargs)
    valid = [f.name for f in fields(Options)]
    unknown = sorted(set(base) - set(valid))
    if unknown:
        raise ValueError(f"unknown conv_rewrite option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return Options(**base)
