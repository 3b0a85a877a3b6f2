"""Plugin hooks: one per component kind (docs/design.md §2).

Every hook receives ``register(name, factory)`` and calls it once per component it provides.
Hooks only fill the registry's plain dicts; they are never called in a sampling or training
loop. Built-in components register through these same hooks (see ``DEFAULT_PLUGINS`` in
:mod:`reimagen.core.registry`), third parties through the ``reimagen`` entry-point group::

    # my_plugin.py
    from reimagen import hookimpl

    @hookimpl
    def reimagen_register_guidance(register):
        register("my-guidance", MyGuidance)

    # pyproject.toml
    [project.entry-points.reimagen]
    my_plugin = "my_plugin"
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "reimagen"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, Callable], None]


@hookspec
def reimagen_register_retrievers(register: Register) -> None:
    """Register retrievers: ``factory(**options) -> Retriever`` (text query -> top-k KB ids)."""


@hookspec
def reimagen_register_encoders(register: Register) -> None:
    """Register text encoders: ``factory(**options) -> Encoder`` (texts -> token states)."""


@hookspec
def reimagen_register_presets(register: Register) -> None:
    """Register network presets: ``factory() -> UNetConfig`` (a config, not a network; a
    backend's ``build_model`` makes the network, its ``make_denoiser`` binds it)."""


@hookspec
def reimagen_register_guidance(register: Register) -> None:
    """Register guidance strategies: ``factory(**weights) -> GuidanceStrategy``."""


@hookspec
def reimagen_register_samplers(register: Register) -> None:
    """Register samplers: a plain function with the :class:`~reimagen.core.interfaces.Sampler`
    signature."""


@hookspec
def reimagen_register_backends(register: Register) -> None:
    """Register array backends: ``factory() ->`` a :class:`reimagen.core.backend.ModelBackend`
    (builds, saves and loads networks, binds them into denoisers, trains them)."""


@hookspec
def reimagen_register_sources(register: Register) -> None:
    """Register knowledge-base sources: ``factory(**options) -> KnowledgeBaseSource``."""


@hookspec
def reimagen_register_evaluators(register: Register) -> None:
    """Register evaluators for ``reimagen bench --kb COLLECTION``: ``factory(**options) ->
    evaluate``, where ``evaluate(images, examples) -> {metric name: float}``. ``images``: uint8
    [N, H, W, 3], one generated image per held-out record; ``examples``: the N
    :class:`reimagen.bench.evaluators.HeldOutExample` (key, caption, target and retrieved references,
    uint8 at the same size). Return means over the N examples; each name becomes a column of
    the bench table (built-in: ``pixel``, reimagen.bench.evaluators)."""


# kind -> the hook that fills it. Kinds are API: a renamed kind breaks plugins, so say so in the
# changelog ("denoiser" became "preset" in 0.x: it always held UNetConfig presets, not networks).
HOOKS = {
    "retriever": "reimagen_register_retrievers",
    "encoder": "reimagen_register_encoders",
    "preset": "reimagen_register_presets",
    "guidance": "reimagen_register_guidance",
    "sampler": "reimagen_register_samplers",
    "backend": "reimagen_register_backends",
    "source": "reimagen_register_sources",
    "evaluator": "reimagen_register_evaluators",
}
