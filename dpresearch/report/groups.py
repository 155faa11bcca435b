"""Which runs a comparison may pool: runs of one setting (the resolved config but the seed,
see ``tracking.setting``). A group's epsilon is its runs' epsilon, never an average: runs of
one setting that disagree on the epsilon spent are split into separate points."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

from dpresearch.report.runs import Run
from dpresearch.tracking.setting import METHOD_KEYS, setting_key, setting_of, under

# What the x axis of accuracy vs epsilon varies: points of one series differ only here.
BUDGET_KEYS = ("privacy.target_epsilon", "privacy.noise_multiplier")


def setting(run: Run) -> dict[str, object]:
    return setting_of(run.config, run.method, run.dataset, run.summary.get("private") is not False)


def _epsilon_key(run: Run) -> str:
    eps = run.epsilon
    return "inf" if math.isinf(eps) else "nan" if math.isnan(eps) else f"{eps:.6g}"


@dataclass
class Group:
    """Runs of one setting (seeds of one config) that spent the same epsilon."""

    setting: dict[str, object]
    runs: list[Run] = field(default_factory=list)
    label: str = ""

    @property
    def epsilon(self) -> float:
        return self.runs[0].epsilon

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list:
        return sorted({r.summary.get("seed", r.config.get("seed")) for r in self.runs}, key=str)

    def values(self, key: str) -> list[float]:
        return [float(r.summary[key]) for r in self.runs if r.summary.get(key) is not None]


def group_runs(runs: list[Run], drop: tuple[str, ...] = ()) -> list[Group]:
    """Groups of runs equal in every setting but the seed (and ``drop``), split further where
    their spent epsilon differs; labelled by what differs between the groups."""
    groups: dict[tuple[str, str], Group] = {}
    for run in runs:
        values = setting(run)
        key = (setting_key(values, drop), _epsilon_key(run))
        groups.setdefault(key, Group(values)).runs.append(run)
    out = sorted(groups.values(), key=lambda g: (g.setting["method"], g.epsilon))
    label_groups(out, drop)
    return out


def differing(settings: list[dict[str, object]], skip: tuple[str, ...] = ()) -> list[str]:
    """Keys that take more than one value among the settings holding them; then, if that
    leaves two different settings looking alike, keys some settings lack."""
    keys = sorted({k for s in settings for k in s if not under(k, skip)})

    def values(k: str, present: bool) -> set[str]:
        return {json.dumps(s.get(k), default=str) for s in settings if not present or k in s}

    out = [k for k in keys if len(values(k, present=True)) > 1]
    # the label always shows the method, so only settings alike in both collide
    shown = {json.dumps([s.get("method"), *(s.get(k) for k in out)], default=str) for s in settings}
    if len(shown) < len({setting_key(s, skip) for s in settings}):
        out = [k for k in keys if len(values(k, present=False)) > 1]
    return out


def short(key: str, value: object) -> str:
    """``clipping.max_grad_norm=0.5``; a ``_target_`` shows its class name."""
    if key.endswith("._target_"):
        return f"{key[: -len('._target_')]}={str(value).rsplit('.', 1)[-1]}"
    return f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"


def label_groups(groups: list[Group], drop: tuple[str, ...] = ()) -> None:
    """Each group's label: its method, then the settings that tell it from the others."""
    keys = differing([g.setting for g in groups], skip=(*drop, "method", "dataset", *METHOD_KEYS))
    for g in groups:
        extra = [short(k, g.setting[k]) for k in keys if k in g.setting]
        g.label = ", ".join([str(g.setting["method"]), *extra])


def series(groups: list[Group]) -> dict[str, list[Group]]:
    """Accuracy-vs-epsilon lines: groups equal but for the privacy budget, keyed by a label
    naming what differs between the lines; points in order of epsilon."""
    lines: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        lines[setting_key(g.setting, BUDGET_KEYS)].append(g)
    heads = [members[0] for members in lines.values()]
    keys = differing([g.setting for g in heads], skip=(*BUDGET_KEYS, "method", "dataset",
                                                     *METHOD_KEYS))  # fmt: skip
    out = {}
    for members in lines.values():
        head = members[0]
        extra = [short(k, head.setting[k]) for k in keys if k in head.setting]
        label = ", ".join([str(head.setting["method"]), *extra])
        out[label] = sorted(members, key=lambda g: g.epsilon)
    return dict(sorted(out.items()))
