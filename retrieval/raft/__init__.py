"""RAFT (retrieval-augmented fine-tuning): data generation (`generate`), exports (`export`), LoRA
training (`train`) and evaluation (`evaluate`); the CLI is `cli.raft_app`. See docs/raft.md."""
