"""The Jamba model: layers, checkpoint loading, int8 experts, tensor and expert parallel.

| module | job |
|---|---|
| `modeling` | `JambaForCausalLM` and its layers, in PyTorch; `empty_model` (on the meta device) |
| `loader` | a checkpoint directory or hub id -> model, tensor by tensor |
| `dummy_weights` | random weights from a config alone (`load_format="dummy"`) |
| `quantization` | ExpertsInt8: `Int8Linear`, per-output-channel int8 expert weights |
| `expert_layout` | the stacked layout of a MoE layer's experts the grouped kernels read |
| `sharding` | which slice of each parameter a tensor-parallel rank keeps |
| `tp_layers` | the collectives: `TensorParallelGroup`, `RowParallelLinear`, `ExpertParallelMoe` |
| `tp_model` | `shard_model` (a model -> one rank's shard), `prefill` on a `PrefillCache` |
| `tp_prefill` | `spawn_prefill`: a tensor-parallel prefill in N spawned processes |
"""
