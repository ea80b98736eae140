"""The parallel layout: degrees validated up front, and one DeviceMesh built from them."""

from __future__ import annotations

from dataclasses import dataclass

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

# World mesh dimensions, outermost first. For experts dp_shard is unflattened into ("efsdp", "ep"):
# dp_shard = efsdp * ep, so experts are sharded over `ep` and replicated/FSDP-sharded over the rest.
WORLD_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of each kind of parallelism. `world_size` must equal pp * dp_replicate * dp_shard * tp.

    Expert parallel borrows ranks from dp_shard (as torchtitan does): ep must divide dp_shard.
    """

    world_size: int
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        errors = [
            f"{name}={value} must be >= 1"
            for name, value in (
                ("world_size", self.world_size),
                ("dp_replicate", self.dp_replicate),
                ("dp_shard", self.dp_shard),
                ("tp", self.tp),
                ("pp", self.pp),
                ("ep", self.ep),
            )
            if value < 1
        ]
        if errors:
            raise ValueError("invalid parallel layout: " + "; ".join(errors))
        product = self.dp_replicate * self.dp_shard * self.tp * self.pp
        if product != self.world_size:
            raise ValueError(
                f"invalid parallel layout: dp_replicate={self.dp_replicate} * dp_shard={self.dp_shard} * tp={self.tp}"
                f" * pp={self.pp} = {product}, but world_size={self.world_size}"
            )
        if self.dp_shard % self.ep:
            raise ValueError(
                f"invalid parallel layout: ep={self.ep} must divide dp_shard={self.dp_shard}"
                " (expert parallel borrows ranks from the sharded data-parallel dimension)"
            )

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many distinct micro-batches are processed per step."""
        return self.dp_replicate * self.dp_shard

    @property
    def efsdp(self) -> int:
        return self.dp_shard // self.ep

    def validate_for_model(
        self, n_layers: int, n_heads: int, n_experts: int, stages_per_rank: int = 1, n_kv_heads: int = 0
    ) -> None:
        """Checks that depend on the model; raises naming the degree at fault. n_kv_heads=0: as many as n_heads."""
        errors = []
        if self.tp > 1 and n_heads % self.tp:
            errors.append(f"tp={self.tp} must divide n_heads={n_heads}")
        if self.tp > 1 and n_kv_heads and n_kv_heads % self.tp:
            # Each rank keeps whole key/value heads with the query heads that share them.
            errors.append(f"tp={self.tp} must divide n_kv_heads={n_kv_heads}")
        n_stages = self.pp * stages_per_rank
        if n_stages > n_layers:
            errors.append(f"pp={self.pp} x {stages_per_rank} stages per rank = {n_stages} exceeds n_layers={n_layers}")
        if self.ep > 1 and (n_experts == 0 or n_experts % self.ep):
            errors.append(f"ep={self.ep} must divide n_experts={n_experts} (and the model must have experts)")
        if errors:
            raise ValueError("invalid parallel layout for this model: " + "; ".join(errors))

    def validate_batch(self, global_batch: int, micro_batch: int, n_microbatches: int) -> int:
        """Returns gradient-accumulation steps = global_batch / (micro_batch * dp); raises if it does not divide."""
        per_step = micro_batch * self.dp
        if global_batch % per_step:
            raise ValueError(
                f"global_batch={global_batch} must be a multiple of micro_batch={micro_batch} * dp={self.dp}"
                f" (dp_replicate={self.dp_replicate} * dp_shard={self.dp_shard})"
            )
        if self.pp > 1 and micro_batch % n_microbatches:
            raise ValueError(
                f"micro_batch={micro_batch} must be a multiple of the pipeline's n_microbatches={n_microbatches}"
                f" (pp={self.pp})"
            )
        return global_batch // per_step

    def build_mesh(self, device_type: str) -> Meshes:
        """One world mesh ("pp", "dp_replicate", "dp_shard", "tp") and the views the code uses by name. The
        expert views come from unflattening dp_shard into ("efsdp", "ep"); derived meshes are kept here
        rather than sliced back out of the root (torch is deprecating slicing flattened dims)."""
        world = init_device_mesh(
            device_type, (self.pp, self.dp_replicate, self.dp_shard, self.tp), mesh_dim_names=WORLD_DIMS
        )
        fsdp = world["dp_replicate", "dp_shard"]
        experts = world._unflatten("dp_shard", (self.efsdp, self.ep), ("efsdp", "ep"))
        return Meshes(
            world,
            {
                "pp": world["pp"],
                "tp": world["tp"],
                ("dp_replicate", "dp_shard"): fsdp,
                "dp": fsdp._flatten("dp"),
                "ep": experts["ep"],
                ("dp_replicate", "efsdp"): experts["dp_replicate", "efsdp"],
            },
        )


@dataclass(frozen=True)
class Meshes:
    """Named views of the one world mesh: "pp", "tp", "dp" (all data-parallel ranks, flattened),
    ("dp_replicate", "dp_shard") for FSDP, "ep" and ("dp_replicate", "efsdp") for experts."""

    world: DeviceMesh
    views: dict[str | tuple[str, ...], DeviceMesh]

    def __getitem__(self, name: str | tuple[str, ...]) -> DeviceMesh:
        return self.views[name]
