"""`POST /tokenize` (vLLM's): the token ids of a prompt, or of chat messages rendered with the
chat template, with the count and the context length. The chat seam's `RemoteChatModel` counts
tokens through it."""

from __future__ import annotations

import asyncio

from jamba_stack.app.server.protocol import TokenizeRequest, TokenizeResponse
from jamba_stack.app.server.serving import ServerState
from jamba_stack.chat.format import ChatInputs, InvalidParameterError


async def tokenize(state: ServerState, body: TokenizeRequest) -> TokenizeResponse:
    """Raises `InvalidParameterError` unless exactly one of `prompt` and `messages` is given,
    and for messages, tools or documents the chat template cannot render; `RequestLimitError`
    past the server's documents or tools limit."""
    if body.model is not None:
        state.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidParameterError("give either prompt or messages", "prompt")
    state.limits.check_count(len(body.documents or ()), "max_documents", "documents")
    state.limits.check_count(len(body.tools or ()), "max_tools", "tools")
    tokenizer = state.tokenizer
    if body.prompt is not None:
        text = body.prompt
        ids = await asyncio.to_thread(tokenizer.encode, text, body.add_special_tokens)
    else:
        inputs = ChatInputs(
            messages=[m.model_dump(exclude_none=True) for m in body.messages or ()],
            tools=[t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None,
            documents=[d.model_dump(exclude_none=True) for d in body.documents] if body.documents else None,
            continue_final_message=not body.add_generation_prompt,
        )
        ids = await asyncio.to_thread(inputs.render, tokenizer)
    strs = [state.token_text(t) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs)
