"""The chat seam: one `ChatModel` interface over the in-process runtime or an OpenAI-compatible
server. Everything above the runtime (retrieval, RAFT, agents, the entry points) reaches a model
through it; only this package knows which kind it has.

    >>> from jamba_stack.chat import chat_model
    >>> model = chat_model("data/models/tiny")
    >>> model.chat([{"role": "user", "content": "Hi"}], max_tokens=32).content
"""

from jamba_stack.chat.factory import chat_model, is_random_test_model, resolve_model_path
from jamba_stack.chat.format import InvalidParameterError
from jamba_stack.chat.local import LocalChatModel
from jamba_stack.chat.model import ChatChunk, ChatModel, ChatOptions, ChatResponse, ModelInfo, Usage
from jamba_stack.chat.remote import RemoteAPIError, RemoteChatModel
from jamba_stack.chat.tool_calls import ToolCall

__all__ = [
    "ChatChunk",
    "ChatModel",
    "ChatOptions",
    "ChatResponse",
    "InvalidParameterError",
    "LocalChatModel",
    "ModelInfo",
    "RemoteAPIError",
    "RemoteChatModel",
    "ToolCall",
    "Usage",
    "chat_model",
    "is_random_test_model",
    "resolve_model_path",
]
