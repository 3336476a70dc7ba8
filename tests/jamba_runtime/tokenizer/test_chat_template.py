"""Chat templates: our built-in Jamba template renders what AI21's template renders under transformers,
and our Jinja environment renders any template as transformers does."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from jamba_runtime import Tokenizer
from jamba_runtime.errors import InvalidRequestError, TokenizerError
from jamba_runtime.tokenizer.chat_template import load_builtin_template, render_chat_template
from jamba_runtime.tokenizer.tiny import write_tiny_tokenizer

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "data" / "jamba15_chat_template"
REFERENCE_SHA256 = "62d5a4d1d662a1c8d3f48077c4307e5e0f5502b63830dbd40f467d14a26146bf"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. Zürich <CH> & co"},
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "format"],
        },
    },
}
SEARCH_TOOL = {  # a bare function schema, without the {"type": "function"} wrapper
    "name": "search",
    "description": "Search the web",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}
DOCUMENTS = [
    {"title": "Harry Potter", "text": "Harry Potter is a series of seven fantasy novels by J. K. Rowling."},
    {
        "text": "The Great Gatsby is a novel by F. Scott Fitzgerald.",
        "title": "The Great Gatsby",
        "country": "United States",
        "source_url": "https://example.org/gatsby",
        "page": 3,
        "tags": ["novel", "1925"],
    },
    {"text": "An untitled snippet, 日本語 and 😀."},
]
TOOL_CALL_TURNS = [
    {"role": "user", "content": "What's the weather like right now in Jerusalem and in London?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "get_current_weather",
                    "arguments": {"location": "Jerusalem", "format": "celsius"},
                },
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {
                    "name": "get_current_weather",
                    "arguments": '{"location": "London", "format": "celsius"}',
                },
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "The weather in Jerusalem is 18 degrees celsius."},
    {"role": "tool", "tool_call_id": "call_2", "content": "The weather in London is 8 degrees celsius."},
]

# name -> (messages, apply_chat_template keyword arguments)
CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "user_only": ([{"role": "user", "content": "Hello, how are you?"}], {}),
    "system_user": ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], {}),
    "multi_turn_with_system": (
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And its population?"},
        ],
        {},
    ),
    "multi_turn_no_system_ends_with_assistant": (
        [
            {"role": "user", "content": "Say hi"},
            {"role": "assistant", "content": "Hi! 👋"},
            {"role": "user", "content": "Again, in 日本語"},
            {"role": "assistant", "content": "こんにちは"},
        ],
        {},
    ),
    "empty_system": ([{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}], {}),
    "system_only": ([{"role": "system", "content": "Only a system prompt."}], {}),
    "tools_with_system": (
        [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Oslo?"}],
        {"tools": [WEATHER_TOOL, SEARCH_TOOL]},
    ),
    "tools_without_system": ([{"role": "user", "content": "Weather in Oslo?"}], {"tools": [WEATHER_TOOL]}),
    "tool_calls_and_results": (TOOL_CALL_TURNS, {"tools": [WEATHER_TOOL]}),
    "tool_calls_bare_form_with_content": (
        [
            {"role": "user", "content": "Search for Jamba"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [{"name": "search", "arguments": {"q": "Jamba Mamba MoE", "limit": 3}}],
            },
            {"role": "tool", "content": '{"results": ["AI21 Jamba"]}'},
            {"role": "assistant", "content": "Jamba is AI21's hybrid model."},
            {"role": "user", "content": "Thanks"},
        ],
        {"tools": [SEARCH_TOOL]},
    ),
    "documents": ([{"role": "user", "content": "Who wrote Harry Potter?"}], {"documents": DOCUMENTS}),
    "documents_multi_turn": (
        [
            {"role": "system", "content": "Answer from the documents."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Who wrote Gatsby?"},
            {"role": "assistant", "content": "F. Scott Fitzgerald."},
        ],
        {"documents": DOCUMENTS},
    ),
    "documents_and_tools": (
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        {"documents": DOCUMENTS[:1], "tools": [WEATHER_TOOL]},
    ),
    "json_mode_knob": (
        [{"role": "user", "content": "Describe the first American president as JSON."}],
        {"knobs": {"response_format": "json_object", "is_set": True}},
    ),
    "citations_knob_with_assistant_citations": (
        [
            {"role": "user", "content": "Who wrote HP?"},
            {
                "role": "assistant",
                "content": "Rowling.",
                "citations": [{"document_id": 0}, {"document_id": 2}],
            },
            {"role": "user", "content": "And Gatsby?"},
        ],
        {
            "documents": DOCUMENTS,
            "knobs": {"citation_mode": "fast", "response_format": "text", "is_set": True},
        },
    ),
    "knobs_not_set": ([{"role": "user", "content": "Q"}], {"knobs": {"response_format": "json_object"}}),
    "named_messages_and_list_content": (
        [
            {"role": "user", "name": "alice", "content": "Hi from Alice"},
            {"role": "assistant", "content": [{"type": "text", "text": "structured ü"}]},
            {"role": "user", "content": "ok"},
        ],
        {},
    ),
    "generation_preamble_and_default_system": (
        [{"role": "user", "content": "Write a haiku."}],
        {"generation_preamble": "Here is a haiku:", "default_system_message": "Be poetic."},
    ),
    "empty_tools_and_documents": ([{"role": "user", "content": "Q"}], {"tools": [], "documents": []}),
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_tokenizer_chat")
    write_tiny_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def tok(tiny_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_dir)


@pytest.fixture(scope="module")
def hf_tok(tiny_dir: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def reference() -> str:
    return (REFERENCE_DIR / "chat_template.jinja").read_text(encoding="utf-8")


def _hf_render(hf_tok: Any, template: str, messages: list, add_generation_prompt: bool, **kwargs: Any) -> str:
    return hf_tok.apply_chat_template(
        copy.deepcopy(messages),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **copy.deepcopy(kwargs),
    )


def test_reference_copy_is_unchanged() -> None:
    data = (REFERENCE_DIR / "chat_template.jinja").read_bytes()
    assert hashlib.sha256(data).hexdigest() == REFERENCE_SHA256


def test_builtin_template_is_our_own(reference: str) -> None:
    ours = load_builtin_template()
    assert ours != reference
    assert "is_last_checked_defined" not in ours  # structured differently, not a copy


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_builtin_matches_reference_under_transformers(
    tok: Tokenizer, hf_tok: Any, reference: str, case: str, add_generation_prompt: bool
) -> None:
    messages, kwargs = CASES[case]
    expected = _hf_render(hf_tok, reference, messages, add_generation_prompt, **kwargs)
    ours = tok.apply_chat_template(
        copy.deepcopy(messages), add_generation_prompt=add_generation_prompt, **copy.deepcopy(kwargs)
    )
    assert ours == expected
    # Token ids too: transformers encodes the rendered chat without adding special tokens.
    expected_ids = hf_tok.apply_chat_template(
        copy.deepcopy(messages),
        chat_template=reference,
        add_generation_prompt=add_generation_prompt,
        return_dict=False,
        **copy.deepcopy(kwargs),
    )
    assert tok.encode_chat(messages, add_generation_prompt=add_generation_prompt, **kwargs) == expected_ids


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_our_renderer_matches_transformers_on_reference(
    tok: Tokenizer, hf_tok: Any, reference: str, case: str, add_generation_prompt: bool
) -> None:
    messages, kwargs = CASES[case]
    expected = _hf_render(hf_tok, reference, messages, add_generation_prompt, **kwargs)
    ours = tok.apply_chat_template(
        copy.deepcopy(messages),
        add_generation_prompt=add_generation_prompt,
        chat_template=reference,
        **copy.deepcopy(kwargs),
    )
    assert ours == expected


def _random_conversation(rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    words = ["alpha", "beta", "Zürich", "日本", "😀", "<b>", "a & b", "{x}", "\n", "  "]

    def text() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, 4)))

    messages: list[dict[str, Any]] = []
    if rng.random() < 0.6:
        messages.append({"role": "system", "content": text()})
    for _ in range(rng.randint(0, 6)):
        kind = rng.choice(["user", "user", "assistant", "tool_calls", "tool"])
        if kind == "tool_calls":
            calls = []
            for _ in range(rng.randint(1, 3)):
                args: Any = {"q": text(), "n": rng.randint(0, 9)}
                if rng.random() < 0.5:
                    args = json.dumps(args, ensure_ascii=rng.random() < 0.5)
                call = {"name": rng.choice(["search", "get_current_weather"]), "arguments": args}
                calls.append(
                    call if rng.random() < 0.3 else {"id": "c", "type": "function", "function": call}
                )
            messages.append(
                {"role": "assistant", "content": rng.choice([None, "", text()]), "tool_calls": calls}
            )
        else:
            message: dict[str, Any] = {"role": kind, "content": text()}
            if rng.random() < 0.1:
                message["name"] = rng.choice(["alice", "bob"])
            messages.append(message)
    kwargs: dict[str, Any] = {}
    if rng.random() < 0.5:
        kwargs["tools"] = rng.sample([WEATHER_TOOL, SEARCH_TOOL], rng.randint(0, 2))
    if rng.random() < 0.5:
        kwargs["documents"] = rng.sample(DOCUMENTS, rng.randint(0, 3))
    if rng.random() < 0.4:
        knobs = {"is_set": rng.random() < 0.8}
        if rng.random() < 0.6:
            knobs["response_format"] = rng.choice(["json_object", "text"])
        if rng.random() < 0.6:
            knobs["citation_mode"] = rng.choice(["fast", "off"])
        kwargs["knobs"] = knobs
        for message in messages:
            if message["role"] == "assistant" and rng.random() < 0.5:
                message["citations"] = [{"document_id": i} for i in range(rng.randint(0, 3))]
    if rng.random() < 0.2:
        kwargs["generation_preamble"] = rng.choice(["", "  ", "Sure:"])
    if not messages:
        messages.append({"role": "user", "content": text()})
    return messages, kwargs


def test_builtin_matches_reference_on_random_conversations(
    tok: Tokenizer, hf_tok: Any, reference: str
) -> None:
    rng = random.Random(0)
    for i in range(300):
        messages, kwargs = _random_conversation(rng)
        add_generation_prompt = rng.random() < 0.7
        expected = _hf_render(hf_tok, reference, messages, add_generation_prompt, **kwargs)
        ours = tok.apply_chat_template(
            copy.deepcopy(messages), add_generation_prompt=add_generation_prompt, **kwargs
        )
        assert ours == expected, f"conversation {i}: {messages} {kwargs}"


def test_plain_chat_prompt_format(tok: Tokenizer) -> None:
    # The format AI21 documents for Jamba 1.5 Mini.
    messages = [
        {"role": "system", "content": "{{ system_prompt }}"},
        {"role": "user", "content": "{{ user_message_1 }}"},
        {"role": "assistant", "content": "{{ model_answer_1 }}"},
        {"role": "user", "content": "{{ user_message_2 }}"},
    ]
    assert tok.apply_chat_template(messages) == (
        "<|startoftext|><|bom|><|system|> {{ system_prompt }}<|eom|>"
        "<|bom|><|user|> {{ user_message_1 }}<|eom|>"
        "<|bom|><|assistant|> {{ model_answer_1 }}<|eom|><|bom|><|user|> {{ user_message_2 }}<|eom|>"
        "<|bom|><|assistant|>"
    )


def test_tool_calls_format(tok: Tokenizer) -> None:
    text = tok.apply_chat_template(TOOL_CALL_TURNS[:2], add_generation_prompt=False)
    assert text.endswith(
        "<|bom|><|assistant|> <tool_calls>[\n"
        '    {"name": "get_current_weather", "arguments": {"location": "Jerusalem", "format": "celsius"}},\n'
        '    {"name": "get_current_weather", "arguments": {"location": "London", "format": "celsius"}}\n'
        "]</tool_calls><|eom|>"
    )


@pytest.mark.parametrize("template", ["builtin", "reference"])
def test_unsupported_tool_type_is_a_request_error(tok: Tokenizer, reference: str, template: str) -> None:
    source = load_builtin_template() if template == "builtin" else reference
    with pytest.raises(InvalidRequestError, match="only supported tool type is `function`"):
        tok.apply_chat_template(
            [{"role": "user", "content": "Q"}], tools=[{"type": "retrieval"}], chat_template=source
        )


def test_bad_inputs_are_request_errors(tok: Tokenizer) -> None:
    with pytest.raises(InvalidRequestError, match="tools must be"):
        tok.apply_chat_template([{"role": "user", "content": "Q"}], tools=[print])  # type: ignore[list-item]
    with pytest.raises(InvalidRequestError, match="documents must be"):
        tok.apply_chat_template([{"role": "user", "content": "Q"}], documents=["text"])  # type: ignore[list-item]
    with pytest.raises(InvalidRequestError, match="messages"):
        tok.apply_chat_template(["hello"])
    with pytest.raises(InvalidRequestError, match="empty"):
        tok.apply_chat_template([])


def test_broken_template_is_a_tokenizer_error(tok: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="does not compile"):
        tok.apply_chat_template([{"role": "user", "content": "Q"}], chat_template="{% if %}")


# A template that exercises what transformers adds to Jinja: trim/lstrip blocks, loop controls,
# {% generation %}, namespace, dict(), tojson without HTML escaping or key sorting, raise_exception.
ENV_TEMPLATE = """\
{% set ns = namespace(count=0) %}
{{ bos_token }}
{% for message in messages %}
    {% if message.role == 'stop' %}{% break %}{% endif %}
    {% if message.role == 'skip' %}{% continue %}{% endif %}
    {% set ns.count = ns.count + 1 %}
    {% if message.role == 'assistant' %}
        {% generation %}[A]{{ message.content }}{% endgeneration %}
    {% else %}
        [{{ message.role | upper }}]{{ message.content | trim }}
    {% endif %}
{% endfor %}
{{ tools | tojson }}|{{ tools | tojson(indent=2) }}|{{ documents | tojson }}
{{ dict(a=1, b='<&>') | tojson }}|{{ extra | tojson }}|{{ ns.count }}|{{ eos_token }}|{{ pad_token }}
{% if add_generation_prompt %}[A]{% endif %}
"""


def test_environment_matches_transformers(tok: Tokenizer, hf_tok: Any) -> None:
    messages = [
        {"role": "user", "content": "  <b>hi</b> & ü 😀  "},
        {"role": "skip", "content": "nope"},
        {"role": "assistant", "content": "x", "tool_calls": None},
        {"role": "stop", "content": "end"},
        {"role": "user", "content": "unreached"},
    ]
    kwargs = {
        "tools": [{"z": 1, "a": "<é>", "m": [1, 2.5, None, True]}],
        "documents": [{"title": "t", "text": "x"}],
        "extra": {"b": 2, "a": ("t", "u")},
    }
    for add_generation_prompt in (True, False):
        expected = _hf_render(hf_tok, ENV_TEMPLATE, messages, add_generation_prompt, **kwargs)
        assert (
            tok.apply_chat_template(
                messages, chat_template=ENV_TEMPLATE, add_generation_prompt=add_generation_prompt, **kwargs
            )
            == expected
        )


def test_namespace_refuses_underscore_names() -> None:
    with pytest.raises(InvalidRequestError, match="underscore"):
        render_chat_template("{% set ns = namespace(_x=1) %}", [{"role": "user", "content": "Q"}])
    with pytest.raises(InvalidRequestError, match="underscore"):
        render_chat_template(
            "{% set ns = namespace() %}{% set ns._y = 1 %}", [{"role": "user", "content": "Q"}]
        )


def test_sandbox_blocks_unsafe_access() -> None:
    with pytest.raises(InvalidRequestError):
        render_chat_template("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "Q"}])


def test_pydantic_like_messages_are_accepted(tok: Tokenizer) -> None:
    class Message:
        def __init__(self, role: str, content: str | None) -> None:
            self.role, self.content = role, content

        def model_dump(self) -> dict[str, Any]:
            return {"role": self.role, "content": self.content}

    messages = [Message("user", "Hi"), Message("assistant", None)]
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}], add_generation_prompt=False
    )
