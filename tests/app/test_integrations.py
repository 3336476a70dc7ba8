"""LangChain and LlamaIndex over our hybrid search (app/integrations), run for real: a small
ingested collection, the real retrievers, an LCEL RAG chain and a LlamaIndex query engine whose
LLM is `jamba-stack serve` with the tiny model; and `jamba_stack.retrieval.rag.ask` through that server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jamba_stack.chat import RemoteChatModel
from jamba_stack.retrieval.search import Retriever, open_retriever

MODEL = "tiny"
MAX_MODEL_LEN = 1024
LONG = (
    "Sediment cores from the lake record {topic} over ten thousand years. "
    "Each layer was dated by radiocarbon and its pollen counted under the microscope. "
    "The authors compare the record with regional climate reconstructions and tree rings. "
) * 6


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("sentence_transformers")
    from jamba_stack.retrieval.embeddings import SentenceTransformerEmbedder
    from jamba_stack.retrieval.ingest import ingest

    docs = tmp_path_factory.mktemp("intdocs")
    data = tmp_path_factory.mktemp("intdata")
    (docs / "blood.md").write_text(
        "# Blood\n\nHemoglobin in red blood cells carries oxygen to the tissues.\n\n"
        "## Glucose\n\nInsulin lowers blood glucose after meals.\n"
    )
    (docs / "cells.txt").write_text("Mitochondria produce ATP, the energy currency of the cell.")
    for i, topic in enumerate(("drought", "fire", "flooding")):
        (docs / f"lake{i}.txt").write_text(LONG.format(topic=topic))
    embedder = SentenceTransformerEmbedder()
    ingest(docs, "integ", data_dir=data, embedder=embedder)
    retriever = open_retriever("integ", data_dir=data, embedder=embedder)
    return {"docs": docs, "data": data, "retriever": retriever, "embedder": embedder}


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_model_dir: Path) -> Any:
    return start_server(
        tiny_model_dir,
        "--served-model-name",
        MODEL,
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--cache-memory-gb",
        "0.05",
    )


# ---- LangChain -----------------------------------------------------------------------------------
def test_langchain_retriever_returns_our_hits_as_documents(collection: dict[str, Any]) -> None:
    from langchain_core.documents import Document

    from jamba_stack.app.integrations.langchain import JambaStackRetriever

    r: Retriever = collection["retriever"]
    lc = JambaStackRetriever(retriever=r, k=2)
    docs = lc.invoke("what carries oxygen in the blood")
    hits = r.search("what carries oxygen in the blood", 2)
    assert all(isinstance(d, Document) for d in docs) and len(docs) == 2
    assert [d.id for d in docs] == [h.chunk_id for h in hits]
    assert [d.page_content for d in docs] == [h.text for h in hits]
    meta = docs[0].metadata
    assert meta["source"] == str((collection["docs"] / "blood.md").resolve())
    assert meta["chunk_id"] == hits[0].chunk_id and meta["score"] == pytest.approx(hits[0].score)
    assert "page" in meta and meta["rank"] == 1
    # Filters reach both retrievers; batch and async go through the same search.
    only = JambaStackRetriever(
        retriever=r, k=3, filters={"source": str((collection["docs"] / "cells.txt").resolve())}
    )
    assert {Path(d.metadata["source"]).name for d in only.invoke("oxygen")} == {"cells.txt"}
    batch = lc.batch(["ATP energy", "insulin glucose"])
    assert "Mitochondria" in batch[0][0].page_content and "Insulin" in batch[1][0].page_content

    import asyncio

    assert [d.id for d in asyncio.run(lc.ainvoke("what carries oxygen in the blood"))] == [d.id for d in docs]


def test_langchain_invoke_takes_k_mode_and_filters(collection: dict[str, Any]) -> None:
    from jamba_stack.app.integrations.langchain import JambaStackRetriever

    lc = JambaStackRetriever(retriever=collection["retriever"], k=4)
    query = "what carries oxygen in the blood"
    assert len(lc.invoke(query)) == 4
    assert len(lc.invoke(query, k=1)) == 1 and len(lc.invoke(query, k=3)) == 3
    assert [d.id for d in lc.invoke(query, k=2)] == [d.id for d in lc.invoke(query)][:2]
    cells = str((collection["docs"] / "cells.txt").resolve())
    only = lc.invoke("energy of the cell", filters={"source": cells}, mode="bm25")
    assert {d.metadata["source"] for d in only} == {cells}
    import asyncio

    assert len(asyncio.run(lc.ainvoke(query, k=1))) == 1
    assert lc.k == 4  # the call's k changed nothing for the next


def _standard_retriever_tests() -> type:
    tests = pytest.importorskip("langchain_tests.integration_tests").RetrieversIntegrationTests
    # Its one async test runs under pytest-asyncio, which runs only marked tests. Marked in place
    # (the same function object), so the suite does not count it as overridden.
    pytest.mark.asyncio(tests.test_ainvoke_returns_documents)
    return tests


class TestLangChainStandardRetriever(_standard_retriever_tests()):  # type: ignore[misc]
    """LangChain's own standard integration tests for retrievers (`langchain-tests`), on our
    retriever over the ingested collection."""

    @pytest.fixture(autouse=True)
    def _collection(self, collection: dict[str, Any]) -> None:
        type(self).search = collection["retriever"]

    @property
    def retriever_constructor(self) -> type:
        from jamba_stack.app.integrations.langchain import JambaStackRetriever

        return JambaStackRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retriever": type(self).search, "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "what carries oxygen in the blood"


def test_langchain_from_collection_and_rerank(collection: dict[str, Any]) -> None:
    from jamba_stack.app.integrations.langchain import JambaStackRetriever
    from jamba_stack.retrieval.rerank import MaxSimReranker

    lc = JambaStackRetriever.from_collection(
        "integ",
        data_dir=collection["data"],
        embedder="minilm-fp32",
        k=3,
        reranker=MaxSimReranker(collection["embedder"]),
    )
    docs = lc.invoke("Which molecule carries oxygen?")
    assert len(docs) == 3 and all("first_stage_rank" in d.metadata for d in docs)
    assert [d.metadata["rank"] for d in docs] == [1, 2, 3]


def test_langchain_lcel_rag_chain_against_our_server(collection: dict[str, Any], server: Any) -> None:
    lc_openai = pytest.importorskip("langchain_openai")
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    from jamba_stack.app.integrations.langchain import JambaStackRetriever, format_documents

    seen: list[Any] = []

    def record(prompt_value: Any) -> Any:
        seen.append(prompt_value)
        return prompt_value

    retriever = JambaStackRetriever(retriever=collection["retriever"], k=2)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from the context; cite as [n].\n\n{context}"), ("human", "{question}")]
    )
    llm = lc_openai.ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key=server.api_key,
        model=MODEL,
        max_tokens=8,
        temperature=0,
        max_retries=0,
    )
    chain = (
        {"context": retriever | format_documents, "question": RunnablePassthrough()}
        | prompt
        | RunnableLambda(record)
        | llm
        | StrOutputParser()
    )
    out = chain.invoke("What do mitochondria produce?")
    assert isinstance(out, str)
    system = seen[0].to_messages()[0].content
    assert "[1] cells.txt\nMitochondria produce ATP" in system and "[2] " in system
    assert "".join(chain.stream("What do mitochondria produce?")) == out  # greedy: same text


# ---- LlamaIndex ----------------------------------------------------------------------------------
def test_llamaindex_retriever_returns_nodes_with_scores(collection: dict[str, Any]) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    from jamba_stack.app.integrations.llamaindex import JambaStackLlamaRetriever

    r: Retriever = collection["retriever"]
    li = JambaStackLlamaRetriever(r, k=2)
    nodes = li.retrieve("how is blood glucose lowered")
    hits = r.search("how is blood glucose lowered", 2)
    assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
    assert [n.node.node_id for n in nodes] == [h.chunk_id for h in hits]
    assert [n.score for n in nodes] == pytest.approx([h.score for h in hits])
    assert nodes[0].node.get_content() == hits[0].text and "Insulin" in hits[0].text
    assert {"source", "page", "chunk_id", "doc_id", "score"} <= set(nodes[0].node.metadata)
    from_col = JambaStackLlamaRetriever.from_collection(
        "integ", data_dir=collection["data"], embedder="minilm-fp32"
    )
    assert from_col.retrieve("ATP")[0].node.metadata["source"].endswith("cells.txt")


def test_llamaindex_query_engine_against_our_server(collection: dict[str, Any], server: Any) -> None:
    openai_like = pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.query_engine import RetrieverQueryEngine

    from jamba_stack.app.integrations.llamaindex import JambaStackLlamaRetriever

    llm = openai_like.OpenAILike(
        model=MODEL,
        api_base=f"{server.url}/v1",
        api_key=server.api_key,
        context_window=MAX_MODEL_LEN,
        max_tokens=8,
        is_chat_model=True,
        temperature=0,
        max_retries=0,
    )
    engine = RetrieverQueryEngine.from_args(JambaStackLlamaRetriever(collection["retriever"], k=2), llm=llm)
    response = engine.query("What do mitochondria produce?")
    assert isinstance(response.response, str)
    assert response.source_nodes[0].node.metadata["source"].endswith("cells.txt")
    assert len(response.source_nodes) == 2


# ---- jamba_stack.retrieval.rag through the server --------------------------------------------------------------
def test_rag_over_a_server_halves_documents_until_they_fit(collection: dict[str, Any], server: Any) -> None:
    from jamba_stack.retrieval.rag import ask, ask_stream

    model = RemoteChatModel(server.url, api_key=server.api_key, model=MODEL, max_retries=0)
    try:
        q = "What do the lake sediment cores record?"
        a = ask(q, collection["retriever"], model, k=5, max_tokens=8)
        # Five long chunks pass the server's 1,024-token context: it refuses, `ask` halves them.
        assert a.dropped_documents >= 1 and 1 <= len(a.sources) < 5
        assert a.usage.prompt_tokens + 8 <= MAX_MODEL_LEN
        assert all(c.source.endswith((".txt", ".md")) for c in a.sources)
        *pieces, last = list(ask_stream(q, collection["retriever"], model, k=5, max_tokens=8))
        assert "".join(pieces) == last.text == a.text
        assert [c.chunk_id for c in last.sources] == [c.chunk_id for c in a.sources]
    finally:
        model.close()
