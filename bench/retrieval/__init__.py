"""Retrieval on SciFact against LangChain + Chroma, the embedder's speed and its hardware floor."""
