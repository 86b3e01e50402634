"""Retrieval over knowledge_base/: documents (parsing, chunking), embedders, retriever."""

from .retriever import IngestReport, Passage, Retriever, open_retriever

__all__ = ["IngestReport", "Passage", "Retriever", "open_retriever"]
