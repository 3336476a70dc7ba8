"""Retrieval: loaders, chunking, embeddings, Chroma store, BM25, fusion, rerank, RAG (issue: retrieval pipeline)."""
