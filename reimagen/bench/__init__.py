"""EntityBench (docs/design.md §8; paper §4.2-4.3, Table 2, Fig. 5, 7, 8, App. E).

* :mod:`reimagen.bench.evaluator` - the judge: a small CNN that names the emoji in a scene,
  trained on every entity's Twemoji drawing in random scenes, shipped in reimagen/assets/evaluator
  (its network: ``evaluator_network``; drawings and scenes: ``scene_composer``; training:
  ``evaluator_training``);
* :mod:`reimagen.bench.prompt_sets` - prompt sets (the seeded default, or a JSONL file);
* :mod:`reimagen.bench.scoring` - entity faithfulness, text alignment, faithful = both;
* :mod:`reimagen.bench.entitybench` - rows and the runner that generates and scores them;
* :mod:`reimagen.bench.tables`, :mod:`reimagen.bench.significance` - markdown tables, intervals;
* :mod:`reimagen.bench.session` - what ``bench`` and ``ablate`` share: loading the networks,
  retrievers and judge, a runner over them, the results header;
* :mod:`reimagen.bench.bench_table` - the rows and markdown of ``reimagen bench``;
* :mod:`reimagen.bench.result_files` - grids and the staged set of result files;
* :mod:`reimagen.bench.ablate`, :mod:`reimagen.bench.ablate_plots` - the K / η / guidance /
  sampler sweeps and their plots.

The CLI front ends are ``reimagen bench`` and ``reimagen ablate``. Importing this package loads
no framework (torch is imported when an evaluator is loaded or trained).
"""

from reimagen.bench.ablate import FULL, QUICK, Sweep, sweep_rows
from reimagen.bench.ablate_plots import plot_eta, plot_k
from reimagen.bench.entitybench import CEILING, NO_RETRIEVAL, BenchRunner, Row, RowResult
from reimagen.bench.evaluator import Evaluator, EvaluatorError
from reimagen.bench.evaluator_network import EvaluatorConfig
from reimagen.bench.evaluator_training import measure_accuracy, train_evaluator
from reimagen.bench.prompt_sets import (
    TIERS,
    BenchPrompt,
    PromptFileError,
    default_prompts,
    read_prompts,
    write_prompts,
)
from reimagen.bench.scene_composer import SceneComposer, target_drawings
from reimagen.bench.scoring import METRICS, score_images, summarise, target_images

__all__ = [
    "CEILING",
    "FULL",
    "METRICS",
    "NO_RETRIEVAL",
    "QUICK",
    "TIERS",
    "BenchPrompt",
    "BenchRunner",
    "Evaluator",
    "EvaluatorConfig",
    "EvaluatorError",
    "PromptFileError",
    "Row",
    "RowResult",
    "SceneComposer",
    "Sweep",
    "default_prompts",
    "measure_accuracy",
    "plot_eta",
    "plot_k",
    "read_prompts",
    "score_images",
    "summarise",
    "sweep_rows",
    "target_drawings",
    "target_images",
    "train_evaluator",
    "write_prompts",
]
