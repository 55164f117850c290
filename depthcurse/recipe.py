"""Study recipes: which models `depthcurse reproduce` trains and how it analyses them.

A study recipe is a TOML file with these tables and keys:

- ``name``, ``description``: labels for the report.
- ``seeds``: list of training seeds (at least 2), each run once per variant.
- ``[train]``: TrainConfig settings shared by every run. Its format is that of
  a training recipe for ``depthcurse train --recipe`` (top-level TrainConfig
  keys, model overrides in ``[train.model]``), so the ``[train]`` table of a
  study recipe saved on its own is a training recipe.
- ``variants``: either a list of built-in variant names (``none``,
  ``midas``, ``lidas``, ``ln-scaling``) or ``[variants.NAME]`` tables of
  TrainConfig overrides applied on top of ``[train]``. ``baseline`` names the
  full-depth variant the grown ones are compared with (default ``none``).
- ``[analysis]``: `SuiteOptions` for the final checkpoints, plus ``only``
  (suite analyses to run, default all) and ``stage_analyses`` (the
  residual-stream analyses run on every growth-stage checkpoint).
- ``[public]``: the public model (``model``, ``label``, ``enabled``) and its
  `SuiteOptions` in ``[public.analysis]`` (also with an optional ``only``).
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from depthcurse.config import ConfigError
from depthcurse.suite import ANALYSES, STREAM_ANALYSES, SuiteOptions, check_analyses

# Built-in variants as TrainConfig overrides.
BUILTIN_VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"growth": "none"},
    "midas": {"growth": "midas"},
    "lidas": {"growth": "lidas"},
    "ln-scaling": {"growth": "none", "model": {"ln_scaling": True}},
}
DEFAULT_STAGE_ANALYSES = ("residual_norms", "contributions", "logit_lens")
PUBLIC_LABEL = "SmolLM2-135M-Instruct (Q4_1, dequantized)"

TOP_KEYS = ("name", "description", "seeds", "baseline", "train", "variants", "analysis", "public")
ANALYSIS_KEYS = ("only", "stage_analyses")
PUBLIC_KEYS = ("enabled", "model", "label", "analysis")


@dataclass
class PublicModel:
    """The public model the study analyses next to its own runs."""

    source: str = "smollm2-135m"
    label: str = PUBLIC_LABEL
    options: SuiteOptions = field(default_factory=lambda: SuiteOptions(block_size=2))
    only: tuple[str, ...] = ANALYSES


@dataclass
class StudyRecipe:
    """A validated study recipe; see the module docstring for the file format."""

    name: str
    seeds: list[int]
    train: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    options: SuiteOptions
    only: tuple[str, ...] = ANALYSES
    stage_analyses: tuple[str, ...] = DEFAULT_STAGE_ANALYSES
    baseline: str = "none"
    public: PublicModel | None = field(default_factory=PublicModel)
    description: str = ""
    path: Path | None = None

    def train_config(self, variant: str, seed: int) -> Any:
        """Return the TrainConfig of one run: shared settings, variant overrides, seed."""
        from depthcurse.train_config import TrainConfig

        if variant not in self.variants:
            raise ConfigError(f"unknown variant {variant!r}; the recipe has {', '.join(self.variants)}")
        values = merge_settings(self.train, self.variants[variant])
        values["seed"] = seed
        try:
            return TrainConfig.from_dict(values)
        except ConfigError as err:
            raise ConfigError(f"variant {variant!r}: {err}") from None

    def with_seeds(self, n: int) -> StudyRecipe:
        """Return a copy that uses the first `n` seeds (0..n-1 beyond the recipe's list)."""
        if n < 1:
            raise ConfigError(f"--seeds must be at least 1, got {n}")
        seeds = list(self.seeds[:n])
        extra = (s for s in range(10_000) if s not in seeds)
        while len(seeds) < n:
            seeds.append(next(extra))
        return StudyRecipe(**{**self.__dict__, "seeds": seeds})

    def block_size(self) -> int:
        """Return the growth block size shared by the runs (the resolved TrainConfig value)."""
        sizes = {self.train_config(v, self.seeds[0]).resolved().block_size for v in self.variants}
        if len(sizes) > 1:
            raise ConfigError(f"variants use different block sizes {sorted(sizes)}; use one block_size")
        return sizes.pop()


def merge_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return `base` updated by `overrides`; the ``model`` tables are merged key by key."""
    values = copy.deepcopy(base)
    for key, value in overrides.items():
        if key == "model":
            if not isinstance(value, dict):
                raise ConfigError(f"model must be a table of model settings, got {value!r}")
            values["model"] = {**values.get("model", {}), **value}
        else:
            values[key] = copy.deepcopy(value)
    return values


def _unknown(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in {where}; allowed keys: {', '.join(allowed)}"
        )


def _table(values: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    table = values.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}{key} must be a table, got {table!r}")
    return dict(table)


def _suite_options(table: dict[str, Any], where: str, defaults: dict[str, Any]) -> SuiteOptions:
    settings = {k: v for k, v in table.items() if k not in ANALYSIS_KEYS}
    try:
        return SuiteOptions.from_dict({**defaults, **settings})
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"[{where}]: {err}") from None


def _analysis_names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of analysis names, got {value!r}")
    try:
        return check_analyses(value)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def parse_recipe(values: dict[str, Any], path: Path | None = None) -> StudyRecipe:
    """Validate the contents of a study recipe and return it; errors name the bad key or value."""
    _unknown(values, TOP_KEYS, "the study recipe")
    name = values.get("name", path.stem if path else "study")

    seeds = values.get("seeds", [0, 1])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ConfigError(f"seeds must be a list of non-negative integers, got {seeds!r}")
    if len(seeds) < 2:
        raise ConfigError(
            f"seeds must name at least 2 seeds, got {seeds!r}: single-layer effects vary several-fold "
            f"between seeds, so a finding needs an interval across seeds"
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds!r}")

    train = _table(values, "train", "")
    for key in ("seed", "growth"):
        if key in train:
            raise ConfigError(
                f"[train] sets {key!r}, which the study chooses per run; set growth in a variant "
                f"and seeds in the top-level seeds list"
            )

    raw_variants = values.get("variants", list(BUILTIN_VARIANTS))
    if isinstance(raw_variants, list):
        unknown = [v for v in raw_variants if v not in BUILTIN_VARIANTS]
        if unknown:
            raise ConfigError(
                f"unknown variant {unknown[0]!r}; built-in variants are "
                f"{', '.join(BUILTIN_VARIANTS)}, or define it in a [variants.NAME] table"
            )
        variants = {v: copy.deepcopy(BUILTIN_VARIANTS[v]) for v in raw_variants}
    elif isinstance(raw_variants, dict):
        variants = {}
        for variant, overrides in raw_variants.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"[variants.{variant}] must be a table of TrainConfig overrides")
            variants[variant] = copy.deepcopy(overrides)
    else:
        raise ConfigError(f"variants must be a list of names or tables, got {raw_variants!r}")
    if not variants:
        raise ConfigError("the recipe names no variants; list at least a baseline and one grown one")

    baseline = values.get("baseline", "none")
    if baseline not in variants:
        raise ConfigError(
            f"baseline {baseline!r} is not one of the variants ({', '.join(variants)}); "
            f"set baseline to the full-depth variant"
        )

    analysis = _table(values, "analysis", "")
    only = _analysis_names(analysis.get("only", list(ANALYSES)), "[analysis] only")
    stage = analysis.get("stage_analyses", list(DEFAULT_STAGE_ANALYSES))
    stage_names = _analysis_names(stage, "[analysis] stage_analyses")
    outside = [n for n in stage_names if n not in STREAM_ANALYSES]
    if outside:
        raise ConfigError(
            f"stage_analyses may name residual-stream analyses only ({', '.join(STREAM_ANALYSES)}), "
            f"got {outside[0]!r}"
        )

    public = _public(_table(values, "public", ""))
    recipe = StudyRecipe(
        name=str(name),
        description=str(values.get("description", "")),
        seeds=list(seeds),
        train=train,
        variants=variants,
        options=SuiteOptions(),  # replaced below, once the block size is known
        only=only,
        stage_analyses=stage_names,
        baseline=baseline,
        public=public,
        path=path,
    )
    for variant in variants:  # every run's config must validate before any training starts
        check_variant(recipe, variant)
    if recipe.train_config(baseline, seeds[0]).growth != "none":
        raise ConfigError(f"baseline {baseline!r} must train at full depth (growth = \"none\")")
    recipe.options = _suite_options(analysis, "analysis", {"block_size": recipe.block_size()})
    return recipe


def check_variant(recipe: StudyRecipe, variant: str) -> None:
    """Raise ConfigError naming `variant` if its config or stage plan is invalid."""
    from depthcurse.growth import GrowthError
    from depthcurse.train import make_stage_plan

    cfg = recipe.train_config(variant, recipe.seeds[0])
    try:
        resolved = cfg.resolved()
        make_stage_plan(resolved, resolved.model_config())
    except (ConfigError, GrowthError, ValueError) as err:
        raise ConfigError(f"variant {variant!r}: {err}") from None


def _public(table: dict[str, Any]) -> PublicModel | None:
    _unknown(table, PUBLIC_KEYS, "[public]")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"[public] enabled must be true or false, got {enabled!r}")
    if not enabled:
        return None
    options_table = _table(table, "analysis", "[public].")
    _unknown(
        options_table,
        (*ANALYSIS_KEYS[:1], *SuiteOptions.__dataclass_fields__),
        "[public.analysis]",
    )
    only = _analysis_names(options_table.get("only", list(ANALYSES)), "[public.analysis] only")
    return PublicModel(
        source=str(table.get("model", "smollm2-135m")),
        label=str(table.get("label", PUBLIC_LABEL)),
        options=_suite_options(options_table, "public.analysis", {"block_size": 2}),
        only=only,
    )


def load_study_recipe(path: str | Path) -> StudyRecipe:
    """Read and validate a study recipe file (see the module docstring for its format)."""
    path = Path(path)
    # A relative path that is missing here may name a shipped recipe: look in the
    # repository that contains this package (an editable or source install).
    repository = Path(__file__).resolve().parent.parent
    if not path.is_file() and not path.is_absolute() and (repository / path).is_file():
        path = repository / path
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"recipe file {path} not found in the current folder or in {repository}; "
            f"pass --recipe with the path of a study recipe (shipped ones are in {repository / 'analyses'})"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"recipe file {path} is not valid TOML: {err}") from err
    try:
        return parse_recipe(values, path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
