"""Retrieval over knowledge_base/: documents (parsing, chunking), embedders, retriever."""

from .ingest import IngestReport
from .retriever import Passage, Retriever, open_retriever

__all__ = ["IngestReport", "Passage", "Retriever", "open_retriever"]
