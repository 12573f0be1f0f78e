"""The feedback loop as studio jobs: "Improve from feedback" and "Promote" run on their own
worker threads (minutes of CPU, never in front of a generation), report progress like any job
and can be cancelled while they learn.

* ``improve`` (params ``model``, ``steps``, ``lr``, ``beta``, ``batch_size``, ``seed``): export
  this studio's feedback on the model's items as a preference dataset (under
  ``DATA/feedback/NAME/``), learn a candidate from production (:mod:`aigc.loop.improve`) and
  register it as ``NAME@candidate``. Result: the candidate, the dataset and the learning record.
* ``promote`` (params ``model``, ``version``, ``n``, ``force``, ``reason``): run the gate
  (:mod:`aigc.loop.promotion`) and, if it passes (or is forced, with a reason), point
  ``production`` at the version. A refusal is a finished job whose result says why; the
  registry watcher then switches the served model.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from aigc.errors import AigcError
from aigc.studio.backends import JobCancelled

log = logging.getLogger("aigc.studio")


def _finish(runner, job: dict[str, Any], result: dict[str, Any]) -> None:
    for finished in runner.store.finish_jobs([(job, [], result)]):
        runner.stats.completed[job["kind"]] += 1
        runner._push(job["id"], "done", finished)


def _progress(runner, job: dict[str, Any], start: float = 0.0, span: float = 1.0):
    def report(fraction: float) -> None:
        value = start + span * fraction
        runner.store.set_progress(job["id"], min(value, 0.99))
        runner._push(job["id"], "progress", value)
        if runner._is_cancelled(job["id"]):
            raise JobCancelled
    return report


def switch_now(runner) -> None:
    """Load the new production version now (not at the watcher's next look), so the job or
    request that changed it answers only once the studio serves it."""
    watcher = getattr(runner, "registry_watcher", None)
    if watcher is not None:
        watcher.sync()


def run_improve(runner, job: dict[str, Any]) -> None:
    from aigc.loop.export import export_dataset
    from aigc.loop.improve import ImproveSettings, improve

    p, name = job["params"], job["model"]
    try:
        if runner.registry is None:
            raise AigcError("this studio serves no registered models")
        snapshot = runner.store.feedback_snapshot(model=name)
        family = runner.registry.resolve(f"{name}@production").family
        folder = export_dataset(snapshot, runner.store.files_dir,
                                runner.store.data_dir / "feedback" / name, model=name,
                                family=family)
        runner.store.set_progress(job["id"], 0.02)
        version, rec = improve(f"{name}@production", folder, ImproveSettings(
            steps=int(p["steps"]), lr=p.get("lr"), beta=p.get("beta"),
            batch_size=int(p["batch_size"]), seed=int(p["seed"])),
            progress=_progress(runner, job, 0.02, 0.97), registry=runner.registry)
    except JobCancelled:
        return
    except AigcError as exc:  # no pairs, a refused family, ...: the person can act on it
        runner._fail(job, str(exc))
        return
    except Exception as exc:
        log.error("improve job failed:\n%s", traceback.format_exc())
        runner._fail(job, f"improvement failed ({type(exc).__name__}); see the server log")
        return
    _finish(runner, job, {"candidate": version.ref, "dataset": folder.name, "record": rec})


def run_promote(runner, job: dict[str, Any]) -> None:
    from aigc.loop.promotion import gate

    p, name = job["params"], job["model"]
    try:
        if runner.registry is None:
            raise AigcError("this studio serves no registered models")
        reg = runner.registry
        candidate = reg.resolve(f"{name}@{p['version']}")
        production = reg.resolve(f"{name}@production")
        if candidate.version == production.version:
            raise AigcError(f"{candidate.ref} is production already")
        runner.store.set_progress(job["id"], 0.05)
        verdict = gate(str(production.path), str(candidate.path), n=int(p["n"]))
        verdict.keep_cards(reg, production, candidate)
        result: dict[str, Any] = {"candidate": candidate.ref, "production": production.ref,
                                  "gate": verdict.to_dict(), "promoted": False}
        result["gate"].pop("protocol", None)
        if verdict.passed or p.get("force"):
            entry = reg.promote(name, f"v{candidate.version}", forced=not verdict.passed,
                                reason=p.get("reason") or "gate passed",
                                expected_production=production.version,
                                gate=verdict.to_dict())
            result.update(promoted=True, forced=entry["forced"])
            switch_now(runner)
    except AigcError as exc:
        runner._fail(job, str(exc))
        return
    except Exception as exc:
        log.error("promote job failed:\n%s", traceback.format_exc())
        runner._fail(job, f"promotion failed ({type(exc).__name__}); see the server log")
        return
    _finish(runner, job, result)
