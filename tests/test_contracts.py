"""Honest contracts (issue 18): every interface is an ABC whose required methods are abstract, a
subclass that misses one cannot be instantiated, and the built-in classes subclass their
interface directly (one level) and instantiate. Framework-free: no torch or JAX import here."""

import abc
import inspect

import pytest

from reimagen.core import interfaces, registry
from reimagen.core.backend import ModelBackend
from reimagen.core.unet_config import PRESETS, UNetConfig
from reimagen.training.loop import TrainLoop

# interface -> the methods a concrete subclass must implement.
REQUIRED = {
    interfaces.Encoder: {"encode"},
    interfaces.Retriever: {"fit", "search", "save", "load"},
    interfaces.Denoiser: {"__call__", "asarray", "to_numpy"},
    interfaces.GuidanceStrategy: {"variants", "combine"},
    interfaces.Cascade: {"generate"},
    ModelBackend: {"build_model", "load_model", "save_model", "param_count", "state_dict"},
    TrainLoop: {"train_step", "_host_arrays", "_load_state"},
}


@pytest.mark.parametrize("interface", list(REQUIRED), ids=lambda c: c.__name__)
def test_every_interface_declares_its_required_methods_abstract(interface):
    assert issubclass(interface, abc.ABC)
    assert set(interface.__abstractmethods__) == REQUIRED[interface]
    for name in REQUIRED[interface]:
        assert inspect.getdoc(getattr(interface, name)) or name == "__call__", name


@pytest.mark.parametrize("interface", list(REQUIRED), ids=lambda c: c.__name__)
def test_a_subclass_missing_a_method_cannot_be_instantiated(interface):
    attributes = {"name": "x", "_denoiser_class": object, "_trainer_class": object}
    incomplete = type(f"Incomplete{interface.__name__}", (interface,), attributes)
    with pytest.raises(TypeError, match="abstract"):
        incomplete()


def test_a_backend_without_its_class_attributes_is_refused_at_definition():
    with pytest.raises(TypeError, match="must set name, _denoiser_class, _trainer_class"):
        type("Nameless", (ModelBackend,), {})


def test_guidance_strategies_instantiate_and_are_strategies():
    for name in registry.names("guidance"):
        strategy = registry.get("guidance", name)()
        assert isinstance(strategy, interfaces.GuidanceStrategy), name


def test_encoder_and_retriever_built_ins_instantiate():
    encoder = registry.get("encoder", "hash")()
    assert isinstance(encoder, interfaces.Encoder)
    for name in ("bm25", "tfidf", "none"):
        assert isinstance(registry.get("retriever", name)(), interfaces.Retriever), name


def test_preset_kind_returns_configs_and_denoiser_kind_is_gone():
    assert "denoiser" not in registry.kinds()
    assert registry.names("preset") == sorted(PRESETS)
    for name in registry.names("preset"):
        config = registry.get("preset", name)()
        assert isinstance(config, UNetConfig) and config == PRESETS[name]


def test_dead_names_are_gone():
    from reimagen.core import unet_config
    from reimagen.diffusion import samplers

    assert not hasattr(interfaces, "Factory")
    assert not hasattr(samplers, "get_sampler")
    assert not hasattr(unet_config, "preset")


def test_a_plugin_on_the_old_denoisers_hook_is_refused_by_name():
    import pluggy

    from reimagen import hookimpl

    class OldPlugin:
        @hookimpl
        def reimagen_register_denoisers(self, register):
            register("mine", UNetConfig)

    try:
        with pytest.raises(pluggy.PluginValidationError, match="reimagen_register_denoisers"):
            registry.reset(extra_plugins=(OldPlugin(),), autoload=False)
    finally:
        registry.reset()
