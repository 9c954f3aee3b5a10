"""The ``evaluator.metrics`` config: ``{family: [{name: ..., kwargs: {...}}, ...]}`` -> MetricSpec list."""
from dataclasses import dataclass, field

FAMILIES = ("auc", "ap", "f1max", "aupro")
NAMES = ("mean", "std", "max", "pixel")
IMAGE_NAMES = ("mean", "std", "max")


@dataclass
class MetricSpec:
    """One requested metric: ``family`` in FAMILIES, ``name`` in NAMES, validated ``kwargs``."""

    family: str
    name: str
    kwargs: dict = field(default_factory=dict)

    @property
    def column(self) -> str:
        """Table column / key suffix: ``{name}_{family}`` (key = ``{clsname}_{column}``)."""
        return f"{self.name}_{self.family}"


def _allowed_kwargs(family: str, name: str) -> set[str]:
    if family == "aupro":
        return {"fpr_limit"}
    return {"avgpool_size"} if name == "max" else set()


def _check_entry(family: str, entry) -> MetricSpec:
    where = f"evaluator.metrics.{family}"
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"{where}: each entry must be a mapping with a 'name' key, got {entry!r}")
    name, kwargs = entry["name"], dict(entry.get("kwargs") or {})
    if name not in NAMES:
        raise ValueError(f"{where}: unknown name {name!r}; expected one of {list(NAMES)}")
    if family == "aupro" and name != "pixel":
        raise ValueError(f"{where}: name {name!r} is not defined for AUPRO (a per-region pixel metric); "
                         "use name: pixel")
    unknown = set(kwargs) - _allowed_kwargs(family, name)
    if unknown:
        raise ValueError(f"{where} name {name!r}: unknown kwargs {sorted(unknown)}; "
                         f"allowed: {sorted(_allowed_kwargs(family, name)) or 'none'}")
    if family == "aupro":
        limit = float(kwargs.get("fpr_limit", 0.3))
        if not 0.0 < limit <= 1.0:
            raise ValueError(f"{where}: kwargs.fpr_limit={limit} must be in (0, 1]")
        kwargs["fpr_limit"] = limit
    return MetricSpec(family, name, kwargs)


def parse_metrics_cfg(metrics_cfg) -> list[MetricSpec]:
    """Validated specs in config order (families as written, entries as listed).

    Raises ValueError naming the family / name / kwarg at fault.
    """
    if not isinstance(metrics_cfg, dict):
        raise ValueError(f"evaluator.metrics must be a mapping {{family: [entries]}}, got {type(metrics_cfg).__name__}")
    specs = []
    for family, entries in metrics_cfg.items():
        if family not in FAMILIES:
            raise ValueError(f"evaluator.metrics: unknown family {family!r}; expected one of {list(FAMILIES)}")
        for entry in entries or []:
            specs.append(_check_entry(family, entry))
    columns = [spec.column for spec in specs]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ValueError(f"evaluator.metrics: {duplicated} requested more than once; keep one entry each")
    return specs
