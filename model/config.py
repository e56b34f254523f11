"""Typed configs for the network. Validated at construction, stored in every checkpoint as a
plain dict, so that a checkpoint rebuilds its own model with nothing else."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, NoReturn

from model.tasks import TASK_NAMES, require_dataset


class Routing(StrEnum):
    """What sits beside each block's FFN and how its gates are made: one member per variant,
    carrying what the variant means, so that code asks a trait instead of comparing names.
    ``Routing("ase")`` parses a stored name (checkpoints and metadata store the name).

    - ``ase``: top-k routed + S adaptive shared experts, one softmax over both (the paper);
    - ``moe``: plain top-k LoRA-MoE, no shared experts (``ase``'s gate with S = 0);
    - ``naive_shared``: shared experts added with fixed weight 1, routed weights normalised
      among themselves;
    - ``lora``: one LoRA adapter of the active rank (k+S)*r, no routing (MTL-ViT+LoRA);
    - ``none``: no adapters at all.
    """

    # fmt: off
    #              name            experts  shared gates  in softmax  allows S>0  needs S>0
    ASE =          "ase",          True,    True,         True,       True,       False
    MOE =          "moe",          True,    False,        True,       False,      False
    NAIVE_SHARED = "naive_shared", True,    False,        False,      True,       True
    LORA =         "lora",         False,   False,        False,      True,       False
    NONE =         "none",         False,   False,        False,      True,       False
    # fmt: on

    def __new__(
        cls,
        value: str,
        has_experts: bool,
        learns_shared_gates: bool,
        shared_in_softmax: bool,
        allows_shared: bool,
        needs_shared: bool,
    ) -> Routing:
        member = str.__new__(cls, value)
        member._value_ = value
        member.has_experts = has_experts  # a routed bank of N experts and per-task routers
        member.learns_shared_gates = learns_shared_gates  # the router scores shared experts too
        # The shared experts' logits join the k picks in ONE softmax; otherwise they weigh 1.
        member.shared_in_softmax = shared_in_softmax
        member.allows_shared, member.needs_shared = allows_shared, needs_shared
        return member

    @property
    def has_adapter(self) -> bool:
        """Anything beside the FFN at all (every variant but ``none``)."""
        return self is not Routing.NONE


def parse_routing(value: str | Routing) -> Routing:
    """A variant's name -> its member; a ValueError lists the known names."""
    try:
        return Routing(value)
    except ValueError:
        known = ", ".join(Routing)
        _fail("adapters.routing", f"unknown variant {value!r}; known: {known}")


def _fail(field_name: str, message: str) -> NoReturn:
    raise ValueError(f"{field_name}: {message}")


EMBEDS = ("patch", "efficientnet_lite0", "efficientnet_lite2")
"""``BackboneConfig.embed``: the ViT's patch convolution, or a hybrid's CNN (efficientnet.py)."""
HYBRID_STRIDE = 16  # EfficientNet-Lite's stage-5 feature map


@dataclass(frozen=True)
class BackboneConfig:
    image_size: int = 128
    patch_size: int = 16
    width: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    lora_rank: int = 4  # rank of the LoRA on the frozen backbone's linear layers; 0 disables
    # The patch embedding: "patch" (the ViT's own, a patch_size convolution) or a frozen
    # ImageNet EfficientNet-Lite's stride-16 feature map (the ViT paper's hybrid; patch 16)
    embed: str = "patch"

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "width", "depth", "heads"):
            if getattr(self, name) < 1:
                _fail(f"backbone.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            _fail(
                "backbone.image_size",
                f"{self.image_size} is not a multiple of patch_size {self.patch_size}",
            )
        if self.width % self.heads:
            _fail("backbone.width", f"{self.width} is not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            _fail("backbone.mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        if self.lora_rank < 0:
            _fail("backbone.lora_rank", f"must be >= 0, got {self.lora_rank}")
        if self.embed not in EMBEDS:
            _fail("backbone.embed", f"unknown {self.embed!r}; known: {', '.join(EMBEDS)}")
        if self.embed != "patch" and self.patch_size != HYBRID_STRIDE:
            _fail("backbone.patch_size", f"a hybrid's tokens are stride {HYBRID_STRIDE}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        return self.grid**2


def parse_expert_spec(spec: str) -> tuple[int, int, int, int]:
    """``"N/k/S/r"`` -> (experts, k, shared, rank); a ValueError names a malformed spec."""
    parts = spec.split("/")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        _fail("adapters.spec", f"expected 'N/k/S/r' with four non-negative integers, got {spec!r}")
    experts, k, shared, rank = (int(p) for p in parts)
    return experts, k, shared, rank


@dataclass(frozen=True)
class AdapterConfig:
    """The expert bank beside each block's FFN, in the paper's ``N/k/S/r`` notation. ``spec``
    and ``routing`` (a variant's name is accepted) are what checkpoints store; both are parsed
    once, here, into the integers and the ``Routing`` member that every other module reads."""

    spec: str = "16/3/1/4"
    routing: Routing = Routing.ASE
    experts: int = field(init=False)  # N
    k: int = field(init=False)
    shared: int = field(init=False)  # S
    rank: int = field(init=False)  # r

    def __post_init__(self) -> None:
        experts, k, shared, rank = parse_expert_spec(self.spec)
        routing = parse_routing(self.routing)
        for name, value in (("experts", experts), ("k", k), ("shared", shared), ("rank", rank)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "routing", routing)
        if experts < 1:
            _fail("adapters.experts", f"N must be >= 1, got {experts}")
        if rank < 1:
            _fail("adapters.rank", f"r must be >= 1, got {rank}")
        if shared > experts:
            _fail("adapters.shared", f"S={shared} exceeds the number of experts N={experts}")
        if k > experts - shared:
            _fail("adapters.k", f"k={k} exceeds the routed experts N-S={experts - shared}")
        if k + shared < 1:
            _fail("adapters.k", "k+S must be >= 1: no expert would ever be active")
        if shared and not routing.allows_shared:
            _fail("adapters.shared", f"routing '{routing}' has no shared experts, got S={shared}")
        if routing.needs_shared and not shared:
            _fail("adapters.shared", f"routing '{routing}' needs S >= 1")

    def to_dict(self) -> dict[str, str]:
        """What a checkpoint stores: the spec and the variant's name (plain strings)."""
        return {"spec": self.spec, "routing": self.routing.value}

    @property
    def routed(self) -> int:
        """Experts chosen by the router (N-S)."""
        return self.experts - self.shared

    @property
    def active_rank(self) -> int:
        """Rank active per token: (k+S)*r."""
        return (self.k + self.shared) * self.rank

    @property
    def has_experts(self) -> bool:
        """Whether the network carries a routed expert bank (not ``lora``/``none``)."""
        return self.routing.has_experts


LAYER_REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class RouterLossConfig:
    """Weights of the router's auxiliary losses; 0 disables a term (it is then not computed).

    Each term is computed per layer, then the layers are combined by ``layers``: ``"sum"``
    as Mod-Squad does (its ``get_zloss`` adds every MoE layer's loss), or ``"mean"``. The ASE
    paper regularises with Mod-Squad's loss but gives no weight; 0.005 per layer, summed, is
    what Mod-Squad's README model (``mtvit_taskgate_att_mlp_base_MI_twice``) uses.
    """

    mi_weight: float = 0.005  # Mod-Squad task-expert mutual information, per layer
    balance_weight: float = 0.0  # switch-style load balancing, the usual alternative
    layers: str = "sum"  # how the per-layer losses combine: "sum" (Mod-Squad) or "mean"

    def __post_init__(self) -> None:
        for name in ("mi_weight", "balance_weight"):
            if getattr(self, name) < 0:
                _fail(f"router_loss.{name}", f"must be >= 0, got {getattr(self, name)}")
        if self.layers not in LAYER_REDUCTIONS:
            _fail("router_loss.layers", f"expected 'sum' or 'mean', got {self.layers!r}")


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    router_loss: RouterLossConfig = field(default_factory=RouterLossConfig)
    dataset: str = "synthetic"  # selects the class lists of the task registry
    tasks: tuple[str, ...] = TASK_NAMES

    def __post_init__(self) -> None:
        try:
            require_dataset(self.dataset)
        except ValueError as error:
            _fail("dataset", str(error))
        if not self.tasks:
            _fail("tasks", "at least one task is needed")
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown:
            _fail("tasks", f"unknown task(s) {unknown}; known: {', '.join(TASK_NAMES)}")
        if len(set(self.tasks)) != len(self.tasks):
            _fail("tasks", f"duplicate task names in {list(self.tasks)}")
        # Keep the registry's canonical order so task ids never depend on how a user typed them.
        object.__setattr__(self, "tasks", tuple(t for t in TASK_NAMES if t in self.tasks))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["adapters"] = self.adapters.to_dict()
        data["tasks"] = list(self.tasks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from ``to_dict()`` output; unknown keys are an error, not silently dropped."""
        known = {"backbone", "adapters", "router_loss", "dataset", "tasks"}
        extra = set(data) - known
        if extra:
            _fail("config", f"unknown keys {sorted(extra)}")
        try:
            return cls(
                backbone=BackboneConfig(**data.get("backbone", {})),
                adapters=AdapterConfig(**data.get("adapters", {})),
                router_loss=_router_loss(data.get("router_loss")),
                dataset=data.get("dataset", "synthetic"),
                tasks=tuple(data.get("tasks", TASK_NAMES)),
            )
        except TypeError as error:  # an unexpected field inside backbone/adapters
            raise ValueError(f"config: {error}") from None


def _router_loss(stored: dict[str, Any] | None) -> RouterLossConfig:
    """A stored ``router_loss`` without ``layers`` predates the option: it averaged layers."""
    if stored is None:
        return RouterLossConfig()
    return RouterLossConfig(**{"layers": "mean", **stored})
