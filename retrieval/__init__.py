"""Retrieval: loaders, chunking, embeddings, Chroma store, BM25, fusion, rerank, RAG with citations; RAFT in `raft/`."""
