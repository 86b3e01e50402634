"""Retrieval over knowledge_base/: documents (parsing, chunking), embedders, retriever.

Nothing is imported here, so the query analyzer's child process (`query_worker`) starts
without Chroma or the embedders.
"""
