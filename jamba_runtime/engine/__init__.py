"""The engine: continuous batching over the paged hybrid cache, one step at a time.

| module | job |
|---|---|
| `engine` | `LLMEngine`: admit requests, schedule a step, run it, sample, detokenise, stop, free |
| `config` | `EngineConfig` (the engine's sizes) and `EngineArgs` (every load and engine argument) |
| `metrics` | `EngineMetrics` and the counters behind it |
| `scheduler` | which sequences run in a step and how many of their tokens (no torch) |
| `sequence` | per-request state: tokens, detokenised text, stop checks |
| `runner` | a scheduled step -> one packed forward -> the logits to sample from |
| `sampler`, `sampling_params` | next-token choice, and the per-request parameters |
| `graphs` | `DecodeGraphs`: decode steps captured as CUDA graphs and replayed |
| `snapshots` | prefix snapshots (`SnapshotStore`) |
| `outputs` | what a request gets back (`RequestOutput`, `StepOutput`, `RequestOutputDelta`, `Usage`) |
| `streams` | request streams handed from the engine thread to asyncio consumers (`AsyncLLM`) |
| `memory_plan` | what a model and an engine config need per GPU; refuses what cannot fit |
| `tensor_parallel` | the engine on N ranks: rank 0 schedules, the others follow |

Import what you need from the module that holds it; the public names are also in `jamba_runtime`.
"""
