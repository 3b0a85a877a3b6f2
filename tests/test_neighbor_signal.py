"""The right-vs-wrong-neighbour ε signal (reimagen.bench.neighbor_signal, docs/design.md §8).

A small KB (Twemoji + OpenMoji of 6 frequent and 4 unseen entities) and a random tiny network:
the example builder must respect the settings and never pair an entity with itself as the
"wrong" one; the error must depend only on the neighbours given (identical rows -> identical
errors; dropped neighbours -> the same error whatever rows are passed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reimagen.backends.torch.unet import build_unet
from reimagen.bench import neighbor_signal as ns
from reimagen.core import registry
from reimagen.core.unet_config import PRESETS
from reimagen.kb import splits as sp
from reimagen.kb.builder import build_from_source
from reimagen.kb.emoji_source import EmojiSource


@pytest.fixture(scope="module")
def split():
    return sp.load_split()


@pytest.fixture(scope="module")
def kb(tmp_path_factory, split):
    names = [*split.seen[:6], *split.unseen[:4]]
    source = EmojiSource(names=names, artists=["twemoji", "openmoji"], size=72, processes=1)
    return build_from_source(
        source, tmp_path_factory.mktemp("kb") / "kb", resolution=64, progress=False
    )


def test_settings_choose_the_artists(kb, split):
    rng = np.random.default_rng(0)
    for entity in split.unseen[:4]:
        same = ns.pick_neighbors(rng, kb, entity, 2, "same-style")
        cross = ns.pick_neighbors(rng, kb, entity, 2, "cross-style")
        assert kb.records[same[0]].source == "twemoji"
        assert all(kb.records[r].source != "twemoji" for r in cross)
        assert all(kb.records[r].entity == entity for r in [*same, *cross])


def test_wrong_neighbours_are_another_entity(kb, split):
    rng = np.random.default_rng(1)
    targets, prompts, right, wrong = ns.make_examples(
        rng, kb, split, "unseen", 12, 2, "cross-style"
    )
    assert targets.shape == (12, 32, 32, 3) and -1 <= targets.min() and targets.max() <= 1
    assert len(prompts) == 12
    for r, w in zip(right, wrong):
        assert len({kb.records[x].entity for x in r}) == 1
        assert kb.records[r[0]].entity != kb.records[w[0]].entity


def test_errors_depend_only_on_the_neighbours_given(kb, split):
    config = PRESETS["tiny"].replace(
        image_size=32,
        self_attn_resolutions=(16,),
        cross_attn_resolutions=(16,),
        neighbor_attn_resolutions=(16,),
    )
    model = build_unet(config, seed=0).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # zero-initialised output projections would hide the neighbours
        for param in model.parameters():
            if not param.any():
                param.normal_(0.0, 0.05)
    encoder = registry.get("encoder", "hash")()
    rng = np.random.default_rng(2)
    targets, prompts, right, wrong = ns.make_examples(
        rng, kb, split, "frequent", 4, 2, "same-style"
    )
    first = ns.epsilon_errors(
        model, encoder, kb, targets, prompts, {"a": right, "b": right.copy(), "none": None}
    )
    second = ns.epsilon_errors(model, encoder, kb, targets, prompts, {"a": wrong, "none": None})
    assert first["a"] == first["b"]  # the same rows, the same error
    assert first["none"] == second["none"]  # dropped neighbours: whatever rows are passed
    assert first["a"] != second["a"]  # a network with live neighbour paths reads them


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--tiers", "frequent,common"],
            "--tiers: unknown ['common']; allowed: frequent, rare, unseen",
        ),
        (["--n", "0"], "--n and --k must be >= 1, got --n 0 --k 2"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_loading(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        ns.main(
            [
                *argv,
                "--weights",
                str(tmp_path / "missing.safetensors"),
                "--json",
                str(tmp_path / "rows.json"),
            ]
        )
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rows.json").exists()
