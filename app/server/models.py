"""`GET /v1/models` and `/v1/models/{id}`: the names this server answers to (`--served-model-name`,
default the `--model` argument), each the same loaded model."""

from __future__ import annotations

from jamba_stack.app.server.protocol import ModelCard, ModelList
from jamba_stack.app.server.serving import ServerState


def model_card(state: ServerState, name: str) -> ModelCard:
    return ModelCard(
        id=name, created=state.created, root=state.model_names[0], max_model_len=state.max_model_len
    )


def list_models(state: ServerState) -> ModelList:
    return ModelList(data=[model_card(state, name) for name in state.model_names])


def get_model(state: ServerState, name: str) -> ModelCard:
    """Raises `ModelNotFoundError` (404) for a name not served here."""
    return model_card(state, state.check_model(name))
