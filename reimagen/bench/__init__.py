"""EntityBench (DESIGN §8; paper §4.2-4.3, Table 2, Fig. 5, 7, 8, App. E).

* :mod:`reimagen.bench.evaluator` - the judge: a small CNN that names the emoji in a scene,
  trained on every entity's Twemoji drawing in random scenes, shipped in reimagen/assets/evaluator;
* :mod:`reimagen.bench.entitybench` - prompt sets (the seeded default, or a JSONL file),
  scoring (entity faithfulness, text alignment, faithful = both), rows and markdown tables;
* :mod:`reimagen.bench.ablate` - the K / η / guidance / sampler sweeps and their plots.

The CLI front ends are ``reimagen bench`` and ``reimagen ablate``. Importing this package loads
no framework (torch is imported when an evaluator is loaded or trained).
"""

from reimagen.bench.ablate import FULL, QUICK, Sweep, plot_eta, plot_k, sweep_rows
from reimagen.bench.entitybench import (
    CEILING,
    METRICS,
    NO_RETRIEVAL,
    TIERS,
    BenchPrompt,
    BenchRunner,
    PromptFileError,
    Row,
    RowResult,
    default_prompts,
    read_prompts,
    score_images,
    summarise,
    target_images,
    write_prompts,
)
from reimagen.bench.evaluator import (
    Evaluator,
    EvaluatorConfig,
    EvaluatorError,
    SceneComposer,
    measure_accuracy,
    target_drawings,
    train_evaluator,
)

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
