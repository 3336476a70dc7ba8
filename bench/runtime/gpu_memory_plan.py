"""`bench.runtime.gpu`'s memory plan: `jamba_runtime.engine.memory_plan` on this card for the bench's
shape (the longest context that fits, which the longest-context row checks) and, for
information, the uncut config. A mixin of its `Bench`."""

from __future__ import annotations

from typing import Any

import torch

from bench.common.gpu_timing import log, short_error
from jamba_runtime.config import JambaConfig
from jamba_runtime.engine.memory_plan import plan_memory

_GIB = 2**30


class MemoryPlanRows:
    def make_plan(self, full_raw: dict[str, Any]) -> None:
        """`jamba_runtime.engine.memory_plan` for one sequence on this card: the longest context that fits;
        for information also the uncut config (bf16 and experts_int8)."""
        assert self.cfg is not None
        total = torch.cuda.get_device_properties(self.device).total_memory if self.cuda else None

        def plan(cfg: JambaConfig, quant: str | None) -> dict[str, Any]:
            p = plan_memory(
                cfg,
                dtype=self.dtype,
                quantization=quant,
                max_num_seqs=1,
                num_snapshot_slots=0,
                max_num_batched_tokens=self.args.chunk,
                device_memory_bytes=total,
            )
            return {
                "layers": cfg.num_hidden_layers,
                "quantization": quant,
                "weights_gib": p.weights_bytes / _GIB,
                "kv_bytes_per_token": p.kv_bytes_per_token,
                "mamba_slot_mib": p.mamba_slot_bytes / 2**20,
                "activation_gib": p.activation_bytes / _GIB,
                "reserve_gib": p.reserve_bytes / _GIB,
                "budget_gib": None if p.budget_bytes is None else p.budget_bytes / _GIB,
                "kv_tokens_that_fit": p.kv_tokens,
                "max_position_embeddings": p.max_position_embeddings,
                "longest_context": p.longest_context,
                "fits": p.fits,
                "summary": p.summary(),
            }

        self.plan = {"this_shape": plan(self.cfg, None)}
        log(self.plan["this_shape"]["summary"])
        if full_raw.get("num_hidden_layers") != self.cfg.num_hidden_layers:
            full = JambaConfig.from_dict(full_raw, source="bench config (uncut)")
            for quant in (None, "experts_int8"):
                try:
                    self.plan[f"uncut_{quant or 'bf16'}"] = plan(full, quant)
                except Exception as e:  # noqa: BLE001 - information only
                    self.plan[f"uncut_{quant or 'bf16'}"] = {"error": short_error(e)}

    def longest_target(self) -> int:
        """Tokens (prompt + 1 new) of the longest-context check: the plan's longest context, capped
        by `--longest-cap`."""
        assert self.cfg is not None
        longest = self.plan.get("this_shape", {}).get("longest_context") or self.cfg.max_position_embeddings
        return min(longest, self.args.longest_cap or longest)
