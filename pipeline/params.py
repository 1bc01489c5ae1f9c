"""The one typed boundary between ``params.yaml`` and the code: validated, frozen models.

Every stage loads params through :func:`load_params`; an unknown key, a wrong type or an
out-of-range value stops with one line that names the key's path, before anything runs.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from taso import demo
from taso.config import ImpConfig, LosiaConfig, MethodConfig, TrainConfig
from taso.data import TaskSpec
from taso.metrics import APPLIES_TO
from taso.names import DEFAULT_RULE, METHOD_NAMES, Rule, Statistic, TaskType, Unit
from taso.pooling import Pooling

if TYPE_CHECKING:
    from taso.methods import Method

Fraction = Annotated[float, Field(gt=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ModelParams(_Strict):
    base: str = "minilm"
    targets: str | list[str] = "all-linear"
    max_length: PositiveInt = 128
    pooling: str = "auto"  # what a classification/regression head reads (taso.pooling)

    @field_validator("pooling")
    @classmethod
    def _pooling(cls, v: str) -> str:
        if v not in ("auto", "architecture"):
            Pooling.parse(v)  # its ValueError names the modes
        return v


class TrackingParams(_Strict):
    experiment: str = "taso"
    registry_prefix: str = "taso"
    promote: Literal["if_better", "never"] = "if_better"


class TaskParams(_Strict):
    source: str
    task_type: TaskType = "classification"
    # One text or a pair; an entry that is a list joins those columns into one text: [[title, body]].
    text_fields: list[str | list[str]] = Field(default_factory=lambda: ["text"], min_length=1)
    label_field: str = "label"
    labels: list[str] | None = None
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"], min_length=1)
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "eval": "eval"})
    column_names: list[str] | None = None
    quoting: bool = True  # CSV/TSV: "a, b" is one field; false reads quotes as text (GLUE's TSVs)
    max_train: PositiveInt | None = None
    max_eval: PositiveInt | None = None
    # causal_lm only: the text the model learns, "{}" standing for the answer in label_field.
    answer_template: str = "{}"
    # What reads the encoder: the architecture's classifier over one sequence, or (sentence pairs)
    # the cosine of the two texts pooled apart; auto picks per task (head_kind()).
    head: Literal["auto", "classifier", "cosine"] = "auto"
    mask_source: str  # required: dvc.yaml tracks it as a param of derive-mask

    @field_validator("answer_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{}" not in v:
            raise ValueError("must contain {} where the answer goes (e.g. 'the correct answer is {}')")
        return v

    @model_validator(mode="after")
    def _scoring(self) -> TaskParams:
        # Settings that would train and then report nothing meaningful stop here, naming the fix.
        if self.task_type != "causal_lm" and self.answer_template != "{}":
            raise ValueError("answer_template applies to task_type: causal_lm only")
        if self.task_type == "regression" and self.labels:
            raise ValueError("labels name classes; a regression task predicts a number: drop labels")
        kind, what = self.task_type, f"a {self.task_type} task"
        if kind == "causal_lm":  # a choice task (labels: its options) or a generation task (no labels)
            kind, what = (
                ("causal_lm choice", "a choice task (it has labels)")
                if self.labels
                else ("causal_lm generation", "a generation task (no labels)")
            )
        allowed = APPLIES_TO[kind]
        wrong = [m for m in self.metrics if m not in allowed]
        if wrong:
            fix = " (a numeric target needs task_type: regression)" if kind == "classification" else ""
            raise ValueError(f"metrics {wrong} do not apply to {what}; use {' or '.join(allowed)}{fix}")
        if self.head == "cosine" and (self.task_type == "causal_lm" or len(self.text_fields) != 2):
            raise ValueError(
                "head cosine reads the similarity of a sentence pair: it needs two text_fields and "
                "task_type: regression or classification"
            )
        classes = len(self.labels) if self.labels else 2
        if "f1" in self.metrics and classes != 2:
            raise ValueError(
                f"f1 here is binary (of class 1); this task has {classes} labels: use accuracy or matthews"
            )
        return self

    @field_validator("mask_source")
    @classmethod
    def _mask_source(cls, v: str) -> str:
        forms = (
            "must be 'own', 'registry:<name>@<alias>', 'registry:<name>/<version>', 'models:/<name>@<alias>', "
            "'models:/<name>/<version>', 'file:<path>' or 'composition:<name>'"
        )
        if v != "own" and not re.match(r"^(registry:|models:/|file:|composition:).+", v):
            raise ValueError(forms)
        # A registry reference names one version, by alias or number, as the registry resolves it.
        if v.startswith(("registry:", "models:/")) and not re.match(r"^(registry:|models:/).+(@[^@/]+|/\d+)$", v):
            raise ValueError(f"{v!r}: a registry source names a version, by alias or number; {forms}")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v.startswith("demo:") and v[len("demo:") :] not in demo.TASKS:
            raise ValueError(
                f"no demo task {v[len('demo:') :]!r}; built-in demo tasks: {', '.join(sorted(demo.TASKS))}"
            )
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v):
        if isinstance(v, list) and any(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            # YAML reads [0, 1] as numbers; the file's label column is read as text, so say how to write them.
            quoted = ", ".join(f'"{x}"' for x in v)
            raise ValueError(f"label values are text, as read from the file: write labels: [{quoted}]")
        if isinstance(v, list) and all(isinstance(x, str) for x in v) and len(set(v)) != len(v):
            twice = sorted({x for x in v if v.count(x) > 1})
            raise ValueError(f"each label names one class id; {twice} appear more than once")
        return v

    @field_validator("text_fields")
    @classmethod
    def _text_fields(cls, v: list) -> list:
        if len(v) > 2:
            raise ValueError(
                f"holds one text or a sentence pair, not {len(v)}; to join columns into one text, "
                f"list them together: text_fields: [{v!r}]".replace("'", "")
            )
        if any(isinstance(f, list) and not f for f in v):
            raise ValueError("a joined text needs at least one column")
        return v

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: dict[str, str]) -> dict[str, str]:
        missing = {"train", "eval"} - set(v)
        if missing:
            raise ValueError(f"needs keys train and eval (missing: {', '.join(sorted(missing))})")
        return v

    def head_kind(self) -> str:
        """The head ``head`` stands for: ``auto`` is the cosine head for a regression over sentence pairs."""
        if self.head != "auto":
            return self.head
        return "cosine" if self.task_type == "regression" and len(self.text_fields) == 2 else "classifier"

    def spec(self, name: str, max_length: int) -> TaskSpec:
        """The library's view of this task."""
        return TaskSpec(
            name=name,
            source=self.source,
            task_type=self.task_type,
            text_fields=tuple(f if isinstance(f, str) else tuple(f) for f in self.text_fields),
            label_field=self.label_field,
            labels=tuple(self.labels) if self.labels else None,
            metrics=tuple(self.metrics),
            splits=dict(self.splits),
            column_names=tuple(self.column_names) if self.column_names else None,
            quoting=self.quoting,
            max_train=self.max_train,
            max_eval=self.max_eval,
            max_length=max_length,
            answer_template=self.answer_template,
        )


class CompositionParams(_Strict):
    """One composed mask: ``op`` over ``of`` (task names, ``file:`` paths or registry URIs)."""

    op: Literal["union", "intersection", "weighted"]
    of: list[str] = Field(min_length=1)
    weights: list[Annotated[float, Field(gt=0)]] | None = None  # weighted only; default: equal
    p: Fraction | None = None  # weighted only; default: mask.p

    @model_validator(mode="after")
    def _weights(self) -> CompositionParams:
        if self.op != "weighted" and (self.weights is not None or self.p is not None):
            raise ValueError("weights and p apply to op: weighted only")
        if self.weights is not None and len(self.weights) != len(self.of):
            raise ValueError(f"weights needs one value per entry of 'of' ({len(self.of)}), got {len(self.weights)}")
        return self


class CalibrateParams(_Strict):
    n: PositiveInt = 256


class ScoreParams(_Strict):
    batch_size: PositiveInt = 16
    head_warmup_steps: Annotated[int, Field(ge=0)] = 200
    head_warmup_lr: Annotated[float, Field(gt=0)] = 1e-3
    keep_full: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    # sensitivity: LoSiA's score with LoSiA's own defaults (taso.importance.score_importance), taken once
    statistic: Statistic = "taylor"


class MaskParams(_Strict):
    rule: Rule = DEFAULT_RULE
    p: Fraction = 0.25
    unit: Unit = "row"

    @model_validator(mode="after")
    def _unit(self) -> MaskParams:
        if self.unit == "head" and self.rule == "elementwise":
            raise ValueError(
                "unit head keeps whole heads of rows; the elementwise rule keeps single entries: use unit row"
            )
        return self


class TrainParams(_Strict):
    # Defaults come from the library's configs (taso.methods.MethodConfig, taso.train.TrainConfig),
    # so code that calls taso directly trains as the pipeline does; params.yaml repeats them with
    # the reasons, and a test holds the two equal.
    method: str = "taso"
    rank: PositiveInt = MethodConfig.rank
    alpha: Annotated[float, Field(gt=0)] = MethodConfig.alpha
    dropout: Annotated[float, Field(ge=0, lt=1)] = MethodConfig.dropout
    lr: Annotated[float, Field(gt=0)] = TrainConfig.lr
    gamma: Annotated[float, Field(ge=0)] = TrainConfig.gamma
    head_lr: Annotated[float, Field(gt=0)] | None = TrainConfig.head_lr
    epochs: PositiveInt = TrainConfig.epochs
    max_steps: PositiveInt | None = TrainConfig.max_steps
    batch_size: PositiveInt = TrainConfig.batch_size
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = TrainConfig.warmup_ratio
    weight_decay: Annotated[float, Field(ge=0)] = TrainConfig.weight_decay
    max_grad_norm: Annotated[float, Field(ge=0)] = TrainConfig.max_grad_norm
    group_by_length: bool = TrainConfig.group_by_length
    checkpoint_every: PositiveInt = TrainConfig.checkpoint_every
    precision: Literal["fp32", "bf16"] = "fp32"

    @field_validator("method")
    @classmethod
    def _method(cls, v: str, info: ValidationInfo) -> str:
        if v not in METHOD_NAMES:  # the names only, so the quick check (no torch) catches a typo too
            raise ValueError(f"unknown method {v!r}; choose one of {', '.join(METHOD_NAMES)}")
        return v

    def method_class(self) -> type[Method]:
        """The class ``method`` names in taso's method registry."""
        from taso.methods import METHODS

        return METHODS[self.method]

    def method_config(self, seed: int, targets) -> MethodConfig:
        return MethodConfig(rank=self.rank, alpha=self.alpha, dropout=self.dropout, targets=targets, seed=seed)

    def config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            lr=self.lr,
            gamma=self.gamma,
            head_lr=self.head_lr,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            warmup_ratio=self.warmup_ratio,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            seed=seed,
            group_by_length=self.group_by_length,
            checkpoint_every=self.checkpoint_every,
            bf16=self.precision == "bf16",
        )


class LosiaParams(_Strict):
    # Defaults from taso.config.LosiaConfig, as train's from MethodConfig; params.yaml gives the reasons.
    p: Fraction = LosiaConfig.p
    period: PositiveInt | None = LosiaConfig.period
    cycles: PositiveInt = LosiaConfig.cycles
    beta1: Annotated[float, Field(ge=0, lt=1)] = LosiaConfig.beta1
    beta2: Annotated[float, Field(ge=0, lt=1)] = LosiaConfig.beta2
    taylor: Literal["param_mix", "param_first", "param_second"] = LosiaConfig.taylor
    schedule: Literal["asynchronous", "all"] = LosiaConfig.schedule
    strategy: Literal["best", "rows_cols", "rows_first", "cols_first"] = LosiaConfig.strategy
    min_lr_ratio: Annotated[float, Field(ge=0, lt=1)] = LosiaConfig.min_lr_ratio
    start: Literal["random", "mask"] = LosiaConfig.start

    def config(self) -> LosiaConfig:
        return LosiaConfig(**self.model_dump())


class ImpParams(_Strict):
    # Defaults from taso.config.ImpConfig; the search ends at mask.p, TASO's kept fraction.
    q: Annotated[float, Field(gt=0, lt=1)] = ImpConfig.q
    steps: PositiveInt = ImpConfig.steps
    rule: Literal["global", "per_matrix"] = ImpConfig.rule

    def config(self) -> ImpConfig:
        return ImpConfig(**self.model_dump())


class DistributedParams(_Strict):
    nproc: PositiveInt = 1


class EvaluateParams(_Strict):
    batch_size: PositiveInt = 64
    max_new_tokens: PositiveInt = 256  # causal_lm generation tasks: the longest answer generated


class Params(_Strict):
    seed: int = 0
    model: ModelParams = ModelParams()
    tracking: TrackingParams = TrackingParams()
    tasks: dict[str, TaskParams] = Field(min_length=1)
    calibrate: CalibrateParams = CalibrateParams()
    score: ScoreParams = ScoreParams()
    mask: MaskParams = MaskParams()
    train: TrainParams = TrainParams()
    losia: LosiaParams = LosiaParams()
    imp: ImpParams = ImpParams()
    evaluate: EvaluateParams = EvaluateParams()
    distributed: DistributedParams = DistributedParams()
    compositions: dict[str, CompositionParams] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lineage(self, info: ValidationInfo) -> Params:
        # Compositions read tasks' own importance, so a task that reuses a mask cannot be an
        # input, and one that uses a composition cannot be in it: each would be a cycle.
        for task in self.tasks:
            if task in RESERVED or not NAME.match(task):
                raise ValueError(f"tasks.{task}: {_bad_name(task)}")
        for name, comp in self.compositions.items():
            if not NAME.match(name):
                raise ValueError(f"compositions.{name}: {_bad_name(name)}")
            if name in self.tasks:
                raise ValueError(f"compositions.{name}: a task has that name; give the composition another")
            if comp.op == "weighted" and self.mask.rule == "elementwise":
                raise ValueError(
                    f"compositions.{name}: a weighted composition merges row and column importance, which the "
                    "elementwise rule cannot use; set mask.rule to rows_cols or global, or compose with union"
                )
            for ref in comp.of:
                if ":" in ref:
                    if not ref.startswith(MASK_REFS):
                        raise ValueError(
                            f"compositions.{name}.of: {ref!r} is not a task, a file:<path> or a registry URI "
                            "(registry:<name>@<alias>, models:/<name>/<version>)"
                        )
                    if comp.op == "weighted":
                        raise ValueError(
                            f"compositions.{name}.of: {ref!r} is a mask; a weighted composition merges importance maps, "
                            "so list tasks of this project"
                        )
                    continue
                if ref not in self.tasks:
                    raise ValueError(
                        f"compositions.{name}.of: {ref!r} is not a task ({', '.join(self.tasks)}), "
                        f"a file:<path> or a registry URI; remove it from compositions.{name}.of, or set "
                        "`compositions: {}` if you replaced the demo tasks"
                    )
                if self.tasks[ref].mask_source != "own":
                    raise ValueError(
                        f"compositions.{name}.of: task {ref!r} reuses a mask ({self.tasks[ref].mask_source}); "
                        f"remove {ref!r} from compositions.{name}.of, or compose that mask's source instead"
                    )
        if not _quick(info) and self.method().needs is None:
            # A method without a core region trains no mask, so nothing may ask it for one.
            for task, t in self.tasks.items():
                if t.mask_source != "own":
                    raise ValueError(
                        f"tasks.{task}.mask_source: train.method {self.train.method} trains without a mask, so it "
                        f"cannot use {t.mask_source}; set mask_source: own, or choose a method that trains on a core "
                        f"region ({', '.join(n for n, m in _methods().items() if m.needs == 'mask')}, or losia with "
                        "losia.start: mask)"
                    )
        for task, t in self.tasks.items():
            if t.mask_source.startswith("composition:"):
                comp = t.mask_source.split(":", 1)[1]
                if comp not in self.compositions:
                    known = ", ".join(self.compositions) or "none"
                    raise ValueError(f"tasks.{task}.mask_source: no composition {comp!r} (compositions: {known})")
                if not _quick(info) and (why := self.unscored_inputs(comp)):
                    raise ValueError(f"tasks.{task}.mask_source: composition:{comp} is {why}")
        return self

    def method(self) -> Method:
        """The training method params name, built from its config."""
        config = self.train.method_config(self.seed, self.model.targets)
        return self.train.method_class()(dataclasses.replace(config, losia=self.losia.config()))

    def uses_mask(self) -> bool:
        """Whether the training method trains on a core region (and so the mask stages have work)."""
        return self.method().needs == "mask"

    def scores(self, task: str) -> bool:
        """Whether ``task`` needs its own importance: a method with a region, the task's own mask, and
        a region that comes from importance (IMP's comes from its pruning rounds)."""
        own = self.uses_mask() and self.task(task).mask_source == "own"
        return own and not self.method().searches_region

    def searches(self, task: str) -> bool:
        """Whether derive-mask finds ``task``'s region by the method's search (IMP's rounds)."""
        return self.uses_mask() and self.task(task).mask_source == "own" and self.method().searches_region

    def unscored_inputs(self, name: str) -> str | None:
        """Why composition ``name`` cannot be built here (a task it reads has no importance), or None."""
        unscored = [t for t in self.composition(name).of if t in self.tasks and not self.scores(t)]
        if not unscored:
            return None
        return (
            f"not composed: compositions.{name} reads the importance of {', '.join(unscored)}, which "
            f"train.method {self.train.method} does not score; compose published masks (registry:, file:) instead"
        )

    def without_region(self) -> str:
        """What the ``meta.json`` of a mask stage says when the training method needs no mask."""
        if self.method().makes_mask:  # LoSiA: its region comes out of training (the train stage's subnet/)
            return (
                f"not needed: train.method is {self.train.method}, which finds its region while training "
                "(the train stage writes it to subnet/); losia.start: mask starts it from this stage's mask"
            )
        return f"not needed: train.method is {self.train.method}, which trains without a core region"

    def why_not_scored(self, task: str) -> str:
        """Why ``task`` has no importance of its own (for the ``meta.json`` of the stages it skips)."""
        if not self.uses_mask():
            return self.without_region()
        if self.searches(task):
            return f"not scored: train.method {self.train.method} finds the region by its search in derive-mask"
        return f"not scored: tasks.{task}.mask_source is {self.task(task).mask_source}"

    def task(self, name: str) -> TaskParams:
        if name not in self.tasks:
            raise ParamsError(f"tasks.{name}: no such task; tasks in params.yaml: {', '.join(self.tasks)}")
        return self.tasks[name]

    def spec(self, name: str) -> TaskSpec:
        return self.task(name).spec(name, self.model.max_length)

    def model_kwargs(self, name: str) -> dict:
        """What :func:`taso.pretrained.load_model` needs besides the base and seed to build task ``name``'s model."""
        spec = self.spec(name)
        head = self.task(name).head_kind()
        return {"task_type": spec.task_type, "num_labels": spec.num_labels, "pooling": self.model.pooling, "head": head}

    def composition(self, name: str) -> CompositionParams:
        if name not in self.compositions:
            known = ", ".join(self.compositions) or "none"
            raise ParamsError(f"compositions.{name}: no such composition; compositions in params.yaml: {known}")
        return self.compositions[name]


# Task and composition names become folder names, DVC stage names (train@<name>) and params
# keys (compositions.<name>): no dots, slashes or spaces, and none of the shared folders.
NAME = re.compile(r"^[A-Za-z0-9][\w-]*$")
RESERVED = frozenset({"importance", "compositions", "analysis"})
MASK_REFS = ("file:", "registry:", "models:/")


def _bad_name(name: str) -> str:
    if name in RESERVED:
        return f"{name!r} is reserved for artifacts/{name}/; choose another name"
    return "use letters, digits, '_' and '-' only (the name becomes a folder and a DVC stage name)"


class ParamsError(ValueError):
    """params.yaml does not validate; the message names the key path."""


def _describe(err: ValidationError, path: Path) -> str:
    lines = []
    for e in err.errors():
        # A validator's message is the whole explanation; pydantic's "Value error, " adds nothing.
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        if not e["loc"] and e["type"] == "value_error":  # whole-file checks name their own key path
            lines.append(f"{path}: {msg}")
            continue
        lines.append(f"{path}: {'.'.join(str(x) for x in e['loc']) or '(top level)'}: {msg}")
    return "\n".join(lines)


def _quick(info: ValidationInfo) -> bool:
    """Whether this is the quick check, which leaves out what needs taso's method registry (torch)."""
    return bool((info.context or {}).get("quick"))


def _methods() -> dict:
    from taso.methods import METHODS

    return METHODS


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one
    silently, so an edit to the first copy would change nothing)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one block (first at line {seen[key] + 1}); keep one",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml", *, quick: bool = False) -> Params:
    """Read and validate ``params.yaml``.

    Args:
        quick: check everything but what needs the method registry (the training method's
            name, and which methods train on a mask): no torch import, so it takes a fraction
            of a second. The check-params stage runs it on every ``dvc repro``; every other
            stage validates in full.

    Raises:
        ParamsError: the file is missing, is not YAML, or a key is unknown, mistyped or out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root or pass --params")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from e
    try:
        return Params.model_validate(raw, context={"quick": quick})
    except ValidationError as e:
        raise ParamsError(_describe(e, path)) from None
