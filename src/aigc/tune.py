"""Hyper-parameter search with Optuna: TPE sampling, pruning from the trainer's validation losses.

A search is a base recipe (the JSON ``--config`` that ``aigc train`` takes) plus a *search space*
file, YAML or JSON, that maps a config field to a distribution::

    train.lr:           {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
    train.warmup_steps: {type: int, low: 0, high: 40}
    model.width:        {type: categorical, choices: [16, 32, 48]}

``type`` is ``float`` or ``int`` (with ``low``, ``high``, optional ``log`` and ``step``) or
``categorical`` (with ``choices``: numbers, strings, booleans or null). A field is
``model.NAME`` (the family's config) or ``train.NAME`` (:class:`aigc.config.TrainConfig`).

Every trial trains in this process with the shared :class:`aigc.train.Trainer` (its own run
folder under ``out/trial-NNNNN``) and reports each validation loss to Optuna; the pruner (median
by default, or Hyperband) stops trials that fall behind. The objective is the trial's best
validation loss (the EMA model's when the recipe keeps an EMA). The study lives in an RDB storage:
SQLite by default (``sqlite:///runs/tune/study.db``), or PostgreSQL
(``postgresql+psycopg://user@host/db``), where several processes or machines running the same
``aigc tune`` command share one study. :func:`write_report` draws the search (matplotlib) into a
self-contained HTML page and writes the best trial as a ready ``--config`` file.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigc.config import TrainConfig, config_from_dict, config_to_dict
from aigc.errors import AigcError, ConfigError

DEFAULT_STORAGE = "sqlite:///runs/tune/study.db"
PRUNERS = ("median", "hyperband", "none")
_SPEC_KEYS = {"float": {"type", "low", "high", "log", "step"},
              "int": {"type", "low", "high", "log", "step"},
              "categorical": {"type", "choices"}}


@dataclass(frozen=True)
class Param:
    """One searched field: ``section`` is ``model`` or ``train``; ``spec`` as in the file."""

    name: str  # "train.lr"
    section: str
    field: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_space(raw: Any, family_config: type, where: str) -> list[Param]:
    """Check a search-space mapping and return its parameters (errors name the file and key)."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a mapping of config fields to distributions, e.g. "
                          "{\"train.lr\": {\"type\": \"float\", \"low\": 1e-4, \"high\": 1e-2, "
                          f"\"log\": true}}}}, got {type(raw).__name__ if raw else 'nothing'}")
    fields = {"model": {f.name for f in dataclasses.fields(family_config)},
              "train": {f.name for f in dataclasses.fields(TrainConfig)}}
    params = []
    for name, spec in raw.items():
        section, _, field = str(name).partition(".")
        if section not in fields or not field:
            raise ConfigError(f"{where}: parameter {name!r} must be 'model.FIELD' or 'train.FIELD'")
        if field not in fields[section]:
            raise ConfigError(f"{where}: {name!r}: {field!r} is not a field of the {section} "
                              f"config; known: {', '.join(sorted(fields[section]))}")
        if not isinstance(spec, dict) or spec.get("type") not in _SPEC_KEYS:
            raise ConfigError(f"{where}: {name!r} needs a mapping with type float, int or "
                              f"categorical, got {spec!r}")
        kind = spec["type"]
        unknown = set(spec) - _SPEC_KEYS[kind]
        if unknown:
            raise ConfigError(f"{where}: {name!r}: unknown key(s) {sorted(unknown)} for type "
                              f"{kind}; allowed: {sorted(_SPEC_KEYS[kind])}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices or not all(
                    c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise ConfigError(f"{where}: {name!r}: choices must be a non-empty list of "
                                  f"numbers, strings, booleans or null, got {choices!r}")
            params.append(Param(name, section, field, kind, choices=tuple(choices)))
            continue
        low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), \
            spec.get("step")
        if not (_is_number(low) and _is_number(high)) or low >= high:
            raise ConfigError(f"{where}: {name!r}: low and high must be numbers with low < high, "
                              f"got low={low!r}, high={high!r}")
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"{where}: {name!r}: an int parameter needs integer low and high, "
                              f"got low={low!r}, high={high!r}")
        if not isinstance(log, bool):
            raise ConfigError(f"{where}: {name!r}: log must be true or false, got {log!r}")
        if log and low <= 0:
            raise ConfigError(f"{where}: {name!r}: a log-scale range needs low > 0, got {low!r}")
        if step is not None and (not _is_number(step) or step <= 0 or log):
            raise ConfigError(f"{where}: {name!r}: step must be a number > 0 and cannot go with "
                              f"log, got step={step!r}, log={log}")
        params.append(Param(name, section, field, kind, low=low, high=high, log=log, step=step))
    return params


def load_space(path: str | Path, family_config: type) -> list[Param]:
    """Read a search-space file (``.yaml``/``.yml`` or ``.json``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"search space file not found: {path}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"search space file {path} is not valid YAML: {exc}") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"search space file {path} is not valid JSON: {exc}") from None
    return parse_space(raw, family_config, str(path))


def suggest(trial, params: list[Param]) -> dict[str, dict[str, Any]]:
    """The trial's values as ``{"model": {...}, "train": {...}}`` overrides."""
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for p in params:
        if p.type == "categorical":
            value = trial.suggest_categorical(p.name, list(p.choices))
        elif p.type == "int":
            value = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log,
                                      step=int(p.step or 1))
        else:
            value = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log,
                                        step=p.step)
        out[p.section][p.field] = value
    return out


def open_storage(url: str):
    """Optuna's RDB storage for ``url``. On PostgreSQL the first use creates optuna's tables
    and enum types; two processes starting one study together would both try (and one fail on
    ``CREATE TYPE``), so the creation runs under a session advisory lock."""
    import optuna

    if not url.startswith("postgresql"):
        return optuna.storages.RDBStorage(url)
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK})
            try:
                return optuna.storages.RDBStorage(url)
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"),
                             {"k": _SCHEMA_LOCK})
    finally:
        engine.dispose()


# any fixed 64-bit key: the advisory lock that serialises optuna's schema creation
_SCHEMA_LOCK = 0x41494743_54554E45  # "AIGCTUNE"


def check_storage(url: str) -> str:
    """Accept ``sqlite:///PATH`` (its folder is created) or a PostgreSQL SQLAlchemy URL."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return url
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://")):
        return url
    raise ConfigError(f"--storage must be sqlite:///PATH or postgresql+psycopg://USER@HOST/DB, "
                      f"got {url!r}")


def make_pruner(name: str, *, min_resource: int = 1, max_resource: int | str = "auto"):
    import optuna

    if name == "median":
        # 3 finished trials before judging, and no judgement on a trial's first report.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


@dataclass
class TuneResult:
    study_name: str
    storage: str
    trials: int  # trials of this process
    complete: int  # in the whole study
    pruned: int
    failed: int
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Path | None
    report: Path | None
    seconds: float


class _Objective:
    """Trains one trial; the data is loaded once per process."""

    def __init__(self, family: str, base: dict[str, Any], params: list[Param], out: Path,
                 log=print):
        from aigc.models import family_module

        self.family, self.base, self.params, self.out, self.log = family, base, params, out, log
        self.module = family_module(family)
        self.data = base["data"]
        self._loaded = self.module.training_data(self.data)

    def __call__(self, trial) -> float:
        import optuna

        from aigc.models import init_model
        from aigc.train import Trainer

        values = suggest(trial, self.params)
        train_data, val_data, meta, model_defaults = self._loaded
        module = self.module
        # The same steps as `aigc train` (aigc.cli.train.run) builds a run with.
        model_cfg = config_from_dict(
            module.CONFIG_CLASS,
            {**model_defaults, **self.base.get("model", {}), **values["model"]},
            where=f"trial {trial.number} model config")
        if hasattr(module, "bind_data"):
            model_cfg, train_data, val_data, meta = module.bind_data(model_cfg, train_data,
                                                                     val_data, meta)
        if val_data is None:
            raise ConfigError(f"{self.data} has no validation split; tuning needs one")
        train_cfg = config_from_dict(
            TrainConfig, {**getattr(module, "TRAIN_DEFAULTS", {}), "sample_every": 0,
                          **self.base.get("train", {}), **values["train"]},
            where=f"trial {trial.number} training config")
        model = init_model(module.MODEL_CLASS, model_cfg, seed=train_cfg.seed)
        run_dir = self.out / f"trial-{trial.number:05d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("model", config_to_dict(model_cfg))
        trial.set_user_attr("train", config_to_dict(train_cfg))

        def report(step: int, val: float) -> bool:
            trial.report(val, step)
            return trial.should_prune()

        result = Trainer(model, family=self.family, model_config=config_to_dict(model_cfg),
                         train_data=train_data, val_data=val_data, cfg=train_cfg,
                         run_dir=run_dir, meta={**meta, "data": self.data}, progress=False,
                         on_validation=report).fit()
        trial.set_user_attr("steps", result.step)
        trial.set_user_attr("seconds", round(result.seconds, 2))
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        if result.stopped == "pruned":
            self.log(f"trial {trial.number}: pruned at step {result.step} "
                     f"(val {result.best_val_loss:.4g}); {shown}")
            raise optuna.TrialPruned()
        self.log(f"trial {trial.number}: val {result.best_val_loss:.4g} after {result.step} "
                 f"steps in {result.seconds:.1f}s; {shown}")
        return float(result.best_val_loss)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_study(family: str, base: dict[str, Any], params: list[Param], *, trials: int,
              storage: str = DEFAULT_STORAGE, study_name: str | None = None,
              out: str | Path | None = None, pruner: str = "median", seed: int = 0,
              timeout_s: float | None = None, report: bool = True, log=print) -> TuneResult:
    """Run ``trials`` trials of a study (created, or joined when it exists in ``storage``).

    Args:
        family: model family (``aigc train`` name).
        base: the base recipe ``{"data", "model", "train"}`` (``data`` required).
        params: the search space (:func:`load_space`).
        trials: trials this process runs (others may run more on the same study).
        storage: an SQLAlchemy URL (:func:`check_storage`).
        study_name: default ``FAMILY-DATA``.
        out: where trial run folders, the report and the best config go
            (default ``runs/tune/STUDY``).
        pruner: ``median``, ``hyperband`` or ``none``.
        seed: the TPE sampler's seed (give each process sharing a study its own).
        timeout_s: stop starting trials after this many seconds.
    """
    import optuna

    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"--trials must be an integer >= 1, got {trials!r}")
    if not base.get("data"):
        raise ConfigError("tuning needs a dataset: --data or 'data' in the --config file")
    storage = check_storage(storage)
    name = study_name or f"{family}-{base['data']}".replace("/", "_").replace(":", "-")
    out = Path(out or Path("runs/tune") / name)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from aigc.models import family_module

    max_steps = int({"steps": TrainConfig().steps,
                     **getattr(family_module(family), "TRAIN_DEFAULTS", {}),
                     **base.get("train", {})}["steps"])
    study = optuna.create_study(
        study_name=name, storage=open_storage(storage), direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(pruner, max_resource=max_steps))
    study.set_user_attr("family", family)
    study.set_user_attr("base", base)
    objective = _Objective(family, base, params, out, log=log)
    t0 = time.perf_counter()
    # A trial whose settings the model refuses (heads that do not divide the width) or whose
    # loss diverges is recorded as failed; the search goes on.
    study.optimize(objective, n_trials=trials, timeout=timeout_s, catch=(AigcError,),
                   gc_after_trial=True)
    seconds = time.perf_counter() - t0
    states = [t.state for t in study.trials]
    S = optuna.trial.TrialState
    complete = [t for t in study.trials if t.state == S.COMPLETE]
    best_config = None
    if complete:
        best_config = write_best_config(study, out / "best-config.json")
    page = write_report(study, out / "report.html") if report else None
    return TuneResult(
        study_name=name, storage=storage, trials=trials, complete=len(complete),
        pruned=states.count(S.PRUNED), failed=states.count(S.FAIL),
        best_value=study.best_value if complete else None,
        best_params=study.best_params if complete else {}, best_config=best_config,
        report=page, seconds=seconds)


def best_recipe(study) -> dict[str, Any]:
    """The best trial as an ``aigc train --config`` recipe (its full model and train configs)."""
    best = study.best_trial
    base = study.user_attrs.get("base", {})
    return {"family": study.user_attrs.get("family"), "data": base.get("data"),
            "model": best.user_attrs.get("model", {}), "train": best.user_attrs.get("train", {})}


def write_best_config(study, path: str | Path) -> Path:
    path = Path(path)
    recipe = {k: v for k, v in best_recipe(study).items() if v is not None}
    path.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ report


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def importances(study) -> tuple[dict[str, float], str]:
    """fANOVA parameter importances of the completed trials, or ``({}, why not)``."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 3:
        return {}, f"{len(complete)} completed trial(s): importances need at least 3"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), \
            "fANOVA (optuna's FanovaImportanceEvaluator, seed 0) over completed trials"
    except (RuntimeError, ValueError) as exc:  # e.g. every trial took the same values
        return {}, f"not computed: {exc}"


def write_report(study, path: str | Path) -> Path:
    """A self-contained HTML page: the history of the objective, each trial's validation curve
    (pruned ones dashed), parameter importances, the trial table and the best recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import optuna

    S = optuna.trial.TrialState
    trials = list(study.trials)
    complete = [t for t in trials if t.state == S.COMPLETE]
    path = Path(path)
    parts = [f"<h1>Hyper-parameter search: {html.escape(study.study_name)}</h1>",
             f"<p>{len(trials)} trials: {len(complete)} complete, "
             f"{sum(t.state == S.PRUNED for t in trials)} pruned, "
             f"{sum(t.state == S.FAIL for t in trials)} failed, "
             f"{sum(t.state == S.RUNNING for t in trials)} running. Objective: best validation "
             "loss of the trial (lower is better). Sampler TPE; pruner "
             f"{html.escape(type(study.pruner).__name__)}.</p>"]

    fig, ax = plt.subplots(figsize=(7, 3.2))
    if complete:
        xs = [t.number for t in complete]
        ys = [t.value for t in complete]
        ax.scatter(xs, ys, s=14, label="complete")
        best, running = [], math.inf
        for t in sorted(complete, key=lambda t: t.number):
            running = min(running, t.value)
            best.append((t.number, running))
        ax.step(*zip(*best), where="post", color="C3", label="best so far")
    pruned = [t for t in trials if t.state == S.PRUNED and t.intermediate_values]
    if pruned:
        ax.scatter([t.number for t in pruned],
                   [min(t.intermediate_values.values()) for t in pruned], s=14, marker="x",
                   color="0.5", label="pruned (best reported)")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("validation loss")
    ax.legend(fontsize=8)
    parts.append(f'<h2>History</h2><img alt="history" src="{_png(fig)}">')

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for t in trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            ax.plot(steps, [t.intermediate_values[s] for s in steps], lw=1,
                    ls="--" if t.state == S.PRUNED else "-",
                    color="0.6" if t.state == S.PRUNED else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    parts.append(f'<h2>Validation curves (pruned dashed)</h2><img alt="curves" src="{_png(fig)}">')

    imp, how = importances(study)
    parts.append(f"<h2>Parameter importances</h2><p>{html.escape(how)}</p>")
    if imp:
        fig, ax = plt.subplots(figsize=(6, 0.4 + 0.35 * len(imp)))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names])
        ax.set_xlabel("importance")
        parts.append(f'<img alt="importances" src="{_png(fig)}">')
        parts.append("<table><tr><th>parameter</th><th>importance</th></tr>" + "".join(
            f"<tr><td>{html.escape(n)}</td><td>{v:.3f}</td></tr>" for n, v in imp.items())
            + "</table>")

    if complete:
        recipe = best_recipe(study)
        parts.append(f"<h2>Best trial: {study.best_trial.number}, validation loss "
                     f"{study.best_value:.5g}</h2><p>As a ready recipe (best-config.json beside "
                     "this page; <code>aigc train FAMILY --config best-config.json</code>):</p>"
                     f"<pre>{html.escape(json.dumps(recipe, indent=2))}</pre>")

    names = sorted({k for t in trials for k in t.params})
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for t in trials:
        value = f"{t.value:.5g}" if t.value is not None else ""
        cells = "".join(f"<td>{html.escape(_fmt(t.params.get(n, '')))}</td>" for n in names)
        rows.append(f"<tr><td>{t.number}</td><td>{t.state.name.lower()}</td><td>{value}</td>"
                    f"<td>{t.user_attrs.get('steps', '')}</td>"
                    f"<td>{t.user_attrs.get('seconds', '')}</td>{cells}</tr>")
    parts.append("<h2>Trials</h2><table><tr><th>#</th><th>state</th><th>val loss</th>"
                 f"<th>steps</th><th>seconds</th>{head}</tr>{''.join(rows)}</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
             "collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>aigc tune "
                    f"{html.escape(study.study_name)}</title><style>{style}</style></head><body>"
                    + "\n".join(parts) + "</body></html>\n", encoding="utf-8")
    return path
