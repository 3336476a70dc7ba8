"""The hybrid cache: KV for attention layers, conv window + SSM state for Mamba layers.

| module | job |
|---|---|
| `batch` | `ForwardBatch`, `PagedKernelArgs`: the layout of one forward step |
| `state` | the `LayerCache` protocol the layers use; `HybridCache` (contiguous) and `MambaStateSlots` |
| `paged` | `PagedHybridCache`: the engine's paged KV blocks and state slots |
| `manager` | `CacheManager`: which block or slot belongs to whom (no torch) |
"""
