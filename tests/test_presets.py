"""Paper presets are counted, never allocated, and both backends count the same tree."""

import pytest

from reimagen.cli.presets import PAPER_PARAMS, count_params


@pytest.fixture(scope="module")
def table():
    return count_params(["torch", "jax"])


def test_backends_count_identical_parameters(table):
    for name, row in table.items():
        assert row["torch"] == row["jax"], name


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_presets_near_the_papers_sizes(table, name):
    ours, paper = table[name]["torch"], PAPER_PARAMS[name]
    print(f"{name}: {ours / 1e6:.1f}M vs the paper's {paper / 1e6:.0f}M")
    assert 0.8 * paper <= ours <= 1.2 * paper
